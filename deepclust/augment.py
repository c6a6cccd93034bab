"""Batched, on-device image and feature augmentations for contrastive training.

The reference CD code builds every training view with per-image PIL transforms in
four CPU data-loader workers. At 224 px this CPU work, not the network, limits how
many images per second reach the GPU. The modules here take a whole batch of float
tensors of shape ``(B, C, H, W)`` with values in [0, 1] on any device and draw the
random parameters per sample (each image gets its own crop, flip, jitter factors and
so on) with vectorised tensor operations, so augmentation runs on the accelerator next
to the model and scales with the batch rather than with the number of CPU workers.
All draws come from an optional :class:`torch.Generator`, so a seeded generator
reproduces the views exactly. :func:`simclr_pil_transform` keeps the reference
per-image PIL pipeline for comparison.

:class:`SimCLRAugment` draws SimCLR's views [1]_ as the CD reference code does [2]_;
:class:`StrongAugment` is SCAN's strong view [3]_ (RandAugment operations [4]_ and
cutout).

References
----------
.. [1] Chen et al., "A Simple Framework for Contrastive Learning of Visual
   Representations" (SimCLR), ICML 2020.
.. [2] Jiang, "Contrastive Disentangling: Fine-grained representation learning through
   multi-level contrastive learning without class priors", arXiv:2409.04867, 2024.
.. [3] Van Gansbeke et al., "SCAN: Learning to Classify Images without Labels",
   ECCV 2020.
.. [4] Cubuk et al., "RandAugment: Practical automated data augmentation with a
   reduced search space", NeurIPS Workshops 2020.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from torch import nn

from deepclust._validation import check_image_size

__all__ = [
    "FeatureAugment",
    "SimCLRAugment",
    "StrongAugment",
    "simclr_pil_transform",
]

# ITU-R 601-2 luma, the weights of PIL's ``convert("L")`` used by the reference code.
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# torchvision's RandomResizedCrop tries this many boxes before its centre-crop fallback.
_CROP_ATTEMPTS = 10


# ---------------------------------------------------------------------------------
# Argument validation
# ---------------------------------------------------------------------------------


def _check_probability(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a float in [0, 1], got {value!r}.")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}.")
    return float(value)


def _check_nonnegative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a non-negative float, got {value!r}.")
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite non-negative float, got {value!r}.")
    return float(value)


def _check_interval(
    name: str,
    value: tuple[float, float],
    *,
    lower: float,
    upper: float = math.inf,
    lower_inclusive: bool = False,
) -> tuple[float, float]:
    """Validate a ``(low, high)`` pair with ``lower (<)<= low <= high <= upper``."""
    try:
        low, high = value
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a (low, high) pair of floats, got {value!r}."
        ) from None
    for bound in (low, high):
        if isinstance(bound, bool) or not isinstance(bound, numbers.Real):
            raise ValueError(
                f"{name} must be a (low, high) pair of floats, got {value!r}."
            )
    low_ok = low >= lower if lower_inclusive else low > lower
    if not (low_ok and low <= high <= upper):
        opening = "[" if lower_inclusive else "("
        raise ValueError(
            f"{name} must satisfy low <= high with both in {opening}{lower}, "
            f"{upper}], got {value!r}."
        )
    return float(low), float(high)


def _default_blur_kernel_size(output_size: tuple[int, int]) -> int:
    # SimCLR's rule: 10% of the image side, made odd (224 px gives the reference's 23).
    tenth = 0.1 * min(output_size)
    return max(3, 2 * round((tenth - 1) / 2) + 1)


def _check_blur_kernel_size(
    blur_kernel_size: int | None, output_size: tuple[int, int]
) -> int:
    if blur_kernel_size is None:
        kernel_size = _default_blur_kernel_size(output_size)
    elif (
        isinstance(blur_kernel_size, numbers.Integral)
        and not isinstance(blur_kernel_size, bool)
        and blur_kernel_size >= 1
        and blur_kernel_size % 2 == 1
    ):
        kernel_size = int(blur_kernel_size)
    else:
        raise ValueError(
            f"blur_kernel_size must be None or an odd positive int, "
            f"got {blur_kernel_size!r}."
        )
    # Reflection padding needs a half-width smaller than the image side.
    if kernel_size // 2 >= min(output_size):
        raise ValueError(
            f"blur_kernel_size={kernel_size} is too large for output_size="
            f"{output_size}: its half-width must be smaller than the smallest side."
        )
    return kernel_size


def _check_images(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}.")
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(
            "x must be a batch of images of shape (B, C, H, W) with C in {1, 3}, "
            f"got shape {tuple(x.shape)}."
        )
    if not x.is_floating_point():
        raise ValueError(
            f"x must be a floating-point tensor with values in [0, 1], got {x.dtype}; "
            "convert uint8 images with x.float() / 255."
        )


def _check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise ValueError(
            f"generator must be a torch.Generator or None, got {type(generator)!r}."
        )
    if torch.device(generator.device).type != device.type:
        raise ValueError(
            f"generator is on {generator.device} but the data is on {device}; "
            "create it with torch.Generator(device=x.device)."
        )


def _resolve_device(
    device: torch.device | str | None, generator: torch.Generator | None
) -> torch.device:
    if device is not None:
        return torch.device(device)
    if generator is not None:
        return torch.device(generator.device)
    return torch.device("cpu")


def _check_sample_shape(batch_size: int, height: int, width: int) -> None:
    for name, value, minimum in (
        ("batch_size", batch_size, 0),
        ("height", height, 1),
        ("width", width, 1),
    ):
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Integral)
            or value < minimum
        ):
            raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")


# ---------------------------------------------------------------------------------
# Vectorised per-sample colour operations on (B, C, H, W) float tensors
# ---------------------------------------------------------------------------------


def _uniform(
    low: float | torch.Tensor,
    high: float | torch.Tensor,
    size: tuple[int, ...],
    device: torch.device,
    generator: torch.Generator | None,
) -> torch.Tensor:
    u = torch.rand(size, generator=generator, device=device)
    return low + (high - low) * u


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    """Reshape a (B,) tensor so that it broadcasts against (B, C, H, W)."""
    return values.view(-1, 1, 1, 1)


def _luma(x: torch.Tensor) -> torch.Tensor:
    """Grayscale (B, 1, H, W) of an RGB or grayscale batch."""
    if x.shape[1] == 1:
        return x
    weights = x.new_tensor(_LUMA_WEIGHTS).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL/torchvision ``_blend``: ``factor * x + (1 - factor) * other``, clamped."""
    factor = _per_sample(factor)
    return (factor * x + (1.0 - factor) * other).clamp_(0.0, 1.0)


