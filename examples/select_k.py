"""
Choose the number of clusters
=============================

:func:`deepclust.model_selection.select_n_clusters` trains one
:class:`~deepclust.ContrastiveDisentangler` (which needs no k), then scores each
candidate k by the *stability* of KMeans on its L2-normalised embeddings: the mean
adjusted Rand index between the clusterings of pairs of random halves of the data
(1: the same partition every time; 0: chance, whatever k). A loss or an estimator's
``score`` cannot compare k: their scale changes with k.

The data here are 300 small images of four shapes
(:func:`deepclust.datasets.make_shape_images`), and the training is short so that
the example runs in seconds.
"""

# %%
from deepclust import ContrastiveDisentangler
from deepclust.datasets import make_shape_images
from deepclust.model_selection import select_n_clusters

images, shapes = make_shape_images(
    n_samples=300, image_size=12, n_classes=4, random_state=0
)
result = select_n_clusters(
    images,
    range(2, 9),
    model=ContrastiveDisentangler(max_epochs=8, random_state=0),
)

# %%
# The table and the reasoning
# ---------------------------
# ``print(result)`` gives one row per k, how the choice was made, any reason not to
# trust it (lines starting with ``caution:``) and a last line ``best k: N``, as
# ``deepclust select-k DATA`` prints it.
print(result)
print("number of shapes:", len(set(shapes)))

# %%
# The stability curve
# -------------------
# The band marks the stabilities within ``tolerance`` of the best; the largest k
# inside it is chosen, since well separated groups also merge stably.
curve = result.plot()

# %%
# Reusing the trained model
# -------------------------
# The model whose embeddings were clustered is kept, so that it can be reused, for
# instance for a :func:`~deepclust.plotting.plot_embedding_map` coloured by KMeans
# with the chosen k.
from deepclust.plotting import plot_embedding_map  # noqa: E402

embedding_map = plot_embedding_map(
    result.model, images, n_clusters=result.n_clusters, thumbnails=True
)
