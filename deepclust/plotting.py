"""Figures of what a fitted model learnt: galleries, maps, curves, sizes, confusion.

Every function takes a fitted estimator (and the data where needed) and returns a
:class:`matplotlib.figure.Figure`. The figures are built without ``pyplot``, so
they never open a window, never change the matplotlib backend and are freed with
the last reference to them; save one with ``fig.savefig("gallery.png")``, or let
Jupyter display it. matplotlib is an optional dependency:
``pip install 'deepclust[plot]'``.

- :func:`plot_cluster_gallery`: each cluster's most confident samples, and
  optionally its least confident (borderline) ones;
- :func:`plot_head_gallery` and :func:`plot_head_histogram`: the top-activating
  images of ContrastiveDisentangler's feature heads, and the distribution of the
  activations;
- :func:`plot_embedding_map`: a 2-D map (t-SNE, or UMAP when installed) of the
  embeddings, coloured by cluster, with optional thumbnails;
- :func:`plot_training_curves`: the loss and its parts per epoch;
- :func:`plot_cluster_sizes` and :func:`plot_confusion_matrix` (with true
  labels, after Hungarian matching);
- :func:`plot_k_selection`: the stability curve of
  :func:`deepclust.model_selection.select_n_clusters`.

A ContrastiveDisentangler has no clusters of its own: the cluster plots cluster
its L2-normalised backbone embeddings with KMeans, given ``n_clusters`` (the
features that ``deepclust select-k`` scores). Image galleries and thumbnails
need a model trained on images; tabular models get the other plots.

Which inputs are shown, their clusters and confidences come from
:mod:`deepclust.inspection` (:func:`~deepclust.inspection.assign_clusters` is
also exported here); this module only draws them.
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

import numpy as np

from deepclust.inspection import (
    assign_clusters,
    cluster_members,
    has_own_clusters,
    head_activations,
    most_varying_heads,
    n_clusters_of,
    normalized_embeddings,
    subsample,
    take,
    thumbnail_positions,
    top_activations,
)

__all__ = [
    "assign_clusters",
    "plot_cluster_gallery",
    "plot_cluster_sizes",
    "plot_confusion_matrix",
    "plot_embedding_map",
    "plot_head_gallery",
    "plot_head_histogram",
    "plot_k_selection",
    "plot_training_curves",
]

_INSTALL_HINT = "pip install 'deepclust[plot]'"
_CELL_INCHES = 0.85
_BORDERLINE_COLOUR = "tab:orange"
# Share of a gallery cell left blank between two images.
_GAP = 0.08


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------


def _figure_class():
    """matplotlib's Figure class, or an ImportError that names the extra."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            f"deepclust's plots and reports need matplotlib: {_INSTALL_HINT}"
        ) from exc
    return Figure


def _new_figure(width, height, layout="constrained"):
    # A bare Figure draws with Agg when saved, whatever pyplot's backend is.
    return _figure_class()(figsize=(width, height), layout=layout)


def _check_image_model(estimator, what):
    if getattr(estimator, "input_kind_", None) != "image":
        raise ValueError(
            f"{what} needs a model trained on images; this {type(estimator).__name__} "
            "was trained on tabular data (use plot_cluster_sizes, plot_embedding_map "
            "or plot_training_curves)."
        )


def _clusters_of(estimator, X, labels, confidence, n_clusters, random_state):
    """Labels, confidences and number of clusters: the given ones, or assigned."""
    if labels is None or confidence is None:
        labels, confidence = assign_clusters(
            estimator, X, n_clusters=n_clusters, random_state=random_state
        )
    labels = np.asarray(labels)
    confidence = np.asarray(confidence, dtype=np.float64)
    if labels.shape != confidence.shape:
        raise ValueError(
            f"labels and confidence must have the same shape; got {labels.shape} and "
            f"{confidence.shape}."
        )
    return labels, confidence, n_clusters_of(estimator, labels, n_clusters)


