"""Testing for the backbones (feature extractors)."""

import pickle
import warnings

import pytest
import torch
from torch import nn

from deepclust.backbones import MLP, FrozenBackbone, SmallCNN, make_backbone


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _forward(module, shape):
    module.eval()
    with torch.no_grad():
        return module(torch.randn(shape))


@pytest.mark.parametrize("in_channels", [1, 3])
def test_resnet18_cifar_stem(in_channels):
    # Check that image_size <= 64 selects the CIFAR stem (3x3 stride-1 conv, no
    # max-pool) and that the output is (B, 512) for any channel count.
    net, out_dim = make_backbone("resnet18", in_channels=in_channels, image_size=16)
    assert out_dim == 512
    assert net.conv1.kernel_size == (3, 3)
    assert net.conv1.stride == (1, 1)
    assert net.conv1.in_channels == in_channels
    assert isinstance(net.maxpool, nn.Identity)
    assert isinstance(net.fc, nn.Identity)
    assert _forward(net, (2, in_channels, 16, 16)).shape == (2, 512)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_resnet18_imagenet_stem(in_channels):
    # Check that the ImageNet stem keeps torchvision's 7x7 stride-2 conv and
    # max-pool, with conv1 rebuilt only for a non-RGB input.
    net, out_dim = make_backbone(
        "resnet18", in_channels=in_channels, image_size=32, stem="imagenet"
    )
    assert out_dim == 512
    assert net.conv1.kernel_size == (7, 7)
    assert net.conv1.stride == (2, 2)
    assert net.conv1.padding == (3, 3)
    assert net.conv1.in_channels == in_channels
    assert isinstance(net.maxpool, nn.MaxPool2d)
    assert _forward(net, (2, in_channels, 32, 32)).shape == (2, 512)


@pytest.mark.parametrize(
    "image_size, expected_kernel",
    [(None, (7, 7)), (64, (3, 3)), ((32, 80), (7, 7)), (65, (7, 7))],
)
def test_auto_stem(image_size, expected_kernel):
    # Check that stem="auto" picks the CIFAR stem only for images of at most
    # 64 pixels on their longest side.
    net, _ = make_backbone("resnet18", image_size=image_size)
    assert net.conv1.kernel_size == expected_kernel


@pytest.mark.parametrize("name, expected_dim", [("resnet34", 512), ("resnet50", 2048)])
def test_deeper_resnets(name, expected_dim):
    # Check that resnet34 and resnet50 build without fc and give their
    # documented output dimension.
    net, out_dim = make_backbone(name, image_size=32)
    assert out_dim == expected_dim
    assert _forward(net, (2, 3, 32, 32)).shape == (2, expected_dim)


@pytest.mark.parametrize("size", [8, 32])
def test_small_cnn(size):
    # Check that the small CNN maps tiny and 32-px images to 256 features and
    # keeps a spatial extent for 8x8 inputs (two pools: 8 -> 4 -> 2).
    net, out_dim = make_backbone("small_cnn", in_channels=1)
    assert isinstance(net, SmallCNN)
    assert out_dim == 256
    assert _forward(net, (3, 1, size, size)).shape == (3, 256)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256]
    assert all(c.bias is None and c.kernel_size == (3, 3) for c in convs)


def test_small_cnn_pools_only_large_maps():
    # Check that a 2x2 max-pool follows a stage only while the map is >= 4 px,
    # so that a 4x4 input is pooled once and reaches the last stage at 2x2.
    net = SmallCNN(1, widths=(4, 5, 6)).eval()
    sizes = []
    net.stages[2].register_forward_hook(
        lambda module, inputs, output: sizes.append(tuple(inputs[0].shape[-2:]))
    )
    with torch.no_grad():
        net(torch.zeros(2, 1, 4, 4))
        net(torch.zeros(2, 1, 16, 16))
    assert sizes == [(2, 2), (4, 4)]
    assert net.out_dim == 6


def test_mlp_on_images_flattens_pixels():
    # Check that "mlp" on images takes in_channels * H * W flattened features.
    net, out_dim = make_backbone("mlp", in_channels=1, image_size=8)
    assert net.layers[0].in_features == 64
    assert net(torch.rand(3, 1, 8, 8)).shape == (3, out_dim)


