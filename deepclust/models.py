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

import math

import torch
import torch.nn.functional as F
from torch import nn

from deepclust.backbones import make_backbone
from deepclust.heads import (
    CDCProjectionHead,
    FeaturePredictor,
    InstanceProjector,
    split_projection,
)

__all__ = ["CDCModel", "CDModel", "InputScaler", "balancing_bias", "build_model"]


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
        for name, value in [
            ("offset", 0.0),
            ("scale", 1.0),
            ("mean", 0.0),
            ("std", 1.0),
        ]:
            self.register_buffer(name, torch.full((n_channels,), value))

    def _shaped(self, buffer: torch.Tensor) -> torch.Tensor:
        return buffer.view(1, -1, 1, 1) if self.image else buffer.view(1, -1)

    def set_unit_range(self, low, high) -> None:
        """Map raw values in [low, high] to [0, 1] (images)."""
        high = torch.as_tensor(high, dtype=torch.float32)
        low = torch.as_tensor(low, dtype=torch.float32)
        if not bool((high > low).all()):
            raise ValueError(
                f"set_unit_range needs high > low, got low={low}, high={high}."
            )
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

    def unit_range(self) -> tuple[float, float]:
        """The raw values (low, high) that ``to_unit`` maps to 0 and 1 (images)."""
        low = float(self.offset.min())
        return low, low + 1.0 / float(self.scale.max())

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Raw input -> unit range (images) or z-scores (tabular)."""
        return (x.float() - self._shaped(self.offset)) * self._shaped(self.scale)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-range input -> the standardised input of the backbone."""
        return (x - self._shaped(self.mean)) / self._shaped(self.std)


class _ScaledModel(nn.Module):
    """Shared plumbing: a scaler, a backbone and the family's heads.

    ``forward(unit_x, outputs)`` is the one way to run a model: training,
    inference and the ONNX export all ask it for named outputs, so the
    backbone runs once per call and every consumer sees the same tensors.
    """

    output_names: tuple[str, ...] = ("embedding",)
    default_outputs: str | tuple[str, ...] = "embedding"

    def __init__(
        self, backbone: nn.Module, scaler: InputScaler, embedding_dim: int
    ) -> None:
        super().__init__()
        self.scaler = scaler
        self.backbone = backbone
        #: Width of the backbone's output, the ``"embedding"``.
        self.embedding_dim = embedding_dim

    def forward(self, unit_x: torch.Tensor, outputs=None):
        """Named outputs of unit-range input: a tensor for a name, a tuple for a list.

        Parameters
        ----------
        unit_x : Tensor
            Input mapped to the unit range by ``scaler.to_unit``.
        outputs : str or sequence of str, default=None
            Names among :attr:`output_names`; None gives :attr:`default_outputs`.
        """
        outputs = self.default_outputs if outputs is None else outputs
        names = (outputs,) if isinstance(outputs, str) else tuple(outputs)
        unknown = [name for name in names if name not in self.output_names]
        if unknown:
            raise ValueError(
                f"Unknown output(s) {unknown} of {type(self).__name__}; available: "
                f"{list(self.output_names)}."
            )
        values = self._outputs(self.backbone(self.scaler.standardize(unit_x)), names)
        if isinstance(outputs, str):
            return values[outputs]
        return tuple(values[name] for name in names)

    def _outputs(self, embedding: torch.Tensor, names) -> dict[str, torch.Tensor]:
        return {"embedding": embedding}

    def embed(self, unit_x: torch.Tensor) -> torch.Tensor:
        """Backbone features h = f(x) of unit-range input."""
        return self(unit_x, "embedding")


class CDModel(_ScaledModel):
    """Contrastive Disentangling network f -> g -> h.

    Outputs: ``"embedding"`` (the backbone features), ``"projection"`` (the
    instance projection z) and ``"heads"`` (the K sigmoid head activations);
    by default ``(projection, heads)``.

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
    >>> model(torch.rand(2, 3, 2, 2), "embedding").shape
    torch.Size([2, 12])
    """

    output_names = ("embedding", "projection", "heads")
    default_outputs = ("projection", "heads")

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
        super().__init__(backbone, scaler, backbone_dim)
        self.projector = InstanceProjector(backbone_dim, projection_dim)
        self.predictor = FeaturePredictor(
            projection_dim, n_heads, predictor_hidden_dim or backbone_dim
        )

    def _outputs(self, embedding, names):
        values = {"embedding": embedding}
        if "projection" in names or "heads" in names:
            values["projection"] = self.projector(embedding)
        if "heads" in names:
            values["heads"] = self.predictor(values["projection"])
        return values


