"""Testing for the ONNX export and the torch-free OnnxClusterer (deepclust.onnx)."""

import functools
import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image
from sklearn.base import clone
from sklearn.cluster import KMeans
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline

from deepclust import CDCClusterer, ContrastiveDisentangler
from deepclust._inputs import InputError
from deepclust.onnx import OnnxClusterer, export_onnx

REPO_ROOT = Path(__file__).resolve().parents[1]
BATCH_SIZES = (1, 7, 64)
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# name -> (estimator, training data, export keyword arguments). Everything is
# tiny (one optimiser step) because only export fidelity is tested here.
_RNG = np.random.default_rng(0)
_RGB16 = _RNG.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
_GRAY32 = _RNG.integers(0, 256, (4, 32, 32), dtype=np.uint8)
_GRAY8_FLOAT = _RNG.random((4, 1, 8, 8), dtype=np.float32)
_TABULAR = _RNG.standard_normal((12, 5)).astype(np.float32)
_SMALL = {"max_epochs": 1, "batch_size": 4, "random_state": 0}
MODELS = {
    # small_cnn, RGB, uint8 NHWC graph (the default for uint8 training data).
    "cdc_small_rgb": (
        CDCClusterer(3, backbone="small_cnn", instance_dim=4, **_SMALL),
        _RGB16,
        {},
    ),
    # Fitted on raw float images: "auto" exports a float NCHW graph.
    "cd_small_gray_float": (
        ContrastiveDisentangler(
            backbone="small_cnn", n_heads=4, projection_dim=4, **_SMALL
        ),
        _GRAY8_FLOAT,
        {},
    ),
    "cdc_mlp": (
        CDCClusterer(
            3, backbone="mlp", instance_dim=4, transform_output="instance", **_SMALL
        ),
        _TABULAR,
        {},
    ),
    # The ResNets (the slowest part of this file): both stems, both input
    # formats, every output.
    "cdc_resnet_cifar_rgb": (
        CDCClusterer(3, backbone="resnet18", stem="cifar", instance_dim=4, **_SMALL),
        _RGB16,
        {
            "input_format": "float_nchw",
            "outputs": ["labels", "probabilities", "embedding", "instance"],
        },
    ),
    "cd_resnet_imagenet_gray": (
        ContrastiveDisentangler(
            backbone="resnet18", stem="imagenet", n_heads=4, projection_dim=4, **_SMALL
        ),
        _GRAY32,
        {"outputs": ["heads", "embedding"]},
    ),
}
MODEL_PARAMS = [
    pytest.param(name, marks=[pytest.mark.slow] if "resnet" in name else [])
    for name in MODELS
]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Lazily fitted and exported models: name -> (estimator, onnx path)."""
    folder = tmp_path_factory.mktemp("onnx")
    cache = {}

    def get(name):
        if name not in cache:
            estimator, data, kwargs = MODELS[name]
            estimator = clone(estimator).fit(data)
            path = export_onnx(estimator, folder / f"{name}.onnx", **kwargs)
            cache[name] = (estimator, path)
        return cache[name]

    return get


def _test_images(name, n):
    data = MODELS[name][1]
    rng = np.random.default_rng(1)
    if data.dtype == np.uint8:
        return rng.integers(0, 256, (n, *data.shape[1:]), dtype=np.uint8)
    if data.ndim == 2:
        return rng.standard_normal((n, data.shape[1])).astype(np.float32)
    return rng.random((n, *data.shape[1:]), dtype=np.float32)


def _estimator_output(estimator, name, X):
    """What the estimator itself computes for the graph output ``name``."""
    if name == "labels":
        return estimator.predict(X)
    if name == "probabilities":
        return estimator.predict_proba(X)
    # The other outputs share their name with a transform_output value.
    old = estimator.transform_output
    try:
        estimator.set_params(transform_output=name)
        return estimator.transform(X)
    finally:
        estimator.set_params(transform_output=old)


def _assert_labels_match(got, expected, probabilities):
    # Labels may differ only where the two best clusters are near-tied.
    top2 = np.sort(probabilities, axis=1)[:, -2:]
    differ = got != expected
    assert np.all(top2[differ, 1] - top2[differ, 0] < 1e-4)


# ---------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_PARAMS)
def test_export_matches_estimator(fitted, name):
    # Check that onnxruntime reproduces the estimator for batch sizes 1, 7 and 64.
    estimator, path = fitted(name)
    clusterer = OnnxClusterer(path)
    X = _test_images(name, max(BATCH_SIZES))
    # The estimator runs in eval mode, so its rows do not depend on the batch.
    reference = {
        output: _estimator_output(estimator, output, X)
        for output in clusterer.output_names
    }
    for batch in BATCH_SIZES:
        for output in clusterer.output_names:
            got = clusterer.transform(X[:batch], output=output)
            expected = reference[output][:batch]
            assert got.shape == expected.shape
            if output == "labels":
                assert got.dtype == np.int64
                _assert_labels_match(got, expected, reference["probabilities"][:batch])
            else:
                assert got.dtype == np.float32
                np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("name", MODEL_PARAMS)
def test_export_single_checked_file_with_metadata(fitted, name):
    # Check that the export is one valid ONNX file whose metadata describes the model.
    estimator, path = fitted(name)
    # No external-data file (model.onnx.data) next to any export.
    assert [f.name for f in path.parent.iterdir() if f.suffix != ".onnx"] == []
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert {op.domain: op.version for op in model.opset_import}[""] == 18
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert meta["estimator"] == type(estimator).__name__
    assert meta["params"]["random_state"] == 0
    assert meta["outputs"] == [o.name for o in model.graph.output]
    assert meta["n_clusters"] == getattr(estimator, "n_clusters", None)
    scaler = estimator._model().scaler
    np.testing.assert_allclose(meta["normalization"]["std"], scaler.std.numpy())
    if estimator.input_kind_ == "tabular":
        assert meta["n_features"] == estimator.n_features_in_
        assert meta["input_format"] == "float_tabular"
    else:
        assert meta["image_size"] == list(estimator.image_size_)
        assert meta["n_channels"] == estimator.n_channels_
        # "auto" and explicit formats: uint8 NHWC for uint8 training data.
        expected = MODELS[name][2].get(
            "input_format",
            "uint8_nhwc" if estimator.input_dtype_ == "uint8" else "float_nchw",
        )
        assert meta["input_format"] == expected
    graph_input = onnxruntime.InferenceSession(str(path)).get_inputs()[0]
    assert isinstance(graph_input.shape[0], str)  # dynamic batch
    if meta["input_format"] == "uint8_nhwc":
        assert graph_input.type == "tensor(uint8)"
        assert graph_input.shape[1:] == [*estimator.image_size_, estimator.n_channels_]
    else:
        assert graph_input.type == "tensor(float)"


def test_export_static_batch_quiet_and_restores_training(tmp_path, capfd):
    # Check that export is silent, keeps train mode, and fixed-batch graphs stream.
    estimator = ContrastiveDisentangler(
        backbone="mlp", n_heads=4, projection_dim=4, **_SMALL
    ).fit(_TABULAR)
    estimator._model().train()
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = export_onnx(estimator, tmp_path / "static.onnx", dynamic_batch=False)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert [str(w.message) for w in caught] == []
    assert estimator._model().training
    assert os.listdir(tmp_path) == ["static.onnx"]
    clusterer = OnnxClusterer(path, batch_size=4)
    assert clusterer.session.get_inputs()[0].shape[0] == 1
    X = _TABULAR[:5]
    np.testing.assert_allclose(
        clusterer.transform(X), estimator.transform(X), rtol=1e-3, atol=1e-5
    )


def test_export_falls_back_to_torchscript_exporter(fitted, tmp_path, monkeypatch):
    # Check that a failing dynamo exporter falls back to TorchScript with a warning.
    estimator, _ = fitted("cdc_mlp")
    real_export = torch.onnx.export

    # wraps keeps export's signature, which the exporter code inspects.
    @functools.wraps(real_export)
    def failing_dynamo(*args, **kwargs):
        if kwargs.get("dynamo", True):
            raise torch.onnx.errors.OnnxExporterError("simulated failure")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", failing_dynamo)
    with pytest.warns(UserWarning, match="simulated failure"):
        path = export_onnx(estimator, tmp_path / "legacy.onnx")
    clusterer = OnnxClusterer(path)
    assert clusterer.metadata["exporter"] == "torchscript"
    X = _test_images("cdc_mlp", 7)
    np.testing.assert_allclose(
        clusterer.predict_proba(X), estimator.predict_proba(X), rtol=1e-3, atol=1e-5
    )
    np.testing.assert_allclose(
        clusterer.transform(X), estimator.transform(X), rtol=1e-3, atol=1e-5
    )


def test_export_errors(fitted, tmp_path):
    # Check that invalid export arguments raise errors naming the argument.
    estimator, _ = fitted("cdc_mlp")
    with pytest.raises(
        ValueError, match=r"available outputs are \['labels', 'probabilities'"
    ):
        export_onnx(estimator, tmp_path / "m.onnx", outputs=["heads"])
    with pytest.raises(ValueError, match=r"unknown name\(s\) \['banana'\]"):
        estimator.export_onnx(tmp_path / "m.onnx", outputs="banana")
    with pytest.raises(ValueError, match="applies to image models only"):
        export_onnx(estimator, tmp_path / "m.onnx", input_format="uint8_nhwc")
    with pytest.raises(ValueError, match="input_format must be one of"):
        export_onnx(estimator, tmp_path / "m.onnx", input_format="nhwc")
    with pytest.raises(ValueError, match="opset must be"):
        export_onnx(estimator, tmp_path / "m.onnx", opset=99)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_onnx(estimator, tmp_path / "missing" / "m.onnx")
    with pytest.raises(NotFittedError):
        export_onnx(CDCClusterer(3), tmp_path / "m.onnx")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------
# OnnxClusterer inputs
# ---------------------------------------------------------------------------


def test_clusterer_reads_arrays_pil_paths_and_folders(fitted, tmp_path):
    # Check that arrays, PIL images, file paths and a folder give the same predictions.
    estimator, path = fitted("cdc_small_rgb")
    clusterer = OnnxClusterer(path)
    images = _test_images("cdc_small_rgb", 6)
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(image).save(paths[-1])
    np.save(tmp_path / "images.npy", images)
    expected = clusterer.predict_proba(images)
    np.testing.assert_allclose(
        expected, estimator.predict_proba(images), rtol=1e-3, atol=1e-5
    )
    pil_images = [Image.fromarray(image) for image in images]
    for X in (
        pil_images,
        paths,
        str(tmp_path),
        str(tmp_path / "images.npy"),
        images.transpose(0, 3, 1, 2).astype(np.float32),
    ):
        np.testing.assert_allclose(
            clusterer.predict_proba(X), expected, rtol=1e-5, atol=1e-6
        )


def test_clusterer_resizes_larger_images(fitted):
    # Check that larger PIL images are resized to the model's size, as in the
    # estimator.
    estimator, path = fitted("cdc_small_rgb")
    rng = np.random.default_rng(2)
    big = [
        Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8))
        for _ in range(5)
    ]
    clusterer = OnnxClusterer(path)
    got = clusterer.predict_proba(big)
    assert got.shape == (5, 3)
    np.testing.assert_allclose(got, estimator.predict_proba(big), rtol=1e-3, atol=1e-5)


def test_clusterer_streams_batches(fitted):
    # Check that inputs larger than batch_size run in several calls, same result.
    _, path = fitted("cdc_small_rgb")
    X = _test_images("cdc_small_rgb", 23)
    whole = OnnxClusterer(path).predict_proba(X)
    clusterer = OnnxClusterer(path, batch_size=5)
    sizes = []
    session = clusterer.session

    class CountingSession:
        def run(self, names, feed):
            sizes.append(len(next(iter(feed.values()))))
            return session.run(names, feed)

    clusterer.session = CountingSession()
    np.testing.assert_allclose(clusterer.predict_proba(X), whole, rtol=1e-5, atol=1e-6)
    assert sizes == [5, 5, 5, 5, 3]


def test_clusterer_concurrent_predictions_equal_sequential(fitted):
    # Check that one OnnxClusterer serves several threads at once (a web app's
    # case): each thread's predictions equal the same calls one after the other.
    from concurrent.futures import ThreadPoolExecutor

    _, path = fitted("cdc_small_rgb")
    clusterer = OnnxClusterer(path, batch_size=4)
    X = _test_images("cdc_small_rgb", 30)
    batches = [X[start : start + size] for start, size in
               [(0, 30), (0, 7), (5, 13), (17, 3), (20, 10), (1, 29)]] * 4  # fmt: skip
    sequential = [clusterer.predict_proba(batch) for batch in batches]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(clusterer.predict_proba, batches))
    for got, expected in zip(concurrent, sequential, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_clusterer_float_images_in_uint8_graph(fitted):
    # Check that whole-valued float images are accepted by a uint8 graph, others
    # rejected.
    _, path = fitted("cdc_small_rgb")
    clusterer = OnnxClusterer(path)
    images = _test_images("cdc_small_rgb", 4)
    np.testing.assert_array_equal(
        clusterer.predict_proba(images.astype(np.float64)),
        clusterer.predict_proba(images),
    )
    with pytest.raises(InputError, match="input_format='float_nchw'"):
        clusterer.predict(np.minimum(images, 254).astype(np.float32) + 0.5)


def test_clusterer_refuses_images_on_another_scale(fitted):
    # Check that images on another scale than the training images raise instead
    # of giving wrong clusters: [0, 1] floats for a model fitted on uint8 images
    # (even whole 0/1 values, which a uint8 graph would take as black images),
    # and 0-255 values for a model fitted on [0, 1] floats. The exported
    # "value_range" says the scale; without it, uint8 models use (0, 255) and
    # float models are not checked.
    _, path = fitted("cdc_small_rgb")
    images = _test_images("cdc_small_rgb", 4)
    expected = r"expects values in \[0, 255\].*\(X \* 255\)\.astype\(np\.uint8\)"
    for exported_range in (True, False):
        clusterer = OnnxClusterer(path)
        if not exported_range:
            clusterer.metadata.pop("value_range", None)
        with pytest.raises(InputError, match=expected):
            clusterer.predict(images / 255.0)
        with pytest.raises(InputError, match=r"look like images scaled to \[0, 1\]"):
            clusterer.predict((images > 127).astype(np.float32))
        with pytest.raises(InputError, match=r"outside \[0, 255\]"):
            clusterer.predict(images.astype(np.float32) * 2)
        blank = np.zeros_like(images, dtype=np.float32)
        np.testing.assert_array_equal(
            clusterer.predict(blank), clusterer.predict(blank.astype(np.uint8))
        )
    estimator, float_path = fitted("cd_small_gray_float")
    floats = OnnxClusterer(float_path)
    X = _test_images("cd_small_gray_float", 3)
    raw = (X * 255).astype(np.uint8)
    # Without a value range in its metadata a float model is not checked ...
    floats.metadata.pop("value_range", None)
    assert floats.transform(raw).shape == (3, 4)
    # ... with one, values far beyond it are refused, per batch.
    floats.metadata["value_range"] = [0.0, 1.0]
    floats.set_params(batch_size=2)
    np.testing.assert_allclose(
        floats.transform(X), estimator.transform(X), rtol=1e-3, atol=1e-5
    )
    mixed = np.concatenate([X[:2], raw[2:].astype(np.float32)])
    with pytest.raises(InputError, match=r"fitted on images with values in \[0, 1\]"):
        floats.transform(mixed)
    with pytest.raises(InputError, match=r"X\.astype\(np\.float32\) / 255"):
        floats.transform(raw)


def test_clusterer_attributes_and_transform_default(fitted):
    # Check the loaded attributes and that transform follows the estimator's
    # transform_output.
    estimator, path = fitted("cdc_mlp")
    clusterer = OnnxClusterer(path)
    assert clusterer.input_name == "input"
    assert clusterer.output_names == ["labels", "probabilities", "instance"]
    assert clusterer.n_clusters == 3
    assert clusterer.n_features_in_ == 5
    assert clusterer.metadata["estimator"] == "CDCClusterer"
    X = _test_images("cdc_mlp", 6)
    np.testing.assert_allclose(
        clusterer.transform(X), estimator.transform(X), rtol=1e-3, atol=1e-5
    )
    cd = OnnxClusterer(fitted("cd_small_gray_float")[1])
    assert cd.n_clusters is None
    assert not hasattr(cd, "n_features_in_")
    assert cd.transform(_test_images("cd_small_gray_float", 2)).shape == (2, 4)


# ---------------------------------------------------------------------------
# scikit-learn integration
# ---------------------------------------------------------------------------


def test_clusterer_in_pipeline(fitted):
    # Check that OnnxClusterer works as a fitted predict step and as a transform step.
    _, cdc_path = fitted("cdc_mlp")
    X = _test_images("cdc_mlp", 20)
    pipeline = Pipeline([("cluster", OnnxClusterer(cdc_path))])
    np.testing.assert_array_equal(
        pipeline.predict(X), OnnxClusterer(cdc_path).predict(X)
    )
    _, cd_path = fitted("cd_small_gray_float")
    images = _test_images("cd_small_gray_float", 12)
    kmeans = Pipeline(
        [
            ("heads", OnnxClusterer(cd_path)),
            ("kmeans", KMeans(2, n_init=1, random_state=0)),
        ]
    )
    labels = kmeans.fit(images).predict(images)
    assert labels.shape == (12,)
    assert kmeans.named_steps["kmeans"].cluster_centers_.shape == (2, 4)


def test_clusterer_params_clone_and_pickle(fitted):
    # Check get_params/set_params, sklearn.clone and pickling.
    _, path = fitted("cdc_mlp")
    _, image_path = fitted("cdc_small_rgb")
    clusterer = OnnxClusterer(path, batch_size=4)
    assert clusterer.get_params() == {
        "path": path,
        "providers": None,
        "batch_size": 4,
        "on_error": None,
        "n_threads": None,
    }
    assert clusterer.fit() is clusterer
    # A new thread count reloads the session with it.
    clusterer.set_params(n_threads=1)
    assert clusterer.session.get_session_options().intra_op_num_threads == 1
    clusterer.set_params(n_threads=None)
    assert clusterer.__sklearn_is_fitted__()
    assert repr(clusterer) == f"OnnxClusterer({str(path)!r}, batch_size=4)"
    copy = clone(clusterer)
    assert copy.get_params() == clusterer.get_params() and copy is not clusterer
    X = _test_images("cdc_mlp", 6)
    restored = pickle.loads(pickle.dumps(clusterer))
    np.testing.assert_array_equal(restored.predict_proba(X), clusterer.predict_proba(X))
    assert clusterer.set_params(path=image_path) is clusterer
    assert clusterer.metadata["input_kind"] == "image"
    assert not hasattr(clusterer, "n_features_in_")
    with pytest.raises(ValueError, match=r"Invalid parameter\(s\) \['colour'\]"):
        clusterer.set_params(colour="red")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        clusterer.set_params(batch_size=0)
    assert clusterer.batch_size == 4


def test_clusterer_providers(fitted):
    # Check that unavailable providers warn and fall back to the CPU; unknown ones
    # raise.
    _, path = fitted("cdc_mlp")
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        clusterer = OnnxClusterer(path, providers="cuda")
        assert clusterer.session.get_providers()[0] == "CUDAExecutionProvider"
    else:
        with pytest.warns(UserWarning, match="not available"):
            clusterer = OnnxClusterer(path, providers="cuda")
        assert clusterer.session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="not an onnxruntime execution provider"):
        OnnxClusterer(path, providers=["TPUProvider"])


def test_clusterer_runs_without_torch(fitted, tmp_path):
    # Check that inference imports and runs with torch and scikit-learn unavailable.
    _, path = fitted("cdc_small_rgb")
    images = _test_images("cdc_small_rgb", 5)
    np.save(tmp_path / "images.npy", images)
    code = f"""
