"""
Cluster the digits with CDCClusterer
====================================

Trains CDC on scikit-learn's bundled 8x8 digits (offline) and compares it with KMeans
on raw pixels. ``max_epochs=10`` keeps this example to seconds on a CPU; without it
the estimator trains for its ``"auto"`` budget and scores higher (see the
measurements in :doc:`/benchmarks`).
"""

# %%
import numpy as np
from sklearn.cluster import KMeans

from deepclust import CDCClusterer
from deepclust.datasets import load_digits_images
from deepclust.metrics import clustering_scores, format_scores

images, labels = load_digits_images()
cdc = CDCClusterer(n_clusters=10, max_epochs=10, random_state=0).fit(images)
print("CDC             ", format_scores(clustering_scores(labels, cdc.labels_)))

pixels = images.reshape(len(images), -1)
kmeans = KMeans(10, n_init=10, random_state=0).fit(pixels)
print("KMeans on pixels", format_scores(clustering_scores(labels, kmeans.labels_)))

# %%
# Cluster sizes and confident samples
# -----------------------------------
# CDC learns a balanced clustering (Sinkhorn-Knopp codes), and ``predict_proba``
# tells how sure it is of each image. A longer training makes it surer.
print("cluster sizes:", cdc.cluster_sizes_.tolist())
confidence = cdc.predict_proba(images).max(axis=1)
print(
    f"top probability: median {np.median(confidence):.2f}, max {confidence.max():.2f}"
)

# %%
# What "auto" resolved to
# -----------------------
# ``training_config_`` records the concrete choices behind the ``"auto"``
# parameters for this data and device.
print({key: cdc.training_config_[key] for key in ("backbone", "max_epochs", "lr")})
