"""Saving that never loses a model, and loading that never trusts a folder.

Saves and exports interrupted by a kill or a full disk must leave the previous
model whole; tampered model folders (FIFOs, /dev/zero, forged attributes, deep
JSON) must give a ValueError that names the file, quickly.
"""

import errno
import json
import multiprocessing
import os
import random
import signal
import threading
import time

import numpy as np
import pytest

from deepclust import CDCClusterer, ContrastiveDisentangler
from deepclust.estimators import _saving
from deepclust.persistence import CONFIG_FILE, load

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
SMALL = {"max_epochs": 1, "batch_size": 16, "random_state": 0}


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def two_models(data):
    """Two CDC models whose outputs differ (different seeds)."""
    return [
        CDCClusterer(n_clusters=3, **{**SMALL, "random_state": seed}).fit(data)
        for seed in (0, 1)
    ]


def _config(folder):
    return json.loads((folder / CONFIG_FILE).read_text())


def _leftovers(folder):
    """Temporary files of interrupted writes, and data files no config names."""
    config = _config(folder)
    named = {CONFIG_FILE, config["weights_file"], config["history_file"]}
    return sorted(p.name for p in folder.iterdir() if p.name not in named)


# ---------------------------------------------------------------------------
# Interrupted writes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("failing_rename", [1, 2, 3])
def test_save_failing_part_way_keeps_the_old_model(
    two_models, data, tmp_path, monkeypatch, failing_rename
):
    # Check that a save over a model that fails at any of its three renames
    # (history, weights, config.json: a full disk) leaves the old model loadable
    # with its outputs, and leaves no temporary file behind.
    old, new = two_models
    old.save(tmp_path)
    expected = old.predict_proba(data)
    calls = []
    real_replace = os.replace

    def replace(source, target):
        calls.append(target)
        if len(calls) == failing_rename:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space left"):
        new.save(tmp_path)
    monkeypatch.undo()
    np.testing.assert_array_equal(load(tmp_path).predict_proba(data), expected)
    assert not [name for name in _leftovers(tmp_path) if name.endswith(".tmp")]


