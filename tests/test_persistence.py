"""Persistence: pickle/joblib, GPU-to-CPU unpickling, save/load without pickle."""

import ast
import json
import pickle
import re
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from skorch.callbacks import EarlyStopping
from skorch.exceptions import DeviceWarning

from deepclust import CDCClusterer, ContrastiveDisentangler
from deepclust.estimators import _net
from deepclust.persistence import CONFIG_FILE, load

REPO_ROOT = Path(__file__).resolve().parents[1]
SMALL = {"max_epochs": 2, "batch_size": 16, "random_state": 0}
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def tabular():
    return np.random.default_rng(0).standard_normal((40, 4))


@pytest.fixture(scope="module")
def images():
    from deepclust.datasets import make_shape_images

    return make_shape_images(24, image_size=8, n_classes=3, random_state=0)[0]


@pytest.fixture(scope="module")
def fitted(tabular, images):
    """Fitted estimators by name: CD on tabular data, CDC on images."""
    return {
        "CD": ContrastiveDisentangler(n_heads=4, **SMALL).fit(tabular),
        "CDC": CDCClusterer(n_clusters=3, **SMALL).fit(images),
    }


def _data(name, tabular, images):
    return tabular if name == "CD" else images


def _assert_same_model(loaded, original, X):
    np.testing.assert_array_equal(loaded.transform(X), original.transform(X))
    assert loaded.score(X) == original.score(X)
    assert loaded.get_params() == original.get_params() | {"device": loaded.device}
    for name in (
        "input_kind_",
        "input_shape_",
        "image_size_",
        "n_channels_",
        "n_epochs_",
    ):
        assert getattr(loaded, name) == getattr(original, name)
    if isinstance(original, CDCClusterer):
        np.testing.assert_array_equal(loaded.predict(X), original.predict(X))
        np.testing.assert_array_equal(loaded.labels_, original.labels_)
        np.testing.assert_array_equal(loaded.cluster_sizes_, original.cluster_sizes_)
    assert loaded.history_[:, "train_loss"] == original.history_[:, "train_loss"]


# ---------------------------------------------------------------------------
# pickle and joblib
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["CD", "CDC"])
def test_pickle_and_joblib_round_trips(name, fitted, tabular, images, tmp_path):
    # Check that fitted estimators survive pickle and joblib unchanged.
    X = _data(name, tabular, images)
    original = fitted[name]
    _assert_same_model(pickle.loads(pickle.dumps(original)), original, X)
    joblib.dump(original, tmp_path / "model.joblib")
    _assert_same_model(joblib.load(tmp_path / "model.joblib"), original, X)


def test_unfitted_pickle_round_trip():
    # Check that an unfitted estimator pickles to an equal, still unfitted one.
    est = CDCClusterer(n_clusters=4, backbone="mlp", checkpoint_every=3)
    copy = pickle.loads(pickle.dumps(est))
    assert copy.get_params() == est.get_params()
    with pytest.raises(NotFittedError):
        copy.predict(np.zeros((2, 3)))


def test_pickle_after_fit_with_progress_bar(tabular):
    # Check that a fit with a progress bar (verbose=1) can be pickled.
    est = ContrastiveDisentangler(n_heads=2, verbose=1, **SMALL).fit(tabular)
    copy = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(copy.transform(tabular), est.transform(tabular))


def test_pickle_does_not_carry_the_weight_snapshot(fitted):
    # Check that the in-memory snapshot of the recovery callback is not pickled.
    recovery = dict(fitted["CD"].net_.callbacks_)["recovery"]
    assert pickle.loads(pickle.dumps(recovery)).snapshot_ is None


@pytest.mark.filterwarnings("ignore::skorch.exceptions.DeviceWarning")
def test_gpu_pickle_loads_on_cpu(fitted, tabular, monkeypatch):
    # Check that a net pickled on a GPU (device and augmentation generator on
    # CUDA) unpickles on a CPU-only machine with a warning, mapped to the CPU.
    original = fitted["CD"]
    cuda_state = {"device": "cuda", "state": torch.zeros(16, dtype=torch.uint8)}
    real_state = _net.generator_state
    monkeypatch.setattr(
        _net,
        "generator_state",
        lambda g: (
            cuda_state if g is original.net_.augment_generator_ else real_state(g)
        ),
    )
    original.net_.device = "cuda"
    try:
        payload = pickle.dumps(original)
    finally:
        original.net_.device = "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(DeviceWarning, match="no CUDA devices are available"):
        loaded = pickle.loads(payload)
    assert torch.device(loaded.net_.device).type == "cpu"
    assert loaded.net_.augment_generator_.device.type == "cpu"
    assert next(loaded.net_.module_.parameters()).device.type == "cpu"
    np.testing.assert_array_equal(
        loaded.transform(tabular), original.transform(tabular)
    )


