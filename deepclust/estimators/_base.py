"""What the deepclust estimators share: validation, fitting, inference, persistence.

The public estimators are plain scikit-learn estimators that *have* a skorch net
(``net_``) built in ``fit``, rather than being one: this keeps scikit-learn's
contract (explicit parameters, ``fit`` forgets, clone gives an unfitted copy) while
skorch owns the training loop, callbacks and history.

``fit`` reads the input (:func:`deepclust._inputs.read_input`), turns every
``"auto"`` into a concrete choice (the fitted ``training_config_``, which also
describes the network), builds the network (:func:`deepclust.models.build_model`)
and the net (:mod:`._net`), and trains it (:func:`._training.fit_net`). A saved
model stores ``training_config_``, so loading rebuilds the same network from it.
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

from __future__ import annotations

import math
import os
import warnings
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from skorch.callbacks import GradientNormClipping, LRScheduler
from skorch.history import History

from deepclust import distributed
from deepclust._inputs import (
    ImageInput,
    InputError,
    check_matches,
    check_min_samples,
    read_input,
    shard_input,
)
from deepclust._serialization import (
    check_state_dict,
    decode_tree,
    encode_tree,
    read_document,
    read_json,
    sha256_file,
    write_document,
    write_json,
)
from deepclust._validation import check_image_size
from deepclust._version import __version__
from deepclust.augment import FeatureAugment, SimCLRAugment
from deepclust.backbones import resolve_stem
from deepclust.estimators._net import (
    ContrastiveNet,
    EpochProgress,
    InputDataset,
    LRFactor,
    resolve_device,
)
from deepclust.estimators._training import fingerprint, fit_net
from deepclust.models import build_model

__all__ = ["BaseDeepEstimator", "Float32TransformerMixin", "load_estimator"]

BACKBONES = ("auto", "resnet18", "resnet34", "resnet50", "small_cnn", "mlp")

# Constraints of the parameters both estimators have; each adds its own.
SHARED_CONSTRAINTS: dict[str, list] = {
    "backbone": [StrOptions(set(BACKBONES)), callable],
    "stem": [StrOptions({"auto", "imagenet", "cifar"})],
    "backbone_weights": [str, os.PathLike, None],
    "freeze_backbone": ["boolean"],
    "image_size": [
        StrOptions({"auto"}),
        Interval(Integral, 1, None, closed="left"),
        tuple,
        list,
    ],
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
    "distributed": [StrOptions({"auto"}), "boolean"],
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

# Stage widths of "small_cnn": half of SmallCNN's default, for a quarter of the
# FLOPs at the same digits ACC (benchmarks/README.md).
_SMALL_CNN_WIDTHS = (32, 64, 128)
# Optimiser steps of max_epochs="auto" per backbone. "small_cnn": 67 epochs of
# the digits, under a minute on 2 CPU cores; 33 and 50 epochs scored 0.5-1.5
# points of ACC less (benchmarks/README.md).
AUTO_STEPS = {"mlp": 1500, "small_cnn": 1000, "resnet18": 3000, "resnet34": 20000}

MODEL_FORMAT = "deepclust.model"
MODEL_FORMAT_VERSION = 2
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
HISTORY_FILE = "history.json"
_MODULE_PREFIX = "module."
_ATTRIBUTE_PREFIX = "attributes."
# Fitted attributes that are rebuilt rather than stored as values.
_REBUILT_ATTRIBUTES = ("net_", "history_")
# Estimator classes by name, for loading saved models (filled by subclassing).
_ESTIMATOR_CLASSES: dict[str, type] = {}


class Float32TransformerMixin(TransformerMixin):
    """TransformerMixin whose tags say that ``transform`` always returns float32."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


