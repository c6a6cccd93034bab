"""Tests for deepclust.heads: layer stacks of algorithms.md A.3 (CD) and B.6 (CDC)."""

import pytest
import torch
from torch import nn

from deepclust.heads import (
    CDCProjectionHead,
    FeaturePredictor,
    InstanceProjector,
    RowStableSigmoid,
)


def _layout(head):
    """(type, bias flag or None, in/num features, out features) for every layer."""
    rows = []
    for layer in head:
        if isinstance(layer, nn.Linear):
            has_bias = layer.bias is not None
            rows.append((nn.Linear, has_bias, layer.in_features, layer.out_features))
        elif isinstance(layer, nn.BatchNorm1d):
            width = layer.num_features
            rows.append((nn.BatchNorm1d, layer.affine, width, width))
        else:
            rows.append((type(layer), None, None, None))
    return rows


def _inputs(n_samples, dim, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n_samples, dim, generator=generator)


@pytest.mark.parametrize("hidden_dim, expected_hidden", [(None, 12), (7, 7)])
def test_instance_projector_layers(hidden_dim, expected_hidden):
    # Check that g is Linear(no bias) - BN - ReLU - Linear(bias), with hidden
    # width rep_dim by default.
    projector = InstanceProjector(12, output_dim=5, hidden_dim=hidden_dim)
    assert _layout(projector) == [
        (nn.Linear, False, 12, expected_hidden),
        (nn.BatchNorm1d, True, expected_hidden, expected_hidden),
        (nn.ReLU, None, None, None),
        (nn.Linear, True, expected_hidden, 5),
    ]
    output = projector(_inputs(4, 12))
    assert output.shape == (4, 5)
    # No normalisation in the network: the instance loss normalises.
    assert not torch.allclose(output.norm(dim=1), torch.ones(4))


def test_feature_predictor_layers():
    # Check that h is Linear(no bias) - BN - ReLU - Linear(no bias) - BN(K) -
    # Sigmoid, with an affine BN right before the sigmoid.
    predictor = FeaturePredictor(5, n_heads=3, hidden_dim=9)
    assert _layout(predictor) == [
        (nn.Linear, False, 5, 9),
        (nn.BatchNorm1d, True, 9, 9),
        (nn.ReLU, None, None, None),
        (nn.Linear, False, 9, 3),
        (nn.BatchNorm1d, True, 3, 3),
        (RowStableSigmoid, None, None, None),
    ]


def test_row_stable_sigmoid_does_not_depend_on_the_row():
    # Check that the head activations are the sigmoid's, rounded to float32, and
    # that a row gets the same values wherever it sits in the batch (float32's
    # vectorised sigmoid computes the SIMD tail of a tensor differently).
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(37, 5, generator=generator) * 4
    out = RowStableSigmoid()(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.sigmoid(x), rtol=0, atol=1e-7)
    for shift in range(1, 9):
        rolled = RowStableSigmoid()(torch.roll(x, shift, dims=0))
        assert torch.equal(torch.roll(rolled, -shift, dims=0), out)


@pytest.mark.parametrize("training", [True, False])
def test_feature_predictor_outputs_are_probabilities(training):
    # Check that head activations lie strictly inside (0, 1), even for large inputs.
    predictor = FeaturePredictor(6, n_heads=4, hidden_dim=8).train(training)
    with torch.no_grad():
        output = predictor(_inputs(10, 6) * 5.0)
    assert output.shape == (10, 4)
    assert ((output > 0) & (output < 1)).all()


def test_feature_predictor_sigmoid_follows_batch_norm():
    # Check that the sigmoid is applied to the BN output: in training mode each
    # head's pre-sigmoid activations are batch-standardised (mean 0 with the
    # default BN init), so the logit of the output has zero batch mean.
    predictor = FeaturePredictor(6, n_heads=4, hidden_dim=8).train()
    with torch.no_grad():
        output = predictor(_inputs(16, 6, seed=3) + 10.0)
    logits = torch.logit(output.double())
    zeros = torch.zeros(4, dtype=torch.float64)
    torch.testing.assert_close(logits.mean(dim=0), zeros, atol=1e-4, rtol=0)
    variance = logits.var(dim=0, unbiased=False)
    torch.testing.assert_close(variance, zeros + 1, atol=1e-3, rtol=0)


@pytest.mark.parametrize("hidden_dim, expected_hidden", [(None, 10), (6, 6)])
def test_cdc_projection_head_layers(hidden_dim, expected_hidden):
    # Check that the CDC head is Linear(no bias) - BN - ReLU - Linear(K + C, bias).
    head = CDCProjectionHead(10, n_clusters=3, instance_dim=4, hidden_dim=hidden_dim)
    assert _layout(head) == [
        (nn.Linear, False, 10, expected_hidden),
        (nn.BatchNorm1d, True, expected_hidden, expected_hidden),
        (nn.ReLU, None, None, None),
        (nn.Linear, True, expected_hidden, 3 + 4),
    ]
    assert head(_inputs(5, 10)).shape == (5, 7)


def test_heads_backpropagate():
    # Check that every parameter of the three heads receives a finite gradient.
    heads = [
        InstanceProjector(6, 4),
        FeaturePredictor(6, n_heads=3, hidden_dim=5),
        CDCProjectionHead(6, n_clusters=2, instance_dim=3),
    ]
    for head in heads:
        head(_inputs(8, 6)).square().sum().backward()
        for name, parameter in head.named_parameters():
            assert parameter.grad is not None, name
            assert torch.isfinite(parameter.grad).all(), name
