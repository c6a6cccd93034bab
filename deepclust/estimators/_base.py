"""Shared machinery of the deepclust estimators: parameters, input, the skorch net.

The public estimators are plain scikit-learn estimators that *have* a skorch net
(``net_``) built in ``fit``, rather than being one: this keeps scikit-learn's
contract (explicit parameters, ``fit`` forgets, clone gives an unfitted copy) while
skorch owns the training loop, callbacks and history.

Data path: images stay uint8 (or raw float) until they are on the training device;
when the whole input fits there it is uploaded once and every batch and both
augmented views are produced on the device (:class:`_DeviceBatches`); otherwise a
DataLoader streams batches from the lazily read input.
"""

from __future__ import annotations

import inspect
import math
import os
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from skorch import NeuralNet
from skorch.callbacks import Callback, GradientNormClipping, LRScheduler
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from deepclust._inputs import (
    ImageInput,
    InputError,
    TabularInput,
    check_matches,
    check_min_samples,
    iter_batches,
    read_input,
)
from deepclust.augment import FeatureAugment, SimCLRAugment
from deepclust.backbones import make_backbone
from deepclust.estimators._checkpoint import (
    check_checkpoint_params,
    fit_net,
    pickle_generators,
    restore_generators,
    unpickle_generators,
)
from deepclust.models import InputScaler

# Keyword defaults shared by every estimator; each estimator adds its own in front.
# One table instead of two copied signatures keeps the estimators in sync.
SHARED_DEFAULTS: dict[str, object] = {
    "backbone": "auto",
    "stem": "auto",
    "backbone_weights": None,
    "freeze_backbone": False,
    "image_size": "auto",
    "data_format": "auto",
    "max_epochs": "auto",
    "batch_size": 128,
    "lr": "auto",
    "weight_decay": 0.0,
    "grad_clip_norm": 1.0,
    "cosine_schedule": True,
    "augment_strength": "auto",
    "crop_scale": "auto",
    "hflip": "auto",
    "blur": "auto",
    "device": "auto",
    "precision": "auto",
    "compile": False,
    "num_workers": "auto",
    "predict_batch_size": 1024,
    "on_error": "raise",
    "callbacks": None,
    "checkpoint_dir": None,
    "checkpoint_every": 1,
    "resume": False,
    "verbose": 0,
    "random_state": None,
}