def _read_images(estimator, X, positions):
    """Images of X at ``positions`` as (n, H, W) or (n, H, W, 3) floats in [0, 1].

    Unreadable inputs come back as NaN images (shown blank).
    """
    from deepclust._inputs import read_input

    positions = np.asarray(positions, dtype=np.int64)
    height, width = estimator.image_size_
    channels = estimator.n_channels_
    out = np.full((len(positions), height, width, channels), np.nan, dtype=np.float32)
    if len(positions) == 0:
        return out[..., 0] if channels == 1 else out
    source = read_input(
        take(X, positions),
        image_size=estimator.image_size_,
        channels=channels,
        data_format=estimator.get_params().get("data_format", "auto"),
        on_error="skip",
        allow_tabular=False,
        min_readable=0,
    )
    if source.n_samples:
        batch = source.read(slice(0, source.n_samples)).astype(np.float32)
        if source.dtype == np.uint8:
            batch /= 255.0
        else:
            # As the model's input scaling: [min(0, min), max(1, max)] -> [0, 1].
            low, high = min(0.0, float(batch.min())), max(1.0, float(batch.max()))
            batch = (batch - low) / (high - low)
        kept = (
            source.kept_indices
            if source.kept_indices is not None
            else np.arange(source.n_samples)
        )
        out[kept] = batch.transpose(0, 2, 3, 1)
    return out[..., 0] if channels == 1 else out


def _image_grid(rows, n_columns):
    """A figure of image rows: ``rows`` is a list of (title, cells).

    Each cell is (image, caption, frame colour or None). Each row is one axes
    showing one mosaic of its images: a hundred small axes take seconds to
    build, a mosaic milliseconds.
    """
    from matplotlib.patches import Rectangle

    cell, margin, title_h, caption_h = _CELL_INCHES, 0.1, 0.24, 0.14
    # A row without images (an empty cluster) keeps only its title.
    heights = [title_h + (caption_h + cell if cells else 0.0) for _, cells in rows]
    width = max(3.0, 2 * margin + n_columns * cell)
    height = 2 * margin + max(sum(heights), title_h)
    fig = _new_figure(width, height, layout=None)
    if not rows:
        fig.text(0.5, 0.5, "nothing to show", ha="center", va="center")
    top = height - margin
    for (title, cells), row_h in zip(rows, heights, strict=True):
        fig.text(
            margin / width,
            (top - 0.02) / height,
            title,
            fontsize="small",
            va="top",
            ha="left",
        )
        top -= row_h
        cells = cells[:n_columns]
        if not cells:
            continue
        row_top = top + row_h
        mosaic, image_w = _mosaic([image for image, _, _ in cells], n_columns)
        # In data units a cell (image and gap) is 1 wide and the image image_w
        # wide and high, so that pixels stay square.
        ax = fig.add_axes(
            [
                margin / width,
                (row_top - title_h - caption_h - cell * image_w) / height,
                n_columns * cell / width,
                cell * image_w / height,
            ]
        )
        ax.set_axis_off()
        ax.imshow(
            mosaic,
            cmap="gray" if mosaic.ndim == 2 else None,
            vmin=0.0,
            vmax=1.0,
            interpolation="nearest",
            aspect="auto",
            extent=(0, n_columns, image_w, 0),
        )
        for c, (_, caption, frame) in enumerate(cells):
            if caption:
                ax.text(
                    c + image_w / 2,
                    -0.03,
                    caption,
                    ha="center",
                    va="bottom",
                    fontsize="x-small",
                )
            if frame is not None:
                ax.add_patch(
                    Rectangle(
                        (c, 0),
                        image_w,
                        image_w,
                        fill=False,
                        edgecolor=frame,
                        linewidth=2.5,
                        clip_on=False,
                    )
                )
    return fig


def _mosaic(images, n_columns):
    """The images side by side with white gaps, padded to ``n_columns`` cells.

    Returns the mosaic and the share of a cell's width taken by its image.
    """
    height, width = images[0].shape[:2]
    gap = max(1, int(round(width * _GAP / (1 - _GAP))))
    shape = (height, n_columns * (width + gap)) + images[0].shape[2:]
    mosaic = np.ones(shape, dtype=np.float32)
    for c, image in enumerate(images):
        start = c * (width + gap)
        mosaic[:, start : start + width] = np.nan_to_num(image, nan=1.0)
    return mosaic, width / (width + gap)


# ---------------------------------------------------------------------------
# Galleries
# ---------------------------------------------------------------------------