def test_mlp():
    # Check that "mlp" builds Linear(no bias)-BN-ReLU layers of widths (256, 256).
    net, out_dim = make_backbone("mlp", n_features=7)
    assert isinstance(net, MLP)
    assert out_dim == 256
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [
        (7, 256),
        (256, 256),
    ]
    assert all(lin.bias is None for lin in linears)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in net.modules()) == 2
    assert _forward(net, (5, 7)).shape == (5, 256)


def test_callable_with_conv_features():
    # Check that a factory returning 4-D features is pooled and flattened, both
    # for the reported dimension and in forward.
    def factory():
        return nn.Sequential(nn.Conv2d(2, 6, 3), nn.BatchNorm2d(6), nn.ReLU())

    net, out_dim = make_backbone(factory, in_channels=2, image_size=(9, 11))
    assert out_dim == 6
    assert net.training
    out = net(torch.randn(4, 2, 9, 11))
    assert out.shape == (4, 6)


def test_callable_with_flat_features():
    # Check that a factory returning flat features is used as is, for images
    # and for tabular inputs, and that the dry run restores train mode.
    def factory():
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 5 * 5, 10), nn.BatchNorm1d(10))

    net, out_dim = make_backbone(factory, image_size=5)
    assert out_dim == 10
    assert isinstance(net, nn.Sequential)
    assert net.training
    assert net[2].num_batches_tracked.item() == 0
    assert net(torch.randn(4, 3, 5, 5)).shape == (4, 10)

    net, out_dim = make_backbone(lambda: nn.Linear(4, 3), n_features=4)
    assert out_dim == 3
    assert net(torch.randn(2, 4)).shape == (2, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(spec="resnet101"), "Unknown backbone 'resnet101'; expected one of"),
        (dict(spec=3), "Unknown backbone 3"),
        (dict(spec="resnet18", stem="tiny"), "stem must be one of 'auto'"),
        (dict(spec="mlp"), "n_features .or image_size, for images. is required"),
        (dict(spec="small_cnn", in_channels=0), "in_channels must be a positive"),
        (dict(spec="resnet18", image_size=(3, 0)), "image_size must be"),
        (dict(spec=lambda: 42), "backbone factory .* must return a torch.nn.Module"),
        (dict(spec=lambda: 1 / 0), "backbone factory .* raised ZeroDivisionError"),
        (dict(spec=lambda: nn.Identity()), "image_size is required"),
        (dict(spec=nn.Identity()), "backbone must be a name or a callable"),
        (
            dict(spec=lambda: nn.Linear(3, 2), image_size=4),
            "backbone module Linear failed",
        ),
        (
            dict(spec=lambda: nn.Flatten(0), n_features=3),
            r"shape \(B, out_dim\) or \(B, C, H, W\)",
        ),
    ],
)
def test_make_backbone_errors(kwargs, match):
    # Check that invalid specs and arguments raise a ValueError naming them.
    with pytest.raises(ValueError, match=match):
        make_backbone(**kwargs)


def test_unknown_backbone_message_lists_choices():
    # Check the full wording of the unknown-backbone error.
    expected = (
        "Unknown backbone 'x'; expected one of 'resnet18', 'resnet34', 'resnet50', "
        "'small_cnn', 'mlp' or a callable returning a torch.nn.Module."
    )
    with pytest.raises(ValueError) as excinfo:
        make_backbone("x")
    assert str(excinfo.value) == expected


def _outputs_equal(first, second, shape):
    x = torch.randn(shape)
    first.eval()
    second.eval()
    with torch.no_grad():
        return torch.equal(first(x), second(x))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"state_dict": {f"backbone.{k}": v for k, v in sd.items()}},
        lambda sd: {"model": sd, "epoch": 3},
    ],
    ids=["plain", "module-prefix", "state_dict-key", "model-key"],
)
def test_weights_round_trip(tmp_path, wrap):
    # Check that weights saved from one backbone load into a fresh one (with
    # prefixes and wrapping dicts) and give identical outputs.
    source, _ = make_backbone("small_cnn", in_channels=1)
    # Train-mode passes move the BN running statistics away from their
    # defaults, so the comparison also covers buffers.
    source.train()
    source(torch.randn(4, 1, 8, 8) + 2)
    path = tmp_path / "weights.pt"
    torch.save(wrap(source.state_dict()), path)

    fresh, _ = make_backbone("small_cnn", in_channels=1)
    assert not _outputs_equal(source, fresh, (2, 1, 8, 8))
    loaded, _ = make_backbone("small_cnn", in_channels=1, weights=str(path))
    assert _outputs_equal(source, loaded, (2, 1, 8, 8))


