"""Tests for deepclust.losses against literal transcriptions of the papers' equations.

The ``_literal_*`` helpers below are deliberately slow: plain Python loops over indices
in float64, written to follow CD Eq. 1-10 (arXiv:2409.04867, section 3), CDC Eq. 2-3
and 7 with Algorithm 1 (arXiv:2306.05439, section 2), SwAV's ``distributed_sinkhorn``
and SCAN's ``ConfidenceBasedCE`` line by line, so that they share no code path with
the vectorised implementations under test.
"""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepclust.losses import (
    BinaryEntropy,
    CDCLoss,
    CDLoss,
    ConfidenceBasedCE,
    FeatureContrastiveLoss,
    InstanceContrastiveLoss,
    binary_entropy,
    nt_xent,
    sinkhorn,
    split_projection,
)

TEMPERATURES = [0.1, 0.5, 1.0, 2.0]
BATCH_SIZES = range(1, 8)
REFERENCE_EPS = 1e-12  # eps inside the logs of the reference CD code


def _randn(*shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


def _rand(*shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=generator, dtype=torch.float64)


def _assert_matches_literal(actual, expected, rtol=1e-5, atol=1e-5):
    """The losses run in float32; the literal value is a float64 Python float."""
    assert actual.dtype == torch.float32
    assert actual.shape == ()
    torch.testing.assert_close(
        actual, torch.tensor(expected, dtype=torch.float32), rtol=rtol, atol=atol
    )


# --------------------------------------------------------------------------------------
# Literal transcriptions
# --------------------------------------------------------------------------------------


def _dot(u, v):
    return sum(a * b for a, b in zip(u, v, strict=True))


def _cosine(u, v):
    """CD Eq. 2 / Eq. 6."""
    return _dot(u, v) / (math.sqrt(_dot(u, u)) * math.sqrt(_dot(v, v)))


def _unit(u):
    norm = math.sqrt(_dot(u, u))
    return [a / norm for a in u]


def _literal_contrastive(items, temperature, similarity):
    """CD Eq. 3-4 (and 7-8): mean over the 2M items of -log softmax at pos(i)."""
    n_total = len(items)
    half = n_total // 2
    total = 0.0
    for i in range(n_total):
        pos = i + half if i < half else i - half
        numerator = math.exp(similarity(items[i], items[pos]) / temperature)
        denominator = 0.0
        for k in range(n_total):
            if k != i:
                denominator += math.exp(similarity(items[i], items[k]) / temperature)
        total += -math.log(numerator / denominator)
    return total / n_total


def _literal_instance_loss(z1, z2, temperature):
    # Eq. 1: z = [z^(1); z^(2)], 2N rows.
    z = z1.tolist() + z2.tolist()
    return _literal_contrastive(z, temperature, _cosine)


def _transpose(matrix):
    n_rows, n_cols = len(matrix), len(matrix[0])
    return [[matrix[j][k] for j in range(n_rows)] for k in range(n_cols)]


def _literal_feature_loss(y1, y2, temperature):
    # Eq. 5: y = [(y^(1))^T; (y^(2))^T], 2K rows of N activations each.
    y = _transpose(y1.tolist()) + _transpose(y2.tolist())
    return _literal_contrastive(y, temperature, _cosine)


def _literal_entropy(y1, y2, eps=REFERENCE_EPS):
    # Eq. 9-10 on the 2K x N matrix of Eq. 5, with the reference code's eps.
    y = _transpose(y1.tolist()) + _transpose(y2.tolist())
    n_samples = len(y[0])
    total = 0.0
    for row in y:
        head_sum = 0.0
        for p in row:
            head_sum += p * math.log(p + eps) + (1 - p) * math.log(1 - p + eps)
        total += -head_sum / (n_samples * math.log(2))
    return total / len(y)


def _literal_split(projection, n_clusters):
    """Algorithm 1 of CDC: normalise z^c = q[:, :K] and z^n = q[:, K:] separately."""
    rows = projection.tolist()
    return (
        [_unit(row[:n_clusters]) for row in rows],
        [_unit(row[n_clusters:]) for row in rows],
    )


def _literal_cdc_infonce_eq2(zc, zn, temperature):
    """CDC Eq. 2 over 2B in-batch anchors, with s_ik = z^c_i.z^c_k + z^n_i.z^n_k."""
    n_total = len(zc)
    half = n_total // 2

    def s(i, k):
        return _dot(zc[i], zc[k]) + _dot(zn[i], zn[k])

    total = 0.0
    for i in range(n_total):
        pos = i + half if i < half else i - half
        positive = math.exp(s(i, pos) / temperature)
        negatives = 0.0
        for k in range(n_total):
            if k not in (i, pos):
                negatives += math.exp(s(i, k) / temperature)
        total += -math.log(positive / (negatives + positive))
    return total / n_total


def _literal_cdc_infonce_eq3(zc, zn, temperature):
    """CDC Eq. 3: negatives weighted by lambda_ik = exp((s^c_ik - s^c_ii) / tau).

    The paper's numerator reads exp(s_ii / tau); dividing Eq. 2 through by
    exp(s^c_ii / tau), which is how Eq. 3 is derived, leaves exp(s^n_ii / tau).
    """
    n_total = len(zc)
    half = n_total // 2
    total = 0.0
    for i in range(n_total):
        pos = i + half if i < half else i - half
        positive_c = _dot(zc[i], zc[pos])
        positive_n = _dot(zn[i], zn[pos])
        weighted_negatives = 0.0
        for k in range(n_total):
            if k not in (i, pos):
                weight = math.exp((_dot(zc[i], zc[k]) - positive_c) / temperature)
                negative_n = math.exp(_dot(zn[i], zn[k]) / temperature)
                weighted_negatives += weight * negative_n
        numerator = math.exp(positive_n / temperature)
        total += -math.log(numerator / (weighted_negatives + numerator))
    return total / n_total


def _literal_swav_sinkhorn(scores, epsilon, n_iterations):
    """SwAV's distributed_sinkhorn on one process, on a list of B rows of K scores."""
    n_samples, n_clusters = len(scores), len(scores[0])
    # Q = exp(scores / epsilon)^T, K x B.
    q = [
        [math.exp(scores[b][k] / epsilon) for b in range(n_samples)]
        for k in range(n_clusters)
    ]
    total = sum(sum(row) for row in q)
    q = [[value / total for value in row] for row in q]
    for _ in range(n_iterations):
        for k in range(n_clusters):
            row_sum = sum(q[k])
            q[k] = [value / row_sum / n_clusters for value in q[k]]
        for b in range(n_samples):
            column_sum = sum(q[k][b] for k in range(n_clusters))
            for k in range(n_clusters):
                q[k][b] = q[k][b] / column_sum / n_samples
    return [[q[k][b] * n_samples for k in range(n_clusters)] for b in range(n_samples)]


def _literal_cluster_ce(zc, codes, cluster_temperature):
    """CDC Eq. 7, -sum_k q_k log softmax(z^c / t)_k, averaged over the samples."""
    total = 0.0
    for row, code in zip(zc, codes, strict=True):
        log_normaliser = math.log(sum(math.exp(v / cluster_temperature) for v in row))
        for k, value in enumerate(row):
            total += -code[k] * (value / cluster_temperature - log_normaliser)
    return total / len(zc)


def _literal_weighted_ce(weak_logits, strong_logits, threshold, balance):
    """SCAN's ConfidenceBasedCE: sum_i w_{y_i} CE_i / sum_i w_{y_i} over confident i."""
    labels, losses = [], []
    for weak, strong in zip(weak_logits.tolist(), strong_logits.tolist(), strict=True):
        normaliser = sum(math.exp(v) for v in weak)
        probabilities = [math.exp(v) / normaliser for v in weak]
        confidence = max(probabilities)
        if confidence > threshold:
            label = probabilities.index(confidence)
            log_normaliser = math.log(sum(math.exp(v) for v in strong))
            labels.append(label)
            losses.append(log_normaliser - strong[label])
    weights = {label: 1.0 for label in labels}
    if balance:
        for label in weights:
            weights[label] = len(labels) / labels.count(label)
    numerator = sum(
        weights[label] * loss for label, loss in zip(labels, losses, strict=True)
    )
    return numerator / sum(weights[label] for label in labels)


# --------------------------------------------------------------------------------------
# CD losses
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n_samples, temperature", list(itertools.product(BATCH_SIZES, TEMPERATURES))
)
def test_instance_loss_matches_eq_1_to_4(n_samples, temperature):
    # Check that the instance loss equals a literal transcription of CD Eq. 1-4.
    z1 = _randn(n_samples, 5, seed=n_samples)
    z2 = _randn(n_samples, 5, seed=100 + n_samples)
    expected = _literal_instance_loss(z1, z2, temperature)
    _assert_matches_literal(InstanceContrastiveLoss(temperature)(z1, z2), expected)
    _assert_matches_literal(nt_xent(z1, z2, temperature), expected)