# ---------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["CD", "CDC"])
def test_save_load_round_trip(name, fitted, tabular, images, tmp_path):
    # Check that save/load gives an estimator with identical outputs and
    # attributes, from files holding only JSON and safetensors.
    X = _data(name, tabular, images)
    original = fitted[name]
    original.save(tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    # The data files are named after their content (atomic replacement).
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [CONFIG_FILE, config["weights_file"], config["history_file"]]
    )
    assert re.fullmatch(r"model-[0-9a-f]{16}\.safetensors", config["weights_file"])
    assert re.fullmatch(r"history-[0-9a-f]{16}\.json", config["history_file"])
    assert config["class"] == type(original).__name__
    assert config["format_version"] == 3
    stored = config["attributes"]["training_config_"]
    assert stored["backbone"] == ("mlp" if name == "CD" else "small_cnn")
    assert stored["model"]["family"] == name.lower()
    loaded = type(original).load(tmp_path)
    assert type(loaded) is type(original)
    _assert_same_model(loaded, original, X)
    # A loaded model saves to the very same weights.
    loaded.save(tmp_path / "again")
    again = json.loads((tmp_path / "again" / CONFIG_FILE).read_text())
    assert again["weights_sha256"] == config["weights_sha256"]


def test_numpy_integer_parameters_are_saved(tabular, tmp_path):
    # Check that numpy integers (as parameter grids give them) can be
    # checkpointed, saved and loaded.
    est = CDCClusterer(
        n_clusters=np.int64(3),
        max_epochs=np.int64(2),
        batch_size=np.int64(16),
        random_state=np.int64(0),
        checkpoint_dir=tmp_path / "checkpoint",
    )
    est.fit(tabular)
    est.save(tmp_path / "model")
    loaded = load(tmp_path / "model")
    assert loaded.get_params()["n_clusters"] == 3
    np.testing.assert_array_equal(
        loaded.predict_proba(tabular), est.predict_proba(tabular)
    )


def test_loaded_estimator_can_be_refit_and_cloned(fitted, tabular, tmp_path):
    # Check that a loaded estimator is a normal estimator: clone and refit work.
    fitted["CD"].save(tmp_path)
    loaded = load(tmp_path)
    refit = clone(loaded).fit(tabular)
    np.testing.assert_array_equal(
        refit.transform(tabular), fitted["CD"].transform(tabular)
    )


def test_loaded_estimator_exports_to_onnx(fitted, tabular, tmp_path):
    # Check that a loaded estimator exports to ONNX with the original's outputs.
    onnx = pytest.importorskip("deepclust.onnx")
    fitted["CD"].save(tmp_path / "model")
    path = onnx.export_onnx(load(tmp_path / "model"), tmp_path / "cd.onnx")
    np.testing.assert_allclose(
        onnx.OnnxClusterer(path).transform(tabular),
        fitted["CD"].transform(tabular),
        rtol=1e-4,
        atol=1e-5,
    )


def test_load_with_wrong_class_is_refused(fitted, tmp_path):
    # Check that Class.load refuses a file of another estimator class.
    fitted["CD"].save(tmp_path)
    with pytest.raises(
        ValueError, match="holds a ContrastiveDisentangler, not a CDCClusterer"
    ):
        CDCClusterer.load(tmp_path)