class BaseDeepEstimator(BaseEstimator):
    """Common fit/inference logic; subclasses define the model and the objective.

    Subclasses set ``_family`` ("cd" or "cdc", see
    :func:`deepclust.models.build_model`) and implement ``_head_params`` and
    ``_build_objective``.
    """

    _parameter_constraints: dict = SHARED_CONSTRAINTS
    _family: str

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _ESTIMATOR_CLASSES[cls.__name__] = cls

    # ----------------------------------------------------------------- fitting
    @_fit_context(prefer_skip_nested_validation=True)
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
        self._check_params()
        device, self._distributed = self._training_device()
        n_processes = distributed.world_size() if self._distributed else 1
        if self._distributed:
            # Each process reads only its share of X: every n_processes-th input.
            X, self._fit_positions, self._n_fit_inputs, input_files = shard_input(
                X, distributed.rank(), n_processes
            )
        source = self._read_fit_input(X)
        self._set_input_attributes(source)
        n_samples = source.n_samples
        if self._distributed:
            self.input_files_ = input_files
            n_samples = self._agree_on_inputs(source)
        self._check_n_samples(n_samples)
        self.training_config_ = self._resolve_training_config(n_samples, device)
        seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(
                {
                    **self.training_config_["model"],
                    "backbone_weights": self.backbone_weights,
                }
            )
        self._fit_scaler(model.scaler, source)
        dataset = InputDataset(source, device)
        self.net_ = self._build_net(
            model, device, seed, self._distributed, n_samples=len(dataset)
        )
        # Fixed shapes: let cuDNN pick the fastest kernels (restored afterwards).
        benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = device.type == "cuda" or benchmark
        try:
            # A failure after a completed epoch comes back as `error`: the net
            # then holds that epoch's weights, so the estimator is fitted first.
            error = fit_net(
                self.net_,
                dataset,
                checkpoint_dir=self.checkpoint_dir,
                checkpoint_every=self.checkpoint_every,
                resume=self.resume,
                fit_description=fingerprint(
                    self, n_samples, self.net_.max_epochs, n_processes
                ),
                n_user_callbacks=len(self.callbacks or []),
            )
        except BaseException:
            self._forget()
            raise
        finally:
            torch.backends.cudnn.benchmark = benchmark
        self.net_.finish_distributed()
        self.history_ = self.net_.history
        self.n_epochs_ = len(self.history_)
        self.n_processes_ = n_processes
        self._after_fit(source)
        if error is not None:
            raise error
        return self

    def _training_device(self) -> tuple[torch.device, bool]:
        """The training device, and whether training is distributed.

        A distributed run joins the launcher's process group (NCCL on GPUs, gloo
        on CPUs) unless the script created one.
        """
        launched = distributed.launcher_world_size() > 1 or distributed.is_distributed()
        wanted = launched if self.distributed == "auto" else bool(self.distributed)
        if wanted and not launched:
            raise ValueError(
                "distributed=True needs a distributed job: start the script with a "
                "launcher, e.g. `torchrun --nproc-per-node=2 script.py`, which sets "
                "WORLD_SIZE > 1 (or pass distributed='auto' to train alone)."
            )
        device = resolve_device(self.device)
        if wanted and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        if wanted:
            distributed.init_from_environment(device)
        return device, wanted and distributed.is_distributed()

    def _agree_on_inputs(self, source) -> int:
        """Check that every process read inputs of one kind; count them all.

        Also turns the skipped positions of this process's share into positions
        in X. Returns the number of readable inputs of all processes.
        """
        described = {
            name: getattr(self, name, None)
            for name in (
                "input_kind_",
                "image_size_",
                "n_channels_",
                "input_dtype_",
                "n_features_in_",
            )
        }
        skipped = self._fit_positions[self.skipped_indices_].tolist()
        everyone = [None] * distributed.world_size()
        torch.distributed.all_gather_object(
            everyone, (described, skipped, source.n_samples)
        )
        kinds = [entry[0] for entry in everyone]
        if any(kind != kinds[0] for kind in kinds):
            raise InputError(
                f"The processes read different kinds of input ({kinds}); the inputs "
                "of a distributed fit must all have one kind, size and number of "
                "channels (pass image_size to resize images)."
            )
        self.skipped_indices_ = np.array(
            sorted(p for entry in everyone for p in entry[1]), dtype=np.int64
        )
        return sum(entry[2] for entry in everyone)

    def _gather_fit_rows(self, values: np.ndarray, fill) -> np.ndarray:
        """Rows of this process's share placed in a full array, in every process.

        In a single process, ``values`` already has one row per input of X.
        """
        if not self._distributed:
            return values
        everyone = [None] * distributed.world_size()
        torch.distributed.all_gather_object(everyone, (self._fit_positions, values))
        rows = np.full(
            (self._n_fit_inputs, *values.shape[1:]), fill, dtype=values.dtype
        )
        for positions, part in everyone:
            rows[positions] = part
        return rows

    def _check_params(self):
        """The checks that the declarative constraints cannot express."""
        if isinstance(self.image_size, (tuple, list)):
            check_image_size(self.image_size)
        if isinstance(self.crop_scale, (tuple, list)) and not (
            len(self.crop_scale) == 2
            and 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1
        ):
            raise ValueError(
                "crop_scale must be 'auto' or (low, high) with 0 < low <= high <= 1; "
                f"got {self.crop_scale!r}."
            )
        resolve_device(self.device)
        if self.resume and self.checkpoint_dir is None:
            raise ValueError(
                "resume=True needs checkpoint_dir: the directory that holds the "
                "checkpoint to continue from (set checkpoint_dir, or resume=False)."
            )

    def _read_fit_input(self, X):
        image_size = None if isinstance(self.image_size, str) else self.image_size
        source = read_input(
            X,
            image_size=image_size,
            data_format=self.data_format,
            on_error=self.on_error,
        )
        what = "contrastive training compares samples with each other"
        if self._distributed:
            what = "each process of a distributed fit needs 2 samples of its share"
        check_min_samples(source, 2, what=what)
        if isinstance(source, ImageInput) and min(source.size) < 2:
            raise InputError(
                f"X yields images of size (H, W) = {tuple(source.size)}; training "
                "needs "
                "images of at least 2x2 pixels (pass image_size to upsample them)."
            )
        return source

    def _check_n_samples(self, n_samples: int) -> None:
        """Checks of the number of training samples (of all processes)."""

    def _set_input_attributes(self, source):
        self.skipped_indices_ = np.array(sorted(source.skipped), dtype=np.int64)
        self.input_files_ = getattr(source, "input_paths", None)
        if source.kind == "tabular":
            self.input_kind_ = "tabular"
            self.n_features_in_ = source.n_features
            self.input_shape_ = None
            self.image_size_ = None
            self.n_channels_ = None
            self.input_dtype_ = "float32"
        else:
            self.input_kind_ = "image"
            self.input_shape_ = source.source_shape
            self.image_size_ = tuple(source.size)
            self.n_channels_ = source.channels
            self.input_dtype_ = np.dtype(source.dtype).name

    def _resolve_training_config(
        self, n_samples, device, *, backbone=None, max_epochs=None
    ) -> dict:
        """Every 'auto' made concrete for the fitted input and ``device``.

        ``backbone`` and ``max_epochs`` override the choices (models saved in
        format 1 stored only those two).
        """
        tabular = self.input_kind_ == "tabular"
        side = None if tabular else max(self.image_size_)
        gpu = device.type == "cuda"
        if backbone is None:
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
        if max_epochs is None:
            max_epochs = self.max_epochs
            if max_epochs == "auto":
                batches_per_epoch = max(1, math.ceil(n_samples / self.batch_size))
                name = backbone if isinstance(backbone, str) else "resnet18"
                steps = AUTO_STEPS.get(name, 3000)
                max_epochs = int(np.clip(round(steps / batches_per_epoch), 5, 1000))
        lr = self.lr
        if lr == "auto":
            # Short default budgets of the small CPU networks gain 4-6 points of
            # digits ACC from 1e-3; 3e-4 is the reference setting for ResNets.
            lr = 1e-3 if backbone in ("small_cnn", "mlp") else 3e-4
        return {
            "backbone": backbone,
            "max_epochs": int(max_epochs),
            "lr": float(lr),
            "augment": None if tabular else self._resolve_augment(side),
            "model": {
                "family": self._family,
                "backbone": backbone,
                "in_channels": 3 if tabular else self.n_channels_,
                "image_size": None if tabular else list(self.image_size_),
                "n_features": self.n_features_in_ if tabular else None,
                # Recorded resolved for "small_cnn": "auto" means stride 1 in
                # descriptions written before it had a strided stem.
                "stem": resolve_stem(backbone, self.image_size_, self.stem)
                if backbone == "small_cnn"
                else self.stem,
                "backbone_weights": None,
                "freeze_backbone": self.freeze_backbone,
                "backbone_widths": list(_SMALL_CNN_WIDTHS)
                if backbone == "small_cnn"
                else None,
                "heads": self._head_params(),
            },
        }

    def _resolve_augment(self, side) -> dict:
        strength = self.augment_strength
        if strength == "auto":
            strength = 0.5 if side <= 64 else 1.0
        crop_scale = self.crop_scale
        if crop_scale == "auto":
            crop_scale = (
                (0.3, 1.0) if side <= 16 else (0.2, 1.0) if side <= 32 else (0.08, 1.0)
            )
        blur = self.blur if self.blur != "auto" else side > 64
        hflip = self.hflip if self.hflip != "auto" else self.n_channels_ == 3
        return {
            "crop_scale": [float(v) for v in crop_scale],
            "flip_p": 0.5 if hflip else 0.0,
            "jitter_strength": float(strength),
            "blur_p": 0.5 if blur else 0.0,
        }

    def _augment(self):
        """The augmentation of the clustering stage, from ``training_config_``."""
        settings = self.training_config_["augment"]
        if settings is None:
            return FeatureAugment()
        return SimCLRAugment(
            self.image_size_,
            **{**settings, "crop_scale": tuple(settings["crop_scale"])},
        )

    def _fit_scaler(self, scaler, source):
        """Input statistics from (a sample of) the training data."""
        rng = np.random.default_rng(0)
        n_stats = min(source.n_samples, 4096)
        index = np.sort(rng.choice(source.n_samples, n_stats, replace=False))
        if source.kind == "tabular":
            scaler.set_statistics(torch.from_numpy(source.data[index]), step="unit")
            return
        sample = torch.from_numpy(source.read(list(index)))
        if sample.dtype == torch.uint8:
            scaler.set_unit_range(0.0, 255.0)
        else:
            scaler.set_unit_range(
                min(0.0, float(sample.min())), max(1.0, float(sample.max()))
            )
        scaler.set_statistics(scaler.to_unit(sample), step="standardize")

    def _build_net(
        self, model, device, seed, distributed=False, n_samples=None
    ) -> ContrastiveNet:
        config = self.training_config_
        gpu = device.type == "cuda"
        precision = self.precision
        if precision == "auto":
            # bf16 is native from Ampere (compute capability 8) on; older GPUs
            # emulate it.
            precision = (
                "bf16"
                if gpu and torch.cuda.get_device_capability(device)[0] >= 8
                else "fp32"
            )
        # oneDNN's CPU convolutions, like cuDNN's, are faster channels-last
        # (a third per step for "small_cnn").
        channels_last = self.input_kind_ == "image"
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        num_workers = self.num_workers
        if num_workers == "auto":
            # Only a GPU fed from files needs loader processes; the rest is on device.
            num_workers = min(8, os.cpu_count() or 1) if gpu else 0
        iterator_params = {"num_workers": num_workers, "pin_memory": gpu}
        if num_workers:
            iterator_params["persistent_workers"] = True
        net = ContrastiveNet(
            module=model,
            criterion=self._build_objective(channels_last, distributed, n_samples),
            optimizer=torch.optim.Adam,
            optimizer__weight_decay=self.weight_decay,
            # One fused kernel per step instead of several per parameter tensor.
            **({"optimizer__fused": True} if gpu else {}),
            lr=config["lr"],
            max_epochs=self._total_epochs(),
            batch_size=self.batch_size,
            train_split=None,
            callbacks=self._callbacks(),
            verbose=int(self.verbose >= 2),
            device=str(device),
            compile=self.compile,
            precision_dtype=torch.bfloat16 if precision == "bf16" else None,
            generator_seed=seed,
            distributed=distributed,
            **{f"iterator_train__{k}": v for k, v in iterator_params.items()},
        )
        if self.verbose < 2:
            net.set_params(callbacks__print_log=None)
        return net

    def _callbacks(self):
        config = self.training_config_
        callbacks = []
        if self.verbose == 1:
            callbacks.append(("progress", EpochProgress()))
        if self.grad_clip_norm is not None:
            callbacks.append(("grad_clip", GradientNormClipping(self.grad_clip_norm)))
        schedule = LRFactor(
            config["max_epochs"],
            cosine=self.cosine_schedule,
            after=self._later_stage_lr() / config["lr"],
        )
        callbacks.append(
            (
                "lr_schedule",
                LRScheduler(
                    policy=torch.optim.lr_scheduler.LambdaLR, lr_lambda=schedule
                ),
            )
        )
        return callbacks + self._training_callbacks() + list(self.callbacks or [])

    def _training_callbacks(self) -> list:
        """(name, callback) pairs an estimator family adds to training."""
        return []

    def _later_stage_lr(self) -> float:
        """Learning rate of epochs after ``max_epochs`` (extra training stages)."""
        return 0.0

    def _total_epochs(self) -> int:
        return self.training_config_["max_epochs"]

    def _after_fit(self, source):
        """Hook for fitted attributes computed after training."""

    def _forget(self) -> None:
        """Leave the estimator unfitted: its fitted attributes would not match."""
        for name in [
            n for n in vars(self) if n.endswith("_") and not n.startswith("_")
        ]:
            delattr(self, name)

    # --------------------------------------------------------------- inference
    def _read_predict_input(self, X):
        check_is_fitted(self, "net_")
        image = self.input_kind_ == "image"
        channels = self.n_channels_ if image else None
        image_size = self.image_size_ if image else None
        source = read_input(
            X,
            image_size=image_size,
            channels=channels,
            data_format=self.data_format,
            on_error=self.on_error,
            allow_tabular=not image,
            min_readable=0,
        )
        check_matches(
            source,
            kind=self.input_kind_,
            channels=channels,
            size=image_size,
            owner=type(self).__name__,
            source_shape=self.input_shape_,
            n_features=getattr(self, "n_features_in_", None),
        )
        return source

    def _outputs(self, X, *names):
        """Named model outputs of every input of X, one row per input, in order.

        Inputs skipped as unreadable (``on_error="skip"``) get NaN rows.
        """
        source = self._read_predict_input(X)  # first: it checks that we are fitted
        return self.net_.outputs(source, names, self.predict_batch_size)

    def _augmented_pairs(self, X, name):
        """Output ``name`` of two seeded augmented views of every readable input."""
        source = self._read_predict_input(X)
        if source.n_samples == 0:
            raise InputError("X has no readable input to score.")
        return self.net_.augmented_pairs(source, name, self.predict_batch_size)

    def _model(self):
        return self.net_.unwrapped_module()

    def _checked_transform_output(self) -> str:
        """``transform_output``, validated here too since it may be set after fit."""
        if self.transform_output not in self._transform_outputs:
            raise ValueError(
                f"transform_output must be one of {list(self._transform_outputs)}; "
                f"got {self.transform_output!r}."
            )
        return self.transform_output

    def embed(self, X) -> np.ndarray:
        """Backbone embeddings h = f(x).

        Parameters
        ----------
        X : array-like, list of PIL images or paths, or a directory path
            Same kinds of input as ``fit``.

        Returns
        -------
        embedding : ndarray of shape (n_samples, backbone_dim)
            float32, one row per input in input order (NaN rows for image files
            that could not be read).
        """
        return self._outputs(X, "embedding")[0]

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
        from deepclust._export import export_onnx

        if self._writes_nothing():
            return Path(path)
        return export_onnx(self, path, **kwargs)

    def _writes_nothing(self) -> bool:
        """Whether this is a process other than 0 of the job that trained the model."""
        return getattr(self.net_, "distributed", False) and distributed.rank() != 0

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = torch.cuda.is_available() and self.device != "cpu"
        return tags

    # ------------------------------------------------------------- persistence
    def save(self, path) -> None:
        """Save the fitted estimator to a directory, without pickle.

        The directory holds ``model.safetensors`` (the network's weights and the
        fitted arrays such as ``labels_``), ``history.json`` (the training
        history) and ``config.json`` (the library version, the class, the
        parameters, the fitted attributes including ``training_config_``, and
        the SHA-256 of the other two files). Reload with :meth:`load` or
        :func:`deepclust.persistence.load`.

        Parameters
        ----------
        path : str or path-like
            Directory to write (created if needed); the three files in it are
            overwritten.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            If the estimator is not fitted.
        ValueError
            If a parameter cannot be stored as JSON (a callable backbone,
            callbacks, a ``RandomState`` instance), or ``path`` is an existing file.
        """
        check_is_fitted(self, "net_")
        if self._writes_nothing():
            return
        params = _params_to_json(self)
        directory = Path(path)
        if directory.exists() and not directory.is_dir():
            raise ValueError(
                f"path {str(path)!r} is an existing file; save() writes a directory."
            )
        directory.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {
            _MODULE_PREFIX + name: tensor.detach().to("cpu").contiguous()
            for name, tensor in self._model().state_dict().items()
        }
        attributes = {
            name: encode_tree(
                value, tensors, _ATTRIBUTE_PREFIX + name, where=f"attribute {name}"
            )
            for name, value in vars(self).items()
            if name.endswith("_")
            and not name.startswith("_")
            and name not in _REBUILT_ATTRIBUTES
        }
        history = encode_tree(
            self.history_.to_list(), tensors, "history", where="the history"
        )
        write_json(directory / HISTORY_FILE, history)
        write_document(
            directory,
            CONFIG_FILE,
            {
                "format": MODEL_FORMAT,
                "format_version": MODEL_FORMAT_VERSION,
                "deepclust_version": __version__,
                "class": type(self).__name__,
                "params": params,
                "attributes": attributes,
                "history_file": HISTORY_FILE,
                "history_sha256": sha256_file(directory / HISTORY_FILE),
            },
            tensors,
            WEIGHTS_FILE,
        )

    @classmethod
    def load(cls, path, *, device=None):
        """Load an estimator of this class written by :meth:`save`.

        Loading executes no code from the files; see
        :func:`deepclust.persistence.load`.

        Parameters
        ----------
        path : str or path-like
            Directory written by :meth:`save`.
        device : str, default=None
            Device to load on; None keeps the saved one when it exists here, else
            the CPU.

        Returns
        -------
        estimator : object
            The fitted estimator.
        """
        estimator = load_estimator(path, device=device)
        if not isinstance(estimator, cls):
            raise ValueError(
                f"{str(path)!r} holds a {type(estimator).__name__}, not a "
                f"{cls.__name__}; use deepclust.persistence.load to load any estimator."
            )
        return estimator