def _adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * _per_sample(factor)).clamp_(0.0, 1.0)


def _adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = _luma(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, factor)


def _adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:  # As in PIL and torchvision, a no-op on grayscale.
        return x
    return _blend(x, _luma(x), factor)


def _rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb.unbind(dim=1)
    value, argmax = rgb.max(dim=1)
    chroma = value - rgb.amin(dim=1)
    has_hue = chroma > 0
    # Gray pixels have no hue; a divisor of 1 keeps them finite, their hue is set to 0.
    divisor = torch.where(has_hue, chroma, torch.ones_like(chroma))
    hue_r = torch.remainder((g - b) / divisor, 6.0)
    hue_g = (b - r) / divisor + 2.0
    hue_b = (r - g) / divisor + 4.0
    hue = torch.where(argmax == 0, hue_r, torch.where(argmax == 1, hue_g, hue_b))
    hue = torch.where(has_hue, hue / 6.0, torch.zeros_like(hue))
    saturation = chroma / torch.where(value > 0, value, torch.ones_like(value))
    return torch.stack((hue, saturation, value), dim=1)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    hue, saturation, value = (c.unsqueeze(1) for c in hsv.unbind(dim=1))
    # Closed form f(n) = V - V S max(0, min(k, 4 - k, 1)), k = (n + 6H) mod 6, with
    # n = 5, 3, 1 giving R, G, B.
    n = hsv.new_tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * hue, 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return (value - value * saturation * ramp).clamp_(0.0, 1.0)


def _adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:  # As in PIL and torchvision, a no-op on grayscale.
        return x
    hsv = _rgb_to_hsv(x)
    hue = torch.remainder(hsv[:, 0] + shift.view(-1, 1, 1), 1.0)
    return _hsv_to_rgb(torch.stack((hue, hsv[:, 1], hsv[:, 2]), dim=1))


def _adjust_sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    height, width = x.shape[-2:]
    if height <= 2 or width <= 2:
        return x
    # PIL's SMOOTH filter; like PIL and torchvision the one-pixel border is kept.
    kernel = x.new_ones(3, 3)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(x.shape[1], 1, 3, 3)
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = F.conv2d(x, kernel, groups=x.shape[1])
    return _blend(x, smooth, factor)