class CDCModel(_ScaledModel):
    """CDC network: backbone and one MLP head split into z^c and z^n.

    Outputs: ``"embedding"`` (backbone features), ``"projection"`` (the raw head
    output of the first cluster head, (B, n_clusters + instance_dim)),
    ``"cluster"`` and ``"instance"`` (the L2-normalised parts z^c and z^n),
    ``"logits"`` (z^c / t), ``"probabilities"`` (their softmax), ``"labels"``
    (the argmax) and ``"all_projections"`` (the raw output of every head,
    (B, n_heads * n_clusters + instance_dim), for training several heads); by
    default the projection, which the loss normalises.

    With several cluster heads, :meth:`select_head` makes the best one the first,
    which every output but ``"all_projections"`` uses. The buffer
    ``cluster_bias`` (zeros unless set, see :func:`balancing_bias`) shifts the
    cluster scores before the softmax: ``logits`` = (z^c + bias) / t.

    Parameters
    ----------
    backbone : nn.Module
    backbone_dim : int
    scaler : InputScaler
    n_clusters : int
    instance_dim : int, default=128
    cluster_temperature : float, default=0.1
        t of softmax(z^c / t).
    n_heads : int, default=1
        Cluster heads trained together on the backbone (sharing z^n).

    Examples
    --------
    >>> import torch
    >>> model = CDCModel(torch.nn.Flatten(), 12, InputScaler(3, image=True),
    ...                  n_clusters=3, instance_dim=4)
    >>> model(torch.rand(2, 3, 2, 2)).shape
    torch.Size([2, 7])
    >>> proba, labels = model(torch.rand(2, 3, 2, 2), ["probabilities", "labels"])
    >>> torch.allclose(proba.sum(dim=1), torch.ones(2)), labels.shape
    (True, torch.Size([2]))
    """

    output_names = (
        "embedding",
        "projection",
        "cluster",
        "instance",
        "logits",
        "probabilities",
        "labels",
        "all_projections",
    )
    default_outputs = "projection"

    def __init__(
        self,
        backbone: nn.Module,
        backbone_dim: int,
        scaler: InputScaler,
        *,
        n_clusters: int,
        instance_dim: int = 128,
        cluster_temperature: float = 0.1,
        n_heads: int = 1,
    ) -> None:
        super().__init__(backbone, scaler, backbone_dim)
        if not cluster_temperature > 0:
            raise ValueError(
                f"cluster_temperature must be positive, got {cluster_temperature!r}."
            )
        self.n_clusters = n_clusters
        self.n_heads = n_heads
        self.cluster_temperature = cluster_temperature
        self.head = CDCProjectionHead(
            backbone_dim, n_clusters, instance_dim, n_heads=n_heads
        )
        self.register_buffer("cluster_bias", torch.zeros(n_clusters))

    def _outputs(self, embedding, names):
        values = {"embedding": embedding}
        if set(names) == {"embedding"}:
            return values
        values["all_projections"] = self.head(embedding)
        # The first head's part and the shared instance part: a one-head projection.
        values["projection"] = self.head.first_head(values["all_projections"])
        values["cluster"], values["instance"] = split_projection(
            values["projection"], self.n_clusters
        )
        values["logits"] = (values["cluster"] + self.cluster_bias) / (
            self.cluster_temperature
        )
        if "probabilities" in names or "labels" in names:
            values["probabilities"] = F.softmax(values["logits"], dim=1)
            values["labels"] = values["probabilities"].argmax(dim=1)
        return values

    def select_head(self, index: int) -> None:
        """Make cluster head ``index`` the first one, the one used for predictions.

        The heads' rows of the last layer are swapped, so the network keeps its
        shape (and its saved weights their names).
        """
        self.head.swap_heads(index)

    def cluster_logits(self, unit_x: torch.Tensor) -> torch.Tensor:
        """z^c / t, whose softmax is the cluster probability."""
        return self(unit_x, "logits")

    def cluster_probabilities(self, unit_x: torch.Tensor) -> torch.Tensor:
        """softmax(z^c / t) of shape (B, n_clusters)."""
        return self(unit_x, "probabilities")