SHARED_PARAMETERS_DOC = """
    backbone : {"auto", "resnet18", "resnet34", "resnet50", "small_cnn", "mlp"} or \
callable, default="auto"
        Feature extractor f. A callable takes no argument and returns a
        ``torch.nn.Module``. "auto" picks by input and device: "mlp" for 2-D
        tabular input, "small_cnn" for images up to 16 px (and up to 64 px on
        CPU), "resnet18" with the CIFAR stem up to 64 px on GPU, "resnet34" with
        the ImageNet stem above (the paper's setting), "resnet18" above 64 px on CPU.
    stem : {"auto", "imagenet", "cifar"}, default="auto"
        ResNet stem: the 7x7/stride-2 conv + max-pool of ImageNet, or the 3x3
        stride-1 conv without max-pool suited to small images ("auto": CIFAR stem
        up to 64 px).
    backbone_weights : str or path-like, default=None
        Local state-dict file for the backbone (loaded with ``weights_only=True``;
        nothing is ever downloaded).
    freeze_backbone : bool, default=False
        Train only the heads; the backbone stays in eval mode.
    image_size : "auto", int or (int, int), default="auto"
        Size images are resized to. "auto" keeps the size of the training images
        (which must then all have the same size).
    data_format : {"auto", "channels_last", "channels_first"}, default="auto"
        Layout of 4-D arrays. "auto" finds the channel axis (size 1 or 3); when both
        axes could be channels, uint8 arrays are read as NHWC and float as NCHW.
    max_epochs : "auto" or int, default="auto"
        Training epochs. "auto" aims at a fixed number of optimiser steps that
        suits the backbone and device (about a minute for the digits on 2 CPU
        cores); the papers train for 1000-1200 epochs.
    batch_size : int, default=128
        Images per training batch (each gives two views); at least 2. 128 is the
        reference CD setting and also the best of 64/128/256 on the digits.
    lr : "auto" or float, default="auto"
        Adam learning rate. "auto": 3e-4 (the reference setting) for ResNets and
        callables, 1e-3 for "small_cnn" and "mlp", whose short default budgets
        gain 4-6 points of ACC on the digits from it.
    weight_decay : float, default=0.0
        Adam weight decay.
    grad_clip_norm : float or None, default=1.0
        Clip the gradient norm to this value (None: no clipping).
    cosine_schedule : bool, default=True
        Cosine learning-rate decay over ``max_epochs``, stepped per epoch.
    augment_strength : "auto" or float, default="auto"
        Colour-jitter strength s (jitter 0.8s, 0.8s, 0.8s, 0.2s). "auto": 0.5 for
        images up to 64 px, 1.0 above, as in the reference code.
    crop_scale : "auto" or (float, float), default="auto"
        Area range of random resized crops. "auto": (0.08, 1) as SimCLR for images
        above 32 px, (0.2, 1) up to 32 px (SCAN's CIFAR setting), (0.3, 1) up to
        16 px, where smaller crops leave too few pixels (on the digits, (0.2, 1)
        lost up to 19 points of ACC and (0.5, 1) about 3).
    hflip : "auto" or bool, default="auto"
        Random horizontal flips. "auto": on for colour images, off for grayscale
        ones, which are often digits, characters or documents whose mirror image
        is another symbol (flips cost the digits demo about 25 points of ACC).
    blur : "auto" or bool, default="auto"
        Gaussian blur with probability 0.5 ("auto": only for images above 64 px).
    device : str, default="auto"
        "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
    precision : {"auto", "bf16", "fp32"}, default="auto"
        Autocast dtype: "auto" is bf16 on CUDA and fp32 elsewhere. Losses and
        Sinkhorn always run in fp32.
    compile : bool, default=False
        Compile the network with ``torch.compile``.
    num_workers : "auto" or int, default="auto"
        DataLoader workers when the data is streamed from files.
    predict_batch_size : int, default=1024
        Largest batch used by predict/transform/score; inputs are streamed.
    on_error : {"raise", "skip"}, default="raise"
        What to do with image files that cannot be read: raise, or leave them
        out with a ``SkippedInputsWarning`` that lists them. Outputs keep one
        row per input, in input order: skipped files get label -1 and NaN rows
        (``skipped_indices_`` lists those left out of training).
    callbacks : list of skorch callbacks, default=None
        Extra callbacks for the skorch net (e.g. ``EarlyStopping(monitor="train_loss")``).
    checkpoint_dir : str or path-like, default=None
        Directory where training checkpoints are written (model, optimizer,
        learning-rate schedule, random generators and history, as safetensors +
        JSON, no pickle). None: no checkpoints. A fit with ``resume=False``
        overwrites the checkpoint there.
    checkpoint_every : int, default=1
        Epochs between checkpoints; the last epoch is always checkpointed.
    resume : bool, default=False
        Continue from the checkpoint in ``checkpoint_dir`` (if there is one; else
        start from scratch). The parameters and data must be those of the fit that
        wrote it; on CPU the result equals that of an uninterrupted fit.
    verbose : int, default=0
        0: silent; 1: one progress bar over epochs; 2: skorch's per-epoch table.
    random_state : int, RandomState instance or None, default=None
        Seeds weights, shuffling and augmentation: two fits on CPU with the same
        integer give identical results.
"""

SHARED_ATTRIBUTES_DOC = """
    skipped_indices_ : ndarray of shape (n_skipped,)
        Positions in X of the image files that could not be read and were left
        out of training (``on_error="skip"``); empty when every input was used.
    input_files_ : list of str or None
        The image files of X in input order (for a folder: the sorted files
        below it), readable or not; None for arrays and PIL images. Outputs
        such as ``labels_`` have one row per entry.
    input_kind_ : {"image", "tabular"}
    n_features_in_ : int
        Number of features (tabular input only).
    input_shape_ : tuple or None
        (C, H, W) of the training array before resizing (None for files/PIL).
    image_size_ : tuple
        (H, W) the images are resized to.
    n_channels_ : int
        1 (grayscale) or 3 (RGB).
"""