def test_weights_ignore_resnet_fc(tmp_path):
    # Check that a full torchvision ResNet checkpoint, fc layer included, loads
    # into the fc-less backbone.
    import torchvision

    full = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pt"
    torch.save(full.state_dict(), path)
    net, _ = make_backbone("resnet18", stem="imagenet", weights=path)
    assert torch.equal(net.conv1.weight, full.conv1.weight)
    assert torch.equal(net.layer4[1].bn2.running_var, full.layer4[1].bn2.running_var)


def test_weights_into_callable(tmp_path):
    # Check that weights load into the module a factory returns, before the
    # global pooling wrapper is added.
    def factory():
        return nn.Conv2d(3, 4, 3)

    source = factory()
    path = tmp_path / "conv.pt"
    torch.save(source.state_dict(), path)
    net, out_dim = make_backbone(factory, image_size=6, weights=path)
    assert out_dim == 4
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(net(x), source(x).mean(dim=(2, 3)))


def test_weights_missing_keys_warn(tmp_path):
    # Check that a partial state dict loads with a UserWarning naming the
    # missing keys.
    source = MLP(3, hidden=(4, 5))
    state = {k: v for k, v in source.state_dict().items() if k.startswith("layers.0.")}
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.warns(UserWarning, match=r"lacks .*layers\.1\.weight"):
        net, _ = make_backbone(
            lambda: MLP(3, hidden=(4, 5)), n_features=3, weights=path
        )
    assert torch.equal(net.layers[0].weight, source.layers[0].weight)
    assert not torch.equal(net.layers[3].weight, source.layers[3].weight)


def test_weights_complete_does_not_warn(tmp_path):
    # Check that a complete state dict loads without any warning.
    path = tmp_path / "mlp.pt"
    source = MLP(3)
    torch.save(source.state_dict(), path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net, _ = make_backbone("mlp", n_features=3, weights=path)
    assert [str(w.message) for w in caught] == []
    assert torch.equal(net.layers[0].weight, source.layers[0].weight)


def test_weights_errors(tmp_path):
    # Check that unusable weight files raise errors naming the weights file.
    missing = tmp_path / "absent.pt"
    with pytest.raises(FileNotFoundError, match="weights file .*absent.pt"):
        make_backbone("mlp", n_features=3, weights=missing)

    unrelated = tmp_path / "unrelated.pt"
    torch.save({"encoder.weight": torch.zeros(2)}, unrelated)
    with pytest.raises(ValueError, match="weights file .* has no key of the backbone"):
        make_backbone("mlp", n_features=3, weights=unrelated)

    wrong_shape = tmp_path / "wrong_shape.pt"
    torch.save(MLP(4).state_dict(), wrong_shape)
    with pytest.raises(ValueError, match=r"shape mismatch.*layers\.0\.weight"):
        make_backbone("mlp", n_features=3, weights=wrong_shape)

    not_a_state_dict = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], not_a_state_dict)
    with pytest.raises(ValueError, match="weights file .* must hold a state dict"):
        make_backbone("mlp", n_features=3, weights=not_a_state_dict)