def test_load_saved_gpu_device_on_cpu(fitted, tabular, tmp_path, monkeypatch):
    # Check that a model saved with device="cuda" loads on the CPU with a warning.
    fitted["CD"].save(tmp_path)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    config["params"]["device"] = "cuda"
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="device='cuda', which is not available here"):
        loaded = load(tmp_path)
    assert loaded.device == "cpu"
    np.testing.assert_array_equal(
        loaded.transform(tabular), fitted["CD"].transform(tabular)
    )
    assert load(tmp_path, device="cpu").device == "cpu"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"backbone": lambda: torch.nn.Flatten()}, "backbone=.* is a callable"),
        (
            {"callbacks": [EarlyStopping(monitor="train_loss")]},
            "callbacks cannot be saved",
        ),
        (
            {"random_state": np.random.RandomState(0)},
            "parameter random_state .*RandomState",
        ),
    ],
    ids=["callable-backbone", "callbacks", "RandomState"],
)
def test_save_refuses_what_json_cannot_hold(fitted, tmp_path, change, match):
    # Check that parameters that are code or objects give a clear error.
    est = pickle.loads(pickle.dumps(fitted["CD"])).set_params(**change)
    with pytest.raises(ValueError, match=match):
        est.save(tmp_path)
    assert not (tmp_path / CONFIG_FILE).exists()


def test_save_unfitted_or_onto_a_file(fitted, tmp_path):
    # Check that saving an unfitted estimator or onto a file is refused.
    with pytest.raises(NotFittedError):
        ContrastiveDisentangler().save(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is an existing file"):
        fitted["CD"].save(tmp_path / "file")


def _weights(directory):
    return directory / json.loads((directory / CONFIG_FILE).read_text())["weights_file"]


def _history(directory):
    return directory / json.loads((directory / CONFIG_FILE).read_text())["history_file"]


def _edit_config(directory, **changes):
    config = json.loads((directory / CONFIG_FILE).read_text())
    for dotted, value in changes.items():
        target = config
        *parents, last = dotted.split("__")
        for key in parents:
            target = target[key]
        target[last] = value
    (directory / CONFIG_FILE).write_text(json.dumps(config))


def _tamper_weights(directory):
    tensors = load_file(_weights(directory))
    name = next(n for n in tensors if n.endswith("weight"))
    tensors[name] = tensors[name] + 1
    save_file(tensors, _weights(directory))


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _fake_consistent_weights(directory):
    # Weights of another architecture, with the hash updated: only the shape
    # check can catch them.
    tensors = load_file(_weights(directory))
    name = next(n for n in tensors if n.startswith("module.") and n.endswith("weight"))
    tensors[name] = torch.zeros(3, 3)
    save_file(tensors, _weights(directory))
    from deepclust._serialization import sha256_file

    _edit_config(directory, weights_sha256=sha256_file(_weights(directory)))


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (_tamper_weights, "does not match the SHA-256 recorded"),
        (lambda d: _truncate(_weights(d)), "does not match the SHA-256 recorded"),
        (lambda d: _truncate(d / CONFIG_FILE), "is not valid JSON"),
        (
            lambda d: _truncate(_history(d)),
            r"history-\w+\.json is missing or does not match",
        ),
        (lambda d: (_weights(d)).unlink(), "weights file .* does not exist"),
        (
            lambda d: _edit_config(d, format_version=99),
            "format version 99, written by a newer deepclust",
        ),
        (
            lambda d: _edit_config(d, format="something else"),
            "is not a deepclust.model file",
        ),
        (
            lambda d: _edit_config(d, **{"class": "KMeans"}),
            "unknown estimator class 'KMeans'",
        ),
        (
            lambda d: _edit_config(d, params__n_heads=6),
            r"parameters .*n_heads.* do not match the stored network description",
        ),
        (
            lambda d: _edit_config(d, params__n_heads=-1),
            r"invalid parameter value .*'n_heads' parameter",
        ),
        (lambda d: _edit_config(d, params__not_a_parameter=1), "parameters unknown to"),
        (
            lambda d: _edit_config(d, weights_file="../elsewhere.safetensors"),
            "not a plain file name",
        ),
        (_fake_consistent_weights, "tensors of the wrong shape"),
        (lambda d: (d / CONFIG_FILE).unlink(), "config.json' does not exist"),
    ],
    ids=[
        "tampered-weights",
        "truncated-weights",
        "truncated-config",
        "truncated-history",
        "missing-weights",
        "newer-format",
        "not-a-model",
        "unknown-class",
        "edited-n_heads",
        "invalid-parameter",
        "unknown-parameter",
        "path-in-file-name",
        "mismatched-shapes",
        "missing-config",
    ],
)
def test_load_rejects_damaged_files(fitted, tmp_path, damage, match):
    # Check that modified, truncated or mismatched files give a clear ValueError.
    fitted["CD"].save(tmp_path)
    damage(tmp_path)
    with pytest.raises(ValueError, match=match) as info:
        load(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_load_of_a_file_path_is_refused(tmp_path):
    # Check that load names the problem when given a file instead of a directory.
    (tmp_path / "model.pkl").write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="it is not a directory"):
        load(tmp_path / "model.pkl")


