"""Clustering quality scores against ground-truth labels.

Cluster indices are arbitrary, so accuracy needs the best one-to-one match
between clusters and classes first: :func:`cluster_accuracy` finds it with
the Hungarian algorithm (:func:`scipy.optimize.linear_sum_assignment`). NMI
and ARI come straight from scikit-learn; :func:`clustering_scores` gathers the
three numbers reported in the deep clustering literature.
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

from collections.abc import Mapping
from numbers import Real

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import (
    adjusted_rand_score,
    normalized_mutual_info_score,
    silhouette_score,
)
from sklearn.metrics.cluster import contingency_matrix

__all__ = [
    "cluster_accuracy",
    "clustering_scores",
    "format_scores",
    "silhouette_scorer",
]


def _check_label_pair(y_true, y_pred):
    """Return both label vectors as 1-D arrays of the same, non-zero length."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    for name, labels in (("y_true", y_true), ("y_pred", y_pred)):
        if labels.ndim != 1:
            raise ValueError(
                f"{name} must be a 1-D array of labels; got shape {labels.shape}."
            )
    if len(y_true) != len(y_pred):
        raise ValueError(
            "y_true and y_pred must have the same length; got "
            f"{len(y_true)} and {len(y_pred)}."
        )
    if len(y_true) == 0:
        raise ValueError("y_true and y_pred must not be empty.")
    return y_true, y_pred


def cluster_accuracy(y_true, y_pred):
    """Accuracy of a clustering under the best cluster-to-class matching.

    Each cluster is matched to at most one class, and each class to at most
    one cluster, so that the number of correctly matched samples is maximal
    (Hungarian algorithm on the contingency table). When there are more
    clusters than classes, the samples of the unmatched clusters count as
    errors; when there are fewer, the unmatched classes are never predicted.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Ground-truth class labels, of any hashable and sortable type (ints,
        strings...).
    y_pred : array-like of shape (n_samples,)
        Cluster labels, of any such type; ``-1`` (noise) is an ordinary
        cluster.

    Returns
    -------
    accuracy : float
        Fraction of samples whose cluster is matched to their class, in
        [0, 1].

    See Also
    --------
    clustering_scores : Accuracy, NMI and ARI at once.
    sklearn.metrics.cluster.contingency_matrix : The table being matched.

    Examples
    --------
    >>> from deepclust.metrics import cluster_accuracy
    >>> cluster_accuracy([0, 0, 1, 1], [1, 1, 0, 0])
    1.0
    >>> round(cluster_accuracy([0, 0, 1, 1, 2, 2], [1, 1, 0, 0, 0, 0]), 4)
    0.6667
    """
    y_true, y_pred = _check_label_pair(y_true, y_pred)
    # Rows are classes and columns clusters; a rectangular table is fine.
    counts = contingency_matrix(y_true, y_pred)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(y_true))


def clustering_scores(y_true, y_pred):
    """Compute the accuracy, NMI and ARI of a clustering.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Ground-truth class labels.
    y_pred : array-like of shape (n_samples,)
        Cluster labels.

    Returns
    -------
    scores : dict
        ``{"acc": ..., "nmi": ..., "ari": ...}`` with the Hungarian accuracy
        (:func:`cluster_accuracy`), the normalized mutual information
        (:func:`sklearn.metrics.normalized_mutual_info_score`, arithmetic
        mean) and the adjusted Rand index
        (:func:`sklearn.metrics.adjusted_rand_score`), as floats.

    See Also
    --------
    format_scores : One-line summary of the result.

    Examples
    --------
    >>> from deepclust.metrics import clustering_scores
    >>> clustering_scores([0, 0, 1, 1], [1, 1, 0, 0])
    {'acc': 1.0, 'nmi': 1.0, 'ari': 1.0}
    """
    y_true, y_pred = _check_label_pair(y_true, y_pred)
    return {
        "acc": cluster_accuracy(y_true, y_pred),
        "nmi": float(normalized_mutual_info_score(y_true, y_pred)),
        "ari": float(adjusted_rand_score(y_true, y_pred)),
    }


def format_scores(scores):
    """Format clustering scores on one line.

    Parameters
    ----------
    scores : dict
        Mapping of score names to numbers, such as the output of
        :func:`clustering_scores`.

    Returns
    -------
    text : str
        The names in upper case, each followed by its value with three
        decimals, separated by two spaces, in the order of ``scores``.

    Examples
    --------
    >>> from deepclust.metrics import format_scores
    >>> format_scores({"acc": 0.9123, "nmi": 0.8712, "ari": 0.84})
    'ACC 0.912  NMI 0.871  ARI 0.840'
    """
    if not isinstance(scores, Mapping) or not scores:
        raise ValueError(
            f"scores must be a non-empty dict of name -> number; got {scores!r}."
        )
    for name, value in scores.items():
        if isinstance(value, bool) or not isinstance(value, Real):
            raise ValueError(
                f"scores must map names to numbers; got {value!r} for {name!r}."
            )
    return "  ".join(
        f"{str(name).upper()} {value:.3f}" for name, value in scores.items()
    )


def silhouette_scorer(estimator, X, y=None):
    """Silhouette of a fitted clusterer's labels in its embedding space.

    A label-free scorer for :class:`sklearn.model_selection.GridSearchCV`
    (``scoring=silhouette_scorer``): higher is better.

    Parameters
    ----------
    estimator : estimator instance
        Fitted clusterer with ``transform`` and ``predict`` methods.
    X : array-like of shape (n_samples, ...)
        Data to embed and to cluster.
    y : Ignored
        Not used, present here for API consistency by convention.

    Returns
    -------
    score : float
        :func:`sklearn.metrics.silhouette_score` of ``estimator.predict(X)``
        on ``estimator.transform(X)``, in [-1, 1]. The silhouette is not
        defined for fewer than 2 distinct labels, nor for as many labels as
        samples; such degenerate clusterings get the worst score, -1.0.

    Examples
    --------
    >>> from sklearn.cluster import KMeans
    >>> from sklearn.datasets import make_blobs
    >>> from deepclust.metrics import silhouette_scorer
    >>> X, _ = make_blobs(n_samples=30, centers=3, random_state=0)
    >>> km = KMeans(n_clusters=3, n_init=2, random_state=0).fit(X)
    >>> -1.0 <= silhouette_scorer(km, X) <= 1.0
    True
    """
    embedding = estimator.transform(X)
    labels = estimator.predict(X)
    n_labels = len(np.unique(labels))
    if n_labels < 2 or n_labels >= len(labels):
        return -1.0
    return float(silhouette_score(embedding, labels))