@pytest.mark.parametrize("n_samples", [1, 3, 5])
def test_instance_loss_is_scale_invariant(n_samples):
    # Check that rows are L2-normalised (Eq. 2) so rescaling any row keeps the loss.
    z1 = _randn(n_samples, 3, seed=1)
    z2 = _randn(n_samples, 3, seed=2)
    scales = torch.arange(1, n_samples + 1, dtype=torch.float64).unsqueeze(1) * 7.0
    loss = InstanceContrastiveLoss(0.5)
    torch.testing.assert_close(loss(z1 * scales, z2 / scales), loss(z1, z2))


@pytest.mark.parametrize(
    "n_samples, n_heads, temperature",
    list(itertools.product(BATCH_SIZES, [1, 3, 5], TEMPERATURES)),
)
def test_feature_loss_matches_eq_5_to_8(n_samples, n_heads, temperature):
    # Check that the feature loss contrasts transposed heads as in CD Eq. 5-8.
    y1 = _rand(n_samples, n_heads, seed=n_samples * 10 + n_heads)
    y2 = _rand(n_samples, n_heads, seed=500 + n_samples * 10 + n_heads)
    expected = _literal_feature_loss(y1, y2, temperature)
    _assert_matches_literal(FeatureContrastiveLoss(temperature)(y1, y2), expected)


