"""
Contrastive Disentangling features in a scikit-learn Pipeline
=============================================================

ContrastiveDisentangler needs no number of classes: it learns K sigmoid feature
heads. Here its head activations feed KMeans inside a Pipeline, and GridSearchCV
picks the entropy weight with the estimator's own ``score``.
"""

# %%
from sklearn.cluster import KMeans
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from deepclust import ContrastiveDisentangler
from deepclust.datasets import load_digits_images
from deepclust.metrics import clustering_scores, format_scores

images, labels = load_digits_images()
pipeline = make_pipeline(
    ContrastiveDisentangler(max_epochs=20, random_state=0),
    KMeans(n_clusters=10, n_init=10, random_state=0),
)
predicted = pipeline.fit_predict(images)
print("CD heads + KMeans", format_scores(clustering_scores(labels, predicted)))

# %%
# ``score`` measures how well two augmented views of an image match each other in
# head space, independent of the loss temperatures, so GridSearchCV needs no labels.
search = GridSearchCV(
    ContrastiveDisentangler(max_epochs=5, random_state=0),
    {"entropy_weight": [0.5, 1.0]},
    cv=2,
).fit(images)
print("best entropy_weight:", search.best_params_["entropy_weight"])