def plot_cluster_gallery(
    estimator,
    X,
    *,
    n_images=8,
    n_borderline=0,
    clusters=None,
    labels=None,
    confidence=None,
    n_clusters=None,
    random_state=0,
):
    """Each cluster's most confident samples, and optionally its borderline ones.

    One row per cluster, titled with its size and mean confidence: first its
    ``n_images`` most confident samples (highest first), then, framed in
    orange, its ``n_borderline`` least confident ones (lowest first), which show
    what the cluster is unsure about.

    Parameters
    ----------
    estimator : CDCClusterer or ContrastiveDisentangler
        A fitted estimator trained on images.
    X : array-like, list of PIL images or paths, or a directory path
        The images to show, in any form the estimator accepts.
    n_images : int, default=8
        Most confident samples per cluster.
    n_borderline : int, default=0
        Least confident samples per cluster (not among the confident ones).
    clusters : list of int, default=None
        Clusters to show, in this order; None shows all.
    labels, confidence : ndarray of shape (n_inputs,), default=None
        Precomputed output of :func:`~deepclust.inspection.assign_clusters`
        (saves a pass over X).
    n_clusters : int, default=None
        Number of KMeans clusters for a ContrastiveDisentangler; see
        :func:`~deepclust.inspection.assign_clusters`.
    random_state : int, default=0
        Seed of KMeans (ContrastiveDisentangler only).

    Returns
    -------
    fig : matplotlib.figure.Figure
        One image axes per shown sample.

    Examples
    --------
    >>> from deepclust import CDCClusterer
    >>> from deepclust.datasets import make_shape_images
    >>> from deepclust.plotting import plot_cluster_gallery
    >>> images, _ = make_shape_images(24, image_size=8, random_state=0)
    >>> cdc = CDCClusterer(n_clusters=3, max_epochs=1, batch_size=12,
    ...                    random_state=0).fit(images)
    >>> fig = plot_cluster_gallery(cdc, images, n_images=4, n_borderline=2)
    >>> len(fig.axes) == len(set(cdc.labels_))  # a row per non-empty cluster
    True
    """
    _check_image_model(estimator, "plot_cluster_gallery")
    labels, confidence, k = _clusters_of(
        estimator, X, labels, confidence, n_clusters, random_state
    )
    clusters = list(range(k)) if clusters is None else [int(c) for c in clusters]
    rows = [
        cluster_members(
            labels, confidence, c, n_confident=n_images, n_borderline=n_borderline
        )
        for c in clusters
    ]
    shown = np.concatenate(
        [np.concatenate([conf, border]) for _, conf, border in rows]
        + [np.zeros(0, dtype=np.int64)]
    ).astype(np.int64)
    images = _read_images(estimator, X, shown)
    by_position = dict(zip(shown.tolist(), images, strict=True))

    grid = []
    for cluster, (members, confident, borderline) in zip(clusters, rows, strict=True):
        if not len(members):
            grid.append((f"cluster {cluster}: empty (no sample falls in it)", []))
            continue
        title = (
            f"cluster {cluster}: {len(members)} samples, mean confidence "
            f"{np.nanmean(confidence[members]):.2f}"
        )
        if len(borderline):
            title += "; borderline samples framed in orange"
        cells = [(by_position[int(i)], f"{confidence[i]:.2f}", None) for i in confident]
        cells += [
            (by_position[int(i)], f"{confidence[i]:.2f}", _BORDERLINE_COLOUR)
            for i in borderline
        ]
        grid.append((title, cells))
    return _image_grid(grid, n_images + n_borderline)


