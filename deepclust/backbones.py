"""Feature extractors (the backbone f) for the deep clustering models.

This module is pure PyTorch and torchvision: it does not depend on
scikit-learn or skorch, so the networks can be reused on their own.

:func:`make_backbone` turns a *spec* (a name or a factory) into a module
mapping a float batch ``(B, C, H, W)`` (or ``(B, n_features)`` for tabular
data) to features ``(B, out_dim)``. Estimators store the spec and build the
module in ``fit``, so that :func:`sklearn.base.clone` never copies trained
weights.

Available specs:

- ``"resnet18"``, ``"resnet34"``, ``"resnet50"``: torchvision ResNets without
  their ``fc`` layer, built from scratch (no download), with an ImageNet stem
  (7x7 stride-2 conv and max-pool, as in the Contrastive Disentangling paper)
  or a CIFAR stem (3x3 stride-1 conv, no max-pool) for small images.
- ``"small_cnn"``: :class:`SmallCNN`, a compact CNN for tiny images.
- ``"mlp"``: :class:`MLP`, for tabular data.
- a callable returning a :class:`torch.nn.Module`.
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

import os
import pickle
import warnings
from collections.abc import Callable, Mapping, Sequence

import torch
import torchvision
from torch import nn

from deepclust._validation import check_image_size, check_positive_int

__all__ = ["MLP", "FrozenBackbone", "SmallCNN", "make_backbone"]

_RESNETS = {
    "resnet18": (torchvision.models.resnet18, 512),
    "resnet34": (torchvision.models.resnet34, 512),
    "resnet50": (torchvision.models.resnet50, 2048),
}
_NAMED_SPECS = ("resnet18", "resnet34", "resnet50", "small_cnn", "mlp")
_STEMS = ("auto", "imagenet", "cifar")
# Prefixes added by nn.DataParallel / DistributedDataParallel ("module.") and by
# models that hold the backbone as an attribute ("backbone.").
_KEY_PREFIXES = ("module.", "backbone.")
# "small_cnn" keeps full resolution up to this size (the digits, 16-px icons);
# above it a stride-2 first convolution saves four fifths of the FLOPs.
_SMALL_CNN_FULL_RES = 16
# Images at most this large (in pixels) get the CIFAR stem when stem="auto": the
# ImageNet stem would shrink them 4x before the first residual stage.
_CIFAR_STEM_MAX_SIZE = 64


class SmallCNN(nn.Module):
    """Compact convolutional network for tiny images (8 to 32 pixels).

    Each stage is ``[Conv3x3 (no bias) - BatchNorm - ReLU] x 2``. A 2x2
    max-pool follows every stage but the last, as long as the feature map is
    at least 4 pixels high and wide, so that 8x8 inputs such as the
    scikit-learn digits keep a spatial extent. A global average pool and a
    flatten end the network.

    Parameters
    ----------
    in_channels : int
        Number of channels of the input images.
    widths : sequence of int, default=(64, 128, 256)
        Number of channels of each stage.
    stem_stride : {1, 2}, default=1
        Stride of the first convolution. 2 works on a quarter of the pixels
        from the first layer on: a 28x28 image costs about what a 14x14 one
        does, five times less than at stride 1.

    Attributes
    ----------
    out_dim : int
        Number of output features, ``widths[-1]``.

    Examples
    --------
    >>> import torch
    >>> from deepclust.backbones import SmallCNN
    >>> net = SmallCNN(1)
    >>> net(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 256])
    >>> SmallCNN(1, (8, 16), stem_stride=2)(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 16])
    """

    def __init__(
        self,
        in_channels: int,
        widths: Sequence[int] = (64, 128, 256),
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        check_positive_int(in_channels, "in_channels")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2; got {stem_stride!r}.")
        widths = tuple(widths)
        if not widths:
            raise ValueError("widths must contain at least one stage width, got ().")
        for width in widths:
            check_positive_int(width, "each entry of widths")
        stages = []
        previous = in_channels
        for index, width in enumerate(widths):
            stride = stem_stride if index == 0 else 1
            stages.append(
                nn.Sequential(
                    nn.Conv2d(previous, width, 3, stride, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(width, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                )
            )
            previous = width
        self.stages = nn.ModuleList(stages)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map images of shape (B, C, H, W) to features of shape (B, out_dim)."""
        last = len(self.stages) - 1
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index < last and min(x.shape[-2:]) >= 4:
                x = self.pool(x)
        return self.head(x)


