"""Every "auto" choice of the estimators: one pure function and its tables.

:func:`resolve_training_config` turns an estimator's parameters, a description
of the training input (:class:`InputDescription`) and of the device
(:class:`DeviceDescription`) into the fitted ``training_config_``: the network,
the budget, the learning rate, the augmentation, the precision, the data
loading and the CDC neighbour schedule. Nothing else in the package decides an
``"auto"``; docstrings point to the table that :func:`auto_choices_table`
prints from this function (``docs/user_guide/auto_choices.md``).

This module imports neither torch nor scikit-learn at import time, so that the
command line can read its names (``BACKBONES``) before torch is loaded.
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BACKBONES",
    "DeviceDescription",
    "InputDescription",
    "auto_choices_table",
    "resolve_encoder_image_size",
    "resolve_head_selection",
    "resolve_transform_output",
    "resolve_image_size",
    "resolve_runtime",
    "resolve_training_config",
]

# Backbone names a user can pass ("auto" resolves to one of the others).
BACKBONES = ("auto", "resnet18", "resnet34", "resnet50", "small_cnn", "mlp")
# Backbones that need images: they cannot train on 2-D feature vectors.
IMAGE_BACKBONES = ("resnet18", "resnet34", "resnet50", "small_cnn")

# Optimiser steps that max_epochs="auto" aims at, per backbone. "small_cnn":
# 67 epochs of the digits, under a minute on 2 CPU cores (benchmarks/README.md).
AUTO_STEPS = {"mlp": 1500, "small_cnn": 1000, "resnet18": 3000, "resnet34": 20000}
# Heads on the embeddings of a pretrained encoder (see benchmarks/README.md).
ENCODER_HEAD_STEPS = 1500
# image_size="auto" with an encoder: its input size, or half of it for images
# up to this side, which it would only see upscaled (a quarter of the time).
ENCODER_SMALL_SIDE = 64
# Feature vectors (tabular input, encoder embeddings) train on pairs of a row and
# one of its nearest neighbours (SCAN, TEMI); this many neighbours per row.
PAIR_NEIGHBORS = 10
# A callable backbone is budgeted like this named one.
CALLABLE_LIKE = "resnet18"
AUTO_EPOCH_RANGE = (5, 1000)
# lr="auto": the small CPU networks' short budgets gain 4-6 points of digits ACC
# from 1e-3; 3e-4 is the reference setting of the ResNets (and callables).
AUTO_LR = {"small_cnn": 1e-3, "mlp": 1e-3}
REFERENCE_LR = 3e-4
# Stage widths of "small_cnn": a quarter of the FLOPs of (64, 128, 256) at the
# same digits ACC.
SMALL_CNN_WIDTHS = (32, 64, 128)
# backbone="auto": "small_cnn" up to this side on any device, and up to the
# next one on a CPU; the ResNets' CIFAR stem (resnet18) up to the last one.
SMALL_CNN_MAX_SIDE = 16
CPU_SMALL_CNN_MAX_SIDE = 64
GPU_RESNET18_MAX_SIDE = 64
# image_size="auto" on a CPU without an encoder: larger images are trained at
# this side (a from-scratch network on a CPU cannot use more in minutes).
CPU_MAX_SIDE = 64
CPU_DOWNSCALED_SIDE = 32
# On a CPU, the steps of "small_cnn" with a strided stem shrink with the area of
# its first feature map beyond that of 28-px images (Fashion-MNIST, 14 x 14), so
# a default fit costs about what Fashion-MNIST's does (benchmarks/README.md).
CPU_REFERENCE_MAP_AREA = 14 * 14
# Augmentation by image side: (largest side, crop area range).
AUTO_CROP_SCALES = ((16, (0.3, 1.0)), (32, (0.2, 1.0)), (math.inf, (0.08, 1.0)))
# Colour-jitter strength up to / above this side (the reference code's values).
JITTER_SIDE = 64
AUTO_JITTER = (0.5, 1.0)
# Gaussian blur only above this side.
BLUR_MIN_SIDE = 64
# CDC's head_selection="auto": heads trained on feature vectors (embeddings)
# land in optima that differ by up to 20 points of ACC on Fashion-MNIST, and no
# head's own loss tells them apart; their ensemble beats the head that the loss
# picks (benchmarks/README.md, "Encoders"). On images the heads agree, and the
# lowest loss is kept.
FEATURE_HEAD_SELECTION = "ensemble"
IMAGE_HEAD_SELECTION = "loss"
# The ensemble clusters the heads' probabilities at this temperature: close to
# one vote per head, with soft ties (at the training temperature, 0.2, it lost
# 4.5 points of Fashion-MNIST ACC over 3 seeds; 0.02-0.05 alike).
ENSEMBLE_TEMPERATURE = 0.05
# CD's transform_output="auto": KMeans on the heads of CD trained on an
# encoder's embeddings loses to KMeans on its backbone output (Fashion-MNIST:
# about a point of ACC; 2 photographs: 0.658 against 1.000): 128 balanced,
# decorrelated heads spread few groups over many features (benchmarks/README.md).
ENCODER_TRANSFORM_OUTPUT = "embedding"
PIXEL_TRANSFORM_OUTPUT = "heads"
# CDC: neighbours are mined from this share of the clustering epochs on (never
# in the first epoch), every few epochs, and only up to this many samples (a bank
# holds N x heads x clusters codes, and mining compares all N samples).
NEIGHBOR_START = 0.3
NEIGHBOR_EVERY = 3
MAX_NEIGHBOR_SAMPLES = 100_000
# DataLoader workers of a GPU fed from files (nothing else needs them).
MAX_GPU_WORKERS = 8


@dataclass(frozen=True)
class InputDescription:
    """What ``fit`` learnt about its input before choosing anything.

    Parameters
    ----------
    kind : {"image", "tabular"}
    n_samples : int or None
        Training samples of all processes (None: unknown, e.g. when a saved
        model of an old format is upgraded).
    image_size : tuple of (int, int) or None
        (H, W) the images are read at.
    n_channels : int or None
    n_features : int or None
        Columns of tabular input.
    encoder : dict or None
        The description of the frozen encoder whose embeddings the heads train
        on (see :func:`deepclust.encoders.build_encoder`), or None.
    """

    kind: str
    n_samples: int | None = None
    image_size: tuple | None = None
    n_channels: int | None = None
    n_features: int | None = None
    encoder: dict | None = None

    @property
    def heads_input(self) -> InputDescription:
        """What the network trains on: the encoder's embeddings, or the input."""
        if self.encoder is None:
            return self
        return InputDescription(
            "tabular", self.n_samples, n_features=self.encoder["embedding_dim"]
        )

    @property
    def side(self) -> int | None:
        """The largest image side (None for tabular input)."""
        return None if self.image_size is None else max(self.image_size)


