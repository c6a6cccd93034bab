"""Small image data sets that need no network access.

- :func:`load_digits_images` returns scikit-learn's bundled 8x8 handwritten
  digits as images, optionally upsampled.
- :func:`make_shape_images` draws a tiny synthetic set of coloured shapes, one
  shape per class, for tests and documentation.

Following scikit-learn, ``load_*`` reads data shipped with a package and
``make_*`` generates data; nothing here downloads anything.
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

from numbers import Integral

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.utils import Bunch, check_random_state, check_scalar

__all__ = ["SHAPE_NAMES", "load_digits_images", "make_shape_images"]

#: Shape drawn for each class of :func:`make_shape_images`, in class order.
SHAPE_NAMES = (
    "square",
    "horizontal bar",
    "ring",
    "vertical bar",
    "triangle",
    "cross",
    "disc",
    "diagonal cross",
)

# Largest pixel value of sklearn's digits (4x4 blocks of 8x8 bits counted).
_DIGITS_MAX = 16


def load_digits_images(*, image_size=None, return_X_y=True, as_uint8=True):
    """Load scikit-learn's handwritten digits as images.

    The 1797 grey-level 8x8 images of :func:`sklearn.datasets.load_digits`
    ship with scikit-learn, so no download happens.

    Parameters
    ----------
    image_size : int, default=None
        If given, every image is resized with bilinear interpolation (Pillow)
        to ``(image_size, image_size)``, e.g. 32 for a ResNet.
    return_X_y : bool, default=True
        If True, return ``(images, labels)``; otherwise a
        :class:`~sklearn.utils.Bunch`.
    as_uint8 : bool, default=True
        If True, the images are ``uint8`` in [0, 255], the original 0..16
        values being scaled by 255 / 16 and rounded. Otherwise they are
        ``float32`` in [0, 1].

    Returns
    -------
    images : ndarray of shape (1797, size, size)
        The images, ``size`` being 8 or ``image_size``.
    labels : ndarray of shape (1797,)
        The digit of each image, as ``int64``.
    data : :class:`~sklearn.utils.Bunch`
        Returned instead of the tuple when ``return_X_y=False``, with the
        attributes ``images``, ``target``, ``target_names`` and ``DESCR``.

    See Also
    --------
    sklearn.datasets.load_digits : The source data, flattened.

    Examples
    --------
    >>> from deepclust.datasets import load_digits_images
    >>> images, labels = load_digits_images()
    >>> images.shape, images.dtype, images.max()
    ((1797, 8, 8), dtype('uint8'), np.uint8(255))
    >>> images, labels = load_digits_images(image_size=16, as_uint8=False)
    >>> images.shape, images.dtype
    ((1797, 16, 16), dtype('float32'))
    """
    if image_size is not None:
        check_scalar(image_size, "image_size", Integral, min_val=1)
    digits = load_digits()
    if as_uint8:
        images = np.round(digits.images * (255 / _DIGITS_MAX)).astype(np.uint8)
    else:
        images = (digits.images / _DIGITS_MAX).astype(np.float32)
    if image_size is not None:
        images = _resize(images, int(image_size))
    labels = digits.target.astype(np.int64)
    if return_X_y:
        return images, labels
    return Bunch(
        images=images,
        target=labels,
        target_names=digits.target_names,
        DESCR=digits.DESCR,
    )


def _resize(images, size):
    """Resize a stack of grey-level images with Pillow's bilinear filter."""
    # Mode "L" keeps uint8 rounding in Pillow; float images use mode "F".
    resized = [
        np.asarray(
            Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)
        )
        for image in images
    ]
    resized = np.stack(resized).astype(images.dtype, copy=False)
    if resized.dtype != np.uint8:
        # Bilinear weights are convex, only float rounding can leave [0, 1].
        np.clip(resized, 0.0, 1.0, out=resized)
    return resized


