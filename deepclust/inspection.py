"""What a user sees of a fitted model: which inputs, in which cluster, how surely.

The figures (:mod:`deepclust.plotting`), the HTML report
(:mod:`deepclust.report`) and the command line show a fitted model through the
same few choices, made here once and without drawing anything (this module
needs neither matplotlib nor torch):

- which inputs: :func:`sample_positions` and :func:`subsample` draw a
  reproducible random sample of at most ``max_samples`` inputs, and
  :func:`take` reads the inputs at some positions only (a path is resolved once,
  by :func:`deepclust._inputs.resolve_path`);
- in which cluster, how surely: :func:`labels_and_confidence` turns
  probabilities into labels and confidences, :func:`assign_clusters` does it
  for an estimator (KMeans on the embeddings of a ContrastiveDisentangler,
  :func:`kmeans_clusters`);
- which ones to show: :func:`cluster_members` (each cluster's most confident
  and borderline members), :func:`most_varying_heads` and
  :func:`top_activations` (the feature heads and their top inputs), and
  :func:`thumbnail_positions` (inputs spread over a 2-D map).

Unreadable inputs (``on_error="skip"``) keep their position everywhere: label
-1, NaN confidence, NaN embeddings and activations, and they are never shown.
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

import os

import numpy as np

from deepclust._inputs import labels_from_proba, resolve_path

__all__ = [
    "assign_clusters",
    "cluster_members",
    "has_own_clusters",
    "head_activations",
    "kmeans_clusters",
    "labels_and_confidence",
    "most_varying_heads",
    "n_clusters_of",
    "n_inputs",
    "normalized_embeddings",
    "sample_positions",
    "subsample",
    "take",
    "thumbnail_positions",
    "top_activations",
]


# ---------------------------------------------------------------------------
# Which inputs
# ---------------------------------------------------------------------------


def n_inputs(X):
    """Number of inputs that X stands for.

    Parameters
    ----------
    X : array-like, list of PIL images or paths, or a path
        Any input the estimators accept; a path is resolved by
        :func:`deepclust._inputs.resolve_path` (a folder stands for its image
        files, a ``.npy`` file for its rows).

    Returns
    -------
    n : int

    Examples
    --------
    >>> import numpy as np
    >>> from deepclust.inspection import n_inputs
    >>> n_inputs(np.zeros((5, 3))), n_inputs(["a.png", "b.png"])
    (5, 2)
    """
    if isinstance(X, (str, os.PathLike)):
        X = resolve_path(X)
    return len(X)


def take(X, positions):
    """The inputs of X at ``positions``, without reading any other input.

    Parameters
    ----------
    X : array-like, list of PIL images or paths, or a path
        Any input the estimators accept; a path is resolved by
        :func:`deepclust._inputs.resolve_path`.
    positions : array-like of int
        Positions in X, in the order wanted.

    Returns
    -------
    X_taken : list or ndarray
        A list for lists (and folders: their files), an array for arrays. The
        rows of a memory-mapped array are read in file order, and only them.

    Examples
    --------
    >>> import numpy as np
    >>> from deepclust.inspection import take
    >>> take(np.arange(10).reshape(5, 2), [3, 1]).tolist()
    [[6, 7], [2, 3]]
    >>> take(["a.png", "b.png", "c.png"], [2, 0])
    ['c.png', 'a.png']
    """
    positions = np.asarray(positions, dtype=np.int64)
    if isinstance(X, (str, os.PathLike)):
        X = resolve_path(X)
    if isinstance(X, (list, tuple)):
        return [X[i] for i in positions]
    if isinstance(X, np.memmap):
        # Rows read in file order, then put in the order asked for.
        rows = np.asarray(X[np.sort(positions)])
        return rows[np.argsort(np.argsort(positions))]
    return np.asarray(X)[positions]


def sample_positions(n_inputs, max_samples, random_state=0):
    """Sorted positions of a random sample of at most ``max_samples`` inputs.

    Parameters
    ----------
    n_inputs : int
        Number of inputs.
    max_samples : int
        Most positions returned; all of them when ``n_inputs <= max_samples``.
    random_state : int or numpy.random.Generator, default=0
        Seed of the draw (a Generator is used, and advanced, as it is).

    Returns
    -------
    positions : ndarray of shape (min(n_inputs, max_samples),)
        Distinct positions, in increasing order.

    Examples
    --------
    >>> from deepclust.inspection import sample_positions
    >>> sample_positions(4, 10).tolist()
    [0, 1, 2, 3]
    >>> positions = sample_positions(1000, 5, random_state=0)
    >>> len(positions), positions.tolist() == sorted(set(positions.tolist()))
    (5, True)
    """
    if n_inputs <= max_samples:
        return np.arange(n_inputs)
    rng = np.random.default_rng(random_state)
    return np.sort(rng.choice(n_inputs, max_samples, replace=False))


def subsample(X, max_samples, random_state=0):
    """A random sample of at most ``max_samples`` inputs of X, in input order.

    Parameters
    ----------
    X : array-like, list of PIL images or paths, or a path
        Any input the estimators accept; a path is resolved once, by
        :func:`deepclust._inputs.resolve_path` (a folder becomes the list of
        its files, so that unreadable ones can be named).
    max_samples : int
        Most inputs kept.
    random_state : int or numpy.random.Generator, default=0
        Seed of the draw (:func:`sample_positions`).

    Returns
    -------
    sample : list or ndarray
        The inputs kept (X itself, resolved, when none is left out).
    positions : ndarray of int
        Their positions in X.
    n_inputs : int
        Number of inputs of X.

    Examples
    --------
    >>> import numpy as np
    >>> from deepclust.inspection import subsample
    >>> sample, positions, n = subsample(np.arange(100), 3, random_state=0)
    >>> n, np.array_equal(sample, positions)
    (100, True)
    """
    if isinstance(X, (str, os.PathLike)):
        X = resolve_path(X)
    n = len(X)
    positions = sample_positions(n, max_samples, random_state)
    if len(positions) == n:
        return X, positions, n
    return take(X, positions), positions, n


# ---------------------------------------------------------------------------
# In which cluster, how surely
# ---------------------------------------------------------------------------


def labels_and_confidence(proba):
    """Labels and confidences from probabilities; -1 and NaN for unreadable rows.

    The label is :func:`deepclust._inputs.labels_from_proba`'s (the argmax of
    each row, -1 for a row with NaN) and the confidence is the probability of
    that label.

    Parameters
    ----------
    proba : array-like of shape (n_samples, n_clusters)
        Cluster probabilities, with NaN rows for inputs that could not be read.

    Returns
    -------
    labels : ndarray of shape (n_samples,)
        int64 cluster indices, -1 for NaN rows.
    confidence : ndarray of shape (n_samples,)
        float64 top probability, NaN for NaN rows.

    Examples
    --------
    >>> import numpy as np
    >>> from deepclust.inspection import labels_and_confidence
    >>> labels, confidence = labels_and_confidence(
    ...     np.array([[0.2, 0.8], [np.nan, np.nan], [0.9, 0.1]]))
    >>> labels.tolist(), confidence.tolist()
    ([1, -1, 0], [0.8, nan, 0.9])
    """
    proba = np.asarray(proba)
    labels = labels_from_proba(proba)
    confidence = np.full(len(labels), np.nan)
    readable = labels >= 0
    confidence[readable] = proba[readable, labels[readable]]
    return labels, confidence


def has_own_clusters(estimator):
    """Whether an estimator has clusters of its own (``predict_proba``).

    A :class:`~deepclust.CDCClusterer` has; a
    :class:`~deepclust.ContrastiveDisentangler` has not: its embeddings are
    clustered with KMeans instead (:func:`assign_clusters`).

    Parameters
    ----------
    estimator : estimator
        A deepclust estimator (or an :class:`~deepclust.onnx.OnnxClusterer`).

    Returns
    -------
    has : bool
    """
    return hasattr(estimator, "predict_proba")


def normalized_embeddings(estimator, X):
    """L2-normalised backbone embeddings (``embed``); NaN rows for unreadable inputs.

    Contrastive embeddings are compared by cosine (as ``deepclust select-k``
    does); on the unit sphere, Euclidean distances rank neighbours as the
    cosine does.

    Parameters
    ----------
    estimator : CDCClusterer or ContrastiveDisentangler
        A fitted estimator.
    X : array-like, list of PIL images or paths, or a path
        The data, in any form the estimator accepts.

    Returns
    -------
    embeddings : ndarray of shape (n_inputs, n_features)
        float64 rows of norm 1 (0 for an all-zero embedding, NaN when
        unreadable).
    """
    values = np.asarray(estimator.embed(X), dtype=np.float64)
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    return values / np.where(norms > 0, norms, 1.0)


def kmeans_clusters(embeddings, n_clusters, random_state=0):
    """KMeans labels of embeddings and how confidently each input belongs there.

    The confidence is ``1 - d1 / d2`` (d1, d2: distances to the nearest and
    second nearest centres; 1 at a centre, 0 halfway between two).

    Parameters
    ----------
    embeddings : ndarray of shape (n_inputs, n_features)
        Embeddings; NaN rows (unreadable inputs) are left out of the fit.
    n_clusters : int
        Number of clusters.
    random_state : int, default=0
        Seed of KMeans.

    Returns
    -------
    labels : ndarray of shape (n_inputs,)
        Cluster indices; -1 for NaN rows.
    confidence : ndarray of shape (n_inputs,)
        In [0, 1]; NaN for NaN rows.

    Raises
    ------
    ValueError
        If fewer than ``n_clusters`` rows are readable.

    Examples
    --------
    >>> import numpy as np
    >>> from deepclust.inspection import kmeans_clusters
    >>> points = np.array([[0.0], [0.1], [5.0], [5.1], [np.nan]])
    >>> labels, confidence = kmeans_clusters(points, 2)
    >>> bool(labels[0] == labels[1] != labels[2] == labels[3]), int(labels[4])
    (True, -1)
    """
    from sklearn.cluster import KMeans

    values = np.asarray(embeddings, dtype=np.float64)
    readable = np.isfinite(values).all(axis=1)
    if readable.sum() < n_clusters:
        raise ValueError(
            f"{int(readable.sum())} readable inputs cannot form "
            f"n_clusters={n_clusters} clusters."
        )
    kmeans = KMeans(n_clusters, n_init=10, random_state=random_state).fit(
        values[readable]
    )
    distances = np.sort(kmeans.transform(values[readable]), axis=1)
    labels = np.full(len(values), -1, dtype=np.int64)
    labels[readable] = kmeans.labels_
    confidence = np.full(len(values), np.nan)
    second = np.where(distances[:, 1] > 0, distances[:, 1], 1.0)
    confidence[readable] = 1.0 - distances[:, 0] / second
    return labels, confidence


def assign_clusters(estimator, X, *, n_clusters=None, random_state=0, embeddings=None):
    """Cluster of every input and how confidently it belongs there.

    For a :class:`~deepclust.CDCClusterer` the cluster is ``predict``'s and the
    confidence the top probability of ``predict_proba``
    (:func:`labels_and_confidence`). A
    :class:`~deepclust.ContrastiveDisentangler` has no clusters: its
    L2-normalised backbone embeddings are clustered with KMeans into
    ``n_clusters``, and the confidence is ``1 - d1 / d2``
    (:func:`kmeans_clusters`).

    Parameters
    ----------
    estimator : CDCClusterer or ContrastiveDisentangler
        A fitted estimator.
    X : array-like, list of PIL images or paths, or a directory path
        The data, in any form the estimator accepts.
    n_clusters : int, default=None
        Number of KMeans clusters, for a ContrastiveDisentangler only (required
        there; ``deepclust select-k`` helps choose it).
    random_state : int, default=0
        Seed of KMeans.
    embeddings : ndarray of shape (n_inputs, n_features), default=None
        Precomputed :func:`normalized_embeddings` of X, for a
        ContrastiveDisentangler (saves a pass over X).

    Returns
    -------
    labels : ndarray of shape (n_inputs,)
        Cluster indices; -1 for unreadable inputs.
    confidence : ndarray of shape (n_inputs,)
        In [0, 1]; NaN for unreadable inputs.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from deepclust import CDCClusterer
    >>> from deepclust.inspection import assign_clusters
    >>> X, _ = make_blobs(n_samples=40, n_features=4, centers=2, random_state=0)
    >>> cdc = CDCClusterer(n_clusters=2, max_epochs=1, batch_size=20,
    ...                    random_state=0).fit(X)
    >>> labels, confidence = assign_clusters(cdc, X)
    >>> labels.shape, bool((confidence >= 0.5).all())
    ((40,), True)
    """
    if has_own_clusters(estimator):
        if n_clusters is not None and n_clusters != estimator.n_clusters:
            raise ValueError(
                f"n_clusters={n_clusters} differs from the model's n_clusters="
                f"{estimator.n_clusters}; a CDCClusterer's clusters are its own."
            )
        return labels_and_confidence(estimator.predict_proba(X))
    if n_clusters is None:
        raise ValueError(
            f"{type(estimator).__name__} has no clusters of its own: pass n_clusters "
            "(its embeddings are then clustered with KMeans; 'deepclust select-k' "
            "helps choose n_clusters)."
        )
    if embeddings is None:
        embeddings = normalized_embeddings(estimator, X)
    return kmeans_clusters(embeddings, n_clusters, random_state)


def n_clusters_of(estimator, labels=None, n_clusters=None):
    """Number of clusters: the estimator's own, else ``n_clusters``, else the labels'.

    Parameters
    ----------
    estimator : estimator
        A fitted estimator.
    labels : array-like of int, default=None
        Cluster labels (-1: unreadable); the number is one more than the
        largest, or 0 without any.
    n_clusters : int, default=None
        The number of KMeans clusters of a ContrastiveDisentangler.

    Returns
    -------
    k : int
    """
    if has_own_clusters(estimator):
        return estimator.n_clusters
    if n_clusters is not None:
        return n_clusters
    labels = np.asarray([] if labels is None else labels)
    return int(labels.max()) + 1 if (labels >= 0).any() else 0


# ---------------------------------------------------------------------------
# Which ones to show
# ---------------------------------------------------------------------------


def cluster_members(labels, confidence, cluster, *, n_confident, n_borderline=0):
    """A cluster's members, its most confident ones and its borderline ones.

    Parameters
    ----------
    labels, confidence : ndarray of shape (n_inputs,)
        Output of :func:`assign_clusters`.
    cluster : int
        The cluster.
    n_confident : int
        Most confident members returned, highest confidence first (ties in
        input order).
    n_borderline : int, default=0
        Least confident members returned, lowest confidence first, never among
        the confident ones.

    Returns
    -------
    members : ndarray of int
        Positions of every member, in input order.
    confident : ndarray of int
        The ``n_confident`` (or fewer) most confident members.
    borderline : ndarray of int
        The ``n_borderline`` (or fewer) least confident of the others.

    Examples
    --------
    >>> import numpy as np
    >>> from deepclust.inspection import cluster_members
    >>> labels = np.array([0, 1, 0, 0, 0])
    >>> confidence = np.array([0.9, 0.5, 0.6, 0.99, 0.7])
    >>> members, confident, borderline = cluster_members(
    ...     labels, confidence, 0, n_confident=2, n_borderline=1)
    >>> members.tolist(), confident.tolist(), borderline.tolist()
    ([0, 2, 3, 4], [3, 0], [2])
    """
    labels = np.asarray(labels)
    confidence = np.asarray(confidence, dtype=np.float64)
    members = np.flatnonzero(labels == cluster)
    order = members[np.argsort(-confidence[members], kind="stable")]
    confident = order[:n_confident]
    rest = order[len(confident) :]
    borderline = rest[::-1][:n_borderline] if n_borderline else rest[:0]
    return members, confident, borderline


def head_activations(estimator, X):
    """Activations of a ContrastiveDisentangler's feature heads on X.

    The estimator's ``transform_output`` is left as the user set it.

    Parameters
    ----------
    estimator : ContrastiveDisentangler
        A fitted estimator.
    X : array-like, list of PIL images or paths, or a path
        The data, in any form the estimator accepts.

    Returns
    -------
    activations : ndarray of shape (n_inputs, estimator.n_heads)
        float64 in [0, 1]; NaN rows for unreadable inputs.

    Raises
    ------
    ValueError
        If the estimator has no feature heads.
    """
    params = estimator.get_params()
    if "n_heads" not in params:
        raise ValueError(
            "head plots need a ContrastiveDisentangler; got a "
            f"{type(estimator).__name__}."
        )
    previous = params["transform_output"]
    try:
        estimator.set_params(transform_output="heads")
        return np.asarray(estimator.transform(X), dtype=np.float64)
    finally:
        estimator.set_params(transform_output=previous)


def most_varying_heads(activations, n_heads):
    """The ``n_heads`` heads whose activation varies most across the inputs.

    They separate the data most; constant heads (always on or off) show
    nothing.

    Parameters
    ----------
    activations : ndarray of shape (n_inputs, n_all_heads)
        Head activations (NaN rows are ignored).
    n_heads : int
        Number of heads returned.

    Returns
    -------
    heads : list of int
        Most varying first (ties in head order).

    Examples
    --------
    >>> import numpy as np
    >>> from deepclust.inspection import most_varying_heads
    >>> most_varying_heads(np.array([[0.5, 0.0, 1.0], [0.5, 1.0, 0.0]]), 2)
    [1, 2]
    """
    variance = np.nanvar(np.asarray(activations, dtype=np.float64), axis=0)
    return np.argsort(-variance, kind="stable")[:n_heads].tolist()


def top_activations(activations, head, n_images):
    """The inputs on which a head is most active, highest first.

    Parameters
    ----------
    activations : ndarray of shape (n_inputs, n_heads)
        Head activations; NaN rows (unreadable inputs) are never returned.
    head : int
        The head.
    n_images : int
        Most positions returned.

    Returns
    -------
    positions : ndarray of int
        Highest activation first (ties in input order).

    Examples
    --------
    >>> import numpy as np
    >>> from deepclust.inspection import top_activations
    >>> activations = np.array([[0.1], [np.nan], [0.9], [0.5]])
    >>> top_activations(activations, 0, 5).tolist()
    [2, 3, 0]
    """
    column = np.asarray(activations, dtype=np.float64)[:, head]
    filled = np.where(np.isfinite(column), column, -np.inf)
    top = np.argsort(-filled, kind="stable")[:n_images]
    return top[np.isfinite(filled[top])]


def thumbnail_positions(coords, n_thumbnails):
    """Points spread over a 2-D map: the one nearest each cell of a coarse grid.

    Parameters
    ----------
    coords : ndarray of shape (n_points, 2)
        Map coordinates.
    n_thumbnails : int
        Most points returned; the grid has ``ceil(sqrt(n_thumbnails))`` cells a
        side, and empty cells give none.

    Returns
    -------
    positions : ndarray of int
        Rows of ``coords``, in increasing order.

    Examples
    --------
    >>> import numpy as np
    >>> from deepclust.inspection import thumbnail_positions
    >>> points = np.array([[0, 0], [0.2, 0.2], [1, 1], [0, 1], [1, 0]])
    >>> thumbnail_positions(points, 4).tolist()  # one per quarter of the map
    [1, 2, 3, 4]
    """
    coords = np.asarray(coords, dtype=np.float64)
    side = max(1, int(np.ceil(np.sqrt(n_thumbnails))))
    low, high = coords.min(axis=0), coords.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    cells = np.minimum(((coords - low) / span * side).astype(int), side - 1)
    chosen = {}
    centre = (cells + 0.5) / side * span + low
    distance = np.linalg.norm(coords - centre, axis=1)
    for index in np.argsort(distance):
        chosen.setdefault(tuple(cells[index]), int(index))
    return np.array(sorted(chosen.values())[:n_thumbnails], dtype=np.int64)