@dataclass(frozen=True)
class DeviceDescription:
    """The training device, as far as the choices depend on it.

    Parameters
    ----------
    type : {"cpu", "cuda", "mps"}
    native_bf16 : bool, default=False
        Whether the device computes bf16 natively (CUDA compute capability 8+).
    n_cpus : int, default=1
    """

    type: str
    native_bf16: bool = False
    n_cpus: int = 1

    @property
    def gpu(self) -> bool:
        return self.type == "cuda"


def resolve_training_config(
    params: dict[str, Any],
    *,
    family: str,
    heads: dict[str, Any],
    data: InputDescription,
    device: DeviceDescription,
) -> dict[str, Any]:
    """Every ``"auto"`` of ``params`` made concrete for ``data`` and ``device``.

    Parameters
    ----------
    params : dict
        The estimator's parameters (``get_params(deep=False)``).
    family : {"cd", "cdc"}
    heads : dict
        Keyword arguments of the model's heads (recorded in the description).
    data : InputDescription
    device : DeviceDescription

    Returns
    -------
    training_config : dict
        ``backbone``, ``max_epochs``, ``lr``, ``augment`` (None for feature
        vectors), ``pair_neighbors`` (neighbours drawn as the second view of
        feature vectors; None for images), ``precision``, ``num_workers``,
        ``neighbor_start_epoch`` (CDC; None without neighbours), ``encoder``
        (the frozen encoder's description, or None) and ``model``, the
        description that :func:`deepclust.models.build_model` rebuilds the
        network from.

    Raises
    ------
    ValueError
        If a named image backbone is asked to train on feature vectors.

    Examples
    --------
    >>> config = resolve_training_config(
    ...     {"backbone": "auto", "max_epochs": "auto", "lr": "auto",
    ...      "batch_size": 128, "stem": "auto", "freeze_backbone": False,
    ...      "augment_strength": "auto", "crop_scale": "auto", "hflip": "auto",
    ...      "blur": "auto", "precision": "auto", "num_workers": "auto"},
    ...     family="cd", heads={"n_heads": 8, "projection_dim": 4},
    ...     data=InputDescription("image", 1797, (8, 8), 1),
    ...     device=DeviceDescription("cpu"))
    >>> config["backbone"], config["max_epochs"], config["lr"]
    ('small_cnn', 67, 0.001)
    """
    encoder = data.encoder
    data = data.heads_input
    tabular = data.kind == "tabular"
    backbone = _backbone(params["backbone"], data, device, encoder)
    max_epochs = params["max_epochs"]
    if max_epochs == "auto":
        steps = ENCODER_HEAD_STEPS if encoder else _auto_steps(backbone)
        steps = _cpu_steps(steps, backbone, params["stem"], data, device)
        max_epochs = _auto_epochs(steps, data.n_samples, params["batch_size"])
    lr = params["lr"]
    if lr == "auto":
        lr = (
            AUTO_LR.get(backbone, REFERENCE_LR)
            if isinstance(backbone, str)
            else (REFERENCE_LR)
        )
    config = {
        "backbone": backbone,
        "max_epochs": int(max_epochs),
        "lr": float(lr),
        "augment": None if tabular else _augment(params, data),
        "pair_neighbors": PAIR_NEIGHBORS if tabular else None,
        **resolve_runtime(params, device),
        "encoder": encoder,
        "model": _model_description(params, family, heads, backbone, data),
    }
    if family == "cdc":
        config["neighbor_start_epoch"] = _neighbor_start(params, data, max_epochs)
    return config


