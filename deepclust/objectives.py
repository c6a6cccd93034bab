"""Training objectives: one batch of unit-range input to a loss, in pure torch.

An objective holds what training adds around a model and a loss: what makes
two views of every sample (two augmentations of an image, or a feature vector
and one of its nearest neighbours: :class:`NeighborPairs`) and, for CDC, the
optional self-labelling stage. Its ``forward(model, unit, generator, epoch)`` reads top
to bottom as one training step's computation and returns ``(loss, parts)``,
with ``parts`` the detached partial losses recorded in the training history; a
``None`` loss means the batch teaches nothing and is skipped.

The skorch net of the estimators (``ContrastiveNet``) calls the objective as its
criterion; nothing here depends on skorch or scikit-learn.
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepclust import distributed
from deepclust.heads import split_heads
from deepclust.losses import CDCLoss, CDLoss, ConfidenceBasedCE

__all__ = [
    "CDCObjective",
    "CDObjective",
    "NeighborBank",
    "NeighborPairs",
    "nearest_neighbors",
    "two_views",
]
# Rows of the similarity matrix computed at once when mining neighbours.
_MINING_CHUNK = 1024
# Above this many multiply-adds, neighbours are mined in a PCA projection.
_MINING_EXACT_MACS = 2e11
_MINING_PCA_DIM = 128


def two_views(augment, unit: torch.Tensor, generator=None, *, channels_last=False):
    """Two independent augmentations of a batch (no gradient flows into them)."""
    with torch.no_grad():
        views = (augment(unit, generator), augment(unit, generator))
    if channels_last:
        views = tuple(v.contiguous(memory_format=torch.channels_last) for v in views)
    return views


@torch.no_grad()
def nearest_neighbors(
    features: torch.Tensor, n_neighbors: int, *, metric: str = "euclidean"
) -> torch.Tensor:
    """The ``n_neighbors`` nearest other rows of every row, nearest first.

    Parameters
    ----------
    features : Tensor of shape (N, D)
    n_neighbors : int
        At most N - 1.
    metric : {"euclidean", "cosine"}, default="euclidean"

    Returns
    -------
    neighbors : Tensor of shape (N, n_neighbors)
        int64 row indices; a row is never its own neighbour.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[0.0], [1.0], [5.0], [6.0]])
    >>> nearest_neighbors(x, 1).flatten().tolist()
    [1, 0, 3, 2]
    """
    features = features.float()
    if metric == "cosine":
        features = F.normalize(features, dim=1)
    elif metric != "euclidean":
        raise ValueError(f"metric must be 'euclidean' or 'cosine'; got {metric!r}.")
    n_samples, n_dims = features.shape
    if n_samples * n_samples * n_dims > _MINING_EXACT_MACS and n_dims > _MINING_PCA_DIM:
        # Brute force would take minutes: the first principal components keep
        # the neighbourhoods of high-dimensional embeddings well enough.
        centred = features - features.mean(dim=0)
        _, _, basis = torch.pca_lowrank(centred, q=_MINING_PCA_DIM, center=False)
        features = centred @ basis
    squared = (features * features).sum(dim=1)
    neighbors = torch.empty(n_samples, n_neighbors, dtype=torch.long)
    for start in range(0, n_samples, _MINING_CHUNK):
        block = features[start : start + _MINING_CHUNK]
        # Ranking by 2 <a, b> - |b|^2 is ranking by -|a - b|^2.
        score = 2 * block @ features.T - squared
        rows = torch.arange(len(block), device=score.device)
        score[rows, rows + start] = -torch.inf
        neighbors[start : start + len(block)] = score.topk(
            n_neighbors, dim=1
        ).indices.cpu()
    return neighbors.to(features.device)


class NeighborPairs(nn.Module):
    """Two views of feature vectors: each row, and one of its nearest neighbours.

    Feature vectors (the embeddings of a pretrained encoder, or any tabular data)
    have no augmentation that keeps their class the way a crop keeps an image's;
    their nearest neighbours mostly share it, which is what SCAN and TEMI train
    on. The neighbours are mined once, in the space the model receives (the
    unit-scaled rows), and every step draws one of them per row.

    Parameters
    ----------
    rows : Tensor of shape (N, D)
        Every training row, scaled as the model receives them, indexed as the
        training batches index them.
    n_neighbors : int
        Neighbours of each row (at most N - 1).

    Examples
    --------
    >>> import torch
    >>> pairs = NeighborPairs(torch.tensor([[0.0], [1.0], [5.0], [6.0]]), 1)
    >>> first, second = pairs(torch.tensor([[0.0], [5.0]]), None,
    ...                       torch.tensor([0, 2]))
    >>> second.flatten().tolist()
    [1.0, 6.0]
    """

    def __init__(self, rows: torch.Tensor, n_neighbors: int) -> None:
        super().__init__()
        n_neighbors = max(1, min(int(n_neighbors), len(rows) - 1))
        # Rebuilt from the data at every fit: not part of checkpoints.
        self.register_buffer("rows", rows.float(), persistent=False)
        self.register_buffer(
            "neighbors", nearest_neighbors(rows, n_neighbors), persistent=False
        )

    def forward(self, unit, generator, index):
        """The batch itself and, for each row, one of its neighbours."""
        index = index.to(self.neighbors.device)
        choice = torch.randint(
            0,
            self.neighbors.shape[1],
            (len(index),),
            generator=generator,
            device=self.neighbors.device,
        )
        return unit, self.rows[self.neighbors[index, choice]].to(unit.device)


class CDObjective(nn.Module):
    """Contrastive Disentangling: two views -> f, g, h -> L_inst + L_feat - a L_ent.

    Parameters
    ----------
    loss : CDLoss
    augment : callable
        ``augment(unit_batch, generator)`` returns one augmented view.
    channels_last : bool, default=False
        Lay the views out channels-last (faster convolutions on GPUs).
    pairs : NeighborPairs or None, default=None
        Make the two views of feature vectors from neighbours instead of two
        augmentations (needs the batch's positions, ``index``).

    Examples
    --------
    >>> import torch
    >>> from deepclust.augment import FeatureAugment
    >>> from deepclust.models import CDModel, InputScaler
    >>> model = CDModel(torch.nn.Identity(), 4, InputScaler(4, image=False),
    ...                 projection_dim=3, n_heads=2)
    >>> objective = CDObjective(CDLoss(), FeatureAugment())
    >>> loss, parts = objective(model, torch.randn(8, 4))
    >>> sorted(parts)
    ['entropy', 'feature', 'instance']
    """

    def __init__(
        self,
        loss: CDLoss,
        augment,
        channels_last: bool = False,
        pairs: NeighborPairs | None = None,
    ) -> None:
        super().__init__()
        self.loss = loss
        self.augment = augment
        self.channels_last = channels_last
        self.pairs = pairs

    def forward(self, model, unit, generator=None, epoch=0, index=None):
        view1, view2 = _views(self, unit, generator, index)
        z1, y1 = model(view1, ("projection", "heads"))
        z2, y2 = model(view2, ("projection", "heads"))
        return self.loss(z1, z2, y1, y2)


def _views(objective, unit, generator, index):
    """The two views of a batch: neighbour pairs when the objective has them."""
    if objective.pairs is not None and index is not None:
        return objective.pairs(unit, generator, index)
    return two_views(
        objective.augment, unit, generator, channels_last=objective.channels_last
    )


class NeighborBank(nn.Module):
    """Mined nearest neighbours of the training samples and their latest codes.

    SCAN's observation: an image and its nearest neighbours in a contrastive
    embedding almost always show the same class, so a neighbour's cluster
    assignment is a good extra target. The bank keeps, for every training sample,
    its ``n_neighbors`` nearest samples (mined by :meth:`set_neighbors`, cosine
    similarity) and the Sinkhorn codes it last received (:meth:`update`, per
    cluster head); :meth:`targets` gives the mean code of a batch's neighbours,
    at most one epoch old, with no extra forward pass. Everything is kept in
    buffers, so training checkpoints hold it.

    Parameters
    ----------
    n_samples : int
        Number of training samples (indexed 0 .. n_samples - 1).
    n_neighbors : int
    n_heads : int
    n_clusters : int

    Examples
    --------
    >>> import torch
    >>> bank = NeighborBank(4, n_neighbors=1, n_heads=1, n_clusters=2)
    >>> bank.set_neighbors(torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]]))
    >>> bank.neighbors.tolist()
    [[1], [0], [3], [2]]
    >>> bank.update(torch.tensor([1, 3]), torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]))
    >>> bank.targets(torch.tensor([0, 2])).tolist()
    [[[1.0, 0.0], [0.0, 1.0]]]
    """

    def __init__(self, n_samples: int, n_neighbors: int, n_heads: int, n_clusters: int):
        super().__init__()
        self.n_neighbors = min(n_neighbors, max(1, n_samples - 1))
        self.register_buffer(
            "neighbors", torch.zeros(n_samples, self.n_neighbors, dtype=torch.long)
        )
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer(
            "codes", torch.full((n_heads, n_samples, n_clusters), 1.0 / n_clusters)
        )

    @torch.no_grad()
    def set_neighbors(self, features: torch.Tensor) -> None:
        """Mine the neighbours of every sample from its features (N, D), by cosine."""
        self.neighbors.copy_(
            nearest_neighbors(
                features.to(self.codes.device), self.n_neighbors, metric="cosine"
            )
        )
        self.ready.fill_(True)

    @torch.no_grad()
    def update(self, index: torch.Tensor, codes: torch.Tensor) -> None:
        """Remember the codes (H, B, K) of the samples ``index``."""
        self.codes[:, index.to(self.codes.device)] = codes.float()

    @torch.no_grad()
    def targets(self, index: torch.Tensor) -> torch.Tensor:
        """Mean code (H, B, K) of the neighbours of the samples ``index``."""
        neighbors = self.neighbors[index.to(self.codes.device)]
        return self.codes[:, neighbors].mean(dim=2)


class CDCObjective(nn.Module):
    """CDC: two views -> InfoNCE + alpha CE(Sinkhorn codes), then self-labelling.

    Every cluster head of the model is trained (see
    :class:`deepclust.losses.CDCLoss`); with a :class:`NeighborBank` whose
    neighbours are mined, the targets of the cross-entropy also take the codes of
    each sample's neighbours.

    For the first ``n_cluster_epochs`` epochs the loss is the CDC loss. After
    them, when a strong augmentation is given, SCAN's confidence-based
    cross-entropy between the un-augmented batch (the weak view, its logits
    computed without gradient with the model still in train mode) and a
    strongly augmented view is **added** to the CDC loss, for every head. The
    CDC paper allows the cross-entropy to be added or used alone; alone it trains
    on the few confident samples only (3% of the digits at threshold 0.99) and
    the rest of the representation drifts (digits ACC fell from 0.89 to 0.65 in
    20 epochs). Under torch.distributed the pseudo-labels and their class weights
    are those of each process's batch.

    Parameters
    ----------
    loss : CDCLoss
    augment : callable
        Makes the two views of the clustering stage.
    strong_augment : callable or None
        Makes the strong view of self-labelling; None: no self-labelling.
    self_label_loss : ConfidenceBasedCE
    n_cluster_epochs : int
        Epochs before self-labelling starts.
    channels_last : bool, default=False
    neighbors : NeighborBank or None, default=None
        Neighbour targets (used once its neighbours are mined).
    pairs : NeighborPairs or None, default=None
        Make the two views of feature vectors from neighbours.

    Examples
    --------
    >>> import torch
    >>> from deepclust.augment import FeatureAugment
    >>> from deepclust.models import CDCModel, InputScaler
    >>> model = CDCModel(torch.nn.Identity(), 4, InputScaler(4, image=False),
    ...                  n_clusters=2, instance_dim=3)
    >>> objective = CDCObjective(CDCLoss(2), FeatureAugment(), None,
    ...                          ConfidenceBasedCE(), n_cluster_epochs=1)
    >>> loss, parts = objective(model, torch.randn(8, 4))
    >>> sorted(parts)
    ['cluster', 'instance']
    """

    def __init__(
        self,
        loss: CDCLoss,
        augment,
        strong_augment,
        self_label_loss: ConfidenceBasedCE,
        n_cluster_epochs: int,
        channels_last=False,
        neighbors: NeighborBank | None = None,
        pairs: NeighborPairs | None = None,
    ) -> None:
        super().__init__()
        self.loss = loss
        self.augment = augment
        self.strong_augment = strong_augment
        self.self_label_loss = self_label_loss
        self.n_cluster_epochs = n_cluster_epochs
        self.channels_last = channels_last
        self.neighbors = neighbors
        self.pairs = pairs

    def forward(self, model, unit, generator=None, epoch=0, index=None):
        view1, view2 = _views(self, unit, generator, index)
        banked = self.neighbors is not None and index is not None
        targets = (
            self.neighbors.targets(index) if banked and self.neighbors.ready else None
        )
        loss, parts = self.loss(
            model(view1, "all_projections"), model(view2, "all_projections"), targets
        )
        if banked:
            self.neighbors.update(index, self.loss.last_codes)
        if epoch < self.n_cluster_epochs or self.strong_augment is None:
            return loss, parts
        with torch.no_grad():
            weak_logits = self._head_logits(model(unit, "all_projections"))
            strong = self.strong_augment(unit, generator)
        strong_logits = self._head_logits(model(strong, "all_projections"))
        terms = [
            term
            for term in map(self.self_label_loss, weak_logits, strong_logits)
            if term is not None  # a head with no confident sample in this batch
        ]
        if not terms:
            if not distributed.is_distributed():
                return loss, parts
            # Every process must backpropagate through the same graph (synchronised
            # BatchNorm reduces in the backward pass): add a zero term instead.
            terms = [strong_logits.sum() * 0.0]
        self_label = torch.stack(terms).mean()
        return loss + self_label, {**parts, "self_label": self_label.detach()}

    def _head_logits(self, projections):
        """z^c_h / t of every head: (H, B, K)."""
        clusters, _ = split_heads(projections, self.loss.n_clusters, self.loss.n_heads)
        return clusters / self.loss.cluster_temperature
