"""Tests for deepclust.augment."""

import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from PIL import Image

from deepclust.augment import (
    FeatureAugment,
    SimCLRAugment,
    StrongAugment,
    simclr_pil_transform,
)

N_DRAWS = 20000


def _images(batch=6, channels=3, height=16, width=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, height, width, generator=generator)


def _flip_only(**kwargs):
    """SimCLRAugment whose crop is the whole (square) image and without colour ops."""
    params = dict(
        crop_scale=(1.0, 1.0),
        crop_ratio=(1.0, 1.0),
        jitter_p=0.0,
        grayscale_p=0.0,
    )
    params.update(kwargs)
    return SimCLRAugment(16, **params)


def _params_and_output(augment, x, seed):
    """The draws forward used, recovered by replaying the seeded generator."""
    params = augment.sample_params(
        x.shape[0], *x.shape[-2:], generator=torch.Generator().manual_seed(seed)
    )
    out = augment(x, generator=torch.Generator().manual_seed(seed))
    return params, out


# ---------------------------------------------------------------------------------
# SimCLRAugment
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(
    "output_size, expected", [(16, (16, 16)), (10, (10, 10)), ((12, 20), (12, 20))]
)
def test_simclr_shape_dtype_range(channels, output_size, expected):
    # Check that views have the requested size, the input channels, float32 and [0, 1].
    augment = SimCLRAugment(output_size, jitter_strength=1.0, blur_p=0.5)
    x = _images(channels=channels, height=16, width=20)
    out = augment(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == (6, channels, *expected)
    assert out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert torch.isfinite(out).all()


def test_simclr_per_sample_draws_differ():
    # Check that each image in a batch gets its own crop, flip and jitter draws.
    augment = SimCLRAugment(16)
    params = augment.sample_params(
        64, 16, 16, generator=torch.Generator().manual_seed(0)
    )
    assert len(torch.unique(params["crop_boxes"], dim=0)) > 1
    assert 0 < params["flip"].sum() < 64
    assert len(torch.unique(params["brightness"])) == 64
    assert len(torch.unique(params["hue"])) == 64


def test_simclr_identical_images_give_different_views():
    # Check that two copies of the same image in one batch get different views.
    image = _images(batch=1)
    x = image.expand(2, -1, -1, -1).contiguous()
    out = SimCLRAugment(12)(x, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(out[0], out[1])


def test_simclr_seeded_generator_is_reproducible():
    # Check that the same seed gives the same views and another seed different ones.
    augment = SimCLRAugment(12, blur_p=0.5)
    x = _images()
    first = augment(x, generator=torch.Generator().manual_seed(3))
    second = augment(x, generator=torch.Generator().manual_seed(3))
    other = augment(x, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.allclose(first, other)


def test_simclr_crop_statistics_match_torchvision():
    # Check that crop boxes fit, cover crop_scale and match RandomResizedCrop's means.
    height, width = 32, 48
    augment = SimCLRAugment(24)
    boxes = augment.sample_params(
        N_DRAWS, height, width, generator=torch.Generator().manual_seed(0)
    )["crop_boxes"]
    top, left, h, w = boxes.double().unbind(dim=1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    area = h * w / (height * width)
    # Rounding the sides to whole pixels moves the area a little outside the range.
    assert area.min() >= 0.08 - 0.02 and area.max() <= 1.0
    assert top.unique().numel() > 1 and left.unique().numel() > 1

    torch.manual_seed(0)
    image = torch.empty(3, height, width)
    reference = torch.tensor(
        [
            T.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
            for _ in range(N_DRAWS)
        ],
        dtype=torch.float64,
    )
    ref_area = reference[:, 2] * reference[:, 3] / (height * width)
    ref_log_ratio = torch.log(reference[:, 3] / reference[:, 2])
    # Standard errors of the means are about 0.002 (area) and 0.0015 (log ratio).
    assert abs(area.mean() - ref_area.mean()) < 0.015
    assert abs(torch.log(w / h).mean() - ref_log_ratio.mean()) < 0.01
    full = (h == height) & (w == width)
    ref_full = (reference[:, 2] == height) & (reference[:, 3] == width)
    assert abs(full.double().mean() - ref_full.double().mean()) < 0.01


def test_simclr_crop_fallback_is_centre_crop():
    # Check that a box that can never fit falls back to torchvision's centre crop.
    augment = SimCLRAugment(8, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    boxes = augment.sample_params(50, 10, 20)["crop_boxes"]
    expected = torch.tensor([0, 5, 10, 10]).expand(50, 4)
    torch.testing.assert_close(boxes, expected)


def test_simclr_param_statistics():
    # Check that flags and factors follow the configured probabilities and ranges.
    strength = 0.5
    augment = SimCLRAugment(
        24, jitter_strength=strength, blur_p=0.5, blur_sigma=(0.1, 2.0)
    )
    params = augment.sample_params(
        N_DRAWS, 32, 32, generator=torch.Generator().manual_seed(1)
    )
    # 0.015 is about four standard errors of a rate near 0.5 over 20000 draws.
    assert abs(params["flip"].float().mean() - 0.5) < 0.015
    assert abs(params["jitter_applied"].float().mean() - 0.8) < 0.015
    assert abs(params["grayscale"].float().mean() - 0.2) < 0.015
    assert abs(params["blur_applied"].float().mean() - 0.5) < 0.015
    for name in ("brightness", "contrast", "saturation"):
        factor = params[name]
        assert factor.min() >= 1 - 0.8 * strength
        assert factor.max() <= 1 + 0.8 * strength
        assert abs(factor.mean() - 1.0) < 0.01
    assert params["hue"].abs().max() <= 0.2 * strength
    assert params["hue"].min() < -0.09 and params["hue"].max() > 0.09
    sigma = params["blur_sigma"]
    assert sigma.min() >= 0.1 and sigma.max() <= 2.0
    assert abs(sigma.mean() - 1.05) < 0.02
    assert sorted(params["jitter_order"].tolist()) == [0, 1, 2, 3]


def test_simclr_grayscale_views_have_equal_channels():
    # Check that the views drawn for grayscale have three equal channels, others not.
    augment = SimCLRAugment(12, grayscale_p=0.5)
    params, out = _params_and_output(augment, _images(batch=32), seed=5)
    gray = params["grayscale"]
    assert 0 < gray.sum() < 32
    torch.testing.assert_close(out[gray, 0], out[gray, 1], rtol=0, atol=0)
    torch.testing.assert_close(out[gray, 0], out[gray, 2], rtol=0, atol=0)
    assert not torch.allclose(out[~gray, 0], out[~gray, 1])


def test_simclr_flip_only_is_exact():
    # Check that a full-image crop gives the flipped image where drawn, else the input.
    augment = _flip_only()
    x = _images(batch=32)
    params, out = _params_and_output(augment, x, seed=2)
    flip = params["flip"]
    assert 0 < flip.sum() < 32
    flipped = torch.flip(x[flip], dims=[-1])
    torch.testing.assert_close(out[flip], flipped, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[~flip], x[~flip], atol=1e-5, rtol=0)


def test_simclr_crop_matches_box():
    # Check that a crop resized to its own size equals slicing the drawn box.
    augment = SimCLRAugment(
        (6, 6),
        crop_scale=(0.1, 0.1),
        crop_ratio=(1.0, 1.0),
        flip_p=0.0,
        jitter_p=0.0,
        grayscale_p=0.0,
    )
    x = _images(batch=8, height=19, width=19)
    params, out = _params_and_output(augment, x, seed=0)
    for image, view, (top, left, h, w) in zip(
        x, out, params["crop_boxes"].tolist(), strict=True
    ):
        assert (h, w) == (6, 6)
        crop = image[:, top : top + h, left : left + w]
        torch.testing.assert_close(view, crop, atol=1e-5, rtol=0)


def test_simclr_jitter_matches_torchvision():
    # Check that the colour jitter equals torchvision's ops with the drawn factors.
    augment = _flip_only(flip_p=0.0, jitter_p=0.5, jitter_strength=1.0)
    x = _images(batch=16)
    params, out = _params_and_output(augment, x, seed=7)
    operations = [
        TF.adjust_brightness,
        TF.adjust_contrast,
        TF.adjust_saturation,
        TF.adjust_hue,
    ]
    names = ["brightness", "contrast", "saturation", "hue"]
    applied = params["jitter_applied"]
    assert 0 < applied.sum() < 16
    for i in range(16):
        expected = x[i]
        if applied[i]:
            for index in params["jitter_order"].tolist():
                expected = operations[index](expected, params[names[index]][i].item())
        # torchvision's red luma weight is 0.2989 where ITU-R 601-2 says 0.299.
        torch.testing.assert_close(out[i], expected, atol=1e-3, rtol=0)


def test_simclr_jitter_is_noop_on_saturation_and_hue_for_grayscale_input():
    # Check that on 1-channel input only brightness and contrast change the image.
    strong_hue = _flip_only(flip_p=0.0, jitter_p=1.0, jitter_strength=1.0)
    x = _images(batch=8, channels=1)
    params, out = _params_and_output(strong_hue, x, seed=0)
    for i in range(8):
        expected = x[i]
        brightness, contrast = params["brightness"][i], params["contrast"][i]
        for index in params["jitter_order"].tolist():
            if index == 0:
                expected = TF.adjust_brightness(expected, brightness.item())
            elif index == 1:
                expected = TF.adjust_contrast(expected, contrast.item())
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)


def test_simclr_blur_matches_torchvision():
    # Check that the blur equals torchvision's gaussian_blur with the drawn sigma.
    augment = _flip_only(flip_p=0.0, blur_p=0.5, blur_kernel_size=5)
    x = _images(batch=16)
    params, out = _params_and_output(augment, x, seed=1)
    applied = params["blur_applied"]
    assert 0 < applied.sum() < 16
    for i in range(16):
        if applied[i]:
            sigma = params["blur_sigma"][i].item()
            expected = TF.gaussian_blur(x[i], [5, 5], [sigma, sigma])
        else:
            expected = x[i]
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size, expected", [(224, 23), (32, 3), (96, 9), (10, 3)])
def test_simclr_default_blur_kernel_size(size, expected):
    # Check that the default kernel is the odd number nearest 10% of the side, min 3.
    assert SimCLRAugment(size, blur_p=0.5).blur_kernel_size == expected


def test_simclr_under_bf16_autocast_returns_float32():
    # Check that bf16 autocast does not lower the precision of the views.
    augment = SimCLRAugment(12, blur_p=1.0, jitter_p=1.0)
    x = _images()
    expected = augment(x, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = augment(x, generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"output_size": 0}, "output_size"),
        ({"output_size": (8, 8, 8)}, "output_size"),
        ({"output_size": 8.0}, "output_size"),
        ({"crop_scale": (0.0, 1.0)}, "crop_scale"),
        ({"crop_scale": (0.5, 0.2)}, "crop_scale"),
        ({"crop_scale": (0.5, 1.5)}, "crop_scale"),
        ({"crop_ratio": (-1.0, 1.0)}, "crop_ratio"),
        ({"crop_ratio": 1.0}, "crop_ratio"),
        ({"flip_p": 1.5}, "flip_p"),
        ({"jitter_strength": -0.1}, "jitter_strength"),
        ({"jitter_strength": 3.0}, "jitter_strength"),
        ({"jitter_p": -0.1}, "jitter_p"),
        ({"grayscale_p": 2}, "grayscale_p"),
        ({"blur_p": "half"}, "blur_p"),
        ({"blur_sigma": (0.0, 2.0)}, "blur_sigma"),
        ({"blur_kernel_size": 4}, "blur_kernel_size"),
        ({"blur_kernel_size": 17}, "blur_kernel_size"),
    ],
)
def test_simclr_invalid_arguments(kwargs, name):
    # Check that invalid constructor arguments raise a ValueError naming them.
    kwargs = {"output_size": 8, **kwargs}
    with pytest.raises(ValueError, match=name):
        SimCLRAugment(**kwargs)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.rand(3, 8, 8), "shape"),
        (torch.rand(2, 2, 8, 8), "C in"),
        (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "floating-point"),
        (np.zeros((2, 3, 8, 8), dtype=np.float32), "torch.Tensor"),
    ],
)
def test_augment_invalid_input(x, match):
    # Check that bad image batches raise a ValueError naming x for both image modules.
    for augment in (SimCLRAugment(8), StrongAugment()):
        with pytest.raises(ValueError, match=f"x must .*{match}"):
            augment(x)


