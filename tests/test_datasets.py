"""Testing for the offline data sets."""

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.metrics import adjusted_rand_score

from deepclust.datasets import SHAPE_NAMES, load_digits_images, make_shape_images


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_digits_uint8(digits):
    # Check shapes, dtypes and the 0..16 -> 0..255 scaling of the digits.
    images, labels = load_digits_images()
    assert images.shape == (1797, 8, 8)
    assert images.dtype == np.uint8
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, digits.target)
    np.testing.assert_array_equal(images, np.round(digits.images * 255 / 16))
    assert images.min() == 0 and images.max() == 255


def test_digits_float(digits):
    # Check that as_uint8=False gives float32 images in [0, 1].
    images, _ = load_digits_images(as_uint8=False)
    assert images.dtype == np.float32
    np.testing.assert_allclose(images, digits.images / 16, rtol=1e-6)
    assert images.min() == 0.0 and images.max() == 1.0


@pytest.mark.parametrize("as_uint8", [True, False])
def test_digits_upsampled(as_uint8):
    # Check that image_size resizes every image bilinearly, keeping the dtype,
    # the value range and the overall intensity of each image.
    small, _ = load_digits_images(as_uint8=as_uint8)
    images, labels = load_digits_images(image_size=20, as_uint8=as_uint8)
    assert images.shape == (1797, 20, 20)
    assert images.dtype == small.dtype
    assert labels.shape == (1797,)
    top = 255 if as_uint8 else 1.0
    assert images.min() >= 0 and images.max() <= top
    # Bilinear upsampling roughly preserves the mean brightness of an image,
    # so it must correlate almost perfectly with the original's.
    small_means = small.reshape(1797, -1).mean(axis=1)
    large_means = images.reshape(1797, -1).mean(axis=1)
    assert np.corrcoef(small_means, large_means)[0, 1] > 0.95
    # A constant 8x8 region stays constant: the corners are 0 in every digit.
    assert np.all(small[:, 0, 0] == 0) and np.all(images[:, 0, 0] == 0)


def test_digits_bunch():
    # Check that return_X_y=False returns a Bunch holding the same arrays.
    images, labels = load_digits_images()
    data = load_digits_images(return_X_y=False)
    np.testing.assert_array_equal(data.images, images)
    np.testing.assert_array_equal(data.target, labels)
    assert list(data.target_names) == list(range(10))
    assert "digits" in data.DESCR.lower()


@pytest.mark.parametrize(
    "image_size, error", [(0, ValueError), (2.5, TypeError), ("32", TypeError)]
)
def test_digits_invalid_image_size(image_size, error):
    # Check that a non-positive or non-integer image_size is rejected.
    with pytest.raises(error, match="image_size"):
        load_digits_images(image_size=image_size)


@pytest.mark.parametrize(
    "channels, expected_shape", [(3, (10, 12, 12, 3)), (1, (10, 12, 12))]
)
def test_shape_images_format(channels, expected_shape):
    # Check the NHWC / NHW shape, the uint8 dtype and the balanced int64 labels.
    images, labels = make_shape_images(
        10, image_size=12, n_classes=4, channels=channels, random_state=0
    )
    assert images.shape == expected_shape
    assert images.dtype == np.uint8
    assert labels.dtype == np.int64
    assert labels.shape == (10,)
    np.testing.assert_array_equal(np.bincount(labels), [3, 3, 2, 2])
    # Bright shapes on a dark background use most of the range.
    assert images.max() > 150 and images.min() < 50


def test_shape_images_deterministic():
    # Check that a fixed random_state reproduces the data and another changes it.
    first = make_shape_images(20, random_state=3)
    second = make_shape_images(20, random_state=3)
    other = make_shape_images(20, random_state=4)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], other[0])


def test_shape_images_classes_differ():
    # Check that every pair of class-mean images differs clearly, for all the
    # shapes.
    n_classes = len(SHAPE_NAMES)
    images, labels = make_shape_images(
        16 * n_classes, n_classes=n_classes, channels=1, random_state=0
    )
    means = np.stack([images[labels == k].mean(axis=0) for k in range(n_classes)])
    for a in range(n_classes):
        for b in range(a + 1, n_classes):
            assert np.abs(means[a] - means[b]).mean() > 10, (a, b)


@pytest.mark.parametrize("n_classes", [2, 3, 4])
def test_shape_images_kmeans_separable(n_classes):
    # Check that k-means on raw pixels recovers the classes far better than
    # chance (ARI 0).
    images, labels = make_shape_images(
        20 * n_classes, n_classes=n_classes, random_state=0
    )
    X = images.reshape(len(images), -1).astype(float)
    predicted = KMeans(n_clusters=n_classes, n_init=3, random_state=0).fit_predict(X)
    assert adjusted_rand_score(labels, predicted) > 0.5


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(n_classes=0), ValueError, "n_classes == 0, must be >= 1"),
        (dict(n_classes=len(SHAPE_NAMES) + 1), ValueError, "n_classes == 9"),
        (dict(image_size=3), ValueError, "image_size == 3, must be >= 4"),
        (dict(n_samples=0), ValueError, "n_samples"),
        (dict(channels=0), ValueError, "channels"),
        (dict(image_size=8.0), TypeError, "image_size must be an instance of"),
    ],
)
def test_shape_images_invalid(kwargs, error, match):
    # Check that invalid parameters raise an error naming them.
    with pytest.raises(error, match=match):
        make_shape_images(**kwargs)