def test_save_writing_half_a_file_keeps_the_old_model(
    two_models, data, tmp_path, monkeypatch
):
    # Check that a weights write that stops half-way (the disk fills up) leaves
    # the old model loadable and no half-written file behind.
    import deepclust._serialization as serialization

    old, new = two_models
    old.save(tmp_path)

    def half_write(tensors, path):
        with open(path, "wb") as file:
            file.write(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(serialization, "save_file", half_write)
    with pytest.raises(OSError, match="No space left"):
        new.save(tmp_path)
    monkeypatch.undo()
    np.testing.assert_array_equal(
        load(tmp_path).predict_proba(data), old.predict_proba(data)
    )
    assert not [name for name in _leftovers(tmp_path) if name.endswith(".tmp")]


def _save_forever(models_folders, target):
    # Child process: save the two models over one folder, one after the other.
    models = [load(folder) for folder in models_folders]
    print("ready", flush=True)
    for turn in range(10**6):
        models[turn % 2].save(target)


def test_saves_killed_at_random_moments_leave_a_loadable_model(
    two_models, data, tmp_path
):
    # Check that SIGKILLs at random moments of repeated saves over one folder
    # always leave a model that loads and equals one of the two saved models.
    sources = []
    for index, model in enumerate(two_models):
        model.save(tmp_path / f"source{index}")
        sources.append(tmp_path / f"source{index}")
    expected = [model.predict_proba(data) for model in two_models]
    target = tmp_path / "target"
    two_models[0].save(target)
    rng = random.Random(0)
    context = multiprocessing.get_context("fork")
    for _ in range(12):
        child = context.Process(target=_save_forever, args=(sources, target))
        child.start()
        time.sleep(rng.uniform(0.3, 1.0))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        loaded = load(target).predict_proba(data)
        assert any(np.array_equal(loaded, probabilities) for probabilities in expected)


def test_export_failing_part_way_keeps_the_old_onnx_file(
    two_models, tmp_path, monkeypatch
):
    # Check that an ONNX export over an existing file that fails while writing
    # (a full disk) leaves the old file byte for byte.
    import onnx

    old, new = two_models
    path = tmp_path / "model.onnx"
    old.export_onnx(path)
    before = path.read_bytes()

    def half_write(proto, target, **kwargs):
        with open(target, "wb") as file:
            file.write(proto.SerializeToString()[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", half_write)
    with pytest.raises(OSError, match="No space left"):
        new.export_onnx(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


# ---------------------------------------------------------------------------
# Tampered folders
# ---------------------------------------------------------------------------


def _in_thread(function, timeout=20):
    """Run ``function``; fail (instead of hanging the suite) if it blocks."""
    outcome = {}

    def run():
        try:
            outcome["value"] = function()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "loading blocked"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@pytest.mark.parametrize("which", ["config", "weights", "history"])
@pytest.mark.parametrize("odd", ["dev-zero", "fifo"])
def test_odd_files_in_a_model_folder_are_refused_without_hanging(
    two_models, tmp_path, which, odd
):
    # Check that a config, weights or history file replaced by a symbolic link
    # to /dev/zero (endless) or by a FIFO (blocks readers) gives a ValueError
    # naming the file, within seconds and without growing memory.
    two_models[0].save(tmp_path)
    config = _config(tmp_path)
    name = {
        "config": CONFIG_FILE,
        "weights": config["weights_file"],
        "history": config["history_file"],
    }[which]
    (tmp_path / name).unlink()
    if odd == "dev-zero":
        (tmp_path / name).symlink_to("/dev/zero")
    else:
        os.mkfifo(tmp_path / name)
    with pytest.raises(ValueError, match="not a regular file") as error:
        _in_thread(lambda: load(tmp_path))
    assert name in str(error.value)


def _edit(folder, edit):
    config = _config(folder)
    edit(config)
    (folder / CONFIG_FILE).write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            lambda c: c["attributes"].update(predict=1),
            "sets the attribute 'predict', which is not a fitted attribute",
        ),
        (
            lambda c: c["attributes"].update(fit_=1),
            "sets the attribute 'fit_', which is not a fitted attribute",
        ),
        (
            lambda c: c["attributes"].update(labels_="all mine"),
            "attribute 'labels_' to a str; expected a 1-D array",
        ),
        (
            lambda c: c["attributes"].update(n_epochs_=-3),
            "attribute 'n_epochs_' to a int; expected an int >= 0",
        ),
        (
            lambda c: c["attributes"].update(input_kind_="audio"),
            "attribute 'input_kind_' to a str; expected one of",
        ),
    ],
    ids=["method-name", "unknown-name", "labels-type", "negative-epochs", "kind"],
)
def test_forged_attributes_are_refused(two_models, tmp_path, edit, match):
    # Check that config.json cannot set attributes that shadow methods, unknown
    # attributes, or fitted attributes of the wrong type.
    two_models[0].save(tmp_path)
    _edit(tmp_path, edit)
    with pytest.raises(ValueError, match=match):
        load(tmp_path)


def test_deeply_nested_json_is_refused(two_models, tmp_path):
    # Check that 100,000 levels of nested JSON give a ValueError naming the file,
    # not a RecursionError.
    two_models[0].save(tmp_path)
    text = (tmp_path / CONFIG_FILE).read_text()
    nested = "[" * 100_000 + "]" * 100_000
    (tmp_path / CONFIG_FILE).write_text(text[:-2] + f', "deep": {nested}}}')
    with pytest.raises(ValueError, match="nests its JSON too deeply") as error:
        load(tmp_path)
    assert CONFIG_FILE in str(error.value)


def test_oversized_json_is_refused(two_models, tmp_path, monkeypatch):
    # Check that a JSON file above the size cap is refused before it is read.
    import deepclust._serialization as serialization

    two_models[0].save(tmp_path)
    monkeypatch.setattr(serialization, "JSON_MAX_BYTES", 100)
    with pytest.raises(ValueError, match="more than the 100 bytes"):
        load(tmp_path)


def test_a_save_over_an_older_format_removes_its_files(two_models, data, tmp_path):
    # Check that saving over a folder written in format 2 (fixed file names)
    # replaces it: the old files are removed once the new config names its own.
    old, new = two_models
    old.save(tmp_path)
    config = _config(tmp_path)
    for key, name in (
        ("weights_file", "model.safetensors"),
        ("history_file", "history.json"),
    ):
        (tmp_path / config[key]).rename(tmp_path / name)
        config[key] = name
    config["format_version"] = 2
    (tmp_path / CONFIG_FILE).write_text(json.dumps(config))
    np.testing.assert_array_equal(
        load(tmp_path).predict_proba(data), old.predict_proba(data)
    )
    new.save(tmp_path)
    assert _leftovers(tmp_path) == []
    np.testing.assert_array_equal(
        load(tmp_path).predict_proba(data), new.predict_proba(data)
    )


def test_upgrade_turns_format_2_documents_into_today(two_models, tmp_path):
    # Check that upgrade() fills what format 2 lacked (parameters added since,
    # the cluster bias buffer) without modifying its inputs, and that such a
    # model loads with the outputs of a model without bias.
    from deepclust._serialization import read_document

    model = two_models[0]
    model.save(tmp_path)
    document, tensors = read_document(
        tmp_path,
        CONFIG_FILE,
        format_name=_saving.MODEL_FORMAT,
        version=_saving.MODEL_FORMAT_VERSION,
        what="test",
    )
    document["format_version"] = 2
    for name in ("n_cluster_heads", "neighbor_weight"):
        del document["params"][name]
    del tensors["module.cluster_bias"]
    snapshot = json.dumps(document, sort_keys=True), sorted(tensors)
    upgraded, new_tensors = _saving.upgrade(document, tensors, CDCClusterer)
    assert (json.dumps(document, sort_keys=True), sorted(tensors)) == snapshot
    assert upgraded["format_version"] == _saving.MODEL_FORMAT_VERSION
    assert upgraded["params"]["n_cluster_heads"] == 1
    assert upgraded["params"]["neighbor_weight"] == 0.0
    assert new_tensors["module.cluster_bias"].tolist() == [0.0, 0.0, 0.0]


def test_cd_models_round_trip_through_the_schema(data, tmp_path):
    # Check that every attribute a fitted ContrastiveDisentangler saves passes
    # the attribute schema (a new fitted attribute needs an entry there).
    cd = ContrastiveDisentangler(n_heads=4, **SMALL).fit(data)
    cd.save(tmp_path)
    loaded = load(tmp_path)
    np.testing.assert_array_equal(loaded.transform(data), cd.transform(data))
    assert set(_config(tmp_path)["attributes"]) <= set(_saving._COMMON_ATTRIBUTES)