def load_estimator(path, *, device=None):
    """Load an estimator written by :meth:`BaseDeepEstimator.save`.

    See :func:`deepclust.persistence.load`, which documents it and makes sure
    that every estimator class is registered.
    """
    directory = Path(path)
    what = f"cannot load a deepclust model from {str(path)!r}"
    if not directory.is_dir():
        raise ValueError(f"{what}: it is not a directory (save() writes a directory).")
    config, tensors = read_document(
        directory,
        CONFIG_FILE,
        format_name=MODEL_FORMAT,
        version=MODEL_FORMAT_VERSION,
        what=what,
    )
    try:
        class_name = config["class"]
        params = decode_tree(config["params"], {})
        history_file, history_sha256 = config["history_file"], config["history_sha256"]
        stored_attributes = config["attributes"]
        # Format 1 stored only the backbone and epochs that were chosen.
        resolved = (
            decode_tree(config["resolved"], {})
            if config["format_version"] == 1
            else None
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(
            f"{what}: config.json lacks the entry {exc}; it was edited or truncated."
        ) from None
    if not isinstance(history_file, str) or Path(history_file).name != history_file:
        raise ValueError(
            f"{what}: config.json names the file {history_file!r}, which "
            "is not a plain file name."
        )
    estimator_class = (
        _ESTIMATOR_CLASSES.get(class_name) if isinstance(class_name, str) else None
    )
    if estimator_class is None:
        raise ValueError(
            f"{what}: unknown estimator class {class_name!r}; expected one "
            f"of {sorted(_ESTIMATOR_CLASSES)}."
        )
    if (
        not (directory / history_file).is_file()
        or sha256_file(directory / history_file) != history_sha256
    ):
        raise ValueError(
            f"{what}: {history_file} is missing or does not match the SHA-256 recorded "
            "when it was saved; it was modified, truncated or replaced."
        )
    try:
        history = decode_tree(read_json(directory / history_file, what), tensors)
        attributes = {
            name: decode_tree(value, tensors)
            for name, value in stored_attributes.items()
        }
    except KeyError as exc:
        raise ValueError(
            f"{what}: the weights file lacks the tensor {exc} named in the JSON files."
        ) from None
    # Parameters added since the model was saved take the value that describes it.
    params = {**getattr(estimator_class, "_legacy_params", {}), **params}
    try:
        estimator = estimator_class(**params)
    except TypeError as exc:
        raise ValueError(
            f"{what}: config.json has parameters unknown to {class_name} in this "
            f"version of deepclust ({exc})."
        ) from None
    try:
        estimator._validate_params()
    except ValueError as exc:
        raise ValueError(
            f"{what}: config.json holds an invalid parameter value ({exc})."
        ) from None
    estimator.device = _loading_device(params.get("device", "auto"), device)
    target = resolve_device(estimator.device)
    for name, value in attributes.items():
        setattr(estimator, name, value)
    try:
        if resolved is not None:
            estimator.training_config_ = estimator._resolve_training_config(
                None,
                target,
                backbone=resolved["backbone"],
                max_epochs=resolved["max_epochs"],
            )
            # Format 1 predates recorded widths and strided stems: build_model's
            # defaults are theirs.
            del estimator.training_config_["model"]["backbone_widths"]
            estimator.training_config_["model"]["stem"] = estimator.stem
        description = estimator.training_config_["model"]
        expected = {"family": estimator._family, "heads": estimator._head_params()}
        stored = {name: description[name] for name in expected}
        model = build_model(description)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{what}: config.json lacks fitted attributes or training choices needed "
            f"to rebuild the network ({type(exc).__name__}: {exc})."
        ) from None
    if encode_tree(stored, {}, "model") != encode_tree(expected, {}, "model"):
        raise ValueError(
            f"{what}: the parameters in config.json ({expected}) do not match the "
            f"stored network description ({stored}); config.json was edited."
        )
    weights = {
        name[len(_MODULE_PREFIX) :]: tensor
        for name, tensor in tensors.items()
        if name.startswith(_MODULE_PREFIX)
    }
    # Buffers added since the model was saved keep their initial value.
    current = model.state_dict()
    for name in getattr(model, "optional_state", ()):
        weights.setdefault(name, current[name])
    check_state_dict(model.state_dict(), weights, what)
    model.load_state_dict(weights)
    estimator.net_ = estimator._build_net(model, target, 0)
    estimator.net_.initialize()
    estimator.net_.history = History(history)
    estimator.history_ = estimator.net_.history
    return estimator


