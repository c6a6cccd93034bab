"""
Contrastive Disentangling features in a scikit-learn Pipeline
=============================================================

ContrastiveDisentangler needs no number of classes: it learns K sigmoid feature
heads. Here its head activations feed KMeans inside a Pipeline, and GridSearchCV
picks the entropy weight with the estimator's own ``score``. The epochs are few so
that the example runs in seconds on a CPU; the ``"auto"`` budget scores much higher
on the digits (see :doc:`/benchmarks`).
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
    ContrastiveDisentangler(max_epochs=5, random_state=0),
    KMeans(n_clusters=10, n_init=10, random_state=0),
)
predicted = pipeline.fit_predict(images)
print("CD heads + KMeans", format_scores(clustering_scores(labels, predicted)))

# %%
# What the heads detect
# ---------------------
# Each row shows the images on which one feature head is most active: what they
# share is the feature the head detects (:func:`deepclust.plotting.plot_head_gallery`,
# which needs matplotlib).
from deepclust.plotting import plot_head_gallery  # noqa: E402

heads = plot_head_gallery(pipeline[0], images, n_heads=6, n_images=8)

# %%
# Choosing a parameter without labels
# -----------------------------------
# ``score`` measures how well two augmented views of an image match each other in
# head space, independent of the loss temperatures, so GridSearchCV needs no
# labels. A subset of the digits keeps the four fits short.
search = GridSearchCV(
    ContrastiveDisentangler(max_epochs=2, random_state=0),
    {"entropy_weight": [0.5, 1.0]},
    cv=2,
).fit(images[:600])
print("best entropy_weight:", search.best_params_["entropy_weight"])
print("scores:", search.cv_results_["mean_test_score"].round(3).tolist())
