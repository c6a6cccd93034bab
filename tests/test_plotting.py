"""Testing for the figures of fitted models (deepclust.plotting)."""

import sys

import numpy as np
import pytest
from sklearn.datasets import make_blobs

from deepclust import CDCClusterer, ContrastiveDisentangler
from deepclust.datasets import make_shape_images
from deepclust.metrics import cluster_accuracy

pytest.importorskip("matplotlib")

from deepclust import plotting  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def data():
    """48 RGB 8x8 shape images of 3 classes: (images, labels)."""
    return make_shape_images(48, image_size=8, n_classes=3, random_state=0)


@pytest.fixture(scope="module")
def cdc(data):
    return CDCClusterer(3, max_epochs=2, batch_size=16, random_state=0).fit(data[0])


@pytest.fixture(scope="module")
def cd(data):
    return ContrastiveDisentangler(
        n_heads=6, max_epochs=2, batch_size=16, random_state=0
    ).fit(data[0])


def pixels(fig):
    """The rendered figure as an (H, W, 3) uint8 array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3]


def assert_not_blank(fig, drawn=0.05):
    image = pixels(fig)
    non_white = (image < 250).any(axis=2).mean()
    assert non_white > drawn, f"only {non_white:.1%} of the pixels are drawn"
    assert image.std() > 20


def image_axes(fig):
    return [ax for ax in fig.axes if ax.images]


def first_cell(ax, size=8):
    """The first image of a gallery row (its mosaic's first cell), as floats."""
    return np.asarray(ax.images[0].get_array())[:, :size]


def test_cluster_gallery_shows_most_confident_then_borderline(cdc, data):
    # Check one image row per non-empty cluster, confident images first (the
    # first being the cluster's most confident sample) and the borderline ones
    # framed, with size and mean confidence in the titles.
    images, _ = data
    labels, confidence = plotting.assign_clusters(cdc, images)
    np.testing.assert_array_equal(labels, cdc.predict(images))
    fig = plotting.plot_cluster_gallery(cdc, images, n_images=4, n_borderline=2)
    sizes = np.bincount(labels, minlength=3)
    rows = image_axes(fig)
    assert len(rows) == int((sizes > 0).sum())
    titles = [text.get_text() for text in fig.texts]
    for row, cluster in zip(rows, np.flatnonzero(sizes), strict=True):
        members = np.flatnonzero(labels == cluster)
        best = members[np.argmax(confidence[members])]
        np.testing.assert_allclose(first_cell(row), images[best] / 255.0, atol=1e-6)
        assert len(row.patches) == min(2, max(0, len(members) - 4))  # orange frames
        mean = confidence[members].mean()
        assert any(
            title.startswith(
                f"cluster {cluster}: {len(members)} samples, mean confidence {mean:.2f}"
            )
            for title in titles
        )
    assert_not_blank(fig)


def test_cd_clusters_need_n_clusters(cd, data):
    # Check that a ContrastiveDisentangler needs n_clusters for cluster plots
    # and that with it every input gets a KMeans cluster and a confidence in
    # [0, 1].
    images, _ = data
    with pytest.raises(ValueError, match="pass n_clusters"):
        plotting.plot_cluster_gallery(cd, images)
    labels, confidence = plotting.assign_clusters(cd, images, n_clusters=3)
    assert set(labels) <= {0, 1, 2} and ((confidence >= 0) & (confidence <= 1)).all()
    fig = plotting.plot_cluster_gallery(cd, images, n_clusters=3, clusters=[1, 0])
    assert len(image_axes(fig)) == 2
    assert fig.texts[0].get_text().startswith("cluster 1:")


def test_head_gallery_and_histogram(cd, data):
    # Check that each head row starts with the image on which the head is most
    # active, and that the histogram counts every activation.
    images, _ = data
    cd.set_params(transform_output="embedding")
    fig = plotting.plot_head_gallery(cd, images, heads=[0, 3], n_images=5)
    assert cd.transform_output == "embedding"  # the user's setting is kept
    cd.set_params(transform_output="heads")
    activations = cd.transform(images)
    rows = image_axes(fig)
    assert len(rows) == 2
    for row, head in zip(rows, [0, 3], strict=True):
        top = np.argmax(activations[:, head])
        np.testing.assert_allclose(first_cell(row), images[top] / 255.0, atol=1e-6)
    assert fig.texts[0].get_text().startswith("head 0: mean activation")
    assert_not_blank(fig)
    default = plotting.plot_head_gallery(cd, images, n_heads=3, n_images=2)
    assert len(image_axes(default)) == 3
    histogram = plotting.plot_head_histogram(cd, images)
    counts = sum(patch.get_height() for patch in histogram.axes[0].patches)
    assert counts == activations.size
    assert len(histogram.axes[1].patches) == cd.n_heads


def test_embedding_map_with_thumbnails(cdc, data):
    # Check the t-SNE map: one scatter per non-empty cluster, thumbnails spread
    # over it, a title naming the method.
    from matplotlib.offsetbox import AnnotationBbox

    images, _ = data
    fig = plotting.plot_embedding_map(cdc, images, thumbnails=True, n_thumbnails=9)
    ax = fig.axes[0]
    labels = cdc.predict(images)
    assert len(ax.collections) == len(np.unique(labels))
    boxes = [artist for artist in ax.artists if isinstance(artist, AnnotationBbox)]
    assert 1 <= len(boxes) <= 9
    assert ax.get_title() in ("t-SNE map of 48 embeddings", "UMAP map of 48 embeddings")
    assert_not_blank(fig, drawn=0.02)  # 48 points and 9 thumbnails
    sampled = plotting.plot_embedding_map(cdc, images, method="pca", max_samples=20)
    assert sampled.axes[0].get_title() == "PCA map of 20 embeddings"


def test_training_curves_have_the_loss_parts(cdc, cd):
    # Check the per-epoch loss and the named parts of each model's loss.
    for model, parts in (
        (cdc, {"instance", "cluster"}),
        (cd, {"instance", "feature", "entropy"}),
    ):
        fig = plotting.plot_training_curves(model)
        total, split = fig.axes
        assert len(total.get_lines()[0].get_xdata()) == model.n_epochs_
        assert {line.get_label() for line in split.get_lines()} == parts
        assert f"({model.n_epochs_} epochs," in total.get_title()


def test_sizes_and_confusion_matrix(cdc, data):
    # Check the bars against the labels, and that the matched confusion matrix
    # has the Hungarian accuracy on its diagonal.
    images, y = data
    labels = cdc.predict(images)
    bars = plotting.plot_cluster_sizes(cdc, images).axes[0].patches
    assert [bar.get_height() for bar in bars] == np.bincount(
        labels, minlength=3
    ).tolist()
    training = plotting.plot_cluster_sizes(cdc).axes[0].patches
    assert [bar.get_height() for bar in training] == cdc.cluster_sizes_.tolist()
    fig = plotting.plot_confusion_matrix(cdc, images, y)
    table = np.asarray(fig.axes[0].images[0].get_array())
    assert table.sum() == len(y)
    assert np.trace(table) / len(y) == pytest.approx(cluster_accuracy(y, labels))
    assert fig.axes[0].get_title().startswith("ACC ")


def test_tabular_models_get_no_image_grids(blobs):
    # Check that a tabular model gets a clear error for image plots and the
    # other plots without images.
    X, _ = blobs
    model = CDCClusterer(3, max_epochs=1, batch_size=20, random_state=0).fit(X)
    with pytest.raises(ValueError, match="trained on tabular data"):
        plotting.plot_cluster_gallery(model, X)
    with pytest.raises(ValueError, match="trained on tabular data"):
        plotting.plot_embedding_map(model, X, thumbnails=True)
    assert plotting.plot_embedding_map(model, X).axes[0].collections
    assert len(plotting.plot_cluster_sizes(model, X).axes[0].patches) == 3


def test_unreadable_files_are_left_out(tmp_path, cdc):
    # Check that a gallery from files skips an unreadable one (label -1) and
    # still shows the others.
    from PIL import Image

    images, _ = make_shape_images(9, image_size=8, n_classes=3, random_state=2)
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    (tmp_path / "5.png").write_bytes(b"not an image")
    cdc.set_params(on_error="skip")
    try:
        with pytest.warns(UserWarning, match="5.png"):
            labels, confidence = plotting.assign_clusters(cdc, str(tmp_path))
        assert labels[5] == -1 and np.isnan(confidence[5])
        fig = plotting.plot_cluster_gallery(
            cdc, str(tmp_path), labels=labels, confidence=confidence
        )
        assert sum(
            np.asarray(ax.images[0].get_array()).shape[1] > 0 for ax in image_axes(fig)
        ) == len(np.unique(labels[labels >= 0]))
    finally:
        cdc.set_params(on_error="raise")


def test_missing_matplotlib_names_the_extra(monkeypatch, cdc):
    # Check that without matplotlib the error says how to install it.
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'deepclust\[plot\]'"):
        plotting.plot_training_curves(cdc)


def test_figures_on_tabular_cd(blobs):
    # Check the head histogram and curves of a CD model on feature vectors.
    X, _ = make_blobs(n_samples=40, n_features=4, centers=2, random_state=0)
    cd = ContrastiveDisentangler(n_heads=4, max_epochs=1, batch_size=20).fit(X)
    assert len(plotting.plot_head_histogram(cd, X).axes) == 2
    with pytest.raises(ValueError, match="trained on tabular data"):
        plotting.plot_head_gallery(cd, X)
