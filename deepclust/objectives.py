"""Training objectives: one batch of unit-range input to a loss, in pure torch.

An objective holds what training adds around a model and a loss: the
augmentation that makes two views of every image and, for CDC, the optional
self-labelling stage. Its ``forward(model, unit, generator, epoch)`` reads top
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
from torch import nn

from deepclust import distributed
from deepclust.losses import CDCLoss, CDLoss, ConfidenceBasedCE

__all__ = ["CDCObjective", "CDObjective", "two_views"]


def two_views(augment, unit: torch.Tensor, generator=None, *, channels_last=False):
    """Two independent augmentations of a batch (no gradient flows into them)."""
    with torch.no_grad():
        views = (augment(unit, generator), augment(unit, generator))
    if channels_last:
        views = tuple(v.contiguous(memory_format=torch.channels_last) for v in views)
    return views


class CDObjective(nn.Module):
    """Contrastive Disentangling: two views -> f, g, h -> L_inst + L_feat - a L_ent.

    Parameters
    ----------
    loss : CDLoss
    augment : callable
        ``augment(unit_batch, generator)`` returns one augmented view.
    channels_last : bool, default=False
        Lay the views out channels-last (faster convolutions on GPUs).

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

    def __init__(self, loss: CDLoss, augment, channels_last: bool = False) -> None:
        super().__init__()
        self.loss = loss
        self.augment = augment
        self.channels_last = channels_last

    def forward(self, model, unit, generator=None, epoch=0):
        view1, view2 = two_views(
            self.augment, unit, generator, channels_last=self.channels_last
        )
        z1, y1 = model(view1, ("projection", "heads"))
        z2, y2 = model(view2, ("projection", "heads"))
        return self.loss(z1, z2, y1, y2)


class CDCObjective(nn.Module):
    """CDC: two views -> InfoNCE + alpha CE(Sinkhorn codes), then self-labelling.

    For the first ``n_cluster_epochs`` epochs the loss is the CDC loss. After
    them, when a strong augmentation is given, SCAN's confidence-based
    cross-entropy between the un-augmented batch (the weak view, its logits
    computed without gradient with the model still in train mode) and a
    strongly augmented view is **added** to the CDC loss. The CDC paper allows
    the cross-entropy to be added or used alone; alone it trains on the few
    confident samples only (3% of the digits at threshold 0.99) and the rest of
    the representation drifts (digits ACC fell from 0.89 to 0.65 in 20 epochs).
    Under torch.distributed the pseudo-labels and their class weights are those of
    each process's batch.

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
    ) -> None:
        super().__init__()
        self.loss = loss
        self.augment = augment
        self.strong_augment = strong_augment
        self.self_label_loss = self_label_loss
        self.n_cluster_epochs = n_cluster_epochs
        self.channels_last = channels_last

    def forward(self, model, unit, generator=None, epoch=0):
        view1, view2 = two_views(
            self.augment, unit, generator, channels_last=self.channels_last
        )
        loss, parts = self.loss(model(view1, "projection"), model(view2, "projection"))
        if epoch < self.n_cluster_epochs or self.strong_augment is None:
            return loss, parts
        with torch.no_grad():
            weak_logits = model(unit, "logits")
            strong = self.strong_augment(unit, generator)
        strong_logits = model(strong, "logits")
        self_label = self.self_label_loss(weak_logits, strong_logits)
        if self_label is None:  # no confident sample in this batch
            if not distributed.is_distributed():
                return loss, parts
            # Every process must backpropagate through the same graph (synchronised
            # BatchNorm reduces in the backward pass): add a zero term instead.
            self_label = strong_logits.sum() * 0.0
        return loss + self_label, {**parts, "self_label": self_label.detach()}