@torch.no_grad()
def balancing_bias(
    z_cluster: torch.Tensor, epsilon: float = 0.05, n_iterations: int = 200
) -> torch.Tensor:
    """The smallest cluster bias that leaves no cluster of ``z_cluster`` empty.

    Sinkhorn-Knopp over all samples (the training objective balances every
    batch the same way) gives the bias b = epsilon * log v under which the
    assignments argmax_k(z_ik + b_k) split the samples equally; the bias returned
    is the smallest fraction of it (found by bisection) under which every cluster
    keeps at least one sample, so clusters that are already filled move as little
    as possible.

    Parameters
    ----------
    z_cluster : Tensor of shape (N, K)
        Normalised cluster parts of N >= K samples.
    epsilon : float, default=0.05
        The entropic regularisation of the training's Sinkhorn-Knopp.
    n_iterations : int, default=200

    Returns
    -------
    bias : Tensor of shape (K,)
        Zeros when no cluster is empty.

    Examples
    --------
    >>> import torch
    >>> z = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.2], [0.7, 0.3]])
    >>> bias = balancing_bias(z)
    >>> torch.bincount((z + bias).argmax(dim=1), minlength=2).tolist()
    [3, 1]
    """
    z = z_cluster.double().cpu()
    n_samples, n_clusters = z.shape

    def counts(bias):
        return torch.bincount((z + bias).argmax(dim=1), minlength=n_clusters)

    if n_samples < n_clusters or (counts(0.0) > 0).all():
        return torch.zeros(n_clusters, dtype=z_cluster.dtype)
    log_kernel = z / epsilon
    log_v = torch.zeros(n_clusters, dtype=z.dtype)
    for _ in range(n_iterations):
        log_u = -torch.logsumexp(log_kernel + log_v, dim=1)
        log_v = math.log(n_samples / n_clusters) - torch.logsumexp(
            log_kernel + log_u[:, None], dim=0
        )
    full = epsilon * (log_v - log_v.mean())
    low, high = 0.0, 1.0
    for _ in range(30):
        middle = 0.5 * (low + high)
        low, high = (
            (middle, high) if (counts(middle * full) == 0).any() else (low, middle)
        )
    # The bisection ends on a tie between two clusters: step a little past it, so
    # that rounding cannot undo it.
    return (min(1.0, 1.1 * high) * full).to(z_cluster.dtype)


_FAMILIES = {"cd": CDModel, "cdc": CDCModel}


def build_model(spec: dict) -> CDModel | CDCModel:
    """Build an untrained CD or CDC network from its description.

    The description holds everything needed to rebuild the same network, so a
    saved model is rebuilt from it before its weights are loaded.

    Parameters
    ----------
    spec : dict
        ``family`` ("cd" or "cdc"), ``backbone`` (a name or a factory, see
        :func:`deepclust.backbones.make_backbone`), ``in_channels``,
        ``image_size`` (None for tabular input), ``n_features`` (tabular
        input), ``stem``, ``backbone_weights`` (a local file or None),
        ``freeze_backbone``, ``backbone_widths`` (optional: stage widths of
        "small_cnn", None or absent for its default widths) and
        ``heads`` (keyword arguments of the model class besides the backbone
        and the scaler).

    Returns
    -------
    model : CDModel or CDCModel

    Examples
    --------
    >>> model = build_model({
    ...     "family": "cdc", "backbone": "mlp", "in_channels": 3, "image_size": None,
    ...     "n_features": 4, "stem": "auto", "backbone_weights": None,
    ...     "freeze_backbone": False, "backbone_widths": None,
    ...     "heads": {"n_clusters": 2, "instance_dim": 3},
    ... })
    >>> type(model).__name__, model(torch.zeros(2, 4)).shape
    ('CDCModel', torch.Size([2, 5]))
    """
    if spec.get("family") not in _FAMILIES:
        raise ValueError(
            f"spec['family'] must be one of {sorted(_FAMILIES)}; got "
            f"{spec.get('family')!r}."
        )
    tabular = spec["image_size"] is None
    backbone, backbone_dim = make_backbone(
        spec["backbone"],
        in_channels=spec["in_channels"],
        image_size=None if tabular else tuple(spec["image_size"]),
        n_features=spec["n_features"],
        stem=spec["stem"],
        weights=spec["backbone_weights"],
        freeze=spec["freeze_backbone"],
        widths=spec.get("backbone_widths"),
    )
    scaler = InputScaler(
        spec["n_features"] if tabular else spec["in_channels"], image=not tabular
    )
    return _FAMILIES[spec["family"]](backbone, backbone_dim, scaler, **spec["heads"])
