"""Training that loses nothing: recovery from failures and Ctrl-C, and checkpoints.

:func:`fit_net` runs the skorch training loop of a net with a
:class:`TrainingRecovery` callback, which

- keeps a CPU copy of the weights at the end of every epoch whose weights are all
  finite, so that a failure (a non-finite loss, out of memory...) or a
  ``KeyboardInterrupt`` leaves the estimator fitted with the last good epoch;
- writes a checkpoint every ``checkpoint_every`` epochs to ``checkpoint_dir``
  (weights, optimizer, learning-rate schedule, random generators and history, in
  safetensors + JSON, no pickle), from which ``resume=True`` continues a fit
  exactly where it stopped.
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from skorch.callbacks import Callback, LRScheduler
from skorch.history import History

from deepclust import distributed
from deepclust._serialization import (
    check_state_dict,
    decode_tree,
    encode_tree,
    read_document,
    remove_unnamed_files,
    write_document,
)
from deepclust._version import __version__
from deepclust.estimators._net import (
    GENERATORS,
    TrainingDivergedError,
    generator_state,
    restore_generators,
)
from deepclust.estimators._saving import upgrade_checkpoint

CHECKPOINT_FORMAT = "deepclust.checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
CHECKPOINT_FILE = "checkpoint.json"
# Weights files are named after the epoch and their content (see write_checkpoint).
_WEIGHTS_PREFIX = "checkpoint-epoch{:05d}"
_WEIGHTS_GLOB = "checkpoint-epoch*.safetensors"
# Parameters that do not change what is trained: a fit may resume with other values.
_NOT_COMPARED = frozenset(
    {
        "callbacks",
        "checkpoint_dir",
        "checkpoint_every",
        "compile",
        "device",
        "num_workers",
        "on_error",
        "predict_batch_size",
        "resume",
        "verbose",
    }
)


# ---------------------------------------------------------------------------
# The callback
# ---------------------------------------------------------------------------


class TrainingRecovery(Callback):
    """Keep the last finite epoch's weights in memory and checkpoint them to disk.

    Parameters
    ----------
    checkpoint_dir : str or path-like, default=None
        Directory of the checkpoints; None keeps only the in-memory copy.
    checkpoint_every : int, default=1
        Epochs between checkpoints; the last epoch is always saved.
    fingerprint : dict, default=None
        JSON description of the fit (class, parameters, data) stored with the
        checkpoints so that a resumed fit can check that it continues the same one.

    Attributes
    ----------
    snapshot_ : dict of str to Tensor or None
        CPU copy of the module's state at the end of epoch ``snapshot_epoch_``.
    snapshot_epoch_ : int
        Last epoch whose weights were all finite (0: none yet).
    completed_epoch_ : int
        Last epoch that reached ``on_epoch_end``.
    checkpoint_epoch_ : int or None
        Epoch of the last checkpoint written by this fit.
    """

    def __init__(self, checkpoint_dir=None, checkpoint_every=1, fingerprint=None):
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.fingerprint = fingerprint

    def initialize(self):
        self.snapshot_ = None
        self.snapshot_epoch_ = 0
        self.completed_epoch_ = 0
        self.checkpoint_epoch_ = None
        self.scheduler_state_ = None
        return self

    def on_train_begin(self, net, **kwargs):
        epoch = len(net.history)
        self.completed_epoch_ = self.snapshot_epoch_ = epoch
        self.snapshot_ = (
            _cpu_copy(net.unwrapped_module().state_dict()) if epoch else None
        )
        if self.scheduler_state_ is not None:
            # skorch creates the scheduler in its own on_train_begin, which runs
            # before this one: only now can a resumed fit restore its state.
            scheduler = _lr_scheduler(net)
            if scheduler is not None:
                scheduler.load_state_dict(self.scheduler_state_)
            self.scheduler_state_ = None

    def on_epoch_end(self, net, **kwargs):
        epoch = len(net.history)
        self.completed_epoch_ = epoch
        state = net.unwrapped_module().state_dict()
        if not _all_finite(state):
            return
        self.snapshot_ = _cpu_copy(state)
        self.snapshot_epoch_ = epoch
        due = epoch % self.checkpoint_every == 0 or epoch >= net.max_epochs
        if self.checkpoint_dir is not None and due:
            # What each process holds on its own: its random generators and the
            # state of its objective (e.g. a neighbour bank of its share).
            processes = [_process_state(net)]
            if net.distributed:
                processes = [None] * distributed.world_size()
                torch.distributed.all_gather_object(processes, _process_state(net))
            if net.process_rank == 0:
                write_checkpoint(
                    net,
                    self.snapshot_,
                    self.checkpoint_dir,
                    self.fingerprint,
                    processes,
                )
            self.checkpoint_epoch_ = epoch

    def __getstate__(self):
        # The snapshot is a full copy of the weights: keep pickles small.
        state = self.__dict__.copy()
        state["snapshot_"] = None
        return state


def _cpu_copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        name: tensor.detach().to("cpu", copy=True) for name, tensor in state.items()
    }


def _all_finite(state: dict[str, torch.Tensor]) -> bool:
    checks = [torch.isfinite(t).all() for t in state.values() if t.is_floating_point()]
    return bool(torch.stack(checks).all()) if checks else True


def _lr_scheduler(net):
    for _, callback in net.callbacks_:
        if isinstance(callback, LRScheduler):
            return callback.lr_scheduler_
    return None


# ---------------------------------------------------------------------------
# Checkpoint files
# ---------------------------------------------------------------------------


def _process_state(net) -> dict:
    return {
        "generators": {
            name: generator_state(getattr(net, name)) for name in GENERATORS
        },
        "criterion": _cpu_copy(net.criterion_.state_dict()),
    }


def write_checkpoint(net, module_state, directory, fingerprint, processes) -> None:
    """Write the training state after the current epoch, replacing the previous one.

    The weights go to a new ``checkpoint-epochNNNNN-<hash>.safetensors`` (a name
    no current checkpoint uses) and only then does ``checkpoint.json`` point to
    it (atomic replace), so that an interruption while writing leaves the
    previous checkpoint usable.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    epoch = len(net.history)
    tensors: dict[str, torch.Tensor] = {}
    scheduler = _lr_scheduler(net)
    content = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "deepclust_version": __version__,
        "fit": fingerprint,
        "epoch": epoch,
        "module": encode_tree(
            module_state, tensors, "module", where="the module state"
        ),
        "optimizer": encode_tree(
            net.optimizer_.state_dict(),
            tensors,
            "optimizer",
            where="the optimizer state",
        ),
        "lr_scheduler": None
        if scheduler is None
        else encode_tree(
            scheduler.state_dict(), tensors, "lr_scheduler", where="the scheduler state"
        ),
        # The generators and objective states of every process.
        "processes": encode_tree(processes, tensors, "processes"),
        "history": encode_tree(
            net.history.to_list(), tensors, "history", where="the history"
        ),
    }
    weights = write_document(
        directory, CHECKPOINT_FILE, content, tensors, _WEIGHTS_PREFIX.format(epoch)
    )
    remove_unnamed_files(directory, (_WEIGHTS_GLOB,), keep={weights})