def resolve_image_size(
    params: dict[str, Any], data: InputDescription, device: DeviceDescription
) -> tuple[int, int] | None:
    """The size images are trained at when ``image_size="auto"`` must not keep
    theirs, or None.

    On a CPU without an encoder, images larger than ``CPU_MAX_SIDE`` are
    downscaled to ``CPU_DOWNSCALED_SIDE`` (keeping their aspect ratio): a
    network trained from scratch on 224-px photos would plan hours.

    Examples
    --------
    >>> params = {"image_size": "auto", "encoder": None, "backbone": "auto"}
    >>> resolve_image_size(params, InputDescription("image", 300, (224, 224), 3),
    ...                    DeviceDescription("cpu"))
    (32, 32)
    >>> resolve_image_size(params, InputDescription("image", 300, (28, 28), 1),
    ...                    DeviceDescription("cpu")) is None
    True
    """
    if (
        params["image_size"] != "auto"
        or params.get("encoder") is not None
        or data.encoder is not None
        or data.kind != "image"
        or device.gpu
        or data.side <= CPU_MAX_SIDE
        or (isinstance(params["backbone"], str) and params["backbone"] != "auto")
        or callable(params["backbone"])
    ):
        return None
    height, width = data.image_size
    ratio = CPU_DOWNSCALED_SIDE / max(height, width)
    return max(2, round(height * ratio)), max(2, round(width * ratio))


