"""The estimator contract both deepclust estimators share: fit, inference, I/O.

The public estimators are plain scikit-learn estimators that *have* a skorch net
(``net_``) built in ``fit``, rather than being one: this keeps scikit-learn's
contract (explicit parameters, ``fit`` forgets, clone gives an unfitted copy) while
skorch owns the training loop, callbacks and history.

``fit`` reads the input (:func:`deepclust._inputs.read_input`), lets
:mod:`._config` turn every ``"auto"`` into a concrete choice (the fitted
``training_config_``, which also describes the network), builds the network
(:func:`deepclust.models.build_model`) and the net (:mod:`._net`), and trains it
(:func:`._training.fit_net`). :mod:`._saving` writes and reads fitted
estimators.
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

from __future__ import annotations

import os
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from skorch.callbacks import GradientNormClipping, LRScheduler

from deepclust import distributed
from deepclust._inputs import (
    InputError,
    shard_input,
)
from deepclust._validation import check_image_size
from deepclust.augment import FeatureAugment, SimCLRAugment
from deepclust.estimators import _saving
from deepclust.estimators._config import (
    BACKBONES,
    InputDescription,
    resolve_runtime,
    resolve_training_config,
)
from deepclust.estimators._data import InputHandling
from deepclust.estimators._net import (
    ContrastiveNet,
    DurationEstimate,
    EpochProgress,
    InputDataset,
    LRFactor,
    describe_device,
    resolve_device,
)
from deepclust.estimators._training import fingerprint, fit_net
from deepclust.models import build_model

__all__ = ["BaseDeepEstimator", "Float32TransformerMixin"]

# Constraints of the parameters both estimators have; each adds its own.
SHARED_CONSTRAINTS: dict[str, list] = {
    "encoder": [str, callable, None],
    "encoder_weights": [str, os.PathLike, None],
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


class Float32TransformerMixin(TransformerMixin):
    """TransformerMixin whose tags say that ``transform`` always returns float32."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


