"""Testing for the choice of the number of clusters (deepclust.model_selection)."""

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from deepclust import ContrastiveDisentangler
from deepclust.datasets import make_shape_images
from deepclust.model_selection import KSelection, select_n_clusters


def test_blobs_known_k_and_table():
    # Check that 5 well separated blobs give k=5, that the table has one row
    # per k and that the text ends with 'best k: 5' after the reasoning.
    X, _ = make_blobs(n_samples=400, centers=5, n_features=6, random_state=3)
    result = select_n_clusters(X, range(2, 9), model="precomputed", n_resamples=5)
    assert isinstance(result, KSelection)
    assert result.n_clusters == 5
    assert [row["k"] for row in result.table()] == list(range(2, 9))
    assert [row["k"] for row in result.table() if row["chosen"]] == [5]
    assert result.scores.shape == (7, 5)
    assert result.stability[3] == pytest.approx(1.0, abs=0.02)
    lines = result.format().splitlines()
    assert lines[-1] == "best k: 5"
    assert any(line.startswith("decision: ") for line in lines)
    assert any(
        line.startswith("criterion: stability = mean adjusted Rand") for line in lines
    )
    assert result.notes == []


def test_tolerance_prefers_the_finest_equally_stable_k():
    # Check that with two far groups of two blobs each, where k=2 and k=4 are
    # both perfectly stable, the finer k=4 is chosen and the reasoning says why.
    centers = [[0, 0], [0, 4], [40, 0], [40, 4]]
    X, _ = make_blobs(n_samples=400, centers=centers, cluster_std=0.5, random_state=0)
    result = select_n_clusters(X, range(2, 7), model="precomputed", n_resamples=4)
    assert result.stability[0] > 0.98 and result.stability[2] > 0.98
    assert result.n_clusters == 4
    if result.best_stability_k != 4:
        assert "largest such k" in result.reasoning()


def test_structureless_data_is_flagged():
    # Check that isotropic noise gives the 'every k is unstable' caution, and
    # that a choice at the end of the range says so.
    X = np.random.default_rng(0).normal(size=(300, 10))
    result = select_n_clusters(X, range(2, 6), model="precomputed", n_resamples=4)
    text = result.format()
    assert "caution: every k is unstable" in text
    if result.n_clusters == 5:
        assert "caution: the chosen k is the largest tried" in text


def test_trains_once_and_reuses_a_fitted_model(shape_images):
    # Check that an unfitted model is cloned and trained once, its embeddings
    # clustered, and that a fitted model is used as it is (not retrained).
    images, _ = shape_images
    template = ContrastiveDisentangler(n_heads=4, max_epochs=1, batch_size=12)
    result = select_n_clusters(images, range(2, 5), model=template, n_resamples=2)
    assert result.model is not template and result.model.n_epochs_ == 1
    assert not hasattr(template, "net_")
    assert result.fit_seconds is not None and result.fit_seconds > 0
    assert "embeddings" in result.features and "trained once" in result.features
    assert result.n_samples == len(images)
    again = select_n_clusters(
        images, range(2, 5), model=result.model, features="transform", n_resamples=2
    )
    assert again.model is result.model and again.fit_seconds is None
    assert "transform outputs (4-d)" in again.features


def test_max_samples_and_unreadable_rows():
    # Check that NaN rows (unreadable inputs) are left out and that at most
    # max_samples samples are clustered.
    X, _ = make_blobs(n_samples=120, centers=3, random_state=0)
    X[:5] = np.nan
    result = select_n_clusters(
        X, [2, 3], model="precomputed", n_resamples=2, max_samples=50
    )
    assert result.n_inputs == 120 and result.n_samples == 50
    assert "samples clustered: 50 of 120 inputs" in result.format()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k_range": [1, 2]}, "each at least 2"),
        ({"k_range": [3]}, "at least two candidates"),
        ({"k_range": [2, 90]}, "each subsample holds only"),
        ({"features": "pixels"}, "features must be one of"),
        ({"subsample": 1.0}, "subsample must be in (0, 1)"),
        ({"model": "features"}, "model must be None, 'precomputed' or an estimator"),
    ],
)
def test_bad_arguments(kwargs, message):
    # Check that bad arguments raise a ValueError that names them.
    X, _ = make_blobs(n_samples=100, random_state=0)
    options = {"k_range": [2, 3], "model": "precomputed", **kwargs}
    with pytest.raises(
        ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        select_n_clusters(X, **options)


def test_plot_marks_the_choice():
    # Check that the plot draws the stability with error bars, the tolerance
    # band and a vertical line at the chosen k.
    pytest.importorskip("matplotlib")
    X, _ = make_blobs(n_samples=200, centers=3, random_state=0)
    result = select_n_clusters(X, range(2, 6), model="precomputed", n_resamples=3)
    ax = result.plot().axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert f"chosen k = {result.n_clusters}" in labels
    chosen = next(
        line for line in ax.get_lines() if line.get_label().startswith("chosen")
    )
    assert chosen.get_xdata()[0] == result.n_clusters
    assert ax.containers  # the error bars


def test_images_of_a_known_number_of_classes():
    # Check the whole path on images with 3 classes: a short CD training, then
    # the stability of KMeans on its embeddings picks 3.
    images, _ = make_shape_images(60, image_size=8, n_classes=3, random_state=1)
    model = ContrastiveDisentangler(n_heads=8, max_epochs=3, batch_size=20)
    result = select_n_clusters(images, range(2, 6), model=model, n_resamples=4)
    assert result.n_clusters == 3, result.format()