def read_checkpoint(directory) -> dict | None:
    """The decoded checkpoint in ``directory``, or None when there is none.

    Raises
    ------
    ValueError
        If the checkpoint is damaged, modified or of an unknown format.
    """
    if not (Path(directory) / CHECKPOINT_FILE).exists():
        return None
    what = f"resume=True: cannot read the checkpoint in {str(directory)!r}"
    content, tensors = read_document(
        directory,
        CHECKPOINT_FILE,
        format_name=CHECKPOINT_FORMAT,
        version=CHECKPOINT_FORMAT_VERSION,
        what=what,
    )
    content = upgrade_checkpoint(content)
    try:
        # The fingerprint stays encoded: it is compared with a fresh encoded one.
        return {
            key: value if key == "fit" else decode_tree(value, tensors)
            for key, value in content.items()
        }
    except KeyError as exc:
        raise ValueError(
            f"{what}: the checkpoint lacks the entry {exc}; it was edited or truncated."
        ) from None


def fingerprint(
    estimator, n_samples: int, total_epochs: int, n_processes: int = 1
) -> dict:
    """JSON description of a fit that a resumed fit must reproduce.

    ``n_samples`` counts the samples of all processes of a distributed job, whose
    number ``n_processes`` must also be the same to resume.
    """
    params = {
        name: _describe(value)
        for name, value in estimator.get_params(deep=False).items()
        if name not in _NOT_COMPARED
    }
    inputs = {
        name: getattr(estimator, name, None)
        for name in (
            "input_kind_",
            "n_features_in_",
            "input_shape_",
            "image_size_",
            "n_channels_",
            "input_dtype_",
        )
    }
    description = {
        "class": type(estimator).__name__,
        "params": params,
        "input": {name: _describe(value) for name, value in inputs.items()},
        "n_samples": int(n_samples),
        "total_epochs": int(total_epochs),
    }
    if n_processes > 1:
        description["n_processes"] = int(n_processes)
    # A JSON round trip gives the exact form that is read back from disk.
    return json.loads(json.dumps(description))