class BaseDeepEstimator(InputHandling, BaseEstimator):
    """Common fit/inference logic; subclasses define the model and the objective.

    Subclasses set ``_family`` ("cd" or "cdc", see
    :func:`deepclust.models.build_model`) and implement ``_head_params`` and
    ``_build_objective``.
    """

    _parameter_constraints: dict = SHARED_CONSTRAINTS
    _family: str

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _saving.register(cls)

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
        encoder = self._build_encoder()
        source = self._read_fit_input(X, encoder)
        size = self._auto_image_size(source, device)
        if size is not None:
            source = self._read_fit_input(X, encoder, image_size=size)
        self._set_input_attributes(source)
        n_samples = source.n_samples
        if self._distributed:
            self.input_files_ = input_files
            n_samples = self._agree_on_inputs(source)
        self._check_n_samples(n_samples)
        if encoder is not None:
            self._fit_unit_range(encoder, source)
            self.encoder_ = encoder
        self.training_config_ = self._resolve_training_config(n_samples, device)
        train_source = self._model_input(source, device, progress=self.verbose >= 1)
        seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model(
                {
                    **self.training_config_["model"],
                    "backbone_weights": self.backbone_weights,
                }
            )
        self._fit_scaler(model.scaler, train_source)
        dataset = InputDataset(train_source, device)
        self.net_ = self._build_net(
            model,
            device,
            seed,
            self._distributed,
            n_samples=len(dataset),
            pairs=self._neighbor_pairs(model, dataset),
        )
        try:
            # Fixed shapes: let cuDNN pick the fastest kernels.
            with torch.backends.cudnn.flags(
                enabled=torch.backends.cudnn.enabled,
                benchmark=device.type == "cuda" or torch.backends.cudnn.benchmark,
            ):
                fit_net(
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
        except BaseException as error:
            # fit_net marks a failure after a completed epoch: the net then holds
            # that epoch's weights, so the estimator is fitted with them first.
            if getattr(error, "kept_epoch", None) is None:
                self._forget()
                raise
            self._finish_fit(train_source, n_processes)
            raise
        self._finish_fit(train_source, n_processes)
        return self

    def _finish_fit(self, source, n_processes) -> None:
        self.net_.finish_training()
        self.history_ = self.net_.history
        self.n_epochs_ = len(self.history_)
        self.n_processes_ = n_processes
        self._after_fit(source)

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

    def _check_n_samples(self, n_samples: int) -> None:
        """Checks of the number of training samples (of all processes)."""

    def _resolve_training_config(self, n_samples, device) -> dict:
        """Every 'auto' made concrete for the fitted input and ``device``."""
        tabular = self.input_kind_ == "tabular"
        encoder = getattr(self, "encoder_", None)
        data = InputDescription(
            self.input_kind_,
            n_samples,
            image_size=None if tabular else tuple(self.image_size_),
            n_channels=None if tabular else self.n_channels_,
            n_features=self.n_features_in_ if tabular else None,
            encoder=None if encoder is None else encoder.description,
        )
        return resolve_training_config(
            self.get_params(deep=False),
            family=self._family,
            heads=self._head_params(),
            data=data,
            device=describe_device(device),
        )

    def _augment(self):
        """The augmentation of the clustering stage, from ``training_config_``."""
        settings = self.training_config_["augment"]
        if settings is None:
            return FeatureAugment()
        return SimCLRAugment(
            self.image_size_,
            **{**settings, "crop_scale": tuple(settings["crop_scale"])},
        )

    def _build_net(
        self, model, device, seed, multi_process=False, n_samples=None, pairs=None
    ) -> ContrastiveNet:
        """The skorch net that trains ``model`` on ``device`` (or runs it).

        Precision and loader workers are resolved for ``device`` (a model
        loaded on another device than it was trained on gets its own).
        """
        config = self.training_config_
        runtime = resolve_runtime(self.get_params(deep=False), describe_device(device))
        gpu = device.type == "cuda"
        # oneDNN's CPU convolutions, like cuDNN's, are faster channels-last
        # (a third per step for "small_cnn").
        channels_last = self._trains_on_pixels()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        iterator_params = {"num_workers": runtime["num_workers"], "pin_memory": gpu}
        if runtime["num_workers"]:
            iterator_params["persistent_workers"] = True
        net = ContrastiveNet(
            module=model,
            criterion=self._build_objective(
                channels_last, multi_process, n_samples, pairs
            ),
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
            precision_dtype=torch.bfloat16 if runtime["precision"] == "bf16" else None,
            generator_seed=seed,
            image_dtype=self.input_dtype_ if self._trains_on_pixels() else None,
            distributed=multi_process,
            **{f"iterator_train__{k}": v for k, v in iterator_params.items()},
        )
        if self.verbose < 2:
            net.set_params(callbacks__print_log=None)
        return net

    def _callbacks(self):
        config = self.training_config_
        callbacks = [("duration", DurationEstimate(self.verbose))]
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
        """Hook for fitted attributes computed after training.

        ``source`` is what the network trained on (the embeddings of the
        training images when there is an encoder), with one row per input.
        """

    def _forget(self) -> None:
        """Leave the estimator unfitted: its fitted attributes would not match."""
        for name in [
            n for n in vars(self) if n.endswith("_") and not n.startswith("_")
        ]:
            delattr(self, name)

    # --------------------------------------------------------------- inference
    def _outputs(self, X, *names):
        """Named model outputs of every input of X, one row per input, in order.

        Inputs skipped as unreadable (``on_error="skip"``) get NaN rows.
        """
        source = self._read_predict_input(X)  # first: it checks that we are fitted
        return self.net_.outputs(
            self._model_input(source), names, self.predict_batch_size
        )

    def _augmented_pairs(self, X, name):
        """Output ``name`` of two seeded augmented views of every readable input."""
        source = self._read_predict_input(X)
        if source.n_samples == 0:
            raise InputError("X has no readable input to score.")
        return self.net_.augmented_pairs(
            self._model_input(source), name, self.predict_batch_size
        )

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

        if self._is_secondary_process():
            return Path(path)
        return export_onnx(self, path, **kwargs)

    def _is_secondary_process(self) -> bool:
        """Whether this is a process other than 0 of a distributed fit (which
        writes no file: process 0 writes them for all)."""
        return getattr(self.net_, "distributed", False) and distributed.rank() != 0

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = torch.cuda.is_available() and self.device != "cpu"
        return tags

    # ------------------------------------------------------------- persistence
    def save(self, path) -> None:
        """Save the fitted estimator to a directory, without pickle.

        The directory holds ``config.json`` (the library version, the class,
        the parameters, the fitted attributes including ``training_config_``),
        the weights and fitted arrays such as ``labels_`` in
        ``model-<hash>.safetensors`` and the training history in
        ``history-<hash>.json``. Saving over an existing model replaces it
        atomically: an interrupted save (a kill, a full disk) leaves the previous
        model loadable. Reload with :meth:`load` or
        :func:`deepclust.persistence.load`.

        Parameters
        ----------
        path : str or path-like
            Directory to write (created if needed).

        Raises
        ------
        sklearn.exceptions.NotFittedError
            If the estimator is not fitted.
        ValueError
            If a parameter cannot be stored as JSON (a callable backbone,
            callbacks, a ``RandomState`` instance), or ``path`` is an existing file.
        """
        check_is_fitted(self, "net_")
        _saving.save_estimator(self, path)

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
        estimator = _saving.load_estimator(path, device=device)
        if not isinstance(estimator, cls):
            raise ValueError(
                f"{str(path)!r} holds a {type(estimator).__name__}, not a "
                f"{cls.__name__}; use deepclust.persistence.load to load any estimator."
            )
        return estimator