class MLP(nn.Module):
    """Multi-layer perceptron backbone for tabular data.

    Each hidden layer is ``Linear (no bias) - BatchNorm1d - ReLU``; the bias
    is dropped because the batch normalisation that follows removes it.

    Parameters
    ----------
    n_features : int
        Number of input features.
    hidden : sequence of int, default=(256, 256)
        Width of each hidden layer.

    Attributes
    ----------
    out_dim : int
        Number of output features, ``hidden[-1]``.

    Examples
    --------
    >>> import torch
    >>> from deepclust.backbones import MLP
    >>> net = MLP(4, hidden=(16, 8))
    >>> net(torch.zeros(3, 4)).shape
    torch.Size([3, 8])
    """

    def __init__(self, n_features: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        check_positive_int(n_features, "n_features")
        hidden = tuple(hidden)
        if not hidden:
            raise ValueError("hidden must contain at least one layer width, got ().")
        layers = []
        previous = n_features
        for width in hidden:
            check_positive_int(width, "each entry of hidden")
            layers += [
                nn.Linear(previous, width, bias=False),
                nn.BatchNorm1d(width),
                nn.ReLU(inplace=True),
            ]
            previous = width
        self.layers = nn.Sequential(*layers)
        self.out_dim = hidden[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map inputs (B, n_features) (or images, flattened) to (B, out_dim)."""
        return self.layers(x.flatten(1))


class FrozenBackbone(nn.Module):
    """Wrap a backbone so that it is neither trained nor updated.

    The parameters of the wrapped module get ``requires_grad=False`` and the
    module stays in eval mode even when a parent model calls ``.train()``, so
    the BatchNorm running statistics of a pretrained backbone are kept.

    Parameters
    ----------
    module : torch.nn.Module
        The backbone to freeze. It is modified in place.

    Examples
    --------
    >>> import torch
    >>> from deepclust.backbones import FrozenBackbone, MLP
    >>> frozen = FrozenBackbone(MLP(4, hidden=(8,))).train()
    >>> frozen.module.training
    False
    >>> any(p.requires_grad for p in frozen.parameters())
    False
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"module must be a torch.nn.Module, got {type(module).__name__}."
            )
        self.module = module
        self.module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "FrozenBackbone":
        """Set this wrapper's mode while keeping the backbone in eval mode."""
        super().train(mode)
        self.module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the frozen backbone."""
        return self.module(x)


class _GlobalPooled(nn.Module):
    """Global-average-pool and flatten the 4-D output of a backbone."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.module(x))


def resolve_stem(
    spec: str, image_size: int | tuple[int, int] | None, stem: str = "auto"
) -> str:
    """The stem, "imagenet" or "cifar", that ``stem`` means for a named backbone.

    Parameters
    ----------
    spec : str
        A named backbone ("small_cnn" or a ResNet).
    image_size : int or tuple of (int, int) or None
        Height and width of the input images (None: unknown, which means
        "cifar" for "small_cnn" and "imagenet" for the ResNets).
    stem : {"auto", "imagenet", "cifar"}, default="auto"
        See :func:`make_backbone`.

    Returns
    -------
    stem : {"imagenet", "cifar"}

    Examples
    --------
    >>> resolve_stem("small_cnn", 8), resolve_stem("small_cnn", 28)
    ('cifar', 'imagenet')
    >>> resolve_stem("resnet18", 32), resolve_stem("resnet18", 224)
    ('cifar', 'imagenet')
    """
    if stem != "auto":
        return stem
    image_size = check_image_size(image_size)
    if image_size is None:
        # Unknown sizes keep what each network was built for.
        return "cifar" if spec == "small_cnn" else "imagenet"
    limit = _SMALL_CNN_FULL_RES if spec == "small_cnn" else _CIFAR_STEM_MAX_SIZE
    return "cifar" if max(image_size) <= limit else "imagenet"


def make_backbone(
    spec: str | Callable[[], nn.Module] = "resnet18",
    *,
    in_channels: int = 3,
    image_size: int | tuple[int, int] | None = None,
    n_features: int | None = None,
    stem: str = "auto",
    weights: str | os.PathLike | None = None,
    freeze: bool = False,
    widths: Sequence[int] | None = None,
) -> tuple[nn.Module, int]:
    """Build the feature extractor f of a deep clustering model.

    Parameters
    ----------
    spec : {"resnet18", "resnet34", "resnet50", "small_cnn", "mlp"} or callable, \
            default="resnet18"
        The backbone.

        - ``"resnet18"``, ``"resnet34"``, ``"resnet50"``: torchvision ResNet
          with random initialisation (weights are never downloaded) and its
          ``fc`` layer replaced by :class:`torch.nn.Identity`; ``out_dim`` is
          512, 512 and 2048.
        - ``"small_cnn"``: :class:`SmallCNN` (``widths`` sets its stage
          widths), ``out_dim`` the last width (256 by default).
        - ``"mlp"``: :class:`MLP` with hidden widths (256, 256) for inputs of
          shape ``(B, n_features)``, or for images flattened to
          ``in_channels * H * W`` features; ``out_dim`` 256.
        - a callable taking no argument (a class, a function,
          :func:`functools.partial`...) that returns a
          :class:`torch.nn.Module`. ``out_dim`` is found by a forward pass on
          zeros; a 4-D output ``(B, C, H, W)`` is global-average-pooled and
          flattened to ``(B, C)``.
    in_channels : int, default=3
        Number of channels of the input images (ignored by ``"mlp"`` and by
        callables).
    image_size : int or tuple of (int, int), default=None
        Height and width of the input images. Used to pick the ResNet stem
        when ``stem="auto"`` and, for a callable, to shape the trial input.
    n_features : int, default=None
        Number of input features; required by ``"mlp"``. For a callable it
        means the inputs are tabular, of shape ``(B, n_features)``.
    stem : {"auto", "imagenet", "cifar"}, default="auto"
        First layers of the ResNets. ``"imagenet"`` is torchvision's 7x7
        stride-2 convolution followed by a stride-2 max-pool. ``"cifar"`` is
        a 3x3 stride-1 convolution without max-pool, better suited to small
        images. ``"auto"`` picks ``"cifar"`` when ``image_size`` is given and
        at most 64 pixels, ``"imagenet"`` otherwise. For ``"small_cnn"``,
        ``"imagenet"`` makes the first convolution stride 2 and ``"cifar"``
        keeps stride 1; ``"auto"`` picks stride 2 above 16 pixels (see
        :func:`resolve_stem`).
    weights : str or path-like, default=None
        A local state-dict file, read by :func:`load_weights` (which documents
        the accepted layouts and never unpickles objects).
    freeze : bool, default=False
        If True, wrap the backbone in :class:`FrozenBackbone`: its parameters
        are not trained and its BatchNorm statistics are not updated.
    widths : sequence of int, default=None
        Stage widths of ``"small_cnn"`` (None: :class:`SmallCNN`'s default);
        ignored by the other backbones.

    Returns
    -------
    module : torch.nn.Module
        The backbone, mapping a float batch to features of shape
        ``(B, out_dim)``.
    out_dim : int
        Number of output features.

    Raises
    ------
    ValueError
        If ``spec``, ``stem``, ``in_channels``, ``image_size`` or
        ``n_features`` is invalid, if a required argument is missing, or if
        ``weights`` does not fit the backbone.
    FileNotFoundError
        If ``weights`` is not an existing file.

    Examples
    --------
    >>> import torch
    >>> from deepclust.backbones import make_backbone
    >>> net, out_dim = make_backbone("resnet18", in_channels=1, image_size=16)
    >>> out_dim
    512
    >>> net(torch.zeros(2, 1, 16, 16)).shape
    torch.Size([2, 512])
    >>> net, out_dim = make_backbone("mlp", n_features=5)
    >>> out_dim
    256

    A factory returning convolutional features gets a global average pool:

    >>> from torch import nn
    >>> net, out_dim = make_backbone(
    ...     lambda: nn.Conv2d(3, 7, 3), image_size=(10, 12)
    ... )
    >>> out_dim
    7
    >>> net(torch.zeros(4, 3, 10, 12)).shape
    torch.Size([4, 7])
    """
    if stem not in _STEMS:
        raise ValueError(
            f"stem must be one of {', '.join(repr(s) for s in _STEMS)}; got {stem!r}."
        )
    check_positive_int(in_channels, "in_channels")
    if n_features is not None:
        check_positive_int(n_features, "n_features")
    image_size = check_image_size(image_size)

    module, out_dim = _build(spec, in_channels, image_size, n_features, stem, widths)
    if weights is not None:
        # Weights are loaded before any wrapping so that their keys match the
        # module the user built or saved.
        load_weights(module, weights)

    if callable(spec):
        module, out_dim = _infer_out_dim(module, in_channels, image_size, n_features)

    if freeze:
        module = FrozenBackbone(module)
    return module, out_dim


def _build(spec, in_channels, image_size, n_features, stem, widths):
    """The untrained network of a specification and its output width (None for
    callables, whose width a forward pass finds)."""
    if isinstance(spec, str) and spec in _RESNETS:
        return _make_resnet(spec, in_channels, image_size, stem)
    if isinstance(spec, str) and spec == "small_cnn":
        stem = resolve_stem(spec, image_size, stem)
        module = SmallCNN(
            in_channels,
            **({} if widths is None else {"widths": widths}),
            stem_stride=2 if stem == "imagenet" else 1,
        )
        return module, module.out_dim
    if isinstance(spec, str) and spec == "mlp":
        if n_features is None and image_size is not None:
            # Tiny images: an MLP over the flattened pixels.
            n_features = in_channels * image_size[0] * image_size[1]
        if n_features is None:
            raise ValueError(
                "n_features (or image_size, for images) is required by backbone "
                "'mlp'; got None."
            )
        module = MLP(n_features)
        return module, module.out_dim
    if isinstance(spec, nn.Module):
        raise ValueError(
            "backbone must be a name or a callable that builds a torch.nn.Module, "
            f"not a module instance ({type(spec).__name__}); pass its class or a "
            "function returning it, so that every fit starts from fresh weights."
        )
    if callable(spec):
        return _call_factory(spec), None
    raise ValueError(
        f"Unknown backbone {spec!r}; expected one of "
        f"{', '.join(repr(name) for name in _NAMED_SPECS)} or a callable "
        "returning a torch.nn.Module."
    )


def _make_resnet(
    name: str, in_channels: int, image_size: tuple[int, int] | None, stem: str
) -> tuple[nn.Module, int]:
    builder, out_dim = _RESNETS[name]
    # weights=None: never download anything.
    net = builder(weights=None)
    net.fc = nn.Identity()
    stem = resolve_stem(name, image_size, stem)
    old = net.conv1
    if stem == "cifar":
        net.conv1 = nn.Conv2d(
            in_channels,
            old.out_channels,
            kernel_size=3,
            stride=1,
            padding=1,
            bias=False,
        )
        net.maxpool = nn.Identity()
    elif in_channels != old.in_channels:
        net.conv1 = nn.Conv2d(
            in_channels,
            old.out_channels,
            kernel_size=old.kernel_size,
            stride=old.stride,
            padding=old.padding,
            bias=False,
        )
    if net.conv1 is not old:
        # Same initialisation as torchvision gives its own convolutions.
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    return net, out_dim


def _call_factory(factory: Callable[[], nn.Module]) -> nn.Module:
    try:
        module = factory()
    except Exception as exc:
        raise ValueError(
            f"backbone factory {factory!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(module, nn.Module):
        raise ValueError(
            f"backbone factory {factory!r} must return a torch.nn.Module; got "
            f"{type(module).__name__}."
        )
    return module


def _infer_out_dim(
    module: nn.Module,
    in_channels: int,
    image_size: tuple[int, int] | None,
    n_features: int | None,
) -> tuple[nn.Module, int]:
    if n_features is not None:
        trial_shape = (2, n_features)
    elif image_size is not None:
        trial_shape = (2, in_channels, *image_size)
    else:
        raise ValueError(
            "image_size is required with a callable backbone to find its output "
            "dimension (or n_features for tabular input); got None."
        )
    # A batch of 2 because BatchNorm1d refuses a single sample in train mode,
    # should the factory's module ignore eval().
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            output = module(torch.zeros(trial_shape))
    except Exception as exc:
        raise ValueError(
            f"backbone module {type(module).__name__} failed on an input of shape "
            f"{trial_shape}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        module.train(was_training)
    if not isinstance(output, torch.Tensor) or output.ndim not in (2, 4):
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
        raise ValueError(
            "backbone module must return a tensor of shape (B, out_dim) or "
            f"(B, C, H, W); got {type(output).__name__} of shape {shape}."
        )
    if output.ndim == 4:
        module = _GlobalPooled(module)
    return module, int(output.shape[1])


def _strip_key(key: str, expected: Mapping[str, torch.Tensor]) -> str:
    # Keys the module knows are kept as they are, in case the module itself has
    # an attribute called "module" or "backbone".
    while key not in expected and key.startswith(_KEY_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def load_weights(module: nn.Module, weights: str | os.PathLike) -> None:
    """Load a local state-dict file into ``module``.

    The file is written by :func:`torch.save` and holds a state dict, directly
    or under a ``"state_dict"`` or ``"model"`` key. It is read with
    ``torch.load(..., weights_only=True)``, which refuses arbitrary pickled
    objects. Leading ``"module."`` and ``"backbone."`` prefixes are stripped from
    the keys; keys of a ResNet ``fc`` layer and keys unknown to the module are
    ignored; missing keys give a :class:`UserWarning`; shapes that do not fit
    give a ValueError.
    """
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist.")
    try:
        # weights_only=True: a checkpoint must never run arbitrary code.
        content = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        # torch's own message suggests weights_only=False, which deepclust never
        # does; it stays available in the chained traceback.
        raise ValueError(
            f"weights file {path!r} cannot be read safely with "
            "torch.load(weights_only=True): it holds objects other than tensors "
            "and containers, or is not a torch.save file. Save a plain state dict "
            "with torch.save(module.state_dict(), path)."
        ) from exc
    if isinstance(content, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(content.get(key), Mapping):
                content = content[key]
                break
    if not isinstance(content, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor)
        for key, value in content.items()
    ):
        raise ValueError(
            f"weights file {path!r} must hold a state dict (str -> tensor), directly "
            "or under a 'state_dict' or 'model' key."
        )

    expected = module.state_dict()
    state = {}
    for key, value in content.items():
        key = _strip_key(key, expected)
        if key.startswith("fc.") and key not in expected:
            continue
        state[key] = value
    matched = [key for key in state if key in expected]
    if not matched:
        raise ValueError(
            f"weights file {path!r} has no key of the backbone; file keys start "
            f"with {list(state)[:5]}, expected keys such as {list(expected)[:5]}."
        )
    mismatched = [
        f"{key}: {tuple(state[key].shape)} in file, {tuple(expected[key].shape)} "
        "expected"
        for key in matched
        if state[key].shape != expected[key].shape
    ]
    if mismatched:
        raise ValueError(
            f"weights file {path!r} does not fit the backbone: {len(mismatched)} "
            f"shape mismatch(es), e.g. {'; '.join(mismatched[:5])}."
        )
    module.load_state_dict({key: state[key] for key in matched}, strict=False)
    # Old checkpoints lack num_batches_tracked, which only matters for BatchNorm
    # with momentum=None.
    missing = [
        key
        for key in expected
        if key not in state and not key.endswith("num_batches_tracked")
    ]
    if missing:
        warnings.warn(
            f"weights file {path!r} lacks {len(missing)} key(s) of the backbone, "
            f"which keep their initial values: {missing[:5]}"
            + (" ..." if len(missing) > 5 else ""),
            UserWarning,
            stacklevel=3,
        )
