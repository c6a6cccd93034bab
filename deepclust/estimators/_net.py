"""The skorch net that trains and runs a deepclust model, and what it iterates over.

One training step, top to bottom (:meth:`ContrastiveNet.train_step_single`):

1. the batch arrives as raw input (uint8 or float images, float rows), already
   on the device when the whole input fits there (:class:`DeviceBatches`) or
   read lazily by a DataLoader (:class:`InputDataset`);
2. the model's own scaler maps it to the unit range (``scaler.to_unit``);
3. under autocast, the criterion (a :mod:`deepclust.objectives` objective) makes
   two augmented views, runs the model for the outputs its loss needs and
   returns the loss and its parts;
4. the backward pass, a finiteness check, and the parts go to the history.

skorch then clips the gradients (callback), steps the optimizer and the
learning-rate schedule and runs the other callbacks. Inference
(:meth:`ContrastiveNet.outputs`) streams an input through the model in eval mode
and returns one row per input, in input order.
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

from __future__ import annotations

import inspect
import math
import os
import sys
import time
import warnings
from contextlib import contextmanager

import numpy as np
import torch
from skorch import NeuralNet
from skorch.callbacks import Callback
from torch.nn.parallel import DistributedDataParallel

from deepclust import distributed
from deepclust._inputs import TabularInput, check_value_range, iter_batches
from deepclust.estimators._config import DeviceDescription

__all__ = [
    "ContrastiveNet",
    "DeviceBatches",
    "DurationEstimate",
    "EpochProgress",
    "ShardBatches",
    "InputDataset",
    "LRFactor",
    "NeighborMining",
    "TrainingDivergedError",
    "describe_device",
    "resolve_device",
]

# Whole inputs up to this size are materialised (and uploaded to the device).
_MATERIALIZE_BYTES = 4 * 2**30
# DDP need not copy buffers at every forward: the synchronised BatchNorm keeps them
# equal (the option was renamed in torch 2.14).
_NO_BUFFER_BROADCASTS = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)
# The net's random generators, seeded from generator_seed (+ their position).
GENERATORS = ("shuffle_generator_", "augment_generator_")


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite."""


def describe_device(device: torch.device) -> DeviceDescription:
    """What the "auto" choices need to know about a device (see :mod:`._config`)."""
    native_bf16 = (
        device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8
    )
    return DeviceDescription(
        device.type, native_bf16=native_bf16, n_cpus=os.cpu_count() or 1
    )


def resolve_device(device) -> torch.device:
    """The torch device for the ``device`` parameter, with a clear error."""
    if isinstance(device, torch.device):
        device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        resolved = None
    if resolved is None or resolved.type not in {"cpu", "cuda", "mps"}:
        raise ValueError(
            f"Unknown device {device!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'."
        )
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available; "
            "use device='auto' or 'cpu'."
        )
    return resolved


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


class DeviceBatches:
    """Shuffled batches of a tensor that already lives on the training device."""

    def __init__(self, data: torch.Tensor, batch_size: int, generator: torch.Generator):
        self.data = data
        self.batch_size = batch_size
        self.generator = generator

    def __len__(self) -> int:
        full, rest = divmod(len(self.data), self.batch_size)
        return full + (rest >= 2)  # a trailing lone sample is skipped

    def __iter__(self):
        order = torch.randperm(len(self.data), generator=self.generator)
        order = order.to(self.data.device)
        n_samples = len(self.data)
        for start in range(0, n_samples, self.batch_size):
            index = order[start : start + self.batch_size]
            if len(index) < 2:
                # A lone sample cannot be contrasted (and breaks BatchNorm).
                continue
            yield self.data[index], index


class ShardBatches:
    """Batches of local positions over this process's data, ``n_steps`` per epoch.

    Each epoch shuffles the positions and splits them into ``n_steps`` batches of
    near-equal sizes, so every sample is used once per epoch and every process
    takes the same number of steps.
    """

    def __init__(self, n_samples: int, n_steps: int, generator: torch.Generator):
        self.n_samples = n_samples
        self.n_steps = max(1, n_steps)
        self.generator = generator

    def __len__(self) -> int:
        return self.n_steps

    def __iter__(self):
        order = torch.randperm(self.n_samples, generator=self.generator)
        yield from torch.tensor_split(order, self.n_steps)


