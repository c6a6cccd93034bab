"""Shared fixtures of the deepclust tests."""

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.preprocessing import StandardScaler

from deepclust.datasets import make_shape_images


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session", autouse=True)
def _single_torch_thread():
    # The test models are tiny: a second intra-op thread brings no speed-up, and
    # on a shared 2-core machine the threads' spin-waits make every training step
    # 5-20 times slower than with one thread.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def blobs():
    """Three standardised 2-D blobs: (X float64 of shape (60, 2), y)."""
    X, y = make_blobs(
        n_samples=60, n_features=2, centers=3, cluster_std=0.6, random_state=0
    )
    return StandardScaler().fit_transform(X), y


@pytest.fixture(scope="session")
def shape_images():
    """24 RGB uint8 images of 8x8 px in NHWC layout, 3 classes: (images, labels)."""
    return make_shape_images(24, image_size=8, n_classes=3, random_state=0)


@pytest.fixture(scope="session")
def gray_images():
    """24 grayscale uint8 images of 8x8 px, shape (24, 8, 8): (images, labels)."""
    return make_shape_images(24, image_size=8, n_classes=3, channels=1, random_state=0)
