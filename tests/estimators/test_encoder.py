"""The estimators with a frozen encoder: heads trained on cached embeddings, one
row per input, save/load checked against the encoder's weights, one ONNX file."""

import json

import numpy as np
import pytest
import torch
from sklearn.base import clone
from torch import nn

from deepclust import CDCClusterer, ContrastiveDisentangler
from deepclust._inputs import InputError
from deepclust.datasets import make_shape_images
from deepclust.encoders import embedding_cache
from deepclust.persistence import CONFIG_FILE, load

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
SMALL = {"max_epochs": 2, "batch_size": 16, "random_state": 0}


class TinyEncoder(nn.Module):
    """A small pretrained-looking encoder for 16-px images."""

    input_size = 16

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 12, 3, stride=2)
        with torch.no_grad():
            self.conv.weight.copy_(
                torch.randn(self.conv.weight.shape, generator=generator)
            )

    def forward(self, x):
        return torch.relu(self.conv(x))


@pytest.fixture(scope="module")
def images():
    return make_shape_images(30, image_size=8, n_classes=3, random_state=0)


@pytest.mark.parametrize(
    "estimator",
    [CDCClusterer(n_clusters=3, encoder=TinyEncoder, **SMALL),
     ContrastiveDisentangler(n_heads=8, encoder=TinyEncoder, **SMALL)],
    ids=["cdc", "cd"],
)  # fmt: skip
def test_heads_train_on_the_embeddings(images, estimator):
    # Check that with an encoder, images are resized for it (8-px images go to
    # half its 16-px input: no more upscaling than that), the heads (an MLP)
    # train on its embeddings with neighbour pairs, and every output has one row
    # per input.
    X, _ = images
    estimator = clone(estimator).fit(X)
    config = estimator.training_config_
    assert config["backbone"] == "mlp" and config["pair_neighbors"] is not None
    assert config["encoder"]["spec"] == "TinyEncoder"
    assert config["model"]["n_features"] == 12
    assert estimator.image_size_ == (8, 8) and estimator.input_kind_ == "image"
    assert estimator.transform(X[:5]).shape[0] == 5
    if isinstance(estimator, CDCClusterer):
        np.testing.assert_array_equal(estimator.predict(X), estimator.labels_)


def test_refits_reuse_cached_embeddings(images):
    # Check that a second fit on the same images (a clone, as GridSearchCV
    # makes) takes every embedding from the cache.
    X, _ = images
    embedding_cache.clear()
    cdc = CDCClusterer(n_clusters=3, encoder=TinyEncoder, **SMALL).fit(X)
    misses = embedding_cache.info()["misses"]
    assert misses >= len(X)
    clone(cdc).set_params(cluster_temperature=0.3).fit(X[5:])
    assert embedding_cache.info()["misses"] == misses


def test_images_on_another_scale_are_refused(images):
    # Check that float images in [0, 1] for a model fitted on uint8 images are
    # refused before they reach the encoder.
    X, _ = images
    cdc = CDCClusterer(n_clusters=3, encoder=TinyEncoder, **SMALL).fit(X)
    with pytest.raises(InputError, match=r"look like images scaled to \[0, 1\]"):
        cdc.predict(X[:4] / 255.0)


def test_encoder_parameter_errors(images):
    # Check that a pixel backbone with an encoder, and encoder_weights without an
    # encoder, are refused with messages naming the parameters.
    X, _ = images
    with pytest.raises(ValueError, match="backbone='small_cnn' is a network for"):
        CDCClusterer(
            n_clusters=3, encoder=TinyEncoder, backbone="small_cnn", **SMALL
        ).fit(X)
    with pytest.raises(ValueError, match="encoder_weights is set but encoder is None"):
        CDCClusterer(n_clusters=3, encoder_weights="w.pth", **SMALL).fit(X)
    with pytest.raises(ValueError, match="encoder=.* is a callable, which cannot"):
        CDCClusterer(n_clusters=3, encoder=TinyEncoder, **SMALL).fit(X).save("x")


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory, images):
    """A CDC on a torchvision encoder with local weights, saved: (model, folder)."""
    import torchvision

    folder = tmp_path_factory.mktemp("encoder")
    torch.manual_seed(0)
    weights = folder / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), weights)
    X, _ = images
    cdc = CDCClusterer(
        n_clusters=3,
        encoder="torchvision:mobilenet_v3_small",
        encoder_weights=str(weights),
        **SMALL,
    ).fit(X[:16])
    cdc.save(folder / "model")
    return cdc, folder


def test_save_load_keeps_the_encoder_and_checks_its_weights(images, mobilenet):
    # Check that a saved model records the encoder's name and weights hash
    # (not its weights), loads with identical outputs, and refuses encoder
    # weights that differ from or lack those it was trained with.
    X, _ = images
    cdc, folder = mobilenet
    config = json.loads((folder / "model" / CONFIG_FILE).read_text())
    encoder = config["attributes"]["training_config_"]["encoder"]
    assert encoder["spec"] == "torchvision:mobilenet_v3_small"
    assert len(encoder["sha256"]) == 64
    loaded = load(folder / "model")
    np.testing.assert_array_equal(loaded.predict_proba(X), cdc.predict_proba(X))
    weights = folder / "mobilenet.pth"
    original = weights.read_bytes()
    try:
        state = torch.load(weights, weights_only=True)
        first = next(name for name in state if name.endswith("weight"))
        state[first] = state[first] + 1
        torch.save(state, weights)
        with pytest.raises(ValueError, match="differ from those the model was trained"):
            load(folder / "model")
        weights.unlink()
        with pytest.raises(ValueError, match="its encoder .* cannot be built here"):
            load(folder / "model")
    finally:
        weights.write_bytes(original)


def test_one_onnx_file_runs_encoder_and_heads(images, mobilenet, tmp_path):
    # Check that the export holds encoder and heads in one graph on the raw
    # uint8 images of the fitted size, matching the estimator.
    from deepclust.onnx import OnnxClusterer

    X, _ = images
    cdc, _ = mobilenet
    path = cdc.export_onnx(tmp_path / "model.onnx")
    clusterer = OnnxClusterer(path)
    assert clusterer.metadata["encoder"]["spec"] == "torchvision:mobilenet_v3_small"
    np.testing.assert_allclose(
        clusterer.predict_proba(X), cdc.predict_proba(X), atol=1e-4
    )


def test_cd_transform_auto_gives_the_backbone_output_with_an_encoder(images, tmp_path):
    # Check that CD's transform_output="auto" returns the backbone output when
    # the heads train on an encoder's embeddings and the heads without one, that
    # an explicit choice wins, and that the ONNX export returns the same.
    from deepclust.onnx import OnnxClusterer

    X, _ = images
    cd = ContrastiveDisentangler(n_heads=8, encoder=TinyEncoder, **SMALL).fit(X)
    width = cd.net_.module_.embedding_dim
    assert width != 8
    embedding = cd.transform(X)
    assert embedding.shape == (len(X), width)
    assert len(cd.get_feature_names_out()) == width
    np.testing.assert_array_equal(embedding, cd.embed(X))
    onnx = OnnxClusterer(cd.export_onnx(tmp_path / "cd.onnx"))
    assert onnx.metadata["transform_output"] == "embedding"
    np.testing.assert_allclose(onnx.transform(X), embedding, atol=1e-4)
    assert cd.set_params(transform_output="heads").transform(X).shape == (len(X), 8)
    pixels = ContrastiveDisentangler(n_heads=8, **SMALL).fit(X)
    assert pixels.transform(X).shape == (len(X), 8)