def test_feature_loss_contrasts_heads_not_samples():
    # Check that the feature loss differs from an instance loss on the same (N, K)
    # activations, i.e. that heads (columns) are the contrasted items.
    y1, y2 = _rand(6, 4, seed=3), _rand(6, 4, seed=4)
    feature = FeatureContrastiveLoss(0.5)(y1, y2)
    assert not torch.isclose(feature, InstanceContrastiveLoss(0.5)(y1, y2), atol=1e-3)
    _assert_matches_literal(feature, _literal_feature_loss(y1, y2, 0.5))


@pytest.mark.parametrize(
    "n_samples, n_heads", list(itertools.product(BATCH_SIZES, [1, 3, 5]))
)
def test_binary_entropy_matches_eq_9_and_10(n_samples, n_heads):
    # Check that the entropy equals Eq. 9-10 with eps=1e-12 inside the logs, averaged
    # over all 2K x N entries.
    y1 = _rand(n_samples, n_heads, seed=n_samples)
    y2 = _rand(n_samples, n_heads, seed=50 + n_samples)
    expected = _literal_entropy(y1, y2)
    _assert_matches_literal(BinaryEntropy()(y1, y2), expected, rtol=1e-6, atol=1e-6)
    stacked = torch.cat([y1.T, y2.T], dim=0)
    _assert_matches_literal(binary_entropy(stacked), expected, rtol=1e-6, atol=1e-6)


def test_binary_entropy_extremes():
    # Check that the entropy is 1 at p = 0.5, ~0 (and finite, thanks to eps) for
    # saturated outputs, and matches a hand-computed value at p = 0.25.
    half = float(binary_entropy(torch.full((2, 3), 0.5)))
    assert half == pytest.approx(1.0, abs=1e-6)
    saturated = torch.tensor([[0.0, 1.0], [1.0, 0.0]], requires_grad=True)
    value = binary_entropy(saturated)
    assert torch.isfinite(value)
    assert float(value.detach()) == pytest.approx(0.0, abs=1e-9)
    value.backward()
    assert torch.isfinite(saturated.grad).all()
    quarter = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2)
    value = float(binary_entropy(torch.full((1, 1), 0.25)))
    assert value == pytest.approx(quarter, rel=1e-6)


