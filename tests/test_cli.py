"""Testing for the deepclust command line (deepclust.cli)."""

import csv

import joblib
import numpy as np
import pytest
from PIL import Image

from deepclust import CDCClusterer, ContrastiveDisentangler
from deepclust.cli import main
from deepclust.datasets import make_shape_images

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

try:
    import deepclust.onnx  # noqa: F401
except ImportError as error:
    ONNX_IMPORT_ERROR = error
else:
    ONNX_IMPORT_ERROR = None

needs_onnx = pytest.mark.skipif(
    ONNX_IMPORT_ERROR is not None,
    reason=f"deepclust.onnx cannot be imported: {ONNX_IMPORT_ERROR}",
)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """A folder of 12 RGB PNG images of 8x8 px."""
    folder = tmp_path_factory.mktemp("pngs")
    images, _ = make_shape_images(12, image_size=8, n_classes=3, random_state=0)
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"image_{index:02d}.png")
    return folder


@pytest.fixture(scope="module")
def fitted_model_file(image_folder, tmp_path_factory):
    """A CDCClusterer with 3 clusters saved by 'deepclust fit' on image_folder."""
    path = tmp_path_factory.mktemp("model") / "cdc.joblib"
    main(["fit", str(image_folder), "--n-clusters", "3", "--epochs", "1",
          "-o", str(path)])
    return path


@pytest.mark.slow
def test_demo_prints_score_table(capsys):
    # Check that 'deepclust demo' trains CDC on the digits and prints ACC, NMI and
    # ARI for KMeans and CDC.
    assert main(["demo", "--model", "cdc", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("method"))
    assert header.split()[:4] == ["method", "ACC", "NMI", "ARI"]
    for name in ["KMeans on pixels", "CDCClusterer"]:
        row = next(line for line in lines if line.startswith(name))
        scores = [float(value) for value in row[len(name):].split()[:3]]
        assert all(-1.0 <= score <= 1.0 for score in scores)
    assert "CD heads" not in out


def test_fit_writes_model(fitted_model_file):
    # Check that 'deepclust fit' on a folder of PNGs saves a fitted CDCClusterer.
    estimator = joblib.load(fitted_model_file)
    assert isinstance(estimator, CDCClusterer)
    assert estimator.n_clusters == 3
    assert estimator.n_epochs_ == 1
    assert estimator.labels_.shape == (12,)
    assert estimator.image_size_ == (8, 8)


def test_fit_prints_summary(image_folder, tmp_path, capsys):
    # Check that 'deepclust fit' reports where it saved the model and the cluster sizes.
    path = tmp_path / "model.joblib"
    main(["fit", str(image_folder), "--n-clusters", "2", "--epochs", "1",
          "-o", str(path)])
    out = capsys.readouterr().out
    assert f"saved CDCClusterer to {path}" in out
    assert "cluster sizes: [" in out


def test_fit_cd_on_npy_with_resize(tmp_path):
    # Check that 'deepclust fit --model cd' reads a .npy array and resizes it.
    images, _ = make_shape_images(8, image_size=8, random_state=0)
    data = tmp_path / "images.npy"
    np.save(data, images)
    path = tmp_path / "cd.joblib"
    main(["fit", str(data), "--model", "cd", "--epochs", "1", "--image-size", "10",
          "-o", str(path)])
    estimator = joblib.load(path)
    assert isinstance(estimator, ContrastiveDisentangler)
    assert estimator.image_size_ == (10, 10)
    assert estimator.transform(images).shape == (8, estimator.n_heads)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["cluster"],
        ["demo", "--model", "kmeans"],
        ["demo", "--epochs", "many"],
        ["fit"],
        ["fit", "images", "--on-error", "ignore"],
        ["export", "model.joblib"],
    ],
    ids=["no_command", "unknown_command", "bad_model", "bad_epochs", "fit_without_data",
         "bad_on_error", "export_without_output"],
)
def test_argument_errors_exit(argv, capsys):
    # Check that invalid command lines exit with status 2 and a usage message.
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage: deepclust" in capsys.readouterr().err


def test_help_exits_cleanly(capsys):
    # Check that --help lists the subcommands and exits with status 0.
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ["demo", "fit", "export", "predict"]:
        assert command in out


@needs_onnx
def test_export_then_predict_csv(fitted_model_file, image_folder, tmp_path, capsys):
    # Check that 'deepclust export' writes an ONNX file whose 'deepclust predict'
    # CSV has one row per image with a label and its probability.
    onnx_path = tmp_path / "cdc.onnx"
    assert main(["export", str(fitted_model_file), str(onnx_path)]) == 0
    assert onnx_path.is_file()
    assert f"to {onnx_path}" in capsys.readouterr().out

    csv_path = tmp_path / "labels.csv"
    argv = ["predict", str(onnx_path), str(image_folder), "--csv", str(csv_path)]
    assert main(argv) == 0
    with open(csv_path, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["file", "label", "probability"]
    expected_files = sorted(str(path) for path in image_folder.glob("*.png"))
    assert [row[0] for row in rows[1:]] == expected_files
    labels = np.array([int(row[1]) for row in rows[1:]])
    probabilities = np.array([float(row[2]) for row in rows[1:]])
    assert ((labels >= 0) & (labels < 3)).all()
    assert ((probabilities >= 1 / 3 - 1e-6) & (probabilities <= 1 + 1e-6)).all()


@needs_onnx
def test_predict_cd_heads_to_stdout(image_folder, tmp_path, capsys):
    # Check that 'deepclust predict' on an exported CD model prints the head
    # activations of every image as CSV on stdout.
    model_path = tmp_path / "cd.joblib"
    onnx_path = tmp_path / "cd.onnx"
    main(["fit", str(image_folder), "--model", "cd", "--epochs", "1",
          "-o", str(model_path)])
    main(["export", str(model_path), str(onnx_path)])
    capsys.readouterr()
    assert main(["predict", str(onnx_path), str(image_folder)]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    n_heads = joblib.load(model_path).n_heads
    assert rows[0] == ["file"] + [f"head_{i}" for i in range(n_heads)]
    assert len(rows) == 13
    heads = np.array([[float(value) for value in row[1:]] for row in rows[1:]])
    assert ((heads > 0) & (heads < 1)).all()
