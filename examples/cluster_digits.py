"""
Cluster the digits with CDCClusterer
====================================

Trains CDC on scikit-learn's bundled 8x8 digits (offline) with default settings and
compares it with KMeans on raw pixels. Runs in about a minute on two CPU cores.
"""

# %%
from sklearn.cluster import KMeans

from deepclust import CDCClusterer
from deepclust.datasets import load_digits_images
from deepclust.metrics import clustering_scores, format_scores

images, labels = load_digits_images()
cdc = CDCClusterer(n_clusters=10, verbose=1, random_state=0).fit(images)
print("CDC             ", format_scores(clustering_scores(labels, cdc.labels_)))

pixels = images.reshape(len(images), -1)
kmeans = KMeans(10, n_init=10, random_state=0).fit(pixels)
print("KMeans on pixels", format_scores(clustering_scores(labels, kmeans.labels_)))

# %%
# Cluster sizes and confident samples
print("cluster sizes:", cdc.cluster_sizes_.tolist())
confidence = cdc.predict_proba(images).max(axis=1)
print(
    f"{(confidence > 0.99).mean():.0%} of the images are assigned with "
    "probability > 0.99"
)