def _loading_device(saved, requested) -> str:
    if requested is not None:
        resolve_device(requested)
        return str(requested)
    try:
        resolve_device(saved)
    except ValueError:
        warnings.warn(
            f"The model was saved with device={saved!r}, which is not available here; "
            "loading it on the CPU (device='cpu').",
            UserWarning,
            stacklevel=3,
        )
        return "cpu"
    return saved


def _params_to_json(estimator) -> dict:
    """The estimator's parameters as JSON; a ValueError names any that is not."""
    encoded = {}
    for name, value in estimator.get_params(deep=False).items():
        if name == "callbacks" and value is not None:
            raise ValueError(
                "callbacks cannot be saved without pickle (they are code); they only "
                "matter for training: call est.set_params(callbacks=None) before "
                "save(), "
                "or use pickle/joblib."
            )
        if name == "backbone" and callable(value):
            raise ValueError(
                f"backbone={value!r} is a callable, which cannot be saved without "
                "pickle "
                "(it is code); save() needs a named backbone ('resnet18', 'resnet34', "
                "'resnet50', 'small_cnn' or 'mlp'). Use pickle/joblib instead."
            )
        if isinstance(value, torch.device):
            value = str(value)
        elif isinstance(value, os.PathLike):
            value = os.fspath(value)
        try:
            encoded[name] = encode_tree(value, {}, name, where=f"parameter {name}")
        except TypeError as exc:
            raise ValueError(
                f"{exc} save() stores parameters as JSON: set {name} to a plain value "
                "(e.g. random_state to an int) or use pickle/joblib."
            ) from None
    return encoded


def warn_empty_clusters(sizes: np.ndarray, estimator_name: str) -> None:
    """ConvergenceWarning naming the empty clusters, as KMeans does."""
    empty = np.flatnonzero(sizes == 0)
    if len(empty):
        warnings.warn(
            f"{estimator_name} left {len(empty)} of {len(sizes)} clusters empty "
            f"(clusters {empty.tolist()[:10]}); see cluster_sizes_. More epochs, a "
            "larger batch_size or fewer n_clusters usually help.",
            ConvergenceWarning,
            stacklevel=3,
        )