# ---------------------------------------------------------------------------
# No code execution when reading files
# ---------------------------------------------------------------------------


def _calls(tree, module, function):
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == function
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == module
        ):
            yield node


def test_every_torch_load_uses_weights_only():
    # Check that every torch.load in the library passes weights_only=True and
    # that the persistence modules do not use pickle at all.
    found = 0
    for path in (REPO_ROOT / "deepclust").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for call in _calls(tree, "torch", "load"):
            found += 1
            keywords = {k.arg: k.value for k in call.keywords}
            value = keywords.get("weights_only")
            assert isinstance(value, ast.Constant) and value.value is True, (
                f"{path.name}:{call.lineno} calls torch.load without weights_only=True"
            )
    assert found >= 1  # the backbone weights loader
    for path in (
        REPO_ROOT / "deepclust" / "persistence.py",
        REPO_ROOT / "deepclust" / "_serialization.py",
        REPO_ROOT / "deepclust" / "estimators" / "_base.py",
        REPO_ROOT / "deepclust" / "estimators" / "_training.py",
    ):
        text = path.read_text(encoding="utf-8")
        assert "import pickle" not in text and "torch.load(" not in text


def test_format_v1_models_still_load():
    # Check that models saved by deepclust 0.1.0 (format version 1, before the
    # one-row-per-input and architecture changes) load and predict as they did.
    folder = REPO_ROOT / "tests" / "data" / "format_v1"
    expected = np.load(folder / "expected.npz")
    cdc = load(folder / "cdc_tabular")
    assert isinstance(cdc, CDCClusterer) and cdc.n_clusters == 2
    np.testing.assert_allclose(
        cdc.predict_proba(expected["X"]), expected["cdc_proba"], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(cdc.labels_, expected["cdc_labels"])
    cd = load(folder / "cd_gray_mlp")
    assert isinstance(cd, ContrastiveDisentangler) and cd.n_heads == 4
    np.testing.assert_allclose(
        cd.transform(expected["images"]), expected["cd_heads"], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        cd.embed(expected["images"]), expected["cd_embedding"], rtol=1e-5, atol=1e-6
    )


def test_strided_small_cnn_round_trip_and_older_descriptions(tmp_path):
    # Check that a model trained on 20-px images records the strided stem of
    # "small_cnn", saves and loads with it, and that a description written
    # before strided stems existed (format 2, "auto", no widths) still loads as
    # the stride-1 network with the first widths.
    from deepclust.datasets import make_shape_images

    X = make_shape_images(24, image_size=20, n_classes=3, random_state=0)[0]
    cdc = CDCClusterer(n_clusters=3, **SMALL).fit(X)
    description = cdc.training_config_["model"]
    assert description["stem"] == "imagenet"
    assert cdc.net_.module_.backbone.stages[0][0].stride == (2, 2)
    cdc.save(tmp_path)
    loaded = CDCClusterer.load(tmp_path)
    assert loaded.net_.module_.backbone.stages[0][0].stride == (2, 2)
    _assert_same_model(loaded, cdc, X)
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    model = config["attributes"]["training_config_"]["model"]
    model["stem"] = "auto"
    del model["backbone_widths"]
    config["format_version"] = 2
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="tensors of the wrong shape"):
        # The saved weights are those of the narrower network of today.
        CDCClusterer.load(tmp_path)
    model["backbone_widths"] = description["backbone_widths"]
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    older = CDCClusterer.load(tmp_path)
    assert older.net_.module_.backbone.stages[0][0].stride == (1, 1)
    assert older.training_config_["model"]["stem"] == "cifar"