@pytest.mark.parametrize(
    "n_samples, entropy_weight",
    list(itertools.product(BATCH_SIZES, [0.0, 1.0, 2.5])),
)
def test_cd_loss_total_is_eq_12(n_samples, entropy_weight):
    # Check that CDLoss = L_inst + L_feat - alpha * L_entropy with the literal parts.
    z1, z2 = _randn(n_samples, 6, seed=1), _randn(n_samples, 6, seed=2)
    y1, y2 = _rand(n_samples, 3, seed=3), _rand(n_samples, 3, seed=4)
    loss = CDLoss(
        instance_temperature=0.5, feature_temperature=2.0, entropy_weight=entropy_weight
    )
    total, parts = loss(z1, z2, y1, y2)
    instance = _literal_instance_loss(z1, z2, 0.5)
    feature = _literal_feature_loss(y1, y2, 2.0)
    entropy = _literal_entropy(y1, y2)
    assert sorted(parts) == ["entropy", "feature", "instance"]
    _assert_matches_literal(parts["instance"], instance)
    _assert_matches_literal(parts["feature"], feature)
    _assert_matches_literal(parts["entropy"], entropy)
    _assert_matches_literal(total, instance + feature - entropy_weight * entropy)
    assert all(not part.requires_grad for part in parts.values())


def test_cd_loss_gradients_are_finite():
    # Check that CDLoss backpropagates finite gradients into all four inputs.
    inputs = [
        _randn(5, 6, seed=1),
        _randn(5, 6, seed=2),
        _rand(5, 3, seed=3),
        _rand(5, 3, seed=4),
    ]
    for tensor in inputs:
        tensor.requires_grad_(True)
    total, _ = CDLoss()(*inputs)
    total.backward()
    for tensor in inputs:
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()
        assert tensor.grad.abs().sum() > 0


def test_cd_losses_under_bf16_autocast():
    # Check that bf16 inputs under CPU autocast give finite float32 losses and
    # finite gradients, with values close to the float32 ones.
    z1, z2 = _randn(7, 8, seed=1).bfloat16(), _randn(7, 8, seed=2).bfloat16()
    y1, y2 = _rand(7, 5, seed=3).bfloat16(), _rand(7, 5, seed=4).bfloat16()
    for tensor in (z1, z2, y1, y2):
        tensor.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, parts = CDLoss()(z1, z2, y1, y2)
        instance = InstanceContrastiveLoss()(z1, z2)
        feature = FeatureContrastiveLoss()(y1, y2)
        entropy = BinaryEntropy()(y1, y2)
    for value in (total, instance, feature, entropy, *parts.values()):
        assert value.dtype == torch.float32
        assert torch.isfinite(value)
    total.backward()
    for tensor in (z1, z2, y1, y2):
        assert torch.isfinite(tensor.grad).all()
    reference, _ = CDLoss()(z1.float(), z2.float(), y1.float(), y2.float())
    torch.testing.assert_close(total.detach(), reference.detach())


@pytest.mark.parametrize("temperature", [0, 0.0, -0.5, float("nan"), float("inf")])
@pytest.mark.parametrize(
    "loss_class", [InstanceContrastiveLoss, FeatureContrastiveLoss]
)
def test_cd_invalid_temperature(loss_class, temperature):
    # Check that a non-positive or non-finite temperature is rejected by name.
    with pytest.raises(ValueError, match="temperature"):
        loss_class(temperature=temperature)


@pytest.mark.parametrize("name", ["instance_temperature", "feature_temperature"])
def test_cd_loss_invalid_temperature_names_parameter(name):
    # Check that CDLoss names its own parameter in the error for a bad temperature.
    with pytest.raises(ValueError, match=name):
        CDLoss(**{name: 0.0})


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_nt_xent_invalid_temperature(temperature):
    # Check that nt_xent rejects an invalid temperature instead of returning NaN.
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.eye(3), torch.eye(3), temperature)


@pytest.mark.parametrize(
    "temperature", [np.float32(0.5), np.int64(1), torch.tensor(0.5)], ids=repr
)
def test_cd_temperature_accepts_numpy_scalars(temperature):
    # Check that real-valued NumPy / 0-d tensor temperatures are accepted.
    assert InstanceContrastiveLoss(temperature).temperature == pytest.approx(
        float(temperature)
    )


