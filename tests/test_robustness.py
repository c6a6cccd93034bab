"""Failures during training lose nothing: divergence, Ctrl-C, checkpoints, streaming."""

import json
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from sklearn.exceptions import NotFittedError
from skorch.callbacks import Callback, EarlyStopping

from deepclust import CDCClusterer, ContrastiveDisentangler
from deepclust.estimators._net import TrainingDivergedError
from deepclust.estimators._training import CHECKPOINT_FILE
from deepclust.objectives import CDCObjective, CDObjective

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

SMALL = {"batch_size": 16, "random_state": 0}


@pytest.fixture(scope="module")
def tabular():
    return np.random.default_rng(0).standard_normal((48, 4))


@pytest.fixture(scope="module")
def images():
    from deepclust.datasets import make_shape_images

    return make_shape_images(32, image_size=8, n_classes=3, random_state=0)[0]


def _cd(**params):
    return ContrastiveDisentangler(**{"n_heads": 4, **SMALL, **params})


def _cdc(**params):
    return CDCClusterer(**{"n_clusters": 3, **SMALL, **params})


class InterruptAt(Callback):
    """Raise KeyboardInterrupt (as Ctrl-C would) after the first batch of an epoch."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_batch_end(self, net, **kwargs):
        if len(net.history) == self.epoch:
            raise KeyboardInterrupt


class PoisonLastBatch(Callback):
    """Make the weights NaN after the last batch of an epoch."""

    def __init__(self, epoch, n_batches):
        self.epoch = epoch
        self.n_batches = n_batches

    def on_batch_end(self, net, **kwargs):
        if (
            len(net.history) == self.epoch
            and len(net.history[-1]["batches"]) == self.n_batches
        ):
            with torch.no_grad():
                next(net.module_.parameters()).fill_(float("nan"))


@pytest.fixture
def nan_loss_at_epoch(monkeypatch):
    """Make the training loss NaN from the given (1-based) epoch on."""

    def patch(epoch):
        for objective in (CDObjective, CDCObjective):
            original = objective.forward

            def forward(
                self, model, unit, generator=None, epoch_index=0, index=None,
                original=original,
            ):  # fmt: skip
                loss, parts = original(self, model, unit, generator, epoch_index, index)
                if epoch_index + 1 >= epoch:
                    loss = loss * float("nan")
                return loss, parts

            monkeypatch.setattr(objective, "forward", forward)

    return patch


# ---------------------------------------------------------------------------
# Non-finite loss
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("make", [_cd, _cdc], ids=["CD", "CDC"])
def test_nan_loss_keeps_last_finite_epoch(make, tabular, nan_loss_at_epoch):
    # Check that a NaN loss at epoch 2 raises a clear error and leaves the
    # estimator fitted with the weights of epoch 1.
    reference = make(max_epochs=1).fit(tabular)
    nan_loss_at_epoch(2)
    est = make(max_epochs=4)
    with pytest.raises(TrainingDivergedError, match=r"epoch 2, batch 1") as info:
        est.fit(tabular)
    message = str(info.value)
    assert "lower lr" in message and "grad_clip_norm" in message
    assert any(
        "weights of epoch 1" in note for note in getattr(info.value, "__notes__", [""])
    )
    assert isinstance(info.value, FloatingPointError)
    assert est.n_epochs_ == 1 and len(est.history_) == 1
    np.testing.assert_array_equal(est.transform(tabular), reference.transform(tabular))
    if isinstance(est, CDCClusterer):
        np.testing.assert_array_equal(est.labels_, reference.labels_)


def test_nan_loss_in_first_epoch_leaves_estimator_unfitted(tabular, nan_loss_at_epoch):
    # Check that when no epoch finished, the error propagates and nothing of a
    # previous fit is left behind.
    est = _cdc(max_epochs=2).fit(tabular)
    nan_loss_at_epoch(1)
    with pytest.raises(TrainingDivergedError, match="epoch 1, batch 1"):
        est.fit(tabular)
    assert not hasattr(est, "net_") and not hasattr(est, "labels_")
    with pytest.raises(NotFittedError):
        est.predict(tabular)


def test_nonfinite_weights_after_last_epoch(tabular):
    # Check that weights turned NaN by the last step of training are replaced by
    # the last finite ones and reported.
    reference = _cd(max_epochs=1).fit(tabular)
    est = _cd(max_epochs=2, callbacks=[PoisonLastBatch(epoch=2, n_batches=3)])
    with pytest.raises(TrainingDivergedError, match="weights of epoch 1"):
        est.fit(tabular)
    assert est.n_epochs_ == 1
    output = est.transform(tabular)
    assert np.isfinite(output).all()
    np.testing.assert_array_equal(output, reference.transform(tabular))


# ---------------------------------------------------------------------------
# KeyboardInterrupt
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("make", [_cd, _cdc], ids=["CD", "CDC"])
def test_keyboard_interrupt_keeps_last_completed_epoch(make, tabular):
    # Check that Ctrl-C during epoch 2 warns and leaves a usable estimator with
    # the weights of epoch 1.
    reference = make(max_epochs=1).fit(tabular)
    est = make(max_epochs=4, callbacks=[InterruptAt(2)])
    with pytest.warns(
        UserWarning,
        match=r"interrupted \(KeyboardInterrupt\) during epoch 2.*"
        r"weights of epoch 1",
    ):
        est.fit(tabular)
    assert est.n_epochs_ == 1 and len(est.history_) == 1
    np.testing.assert_array_equal(est.transform(tabular), reference.transform(tabular))
    if isinstance(est, CDCClusterer):
        assert est.labels_.shape == (len(tabular),)
        np.testing.assert_array_equal(est.predict(tabular), est.labels_)


def test_keyboard_interrupt_in_first_epoch_propagates(tabular):
    # Check that Ctrl-C before any epoch completed re-raises and leaves no fitted state.
    est = _cd(max_epochs=2, callbacks=[InterruptAt(1)])
    with pytest.raises(KeyboardInterrupt, match="before any epoch completed"):
        est.fit(tabular)
    assert not hasattr(est, "net_")


def test_early_stopping_is_not_an_interruption(tabular):
    # Check that skorch's EarlyStopping (which raises KeyboardInterrupt at an
    # epoch end) stops training without the interruption warning.
    stopper = EarlyStopping(monitor="train_loss", patience=1, threshold=1e9)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        est = _cd(max_epochs=10, callbacks=[stopper]).fit(tabular)
    assert 1 <= est.n_epochs_ < 10
    assert "train_loss" in est.history_[-1]


# ---------------------------------------------------------------------------
# Checkpoints and resume
# ---------------------------------------------------------------------------


def test_checkpoint_files_are_safetensors_and_json(tabular, tmp_path):
    # Check that checkpoints hold model, optimizer, scheduler, generators and
    # history, without pickle, and that only the latest weights file is kept.
    est = _cdc(max_epochs=3, checkpoint_dir=tmp_path, checkpoint_every=2).fit(tabular)
    content = json.loads((tmp_path / CHECKPOINT_FILE).read_text())
    assert content["epoch"] == 3  # epochs 2 and 3 (the last) are written
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        content["weights_file"],
        CHECKPOINT_FILE,
    ]
    assert re.fullmatch(
        r"checkpoint-epoch00003-[0-9a-f]{16}\.safetensors", content["weights_file"]
    )
    tensors = load_file(tmp_path / content["weights_file"])
    module_state = est.net_.module_.state_dict()
    for name, value in module_state.items():
        if name.startswith("head.3."):
            # After training the best cluster head became the first one.
            continue
        torch.testing.assert_close(tensors[f"module.{name}"], value, rtol=0, atol=0)
    assert any(name.startswith("optimizer.state.") for name in tensors)
    assert content["lr_scheduler"]["last_epoch"] == 3
    (process,) = content["processes"]
    assert set(process["generators"]) == {"shuffle_generator_", "augment_generator_"}
    assert "neighbors.codes" in process["criterion"]
    assert len(content["history"]) == 3


@pytest.mark.parametrize(
    ("make", "data", "params"),
    [(_cd, "tabular", {}), (_cdc, "images", {"self_label_epochs": 1})],
    ids=["CD-tabular", "CDC-images-self-labelling"],
)
def test_resume_reproduces_uninterrupted_fit(make, data, params, request, tmp_path):
    # Check that fit interrupted after 2 of 4 epochs and resumed from its
    # checkpoint gives exactly the result of an uninterrupted fit (on CPU).
    X = request.getfixturevalue(data)
    params = {"max_epochs": 4, **params}
    uninterrupted = make(**params).fit(X)
    with pytest.warns(UserWarning, match="resume=True"):
        make(**params, checkpoint_dir=tmp_path, callbacks=[InterruptAt(3)]).fit(X)
    resumed = make(**params, checkpoint_dir=tmp_path, resume=True).fit(X)
    assert resumed.n_epochs_ == uninterrupted.n_epochs_
    np.testing.assert_array_equal(resumed.transform(X), uninterrupted.transform(X))
    assert resumed.history_[:, "train_loss"] == uninterrupted.history_[:, "train_loss"]


def test_resume_of_finished_fit_trains_no_more(tabular, tmp_path):
    # Check that resuming from the checkpoint of a finished fit only restores it.
    first = _cd(max_epochs=2, checkpoint_dir=tmp_path).fit(tabular)
    again = _cd(max_epochs=2, checkpoint_dir=tmp_path, resume=True).fit(tabular)
    assert again.n_epochs_ == 2
    np.testing.assert_array_equal(again.transform(tabular), first.transform(tabular))


def test_resume_without_checkpoint_starts_from_scratch(tabular, tmp_path):
    # Check that resume=True with an empty checkpoint_dir is a plain fit.
    plain = _cd(max_epochs=2).fit(tabular)
    resumed = _cd(max_epochs=2, checkpoint_dir=tmp_path / "new", resume=True).fit(
        tabular
    )
    np.testing.assert_array_equal(resumed.transform(tabular), plain.transform(tabular))
    assert (tmp_path / "new" / CHECKPOINT_FILE).exists()


def test_resume_with_other_parameters_is_refused(tabular, tmp_path):
    # Check that a checkpoint is not resumed by a fit with other settings or data.
    _cd(max_epochs=2, checkpoint_dir=tmp_path).fit(tabular)
    est = _cd(max_epochs=2, n_heads=6, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(
        ValueError,
        match=r"different fit \(parameter n_heads: 4 in the "
        r"checkpoint, 6 now\).*resume=False",
    ):
        est.fit(tabular)
    assert not hasattr(est, "net_")
    with pytest.raises(ValueError, match="n_samples: 48 in the checkpoint, 40 now"):
        _cd(max_epochs=2, checkpoint_dir=tmp_path, resume=True).fit(tabular[:40])


def test_resume_from_damaged_checkpoint_is_refused(tabular, tmp_path):
    # Check that a modified checkpoint weights file is detected.
    _cd(max_epochs=1, checkpoint_dir=tmp_path).fit(tabular)
    weights = next(tmp_path.glob("checkpoint-epoch*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ValueError, match="does not match the SHA-256"):
        _cd(max_epochs=2, checkpoint_dir=tmp_path, resume=True).fit(tabular)


# ---------------------------------------------------------------------------
# Streaming inference
# ---------------------------------------------------------------------------


def _record_batch_sizes(est):
    sizes = []
    est.net_.module_.backbone.register_forward_hook(
        lambda module, inputs, output: sizes.append(len(inputs[0]))
    )
    return sizes


def test_predict_streams_memmap_and_paths(images, tmp_path):
    # Check that a memory-mapped .npy and a list of image files are predicted in
    # batches of predict_batch_size with the same results as in memory.
    cdc = _cdc(max_epochs=1).fit(images)
    expected = cdc.predict_proba(images)
    np.save(tmp_path / "images.npy", images)
    files = []
    for i, image in enumerate(images):
        files.append(str(tmp_path / f"{i:03d}.png"))
        Image.fromarray(image).save(files[-1])

    cdc.set_params(predict_batch_size=3)
    sizes = _record_batch_sizes(cdc)
    memmap = np.load(tmp_path / "images.npy", mmap_mode="r")
    for X in (memmap, str(tmp_path / "images.npy"), files):
        sizes.clear()
        np.testing.assert_allclose(cdc.predict_proba(X), expected, rtol=1e-5, atol=1e-6)
        assert max(sizes) == 3 and sum(sizes) == len(images)