def plot_head_gallery(
    estimator, X, *, heads=None, n_heads=8, n_images=8, activations=None
):
    """The top-activating images of ContrastiveDisentangler feature heads.

    One row per head (the idea of Fig. B.8 of the CD paper): the ``n_images``
    samples on which the head is most active, highest first. What they share is
    the feature the head detects.

    Parameters
    ----------
    estimator : ContrastiveDisentangler
        A fitted estimator trained on images.
    X : array-like, list of PIL images or paths, or a directory path
        The images, in any form the estimator accepts.
    heads : list of int, default=None
        Heads to show; None picks the ``n_heads`` heads whose activation varies
        most across X.
    n_heads : int, default=8
        Number of heads shown when ``heads`` is None.
    n_images : int, default=8
        Images per head.
    activations : ndarray of shape (n_inputs, estimator.n_heads), default=None
        Precomputed head activations (``transform`` with
        ``transform_output="heads"``).

    Returns
    -------
    fig : matplotlib.figure.Figure
        One image axes per shown sample.

    Examples
    --------
    >>> from deepclust import ContrastiveDisentangler
    >>> from deepclust.datasets import make_shape_images
    >>> from deepclust.plotting import plot_head_gallery
    >>> images, _ = make_shape_images(24, image_size=8, random_state=0)
    >>> cd = ContrastiveDisentangler(n_heads=6, max_epochs=1, batch_size=12,
    ...                              random_state=0).fit(images)
    >>> fig = plot_head_gallery(cd, images, n_heads=2, n_images=3)
    >>> len(fig.axes)  # one row of images per head
    2
    """
    _check_image_model(estimator, "plot_head_gallery")
    if activations is None:
        activations = head_activations(estimator, X)
    activations = np.asarray(activations, dtype=np.float64)
    heads = (
        most_varying_heads(activations, n_heads)
        if heads is None
        else [int(h) for h in heads]
    )
    tops = [top_activations(activations, head, n_images) for head in heads]
    shown = np.concatenate(tops + [np.zeros(0, dtype=np.int64)]).astype(np.int64)
    images = _read_images(estimator, X, np.unique(shown))
    by_position = dict(zip(np.unique(shown).tolist(), images, strict=True))

    grid = []
    for head, top in zip(heads, tops, strict=True):
        column = activations[:, head]
        title = (
            f"head {head}: mean activation {np.nanmean(column):.2f}, active (> 0.5) "
            f"on {np.nanmean(column > 0.5):.0%} of the samples"
        )
        grid.append(
            (
                title,
                [
                    (by_position[int(i)], f"{activations[i, head]:.2f}", None)
                    for i in top
                ],
            )
        )
    return _image_grid(grid, n_images)


def plot_head_histogram(estimator, X=None, *, activations=None, bins=40):
    """Distribution of ContrastiveDisentangler head activations.

    Left: the histogram of every activation of every head (the entropy term of
    the CD loss pushes them towards 0 and 1). Right: for each head, sorted, the
    fraction of samples on which it is active (> 0.5); heads always on or always
    off carry no information.

    Parameters
    ----------
    estimator : ContrastiveDisentangler
        A fitted estimator (images or tabular).
    X : array-like, default=None
        The data; not needed when ``activations`` is given.
    activations : ndarray of shape (n_inputs, estimator.n_heads), default=None
        Precomputed head activations.
    bins : int, default=40
        Histogram bins over [0, 1].

    Returns
    -------
    fig : matplotlib.figure.Figure
        Two axes.

    Examples
    --------
    >>> import numpy as np
    >>> from deepclust import ContrastiveDisentangler
    >>> from sklearn.datasets import make_blobs
    >>> from deepclust.plotting import plot_head_histogram
    >>> X, _ = make_blobs(n_samples=40, n_features=4, centers=2, random_state=0)
    >>> cd = ContrastiveDisentangler(n_heads=6, max_epochs=1, batch_size=20,
    ...                              random_state=0).fit(X)
    >>> len(plot_head_histogram(cd, X).axes)
    2
    """
    if activations is None:
        if X is None:
            raise ValueError("plot_head_histogram needs X or activations.")
        activations = head_activations(estimator, X)
    activations = np.asarray(activations, dtype=np.float64)
    activations = activations[np.isfinite(activations).all(axis=1)]
    fig = _new_figure(8.0, 3.0)
    left, right = fig.subplots(1, 2)
    left.hist(activations.ravel(), bins=bins, range=(0.0, 1.0), color="tab:blue")
    left.set_xlabel("activation")
    left.set_ylabel("count (all heads, all samples)")
    left.set_title("head activations", fontsize="medium")
    active = np.sort((activations > 0.5).mean(axis=0))[::-1]
    right.bar(np.arange(len(active)), active, width=1.0, color="tab:green")
    right.set_xlabel("head (sorted)")
    right.set_ylabel("fraction of samples active")
    right.set_ylim(0, 1)
    right.set_title("how often each head is on", fontsize="medium")
    return fig


# ---------------------------------------------------------------------------
# Map, curves, sizes, confusion
# ---------------------------------------------------------------------------