# --------------------------------------------------------------------------------------
# CDC
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_clusters", [1, 3, 5])
def test_split_projection_normalises_parts_separately(n_clusters):
    # Check that z^c and z^n are the separately L2-normalised column blocks.
    projection = _randn(5, n_clusters + 4, seed=n_clusters)
    zc, zn = split_projection(projection, n_clusters)
    literal_c, literal_n = _literal_split(projection, n_clusters)
    assert zc.dtype == zn.dtype == torch.float32
    torch.testing.assert_close(zc, torch.tensor(literal_c, dtype=torch.float32))
    torch.testing.assert_close(zn, torch.tensor(literal_n, dtype=torch.float32))
    torch.testing.assert_close(zc.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(zn.norm(dim=1), torch.ones(5))


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_similarity_factorises_over_split(temperature):
    # Check that exp(s/tau) = exp(s^c/tau) exp(s^n/tau) for s from the split
    # [z^c, z^n], whose self-similarity is 2 (1 if it were re-normalised).
    projection = _randn(6, 3 + 4, seed=7)
    zc, zn = split_projection(projection, 3)
    z = torch.cat([zc, zn], dim=1)
    s, s_c, s_n = z @ z.T, zc @ zc.T, zn @ zn.T
    torch.testing.assert_close(s, s_c + s_n)
    torch.testing.assert_close(
        torch.exp(s / temperature),
        torch.exp(s_c / temperature) * torch.exp(s_n / temperature),
    )
    torch.testing.assert_close(torch.diagonal(s), torch.full((6,), 2.0))


@pytest.mark.parametrize(
    "n_samples, temperature", list(itertools.product([1, 2, 3, 5], TEMPERATURES))
)
def test_cdc_infonce_matches_eq_2_and_3(n_samples, temperature):
    # Check that CDCLoss's InfoNCE part equals CDC Eq. 2 and its lambda-weighted
    # rewriting Eq. 3 over the 2B anchors, on the split (not re-normalised) rows.
    n_clusters = 3
    p1 = _randn(n_samples, n_clusters + 4, seed=n_samples)
    p2 = _randn(n_samples, n_clusters + 4, seed=40 + n_samples)
    zc1, zn1 = _literal_split(p1, n_clusters)
    zc2, zn2 = _literal_split(p2, n_clusters)
    eq2 = _literal_cdc_infonce_eq2(zc1 + zc2, zn1 + zn2, temperature)
    eq3 = _literal_cdc_infonce_eq3(zc1 + zc2, zn1 + zn2, temperature)
    assert eq2 == pytest.approx(eq3, rel=1e-12, abs=1e-12)
    _, parts = CDCLoss(n_clusters, temperature=temperature)(p1, p2)
    _assert_matches_literal(parts["instance"], eq2)


def test_cdc_infonce_is_not_renormalised():
    # Check that the InfoNCE part differs from NT-Xent on the re-normalised
    # concatenation, which would halve the similarities (double tau).
    p1, p2 = _randn(6, 3 + 4, seed=1), _randn(6, 3 + 4, seed=2)
    _, parts = CDCLoss(3, temperature=0.15)(p1, p2)
    z1 = torch.cat(split_projection(p1, 3), dim=1)
    z2 = torch.cat(split_projection(p2, 3), dim=1)
    renormalised = nt_xent(z1, z2, 0.15, normalize=True)
    assert abs(float(parts["instance"]) - float(renormalised)) > 1e-2
    split_rows = nt_xent(z1, z2, 0.15, normalize=False)
    torch.testing.assert_close(parts["instance"], split_rows)


@pytest.mark.parametrize("swapped", [True, False])
@pytest.mark.parametrize(
    "n_samples, cluster_temperature", [(1, 0.1), (3, 0.2), (5, 0.5), (7, 1.0)]
)
def test_cdc_cluster_ce_matches_eq_7(swapped, n_samples, cluster_temperature):
    # Check that the cluster term equals Eq. 7 with literal SwAV Sinkhorn codes on
    # the normalised z^c (Algorithm 1), averaged over both views, swapped or not.
    n_clusters = 4
    p1 = _randn(n_samples, n_clusters + 3, seed=n_samples)
    p2 = _randn(n_samples, n_clusters + 3, seed=70 + n_samples)
    zc1, zn1 = _literal_split(p1, n_clusters)
    zc2, zn2 = _literal_split(p2, n_clusters)
    codes1 = _literal_swav_sinkhorn(zc1, 0.05, 3)
    codes2 = _literal_swav_sinkhorn(zc2, 0.05, 3)
    if swapped:
        codes1, codes2 = codes2, codes1
    cluster = 0.5 * (
        _literal_cluster_ce(zc1, codes1, cluster_temperature)
        + _literal_cluster_ce(zc2, codes2, cluster_temperature)
    )
    instance = _literal_cdc_infonce_eq2(zc1 + zc2, zn1 + zn2, 0.15)
    loss = CDCLoss(
        n_clusters,
        temperature=0.15,
        cluster_temperature=cluster_temperature,
        cluster_weight=2.5,
        swapped=swapped,
    )
    total, parts = loss(p1, p2)
    assert sorted(parts) == ["cluster", "instance"]
    _assert_matches_literal(parts["cluster"], cluster)
    _assert_matches_literal(parts["instance"], instance)
    _assert_matches_literal(total, instance + 2.5 * cluster)


def test_cdc_swapped_changes_cluster_term():
    # Check that swapping the codes between views changes the cluster term.
    p1, p2 = _randn(8, 4 + 3, seed=11), _randn(8, 4 + 3, seed=12)
    _, swapped = CDCLoss(4, swapped=True)(p1, p2)
    _, own = CDCLoss(4, swapped=False)(p1, p2)
    assert abs(float(swapped["cluster"]) - float(own["cluster"])) > 1e-3
    torch.testing.assert_close(swapped["instance"], own["instance"])


def test_cdc_loss_gradients_and_bf16_autocast():
    # Check that CDCLoss gives finite gradients, and a finite float32 loss close to
    # the float32 value for bf16 inputs under CPU autocast.
    p1 = _randn(6, 3 + 5, seed=1).requires_grad_(True)
    p2 = _randn(6, 3 + 5, seed=2).requires_grad_(True)
    total, _ = CDCLoss(3)(p1, p2)
    total.backward()
    assert torch.isfinite(p1.grad).all() and torch.isfinite(p2.grad).all()
    assert p1.grad.abs().sum() > 0
    b1 = p1.detach().bfloat16().requires_grad_(True)
    b2 = p2.detach().bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, parts = CDCLoss(3)(b1, b2)
    assert low.dtype == torch.float32 and torch.isfinite(low)
    assert all(part.dtype == torch.float32 for part in parts.values())
    low.backward()
    assert torch.isfinite(b1.grad.float()).all()
    assert torch.isfinite(b2.grad.float()).all()
    reference, _ = CDCLoss(3)(b1.detach().float(), b2.detach().float())
    torch.testing.assert_close(low.detach(), reference)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"cluster_temperature": 0.0}, "cluster_temperature"),
        ({"cluster_temperature": -2.0}, "cluster_temperature"),
        ({"cluster_temperature": float("nan")}, "cluster_temperature"),
    ],
)
def test_cdc_invalid_temperature(kwargs, name):
    # Check that CDCLoss rejects invalid temperatures, naming the parameter.
    with pytest.raises(ValueError, match=name):
        CDCLoss(3, **kwargs)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"sinkhorn_epsilon": 0.0}, "sinkhorn_epsilon"),
        ({"sinkhorn_iterations": 0}, "sinkhorn_iterations"),
    ],
)
def test_cdc_invalid_sinkhorn_parameters_at_construction(kwargs, name):
    # Check that CDCLoss rejects invalid Sinkhorn settings when it is built.
    with pytest.raises(ValueError, match=name):
        CDCLoss(3, **kwargs)