import sys
sys.modules["torch"] = None
sys.modules["sklearn"] = None
from deepclust.onnx import OnnxClusterer
labels = OnnxClusterer({str(path)!r}).predict({str(tmp_path / "images.npy")!r})
print(labels.tolist(), sorted(m for m in sys.modules if m.startswith("deepclust")))
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    expected = OnnxClusterer(path).predict(images).tolist()
    assert result.stdout.strip() == (
        f"{expected} ['deepclust', 'deepclust._inputs', 'deepclust._validation', "
        "'deepclust._version', 'deepclust.onnx']"
    )


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_clusterer_input_errors(fitted):
    # Check that inputs of the wrong kind or shape raise InputError naming the mismatch.
    _, image_path = fitted("cdc_small_rgb")
    _, tabular_path = fitted("cdc_mlp")
    images = OnnxClusterer(image_path)
    with pytest.raises(InputError, match="tabular data"):
        images.predict(np.zeros((4, 5), dtype=np.float32))
    with pytest.raises(InputError, match=r"expected shape \(3, 16, 16\)"):
        images.predict(np.zeros((2, 20, 20, 3), dtype=np.uint8))
    tabular = OnnxClusterer(tabular_path)
    with pytest.raises(
        InputError, match="X has 4 features, but OnnxClusterer is expecting 5"
    ):
        tabular.predict(np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(InputError, match="fitted on tabular data"):
        tabular.predict(np.zeros((3, 8, 8, 3), dtype=np.uint8))


def test_clusterer_output_and_file_errors(fitted, tmp_path):
    # Check errors for unknown outputs, missing cluster outputs and bad files.
    _, cdc_path = fitted("cdc_small_rgb")
    _, cd_path = fitted("cd_small_gray_float")
    X = _test_images("cdc_small_rgb", 2)
    with pytest.raises(
        ValueError,
        match=r"available outputs are \['labels', 'probabilities'\]; "
        r"re-export .* 'embedding'",
    ):
        OnnxClusterer(cdc_path).transform(X, output="embedding")
    with pytest.raises(
        ValueError, match=r"output='banana' .* \['labels', 'probabilities'\]\.$"
    ):
        OnnxClusterer(cdc_path).transform(X, output="banana")
    cd = OnnxClusterer(cd_path)
    with pytest.raises(ValueError, match=r"predict needs cluster outputs.*\['heads'\]"):
        cd.predict(_test_images("cd_small_gray_float", 2))
    with pytest.raises(ValueError, match="predict_proba needs cluster outputs"):
        cd.predict_proba(_test_images("cd_small_gray_float", 2))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        OnnxClusterer(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="could not be loaded as an ONNX model"):
        OnnxClusterer(tmp_path / "junk.onnx")
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        OnnxClusterer(cdc_path, batch_size=0)


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("input_kind", None, "lacks a valid input kind and format"),
        ("input_format", None, "lacks a valid input kind and format"),
        ("image_size", None, "lacks a valid image_size and n_channels"),
        ("n_channels", 4, "lacks a valid image_size and n_channels"),
        ("estimator", "KMeans", "names no known estimator"),
        ("n_clusters", "ten", "has an invalid n_clusters"),
        ("params", [1, 2], "has params that are not a JSON object"),
        ("input_format", "float_nchw", "graph takes a tensor\\(uint8\\)"),
    ],
    ids=lambda value: str(value),
)
def test_stripped_or_edited_metadata_is_refused(fitted, tmp_path, key, value, match):
    # Check that an exported file whose deepclust metadata lost an entry or was
    # edited gives a ValueError naming the file, not a KeyError or a raw
    # onnxruntime error later.
    import json

    import onnx

    _, path = fitted("cdc_small_rgb")
    proto = onnx.load(path)
    kept = [entry for entry in proto.metadata_props if entry.key != key]
    del proto.metadata_props[:]
    for entry in kept:
        proto.metadata_props.add(key=entry.key, value=entry.value)
    if value is not None:
        proto.metadata_props.add(key=key, value=json.dumps(value))
    edited = tmp_path / "edited.onnx"
    onnx.save_model(proto, edited)
    with pytest.raises(ValueError, match=match) as error:
        OnnxClusterer(edited)
    assert "edited.onnx" in str(error.value)
