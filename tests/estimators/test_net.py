"""The skorch net's inference: concurrent calls equal sequential ones and never
change the fitted model (a web app serves one estimator from many threads)."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from deepclust import CDCClusterer, ContrastiveDisentangler
from deepclust.datasets import make_shape_images

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(scope="module")
def images():
    return make_shape_images(48, image_size=8, n_classes=3, random_state=0)[0]


def _state(estimator):
    return {
        name: tensor.detach().clone()
        for name, tensor in estimator.net_.unwrapped_module().state_dict().items()
    }


@pytest.mark.parametrize(
    ("estimator", "method"),
    [
        (CDCClusterer(n_clusters=3, max_epochs=1, batch_size=16, random_state=0),
         "predict_proba"),
        (CDCClusterer(n_clusters=3, max_epochs=1, batch_size=16, random_state=0),
         "predict"),
        (ContrastiveDisentangler(n_heads=8, max_epochs=1, batch_size=16,
                                 random_state=0), "transform"),
    ],
    ids=["cdc-predict_proba", "cdc-predict", "cd-transform"],
)  # fmt: skip
def test_concurrent_inference_equals_sequential_and_changes_nothing(
    images, estimator, method
):
    # Check that predictions from 4 threads at once (on batches of different
    # sizes) equal the sequential ones, and that neither the BatchNorm running
    # statistics nor any other tensor of the model changes: inference must
    # never switch the model to train mode.
    estimator.fit(images)
    assert not estimator.net_.unwrapped_module().training
    before = _state(estimator)
    batches = [images[start : start + size] for start, size in
               [(0, 48), (0, 7), (5, 30), (17, 3), (40, 8), (1, 47)]] * 4  # fmt: skip
    sequential = [getattr(estimator, method)(batch) for batch in batches]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(getattr(estimator, method), batches))
    for got, expected in zip(concurrent, sequential, strict=True):
        np.testing.assert_array_equal(got, expected)
    after = _state(estimator)
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), f"{name} changed during inference"
    np.testing.assert_array_equal(getattr(estimator, method)(images), sequential[0])
