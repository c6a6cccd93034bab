"""The CD and CDC networks assembled from a backbone and heads, in pure torch.

Both models keep their input scaling in buffers (:class:`InputScaler`) so that a
trained model carries everything needed to go from raw pixels or raw feature values
to predictions, which is what the ONNX export relies on. Scaling is split in two
steps because augmentation sits between them during training: ``to_unit`` maps raw
images to [0, 1] (colour jitter and blur assume that range) or z-scores tabular
features (feature noise assumes unit variance); ``forward`` then standardises image
channels before the backbone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepclust.heads import CDCProjectionHead, FeaturePredictor, InstanceProjector
from deepclust.losses import split_projection

__all__ = ["CDCModel", "CDModel", "InputScaler"]


class InputScaler(nn.Module):
    """Two-step input scaling stored as buffers.

    ``to_unit(x) = (x - offset) * scale`` and ``standardize(x) = (x - mean) / std``,
    with per-channel (images, channel axis 1) or per-feature (tabular) values.

    Parameters
    ----------
    n_channels : int
        Channels of an image (1 or 3) or features of a tabular input.
    image : bool
        Whether inputs are (B, C, H, W) images or (B, n_features) rows.

    Examples
    --------
    >>> import torch
    >>> scaler = InputScaler(3, image=True)
    >>> scaler.set_unit_range(0.0, 255.0)
    >>> float(scaler.to_unit(torch.full((1, 3, 2, 2), 255.0)).max())
    1.0
    """

    def __init__(self, n_channels: int, *, image: bool) -> None:
        super().__init__()
        self.image = image
        for name, value in [("offset", 0.0), ("scale", 1.0), ("mean", 0.0), ("std", 1.0)]:
            self.register_buffer(name, torch.full((n_channels,), value))

    def _shaped(self, buffer: torch.Tensor) -> torch.Tensor:
        return buffer.view(1, -1, 1, 1) if self.image else buffer.view(1, -1)

    def set_unit_range(self, low, high) -> None:
        """Map raw values in [low, high] to [0, 1] (images)."""
        high = torch.as_tensor(high, dtype=torch.float32)
        low = torch.as_tensor(low, dtype=torch.float32)
        if not bool((high > low).all()):
            raise ValueError(f"set_unit_range needs high > low, got low={low}, high={high}.")
        self.offset.copy_(low.expand_as(self.offset))
        self.scale.copy_((1.0 / (high - low)).expand_as(self.scale))

    def set_statistics(self, unit_data: torch.Tensor, *, step: str) -> None:
        """Fit mean/std of ``unit_data`` into the ``step`` ('unit' or 'standardize')."""
        if step not in ("unit", "standardize"):
            raise ValueError(f"step must be 'unit' or 'standardize', got {step!r}.")
        dims = [0, 2, 3] if self.image else [0]
        mean = unit_data.float().mean(dim=dims)
        # Population std stays defined for a single row; a constant channel or
        # feature keeps scale 1 (as StandardScaler does) instead of exploding.
        std = unit_data.float().std(dim=dims, correction=0)
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
        if step == "unit":
            self.offset.copy_(mean)
            self.scale.copy_(1.0 / std)
        else:
            self.mean.copy_(mean)
            self.std.copy_(std)

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Raw input -> unit range (images) or z-scores (tabular)."""
        return (x.float() - self._shaped(self.offset)) * self._shaped(self.scale)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-range input -> the standardised input of the backbone."""
        return (x - self._shaped(self.mean)) / self._shaped(self.std)


class _ScaledModel(nn.Module):
    """Shared plumbing: a scaler, a backbone and the family's heads."""

    def __init__(self, backbone: nn.Module, scaler: InputScaler) -> None:
        super().__init__()
        self.scaler = scaler
        self.backbone = backbone

    def embed(self, unit_x: torch.Tensor) -> torch.Tensor:
        """Backbone features h = f(x) of unit-range input."""
        return self.backbone(self.scaler.standardize(unit_x))


class CDModel(_ScaledModel):
    """Contrastive Disentangling network f -> g -> h.

    Parameters
    ----------
    backbone : nn.Module
        Feature extractor f mapping the standardised input to (B, backbone_dim).
    backbone_dim : int
    scaler : InputScaler
    projection_dim : int, default=128
        Output size of the instance projector g.
    n_heads : int, default=128
        Number K of sigmoid feature heads.
    predictor_hidden_dim : int, optional
        Hidden width of the predictor; the reference uses ``backbone_dim``.

    Examples
    --------
    >>> import torch
    >>> model = CDModel(torch.nn.Flatten(), 12, InputScaler(3, image=True),
    ...                 projection_dim=4, n_heads=5)
    >>> z, y = model(torch.rand(2, 3, 2, 2))
    >>> z.shape, y.shape
    (torch.Size([2, 4]), torch.Size([2, 5]))
    """

    def __init__(
        self,
        backbone: nn.Module,
        backbone_dim: int,
        scaler: InputScaler,
        *,
        projection_dim: int = 128,
        n_heads: int = 128,
        predictor_hidden_dim: int | None = None,
    ) -> None:
        super().__init__(backbone, scaler)
        self.projector = InstanceProjector(backbone_dim, projection_dim)
        self.predictor = FeaturePredictor(
            projection_dim, n_heads, predictor_hidden_dim or backbone_dim
        )

    def forward(self, unit_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Instance projection z (B, projection_dim) and head activations (B, K)."""
        z = self.projector(self.embed(unit_x))
        return z, self.predictor(z)


class CDCModel(_ScaledModel):
    """CDC network: backbone and one MLP head split into z^c and z^n.

    Parameters
    ----------
    backbone : nn.Module
    backbone_dim : int
    scaler : InputScaler
    n_clusters : int
    instance_dim : int, default=128
    cluster_temperature : float, default=0.1
        t of softmax(z^c / t), used by :meth:`cluster_probabilities`.

    Examples
    --------
    >>> import torch
    >>> model = CDCModel(torch.nn.Flatten(), 12, InputScaler(3, image=True),
    ...                  n_clusters=3, instance_dim=4)
    >>> model(torch.rand(2, 3, 2, 2)).shape
    torch.Size([2, 7])
    >>> proba = model.cluster_probabilities(torch.rand(2, 3, 2, 2))
    >>> torch.allclose(proba.sum(dim=1), torch.ones(2))
    True
    """

    def __init__(
        self,
        backbone: nn.Module,
        backbone_dim: int,
        scaler: InputScaler,
        *,
        n_clusters: int,
        instance_dim: int = 128,
        cluster_temperature: float = 0.1,
    ) -> None:
        super().__init__(backbone, scaler)
        if not cluster_temperature > 0:
            raise ValueError(
                f"cluster_temperature must be positive, got {cluster_temperature!r}."
            )
        self.n_clusters = n_clusters
        self.cluster_temperature = cluster_temperature
        self.head = CDCProjectionHead(backbone_dim, n_clusters, instance_dim)

    def forward(self, unit_x: torch.Tensor) -> torch.Tensor:
        """Raw projection (B, n_clusters + instance_dim); the loss normalises it."""
        return self.head(self.embed(unit_x))

    def cluster_logits(self, unit_x: torch.Tensor) -> torch.Tensor:
        """z^c / t, whose softmax is the cluster probability."""
        z_cluster, _ = split_projection(self(unit_x), self.n_clusters)
        return z_cluster / self.cluster_temperature

    def cluster_probabilities(self, unit_x: torch.Tensor) -> torch.Tensor:
        """softmax(z^c / t) of shape (B, n_clusters)."""
        return F.softmax(self.cluster_logits(unit_x), dim=1)
