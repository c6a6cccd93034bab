"""Projection heads of the CD and CDC models, in pure torch.

CD stacks three parts, f -> g -> h (algorithms.md A.3): the backbone f, the instance
projector g whose output feeds the instance loss, and the feature predictor h that is
applied to g's raw output (not to the backbone) and ends in BatchNorm + sigmoid.
CDC has a single MLP head whose output is split into a cluster part and an instance
part by the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "CDCProjectionHead",
    "FeaturePredictor",
    "InstanceProjector",
    "RowStableSigmoid",
    "split_heads",
    "split_projection",
]


class InstanceProjector(nn.Sequential):
    """CD's instance projector g: Linear(no bias) - BN - ReLU - Linear.

    Parameters
    ----------
    input_dim : int
        Backbone output dimension (rep_dim).
    output_dim : int, default=128
        Projection dimension (``hidden_dim`` of the reference code).
    hidden_dim : int, optional
        Width of the hidden layer; the reference uses ``input_dim``.

    Examples
    --------
    >>> import torch
    >>> InstanceProjector(32, 8)(torch.randn(4, 32)).shape
    torch.Size([4, 8])
    """

    def __init__(
        self, input_dim: int, output_dim: int = 128, hidden_dim: int | None = None
    ) -> None:
        hidden_dim = hidden_dim or input_dim
        super().__init__(
            nn.Linear(input_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, output_dim),
        )


class RowStableSigmoid(nn.Module):
    """Sigmoid computed in float64 and rounded back to the input's dtype.

    torch's vectorised float32 sigmoid computes the last elements of a tensor
    (those that do not fill a SIMD register) on another code path, so an
    activation could change by one unit in the last place with the position of
    its row in the batch; in float64 that difference disappears when rounding,
    and ``transform`` gives every sample the same values whatever its row.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x.double()).to(x.dtype)


class FeaturePredictor(nn.Sequential):
    """CD's feature predictor h: K sigmoid feature heads on top of g's output.

    Linear(no bias) - BN - ReLU - Linear(no bias) - BN(K) - Sigmoid, as in the
    reference code: the affine BatchNorm right before the sigmoid keeps every head
    centred near 0.5 on the batch, which the entropy term rewards.

    Parameters
    ----------
    input_dim : int
        Dimension of the instance projection z.
    n_heads : int, default=128
        K, the number of feature heads.
    hidden_dim : int, default=512
        Width of the hidden layer (rep_dim in the reference code).

    Examples
    --------
    >>> import torch
    >>> out = FeaturePredictor(8, n_heads=5, hidden_dim=16)(torch.randn(4, 8))
    >>> out.shape, bool(((out > 0) & (out < 1)).all())
    (torch.Size([4, 5]), True)
    """

    def __init__(
        self, input_dim: int, n_heads: int = 128, hidden_dim: int = 512
    ) -> None:
        super().__init__(
            nn.Linear(input_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, n_heads, bias=False),
            nn.BatchNorm1d(n_heads),
            RowStableSigmoid(),
        )