@pytest.mark.parametrize("n_clusters", [0, -1])
def test_cdc_invalid_n_clusters(n_clusters):
    # Check that a non-positive n_clusters raises a ValueError naming it.
    with pytest.raises(ValueError, match="n_clusters"):
        CDCLoss(n_clusters)


@pytest.mark.parametrize("n_clusters", [7, 9])
def test_cdc_projection_narrower_than_clusters(n_clusters):
    # Check that a projection without instance columns raises a ValueError.
    projection = _randn(4, 7, seed=0)
    with pytest.raises(ValueError, match="n_clusters"):
        CDCLoss(n_clusters)(projection, projection)


# --------------------------------------------------------------------------------------
# Sinkhorn-Knopp
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n_samples, n_clusters, epsilon, n_iterations",
    [
        (1, 3, 0.05, 3),
        (3, 10, 0.05, 3),
        (5, 3, 0.05, 3),
        (7, 4, 0.5, 1),
        (6, 5, 0.05, 10),
    ],
)
def test_sinkhorn_matches_swav(n_samples, n_clusters, epsilon, n_iterations):
    # Check that the log-domain Sinkhorn equals SwAV's literal algorithm on scores
    # in [-1, 1], where SwAV's direct exponentiation is safe.
    scores = _rand(n_samples, n_clusters, seed=n_samples) * 2 - 1
    expected = _literal_swav_sinkhorn(scores.tolist(), epsilon, n_iterations)
    codes = sinkhorn(scores, epsilon=epsilon, n_iterations=n_iterations)
    assert codes.dtype == torch.float32 and codes.shape == (n_samples, n_clusters)
    torch.testing.assert_close(
        codes, torch.tensor(expected, dtype=torch.float32), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(n_samples))


