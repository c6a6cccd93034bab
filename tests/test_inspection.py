"""Testing for the choice of what a user sees (deepclust.inspection)."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from deepclust import CDCClusterer, ContrastiveDisentangler
from deepclust._inputs import labels_from_proba
from deepclust.inspection import (
    assign_clusters,
    cluster_members,
    kmeans_clusters,
    labels_and_confidence,
    most_varying_heads,
    n_clusters_of,
    n_inputs,
    sample_positions,
    subsample,
    take,
    thumbnail_positions,
    top_activations,
)

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def cdc(blobs):
    return CDCClusterer(3, max_epochs=1, batch_size=20, random_state=0).fit(blobs[0])


# ---------------------------------------------------------------------------
# Which inputs
# ---------------------------------------------------------------------------


def test_sample_is_reproducible_sorted_and_distinct():
    # Check that the same seed draws the same sample, another seed another one,
    # and that a sample holds distinct positions in increasing order.
    first = sample_positions(1000, 50, random_state=3)
    np.testing.assert_array_equal(first, sample_positions(1000, 50, random_state=3))
    assert not np.array_equal(first, sample_positions(1000, 50, random_state=4))
    assert len(first) == 50 and (np.diff(first) > 0).all()
    assert first.min() >= 0 and first.max() < 1000
    np.testing.assert_array_equal(sample_positions(7, 50), np.arange(7))


def test_sample_from_a_generator_advances_it():
    # Check that a Generator is used as it is: two draws from it differ, and
    # the first equals the draw of a fresh generator with its seed.
    rng = np.random.default_rng(5)
    once = sample_positions(100, 10, rng)
    twice = sample_positions(100, 10, rng)
    np.testing.assert_array_equal(once, sample_positions(100, 10, 5))
    assert not np.array_equal(once, twice)


def test_subsample_keeps_inputs_and_positions_together():
    # Check that the sampled inputs are those at the returned positions, for an
    # array and a list, and that nothing is left out below max_samples.
    X = np.arange(200).reshape(100, 2)
    sample, positions, n = subsample(X, 10, random_state=0)
    assert n == 100
    np.testing.assert_array_equal(sample, X[positions])
    names = [f"{i}.png" for i in range(100)]
    listed, listed_positions, _ = subsample(names, 10, random_state=0)
    np.testing.assert_array_equal(listed_positions, positions)
    assert listed == [names[i] for i in positions]
    whole, all_positions, _ = subsample(X, 1000)
    assert whole is X and len(all_positions) == 100


def test_paths_are_resolved_once_as_the_estimators_do(tmp_path):
    # Check that a folder stands for its image files in sorted order, and that
    # taking rows of a .npy file gives them in the order asked for.
    for name in ("b.png", "a.png", "sub/c.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("L", (4, 4)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    assert n_inputs(tmp_path) == 3
    assert take(str(tmp_path), [2, 0]) == [
        str(tmp_path / "sub" / "c.png"),
        str(tmp_path / "a.png"),
    ]
    array = np.arange(40.0).reshape(10, 4)
    np.save(tmp_path / "rows.npy", array)
    np.testing.assert_array_equal(
        take(tmp_path / "rows.npy", [7, 2, 5]), array[[7, 2, 5]]
    )
    sample, positions, n = subsample(tmp_path / "rows.npy", 4, random_state=1)
    assert n == 10
    np.testing.assert_array_equal(sample, array[positions])


# ---------------------------------------------------------------------------
# Labels and confidences
# ---------------------------------------------------------------------------


def test_nan_rows_get_label_minus_one_and_no_confidence():
    # Check the labels against labels_from_proba (the one argmax), the
    # confidences against the top probability, and NaN rows.
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(4), size=30).astype(np.float32)
    proba[[3, 17]] = np.nan
    labels, confidence = labels_and_confidence(proba)
    np.testing.assert_array_equal(labels, labels_from_proba(proba))
    assert labels.dtype == np.int64
    assert labels[3] == labels[17] == -1
    assert np.isnan(confidence[[3, 17]]).all()
    readable = labels >= 0
    np.testing.assert_array_equal(labels[readable], proba[readable].argmax(axis=1))
    np.testing.assert_allclose(confidence[readable], proba[readable].max(axis=1))


def test_kmeans_confidence_is_one_minus_the_distance_ratio():
    # Check 1 - d1/d2 on two groups whose centres are 0 and 10, and that NaN
    # rows are left out of the fit (label -1, no confidence).
    points = np.array([[-1.0], [1.0], [9.0], [11.0], [np.nan]])
    labels, confidence = kmeans_clusters(points, 2, random_state=0)
    assert labels[0] == labels[1] != labels[2] == labels[3]
    assert labels[4] == -1 and np.isnan(confidence[4])
    np.testing.assert_allclose(
        confidence[:4], [1 - 1 / 11, 1 - 1 / 9, 1 - 1 / 9, 1 - 1 / 11]
    )
    with pytest.raises(ValueError, match="cannot form n_clusters=3"):
        kmeans_clusters(np.array([[0.0], [1.0], [np.nan]]), 3)


def test_assign_clusters_of_a_clusterer_is_its_prediction(cdc, blobs):
    # Check that a CDCClusterer's clusters are predict's, with predict_proba's
    # top probability as confidence, and that another n_clusters is refused.
    X, _ = blobs
    labels, confidence = assign_clusters(cdc, X)
    np.testing.assert_array_equal(labels, cdc.predict(X))
    np.testing.assert_allclose(confidence, cdc.predict_proba(X).max(axis=1))
    assert n_clusters_of(cdc, labels[:0]) == 3
    with pytest.raises(ValueError, match="clusters are its own"):
        assign_clusters(cdc, X, n_clusters=4)


def test_assign_clusters_of_a_disentangler_uses_kmeans(blobs):
    # Check that a ContrastiveDisentangler needs n_clusters, and that given
    # embeddings give the same clusters as embedding X again.
    X, _ = blobs
    cd = ContrastiveDisentangler(n_heads=4, max_epochs=1, batch_size=20).fit(X)
    with pytest.raises(ValueError, match="pass n_clusters"):
        assign_clusters(cd, X)
    labels, confidence = assign_clusters(cd, X, n_clusters=3, random_state=0)
    embeddings = cd.embed(X)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    again, again_confidence = assign_clusters(
        cd, None, n_clusters=3, random_state=0, embeddings=embeddings
    )
    np.testing.assert_array_equal(labels, again)
    np.testing.assert_allclose(confidence, again_confidence, atol=1e-6)
    assert set(labels) <= {0, 1, 2}
    assert ((confidence >= 0) & (confidence <= 1)).all()
    assert n_clusters_of(cd, labels) == int(labels.max()) + 1
    assert n_clusters_of(cd, labels, n_clusters=7) == 7


# ---------------------------------------------------------------------------
# Which ones to show
# ---------------------------------------------------------------------------


def test_confident_and_borderline_members_are_what_they_claim():
    # Check, on random clusters, that the confident members are the most
    # confident of their cluster (highest first), the borderline ones the least
    # confident of the rest (lowest first), and that they never overlap.
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 4, size=200)
    confidence = rng.random(200)
    confidence[labels == -1] = np.nan
    for cluster in range(4):
        members, confident, borderline = cluster_members(
            labels, confidence, cluster, n_confident=5, n_borderline=3
        )
        np.testing.assert_array_equal(members, np.flatnonzero(labels == cluster))
        ranked = sorted(members, key=lambda i: -confidence[i])
        assert confident.tolist() == ranked[:5]
        assert borderline.tolist() == ranked[5:][::-1][:3]
        assert not set(confident) & set(borderline)
        assert (np.diff(confidence[confident]) <= 0).all()
        assert (np.diff(confidence[borderline]) >= 0).all()
    members, confident, borderline = cluster_members(
        labels, confidence, 9, n_confident=5, n_borderline=3
    )
    assert len(members) == len(confident) == len(borderline) == 0
    # A small cluster: every member is confident, none is left as borderline.
    _, confident, borderline = cluster_members(
        np.array([0, 0]), np.array([0.2, 0.9]), 0, n_confident=5, n_borderline=3
    )
    assert confident.tolist() == [1, 0] and borderline.tolist() == []


def test_heads_and_their_top_inputs():
    # Check that the most varying heads come first and that a head's top inputs
    # are its highest activations, without unreadable (NaN) rows.
    rng = np.random.default_rng(1)
    activations = np.column_stack(
        [np.full(50, 0.5), rng.random(50), rng.random(50) * 0.1]
    )
    activations[[4, 9]] = np.nan
    assert most_varying_heads(activations, 2) == [1, 2]
    top = top_activations(activations, 1, 6)
    readable = np.flatnonzero(np.isfinite(activations[:, 1]))
    expected = readable[np.argsort(-activations[readable, 1], kind="stable")][:6]
    np.testing.assert_array_equal(top, expected)
    assert len(top_activations(activations[[4, 9]], 0, 3)) == 0


def test_thumbnails_are_spread_one_per_grid_cell():
    # Check that thumbnails are distinct points, at most one per cell of the
    # grid, and that a crowded corner gets only one.
    rng = np.random.default_rng(2)
    coords = np.vstack([rng.random((200, 2)) * 0.1, rng.random((20, 2))])
    chosen = thumbnail_positions(coords, 9)
    assert 1 <= len(chosen) <= 9 and len(set(chosen.tolist())) == len(chosen)
    low, span = coords.min(axis=0), np.ptp(coords, axis=0)
    cells = np.minimum(((coords[chosen] - low) / span * 3).astype(int), 2)
    assert len({tuple(c) for c in cells}) == len(chosen)
    assert (chosen < 200).sum() <= 1  # the crowded corner is one cell
    np.testing.assert_array_equal(chosen, thumbnail_positions(coords, 9))


# ---------------------------------------------------------------------------
# One place
# ---------------------------------------------------------------------------


def test_importable_without_matplotlib_torch_or_sklearn():
    # Check that the module imports and works when matplotlib is missing, and
    # that importing it loads neither torch nor scikit-learn (batch inference
    # and the command line's argument parsing import it).
    code = (
        "import sys\nsys.modules['matplotlib'] = None\n"
        "import numpy as np\n"
        "from deepclust.inspection import labels_and_confidence\n"
        "print(labels_and_confidence(np.array([[0.3, 0.7]]))[0].tolist(),\n"
        "      'torch' in sys.modules, 'sklearn' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[1] False False"


def test_plotting_uses_the_same_assignment():
    # Check that plotting exports this module's assign_clusters, not a copy.
    pytest.importorskip("matplotlib")
    from deepclust import inspection, plotting

    assert plotting.assign_clusters is inspection.assign_clusters