class _Payload:
    """Object whose unpickling would run code if pickle were trusted."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_weights_refuse_arbitrary_objects(tmp_path, capsys):
    # Check that a checkpoint holding an arbitrary pickled object is refused
    # (weights_only=True) without running its code.
    path = tmp_path / "payload.pt"
    torch.save({"layers.0.weight": _Payload()}, path)
    with pytest.raises(ValueError, match="weights_only=True") as excinfo:
        make_backbone("mlp", n_features=3, weights=path)
    assert isinstance(excinfo.value.__cause__, pickle.UnpicklingError)
    assert "this must never run" not in capsys.readouterr().out


def test_weights_loaded_with_weights_only(tmp_path, monkeypatch):
    # Check that torch.load is always called with weights_only=True on CPU.
    path = tmp_path / "mlp.pt"
    torch.save(MLP(3).state_dict(), path)
    calls = []
    original_load = torch.load

    def spy_load(*args, **kwargs):
        calls.append(kwargs)
        return original_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy_load)
    make_backbone("mlp", n_features=3, weights=path)
    assert len(calls) == 1
    assert calls[0]["weights_only"] is True
    assert calls[0]["map_location"] == "cpu"


def test_freeze_keeps_backbone_fixed():
    # Check that a frozen backbone has no trainable parameter and keeps its BN
    # statistics when the parent model is in train mode.
    net, out_dim = make_backbone("small_cnn", in_channels=1, freeze=True)
    assert isinstance(net, FrozenBackbone)
    assert out_dim == 256
    parent = nn.Sequential(net, nn.Linear(out_dim, 2)).train()
    assert parent.training and net.training
    assert not net.module.training
    assert all(not p.requires_grad for p in net.parameters())
    before = {k: v.clone() for k, v in net.state_dict().items()}

    parent(torch.randn(4, 1, 8, 8) * 3 + 1).sum().backward()

    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in net.parameters())
    assert parent[1].weight.grad is not None


def test_freeze_after_loading_weights(tmp_path):
    # Check that freeze applies on top of loaded weights and that the frozen
    # module's state dict keeps the backbone keys under "module.".
    source = MLP(3)
    path = tmp_path / "mlp.pt"
    torch.save(source.state_dict(), path)
    net, _ = make_backbone("mlp", n_features=3, weights=path, freeze=True)
    assert torch.equal(net.module.layers[0].weight, source.layers[0].weight)
    assert set(net.state_dict()) == {f"module.{k}" for k in source.state_dict()}


@pytest.mark.parametrize(
    "size, stem, stride",
    [
        (8, "auto", 1),
        (16, "auto", 1),
        (17, "auto", 2),
        (28, "auto", 2),
        (28, "cifar", 1),
        (8, "imagenet", 2),
        (None, "auto", 1),
    ],
)
def test_small_cnn_stem(size, stem, stride):
    # Check that "small_cnn" keeps full resolution up to 16 px and halves it
    # in its first convolution above (or as asked), with the same output.
    net, out_dim = make_backbone(
        "small_cnn", in_channels=1, image_size=size, stem=stem, widths=(4, 8)
    )
    first = net.stages[0][0]
    assert first.stride == (stride, stride)
    assert [c.stride for c in net.modules() if isinstance(c, nn.Conv2d)][1:] == [
        (1, 1)
    ] * 3
    side = size or 32
    assert _forward(net, (2, 1, side, side)).shape == (2, out_dim)


def test_small_cnn_stride_two_sees_a_quarter_of_the_pixels():
    # Check that the stride-2 first convolution maps 28 px to 14 px maps.
    net = SmallCNN(1, widths=(4, 8), stem_stride=2).eval()
    shapes = []
    net.stages[0][0].register_forward_hook(
        lambda module, inputs, output: shapes.append(tuple(output.shape[-2:]))
    )
    with torch.no_grad():
        net(torch.zeros(1, 1, 28, 28))
    assert shapes == [(14, 14)]
    with pytest.raises(ValueError, match="stem_stride must be 1 or 2; got 3"):
        SmallCNN(1, stem_stride=3)


def test_resolve_stem():
    # Check the stem that "auto" means for each named backbone and size.
    from deepclust.backbones import resolve_stem

    assert resolve_stem("small_cnn", (16, 12)) == "cifar"
    assert resolve_stem("small_cnn", (12, 20)) == "imagenet"
    assert resolve_stem("resnet18", 64) == "cifar"
    assert resolve_stem("resnet18", 65) == "imagenet"
    assert resolve_stem("resnet18", None) == "imagenet"
    assert resolve_stem("small_cnn", 64, "cifar") == "cifar"