def test_generator_of_wrong_type_or_device_raises():
    # Check that a non-generator, or a generator on another device, is rejected by name.
    with pytest.raises(ValueError, match="generator must be a torch.Generator"):
        SimCLRAugment(8)(_images(), generator=0)
    with pytest.raises(ValueError, match="generator is on cpu"):
        SimCLRAugment(8).sample_params(
            2, 8, 8, device="meta", generator=torch.Generator()
        )


def test_empty_batch_returns_empty_views():
    # Check that an empty batch gives an empty float32 batch of the output size.
    x = torch.rand(0, 3, 16, 16)
    assert SimCLRAugment(8, blur_p=1.0)(x).shape == (0, 3, 8, 8)
    assert StrongAugment()(x).shape == (0, 3, 16, 16)
    assert FeatureAugment()(torch.rand(0, 4)).shape == (0, 4)


def test_sample_params_invalid_sizes():
    # Check that sample_params rejects negative or non-integer sizes by name.
    with pytest.raises(ValueError, match="batch_size"):
        SimCLRAugment(8).sample_params(-1, 8, 8)
    with pytest.raises(ValueError, match="height"):
        StrongAugment().sample_params(2, 0, 8)


# ---------------------------------------------------------------------------------
# StrongAugment
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_strong_changes_images_and_keeps_range(channels):
    # Check that strong views keep shape, dtype and [0, 1] and differ from the input.
    x = _images(batch=16, channels=channels, height=16, width=20)
    out = StrongAugment()(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    changed = (out - x).abs().flatten(1).amax(dim=1) > 1e-3
    assert changed.all()


def test_strong_cutout_region_is_half():
    # Check that the drawn cutout box is filled with 0.5 and lies inside the image.
    augment = StrongAugment(n_ops=2, cutout_max=6)
    x = _images(batch=16)
    params, out = _params_and_output(augment, x, seed=3)
    boxes = params["cutout_boxes"]
    top, left, h, w = boxes.unbind(dim=1)
    assert (h >= 1).all() and (w >= 1).all() and (h <= 6).all() and (w <= 6).all()
    assert (top + h <= 16).all() and (left + w <= 16).all()
    for view, (t, left_, hh, ww) in zip(out, boxes.tolist(), strict=True):
        hole = view[:, t : t + hh, left_ : left_ + ww]
        torch.testing.assert_close(hole, torch.full_like(hole, 0.5), rtol=0, atol=0)


def test_strong_param_statistics():
    # Check that ops cover the whole list uniformly and cutout sides follow cutout_max.
    augment = StrongAugment(n_ops=4)
    params = augment.sample_params(
        N_DRAWS // 4, 32, 32, generator=torch.Generator().manual_seed(0)
    )
    assert params["ops"].shape == (N_DRAWS // 4, 4)
    counts = torch.bincount(params["ops"].flatten(), minlength=len(augment.OPS))
    assert counts.shape == (14,)
    assert (abs(counts / N_DRAWS - 1 / 14) < 0.01).all()
    magnitudes = params["magnitudes"]
    assert magnitudes.min() >= 0 and magnitudes.max() < 1
    assert abs(params["flip"].float().mean() - 0.5) < 0.03
    # Unclipped holes (away from the borders) show the full 1..16 side range.
    top, left, h, w = params["cutout_boxes"].unbind(dim=1)
    inside = (top > 0) & (top + h < 32)
    assert h[inside].min() == 1 and h[inside].max() == 16


@pytest.mark.parametrize("flip_p", [0.0, 0.2, 1.0])
def test_strong_flip_probability(flip_p):
    # Check that flips happen with probability flip_p (digits need flip_p=0).
    params = StrongAugment(flip_p=flip_p).sample_params(
        N_DRAWS, 8, 8, generator=torch.Generator().manual_seed(0)
    )
    assert abs(params["flip"].float().mean().item() - flip_p) < 0.02


def test_strong_single_ops_match_definitions():
    # Check that identity, brightness, solarize, autocontrast and flip match torch ops.
    augment = StrongAugment(n_ops=1, cutout_max=0)
    x = _images(batch=200, height=8, width=8)
    params, out = _params_and_output(augment, x, seed=0)
    flipped = torch.where(params["flip"].view(-1, 1, 1, 1), x.flip(-1), x)
    op = params["ops"][:, 0]
    magnitude = params["magnitudes"][:, 0].view(-1, 1, 1, 1)
    expected = {
        "identity": flipped,
        "brightness": (flipped * (0.05 + 0.9 * magnitude)).clamp(0, 1),
        "solarize": torch.where(flipped >= magnitude, 1 - flipped, flipped),
        "autocontrast": TF.autocontrast(flipped),
    }
    for name, reference in expected.items():
        selected = op == augment.OPS.index(name)
        assert selected.any()
        torch.testing.assert_close(
            out[selected], reference[selected], atol=1e-6, rtol=0
        )


def test_strong_geometric_ops_match_torchvision_affine():
    # Check rotate, shear and translate on non-square images against TF.affine.
    augment = StrongAugment(n_ops=1, cutout_max=0)
    x = _images(batch=100, height=12, width=20)
    params, out = _params_and_output(augment, x, seed=0)
    flipped = torch.where(params["flip"].view(-1, 1, 1, 1), x.flip(-1), x)
    bilinear = T.InterpolationMode.BILINEAR
    checked = set()
    for i, (op, magnitude) in enumerate(
        zip(
            params["ops"][:, 0].tolist(),
            params["magnitudes"][:, 0].tolist(),
            strict=True,
        )
    ):
        name = augment.OPS[op]
        signed = 2 * magnitude - 1
        shear = math.degrees(math.atan(0.1 * signed))
        arguments = {
            "rotate": dict(angle=-30 * signed, translate=[0, 0], shear=[0.0, 0.0]),
            "shear_x": dict(angle=0.0, translate=[0, 0], shear=[shear, 0.0]),
            "shear_y": dict(angle=0.0, translate=[0, 0], shear=[0.0, shear]),
            "translate_x": dict(
                angle=0.0, translate=[-2 * signed, 0], shear=[0.0, 0.0]
            ),
            "translate_y": dict(
                angle=0.0, translate=[0, -1.2 * signed], shear=[0.0, 0.0]
            ),
        }
        if name not in arguments:
            continue
        expected = TF.affine(
            flipped[i], scale=1.0, interpolation=bilinear, **arguments[name]
        )
        torch.testing.assert_close(out[i], expected, atol=1e-4, rtol=0)
        checked.add(name)
    assert len(checked) == 5


def test_strong_posterize_levels():
    # Check that posterized views lie on a grid of 2**bits levels with bits in 4..8.
    augment = StrongAugment(n_ops=1, cutout_max=0)
    x = _images(batch=200, height=16, width=16)
    params, out = _params_and_output(augment, x, seed=0)
    selected = params["ops"][:, 0] == augment.OPS.index("posterize")
    assert selected.any()
    for view, magnitude in zip(
        out[selected], params["magnitudes"][selected, 0], strict=True
    ):
        levels = 2 ** (4 + math.floor(5 * magnitude.item()))
        scaled = view * levels
        torch.testing.assert_close(scaled, torch.round(scaled), atol=1e-4, rtol=0)


def test_strong_seeded_generator_is_reproducible():
    # Check that the same seed gives the same strong views.
    augment = StrongAugment()
    x = _images()
    first = augment(x, generator=torch.Generator().manual_seed(1))
    second = augment(x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_strong_under_bf16_autocast_returns_float32():
    # Check that StrongAugment returns float32 under bf16 autocast.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = StrongAugment()(_images())
    assert out.dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_ops": -1}, "n_ops"),
        ({"n_ops": 1.5}, "n_ops"),
        ({"cutout_max": -2}, "cutout_max"),
        ({"flip_p": 1.5}, "flip_p"),
    ],
)
def test_strong_invalid_arguments(kwargs, name):
    # Check that invalid StrongAugment arguments raise a ValueError naming them.
    with pytest.raises(ValueError, match=name):
        StrongAugment(**kwargs)


# ---------------------------------------------------------------------------------
# FeatureAugment
# ---------------------------------------------------------------------------------


def test_feature_augment_noise_and_mask_statistics():
    # Check that the noise standard deviation and the masked fraction are as set.
    x = torch.randn(400, 50, generator=torch.Generator().manual_seed(0))
    noisy = FeatureAugment(noise_std=0.3, mask_p=0.0)(
        x, generator=torch.Generator().manual_seed(1)
    )
    assert abs((noisy - x).std() - 0.3) < 0.01
    assert abs((noisy - x).mean()) < 0.01

    masked = FeatureAugment(noise_std=0.0, mask_p=0.25)(
        x, generator=torch.Generator().manual_seed(1)
    )
    is_masked = masked == 0
    assert abs(is_masked.float().mean() - 0.25) < 0.01
    torch.testing.assert_close(masked[~is_masked], x[~is_masked], rtol=0, atol=0)


def test_feature_augment_reproducible_and_float32():
    # Check that a seed reproduces the view and that float64 input gives float32.
    augment = FeatureAugment()
    x = torch.randn(20, 4, dtype=torch.float64)
    first = augment(x, generator=torch.Generator().manual_seed(0))
    second = augment(x, generator=torch.Generator().manual_seed(0))
    assert first.dtype == torch.float32
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert augment(x.float()).dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs, name",
    [({"noise_std": -1.0}, "noise_std"), ({"mask_p": 1.2}, "mask_p")],
)
def test_feature_augment_invalid_arguments(kwargs, name):
    # Check that invalid FeatureAugment arguments raise a ValueError naming them.
    with pytest.raises(ValueError, match=name):
        FeatureAugment(**kwargs)


