"""Testing for the clustering metrics."""

import itertools

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import silhouette_score

from deepclust.metrics import (
    cluster_accuracy,
    clustering_scores,
    format_scores,
    silhouette_scorer,
)


def _brute_force_accuracy(y_true, y_pred):
    """Best accuracy over every injective cluster-to-class assignment."""
    classes = np.unique(y_true)
    clusters = np.unique(y_pred)
    best = 0
    # Pad with None so that clusters may stay unmatched when they outnumber
    # the classes, and classes when they outnumber the clusters.
    targets = list(classes) + [None] * len(clusters)
    for assignment in itertools.permutations(targets, len(clusters)):
        mapping = dict(zip(clusters, assignment, strict=True))
        correct = sum(mapping[p] == t for t, p in zip(y_true, y_pred, strict=True))
        best = max(best, correct)
    return best / len(y_true)


def test_perfect_permuted_labels():
    # Check that a relabelled perfect clustering has accuracy 1.
    y_true = np.array([0, 0, 1, 1, 2, 2, 2])
    permutation = np.array([2, 0, 1])
    assert cluster_accuracy(y_true, permutation[y_true]) == 1.0


def test_hand_computed_accuracy():
    # Check a hand-computed case: classes 1 and 2 share cluster 0, so only one
    # of them can be matched (2 + 2 correct out of 6).
    accuracy = cluster_accuracy([0, 0, 1, 1, 2, 2], [1, 1, 0, 0, 0, 0])
    assert accuracy == pytest.approx(4 / 6)


def test_more_clusters_than_classes():
    # Check that samples of clusters left unmatched count as errors: cluster 0
    # -> class 0 (3), cluster 1 -> class 1 (2), cluster 2 unmatched (2 errors).
    y_true = [0, 0, 0, 1, 1, 1, 1]
    y_pred = [0, 0, 0, 1, 1, 2, 2]
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(5 / 7)


def test_fewer_clusters_than_classes():
    # Check that unmatched classes are never predicted: cluster 0 -> class 0
    # (3 of its 4), cluster 1 -> class 2 (3), class 1 left out.
    y_true = [0, 0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 0, 0, 1, 1, 1, 1]
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(6 / 8)


def test_arbitrary_label_types():
    # Check that string classes and a -1 noise cluster are handled.
    y_true = ["cat", "cat", "dog", "dog", "bird"]
    y_pred = [-1, -1, 7, 7, 7]
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(4 / 5)
    assert cluster_accuracy(["b", "a", "a"], ["x", "y", "y"]) == 1.0


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force(seed):
    # Check against an exhaustive search over assignments on small random
    # labelings with as many, more or fewer clusters than classes.
    rng = np.random.RandomState(seed)
    n_classes, n_clusters = rng.randint(1, 5, size=2)
    y_true = rng.randint(n_classes, size=12)
    y_pred = rng.randint(n_clusters, size=12)
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(
        _brute_force_accuracy(y_true, y_pred)
    )


def test_accuracy_is_a_float():
    # Check that the accuracy is a Python float.
    assert type(cluster_accuracy(np.array([1, 2]), np.array([0, 0]))) is float


@pytest.mark.parametrize(
    "y_true, y_pred, match",
    [
        ([0, 1, 1], [0, 1], "same length; got 3 and 2"),
        ([], [], "must not be empty"),
        ([[0, 1]], [0, 1], "y_true must be a 1-D array"),
        ([0, 1], [[0], [1]], "y_pred must be a 1-D array"),
    ],
)
def test_invalid_labels(y_true, y_pred, match):
    # Check that mismatched, empty or multi-dimensional labels are rejected.
    with pytest.raises(ValueError, match=match):
        cluster_accuracy(y_true, y_pred)
    with pytest.raises(ValueError, match=match):
        clustering_scores(y_true, y_pred)


def test_clustering_scores():
    # Check the keys, types and ranges of the scores, and their values on a
    # perfect and a partial clustering.
    scores = clustering_scores([0, 0, 1, 1], [5, 5, 3, 3])
    assert scores == {"acc": 1.0, "nmi": 1.0, "ari": 1.0}

    rng = np.random.RandomState(0)
    scores = clustering_scores(rng.randint(3, size=50), rng.randint(4, size=50))
    assert list(scores) == ["acc", "nmi", "ari"]
    assert all(type(value) is float for value in scores.values())
    assert 0.0 <= scores["acc"] <= 1.0
    assert 0.0 <= scores["nmi"] <= 1.0
    assert -1.0 <= scores["ari"] <= 1.0
    assert scores["acc"] < 1.0


def test_format_scores():
    # Check the one-line format, in the order of the dict.
    scores = {"acc": 0.9123, "nmi": 0.8712, "ari": 0.84}
    assert format_scores(scores) == "ACC 0.912  NMI 0.871  ARI 0.840"
    assert format_scores({"nmi": np.float64(0.5)}) == "NMI 0.500"


@pytest.mark.parametrize("scores", [{}, [0.5], {"acc": "high"}])
def test_format_scores_invalid(scores):
    # Check that anything but a non-empty dict of numbers is rejected.
    with pytest.raises(ValueError, match="scores must"):
        format_scores(scores)


class _ConstantClusterer:
    """Fitted-clusterer stand-in predicting fixed labels."""

    def __init__(self, labels):
        self.labels = np.asarray(labels)

    def transform(self, X):
        return np.asarray(X, dtype=float)

    def predict(self, X):
        return self.labels


def test_silhouette_scorer():
    # Check that the scorer equals the silhouette of predict() on transform()
    # and that well-separated blobs score high.
    X, _ = make_blobs(n_samples=40, centers=3, cluster_std=0.3, random_state=0)
    km = KMeans(n_clusters=3, n_init=3, random_state=0).fit(X)
    score = silhouette_scorer(km, X)
    assert type(score) is float
    assert score == pytest.approx(silhouette_score(km.transform(X), km.predict(X)))
    assert 0.5 < score <= 1.0


@pytest.mark.parametrize("labels", [[0, 0, 0, 0], [0, 1, 2, 3]])
def test_silhouette_scorer_degenerate(labels):
    # Check that a single cluster, or one cluster per sample, scores -1.
    X = np.arange(8.0).reshape(4, 2)
    assert silhouette_scorer(_ConstantClusterer(labels), X) == -1.0