def _two_dimensions(values, method, random_state):
    """2-D coordinates of ``values`` and the name of the method used."""
    n_samples = len(values)
    if method == "auto":
        try:
            import umap  # noqa: F401

            method = "umap"
        except ImportError:
            method = "tsne"
    if method not in ("tsne", "umap", "pca"):
        raise ValueError(
            f"method must be 'auto', 'tsne', 'umap' or 'pca'; got {method!r}."
        )
    if n_samples < 5:
        method = "pca"  # t-SNE and UMAP need a few neighbours
    from sklearn.decomposition import PCA

    if method == "pca":
        n_components = min(2, *values.shape)
        coords = PCA(n_components, random_state=random_state).fit_transform(values)
        if coords.shape[1] < 2:
            coords = np.column_stack([coords, np.zeros(n_samples)])
        return coords, "PCA"
    # Reducing to 50 dimensions first is the usual t-SNE practice: faster, and
    # it drops noise dimensions.
    if values.shape[1] > 50 and n_samples > 50:
        values = PCA(50, random_state=random_state).fit_transform(values)
    if method == "umap":
        import umap

        reducer = umap.UMAP(
            n_neighbors=min(15, n_samples - 1), random_state=random_state
        )
        return reducer.fit_transform(values), "UMAP"
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, (n_samples - 1) / 3))
    # 500 iterations instead of 1000 halve the time (seconds per thousand
    # points on a CPU); the layout of the clusters is settled by then.
    coords = TSNE(
        2, perplexity=perplexity, init="pca", max_iter=500, random_state=random_state
    ).fit_transform(values)
    return coords, "t-SNE"


def plot_embedding_map(
    estimator,
    X,
    *,
    labels=None,
    n_clusters=None,
    method="auto",
    thumbnails=False,
    n_thumbnails=49,
    max_samples=1000,
    embeddings=None,
    random_state=0,
):
    """2-D map of the backbone embeddings, coloured by cluster.

    The L2-normalised embeddings (``embed``) are laid out by UMAP when the
    ``umap-learn`` package is installed, else by scikit-learn's t-SNE (after a
    PCA to 50 dimensions); points close on the map have similar embeddings, but
    distances between far-apart groups mean little.

    Parameters
    ----------
    estimator : CDCClusterer or ContrastiveDisentangler
        A fitted estimator.
    X : array-like, list of PIL images or paths, or a directory path
        The data, in any form the estimator accepts.
    labels : ndarray of shape (n_inputs,), default=None
        Colours; None uses :func:`~deepclust.inspection.assign_clusters` (a
        ContrastiveDisentangler without ``n_clusters`` is drawn in one colour).
    n_clusters : int, default=None
        Number of KMeans clusters for a ContrastiveDisentangler.
    method : {"auto", "tsne", "umap", "pca"}, default="auto"
        Layout; "auto" is UMAP when installed, else t-SNE.
    thumbnails : bool, default=False
        Draw small images over the map, spread over it (image models only).
    n_thumbnails : int, default=49
        At most this many thumbnails.
    max_samples : int, default=1000
        At most this many inputs (drawn at random) are mapped: t-SNE takes
        seconds per thousand points.
    embeddings : ndarray of shape (n_inputs, n_features), default=None
        Precomputed embeddings to map instead of ``embed(X)`` (NaN rows are left
        out).
    random_state : int, default=0
        Seed of the sampling, the layout and KMeans.

    Returns
    -------
    fig : matplotlib.figure.Figure

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from deepclust import CDCClusterer
    >>> from deepclust.plotting import plot_embedding_map
    >>> X, _ = make_blobs(n_samples=40, n_features=4, centers=2, random_state=0)
    >>> cdc = CDCClusterer(n_clusters=2, max_epochs=1, batch_size=20,
    ...                    random_state=0).fit(X)
    >>> fig = plot_embedding_map(cdc, X, method="pca")
    >>> fig.axes[0].get_title()
    'PCA map of 40 embeddings'
    """
    if thumbnails:
        _check_image_model(estimator, "thumbnails")
    sample, positions, n_inputs = subsample(X, max_samples, random_state)
    if len(positions) < n_inputs:
        labels = None if labels is None else np.asarray(labels)[positions]
        embeddings = None if embeddings is None else np.asarray(embeddings)[positions]
    if labels is None and (has_own_clusters(estimator) or n_clusters is not None):
        labels, _ = assign_clusters(
            estimator, sample, n_clusters=n_clusters, random_state=random_state
        )
    values = (
        normalized_embeddings(estimator, sample)
        if embeddings is None
        else np.asarray(embeddings, dtype=np.float64)
    )
    readable = np.isfinite(values).all(axis=1)
    coords, name = _two_dimensions(values[readable], method, random_state)

    fig = _new_figure(7.0, 6.0)
    ax = fig.subplots()
    shown = None if labels is None else np.asarray(labels)[readable]
    _scatter_clusters(ax, coords, shown)
    if thumbnails and readable.any():
        chosen = thumbnail_positions(coords, n_thumbnails)
        images = _read_images(estimator, sample, np.flatnonzero(readable)[chosen])
        _draw_thumbnails(ax, coords[chosen], images, estimator.image_size_)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{name} map of {int(readable.sum())} embeddings")
    return fig