class CDCProjectionHead(nn.Sequential):
    """CDC's MLP projection head: Linear(no bias) - BN - ReLU - Linear(H K + C).

    The output holds ``n_heads`` cluster parts z^c_h of ``n_clusters`` logits each,
    then the instance part z^n of ``instance_dim`` values (all normalised later, in
    the loss and at inference). The paper uses one head, the SimCLR/MoCo v2
    two-layer head (lightly's SimCLRProjectionHead for the small datasets); several
    heads share the hidden layer and the instance part, so each head h with z^n is
    exactly such a head, and they cost one wider output layer.

    Parameters
    ----------
    input_dim : int
    n_clusters : int
    instance_dim : int, default=128
    hidden_dim : int, optional
        Defaults to ``input_dim``.
    n_heads : int, default=1
        Number H of cluster heads.

    Examples
    --------
    >>> import torch
    >>> CDCProjectionHead(32, n_clusters=3, instance_dim=8)(torch.randn(4, 32)).shape
    torch.Size([4, 11])
    >>> CDCProjectionHead(32, n_clusters=3, instance_dim=8, n_heads=2)(
    ...     torch.randn(4, 32)).shape
    torch.Size([4, 14])
    """

    def __init__(
        self,
        input_dim: int,
        n_clusters: int,
        instance_dim: int = 128,
        hidden_dim: int | None = None,
        n_heads: int = 1,
    ) -> None:
        hidden_dim = hidden_dim or input_dim
        super().__init__(
            nn.Linear(input_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, n_heads * n_clusters + instance_dim),
        )
        self.n_clusters = n_clusters
        self.n_heads = n_heads
        self.instance_dim = instance_dim

    @property
    def output_layer(self) -> nn.Linear:
        """The last layer, whose rows are the heads' and the instance part's."""
        return self[-1]

    def hidden(self, embedding: torch.Tensor) -> torch.Tensor:
        """The shared hidden layer's output, which every head's rows read."""
        for layer in list(self)[:-1]:
            embedding = layer(embedding)
        return embedding

    @torch.no_grad()
    def set_first_head(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Replace head 0's rows of the last layer: (K, hidden) and (K,).

        Examples
        --------
        >>> import torch
        >>> head = CDCProjectionHead(4, n_clusters=2, instance_dim=3, n_heads=2)
        >>> head.set_first_head(torch.zeros(2, 4), torch.tensor([1.0, 2.0]))
        >>> head.output_layer.bias[:2].tolist()
        [1.0, 2.0]
        """
        layer, k = self.output_layer, self.n_clusters
        layer.weight[:k] = weight.to(layer.weight)
        layer.bias[:k] = bias.to(layer.bias)

    def first_head(self, projections: torch.Tensor) -> torch.Tensor:
        """The projection of head 0 with the shared instance part: (B, K + C).

        Examples
        --------
        >>> import torch
        >>> head = CDCProjectionHead(4, n_clusters=2, instance_dim=3, n_heads=2)
        >>> head.first_head(torch.arange(7.0)[None]).tolist()
        [[0.0, 1.0, 4.0, 5.0, 6.0]]
        """
        k = self.n_clusters
        return torch.cat([projections[:, :k], projections[:, self.n_heads * k :]], 1)

    @torch.no_grad()
    def swap_heads(self, index: int) -> None:
        """Make head ``index`` head 0 by swapping their rows of the last layer.

        The layer keeps its shape, so saved weights keep their names.
        """
        if not 0 <= index < self.n_heads:
            raise ValueError(f"index must be in [0, {self.n_heads}); got {index!r}.")
        k, layer = self.n_clusters, self.output_layer
        order = torch.arange(layer.out_features, device=layer.weight.device)
        order[:k], order[index * k : (index + 1) * k] = (
            order[index * k : (index + 1) * k].clone(),
            order[:k].clone(),
        )
        layer.weight.copy_(layer.weight[order])
        layer.bias.copy_(layer.bias[order])


def split_heads(
    projection: torch.Tensor, n_clusters: int, n_heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every head's normalised cluster part (H, B, K) and the instance part (B, C).

    Examples
    --------
    >>> import torch
    >>> zc, zn = split_heads(torch.randn(4, 2 * 3 + 5), n_clusters=3, n_heads=2)
    >>> zc.shape, zn.shape
    (torch.Size([2, 4, 3]), torch.Size([4, 5]))
    """
    projection = projection.float()
    width = n_heads * n_clusters
    clusters = projection[:, :width].unflatten(1, (n_heads, n_clusters))
    return (
        F.normalize(clusters.transpose(0, 1), dim=-1),
        F.normalize(projection[:, width:], dim=1),
    )


def split_projection(
    projection: torch.Tensor, n_clusters: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """CDC's cluster part z^c (first ``n_clusters`` columns) and instance part z^n.

    Each part is L2-normalised on its own, so that s^c and s^n are both cosines
    bounded in [-1, 1] (the paper's training diverges without this normalisation).

    Examples
    --------
    >>> import torch
    >>> zc, zn = split_projection(torch.randn(4, 3 + 5), 3)
    >>> zc.shape, zn.shape
    (torch.Size([4, 3]), torch.Size([4, 5]))
    """
    projection = projection.float()
    return (
        F.normalize(projection[:, :n_clusters], dim=1),
        F.normalize(projection[:, n_clusters:], dim=1),
    )