def test_sinkhorn_equipartition_improves_with_iterations():
    # Check that each cluster's mass approaches B / K as iterations grow.
    n_samples, n_clusters = 64, 10
    scores = _rand(n_samples, n_clusters, seed=0) * 2 - 1
    deviations = []
    for n_iterations in [3, 10, 50, 200]:
        codes = sinkhorn(scores, n_iterations=n_iterations)
        torch.testing.assert_close(codes.sum(dim=1), torch.ones(n_samples))
        masses = codes.sum(dim=0)
        deviations.append(float((masses - n_samples / n_clusters).abs().max()))
    assert all(later < earlier for earlier, later in itertools.pairwise(deviations))
    assert deviations[-1] < 1e-3


def test_sinkhorn_fewer_samples_than_clusters():
    # Check that B < K works (rows sum to 1) and that B = 1 gives the uniform
    # code, the only one meeting the equipartition constraint.
    codes = sinkhorn(_rand(3, 10, seed=1) * 2 - 1)
    assert codes.shape == (3, 10)
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(3))
    single = sinkhorn(torch.tensor([[0.9, -0.3, 0.1, 0.5]]))
    torch.testing.assert_close(single, torch.full((1, 4), 0.25))


@pytest.mark.parametrize(
    "scores",
    [
        torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [0.0, 0.0, -1e4]]),
        torch.tensor(
            [[1e4, 1e-6, -3.0], [2e-7, -1e4, 5.0], [1e3, 1e4, -1e-5], [0.1, 0.2, 0.3]]
        ),
    ],
)
def test_sinkhorn_huge_scores_stay_finite(scores):
    # Check that unbounded logits (which overflow SwAV's exp) give finite codes.
    codes = sinkhorn(scores)
    assert torch.isfinite(codes).all()
    assert (codes >= 0).all()
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(scores.shape[0]))


def test_sinkhorn_has_no_gradient():
    # Check that the codes are constants even for an input that requires grad.
    scores = _randn(5, 3, seed=0).requires_grad_(True)
    codes = sinkhorn(scores)
    assert not codes.requires_grad
    assert codes.grad_fn is None


def test_sinkhorn_bf16_autocast():
    # Check that bf16 scores under autocast give float32 codes whose rows sum to 1.
    scores = (_rand(6, 4, seed=2) * 2 - 1).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes = sinkhorn(scores)
    assert codes.dtype == torch.float32
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(6))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"epsilon": 0.0}, "epsilon"),
        ({"epsilon": -0.05}, "epsilon"),
        ({"epsilon": float("nan")}, "epsilon"),
        ({"n_iterations": 0}, "n_iterations"),
    ],
)
def test_sinkhorn_invalid_parameters(kwargs, name):
    # Check that invalid epsilon / n_iterations raise a ValueError naming them.
    with pytest.raises(ValueError, match=name):
        sinkhorn(torch.zeros(3, 2), **kwargs)


# --------------------------------------------------------------------------------------
# SCAN self-labelling
# --------------------------------------------------------------------------------------


def test_confidence_mask_is_strict():
    # Check that a sample whose max probability equals the threshold is not
    # confident, and that it becomes confident just below the threshold.
    weak = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])
    probability = float(F.softmax(weak, dim=1)[0].max())
    assert probability == pytest.approx(0.75)
    _, mask, _ = ConfidenceBasedCE(threshold=probability).targets(weak)
    assert mask.tolist() == [False, False]
    # The step below must be one float32 ulp: the comparison runs in float32.
    below = float(torch.nextafter(torch.tensor(probability), torch.tensor(0.0)))
    _, mask, _ = ConfidenceBasedCE(threshold=below).targets(weak)
    assert mask.tolist() == [True, False]
    # Two equal logits give exactly 0.5, which is not above a 0.5 threshold.
    _, mask, _ = ConfidenceBasedCE(threshold=0.5).targets(torch.zeros(3, 2))
    assert not mask.any()