def _describe(value):
    if isinstance(value, torch.device):
        return str(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    try:
        return encode_tree(value, {}, "value")
    except TypeError:
        # Callables and random generators cannot be compared: name them only.
        return f"<{getattr(value, '__qualname__', type(value).__qualname__)}>"


def _check_fingerprint(stored, current, directory) -> None:
    def differ(label, saved, value):
        differences.append(
            f"{label}: {decode_tree(saved, {})!r} in the checkpoint, "
            f"{decode_tree(value, {})!r} now"
        )

    differences = []
    for key in ("class", "n_samples", "total_epochs", "n_processes"):
        if stored.get(key) != current.get(key):
            differ(key, stored.get(key), current.get(key))
    for section, label in (("params", "parameter"), ("input", "input")):
        saved = stored.get(section) or {}
        for name, value in current[section].items():
            if saved.get(name, value) != value:
                differ(f"{label} {name}", saved.get(name), value)
    if differences:
        raise ValueError(
            f"resume=True: the checkpoint in {str(directory)!r} was written by a "
            f"different fit ({'; '.join(differences[:5])}). Resume with the same "
            "parameters and data, or pass resume=False to start over (the "
            "checkpoint is then overwritten)."
        )


def _restore_training_state(net, checkpoint, directory) -> None:
    what = f"resume=True: cannot restore the checkpoint in {str(directory)!r}"
    module = net.unwrapped_module()
    check_state_dict(module.state_dict(), checkpoint["module"], what)
    module.load_state_dict(checkpoint["module"])
    try:
        net.optimizer_.load_state_dict(checkpoint["optimizer"])
    except (KeyError, ValueError) as exc:
        raise ValueError(
            f"{what}: its optimizer state does not fit the model ({exc})."
        ) from None
    net.history = History(checkpoint["history"])
    own = checkpoint["processes"][net.process_rank]
    restore_generators(net, own["generators"])
    if own.get("criterion"):
        net.criterion_.load_state_dict(own["criterion"])


# ---------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------


def fit_net(
    net,
    dataset,
    *,
    checkpoint_dir=None,
    checkpoint_every=1,
    resume=False,
    fit_description=None,
    n_user_callbacks=0,
) -> None:
    """Train ``net`` on ``dataset``, resuming and recovering as configured.

    Parameters
    ----------
    net : ContrastiveNet
        The net to train; its last ``n_user_callbacks`` callbacks are the user's.
    dataset : InputDataset
    checkpoint_dir : path-like, default=None
        Where checkpoints are written (and read with ``resume``).
    checkpoint_every : int, default=1
    resume : bool, default=False
        Continue from the checkpoint in ``checkpoint_dir`` when there is one.
    fit_description : dict, default=None
        :func:`fingerprint` of the fit; a resumed fit must match it.
    n_user_callbacks : int, default=0

    Raises
    ------
    Exception
        Whatever stopped training. When at least one epoch with finite weights
        completed, the net holds that epoch's weights, its history ends there
        and the exception has the attribute ``kept_epoch`` (the epoch kept): the
        caller can finish the fit with them before letting it propagate.

    Warns
    -----
    UserWarning
        When training was interrupted by ``KeyboardInterrupt``: the net holds the
        weights of the last completed epoch and the fit counts as done.
    """
    recovery = TrainingRecovery(checkpoint_dir, checkpoint_every, fit_description)
    # After the learning-rate scheduler (checkpoints hold its stepped state),
    # before the user's callbacks (EarlyStopping stops with KeyboardInterrupt).
    net.callbacks.insert(len(net.callbacks) - n_user_callbacks, ("recovery", recovery))

    checkpoint = read_checkpoint(checkpoint_dir) if resume else None
    if checkpoint is not None:
        _check_fingerprint(
            checkpoint["fit"] or {}, recovery.fingerprint, checkpoint_dir
        )
        net.initialize()
        _restore_training_state(net, checkpoint, checkpoint_dir)
        recovery.scheduler_state_ = checkpoint["lr_scheduler"]
    try:
        if checkpoint is None:
            net.fit(dataset, None)
        else:
            net.partial_fit(
                dataset, None, epochs=max(0, net.max_epochs - len(net.history))
            )
    except Exception as error:
        _keep_last_good_epoch(net, recovery, error)
        raise
    trained = len(net.history)
    interrupted = trained > recovery.completed_epoch_
    if not interrupted and recovery.snapshot_epoch_ >= trained:
        recovery.snapshot_ = None
        return
    if not interrupted:
        kept = recovery.snapshot_epoch_ if recovery.snapshot_ is not None else None
        outcome = (
            f"the estimator keeps the weights of epoch {kept}, the last finite ones"
            if kept
            else "no earlier epoch had finite weights"
        )
        error = TrainingDivergedError(
            f"The weights became NaN or infinite at epoch {trained}; {outcome}. "
            "Try a lower lr, gradient clipping (grad_clip_norm=1.0) or "
            "precision='fp32'."
        )
        _keep_last_good_epoch(net, recovery, error)
        raise error
    if not _restore_snapshot(net, recovery):
        raise KeyboardInterrupt(
            f"Training was interrupted during epoch {trained}, before any "
            "epoch completed; the estimator is not fitted."
        )
    hint = ""
    if recovery.checkpoint_epoch_ is not None or checkpoint is not None:
        hint = (
            f" Fit again with resume=True to continue from the checkpoint in "
            f"{str(checkpoint_dir)!r}."
        )
    warnings.warn(
        f"Training was interrupted (KeyboardInterrupt) during epoch {trained}; the "
        f"estimator is fitted with the weights of epoch {recovery.snapshot_epoch_}, "
        f"the last completed epoch.{hint}",
        UserWarning,
        stacklevel=3,
    )


def _keep_last_good_epoch(net, recovery, error: BaseException) -> None:
    """Give the net the last finite epoch's weights and mark ``error`` with it."""
    kept = recovery.snapshot_epoch_
    if not _restore_snapshot(net, recovery):
        return
    error.kept_epoch = kept
    _add_note(
        error,
        f"deepclust kept the weights of epoch {kept}, the last epoch with finite "
        f"weights: the estimator is fitted with them (n_epochs_={kept}).",
    )


def _restore_snapshot(net, recovery) -> bool:
    if getattr(recovery, "snapshot_", None) is None:
        return False
    net.unwrapped_module().load_state_dict(recovery.snapshot_)
    del net.history[recovery.snapshot_epoch_ :]
    recovery.snapshot_ = None
    return True


def _add_note(error: BaseException, note: str) -> None:
    if hasattr(error, "add_note"):  # Python >= 3.11
        error.add_note(note)