SHARED_CONSTRAINTS: dict[str, list] = {
    "backbone": [StrOptions({"auto", "resnet18", "resnet34", "resnet50", "small_cnn", "mlp"}), callable],
    "stem": [StrOptions({"auto", "imagenet", "cifar"})],
    "backbone_weights": [str, os.PathLike, None],
    "freeze_backbone": ["boolean"],
    "image_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left"), tuple, list],
    "data_format": [StrOptions({"auto", "channels_last", "channels_first"})],
    "max_epochs": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
    "batch_size": [Interval(Integral, 2, None, closed="left")],
    "lr": [StrOptions({"auto"}), Interval(Real, 0, None, closed="neither")],
    "weight_decay": [Interval(Real, 0, None, closed="left")],
    "grad_clip_norm": [Interval(Real, 0, None, closed="neither"), None],
    "cosine_schedule": ["boolean"],
    "augment_strength": [StrOptions({"auto"}), Interval(Real, 0, None, closed="left")],
    "crop_scale": [StrOptions({"auto"}), tuple, list],
    "hflip": [StrOptions({"auto"}), "boolean"],
    "blur": [StrOptions({"auto"}), "boolean"],
    "device": [str, torch.device],
    "precision": [StrOptions({"auto", "bf16", "fp32"})],
    "compile": ["boolean"],
    "num_workers": [StrOptions({"auto"}), Interval(Integral, 0, None, closed="left")],
    "predict_batch_size": [Interval(Integral, 1, None, closed="left")],
    "on_error": [StrOptions({"raise", "skip"})],
    "callbacks": [list, None],
    "checkpoint_dir": [str, os.PathLike, None],
    "checkpoint_every": [Interval(Integral, 1, None, closed="left")],
    "resume": ["boolean"],
    "verbose": ["verbose"],
    "random_state": ["random_state"],
}

# Whole inputs up to this size are materialised (and uploaded to the device).
_MATERIALIZE_BYTES = 4 * 2**30
_AUTO_STEPS = {"mlp": 1500, "small_cnn": 500, "resnet18": 3000, "resnet34": 20000}


class TrainingDivergedError(FloatingPointError):
    """The training loss became NaN or infinite."""


def keyword_init(own_defaults: dict[str, object], *, positional: tuple[str, ...] = ()):
    """Build an ``__init__`` that only stores ``own_defaults`` + shared parameters.

    The generated signature is explicit (``inspect.signature`` and so
    ``get_params``/``clone`` see every parameter by name), with ``positional``
    parameters first and the rest keyword-only, as scikit-learn does.
    """
    kind = inspect.Parameter
    parameters = [kind("self", kind.POSITIONAL_OR_KEYWORD)]
    for name, default in {**own_defaults, **SHARED_DEFAULTS}.items():
        parameter_kind = kind.POSITIONAL_OR_KEYWORD if name in positional else kind.KEYWORD_ONLY
        parameters.append(kind(name, parameter_kind, default=default))
    signature = inspect.Signature(parameters)

    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        for name, value in list(bound.arguments.items())[1:]:
            setattr(self, name, value)

    __init__.__signature__ = signature
    return __init__


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


class _DeviceBatches:
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


class _InputDataset(torch.utils.data.Dataset):
    """Training data for skorch: either materialised on the device or read lazily.

    Indexing with a list of indices reads a whole batch at once, so a DataLoader
    with a batch sampler decodes files in batches inside its workers.
    """

    def __init__(self, source: ImageInput | TabularInput, device: torch.device):
        self.source = source
        self.tensor = None
        if isinstance(source, TabularInput):
            self.tensor = torch.from_numpy(source.data).to(device)
        elif source.nbytes <= _device_budget(device):
            self.tensor = torch.from_numpy(source.materialize()).to(device)

    def __len__(self) -> int:
        return self.source.n_samples

    def __getitem__(self, indices):
        return torch.from_numpy(self.source.read(list(indices))), torch.as_tensor(indices)


