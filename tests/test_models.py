"""Tests for deepclust.models: input scaling, CD's f -> g -> h and CDC's split head."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepclust.heads import CDCProjectionHead, FeaturePredictor, InstanceProjector
from deepclust.models import CDCModel, CDModel, InputScaler


def _rand(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=generator)


def _randn(*shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator)


def _image_cd_model(**kwargs):
    # Flatten of (B, 3, 2, 2) images is a 12-dimensional "backbone".
    return CDModel(nn.Flatten(), 12, InputScaler(3, image=True), **kwargs)


def _image_cdc_model(**kwargs):
    return CDCModel(nn.Flatten(), 12, InputScaler(3, image=True), **kwargs)


# --------------------------------------------------------------------------------------
# InputScaler
# --------------------------------------------------------------------------------------


def test_scaler_defaults_are_identity():
    # Check that a fresh scaler leaves images and rows unchanged.
    images, rows = _randn(2, 3, 4, 4), _randn(5, 6)
    image_scaler, row_scaler = InputScaler(3, image=True), InputScaler(6, image=False)
    round_trip = image_scaler.standardize(image_scaler.to_unit(images))
    torch.testing.assert_close(round_trip, images)
    torch.testing.assert_close(row_scaler.standardize(row_scaler.to_unit(rows)), rows)


def test_scaler_image_maths_per_channel():
    # Check that to_unit = (x - offset) * scale and standardize = (x - mean) / std
    # with per-channel values broadcast over axis 1.
    scaler = InputScaler(3, image=True)
    scaler.offset.copy_(torch.tensor([1.0, 2.0, 3.0]))
    scaler.scale.copy_(torch.tensor([0.5, 2.0, 4.0]))
    scaler.mean.copy_(torch.tensor([0.1, 0.2, 0.3]))
    scaler.std.copy_(torch.tensor([2.0, 0.5, 0.25]))
    x = _randn(2, 3, 2, 5)
    unit, standard = scaler.to_unit(x), scaler.standardize(x)
    for c in range(3):
        expected_unit = (x[:, c] - scaler.offset[c]) * scaler.scale[c]
        torch.testing.assert_close(unit[:, c], expected_unit)
        expected_standard = (x[:, c] - scaler.mean[c]) / scaler.std[c]
        torch.testing.assert_close(standard[:, c], expected_standard)


def test_scaler_tabular_maths_per_feature():
    # Check that the same maths applies per feature to (B, n_features) rows, and
    # that integer or float64 raw input comes out as float32.
    scaler = InputScaler(2, image=False)
    scaler.offset.copy_(torch.tensor([10.0, -1.0]))
    scaler.scale.copy_(torch.tensor([0.1, 3.0]))
    x = torch.tensor([[20, 0], [10, -1]], dtype=torch.int64)
    unit = scaler.to_unit(x)
    assert unit.dtype == torch.float32
    torch.testing.assert_close(unit, torch.tensor([[1.0, 3.0], [0.0, 0.0]]))
    assert scaler.to_unit(x.double()).dtype == torch.float32


def test_set_unit_range_scalar_and_per_channel():
    # Check that [low, high] maps to [0, 1], for a scalar range and per channel.
    scaler = InputScaler(3, image=True)
    scaler.set_unit_range(0.0, 255.0)
    raw = torch.tensor([0.0, 51.0, 255.0]).view(1, 3, 1, 1)
    expected = torch.tensor([0.0, 0.2, 1.0])
    torch.testing.assert_close(scaler.to_unit(raw).flatten(), expected)
    scaler.set_unit_range([0.0, 10.0, -1.0], [1.0, 20.0, 1.0])
    raw = torch.tensor([[0.5, 10.0, 1.0], [1.0, 20.0, -1.0]]).view(2, 3, 1, 1)
    expected = torch.tensor([[0.5, 0.0, 1.0], [1.0, 1.0, 0.0]])
    torch.testing.assert_close(scaler.to_unit(raw).view(2, 3), expected)


@pytest.mark.parametrize("low, high", [(255.0, 0.0), (1.0, 1.0)])
def test_set_unit_range_rejects_empty_range(low, high):
    # Check that high <= low raises a ValueError naming the range.
    with pytest.raises(ValueError, match="high"):
        InputScaler(3, image=True).set_unit_range(low, high)


def test_set_statistics_tabular_unit_step():
    # Check that step='unit' turns tabular rows into z-scores (sample std, ddof=1).
    spread = torch.tensor([1.0, 5.0, 0.1, 2.0])
    data = _randn(9, 4, seed=1) * spread + torch.tensor([0.0, 3.0, -2.0, 9.0])
    scaler = InputScaler(4, image=False)
    scaler.set_statistics(data, step="unit")
    torch.testing.assert_close(scaler.offset, data.mean(dim=0))
    torch.testing.assert_close(scaler.scale, 1.0 / data.std(dim=0, correction=0))
    unit = scaler.to_unit(data)
    torch.testing.assert_close(unit.mean(dim=0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(unit.std(dim=0, correction=0), torch.ones(4))
    # The standardisation step is left untouched.
    torch.testing.assert_close(scaler.mean, torch.zeros(4))
    torch.testing.assert_close(scaler.std, torch.ones(4))


def test_set_statistics_image_standardize_step():
    # Check that step='standardize' fits per-channel mean/std over (B, H, W).
    data = _rand(4, 3, 5, 5, seed=2) * torch.tensor([1.0, 0.5, 0.2]).view(1, 3, 1, 1)
    scaler = InputScaler(3, image=True)
    scaler.set_statistics(data, step="standardize")
    for channel in range(3):
        values = data[:, channel].flatten()
        torch.testing.assert_close(scaler.mean[channel], values.mean())
        torch.testing.assert_close(scaler.std[channel], values.std(correction=0))
    standard = scaler.standardize(data)
    channel_means = standard.mean(dim=(0, 2, 3))
    torch.testing.assert_close(channel_means, torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(standard.std(dim=(0, 2, 3), correction=0), torch.ones(3))
    torch.testing.assert_close(scaler.offset, torch.zeros(3))
    torch.testing.assert_close(scaler.scale, torch.ones(3))


def test_set_statistics_degenerate_data_stays_finite():
    # Check that a constant feature and a single row give finite scaling.
    constant = torch.tensor([[1.0, 2.0], [1.0, 4.0], [1.0, 6.0]])
    scaler = InputScaler(2, image=False)
    scaler.set_statistics(constant, step="unit")
    unit = scaler.to_unit(constant)
    assert torch.isfinite(unit).all()
    torch.testing.assert_close(unit[:, 0], torch.zeros(3))
    single = InputScaler(2, image=False)
    single.set_statistics(torch.tensor([[3.0, -1.0]]), step="unit")
    torch.testing.assert_close(single.scale, torch.ones(2))
    unit_single = single.to_unit(torch.tensor([[3.0, -1.0]]))
    torch.testing.assert_close(unit_single, torch.zeros(1, 2))


def test_set_statistics_rejects_unknown_step():
    # Check that an unknown step raises a ValueError naming the parameter.
    with pytest.raises(ValueError, match="step"):
        InputScaler(2, image=False).set_statistics(torch.ones(3, 2), step="bogus")


def test_scaler_buffers_are_saved_with_models():
    # Check that the scaling travels in the state dict of both models.
    models = [
        _image_cd_model(projection_dim=4, n_heads=3),
        _image_cdc_model(n_clusters=2),
    ]
    for model in models:
        keys = set(model.state_dict())
        for name in ("offset", "scale", "mean", "std"):
            assert f"scaler.{name}" in keys


# --------------------------------------------------------------------------------------
# CDModel
# --------------------------------------------------------------------------------------


def test_cd_model_forward_shapes_and_ranges():
    # Check that forward returns z (B, projection_dim) and y (B, K) in (0, 1).
    model = _image_cd_model(projection_dim=4, n_heads=5)
    z, y = model(_rand(6, 3, 2, 2))
    assert z.shape == (6, 4) and y.shape == (6, 5)
    assert ((y > 0) & (y < 1)).all()


def test_cd_model_heads_match_reference_widths():
    # Check that g's hidden width is rep_dim and h's is rep_dim unless
    # predictor_hidden_dim is given.
    model = _image_cd_model(projection_dim=4, n_heads=5)
    assert isinstance(model.projector, InstanceProjector)
    assert isinstance(model.predictor, FeaturePredictor)
    assert (model.projector[0].in_features, model.projector[0].out_features) == (12, 12)
    assert (model.predictor[0].in_features, model.predictor[0].out_features) == (4, 12)
    wide = _image_cd_model(projection_dim=4, n_heads=5, predictor_hidden_dim=7)
    assert wide.predictor[0].out_features == 7


def test_cd_model_predictor_is_fed_by_projector():
    # Check that f -> g -> h chains: the predictor's input is the projector output.
    model = _image_cd_model(projection_dim=4, n_heads=3)
    seen = {}
    model.backbone.register_forward_hook(lambda m, args, out: seen.update(f_out=out))
    model.projector.register_forward_hook(lambda m, args, out: seen.update(z=out))
    model.predictor.register_forward_pre_hook(lambda m, args: seen.update(h_in=args[0]))
    z, _ = model(_rand(5, 3, 2, 2))
    assert seen["h_in"] is seen["z"] and seen["z"] is z
    assert seen["f_out"].shape == (5, 12)


def test_cd_model_forward_recomputed_by_parts():
    # Check that, in eval mode, forward = (g(f(s(x))), h(g(f(s(x))))) with the
    # scaler's standardisation s applied before the backbone.
    model = _image_cd_model(projection_dim=4, n_heads=3)
    model.scaler.mean.copy_(torch.tensor([0.5, 0.4, 0.3]))
    model.scaler.std.copy_(torch.tensor([0.2, 0.3, 0.4]))
    model.eval()
    x = _rand(3, 3, 2, 2, seed=4)
    with torch.no_grad():
        z, y = model(x)
        mean = model.scaler.mean.view(1, 3, 1, 1)
        standardised = (x - mean) / model.scaler.std.view(1, 3, 1, 1)
        expected_z = model.projector(model.backbone(standardised))
        torch.testing.assert_close(model.embed(x), standardised.flatten(1))
        torch.testing.assert_close(z, expected_z)
        torch.testing.assert_close(y, model.predictor(expected_z))


def test_cd_model_backpropagates_to_backbone():
    # Check that the CD loss inputs reach a trainable backbone.
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(12, 6))
    scaler = InputScaler(3, image=True)
    model = CDModel(backbone, 6, scaler, projection_dim=4, n_heads=3)
    z, y = model(_rand(4, 3, 2, 2))
    (z.sum() + y.sum()).backward()
    assert torch.isfinite(backbone[1].weight.grad).all()
    assert backbone[1].weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------
# CDCModel
# --------------------------------------------------------------------------------------


def test_cdc_model_forward_is_raw_head_output():
    # Check that forward returns the un-normalised (B, K + C) head output.
    model = _image_cdc_model(n_clusters=3, instance_dim=4).eval()
    x = _rand(5, 3, 2, 2, seed=1)
    with torch.no_grad():
        projection = model(x)
        assert isinstance(model.head, CDCProjectionHead)
        assert projection.shape == (5, 7)
        torch.testing.assert_close(projection, model.head(model.embed(x)))


@pytest.mark.parametrize("cluster_temperature", [0.1, 0.2, 1.0])
def test_cdc_cluster_probabilities(cluster_temperature):
    # Check that probabilities are softmax(normalize(z^c) / t), rows summing to 1.
    model = _image_cdc_model(
        n_clusters=3, instance_dim=4, cluster_temperature=cluster_temperature
    ).eval()
    x = _rand(6, 3, 2, 2, seed=2)
    with torch.no_grad():
        probabilities = model.cluster_probabilities(x)
        z_cluster = F.normalize(model(x)[:, :3], dim=1)
        expected_logits = z_cluster / cluster_temperature
        torch.testing.assert_close(model.cluster_logits(x), expected_logits)
        torch.testing.assert_close(probabilities, torch.softmax(expected_logits, dim=1))
    assert probabilities.shape == (6, 3)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(6))
    # Logits of unit vectors over t are bounded by 1 / t.
    assert (expected_logits.abs() <= 1 / cluster_temperature + 1e-5).all()


@pytest.mark.parametrize("cluster_temperature", [0.0, -0.1, float("nan")])
def test_cdc_model_invalid_cluster_temperature(cluster_temperature):
    # Check that an invalid cluster_temperature raises a ValueError naming it.
    with pytest.raises(ValueError, match="cluster_temperature"):
        _image_cdc_model(n_clusters=2, cluster_temperature=cluster_temperature)
