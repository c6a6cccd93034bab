"""Loss functions of Contrastive Disentangling (CD) and CDC, in pure torch.

Every loss works for any batch size: the NT-Xent masks are built from the batch at
hand, so training needs no ``drop_last`` (the reference CD code precomputes a mask for
a fixed batch size). Similarity logits, entropies and Sinkhorn-Knopp are computed in
float32 even under bf16 autocast, because exp/log of low-precision logits loses the
small differences the losses are made of.

The losses are those of CD [1]_ and CDC [2]_, with SwAV's Sinkhorn-Knopp codes [3]_
and SCAN's confidence-based cross-entropy [4]_.

References
----------
.. [1] Jiang, "Contrastive Disentangling: Fine-grained representation learning through
   multi-level contrastive learning without class priors", arXiv:2409.04867, 2024.
.. [2] Ding et al., "Contrastive Representation Disentanglement for Clustering",
   arXiv:2306.05439, 2023.
.. [3] Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
   Assignments" (SwAV), NeurIPS 2020.
.. [4] Van Gansbeke et al., "SCAN: Learning to Classify Images without Labels",
   ECCV 2020.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from deepclust import distributed
from deepclust.distributed import gather_rows

# CDCLoss reads the projection in the head's layout; re-exported for users.
from deepclust.heads import split_heads, split_projection

__all__ = [
    "BinaryEntropy",
    "CDCLoss",
    "CDLoss",
    "ConfidenceBasedCE",
    "FeatureContrastiveLoss",
    "InstanceContrastiveLoss",
    "binary_entropy",
    "nt_xent",
    "sinkhorn",
    "split_projection",
]


def _check_temperature(value: float, name: str) -> float:
    """``value`` as a float if it is positive and finite (numpy/torch scalars too)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if isinstance(value, bool) or not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}.")
    return number


def nt_xent(
    rows_a: torch.Tensor,
    rows_b: torch.Tensor,
    temperature: float,
    *,
    normalize: bool = True,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """NT-Xent over two aligned sets of rows (CD Eq. 1-4 and 5-8).

    The 2M rows ``cat([rows_a, rows_b])`` are the anchors; the positive of row i is
    the same index in the other set, and the remaining 2M - 2 rows are negatives.

    Parameters
    ----------
    rows_a, rows_b : Tensor of shape (M, D)
        Two views of the same M items.
    temperature : float
        Softmax temperature tau.
    normalize : bool, default=True
        L2-normalise the rows first, so logits are cosine similarities (Eq. 2, 6).
        CDC passes ``False`` because it normalises its two parts separately.
    gather_distributed : bool, default=False
        Under torch.distributed, contrast this process's anchors with the rows of
        every process (the global batch), and weight the local mean so that the
        mean over processes is the global loss (see :mod:`deepclust.distributed`).

    Returns
    -------
    Tensor
        Scalar mean loss over the 2M anchors.

    Examples
    --------
    >>> import torch
    >>> a = torch.eye(4)
    >>> round(float(nt_xent(a, a, temperature=0.5)), 4)
    0.5944
    """
    return _nt_xent(
        rows_a,
        rows_b,
        _check_temperature(temperature, "temperature"),
        normalize=normalize,
        gather_distributed=gather_distributed,
    )


def _nt_xent(rows_a, rows_b, temperature, *, normalize=True, gather_distributed=False):
    # The loss modules validated their temperature once, when built.
    with torch.autocast(device_type=rows_a.device.type, enabled=False):
        rows_a, rows_b = rows_a.float(), rows_b.float()
        if normalize:
            rows_a, rows_b = F.normalize(rows_a, dim=1), F.normalize(rows_b, dim=1)
        anchors, candidates, offset = _paired_rows(rows_a, rows_b, gather_distributed)
        return _contrastive_loss(
            anchors @ candidates.T, offset, temperature, gather_distributed
        )


def _paired_rows(rows_a, rows_b, gather_distributed):
    """This process's anchors, the candidates (all processes' rows) and its offset.

    Rows are indexed by their first axis; anchors are ``cat([rows_a, rows_b])``,
    candidates the same over the global batch, and this process's rows are the
    global rows ``offset .. offset + n_local`` of each view.
    """
    anchors = torch.cat([rows_a, rows_b], dim=0)
    if not gather_distributed:
        return anchors, anchors, 0
    all_a, sizes = gather_rows(rows_a)
    all_b = gather_rows(rows_b)[0]
    return anchors, torch.cat([all_a, all_b], dim=0), sum(sizes[: distributed.rank()])


def _contrastive_loss(similarity, offset, temperature, gather_distributed):
    """NT-Xent from similarities (..., 2n anchors, 2N candidates) of paired rows.

    Returns the mean over the anchors, one value per leading index (a scalar for
    2-D similarities), weighted under torch.distributed so that the mean over
    processes is the global-batch loss.
    """
    n_local, n_items = similarity.shape[-2] // 2, similarity.shape[-1] // 2
    device = similarity.device
    local = torch.arange(n_local, device=device) + offset
    own = torch.cat([local, local + n_items])
    logits = similarity / temperature
    # Excluding self-similarity with -inf keeps exactly the k != i terms of Eq. 3.
    logits[..., torch.arange(2 * n_local, device=device), own] = float("-inf")
    positives = torch.cat([local + n_items, local])
    loss = (
        F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            positives.repeat(logits[..., 0, 0].numel()),
            reduction="none",
        )
        .view(*logits.shape[:-2], 2 * n_local)
        .mean(dim=-1)
    )
    if gather_distributed:
        loss = loss * distributed.local_weight(n_local, device)
    return loss