def _scatter_clusters(ax, coords, labels):
    """Points of the map, one colour per cluster (one colour without labels)."""
    if labels is None:
        ax.scatter(coords[:, 0], coords[:, 1], s=6, color="tab:blue")
        return
    labels = np.asarray(labels)
    k = int(labels.max()) + 1 if len(labels) else 0
    cmap = _cluster_colours(k)
    for cluster in range(k):
        mask = labels == cluster
        if mask.any():
            ax.scatter(
                coords[mask, 0],
                coords[mask, 1],
                s=6,
                color=cmap[cluster],
                label=str(cluster),
            )
    if 0 < k <= 30:
        ax.legend(
            title="cluster",
            fontsize="x-small",
            markerscale=2,
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            frameon=False,
        )


def _draw_thumbnails(ax, coords, images, image_size):
    """Small framed images centred at ``coords`` (NaN pixels blank)."""
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    zoom = 24.0 / max(image_size)
    for point, image in zip(coords, images, strict=True):
        box = OffsetImage(
            np.nan_to_num(image, nan=1.0),
            cmap="gray" if image.ndim == 2 else None,
            zoom=zoom,
            interpolation="nearest",
        )
        box.get_children()[0].set_clim(0.0, 1.0)
        ax.add_artist(AnnotationBbox(box, point, frameon=True, pad=0.1))


def _cluster_colours(k):
    from matplotlib import colormaps

    cmap = colormaps["tab10" if k <= 10 else "tab20" if k <= 20 else "turbo"]
    if k > 20:
        return [cmap(i / max(1, k - 1)) for i in range(k)]
    return [cmap(i) for i in range(k)]


def _loss_parts(history):
    """Per-epoch means of the batch-level loss parts, {name: list}."""
    parts = {}
    for epoch in history:
        names = {
            name
            for batch in epoch["batches"]
            for name in batch
            # Lists hold one loss per cluster head: they only serve to pick the
            # head kept (head_losses_), and one curve per head would bury the
            # parts of the loss.
            if name.endswith("_loss")
            and name != "train_loss"
            and not isinstance(batch[name], list)
        }
        for name in names:
            values = [batch[name] for batch in epoch["batches"] if name in batch]
            parts.setdefault(name, {})[epoch["epoch"]] = float(np.mean(values))
    return parts


def plot_training_curves(estimator):
    """The training loss per epoch and its parts (instance, feature, entropy, ...).

    Left: ``train_loss`` per epoch. Right: the per-epoch mean of each part of
    the loss recorded per batch (CD: instance, feature, entropy; CDC: instance,
    cluster and, while self-labelling, self-label; the losses of the
    individual cluster heads are summarised by ``head_losses_`` instead). The
    CD total subtracts the entropy term.

    Parameters
    ----------
    estimator : CDCClusterer or ContrastiveDisentangler
        A fitted estimator (its ``history_``).

    Returns
    -------
    fig : matplotlib.figure.Figure
        Two axes.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from deepclust import ContrastiveDisentangler
    >>> from deepclust.plotting import plot_training_curves
    >>> X, _ = make_blobs(n_samples=40, n_features=4, centers=2, random_state=0)
    >>> cd = ContrastiveDisentangler(n_heads=6, max_epochs=2, batch_size=20,
    ...                              random_state=0).fit(X)
    >>> fig = plot_training_curves(cd)
    >>> sorted(line.get_label() for line in fig.axes[1].get_lines())
    ['entropy', 'feature', 'instance']
    """
    history = estimator.history_
    epochs = [int(epoch["epoch"]) for epoch in history]
    losses = [float(epoch.get("train_loss", np.nan)) for epoch in history]
    fig = _new_figure(9.0, 3.2)
    left, right = fig.subplots(1, 2)
    marker = "o" if len(epochs) <= 30 else None
    left.plot(epochs, losses, marker=marker, color="black", label="train_loss")
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    seconds = sum(float(epoch.get("dur", 0.0)) for epoch in history)
    left.set_title(
        f"training loss ({len(epochs)} epochs, {seconds:.1f} s)", fontsize="medium"
    )
    for name, values in sorted(_loss_parts(history).items()):
        xs = sorted(values)
        right.plot(
            xs, [values[x] for x in xs], marker=marker, label=name.removesuffix("_loss")
        )
    right.set_xlabel("epoch")
    right.set_title("loss parts (mean over the batches)", fontsize="medium")
    if right.get_lines():
        right.legend(fontsize="small")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    return fig