def resolve_encoder_image_size(
    image_size, input_size: int, side: int | None
) -> tuple[int, int]:
    """The size images are resized to for an encoder of ``input_size``.

    ``image_size="auto"`` gives the encoder's input size, or half of it for
    images whose largest ``side`` is at most ``ENCODER_SMALL_SIDE`` and that
    half (they would only be upscaled more: half the size is a quarter of the
    embedding time).

    Examples
    --------
    >>> resolve_encoder_image_size("auto", 224, 28)
    (112, 112)
    >>> resolve_encoder_image_size("auto", 224, 480)
    (224, 224)
    >>> resolve_encoder_image_size(96, 224, 28)
    (96, 96)
    """
    if image_size != "auto":
        return (
            (image_size, image_size)
            if isinstance(image_size, int)
            else tuple(image_size)
        )
    if side is not None and side <= min(ENCODER_SMALL_SIDE, input_size // 2):
        return input_size // 2, input_size // 2
    return input_size, input_size


def resolve_runtime(params: dict[str, Any], device: DeviceDescription) -> dict:
    """The choices that depend on the device only: precision and loader workers.

    A loaded model takes them anew for the device it is loaded on.

    Examples
    --------
    >>> resolve_runtime({"precision": "auto", "num_workers": "auto"},
    ...                 DeviceDescription("cuda", native_bf16=True, n_cpus=16))
    {'precision': 'bf16', 'num_workers': 8}
    """
    precision = params["precision"]
    if precision == "auto":
        # bf16 is native from Ampere (compute capability 8) on; older GPUs
        # emulate it.
        precision = "bf16" if device.gpu and device.native_bf16 else "fp32"
    workers = params["num_workers"]
    if workers == "auto":
        # Only a GPU fed from files needs loader processes; the rest is on device.
        workers = min(MAX_GPU_WORKERS, device.n_cpus) if device.gpu else 0
    return {"precision": precision, "num_workers": int(workers)}


def _backbone(requested, data: InputDescription, device: DeviceDescription, encoder):
    if encoder is not None and requested in IMAGE_BACKBONES:
        raise ValueError(
            f"backbone={requested!r} is a network for pixels, but with "
            f"encoder={encoder['spec']!r} the heads train on the encoder's "
            "embeddings; use backbone='auto' or 'mlp' (or encoder=None to train "
            f"{requested!r} on the pixels)."
        )
    if data.kind == "tabular" and requested in IMAGE_BACKBONES:
        raise ValueError(
            f"backbone={requested!r} is a convolutional network for images, but X "
            f"is 2-D feature vectors (n_samples, n_features) = ({data.n_samples}, "
            f"{data.n_features}); use backbone='mlp' or 'auto' for feature vectors, "
            "or pass images (N, H, W), (N, H, W, C) or (N, C, H, W)."
        )
    if requested != "auto":
        return requested
    if data.kind == "tabular":
        return "mlp"
    side = data.side
    if side <= SMALL_CNN_MAX_SIDE or (
        side <= CPU_SMALL_CNN_MAX_SIDE and not device.gpu
    ):
        return "small_cnn"
    if side <= GPU_RESNET18_MAX_SIDE:
        return "resnet18"
    return "resnet34" if device.gpu else "resnet18"


def _auto_steps(backbone) -> int:
    name = backbone if isinstance(backbone, str) else CALLABLE_LIKE
    return AUTO_STEPS.get(name, AUTO_STEPS[CALLABLE_LIKE])


def _cpu_steps(steps, backbone, stem, data: InputDescription, device) -> int:
    """Fewer steps for "small_cnn" on a CPU when its first feature map is larger
    than that of 28-px images, so that a default fit stays within minutes."""
    if device.gpu or backbone != "small_cnn":
        return steps
    from deepclust.backbones import resolve_stem  # torch: only when fitting

    stride = 2 if resolve_stem(backbone, data.image_size, stem) == "imagenet" else 1
    height, width = data.image_size
    area = -(-height // stride) * -(-width // stride)
    if stride == 1 or area <= CPU_REFERENCE_MAP_AREA:
        return steps
    return max(1, round(steps * CPU_REFERENCE_MAP_AREA / area))


def _auto_epochs(steps, n_samples, batch_size) -> int:
    batches_per_epoch = max(1, math.ceil((n_samples or 1) / batch_size))
    low, high = AUTO_EPOCH_RANGE
    return int(min(max(round(steps / batches_per_epoch), low), high))


def _augment(params, data: InputDescription) -> dict:
    side = data.side
    strength = params["augment_strength"]
    if strength == "auto":
        strength = AUTO_JITTER[0] if side <= JITTER_SIDE else AUTO_JITTER[1]
    crop_scale = params["crop_scale"]
    if crop_scale == "auto":
        crop_scale = next(scale for limit, scale in AUTO_CROP_SCALES if side <= limit)
    blur = params["blur"] if params["blur"] != "auto" else side > BLUR_MIN_SIDE
    # Grayscale images are often digits, characters or documents, whose mirror
    # image is another symbol.
    hflip = params["hflip"] if params["hflip"] != "auto" else data.n_channels == 3
    return {
        "crop_scale": [float(v) for v in crop_scale],
        "flip_p": 0.5 if hflip else 0.0,
        "jitter_strength": float(strength),
        "blur_p": 0.5 if blur else 0.0,
    }


def _model_description(params, family, heads, backbone, data: InputDescription):
    tabular = data.kind == "tabular"
    return {
        "family": family,
        "backbone": backbone,
        "in_channels": 3 if tabular else data.n_channels,
        "image_size": None if tabular else list(data.image_size),
        "n_features": data.n_features if tabular else None,
        "stem": _stem(params["stem"], backbone, data),
        "backbone_weights": None,
        "freeze_backbone": params["freeze_backbone"],
        "backbone_widths": list(SMALL_CNN_WIDTHS) if backbone == "small_cnn" else None,
        "heads": heads,
    }


def _stem(stem, backbone, data: InputDescription) -> str:
    """The resolved stem of a named convolutional backbone (recorded as such)."""
    if data.kind == "tabular" or backbone not in IMAGE_BACKBONES:
        return stem
    from deepclust.backbones import resolve_stem  # torch: only when fitting

    return resolve_stem(backbone, data.image_size, stem)


def resolve_head_selection(selection: str, heads_input_kind: str) -> str:
    """What CDC's ``head_selection="auto"`` means for what its heads train on.

    Examples
    --------
    >>> [resolve_head_selection("auto", kind) for kind in ("tabular", "image")]
    ['ensemble', 'loss']
    """
    if selection != "auto":
        return selection
    if heads_input_kind == "tabular":
        return FEATURE_HEAD_SELECTION
    return IMAGE_HEAD_SELECTION


def resolve_transform_output(requested: str, has_encoder: bool) -> str:
    """What CD's ``transform_output="auto"`` means for a fitted estimator.

    Examples
    --------
    >>> [resolve_transform_output("auto", encoder) for encoder in (True, False)]
    ['embedding', 'heads']
    >>> resolve_transform_output("heads", True)
    'heads'
    """
    if requested != "auto":
        return requested
    return ENCODER_TRANSFORM_OUTPUT if has_encoder else PIXEL_TRANSFORM_OUTPUT


def _neighbor_start(params, data: InputDescription, max_epochs) -> int | None:
    use = params.get("neighbor_weight", 0) > 0 and (
        (data.n_samples or 0) <= MAX_NEIGHBOR_SAMPLES
    )
    # Never before the second epoch: an untrained embedding has no neighbours
    # worth having.
    return max(1, round(NEIGHBOR_START * max_epochs)) if use else None


# ---------------------------------------------------------------------------
# The table of the documentation
# ---------------------------------------------------------------------------

# Typical inputs and devices whose choices the documentation lists.
_TABLE_CASES = (
    ("digits, 1,797 x 8x8 gray", InputDescription("image", 1797, (8, 8), 1), "cpu"),
    ("2,000 x 28x28 gray", InputDescription("image", 2000, (28, 28), 1), "cpu"),
    ("2,000 x 28x28 gray", InputDescription("image", 2000, (28, 28), 1), "cuda"),
    ("50,000 x 32x32 RGB", InputDescription("image", 50_000, (32, 32), 3), "cuda"),
    ("300 x 224x224 RGB", InputDescription("image", 300, (224, 224), 3), "cpu"),
    ("300 x 224x224 RGB", InputDescription("image", 300, (224, 224), 3), "cuda"),
    ("5,000 x 20 features", InputDescription("tabular", 5000, n_features=20), "cpu"),
    (
        "2,000 x 28x28 gray, encoder efficientnet_lite0",
        InputDescription(
            "image",
            2000,
            (112, 112),
            1,
            encoder={"spec": "efficientnet_lite0", "embedding_dim": 1280},
        ),
        "cpu",
    ),
)
_DEVICES = {
    "cpu": DeviceDescription("cpu", n_cpus=2),
    "cuda": DeviceDescription("cuda", native_bf16=True, n_cpus=16),
}


def auto_choices_table(default_params: dict[str, Any], family: str, heads) -> str:
    """A markdown table of what ``"auto"`` resolves to for typical inputs.

    It is computed by :func:`resolve_training_config` itself, so it cannot
    drift from the code; ``docs/user_guide/auto_choices.md`` holds it and a
    test checks that it is current.
    """
    rows = [
        "| input | device | backbone (stem) | epochs | lr | crop scale | jitter | "
        "flip | blur | precision | workers |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for label, data, device in _TABLE_CASES:
        size = resolve_image_size(default_params, data, _DEVICES[device])
        if size is not None:
            # What image_size="auto" trains on: the downscaled images.
            label = f"{label} (trained at {size[0]}x{size[1]})"
            data = InputDescription("image", data.n_samples, size, data.n_channels)
        config = resolve_training_config(
            default_params,
            family=family,
            heads=heads,
            data=data,
            device=_DEVICES[device],
        )
        stem = config["model"]["stem"]
        backbone = config["backbone"] + (
            f" ({stem})" if config["backbone"] in IMAGE_BACKBONES else ""
        )
        augment = config["augment"]
        if augment is None:
            crop = jitter = flip = blur = "-"
        else:
            crop = "({}, {})".format(*augment["crop_scale"])
            jitter = augment["jitter_strength"]
            flip = "yes" if augment["flip_p"] else "no"
            blur = "yes" if augment["blur_p"] else "no"
        rows.append(
            f"| {label} | {device} | {backbone} | {config['max_epochs']} | "
            f"{config['lr']:g} | {crop} | {jitter} | {flip} | {blur} | "
            f"{config['precision']} | {config['num_workers']} |"
        )
    return "\n".join(rows) + "\n"