class InstanceContrastiveLoss(nn.Module):
    """Instance-level NT-Xent of CD (Eq. 1-4) on projector outputs.

    Parameters
    ----------
    temperature : float, default=0.5
        tau_inst of the paper.
    gather_distributed : bool, default=False
        Contrast with the projections of every process (see :func:`nt_xent`).
    """

    def __init__(
        self, temperature: float = 0.5, gather_distributed: bool = False
    ) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature, "temperature")
        self.gather_distributed = bool(gather_distributed)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """Loss between projections ``z1``, ``z2`` of shape (N, d)."""
        return _nt_xent(
            z1, z2, self.temperature, gather_distributed=self.gather_distributed
        )


class FeatureContrastiveLoss(nn.Module):
    """Feature-level NT-Xent of CD (Eq. 5-8): heads are the contrasted items.

    The head activations of each view, (N, K), are transposed so that the 2K rows
    are heads described by their activations over the batch.

    Parameters
    ----------
    temperature : float, default=1.0
        tau_feat of the paper.
    gather_distributed : bool, default=False
        Describe each head by its activations over the batches of every process
        (the global batch); every process then computes the same loss.
    """

    def __init__(
        self, temperature: float = 1.0, gather_distributed: bool = False
    ) -> None:
        super().__init__()
        self.temperature = _check_temperature(temperature, "temperature")
        self.gather_distributed = bool(gather_distributed)

    def forward(self, y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
        """Loss between head activations ``y1``, ``y2`` of shape (N, K)."""
        if self.gather_distributed:
            y1, y2 = gather_rows(y1)[0], gather_rows(y2)[0]
        return _nt_xent(y1.T, y2.T, self.temperature)


def binary_entropy(probabilities: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Normalised binary entropy (CD Eq. 9-10), averaged over all entries.

    Computed as in the reference code: ``-p log(p + eps) - (1 - p) log(1 - p + eps)``
    in nats, divided by ln 2 so that the maximum (all p = 0.5) is 1. The mean over
    all (head, sample) entries equals Eq. 10's mean over heads of Eq. 9.

    Examples
    --------
    >>> import torch
    >>> float(binary_entropy(torch.full((3, 4), 0.5)))
    1.0
    """
    with torch.autocast(device_type=probabilities.device.type, enabled=False):
        p = probabilities.float()
        entropy = -p * torch.log(p + eps) - (1 - p) * torch.log(1 - p + eps)
        return entropy.mean() / math.log(2)


class BinaryEntropy(nn.Module):
    """Module form of :func:`binary_entropy` over both views' head activations.

    Parameters
    ----------
    gather_distributed : bool, default=False
        Average over the activations of every process (the global batch).
    """

    def __init__(self, gather_distributed: bool = False) -> None:
        super().__init__()
        self.gather_distributed = bool(gather_distributed)

    def forward(self, y1: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
        """Mean normalised entropy of the stacked (2K, N) activation matrix."""
        activations = torch.cat([y1, y2], dim=0)
        if self.gather_distributed:
            activations = gather_rows(activations)[0]
        return binary_entropy(activations)


class CDLoss(nn.Module):
    """Total CD loss: L_inst + L_feat - alpha * L_entropy (CD Eq. 12).

    The loss can be negative because the entropy term (at most 1) is subtracted.

    Parameters
    ----------
    instance_temperature : float, default=0.5
    feature_temperature : float, default=1.0
    entropy_weight : float, default=1.0
        alpha; the reference code hard-codes 1.
    gather_distributed : bool, default=False
        Under torch.distributed, compute every term over the global batch of all
        processes (see :mod:`deepclust.distributed`).

    Examples
    --------
    >>> import torch
    >>> loss = CDLoss()
    >>> z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    >>> y1, y2 = torch.rand(8, 4), torch.rand(8, 4)
    >>> total, parts = loss(z1, z2, y1, y2)
    >>> sorted(parts)
    ['entropy', 'feature', 'instance']
    """

    def __init__(
        self,
        instance_temperature: float = 0.5,
        feature_temperature: float = 1.0,
        entropy_weight: float = 1.0,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.instance_loss = InstanceContrastiveLoss(
            _check_temperature(instance_temperature, "instance_temperature"),
            gather_distributed,
        )
        self.feature_loss = FeatureContrastiveLoss(
            _check_temperature(feature_temperature, "feature_temperature"),
            gather_distributed,
        )
        self.entropy = BinaryEntropy(gather_distributed)
        self.entropy_weight = float(entropy_weight)

    def forward(
        self, z1: torch.Tensor, z2: torch.Tensor, y1: torch.Tensor, y2: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the total loss and its detached parts."""
        instance = self.instance_loss(z1, z2)
        feature = self.feature_loss(y1, y2)
        entropy = self.entropy(y1, y2)
        total = instance + feature - self.entropy_weight * entropy
        parts = {"instance": instance, "feature": feature, "entropy": entropy}
        return total, {k: v.detach() for k, v in parts.items()}


@torch.no_grad()
def sinkhorn(
    scores: torch.Tensor,
    epsilon: float = 0.05,
    n_iterations: int = 3,
    *,
    gather_distributed: bool = False,
) -> torch.Tensor:
    """Equipartition soft assignments by Sinkhorn-Knopp (SwAV form, log domain).

    Solves CDC Eq. 6 for a batch: Q = Diag(u) exp(scores / epsilon) Diag(v) with
    every cluster receiving 1/K of the mass and every sample 1/B. The iterations are
    SwAV's (normalise rows, then columns, ``n_iterations`` times), run on log Q with
    ``logsumexp`` so that any finite input scale stays finite (SwAV exponentiates
    directly, which overflows for unbounded logits). Works for any B, also B < K.

    Parameters
    ----------
    scores : Tensor of shape (..., B, K)
        Cluster scores of B samples (for each leading index, e.g. each cluster
        head); treated as constants (no gradient).
    epsilon : float, default=0.05
        Entropic regularisation; smaller means harder assignments.
    n_iterations : int, default=3
    gather_distributed : bool, default=False
        Under torch.distributed, balance the clusters over the global batch of
        all processes (SwAV does the same with all-reduced marginals) and return
        this process's rows of the global codes.

    Returns
    -------
    Tensor of shape (..., B, K)
        Soft codes; each row sums to 1.

    Examples
    --------
    >>> import torch
    >>> q = sinkhorn(torch.randn(6, 3))
    >>> torch.allclose(q.sum(dim=1), torch.ones(6))
    True
    """
    if n_iterations < 1:
        raise ValueError(f"n_iterations must be >= 1, got {n_iterations}.")
    epsilon = _check_temperature(epsilon, "epsilon")
    return _sinkhorn(scores, epsilon, n_iterations, gather_distributed)


@torch.no_grad()
def _sinkhorn(scores, epsilon, n_iterations, gather_distributed=False):
    # CDCLoss validated epsilon and the iterations once, when built.
    if gather_distributed and distributed.is_distributed():
        # The scores of a batch are tiny next to the network: solving the global
        # problem on every process equals the single-process result exactly.
        all_scores, sizes = gather_rows(scores.detach().movedim(-2, 0))
        start = sum(sizes[: distributed.rank()])
        codes = _sinkhorn(all_scores.movedim(0, -2), epsilon, n_iterations)
        return codes[..., start : start + scores.shape[-2], :]
    with torch.autocast(device_type=scores.device.type, enabled=False):
        n_samples, n_clusters = scores.shape[-2:]
        log_q = scores.detach().float().transpose(-1, -2) / epsilon  # (..., K, B)
        log_q = log_q - torch.logsumexp(log_q.flatten(-2), dim=-1)[..., None, None]
        for _ in range(n_iterations):
            log_q = log_q - torch.logsumexp(log_q, dim=-1, keepdim=True)
            log_q = log_q - math.log(n_clusters)
            log_q = log_q - torch.logsumexp(log_q, dim=-2, keepdim=True)
            log_q = log_q - math.log(n_samples)
        return (log_q + math.log(n_samples)).exp().transpose(-1, -2)


class CDCLoss(nn.Module):
    """CDC loss: InfoNCE on [z^c, z^n] + alpha * CE(Sinkhorn codes, softmax(z^c/t)).

    The projection's first ``n_clusters`` columns are the cluster part z^c, the rest
    the instance part z^n; each is L2-normalised separately and the concatenation is
    **not** re-normalised, so the similarity is s = s^c + s^n and
    exp(s/tau) = exp(s^c/tau) * exp(s^n/tau): the factorisation behind CDC Eq. 2-3,
    where exp((s^c_ik - s^c_ii)/tau) acts as a learnt weight on each negative.
    Re-normalising would halve both similarities (s/2) and so silently double tau.

    With ``n_heads`` H > 1 the projection holds H cluster parts before the shared
    instance part (see :class:`deepclust.heads.CDCProjectionHead`); each head h
    has its own loss with s = s^c_h + s^n, and the total is their mean, so one
    backbone trains H clusterings at once (SCAN's multiple heads); the part
    ``cluster_heads`` (one cross-entropy per head) tells which clusters best.

    Parameters
    ----------
    n_clusters : int
    temperature : float, default=0.15
        tau of the InfoNCE term (0.4 for ImageNet-style settings in the paper).
    cluster_temperature : float, default=0.1
        t in softmax(z^c / t).
    cluster_weight : float, default=5.0
        alpha.
    sinkhorn_epsilon : float, default=0.05
    sinkhorn_iterations : int, default=3
    swapped : bool, default=True
        Use view 1's codes as targets for view 2's predictions and vice versa
        (SwAV's swapped prediction); ``False`` uses each view's own codes.
    gather_distributed : bool, default=False
        Under torch.distributed, contrast with the global batch of all processes
        and balance the Sinkhorn codes over it (see :mod:`deepclust.distributed`).
    n_heads : int, default=1
        Number H of cluster heads in the projection.
    neighbor_weight : float, default=0.0
        Weight w of ``neighbor_targets`` in the targets of the cross-entropy:
        (1 - w) * codes + w * neighbor_targets.

    Attributes
    ----------
    last_codes : Tensor of shape (H, B, K) or None
        Sinkhorn codes of the last call, averaged over the two views (detached),
        for memory banks such as :class:`deepclust.objectives.NeighborBank`.

    Examples
    --------
    >>> import torch
    >>> loss = CDCLoss(n_clusters=3)
    >>> total, parts = loss(torch.randn(8, 3 + 5), torch.randn(8, 3 + 5))
    >>> sorted(parts)
    ['cluster', 'instance']
    >>> total, parts = CDCLoss(3, n_heads=2)(torch.randn(8, 6 + 5),
    ...                                      torch.randn(8, 6 + 5))
    >>> sorted(parts), tuple(parts["cluster_heads"].shape)
    (['cluster', 'cluster_heads', 'instance'], (2,))
    """

    def __init__(
        self,
        n_clusters: int,
        temperature: float = 0.15,
        cluster_temperature: float = 0.1,
        cluster_weight: float = 5.0,
        sinkhorn_epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        swapped: bool = True,
        gather_distributed: bool = False,
        n_heads: int = 1,
        neighbor_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if int(n_clusters) != n_clusters or n_clusters < 2:
            raise ValueError(f"n_clusters must be an integer >= 2, got {n_clusters!r}.")
        if int(sinkhorn_iterations) != sinkhorn_iterations or sinkhorn_iterations < 1:
            raise ValueError(
                "sinkhorn_iterations must be an integer >= 1, got "
                f"{sinkhorn_iterations!r}."
            )
        if int(n_heads) != n_heads or n_heads < 1:
            raise ValueError(f"n_heads must be an integer >= 1, got {n_heads!r}.")
        if not 0.0 <= neighbor_weight <= 1.0:
            raise ValueError(
                f"neighbor_weight must be in [0, 1], got {neighbor_weight!r}."
            )
        self.n_clusters = int(n_clusters)
        self.temperature = _check_temperature(temperature, "temperature")
        self.cluster_temperature = _check_temperature(
            cluster_temperature, "cluster_temperature"
        )
        self.cluster_weight = float(cluster_weight)
        self.sinkhorn_epsilon = _check_temperature(sinkhorn_epsilon, "sinkhorn_epsilon")
        self.sinkhorn_iterations = int(sinkhorn_iterations)
        self.swapped = bool(swapped)
        self.gather_distributed = bool(gather_distributed)
        self.n_heads = int(n_heads)
        self.neighbor_weight = float(neighbor_weight)
        self.last_codes = None

    def cluster_cross_entropy(
        self, z_cluster: torch.Tensor, codes: torch.Tensor
    ) -> torch.Tensor:
        """CDC Eq. 7: -sum_k q_k log softmax(z^c / t)_k, averaged over samples.

        For (..., B, K) inputs, one mean per leading index.
        """
        log_p = F.log_softmax(z_cluster / self.cluster_temperature, dim=-1)
        return -(codes * log_p).sum(dim=-1).mean(dim=-1)

    def forward(
        self,
        projection1: torch.Tensor,
        projection2: torch.Tensor,
        neighbor_targets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return the total loss and its detached parts for two (B, H K + C) views.

        ``neighbor_targets`` of shape (H, B, K), when given, are mixed into the
        cross-entropy targets with weight ``neighbor_weight``.
        """
        width = self.n_heads * self.n_clusters
        if projection1.shape[1] <= width:
            raise ValueError(
                f"The projection has {projection1.shape[1]} columns; it needs more "
                f"than n_heads * n_clusters = {width} (cluster parts plus instance "
                "part)."
            )
        gather = self.gather_distributed
        with torch.autocast(device_type=projection1.device.type, enabled=False):
            zc1, zn1 = split_heads(projection1, self.n_clusters, self.n_heads)
            zc2, zn2 = split_heads(projection2, self.n_clusters, self.n_heads)
            # s_h = s^n + s^c_h for every head h: (H, 2n anchors, 2N candidates).
            anchors_n, candidates_n, offset = _paired_rows(zn1, zn2, gather)
            anchors_c, candidates_c, _ = _paired_rows(
                zc1.transpose(0, 1), zc2.transpose(0, 1), gather
            )
            similarity = anchors_n @ candidates_n.T + torch.einsum(
                "ahk,chk->hac", anchors_c, candidates_c
            )
            instance = _contrastive_loss(similarity, offset, self.temperature, gather)
            codes1, codes2 = (
                _sinkhorn(zc, self.sinkhorn_epsilon, self.sinkhorn_iterations,
                         gather_distributed=gather)
                for zc in (zc1, zc2)
            )  # fmt: skip
            self.last_codes = 0.5 * (codes1 + codes2)
            if self.swapped:
                codes1, codes2 = codes2, codes1
            if neighbor_targets is not None:
                weight = self.neighbor_weight
                codes1 = (1 - weight) * codes1 + weight * neighbor_targets
                codes2 = (1 - weight) * codes2 + weight * neighbor_targets
            cluster = 0.5 * (
                self.cluster_cross_entropy(zc1, codes1)
                + self.cluster_cross_entropy(zc2, codes2)
            )
            if gather:  # a mean over this process's samples: see local_weight
                cluster = cluster * distributed.local_weight(zc1.shape[1], zc1.device)
            total = (instance + self.cluster_weight * cluster).mean()
        parts = {"instance": instance.mean(), "cluster": cluster.mean()}
        if self.n_heads > 1:
            parts["cluster_heads"] = cluster
        return total, {name: value.detach() for name, value in parts.items()}


class ConfidenceBasedCE(nn.Module):
    """SCAN's self-labelling loss: class-balanced CE on confident pseudo-labels.

    Samples whose weak-view probability exceeds ``threshold`` (strictly) get their
    argmax as a pseudo-label; the strong view's logits are trained towards it, with
    class weights n / count_c over the confident samples (classes absent from them
    keep weight 1). A batch without confident samples returns ``None`` so that the
    caller can skip it (SCAN raises an exception instead).

    Parameters
    ----------
    threshold : float, default=0.99
    balance_classes : bool, default=True

    Examples
    --------
    >>> import torch
    >>> weak = torch.tensor([[10.0, 0.0], [0.0, 0.1]])
    >>> strong = torch.zeros(2, 2)
    >>> round(float(ConfidenceBasedCE()(weak, strong)), 4)
    0.6931
    """

    def __init__(self, threshold: float = 0.99, balance_classes: bool = True) -> None:
        super().__init__()
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold!r}.")
        self.threshold = float(threshold)
        self.balance_classes = bool(balance_classes)

    def targets(
        self, weak_logits: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pseudo-labels, confidence mask and class weights from weak-view logits."""
        with torch.no_grad():
            probabilities = F.softmax(weak_logits.detach().float(), dim=1)
            confidence, labels = probabilities.max(dim=1)
            mask = confidence > self.threshold
            weights = torch.ones(weak_logits.shape[1], device=weak_logits.device)
            if self.balance_classes and mask.any():
                classes, counts = labels[mask].unique(return_counts=True)
                weights[classes] = mask.sum() / counts.float()
        return labels, mask, weights

    def forward(
        self, weak_logits: torch.Tensor, strong_logits: torch.Tensor
    ) -> torch.Tensor | None:
        """Weighted mean CE over confident samples, or ``None`` if there are none."""
        labels, mask, weights = self.targets(weak_logits)
        if not mask.any():
            return None
        with torch.autocast(device_type=strong_logits.device.type, enabled=False):
            return F.cross_entropy(
                strong_logits[mask].float(), labels[mask], weight=weights
            )