def make_shape_images(
    n_samples=60, *, image_size=16, n_classes=3, channels=3, random_state=None
):
    """Generate a tiny data set of coloured shapes, one shape per class.

    Class ``k`` shows the shape ``SHAPE_NAMES[k]`` (square, horizontal bar,
    ring, vertical bar, triangle, cross, disc, diagonal cross), of random
    position, size and colour, on a dark background with Gaussian noise. The
    shape dominates the pixel values, so the classes are separable even by
    k-means on the raw pixels.

    Parameters
    ----------
    n_samples : int, default=60
        Number of images. The classes are balanced (their sizes differ by at
        most one) and shuffled.
    image_size : int, default=16
        Height and width of the images, at least 4.
    n_classes : int, default=3
        Number of classes, from 1 to ``len(SHAPE_NAMES)`` (8).
    channels : int, default=3
        Number of colour channels; 1 gives grey-level images.
    random_state : int, RandomState instance or None, default=None
        Seed of the positions, sizes, colours, noise and class order. Pass an
        int for reproducible output.

    Returns
    -------
    images : ndarray of shape (n_samples, image_size, image_size, channels)
        The images, as ``uint8``. The channel axis is left out when
        ``channels=1``.
    labels : ndarray of shape (n_samples,)
        The class of each image, as ``int64``.

    Examples
    --------
    >>> from deepclust.datasets import make_shape_images
    >>> images, labels = make_shape_images(12, n_classes=4, random_state=0)
    >>> images.shape, images.dtype
    ((12, 16, 16, 3), dtype('uint8'))
    >>> sorted(labels.tolist())
    [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    """
    check_scalar(n_samples, "n_samples", Integral, min_val=1)
    check_scalar(image_size, "image_size", Integral, min_val=4)
    check_scalar(n_classes, "n_classes", Integral, min_val=1, max_val=len(SHAPE_NAMES))
    check_scalar(channels, "channels", Integral, min_val=1)
    rng = check_random_state(random_state)

    labels = rng.permutation(np.arange(n_samples) % n_classes).astype(np.int64)
    # Pixel-centre coordinates in units of the image side, so that shapes keep
    # their proportions at every image size.
    coords = (np.arange(image_size) + 0.5) / image_size
    rows, cols = np.meshgrid(coords, coords, indexing="ij")

    centres = rng.uniform(0.42, 0.58, size=(n_samples, 2))
    radii = rng.uniform(0.25, 0.35, size=n_samples)
    colours = rng.uniform(180, 255, size=(n_samples, channels))
    backgrounds = rng.uniform(0, 30, size=(n_samples, 1, 1, 1))

    masks = np.stack(
        [
            _shape_mask(SHAPE_NAMES[label], rows - cy, cols - cx, radius)
            for label, (cy, cx), radius in zip(labels, centres, radii, strict=True)
        ]
    )[..., np.newaxis]
    images = np.where(masks, colours[:, np.newaxis, np.newaxis, :], backgrounds)
    images = images + rng.normal(0, 12, size=images.shape)
    images = np.clip(np.round(images), 0, 255).astype(np.uint8)
    if channels == 1:
        images = images[..., 0]
    return images, labels


def _shape_mask(name, dy, dx, radius):
    """Boolean mask of a shape given pixel offsets from its centre."""
    ady, adx = np.abs(dy), np.abs(dx)
    distance = np.hypot(dy, dx)
    half_width = 0.35 * radius
    horizontal = (ady <= half_width) & (adx <= 1.3 * radius)
    vertical = (adx <= half_width) & (ady <= 1.3 * radius)
    masks = {
        "square": lambda: np.maximum(ady, adx) <= radius,
        "horizontal bar": lambda: horizontal,
        "ring": lambda: (distance <= 1.2 * radius) & (distance >= 0.7 * radius),
        "vertical bar": lambda: vertical,
        # Apex up: the half-width grows linearly from the top edge to the base.
        "triangle": lambda: (ady <= radius) & (adx <= (dy + radius) / 2),
        "cross": lambda: horizontal | vertical,
        "disc": lambda: distance <= radius,
        "diagonal cross": lambda: (
            (np.minimum(np.abs(dy - dx), np.abs(dy + dx)) <= half_width)
            & (np.maximum(ady, adx) <= radius)
        ),
    }
    return masks[name]()