def test_feature_augment_invalid_input():
    # Check that non-2-D or integer input raises a ValueError naming x.
    with pytest.raises(ValueError, match="x must"):
        FeatureAugment()(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="x must"):
        FeatureAugment()(torch.ones(2, 3, dtype=torch.int64))


# ---------------------------------------------------------------------------------
# simclr_pil_transform
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode, channels", [("RGB", 3), ("L", 1)])
def test_simclr_pil_transform_returns_tensor(mode, channels):
    # Check that the PIL pipeline returns a float (C, H, W) tensor in [0, 1].
    rng = np.random.default_rng(0)
    shape = (20, 30, 3) if mode == "RGB" else (20, 30)
    image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)
    transform = simclr_pil_transform((12, 16), blur_p=0.5, jitter_strength=1.0)
    out = transform(image)
    assert out.shape == (channels, 12, 16)
    assert out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


def test_simclr_pil_and_batched_flip_rates_agree():
    # Check that both pipelines flip at the configured rate on a left/right ramp.
    ramp = np.tile(np.linspace(0, 255, 16, dtype=np.uint8), (16, 1))
    image = Image.fromarray(ramp, mode="L")
    transform = simclr_pil_transform(
        16, crop_scale=(1.0, 1.0), jitter_p=0.0, grayscale_p=0.0, flip_p=0.3
    )
    torch.manual_seed(0)
    flipped = [transform(image)[0, 0, 0] > 0.5 for _ in range(400)]
    pil_rate = float(np.mean(flipped))
    x = torch.from_numpy(ramp).float().div(255).expand(400, 1, 16, 16)
    views = _flip_only(flip_p=0.3)(x, generator=torch.Generator().manual_seed(0))
    batched_rate = (views[:, 0, 0, 0] > 0.5).float().mean().item()
    assert abs(pil_rate - 0.3) < 0.08 and abs(batched_rate - 0.3) < 0.08


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"output_size": -1}, "output_size"),
        ({"crop_scale": (0.5, 0.1)}, "crop_scale"),
        ({"jitter_p": 1.5}, "jitter_p"),
        ({"blur_p": -0.5}, "blur_p"),
        ({"flip_p": 2.0}, "flip_p"),
    ],
)
def test_simclr_pil_transform_invalid_arguments(kwargs, name):
    # Check that invalid arguments raise a ValueError naming them.
    kwargs = {"output_size": 8, **kwargs}
    with pytest.raises(ValueError, match=name):
        simclr_pil_transform(**kwargs)


# ---------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_augment_on_cuda_with_cuda_generator():
    # Check that the modules run on CUDA with a CUDA generator and reproduce.
    x = _images(batch=8, height=32, width=32).cuda()
    augment = SimCLRAugment(24, blur_p=0.5, jitter_strength=1.0)
    first = augment(x, generator=torch.Generator(device="cuda").manual_seed(0))
    second = augment(x, generator=torch.Generator(device="cuda").manual_seed(0))
    assert first.device.type == "cuda" and first.shape == (8, 3, 24, 24)
    assert first.min() >= 0 and first.max() <= 1
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert augment(x).dtype == torch.float32
    strong = StrongAugment()(x, generator=torch.Generator(device="cuda").manual_seed(0))
    assert strong.device.type == "cuda" and strong.shape == x.shape
    features = FeatureAugment()(
        torch.randn(8, 5, device="cuda"),
        generator=torch.Generator(device="cuda").manual_seed(0),
    )
    assert features.device.type == "cuda"