def test_confidence_targets_class_weights():
    # Check that weights are n / count_c for classes among the confident samples
    # and 1 for the others (class 2 only on an unconfident sample, 3 absent).
    weak = torch.tensor(
        [
            [9.0, 0.0, 0.0, 0.0],
            [9.0, 0.0, 0.0, 0.0],
            [9.0, 0.0, 0.0, 0.0],
            [0.0, 9.0, 0.0, 0.0],
            [0.0, 0.0, 0.5, 0.0],
        ]
    )
    labels, mask, weights = ConfidenceBasedCE(threshold=0.9).targets(weak)
    assert labels.tolist() == [0, 0, 0, 1, 2]
    assert mask.tolist() == [True, True, True, True, False]
    torch.testing.assert_close(weights, torch.tensor([4 / 3, 4.0, 1.0, 1.0]))
    _, _, plain = ConfidenceBasedCE(threshold=0.9, balance_classes=False).targets(weak)
    torch.testing.assert_close(plain, torch.ones(4))


@pytest.mark.parametrize("balance_classes", [True, False])
@pytest.mark.parametrize("n_samples", [1, 3, 5, 7])
def test_confidence_ce_matches_weighted_mean(balance_classes, n_samples):
    # Check that the loss is the literal (weighted) mean CE over confident samples.
    weak = _randn(n_samples, 3, seed=n_samples) * 4
    strong = _randn(n_samples, 3, seed=30 + n_samples)
    # Make the first sample confident so that the batch is never skipped.
    weak[0] = torch.tensor([12.0, 0.0, 0.0], dtype=torch.float64)
    loss = ConfidenceBasedCE(threshold=0.8, balance_classes=balance_classes)
    expected = _literal_weighted_ce(weak, strong, 0.8, balance_classes)
    _assert_matches_literal(loss(weak, strong), expected)


def test_confidence_ce_balanced_differs_from_plain_mean():
    # Check that class balancing changes the loss on an imbalanced batch.
    weak = torch.tensor([[9.0, 0.0], [9.0, 0.0], [9.0, 0.0], [0.0, 9.0]])
    strong = torch.tensor([[2.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, -1.0]])
    balanced = ConfidenceBasedCE(threshold=0.9)(weak, strong)
    plain = ConfidenceBasedCE(threshold=0.9, balance_classes=False)(weak, strong)
    ce = F.cross_entropy(strong, torch.tensor([0, 0, 0, 1]), reduction="none")
    torch.testing.assert_close(plain, ce.mean())
    torch.testing.assert_close(balanced, (ce[:3].sum() * 4 / 3 + ce[3] * 4) / (4 + 4))


def test_confidence_ce_no_confident_sample_returns_none():
    # Check that a batch without any confident sample returns None.
    weak = torch.zeros(4, 3)
    assert ConfidenceBasedCE(threshold=0.5)(weak, torch.randn(4, 3)) is None


def test_confidence_ce_gradients_and_bf16_autocast():
    # Check that gradients reach only the strong logits and that bf16 under
    # autocast gives a finite float32 loss.
    weak = torch.tensor(
        [[9.0, 0.0, 0.0], [0.0, 9.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True
    )
    strong = _randn(3, 3, seed=0).float().requires_grad_(True)
    ConfidenceBasedCE(threshold=0.9)(weak, strong).backward()
    assert weak.grad is None
    assert torch.isfinite(strong.grad).all() and strong.grad[2].abs().sum() == 0
    low = strong.detach().bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = ConfidenceBasedCE(threshold=0.9)(weak.detach().bfloat16(), low)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(low.grad.float()).all()


@pytest.mark.parametrize("threshold", [-0.1, 1.0, 1.5, float("nan")])
def test_confidence_ce_invalid_threshold(threshold):
    # Check that a threshold outside [0, 1) raises a ValueError naming it.
    with pytest.raises(ValueError, match="threshold"):
        ConfidenceBasedCE(threshold=threshold)