def plot_cluster_sizes(
    estimator, X=None, *, labels=None, n_clusters=None, random_state=0
):
    """Number of samples per cluster, against the equal share.

    Parameters
    ----------
    estimator : CDCClusterer or ContrastiveDisentangler
        A fitted estimator.
    X : array-like, default=None
        The data; None uses the training sizes (``cluster_sizes_``) of a
        CDCClusterer.
    labels : ndarray of shape (n_inputs,), default=None
        Precomputed cluster labels (-1: unreadable, not counted).
    n_clusters : int, default=None
        Number of KMeans clusters for a ContrastiveDisentangler.
    random_state : int, default=0
        Seed of KMeans (ContrastiveDisentangler only).

    Returns
    -------
    fig : matplotlib.figure.Figure

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from deepclust import CDCClusterer
    >>> from deepclust.plotting import plot_cluster_sizes
    >>> X, _ = make_blobs(n_samples=40, n_features=4, centers=2, random_state=0)
    >>> cdc = CDCClusterer(n_clusters=2, max_epochs=1, batch_size=20,
    ...                    random_state=0).fit(X)
    >>> len(plot_cluster_sizes(cdc).axes[0].patches)
    2
    """
    if labels is not None:
        labels = np.asarray(labels)
        k = n_clusters_of(estimator, labels, n_clusters)
        sizes = np.bincount(labels[labels >= 0], minlength=k)
        source = "labels given"
    elif X is None:
        if not hasattr(estimator, "cluster_sizes_"):
            raise ValueError(
                f"{type(estimator).__name__} has no cluster_sizes_: pass X (and "
                "n_clusters)."
            )
        sizes = np.asarray(estimator.cluster_sizes_)
        source = "training data"
    else:
        labels, _ = assign_clusters(
            estimator, X, n_clusters=n_clusters, random_state=random_state
        )
        sizes = np.bincount(
            labels[labels >= 0], minlength=n_clusters_of(estimator, labels, n_clusters)
        )
        source = "X"
    fig = _new_figure(max(4.0, 0.35 * len(sizes) + 1.5), 3.0)
    ax = fig.subplots()
    colours = _cluster_colours(len(sizes))
    ax.bar(np.arange(len(sizes)), sizes, color=colours)
    if len(sizes):
        ax.axhline(
            sizes.sum() / len(sizes), color="grey", linestyle="--", label="equal share"
        )
        ax.legend(fontsize="small")
    ax.set_xticks(np.arange(len(sizes)))
    ax.set_xlabel("cluster")
    ax.set_ylabel("samples")
    ax.set_title(
        f"cluster sizes ({int(sizes.sum())} samples, {source})", fontsize="medium"
    )
    return fig