class _TensorBatches:
    """The rows of a device tensor for each batch of positions of ``batches``."""

    def __init__(self, data: torch.Tensor, batches):
        self.data = data
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        for index in self.batches:
            yield self.data[index.to(self.data.device)], index


class InputDataset(torch.utils.data.Dataset):
    """Training data for skorch: either materialised on the device or read lazily.

    Indexing with a list of indices reads a whole batch at once, so a DataLoader
    with a batch sampler decodes files in batches inside its workers.
    """

    def __init__(self, source, device: torch.device):
        self.source = source
        self.tensor = None
        if isinstance(source, TabularInput):
            self.tensor = torch.from_numpy(source.data).to(device)
        elif source.nbytes <= _device_budget(device):
            self.tensor = torch.from_numpy(source.materialize()).to(device)

    def __len__(self) -> int:
        return self.source.n_samples

    def __getitem__(self, indices):
        return torch.from_numpy(self.source.read(list(indices))), torch.as_tensor(
            indices
        )


def _device_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return min(_MATERIALIZE_BYTES * 4, free // 4)
    return _MATERIALIZE_BYTES


# ---------------------------------------------------------------------------
# Callbacks and schedule
# ---------------------------------------------------------------------------


class NeighborMining(Callback):
    """Mine the nearest neighbours of the training samples for a neighbour bank.

    From epoch ``start_epoch`` (0-based) on and then every ``every`` epochs, the
    instance part z^n of every training sample is computed in eval mode and the
    objective's :class:`~deepclust.objectives.NeighborBank` mines its neighbours
    there (in a distributed fit, among this process's share).
    """

    def __init__(self, start_epoch: int, every: int, batch_size: int):
        self.start_epoch = start_epoch
        self.every = every
        self.batch_size = batch_size

    def on_epoch_begin(self, net, dataset_train=None, **kwargs):
        epoch = len(net.history) - 1
        due = epoch >= self.start_epoch and (epoch - self.start_epoch) % self.every == 0
        if due:
            features = net.outputs(
                dataset_train.source, ["instance"], self.batch_size, input_rows=False
            )[0]
            net.criterion_.neighbors.set_neighbors(torch.from_numpy(features))


class DurationEstimate(Callback):
    """Estimate how long training will take from its first steps, and say it.

    After ``measure_seconds`` of training (and a few steps), the time per step
    gives the duration of the remaining steps. With ``verbose`` it is printed
    to standard error when it exceeds ``announce_after`` seconds; without, a
    ``UserWarning`` says it when it exceeds ``warn_after`` seconds, so that a
    long fit never starts in silence.
    """

    def __init__(
        self, verbose=0, announce_after=30.0, warn_after=600.0, measure_seconds=3.0
    ):
        self.verbose = verbose
        self.announce_after = announce_after
        self.warn_after = warn_after
        self.measure_seconds = measure_seconds

    def on_train_begin(self, net, X=None, **kwargs):
        self.start_ = time.perf_counter()
        self.steps_ = 0
        self.said_ = False
        per_epoch = max(1, math.ceil(len(X) / net.batch_size)) if X is not None else 1
        remaining_epochs = max(0, net.max_epochs - len(net.history) + 1)
        self.total_steps_ = per_epoch * remaining_epochs

    def on_batch_end(self, net, training=False, **kwargs):
        if not training or self.said_:
            return
        self.steps_ += 1
        elapsed = time.perf_counter() - self.start_
        if elapsed < self.measure_seconds or self.steps_ < 3:
            return
        self.said_ = True
        per_step = elapsed / self.steps_
        remaining = per_step * max(0, self.total_steps_ - self.steps_)
        message = (
            f"training will take about {_duration(remaining)} more "
            f"({self.total_steps_} steps of {per_step:.2f} s)"
        )
        if self.verbose and remaining >= self.announce_after:
            from tqdm.auto import tqdm

            tqdm.write(f"deepclust: {message}", file=sys.stderr)
        elif not self.verbose and remaining >= self.warn_after:
            warnings.warn(
                f"deepclust: {message}; pass verbose=1 to follow it, or a smaller "
                "max_epochs.",
                UserWarning,
                stacklevel=2,
            )


def _duration(seconds: float) -> str:
    """'45 s', '3 min', '2.5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class EpochProgress(Callback):
    """One tqdm bar over epochs with the running loss (verbose=1)."""

    def on_train_begin(self, net, **kwargs):
        from tqdm.auto import tqdm

        done = len(net.history)
        self.bar_ = tqdm(
            total=net.max_epochs, initial=done, desc="epochs", unit="epoch"
        )

    def on_epoch_end(self, net, **kwargs):
        self.bar_.update(1)
        self.bar_.set_postfix(loss=f"{net.history[-1, 'train_loss']:.4f}")

    def on_train_end(self, net, **kwargs):
        self.bar_.close()

    def __getstate__(self):
        # A tqdm bar holds its output stream, which cannot be pickled.
        return {**self.__dict__, "bar_": None}


class LRFactor:
    """Per-epoch learning-rate factor (picklable, unlike a lambda).

    Cosine decay (or a constant 1) over ``max_epochs``, then the constant ``after``
    for any later stage such as CDC's self-labelling.
    """

    def __init__(self, max_epochs: int, *, cosine: bool = True, after: float = 0.0):
        self.max_epochs = max_epochs
        self.cosine = cosine
        self.after = after

    def __call__(self, epoch: int) -> float:
        if epoch >= self.max_epochs:
            return self.after
        if not self.cosine:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * epoch / self.max_epochs))


# ---------------------------------------------------------------------------
# Random generators (picklable across devices)
# ---------------------------------------------------------------------------


def generator_state(generator: torch.Generator) -> dict:
    """A device-independent description of a generator: its device and state."""
    return {"device": str(generator.device), "state": generator.get_state()}


def make_generator(saved: dict, device, fallback_seed: int) -> torch.Generator:
    """A generator on ``device`` with the saved state (seeded anew on another device).

    A generator's state only makes sense on its own kind of device (the CPU
    Mersenne Twister and the CUDA Philox states differ), so a generator saved on
    a GPU and restored on the CPU restarts from ``fallback_seed``.
    """
    saved_device = torch.device(saved["device"])
    device = torch.device(device)
    if saved_device.type == "cpu":
        device = saved_device
    generator = torch.Generator(device=device)
    if saved_device.type == device.type:
        generator.set_state(saved["state"].to("cpu"))
    else:
        generator.manual_seed(fallback_seed)
    return generator


def restore_generators(net, saved: dict) -> None:
    """Set the net's generators from :func:`generator_state` descriptions."""
    for offset, name in enumerate(GENERATORS):
        if name in saved:
            setattr(
                net,
                name,
                make_generator(saved[name], net.device, net.generator_seed + offset),
            )