def _gaussian_blur(
    x: torch.Tensor, sigma: torch.Tensor, kernel_size: int
) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per sample and reflection padding."""
    batch, channels, height, width = x.shape
    offsets = torch.arange(kernel_size, device=x.device, dtype=x.dtype)
    offsets = offsets - (kernel_size - 1) / 2
    kernel = torch.exp(-0.5 * (offsets / sigma.view(-1, 1)) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    # One group per (sample, channel) lets a single conv apply per-sample kernels.
    kernel = kernel.repeat_interleave(channels, dim=0)
    half = kernel_size // 2
    padded = F.pad(x, (half, half, half, half), mode="reflect")
    padded = padded.reshape(1, batch * channels, height + 2 * half, width + 2 * half)
    groups = batch * channels
    out = F.conv2d(padded, kernel.view(groups, 1, 1, kernel_size), groups=groups)
    out = F.conv2d(out, kernel.view(groups, 1, kernel_size, 1), groups=groups)
    return out.view(batch, channels, height, width)


def _affine_sample(
    x: torch.Tensor, theta: torch.Tensor, output_size: tuple[int, int]
) -> torch.Tensor:
    """Bilinear resampling of each image with its own (2, 3) normalised affine map."""
    grid = F.affine_grid(
        theta, [x.shape[0], x.shape[1], *output_size], align_corners=False
    )
    return F.grid_sample(
        x, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )


# ---------------------------------------------------------------------------------
# SimCLR / CD view pipeline
# ---------------------------------------------------------------------------------


class SimCLRAugment(nn.Module):
    """Batched SimCLR / Contrastive Disentangling training view, on any device.

    Input to this module: a float tensor of shape ``(B, C, H, W)`` with ``C`` in
    {1, 3} and values in [0, 1]. Output: a float32 tensor of shape
    ``(B, C, *output_size)`` in [0, 1]. Each image gets its own random draws, in the
    order of the reference pipeline:

    1. random resized crop (area fraction ~ U(``crop_scale``), log-uniform aspect
       ratio in ``crop_ratio``, integer pixel box, centre-crop fallback after 10
       attempts, as in :class:`torchvision.transforms.RandomResizedCrop`),
    2. horizontal flip with probability ``flip_p`` (steps 1 and 2 are one bilinear
       :func:`torch.nn.functional.grid_sample` straight to ``output_size``),
    3. colour jitter with probability ``jitter_p``: brightness, contrast and
       saturation factors ~ U(max(0, 1 - 0.8 s), 1 + 0.8 s) and a hue shift
       ~ U(-0.2 s, 0.2 s) with ``s = jitter_strength``, with the semantics of
       :class:`torchvision.transforms.ColorJitter` (clamped to [0, 1] after each op),
    4. grayscale with probability ``grayscale_p`` (ITU-R 601-2 luma, replicated to
       three channels),
    5. Gaussian blur with probability ``blur_p`` and sigma ~ U(``blur_sigma``).

    Parameters
    ----------
    output_size : int or tuple of (int, int)
        Height and width of the output views; an int gives a square.
    crop_scale : tuple of (float, float), default=(0.08, 1.0)
        Range of the crop area as a fraction of the input area, within (0, 1].
    crop_ratio : tuple of (float, float), default=(3/4, 4/3)
        Range of the crop aspect ratio (width / height), sampled log-uniformly.
    flip_p : float, default=0.5
        Probability of a horizontal flip.
    jitter_strength : float, default=0.5
        Colour jitter strength ``s``; the reference uses 0.5 for CIFAR and 1.0 for
        STL-10 and ImageNet-10.
    jitter_p : float, default=0.8
        Probability of applying the colour jitter.
    grayscale_p : float, default=0.2
        Probability of converting an RGB view to grayscale (ignored when ``C == 1``).
    blur_p : float, default=0.0
        Probability of a Gaussian blur; the reference uses 0.5 for ImageNet-10.
    blur_sigma : tuple of (float, float), default=(0.1, 2.0)
        Range of the blur standard deviation, in output pixels.
    blur_kernel_size : int or None, default=None
        Odd blur kernel size. None uses the odd number nearest to 10% of the smaller
        output side, at least 3 (23 for 224 px, as in the reference).

    See Also
    --------
    simclr_pil_transform : The same pipeline as per-image torchvision transforms.
    StrongAugment : SCAN-style strong augmentation for self-labelling.

    Notes
    -----
    torchvision applies the four jitter operations in a random order per image; here
    one random order is drawn per batch (``"jitter_order"`` in :meth:`sample_params`),
    which keeps the jitter at four batched operations instead of sixteen. The crop is
    resized by bilinear sampling without antialiasing, i.e. like torchvision's
    ``antialias=False``; PIL's bilinear resize of the reference smooths a little more
    when it shrinks a large crop.

    Examples
    --------
    >>> import torch
    >>> from deepclust.augment import SimCLRAugment
    >>> augment = SimCLRAugment(24)
    >>> images = torch.rand(8, 3, 32, 32)
    >>> generator = torch.Generator().manual_seed(0)
    >>> views = augment(images, generator=generator)
    >>> views.shape, views.dtype
    (torch.Size([8, 3, 24, 24]), torch.float32)
    >>> params = augment.sample_params(8, 32, 32, device="cpu")
    >>> params["crop_boxes"].shape
    torch.Size([8, 4])
    """

    def __init__(
        self,
        output_size: int | tuple[int, int],
        *,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        jitter_strength: float = 0.5,
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: float = 0.0,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        blur_kernel_size: int | None = None,
    ) -> None:
        super().__init__()
        self.output_size = check_image_size(
            output_size, "output_size", allow_none=False
        )
        self.crop_scale = _check_interval(
            "crop_scale", crop_scale, lower=0.0, upper=1.0
        )
        self.crop_ratio = _check_interval("crop_ratio", crop_ratio, lower=0.0)
        self.flip_p = _check_probability("flip_p", flip_p)
        self.jitter_strength = _check_nonnegative("jitter_strength", jitter_strength)
        if 0.2 * self.jitter_strength > 0.5:
            # torchvision's ColorJitter caps the hue shift at half a turn.
            raise ValueError(
                f"jitter_strength must be at most 2.5 (hue shift 0.2 s <= 0.5), "
                f"got {jitter_strength!r}."
            )
        self.jitter_p = _check_probability("jitter_p", jitter_p)
        self.grayscale_p = _check_probability("grayscale_p", grayscale_p)
        self.blur_p = _check_probability("blur_p", blur_p)
        self.blur_sigma = _check_interval("blur_sigma", blur_sigma, lower=0.0)
        self.blur_kernel_size = _check_blur_kernel_size(
            blur_kernel_size, self.output_size
        )

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, crop_scale={self.crop_scale}, "
            f"crop_ratio={self.crop_ratio}, flip_p={self.flip_p}, "
            f"jitter_strength={self.jitter_strength}, jitter_p={self.jitter_p}, "
            f"grayscale_p={self.grayscale_p}, blur_p={self.blur_p}, "
            f"blur_sigma={self.blur_sigma}, blur_kernel_size={self.blur_kernel_size}"
        )

    def _sample_crop_boxes(
        self,
        batch_size: int,
        height: int,
        width: int,
        device: torch.device,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        # torchvision's RandomResizedCrop.get_params, with its 10 sequential attempts
        # drawn at once: the first attempt that fits wins.
        area = height * width
        shape = (batch_size, _CROP_ATTEMPTS)
        target_area = area * _uniform(*self.crop_scale, shape, device, generator)
        log_low, log_high = (math.log(r) for r in self.crop_ratio)
        aspect = torch.exp(_uniform(log_low, log_high, shape, device, generator))
        w = torch.round(torch.sqrt(target_area * aspect))
        h = torch.round(torch.sqrt(target_area / aspect))
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
        w = w.gather(1, first).squeeze(1)
        h = h.gather(1, first).squeeze(1)

        in_ratio = width / height
        if in_ratio < self.crop_ratio[0]:
            fallback_w, fallback_h = width, round(width / self.crop_ratio[0])
        elif in_ratio > self.crop_ratio[1]:
            fallback_w, fallback_h = round(height * self.crop_ratio[1]), height
        else:
            fallback_w, fallback_h = width, height
        any_fits = fits.any(dim=1)
        w = torch.where(any_fits, w, torch.full_like(w, fallback_w))
        h = torch.where(any_fits, h, torch.full_like(h, fallback_h))

        # Float rounding can push rand * n up to n, hence the clamp.
        u_top, u_left = torch.rand((2, batch_size), generator=generator, device=device)
        top = torch.minimum(torch.floor(u_top * (height - h + 1)), height - h)
        left = torch.minimum(torch.floor(u_left * (width - w + 1)), width - w)
        top = torch.where(any_fits, top, (height - h) // 2)
        left = torch.where(any_fits, left, (width - w) // 2)
        return torch.stack((top, left, h, w), dim=1).to(torch.int64)

    def sample_params(
        self,
        batch_size: int,
        height: int,
        width: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Draw the random parameters of one batch of views.

        :meth:`forward` calls this first with its generator, so re-seeding a
        generator and calling this method shows which draws produced a view.

        Parameters
        ----------
        batch_size : int
            Number of views to draw parameters for.
        height, width : int
            Size of the input images in pixels.
        device : torch.device, str or None, default=None
            Device of the returned tensors. None uses the generator's device, or
            the CPU without a generator.
        generator : torch.Generator or None, default=None
            Source of randomness, on ``device``; None uses torch's global generator.

        Returns
        -------
        params : dict of str to torch.Tensor
            ``"crop_boxes"``: int64 (B, 4) boxes ``(top, left, height, width)`` in
            input pixels; ``"flip"``, ``"jitter_applied"``, ``"grayscale"``,
            ``"blur_applied"``: bool (B,); ``"brightness"``, ``"contrast"``,
            ``"saturation"``: multiplicative factors (B,); ``"hue"``: hue shift in
            turns (B,); ``"blur_sigma"``: (B,); ``"jitter_order"``: int64 (4,), a
            permutation of 0=brightness, 1=contrast, 2=saturation, 3=hue shared by
            the batch. Jitter factors, grayscale and blur sigma are drawn for every
            sample and only used where the matching flag is set.
        """
        _check_sample_shape(batch_size, height, width)
        device = _resolve_device(device, generator)
        _check_generator(generator, device)
        factor_range = 0.8 * self.jitter_strength
        hue_range = 0.2 * self.jitter_strength
        size = (batch_size,)

        def draw_bernoulli(p: float) -> torch.Tensor:
            return torch.rand(size, generator=generator, device=device) < p

        params = {}
        params["crop_boxes"] = self._sample_crop_boxes(
            batch_size, height, width, device, generator
        )
        params["flip"] = draw_bernoulli(self.flip_p)
        params["jitter_applied"] = draw_bernoulli(self.jitter_p)
        for name in ("brightness", "contrast", "saturation"):
            params[name] = _uniform(
                max(0.0, 1.0 - factor_range),
                1.0 + factor_range,
                size,
                device,
                generator,
            )
        params["hue"] = _uniform(-hue_range, hue_range, size, device, generator)
        params["jitter_order"] = torch.randperm(4, generator=generator, device=device)
        params["grayscale"] = draw_bernoulli(self.grayscale_p)
        params["blur_applied"] = draw_bernoulli(self.blur_p)
        params["blur_sigma"] = _uniform(*self.blur_sigma, size, device, generator)
        return params

    def _crop_and_flip(
        self, x: torch.Tensor, params: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        height, width = x.shape[-2:]
        top, left, h, w = params["crop_boxes"].to(x.dtype).unbind(dim=1)
        # With align_corners=False, normalised -1 and 1 are the outer pixel edges,
        # so the box [left, left + w) maps to centre (2 left + w) / W - 1 and
        # half-width w / W.
        scale_x = torch.where(params["flip"], -w / width, w / width)
        theta = torch.zeros(x.shape[0], 2, 3, dtype=x.dtype, device=x.device)
        theta[:, 0, 0] = scale_x
        theta[:, 0, 2] = (2 * left + w) / width - 1
        theta[:, 1, 1] = h / height
        theta[:, 1, 2] = (2 * top + h) / height - 1
        return _affine_sample(x, theta, self.output_size)

    def _jitter(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        operations = (
            (_adjust_brightness, params["brightness"]),
            (_adjust_contrast, params["contrast"]),
            (_adjust_saturation, params["saturation"]),
            (_adjust_hue, params["hue"]),
        )
        jittered = x
        # The order is needed on the host: one 4-element copy per batch.
        for index in params["jitter_order"].tolist():
            operation, factor = operations[index]
            jittered = operation(jittered, factor)
        return torch.where(_per_sample(params["jitter_applied"]), jittered, x)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Return one random view of each image.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, H, W)
            Float images with ``C`` in {1, 3} and values in [0, 1].
        generator : torch.Generator or None, default=None
            Source of randomness, on ``x.device``; None uses torch's global
            generator.

        Returns
        -------
        views : torch.Tensor of shape (B, C, height, width)
            Float32 views with values in [0, 1]; ``(height, width)`` is
            ``output_size``.
        """
        _check_images(x)
        _check_generator(generator, x.device)
        batch, channels, height, width = x.shape
        if batch == 0:  # affine_grid and grouped convs reject an empty batch.
            return x.new_empty(0, channels, *self.output_size, dtype=torch.float32)
        params = self.sample_params(batch, height, width, x.device, generator)
        # float32 throughout: bf16 would quantise the colour ops and blur kernels.
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.to(torch.float32)
            out = self._crop_and_flip(x, params)
            if self.jitter_p > 0 and self.jitter_strength > 0:
                out = self._jitter(out, params)
            if self.grayscale_p > 0 and out.shape[1] == 3:
                gray = _luma(out).expand_as(out)
                out = torch.where(_per_sample(params["grayscale"]), gray, out)
            if self.blur_p > 0:
                blurred = _gaussian_blur(
                    out, params["blur_sigma"], self.blur_kernel_size
                )
                out = torch.where(_per_sample(params["blur_applied"]), blurred, out)
        return out


# ---------------------------------------------------------------------------------
# SCAN-style strong augmentation
# ---------------------------------------------------------------------------------


class StrongAugment(nn.Module):
    """SCAN-style strong augmentation (RandAugment ops and cutout), batched.

    Input to this module: a float tensor of shape ``(B, C, H, W)`` with ``C`` in
    {1, 3} and values in [0, 1]. Output: a float32 tensor of the same shape in
    [0, 1]. Per image: a horizontal flip with probability ``flip_p``, then ``n_ops``
    operations drawn with replacement from :attr:`OPS`, each with a uniformly random
    magnitude, then one square cutout hole filled with 0.5.

    Magnitudes, from a uniform draw ``m`` in [0, 1):

    - ``identity``; ``autocontrast`` and ``equalize`` (per channel, as
      :func:`torchvision.transforms.v2.functional.autocontrast` and
      :func:`~torchvision.transforms.v2.functional.equalize`; equalize quantises to
      256 levels);
    - ``rotate``: ±30 degrees about the centre; ``shear_x``, ``shear_y``: ±0.1 about
      the centre; ``translate_x``, ``translate_y``: ±0.1 of the width / height.
      Geometric ops resample bilinearly and fill uncovered pixels with 0;
    - ``solarize``: invert pixels at or above a threshold ``m``;
    - ``color`` (saturation), ``contrast``, ``brightness``, ``sharpness``: PIL
      ImageEnhance blend with factor ``0.05 + 0.9 m``;
    - ``posterize``: keep ``4 + floor(5 m)`` bits (4 to 8).

    Parameters
    ----------
    n_ops : int, default=4
        Number of operations applied to each image, drawn with replacement.
    cutout_max : int or None, default=None
        Largest cutout side in pixels; the side is uniform in ``1..cutout_max`` and
        the centre uniform over the image (the hole is clipped at the borders). None
        uses half the smaller image side (16 for 32-px CIFAR, as in SCAN); 0 turns
        cutout off.
    flip_p : float, default=0.5
        Probability of the horizontal flip (0 for images whose mirror image is
        another symbol, such as digits).

    See Also
    --------
    SimCLRAugment : The contrastive training view.

    Notes
    -----
    Each of the ``n_ops`` rounds computes every operation on the whole batch (the
    geometric ones share one ``grid_sample``) and keeps, per image, the one it drew
    with :func:`torch.where`. This costs about ten batched operations per round,
    which is cheap for batches of tens to hundreds of images and avoids any Python
    loop over images. SCAN applies the ops with PIL on 8-bit images and shears about
    the top-left corner; here they act on float images and shear about the centre.

    Examples
    --------
    >>> import torch
    >>> from deepclust.augment import StrongAugment
    >>> augment = StrongAugment(n_ops=4)
    >>> images = torch.rand(8, 3, 32, 32)
    >>> views = augment(images, generator=torch.Generator().manual_seed(0))
    >>> views.shape, views.dtype
    (torch.Size([8, 3, 32, 32]), torch.float32)
    >>> augment.OPS[:3]
    ('identity', 'autocontrast', 'equalize')
    """

    OPS: tuple[str, ...] = (
        "identity",
        "autocontrast",
        "equalize",
        "rotate",
        "solarize",
        "color",
        "contrast",
        "brightness",
        "sharpness",
        "shear_x",
        "shear_y",
        "translate_x",
        "translate_y",
        "posterize",
    )
    _GEOMETRIC = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")

    def __init__(
        self, n_ops: int = 4, cutout_max: int | None = None, flip_p: float = 0.5
    ) -> None:
        super().__init__()
        self.flip_p = _check_probability("flip_p", flip_p)
        if (
            isinstance(n_ops, bool)
            or not isinstance(n_ops, numbers.Integral)
            or n_ops < 0
        ):
            raise ValueError(f"n_ops must be an int >= 0, got {n_ops!r}.")
        if cutout_max is not None and (
            isinstance(cutout_max, bool)
            or not isinstance(cutout_max, numbers.Integral)
            or cutout_max < 0
        ):
            raise ValueError(
                f"cutout_max must be None or an int >= 0, got {cutout_max!r}."
            )
        self.n_ops = int(n_ops)
        self.cutout_max = None if cutout_max is None else int(cutout_max)

    def extra_repr(self) -> str:
        return f"n_ops={self.n_ops}, cutout_max={self.cutout_max}, flip_p={self.flip_p}"

    def _cutout_max(self, height: int, width: int) -> int:
        if self.cutout_max is None:
            return max(1, min(height, width) // 2)
        return self.cutout_max

    def sample_params(
        self,
        batch_size: int,
        height: int,
        width: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Draw the random parameters of one batch of strong views.

        :meth:`forward` calls this first with its generator.

        Parameters
        ----------
        batch_size : int
            Number of views to draw parameters for.
        height, width : int
            Size of the images in pixels.
        device : torch.device, str or None, default=None
            Device of the returned tensors. None uses the generator's device, or
            the CPU without a generator.
        generator : torch.Generator or None, default=None
            Source of randomness, on ``device``; None uses torch's global generator.

        Returns
        -------
        params : dict of str to torch.Tensor
            ``"flip"``: bool (B,); ``"ops"``: int64 (B, n_ops) indices into
            :attr:`OPS`, applied left to right; ``"magnitudes"``: (B, n_ops)
            uniform draws in [0, 1); ``"cutout_boxes"``: int64 (B, 4) holes
            ``(top, left, height, width)`` after clipping at the borders (all zero
            when cutout is off).
        """
        _check_sample_shape(batch_size, height, width)
        device = _resolve_device(device, generator)
        _check_generator(generator, device)
        flip = torch.rand(batch_size, generator=generator, device=device) < self.flip_p
        ops = torch.randint(
            len(self.OPS),
            (batch_size, self.n_ops),
            generator=generator,
            device=device,
        )
        magnitudes = torch.rand(
            (batch_size, self.n_ops), generator=generator, device=device
        )
        cutout_max = self._cutout_max(height, width)
        if cutout_max == 0:
            boxes = torch.zeros(batch_size, 4, dtype=torch.int64, device=device)
        else:
            side = torch.randint(
                1, cutout_max + 1, (batch_size,), generator=generator, device=device
            )
            centre_y = torch.randint(
                height, (batch_size,), generator=generator, device=device
            )
            centre_x = torch.randint(
                width, (batch_size,), generator=generator, device=device
            )
            top = (centre_y - side // 2).clamp(min=0)
            bottom = (centre_y - side // 2 + side).clamp(max=height)
            left = (centre_x - side // 2).clamp(min=0)
            right = (centre_x - side // 2 + side).clamp(max=width)
            boxes = torch.stack((top, left, bottom - top, right - left), dim=1)
        return {
            "flip": flip,
            "ops": ops,
            "magnitudes": magnitudes,
            "cutout_boxes": boxes,
        }

    def _geometric_theta(
        self, op: torch.Tensor, magnitude: torch.Tensor, height: int, width: int
    ) -> torch.Tensor:
        """Normalised (B, 2, 3) maps; the identity for non-geometric ops."""
        index = {name: self.OPS.index(name) for name in self._GEOMETRIC}
        signed = 2.0 * magnitude - 1.0
        zero = torch.zeros_like(magnitude)
        angle = torch.where(op == index["rotate"], signed * math.radians(30.0), zero)
        shear_x = torch.where(op == index["shear_x"], 0.1 * signed, zero)
        shear_y = torch.where(op == index["shear_y"], 0.1 * signed, zero)
        shift_x = torch.where(op == index["translate_x"], 0.1 * signed, zero)
        shift_y = torch.where(op == index["translate_y"], 0.1 * signed, zero)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # Pixel-space maps (about the centre) conjugated by diag(W/2, H/2) into the
        # normalised coordinates of affine_grid; shifts are fractions of the size,
        # i.e. 2 * fraction in normalised units.
        theta = torch.stack(
            (
                torch.stack((cos, shear_x - sin, 2 * shift_x), dim=1),
                torch.stack((sin + shear_y, cos, 2 * shift_y), dim=1),
            ),
            dim=1,
        )
        theta[:, 0, 1] *= height / width
        theta[:, 1, 0] *= width / height
        return theta

    def _apply_round(
        self, x: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor
    ) -> torch.Tensor:
        height, width = x.shape[-2:]
        enhance = 0.05 + 0.9 * magnitude
        levels = 2.0 ** (4 + torch.floor(5 * magnitude)).clamp(max=8)
        candidates = {
            "autocontrast": lambda: TF.autocontrast(x),
            "equalize": lambda: TF.equalize(x),
            "solarize": lambda: torch.where(x >= _per_sample(magnitude), 1.0 - x, x),
            "color": lambda: _adjust_saturation(x, enhance),
            "contrast": lambda: _adjust_contrast(x, enhance),
            "brightness": lambda: _adjust_brightness(x, enhance),
            "sharpness": lambda: _adjust_sharpness(x, enhance),
            # torchvision's float posterize, with a per-sample number of levels.
            "posterize": lambda: (
                torch.floor(x * _per_sample(levels))
                .clamp_(min=0)
                .minimum(_per_sample(levels) - 1)
                / _per_sample(levels)
            ),
        }
        out = x
        for name, compute in candidates.items():
            out = torch.where(_per_sample(op == self.OPS.index(name)), compute(), out)
        is_geometric = torch.zeros_like(op, dtype=torch.bool)
        for name in self._GEOMETRIC:
            is_geometric |= op == self.OPS.index(name)
        theta = self._geometric_theta(op, magnitude, height, width)
        warped = _affine_sample(x, theta, (height, width))
        return torch.where(_per_sample(is_geometric), warped, out)

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Return one strongly augmented view of each image.

        Parameters
        ----------
        x : torch.Tensor of shape (B, C, H, W)
            Float images with ``C`` in {1, 3} and values in [0, 1].
        generator : torch.Generator or None, default=None
            Source of randomness, on ``x.device``; None uses torch's global
            generator.

        Returns
        -------
        views : torch.Tensor of shape (B, C, H, W)
            Float32 views with values in [0, 1].
        """
        _check_images(x)
        _check_generator(generator, x.device)
        batch, _, height, width = x.shape
        if batch == 0:  # affine_grid rejects an empty batch.
            return x.to(torch.float32)
        params = self.sample_params(batch, height, width, x.device, generator)
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = x.to(torch.float32)
            out = torch.where(_per_sample(params["flip"]), out.flip(-1), out)
            for round_index in range(self.n_ops):
                out = self._apply_round(
                    out,
                    params["ops"][:, round_index],
                    params["magnitudes"][:, round_index],
                )
            top, left, h, w = (
                v.view(-1, 1) for v in params["cutout_boxes"].unbind(dim=1)
            )
            rows = torch.arange(height, device=x.device).view(1, -1)
            cols = torch.arange(width, device=x.device).view(1, -1)
            in_rows = (rows >= top) & (rows < top + h)
            in_cols = (cols >= left) & (cols < left + w)
            hole = (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)
            out = out.masked_fill(hole, 0.5)
        return out


# ---------------------------------------------------------------------------------
# Tabular views
# ---------------------------------------------------------------------------------


class FeatureAugment(nn.Module):
    """Noise-and-mask view generator for standardised tabular data.

    Input to this module: a float tensor of shape ``(n_samples, n_features)`` whose
    features are standardised (zero mean, unit variance). Output: a float32 tensor
    of the same shape where Gaussian noise ``N(0, noise_std**2)`` is added to every
    entry and then each entry is independently set to 0, the feature mean, with
    probability ``mask_p``.

    Parameters
    ----------
    noise_std : float, default=0.1
        Standard deviation of the additive Gaussian noise, in units of the
        feature's standard deviation.
    mask_p : float, default=0.1
        Probability of masking each entry to 0.

    See Also
    --------
    SimCLRAugment : The image counterpart.

    Examples
    --------
    >>> import torch
    >>> from deepclust.augment import FeatureAugment
    >>> augment = FeatureAugment(noise_std=0.1, mask_p=0.2)
    >>> X = torch.randn(5, 4)
    >>> augment(X, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([5, 4])
    """

    def __init__(self, noise_std: float = 0.1, mask_p: float = 0.1) -> None:
        super().__init__()
        self.noise_std = _check_nonnegative("noise_std", noise_std)
        self.mask_p = _check_probability("mask_p", mask_p)

    def extra_repr(self) -> str:
        return f"noise_std={self.noise_std}, mask_p={self.mask_p}"

    def forward(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Return one noisy, masked view of each row.

        Parameters
        ----------
        x : torch.Tensor of shape (n_samples, n_features)
            Standardised float features.
        generator : torch.Generator or None, default=None
            Source of randomness, on ``x.device``; None uses torch's global
            generator.

        Returns
        -------
        views : torch.Tensor of shape (n_samples, n_features)
            Float32 views.
        """
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}.")
        if x.ndim != 2 or not x.is_floating_point():
            raise ValueError(
                "x must be a floating-point tensor of shape (n_samples, n_features), "
                f"got dtype {x.dtype} and shape {tuple(x.shape)}."
            )
        _check_generator(generator, x.device)
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = x.to(torch.float32)
            noise = torch.randn(
                out.shape, generator=generator, device=x.device, dtype=torch.float32
            )
            out = out + self.noise_std * noise
            keep = (
                torch.rand(out.shape, generator=generator, device=x.device)
                >= self.mask_p
            )
            out = out * keep
        return out


# ---------------------------------------------------------------------------------
# Reference per-image pipeline
# ---------------------------------------------------------------------------------


def simclr_pil_transform(
    output_size: int | tuple[int, int],
    *,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    jitter_strength: float = 0.5,
    jitter_p: float = 0.8,
    grayscale_p: float = 0.2,
    blur_p: float = 0.0,
    flip_p: float = 0.5,
) -> Callable:
    """Build the reference per-image SimCLR / CD pipeline from torchvision.

    It is the CPU, one-image-at-a-time counterpart of :class:`SimCLRAugment`:
    ``RandomResizedCrop`` → ``RandomHorizontalFlip`` → ``RandomApply(ColorJitter)``
    → ``RandomGrayscale`` → optional ``RandomApply(GaussianBlur)`` → ``ToTensor``,
    with the reference's parameters. The blur kernel follows the default of
    :class:`SimCLRAugment` (23 at 224 px) and uses sigma in (0.1, 2.0).

    Parameters
    ----------
    output_size : int or tuple of (int, int)
        Height and width of the output views.
    crop_scale : tuple of (float, float), default=(0.08, 1.0)
        Range of the crop area as a fraction of the input area, within (0, 1].
    jitter_strength : float, default=0.5
        Colour jitter strength ``s``: ``ColorJitter(0.8s, 0.8s, 0.8s, 0.2s)``.
    jitter_p : float, default=0.8
        Probability of applying the colour jitter.
    grayscale_p : float, default=0.2
        Probability of converting to grayscale.
    blur_p : float, default=0.0
        Probability of a Gaussian blur; 0 leaves the blur out.
    flip_p : float, default=0.5
        Probability of a horizontal flip.

    Returns
    -------
    transform : callable
        Maps a PIL image to a float32 tensor of shape ``(C, *output_size)`` in
        [0, 1], where ``C`` is the number of channels of the PIL image.

    See Also
    --------
    SimCLRAugment : The batched, on-device version.

    Examples
    --------
    >>> from PIL import Image
    >>> from deepclust.augment import simclr_pil_transform
    >>> transform = simclr_pil_transform(24)
    >>> transform(Image.new("RGB", (32, 32))).shape
    torch.Size([3, 24, 24])
    """
    size = check_image_size(output_size, "output_size", allow_none=False)
    crop_scale = _check_interval("crop_scale", crop_scale, lower=0.0, upper=1.0)
    strength = _check_nonnegative("jitter_strength", jitter_strength)
    if 0.2 * strength > 0.5:
        raise ValueError(
            f"jitter_strength must be at most 2.5 (hue shift 0.2 s <= 0.5), "
            f"got {jitter_strength!r}."
        )
    jitter_p = _check_probability("jitter_p", jitter_p)
    grayscale_p = _check_probability("grayscale_p", grayscale_p)
    blur_p = _check_probability("blur_p", blur_p)
    flip_p = _check_probability("flip_p", flip_p)
    steps = [
        T.RandomResizedCrop(size, scale=crop_scale),
        T.RandomHorizontalFlip(flip_p),
        T.RandomApply(
            [T.ColorJitter(*(3 * [0.8 * strength]), hue=0.2 * strength)],
            p=jitter_p,
        ),
        T.RandomGrayscale(grayscale_p),
    ]
    if blur_p > 0:
        kernel_size = _default_blur_kernel_size(size)
        steps.append(
            T.RandomApply([T.GaussianBlur(kernel_size, sigma=(0.1, 2.0))], p=blur_p)
        )
    steps.append(T.ToTensor())
    return T.Compose(steps)