def plot_confusion_matrix(
    estimator, X, y_true, *, labels=None, n_clusters=None, random_state=0
):
    """Confusion matrix of true classes against clusters after Hungarian matching.

    Clusters are matched one-to-one to classes so that the most samples agree
    (as :func:`deepclust.metrics.cluster_accuracy`); columns are ordered so that
    each matched cluster stands under its class, unmatched clusters last. The
    title gives ACC, NMI and ARI.

    Parameters
    ----------
    estimator : CDCClusterer or ContrastiveDisentangler
        A fitted estimator.
    X : array-like, list of PIL images or paths, or a directory path
        The data; may be None when ``labels`` is given.
    y_true : array-like of shape (n_inputs,)
        True classes. Unreadable inputs (label -1) are left out.
    labels : ndarray of shape (n_inputs,), default=None
        Precomputed cluster labels.
    n_clusters : int, default=None
        Number of KMeans clusters for a ContrastiveDisentangler.
    random_state : int, default=0
        Seed of KMeans (ContrastiveDisentangler only).

    Returns
    -------
    fig : matplotlib.figure.Figure

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from deepclust import CDCClusterer
    >>> from deepclust.plotting import plot_confusion_matrix
    >>> X, y = make_blobs(n_samples=40, n_features=4, centers=2, random_state=0)
    >>> cdc = CDCClusterer(n_clusters=2, max_epochs=1, batch_size=20,
    ...                    random_state=0).fit(X)
    >>> fig = plot_confusion_matrix(cdc, X, y)
    >>> fig.axes[0].get_title().startswith("ACC")
    True
    """
    from scipy.optimize import linear_sum_assignment

    from deepclust.metrics import clustering_scores, format_scores

    if labels is None:
        labels, _ = assign_clusters(
            estimator, X, n_clusters=n_clusters, random_state=random_state
        )
    labels = np.asarray(labels)
    y_true = np.asarray(y_true)
    if len(y_true) != len(labels):
        raise ValueError(
            f"y_true has {len(y_true)} labels for {len(labels)} inputs; one per "
            "input is needed."
        )
    keep = labels >= 0
    classes, y_index = np.unique(y_true[keep], return_inverse=True)
    k = n_clusters_of(estimator, labels, n_clusters)
    counts = np.zeros((len(classes), k), dtype=np.int64)
    np.add.at(counts, (y_index, labels[keep]), 1)
    rows, columns = linear_sum_assignment(counts, maximize=True)
    order = list(columns[np.argsort(rows)]) + [c for c in range(k) if c not in columns]
    table = counts[:, order]
    fig = _new_figure(max(4.0, 0.45 * k + 2.0), max(3.5, 0.4 * len(classes) + 1.5))
    ax = fig.subplots()
    image = ax.imshow(table, cmap="Blues", aspect="auto")
    fig.colorbar(image, ax=ax, label="samples")
    ax.set_xticks(np.arange(k), [str(c) for c in order])
    ax.set_yticks(np.arange(len(classes)), [str(c) for c in classes])
    ax.set_xlabel("cluster (matched order)")
    ax.set_ylabel("true class")
    if table.size <= 400:
        threshold = table.max() / 2 if table.size else 0
        for (row, column), value in np.ndenumerate(table):
            ax.text(
                column,
                row,
                str(value),
                ha="center",
                va="center",
                fontsize="x-small",
                color="white" if value > threshold else "black",
            )
    ax.set_title(
        format_scores(clustering_scores(y_true[keep], labels[keep])), fontsize="medium"
    )
    return fig


def plot_k_selection(result, ax=None):
    """Stability against the number of clusters, from ``select_n_clusters``.

    Points are the mean ARI over the pairs of subsamples, bars one standard
    deviation; the band shows the tolerance under the best stability and the
    dashed line the chosen k (the largest k inside the band).

    Parameters
    ----------
    result : deepclust.model_selection.KSelection
        Output of :func:`deepclust.model_selection.select_n_clusters`.
    ax : matplotlib Axes, default=None
        Axes to draw on; None makes a new figure.

    Returns
    -------
    fig : matplotlib.figure.Figure

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from deepclust.model_selection import select_n_clusters
    >>> X, _ = make_blobs(n_samples=200, centers=3, random_state=0)
    >>> result = select_n_clusters(X, range(2, 6), model="precomputed",
    ...                            n_resamples=3)
    >>> result.plot().axes[0].get_xlabel()
    'number of clusters k'
    """
    if ax is None:
        fig = _new_figure(6.0, 3.5)
        ax = fig.subplots()
    else:
        fig = ax.figure
    k_values = result.k_values
    stability = result.stability
    best = float(stability.max())
    ax.axhspan(
        best - result.tolerance,
        best,
        color="tab:green",
        alpha=0.15,
        label=f"within {result.tolerance:g} of the best",
    )
    ax.errorbar(
        k_values,
        stability,
        yerr=result.stability_std,
        marker="o",
        capsize=3,
        color="tab:blue",
        label="stability (mean ARI)",
    )
    ax.axvline(
        result.n_clusters,
        color="tab:red",
        linestyle="--",
        label=f"chosen k = {result.n_clusters}",
    )
    ax.set_xticks(k_values)
    ax.set_xlabel("number of clusters k")
    ax.set_ylabel("stability")
    ax.set_ylim(min(0.0, float((stability - result.stability_std).min())) - 0.02, 1.02)
    ax.legend(fontsize="small", loc="lower left")
    ax.grid(alpha=0.3)
    ax.set_title("stability of KMeans under resampling", fontsize="medium")
    return fig