# ---------------------------------------------------------------------------
# The net
# ---------------------------------------------------------------------------


def _flat(parts: dict) -> torch.Tensor:
    """The loss parts (scalars and vectors) as one vector, in order."""
    return torch.cat([part.detach().reshape(-1).float() for part in parts.values()])


def _unflat(values: torch.Tensor, like: dict) -> dict:
    """Inverse of :func:`_flat` for parts shaped like ``like``."""
    parts, start = {}, 0
    for name, part in like.items():
        parts[name] = values[start : start + part.numel()].reshape(part.shape)
        start += part.numel()
    return parts


class ContrastiveNet(NeuralNet):
    """skorch net whose criterion is a training objective of the module.

    Batches are raw (uint8 or float) inputs; the net moves them to the device,
    scales them with the model's buffers and lets the objective augment them, so
    augmentation runs wherever the model runs.

    Parameters
    ----------
    *args, **kwargs
        Those of :class:`skorch.NeuralNet`.
    precision_dtype : torch.dtype or None, default=None
        Autocast dtype of training and inference (None: full precision).
    generator_seed : int, default=0
        Seed of the shuffling and augmentation generators.
    image_dtype : {"uint8", "float32"} or None, default=None
        The dtype of the training images (None for tabular input): inference
        refuses images on another scale (see
        :func:`deepclust._inputs.check_value_range`).
    distributed : bool, default=False
        Train on the processes of the running torch.distributed group: the module
        is wrapped in DistributedDataParallel with synchronised BatchNorm, each
        process iterates over its own data (the dataset holds its share) with the
        same number of steps, its generators are seeded with its rank, and the
        recorded losses are the means over processes (the global-batch losses).
    """

    def __init__(
        self,
        *args,
        precision_dtype=None,
        generator_seed=0,
        image_dtype=None,
        distributed=False,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.precision_dtype = precision_dtype
        self.generator_seed = generator_seed
        self.image_dtype = image_dtype
        self.distributed = distributed

    def initialize(self):
        """Initialise as skorch does, then seed the shuffling and augmentation RNGs.

        The generators are neither modules, criteria nor optimizers, so no
        ``initialize_*`` hook of skorch fits them; seeding them here restarts
        them with every (re)initialisation, as the weights are.
        """
        super().initialize()
        device = torch.device(self.device)
        # Every process draws its own batches and views, reproducibly.
        offset = 2 * self.process_rank
        self.shuffle_generator_ = torch.Generator().manual_seed(
            self.generator_seed + offset
        )
        self.augment_generator_ = torch.Generator(device=device).manual_seed(
            self.generator_seed + offset + 1
        )
        return self

    @property
    def process_rank(self) -> int:
        """Rank of this process in distributed training (0 otherwise)."""
        return distributed.rank() if self.distributed else 0

    def initialize_module(self):
        """The module, wrapped in DistributedDataParallel for distributed training.

        Its BatchNorm layers are synchronised (batch statistics over all
        processes); :meth:`finish_distributed` undoes both after training.
        """
        super().initialize_module()
        if self.distributed:
            device = torch.device(self.device)
            module = distributed.synchronize_batchnorm(self.module_.to(device), device)
            # Every process starts from process 0's buffers (the input statistics
            # each process took from its share); DDP copies the parameters.
            for buffer in module.buffers():
                torch.distributed.broadcast(buffer, 0)
            self.module_ = DistributedDataParallel(
                module,
                device_ids=[device.index] if device.type == "cuda" else None,
                **_NO_BUFFER_BROADCASTS,
            )
        return self

    def finish_distributed(self):
        """The plain trained model, identical in every process, as ``module_``."""
        if self.distributed:
            self.module_ = distributed.restore_batchnorm(self.unwrapped_module())
        return self

    def get_iterator(self, dataset, training=False):
        if training and self.distributed:
            return self._shard_iterator(dataset)
        if training and dataset.tensor is not None:
            return DeviceBatches(
                dataset.tensor, self.batch_size, self.shuffle_generator_
            )
        sampler = torch.utils.data.BatchSampler(
            torch.utils.data.RandomSampler(dataset, generator=self.shuffle_generator_)
            if training
            else torch.utils.data.SequentialSampler(dataset),
            self.batch_size,
            # A lone trailing sample cannot be contrasted and breaks BatchNorm.
            drop_last=training and len(dataset) % self.batch_size == 1,
        )
        return torch.utils.data.DataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,
            **self.get_params_for("iterator_train"),
        )

    def _shard_iterator(self, dataset):
        # Every process must take as many steps as the others (each step is a
        # collective); the process with the fewest samples sets the number.
        fewest = torch.tensor([len(dataset)], device=self.device)
        torch.distributed.all_reduce(fewest, op=torch.distributed.ReduceOp.MIN)
        batches = ShardBatches(
            len(dataset),
            math.ceil(int(fewest) / self.batch_size),
            self.shuffle_generator_,
        )
        if dataset.tensor is not None:
            return _TensorBatches(dataset.tensor, batches)
        return torch.utils.data.DataLoader(
            dataset,
            sampler=batches,
            batch_size=None,
            **self.get_params_for("iterator_train"),
        )

    def on_batch_end(self, net, batch=None, training=False, **kwargs):
        # skorch recorded the local batch size; the epoch's train_loss weighs the
        # batches by it, so give it the global one in every process.
        if training and self.distributed:
            self.history.record_batch("train_batch_size", self.global_batch_size_)

    def torch_compile(self, module, name):
        # The objective holds the augmentation (generator draws, a host-side jitter
        # order): compiling it recompiles endlessly, so compile the network only.
        return module if name == "criterion" else super().torch_compile(module, name)

    def autocast(self):
        """Autocast context for the configured precision (a no-op for fp32)."""
        device_type = torch.device(self.device).type
        return torch.autocast(
            device_type,
            dtype=self.precision_dtype or torch.float32,
            enabled=self.precision_dtype is not None,
        )

    def unwrapped_module(self):
        """The model without a torch.compile or DistributedDataParallel wrapper."""
        module = getattr(self.module_, "_orig_mod", self.module_)
        return module.module if isinstance(module, DistributedDataParallel) else module

    def to_unit(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw input on any device -> unit range on the net's device (no gradient)."""
        raw = raw.to(self.device, non_blocking=True)
        with torch.no_grad():
            return self.unwrapped_module().scaler.to_unit(raw)

    def train_step_single(self, batch, **fit_params):
        """Raw batch -> unit range -> objective (two views, model, loss) -> backward."""
        self._set_training(True)
        unit = self.to_unit(batch[0])
        epoch = len(self.history) - 1
        with self.autocast():
            # The objective gets the samples' positions too (neighbour banks).
            loss, parts = self.criterion_(
                self.module_, unit, self.augment_generator_, epoch, index=batch[1]
            )
        if loss is None:
            if self.distributed:
                raise RuntimeError(
                    "A training objective skipped a batch, which "
                    "distributed training cannot do."
                )
            # Nothing to learn from this batch (e.g. no confident pseudo-label):
            # leave gradients unset so the optimiser skips every parameter.
            return {"loss": torch.zeros((), device=unit.device), "y_pred": None}
        # Queue the backward pass before the finiteness check syncs with the device,
        # so the GPU is not left idle while the host launches it.
        loss.backward()
        if self.distributed:
            # Each process holds its share of the global loss: record their mean
            # and the global batch size, the same in every process, so that
            # history-driven callbacks agree.
            size = torch.tensor([float(len(unit))], device=unit.device)
            reduced = distributed.all_reduce_mean(
                torch.cat([loss.reshape(1), _flat(parts), size])
            )
            loss, parts = reduced[0], _unflat(reduced[1:-1], parts)
            self.global_batch_size_ = round(
                float(reduced[-1]) * distributed.world_size()
            )
        if not torch.isfinite(loss):
            # Raising inside the optimiser closure means the step never happens.
            self.optimizer_.zero_grad(set_to_none=True)
            batch_index = len(self.history[-1]["batches"])
            raise TrainingDivergedError(
                f"The training loss became {float(loss.detach())} at epoch "
                f"{epoch + 1}, "
                f"batch {batch_index}. Try a lower lr, gradient clipping "
                "(grad_clip_norm=1.0) or precision='fp32'."
            )
        # One transfer for all the parts: each float() would wait for the device.
        values = _flat(parts).tolist()
        for name, part in parts.items():
            # Scalars as floats; vectors (one loss per cluster head) as lists.
            size = part.numel()
            value = values[:size] if part.dim() else values[0]
            values = values[size:]
            self.history.record_batch(f"{name}_loss", value)
        return {"loss": loss.detach(), "y_pred": None}

    def finish_training(self):
        """Leave the trained model in eval mode for good (and unwrap DDP).

        A fitted model is never switched back to train mode by inference, so
        concurrent predictions from several threads read the same frozen
        BatchNorm statistics and none of them updates them.
        """
        self.finish_distributed()
        self.unwrapped_module().eval()
        return self

    @contextmanager
    def _inference(self):
        """The unwrapped model in eval mode, without gradient, under autocast.

        Outside training the model is already in eval mode and is left
        untouched (see :meth:`finish_training`): switching modes around each
        call would race with other threads and let BatchNorm update its
        running statistics. Only inference *during* training (callbacks such
        as neighbour mining, in the training thread) switches to eval mode and
        back.
        """
        model = self.unwrapped_module()
        was_training = model.training
        if was_training:
            model.eval()
        try:
            with torch.no_grad(), self.autocast():
                yield model
        finally:
            if was_training:
                model.train()

    def _unit_batches(self, source, batch_size):
        batches = iter_batches(source, batch_size)
        if source.n_samples == 0:
            # Every input was unreadable: one blank input gives the output shapes.
            batches = [(0, np.zeros((1, source.channels, *source.size), source.dtype))]
        value_range = None
        if getattr(self, "image_dtype", None) is not None:
            value_range = self.unwrapped_module().scaler.unit_range()
        for _, raw in batches:
            if value_range is not None:
                # Images on another scale than the training images (floats in
                # [0, 1] for a model fitted on uint8) would be silently wrong.
                check_value_range(
                    raw, fitted_dtype=self.image_dtype, value_range=value_range
                )
            yield self.to_unit(torch.from_numpy(np.ascontiguousarray(raw)))

    def outputs(
        self, source, names, batch_size: int, *, input_rows: bool = True
    ) -> list[np.ndarray]:
        """Named model outputs of every input of ``source``, one row per input.

        The model runs in eval mode, without gradient, in batches of
        ``batch_size``. Inputs left out as unreadable get NaN rows (-1 for
        ``"labels"``), so every array has ``source.n_inputs`` rows in input order.

        Parameters
        ----------
        source : ImageInput or TabularInput
        names : sequence of str
            Output names of the model.
        batch_size : int

        input_rows : bool, default=True
            One row per input of ``source`` (readable or not); False gives one
            row per readable input, in the order the training data indexes them.

        Returns
        -------
        outputs : list of ndarray
            One array per name: float32, int64 for ``"labels"``.
        """
        parts = [[] for _ in names]
        with self._inference() as model:
            for unit in self._unit_batches(source, batch_size):
                if self.criterion_.channels_last:
                    unit = unit.contiguous(memory_format=torch.channels_last)
                for part, value in zip(parts, model(unit, tuple(names)), strict=True):
                    part.append(value.cpu())
        results = []
        for name, part in zip(names, parts, strict=True):
            values = torch.cat(part)[: source.n_samples]
            values = values.float() if values.is_floating_point() else values
            fill = -1 if name == "labels" else np.nan
            values = values.numpy()
            results.append(source.to_input_rows(values, fill) if input_rows else values)
        return results

    def augmented_pairs(self, source, name: str, batch_size: int, seed: int = 0):
        """Output ``name`` of two seeded augmented views of the readable inputs.

        Returns
        -------
        first, second : list of Tensor
            Per-batch outputs of the first and the second view.
        """
        generator = torch.Generator(device=self.device).manual_seed(seed)
        first, second = [], []
        with self._inference() as model:
            for unit in self._unit_batches(source, batch_size):
                for views in (first, second):
                    augmented = self.criterion_.augment(unit, generator)
                    views.append(model(augmented, name).float().cpu())
        return first, second

    def __getstate__(self):
        # A pickled CUDA generator cannot be unpickled without CUDA; skorch maps
        # only the module, optimizer and criterion to the CPU.
        state = super().__getstate__()
        for name in GENERATORS:
            if isinstance(state.get(name), torch.Generator):
                state[name] = generator_state(state[name])
        return state

    def __setstate__(self, state):
        saved = {
            name: state.pop(name)
            for name in GENERATORS
            if isinstance(state.get(name), dict)
        }
        super().__setstate__(state)
        restore_generators(self, saved)