def _device_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return min(_MATERIALIZE_BYTES * 4, free // 4)
    return _MATERIALIZE_BYTES


class _EpochProgress(Callback):
    """One tqdm bar over epochs with the running loss (verbose=1)."""

    def on_train_begin(self, net, **kwargs):
        from tqdm.auto import tqdm

        done = len(net.history)
        self.bar_ = tqdm(total=net.max_epochs, initial=done, desc="epochs", unit="epoch")

    def on_epoch_end(self, net, **kwargs):
        self.bar_.update(1)
        self.bar_.set_postfix(loss=f"{net.history[-1, 'train_loss']:.4f}")

    def on_train_end(self, net, **kwargs):
        self.bar_.close()

    def __getstate__(self):
        # A tqdm bar holds its output stream, which cannot be pickled.
        return {**self.__dict__, "bar_": None}


class TwoViewObjective(torch.nn.Module):
    """Training objective on two augmented views of each batch.

    Called by :class:`ContrastiveNet` as ``objective(model, unit_batch, generator,
    epoch)`` and returns ``(loss, parts)``, where ``parts`` are detached partial
    losses recorded in the history; ``loss`` may be ``None`` to skip a batch.
    Subclasses implement :meth:`compute`.
    """

    def __init__(self, augment: torch.nn.Module, channels_last: bool = False) -> None:
        super().__init__()
        self.augment = augment
        self.channels_last = channels_last

    def views(self, unit: torch.Tensor, generator=None):
        """Two independently augmented views (no gradient flows into augmentation)."""
        with torch.no_grad():
            views = (self.augment(unit, generator), self.augment(unit, generator))
        if self.channels_last:
            views = tuple(v.contiguous(memory_format=torch.channels_last) for v in views)
        return views

    def forward(self, model, unit, generator=None, epoch=0):
        return self.compute(model, *self.views(unit, generator))

    def compute(self, model, view1, view2):
        raise NotImplementedError


class ContrastiveNet(NeuralNet):
    """skorch net whose criterion is a :class:`TwoViewObjective` of the module.

    Batches are raw (uint8 or float) inputs; the net moves them to the device,
    scales them with the model's buffers and lets the objective augment them, so
    augmentation runs wherever the model runs.
    """

    def __init__(self, *args, precision_dtype=None, generator_seed=0, **kwargs):
        super().__init__(*args, **kwargs)
        self.precision_dtype = precision_dtype
        self.generator_seed = generator_seed

    def initialize(self):
        super().initialize()
        device = torch.device(self.device)
        self.shuffle_generator_ = torch.Generator().manual_seed(self.generator_seed)
        self.augment_generator_ = torch.Generator(device=device).manual_seed(self.generator_seed + 1)
        return self

    def get_iterator(self, dataset, training=False):
        if training and dataset.tensor is not None:
            return _DeviceBatches(dataset.tensor, self.batch_size, self.shuffle_generator_)
        sampler = torch.utils.data.BatchSampler(
            torch.utils.data.RandomSampler(dataset, generator=self.shuffle_generator_)
            if training else torch.utils.data.SequentialSampler(dataset),
            self.batch_size,
            # A lone trailing sample cannot be contrasted and breaks BatchNorm.
            drop_last=training and len(dataset) % self.batch_size == 1,
        )
        return torch.utils.data.DataLoader(
            dataset, sampler=sampler, batch_size=None, **self.get_params_for("iterator_train")
        )

    def torch_compile(self, module, name):
        # The objective holds the augmentation (generator draws, a host-side jitter
        # order): compiling it recompiles endlessly, so compile the network only.
        return module if name == "criterion" else super().torch_compile(module, name)

    def autocast(self):
        """Autocast context for the configured precision (a no-op for fp32)."""
        device_type = torch.device(self.device).type
        return torch.autocast(device_type, dtype=self.precision_dtype or torch.float32,
                              enabled=self.precision_dtype is not None)

    def unwrapped_module(self):
        """The model without a torch.compile wrapper."""
        return getattr(self.module_, "_orig_mod", self.module_)

    def __getstate__(self):
        # A pickled CUDA generator cannot be unpickled without CUDA; skorch maps
        # only the module, optimizer and criterion to the CPU.
        return pickle_generators(super().__getstate__())

    def __setstate__(self, state):
        generators = unpickle_generators(state)
        super().__setstate__(state)
        restore_generators(self, generators)

    def train_step_single(self, batch, **fit_params):
        self._set_training(True)
        raw = batch[0].to(self.device, non_blocking=True)
        with torch.no_grad():
            unit = self.unwrapped_module().scaler.to_unit(raw)
        with self.autocast():
            loss, parts = self.criterion_(self.module_, unit, self.augment_generator_,
                                          len(self.history) - 1)
        if loss is None:
            # Nothing to learn from this batch (e.g. no confident pseudo-label):
            # leave gradients unset so the optimiser skips every parameter.
            return {"loss": torch.zeros((), device=unit.device), "y_pred": None}
        # Queue the backward pass before the finiteness check syncs with the device,
        # so the GPU is not left idle while the host launches it.
        loss.backward()
        if not torch.isfinite(loss):
            # Raising inside the optimiser closure means the step never happens.
            self.optimizer_.zero_grad(set_to_none=True)
            epoch = len(self.history)
            batch_index = len(self.history[-1]["batches"])
            raise TrainingDivergedError(
                f"The training loss became {float(loss.detach())} at epoch {epoch}, batch "
                f"{batch_index}. Try a lower lr, gradient clipping (grad_clip_norm=1.0) "
                "or precision='fp32'."
            )
        for name, value in parts.items():
            self.history.record_batch(f"{name}_loss", float(value))
        return {"loss": loss.detach(), "y_pred": None}


class Float32TransformerMixin(TransformerMixin):
    """TransformerMixin whose tags say that ``transform`` always returns float32."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


class BaseDeepEstimator(BaseEstimator):
    """Common fit/inference logic; subclasses build the model and the objective."""

    _parameter_constraints: dict = SHARED_CONSTRAINTS

    # ----------------------------------------------------------------- fitting
    def fit(self, X, y=None):
        """Train the model on X.

        Parameters
        ----------
        X : array-like, list of PIL images or paths, or a directory path
            Images (NHWC uint8, NCHW float, (N, H, W) grayscale, PIL images, image
            files, a folder or a .npy file) or a 2-D (n_samples, n_features) array.
        y : Ignored
            Not used, present for API consistency by convention.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        self._validate_params()
        self._check_own_params()
        source = self._read_fit_input(X)
        self._set_input_attributes(source)
        device = resolve_device(self.device)
        config = self._resolve_config(source, device)
        seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = self._build_model(source, config)
        self._fit_scaler(model.scaler, source)
        dataset = _InputDataset(source, device)
        self.net_ = self._build_net(model, config, device, seed, dataset)
        # A failure after a completed epoch comes back as `error`: the net then
        # holds that epoch's weights, so the estimator is fitted before raising it.
        # Fixed shapes: let cuDNN pick the fastest kernels (restored afterwards).
        benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = device.type == "cuda" or benchmark
        try:
            error = fit_net(self, dataset, config)
        finally:
            torch.backends.cudnn.benchmark = benchmark
        self.history_ = self.net_.history
        self.n_epochs_ = len(self.history_)
        self._after_fit(source)
        if error is not None:
            raise error
        return self

    def _check_own_params(self):
        """Validation that the declarative constraints cannot express."""
        if isinstance(self.image_size, (tuple, list)) and not (
            len(self.image_size) == 2 and all(isinstance(v, Integral) and v > 0 for v in self.image_size)
        ):
            raise ValueError(f"image_size must be 'auto', an int or (height, width); got {self.image_size!r}.")
        if isinstance(self.crop_scale, (tuple, list)) and not (
            len(self.crop_scale) == 2 and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1
        ):
            raise ValueError(f"crop_scale must be 'auto' or (low, high) with 0 < low <= high <= 1; got {self.crop_scale!r}.")
        resolve_device(self.device)
        check_checkpoint_params(self)

    def _read_fit_input(self, X):
        image_size = None if isinstance(self.image_size, str) else self.image_size
        source = read_input(X, image_size=image_size, data_format=self.data_format,
                            on_error=self.on_error)
        check_min_samples(source, 2, what="contrastive training compares samples with each other")
        if isinstance(source, ImageInput) and min(source.size) < 2:
            raise InputError(
                f"X yields images of size (H, W) = {tuple(source.size)}; training needs "
                "images of at least 2x2 pixels (pass image_size to upsample them)."
            )
        return source

    def _set_input_attributes(self, source):
        self.skipped_indices_ = np.array(sorted(source.skipped), dtype=np.int64)
        self.input_files_ = getattr(source, "input_paths", None)
        self.input_kind_ = "tabular" if isinstance(source, TabularInput) else "image"
        if self.input_kind_ == "tabular":
            self.n_features_in_ = source.n_features
            self.input_shape_ = None
            self.image_size_ = None
            self.n_channels_ = None
            self.input_dtype_ = "float32"
        else:
            self.input_shape_ = source.source_shape
            self.image_size_ = tuple(source.size)
            self.n_channels_ = source.channels
            self.input_dtype_ = np.dtype(source.dtype).name

    def _resolve_config(self, source, device) -> dict:
        """Turn every 'auto' into a concrete choice for this input and device."""
        tabular = isinstance(source, TabularInput)
        side = None if tabular else max(source.size)
        gpu = device.type == "cuda"
        backbone = self.backbone
        if backbone == "auto":
            if tabular:
                backbone = "mlp"
            elif side <= 16 or (side <= 64 and not gpu):
                backbone = "small_cnn"
            elif side <= 64:
                backbone = "resnet18"
            else:
                backbone = "resnet34" if gpu else "resnet18"
        batches_per_epoch = max(1, math.ceil(source.n_samples / self.batch_size))
        if self.max_epochs == "auto":
            steps = _AUTO_STEPS.get(backbone if isinstance(backbone, str) else "resnet18", 3000)
            max_epochs = int(np.clip(round(steps / batches_per_epoch), 5, 1000))
        else:
            max_epochs = self.max_epochs
        precision = self.precision
        if precision == "auto":
            # bf16 is native from Ampere (compute capability 8) on; older GPUs emulate it.
            bf16_native = gpu and torch.cuda.get_device_capability(device)[0] >= 8
            precision = "bf16" if bf16_native else "fp32"
        config = {
            "backbone": backbone,
            "max_epochs": max_epochs,
            "device": device,
            "precision_dtype": torch.bfloat16 if precision == "bf16" else None,
            "channels_last": gpu and not tabular,
        }
        if tabular:
            config["augment"] = FeatureAugment()
            return config
        strength = self.augment_strength
        if strength == "auto":
            strength = 0.5 if side <= 64 else 1.0
        crop_scale = self.crop_scale
        if crop_scale == "auto":
            crop_scale = (0.3, 1.0) if side <= 16 else (0.2, 1.0) if side <= 32 else (0.08, 1.0)
        blur = self.blur if self.blur != "auto" else side > 64
        hflip = self.hflip if self.hflip != "auto" else source.channels == 3
        config["augment"] = SimCLRAugment(
            source.size, crop_scale=tuple(crop_scale), flip_p=0.5 if hflip else 0.0,
            jitter_strength=float(strength), blur_p=0.5 if blur else 0.0,
        )
        return config

    def _build_model(self, source, config):
        backbone, backbone_dim = self._make_backbone(source, config)
        channels = source.n_features if self.input_kind_ == "tabular" else source.channels
        scaler = InputScaler(channels, image=self.input_kind_ == "image")
        return self._model_class(backbone, backbone_dim, scaler, **self._head_params())

    def _head_params(self) -> dict:
        """Keyword arguments of ``_model_class`` besides backbone and scaler."""
        raise NotImplementedError

    def _make_backbone(self, source, config):
        tabular = isinstance(source, TabularInput)
        return make_backbone(
            config["backbone"],
            in_channels=3 if tabular else source.channels,
            image_size=None if tabular else source.size,
            n_features=source.n_features if tabular else None,
            stem=self.stem,
            weights=config.get("backbone_weights", self.backbone_weights),
            freeze=self.freeze_backbone,
        )

    def _fit_scaler(self, scaler: InputScaler, source):
        """Input statistics from (a sample of) the training data."""
        rng = np.random.default_rng(0)
        n_stats = min(source.n_samples, 4096)
        index = np.sort(rng.choice(source.n_samples, n_stats, replace=False))
        if isinstance(source, TabularInput):
            scaler.set_statistics(torch.from_numpy(source.data[index]), step="unit")
            return
        sample = torch.from_numpy(source.read(list(index)))
        if sample.dtype == torch.uint8:
            scaler.set_unit_range(0.0, 255.0)
        else:
            low = min(0.0, float(sample.min()))
            high = max(1.0, float(sample.max()))
            scaler.set_unit_range(low, high)
        scaler.set_statistics(scaler.to_unit(sample), step="standardize")

    def _callbacks(self, config, batches_per_epoch):
        callbacks = []
        if self.verbose == 1:
            callbacks.append(("progress", _EpochProgress()))
        if self.grad_clip_norm is not None:
            callbacks.append(("grad_clip", GradientNormClipping(self.grad_clip_norm)))
        schedule = LRFactor(config["max_epochs"], cosine=self.cosine_schedule,
                            after=self._later_stage_lr() / self._learning_rate(config))
        callbacks.append(("lr_schedule", LRScheduler(
            policy=torch.optim.lr_scheduler.LambdaLR, lr_lambda=schedule)))
        return callbacks + list(self.callbacks or [])

    def _learning_rate(self, config) -> float:
        if self.lr != "auto":
            return self.lr
        return 1e-3 if config["backbone"] in ("small_cnn", "mlp") else 3e-4

    def _later_stage_lr(self) -> float:
        """Learning rate of epochs after ``max_epochs`` (extra training stages)."""
        return 0.0

    def _total_epochs(self, config):
        return config["max_epochs"]

    def _build_net(self, model, config, device, seed, dataset):
        batches_per_epoch = max(1, math.ceil(len(dataset) / self.batch_size))
        num_workers = self.num_workers
        if num_workers == "auto":
            num_workers = 0 if dataset.tensor is not None or device.type != "cuda" else min(8, os.cpu_count() or 1)
        iterator_params = {"num_workers": num_workers, "pin_memory": device.type == "cuda"}
        if num_workers:
            iterator_params["persistent_workers"] = True
        if config["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        net = ContrastiveNet(
            module=model,
            criterion=self._build_objective(config),
            optimizer=torch.optim.Adam,
            optimizer__weight_decay=self.weight_decay,
            # One fused kernel per step instead of several per parameter tensor.
            **({"optimizer__fused": True} if device.type == "cuda" else {}),
            lr=self._learning_rate(config),
            max_epochs=self._total_epochs(config),
            batch_size=self.batch_size,
            train_split=None,
            callbacks=self._callbacks(config, batches_per_epoch),
            verbose=int(self.verbose >= 2),
            device=str(device),
            compile=self.compile,
            precision_dtype=config["precision_dtype"],
            generator_seed=seed,
            **{f"iterator_train__{k}": v for k, v in iterator_params.items()},
        )
        if self.verbose < 2:
            net.set_params(callbacks__print_log=None)
        return net

    def _after_fit(self, source):
        """Hook for fitted attributes computed after training."""

    # --------------------------------------------------------------- inference
    def _read_predict_input(self, X):
        check_is_fitted(self, "net_")
        channels = self.n_channels_ if self.input_kind_ == "image" else None
        image_size = self.image_size_ if self.input_kind_ == "image" else None
        source = read_input(X, image_size=image_size, channels=channels,
                            data_format=self.data_format, on_error=self.on_error,
                            allow_tabular=self.input_kind_ == "tabular",
                            min_readable=0)
        check_matches(
            source, kind=self.input_kind_, channels=channels, size=image_size,
            owner=type(self).__name__,
            source_shape=self.input_shape_, n_features=getattr(self, "n_features_in_", None),
        )
        return source

    def _model(self):
        return self.net_.unwrapped_module()

    def _map_batches(self, X, function) -> np.ndarray:
        """``function(model, unit_batch) -> Tensor`` of every input, one row each.

        Inputs skipped as unreadable (``on_error="skip"``) get NaN rows, so the
        output always has one row per input, in input order.
        """
        return self._map_source(self._read_predict_input(X), function)

    def _map_source(self, source, function) -> np.ndarray:
        """Apply ``function`` to ``source`` in eval mode, streamed, one row per input."""
        model = self._model()
        was_training = model.training
        model.eval()
        outputs = []
        batches = iter_batches(source, self.predict_batch_size)
        if source.n_samples == 0:
            # Every input was unreadable: one blank image gives the output width.
            blank = np.zeros((1, source.channels, *source.size), dtype=source.dtype)
            batches = [(0, blank)]
        try:
            with torch.no_grad(), self.net_.autocast():
                for _, raw in batches:
                    batch = torch.from_numpy(np.ascontiguousarray(raw)).to(self.net_.device)
                    unit = model.scaler.to_unit(batch)
                    if self.net_.criterion_.channels_last:
                        unit = unit.contiguous(memory_format=torch.channels_last)
                    outputs.append(function(model, unit).float().cpu().numpy())
        finally:
            model.train(was_training)
        values = np.concatenate(outputs)[: source.n_samples]
        return source.to_input_rows(values.astype(np.float32, copy=False), np.nan)

    def _checked_transform_output(self) -> str:
        """``transform_output``, validated here too since it may be set after fit."""
        if self.transform_output not in self._transform_outputs:
            raise ValueError(
                f"transform_output must be one of {list(self._transform_outputs)}; "
                f"got {self.transform_output!r}."
            )
        return self.transform_output

    def export_onnx(self, path, **kwargs):
        """Export the fitted model to a single self-contained ONNX file.

        The graph takes raw input as users hold it (uint8 NHWC images by default)
        and contains the scaling; see :func:`deepclust.onnx.export_onnx` for the
        options (``outputs``, ``input_format``, ``opset``). Use
        :class:`deepclust.onnx.OnnxClusterer` to run it without torch.

        Parameters
        ----------
        path : str or path-like
            Where to write the .onnx file.
        **kwargs
            Passed to :func:`deepclust.onnx.export_onnx`.

        Returns
        -------
        path : pathlib.Path
            The written file.
        """
        from deepclust.onnx import export_onnx

        return export_onnx(self, path, **kwargs)

    def embed(self, X) -> np.ndarray:
        """Backbone embeddings h = f(x) of shape (n_samples, backbone_dim)."""
        return self._map_batches(X, lambda model, unit: model.embed(unit))

    def _augmented_pairs(self, X, function):
        """``function`` outputs for two seeded augmented views of every sample."""
        source = self._read_predict_input(X)
        if source.n_samples == 0:
            raise InputError("X has no readable input to score.")
        model = self._model()
        augment = self.net_.criterion_.augment
        generator = torch.Generator(device=self.net_.device).manual_seed(0)
        was_training = model.training
        model.eval()
        first, second = [], []
        try:
            with torch.no_grad(), self.net_.autocast():
                for _, raw in iter_batches(source, self.predict_batch_size):
                    unit = model.scaler.to_unit(torch.from_numpy(np.ascontiguousarray(raw)).to(self.net_.device))
                    first.append(function(model, augment(unit, generator)).float().cpu())
                    second.append(function(model, augment(unit, generator)).float().cpu())
        finally:
            model.train(was_training)
        return first, second

    # ------------------------------------------------------------- persistence
    def save(self, path) -> None:
        """Save the fitted estimator to a directory, without pickle.

        Weights go to ``model.safetensors``, everything else to JSON; see
        :func:`deepclust.persistence.save`. Reload with :meth:`load`.

        Parameters
        ----------
        path : str or path-like
            Directory to write (created if needed).
        """
        from deepclust.persistence import save

        save(self, path)

    @classmethod
    def load(cls, path, *, device=None):
        """Load an estimator of this class written by :meth:`save`.

        Loading executes no code from the files; see :func:`deepclust.persistence.load`.

        Parameters
        ----------
        path : str or path-like
            Directory written by :meth:`save`.
        device : str, default=None
            Device to load on; None keeps the saved one when it exists here, else CPU.

        Returns
        -------
        estimator : object
            The fitted estimator.
        """
        from deepclust.persistence import load

        estimator = load(path, device=device)
        if not isinstance(estimator, cls):
            raise ValueError(
                f"{str(path)!r} holds a {type(estimator).__name__}, not a {cls.__name__}; "
                "use deepclust.persistence.load to load any estimator."
            )
        return estimator

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = torch.cuda.is_available() and self.device != "cpu"
        return tags


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


def warn_empty_clusters(sizes: np.ndarray, estimator_name: str) -> None:
    """ConvergenceWarning naming the empty clusters, as KMeans does."""
    from sklearn.exceptions import ConvergenceWarning

    empty = np.flatnonzero(sizes == 0)
    if len(empty):
        warnings.warn(
            f"{estimator_name} left {len(empty)} of {len(sizes)} clusters empty "
            f"(clusters {empty.tolist()[:10]}); see cluster_sizes_. More epochs, a "
            "larger batch_size or fewer n_clusters usually help.",
            ConvergenceWarning,
            stacklevel=3,
        )


__all__ = [
    "BaseDeepEstimator",
    "ContrastiveNet",
    "InputError",
    "TrainingDivergedError",
    "TwoViewObjective",
]
