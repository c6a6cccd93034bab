"""
Look at what a model learnt
===========================

Scores need labels; figures do not. :mod:`deepclust.plotting` draws what a fitted
model learnt: each cluster's most confident and borderline images, the training
curves, the cluster sizes, a map of the embeddings and, when true classes are known,
the confusion matrix. Every function returns a matplotlib Figure (save it with
``fig.savefig("gallery.png")``; Jupyter displays it). They need matplotlib:
``pip install 'deepclust[plot]'``.

The model is trained for a few epochs only, so that the example runs in seconds.
"""

# %%
from deepclust import CDCClusterer
from deepclust.datasets import load_digits_images
from deepclust.plotting import (
    plot_cluster_gallery,
    plot_cluster_sizes,
    plot_confusion_matrix,
    plot_embedding_map,
    plot_training_curves,
)

images, labels = load_digits_images()
cdc = CDCClusterer(n_clusters=10, max_epochs=8, random_state=0).fit(images)

# %%
# Cluster galleries
# -----------------
# One row per cluster: its most confident images, then (framed in orange) its
# least confident ones, which show what the cluster is unsure about.
gallery = plot_cluster_gallery(cdc, images, n_images=8, n_borderline=3)

# %%
# Training curves
# ---------------
# The loss per epoch, and its parts (for CDC: the instance InfoNCE term and the
# cluster cross-entropy). A curve still falling steeply at the end asks for more
# epochs.
curves = plot_training_curves(cdc)

# %%
# Cluster sizes
# -------------
# CDC's Sinkhorn-Knopp targets favour balanced clusters; empty or tiny clusters
# are a sign of a collapse.
sizes = plot_cluster_sizes(cdc)

# %%
# A map of the embeddings
# -----------------------
# t-SNE (UMAP when ``umap-learn`` is installed) of the L2-normalised backbone
# embeddings, coloured by cluster, with a few images drawn where they lie.
embedding_map = plot_embedding_map(
    cdc, images, thumbnails=True, n_thumbnails=25, max_samples=400
)

# %%
# Against the true classes
# ------------------------
# With labels, the clusters are matched one-to-one to the classes (Hungarian
# matching, as :func:`deepclust.metrics.cluster_accuracy` does); the title gives
# ACC, NMI and ARI.
confusion = plot_confusion_matrix(cdc, images, labels)

# %%
# All of it in one file
# ---------------------
# :func:`deepclust.report.write_report` (or ``deepclust report MODEL DATA``) puts
# these figures, the parameters and the training time into one self-contained HTML
# page that opens offline.
from deepclust.report import write_report  # noqa: E402

path = write_report(cdc, images, "digits_report.html", y=labels, max_samples=300)
print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
