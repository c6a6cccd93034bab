"""The rules of "auto" (deepclust.estimators._config) and the page that lists them.

``resolve_training_config`` and its helpers are pure functions of the
parameters, a description of the input and one of the device, so each rule is
checked here on concrete cases without training anything. The generated page
``docs/user_guide/auto_choices.md`` must be what
``tools/make_auto_choices_table.py`` writes.
"""

import importlib.util
from pathlib import Path

import pytest

from deepclust import CDCClusterer, ContrastiveDisentangler
from deepclust.estimators._config import (
    DeviceDescription,
    InputDescription,
    resolve_encoder_image_size,
    resolve_image_size,
    resolve_runtime,
    resolve_training_config,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CPU = DeviceDescription("cpu", n_cpus=2)
GPU = DeviceDescription("cuda", native_bf16=True, n_cpus=16)
DIGITS = InputDescription("image", 1797, (8, 8), 1)
ENCODER = {"spec": "efficientnet_lite0", "input_size": 224, "embedding_dim": 1280}


def _config(data, device=CPU, cls=CDCClusterer, **params):
    estimator = cls(**params)
    return resolve_training_config(
        estimator.get_params(deep=False),
        family=estimator._family,
        heads=estimator._head_params(),
        data=data,
        device=device,
    )


def _params(**changes):
    return {**CDCClusterer().get_params(deep=False), **changes}


# ---------------------------------------------------------------------------
# The generated page
# ---------------------------------------------------------------------------


def test_auto_choices_page_is_up_to_date():
    spec = importlib.util.spec_from_file_location(
        "make_auto_choices_table", REPO_ROOT / "tools" / "make_auto_choices_table.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    page = tool.PAGE.read_text(encoding="utf-8") if tool.PAGE.is_file() else None
    assert page == tool.render(), (
        f"{tool.PAGE.relative_to(REPO_ROOT)} is out of date: run "
        "`python tools/make_auto_choices_table.py` and commit the result."
    )


# ---------------------------------------------------------------------------
# resolve_training_config
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [CDCClusterer, ContrastiveDisentangler])
def test_digits_on_a_cpu_train_the_small_cnn_for_67_epochs(cls):
    config = _config(DIGITS, cls=cls)
    assert config["backbone"] == "small_cnn"
    # 1000 steps of batches of 128 over 1,797 images (15 batches an epoch).
    assert config["max_epochs"] == 67
    assert config["lr"] == 1e-3
    assert config["model"]["stem"] == "cifar"  # full resolution up to 16 px
    assert config["model"]["backbone_widths"] == [32, 64, 128]
    # Grayscale: no flips; up to 16 px: crops of at least 30 % of the area.
    assert config["augment"] == {
        "crop_scale": [0.3, 1.0],
        "flip_p": 0.0,
        "jitter_strength": 0.5,
        "blur_p": 0.0,
    }
    assert config["pair_neighbors"] is None and config["encoder"] is None
    assert (config["precision"], config["num_workers"]) == ("fp32", 0)


def test_cdc_mines_neighbours_from_30_percent_of_the_epochs():
    assert _config(DIGITS)["neighbor_start_epoch"] == round(0.3 * 67)
    assert _config(DIGITS, neighbor_weight=0.0)["neighbor_start_epoch"] is None
    assert "neighbor_start_epoch" not in _config(DIGITS, cls=ContrastiveDisentangler)


def test_explicit_values_are_kept():
    config = _config(DIGITS, backbone="resnet18", max_epochs=3, lr=0.01, hflip=True)
    assert (config["backbone"], config["max_epochs"], config["lr"]) == (
        "resnet18",
        3,
        0.01,
    )
    assert config["augment"]["flip_p"] == 0.5


def test_feature_vectors_train_an_mlp_on_neighbour_pairs():
    data = InputDescription("tabular", 5000, n_features=20)
    config = _config(data)
    assert config["backbone"] == "mlp"
    assert config["pair_neighbors"] == 10
    assert config["augment"] is None
    assert config["lr"] == 1e-3
    # 1500 steps of batches of 128 over 5,000 rows (40 batches an epoch).
    assert config["max_epochs"] == 38
    assert config["model"]["n_features"] == 20
    assert config["model"]["image_size"] is None


def test_an_encoder_trains_mlp_heads_on_its_embeddings():
    data = InputDescription("image", 300, (224, 224), 3, encoder=ENCODER)
    config = _config(data)
    assert config["backbone"] == "mlp"
    assert config["encoder"] == ENCODER
    assert config["pair_neighbors"] == 10
    assert config["augment"] is None  # the embeddings are fixed: no image views
    assert config["model"]["n_features"] == 1280
    # 1500 steps of batches of 128 over 300 embeddings (3 batches an epoch).
    assert config["max_epochs"] == 500
    # The same on a GPU, but for the runtime choices.
    gpu = _config(data, GPU)
    assert (gpu["backbone"], gpu["max_epochs"]) == ("mlp", 500)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "small_cnn"])
def test_an_image_backbone_cannot_train_on_feature_vectors(backbone):
    data = InputDescription("tabular", 50, n_features=4)
    with pytest.raises(ValueError, match=f"backbone='{backbone}'.*feature vectors"):
        _config(data, backbone=backbone)


@pytest.mark.parametrize("backbone", ["resnet18", "small_cnn"])
def test_an_image_backbone_cannot_train_on_encoder_embeddings(backbone):
    data = InputDescription("image", 50, (32, 32), 3, encoder=ENCODER)
    with pytest.raises(ValueError, match=f"backbone='{backbone}'.*efficientnet_lite0"):
        _config(data, backbone=backbone)
    assert _config(data, backbone="mlp")["backbone"] == "mlp"


def test_the_auto_backbone_follows_image_size_and_device():
    def backbone(side, device):
        config = _config(InputDescription("image", 2000, (side, side), 3), device)
        return config["backbone"], config["model"]["stem"]

    assert backbone(16, GPU) == ("small_cnn", "cifar")
    assert backbone(28, CPU) == ("small_cnn", "imagenet")  # stride-2 first conv
    assert backbone(28, GPU) == ("resnet18", "cifar")
    assert backbone(64, CPU) == ("small_cnn", "imagenet")
    assert backbone(96, CPU) == ("resnet18", "imagenet")
    assert backbone(96, GPU) == ("resnet34", "imagenet")


def test_a_callable_backbone_gets_the_resnet18_budget_and_lr():
    config = _config(DIGITS, backbone=lambda: None)
    assert callable(config["backbone"])
    assert config["lr"] == 3e-4
    # 3000 steps over 15 batches an epoch.
    assert config["max_epochs"] == 200


def test_cpu_small_cnn_steps_shrink_with_its_first_feature_map():
    def epochs(side, device):
        data = InputDescription("image", 2000, (side, side), 1)
        return _config(data, device, backbone="small_cnn")["max_epochs"]

    # 16 batches an epoch. 28 px: a 14x14 first map, the reference, 1000 steps.
    assert epochs(28, CPU) == 62
    # 64 px: a 32x32 map, 1000 * 196 / 1024 = 191 steps.
    assert epochs(64, CPU) == 12
    # Full resolution (16 px, stride 1) and GPUs keep the whole budget.
    assert epochs(16, CPU) == 62
    assert epochs(64, GPU) == 62


def test_epochs_stay_within_5_and_1000():
    tiny = InputDescription("image", 10, (8, 8), 1)
    huge = InputDescription("image", 10_000_000, (8, 8), 1)
    assert _config(tiny)["max_epochs"] == 1000
    assert _config(huge)["max_epochs"] == 5


def test_colour_photos_get_flips_blur_and_small_crops():
    data = InputDescription("image", 300, (96, 96), 3)
    assert _config(data)["augment"] == {
        "crop_scale": [0.08, 1.0],
        "flip_p": 0.5,
        "jitter_strength": 1.0,
        "blur_p": 0.5,
    }


# ---------------------------------------------------------------------------
# resolve_image_size and resolve_encoder_image_size
# ---------------------------------------------------------------------------


def _photos(height=224, width=224):
    return InputDescription("image", 300, (height, width), 3)


def test_large_images_train_at_32_px_on_a_cpu():
    assert resolve_image_size(_params(), _photos(), CPU) == (32, 32)
    # The aspect ratio is kept; the largest side becomes 32.
    assert resolve_image_size(_params(), _photos(480, 640), CPU) == (24, 32)
    assert resolve_image_size(_params(), _photos(65, 65), CPU) == (32, 32)


@pytest.mark.parametrize(
    "params, data, device",
    [
        ({}, _photos(), GPU),
        ({}, _photos(64, 64), CPU),
        ({}, InputDescription("image", 1797, (8, 8), 1), CPU),
        ({"encoder": "efficientnet_lite0"}, _photos(), CPU),
        ({"image_size": 224}, _photos(), CPU),
        ({"image_size": (224, 224)}, _photos(), CPU),
        ({"backbone": "resnet18"}, _photos(), CPU),
        ({"backbone": "small_cnn"}, _photos(), CPU),
        ({"backbone": lambda: None}, _photos(), CPU),
    ],
    ids=[
        "cuda",
        "64px",
        "digits",
        "encoder",
        "image_size",
        "image_size_tuple",
        "resnet18",
        "small_cnn",
        "callable_backbone",
    ],
)
def test_images_keep_their_size_otherwise(params, data, device):
    assert resolve_image_size(_params(**params), data, device) is None


def test_an_encoder_takes_small_images_at_half_its_input_size():
    assert resolve_encoder_image_size("auto", 224, 28) == (112, 112)
    assert resolve_encoder_image_size("auto", 224, 64) == (112, 112)
    assert resolve_encoder_image_size("auto", 224, 65) == (224, 224)
    assert resolve_encoder_image_size("auto", 224, 480) == (224, 224)
    assert resolve_encoder_image_size("auto", 224, None) == (224, 224)
    assert resolve_encoder_image_size("auto", 256, 8) == (128, 128)
    assert resolve_encoder_image_size(96, 224, 28) == (96, 96)
    assert resolve_encoder_image_size((96, 128), 224, 480) == (96, 128)


# ---------------------------------------------------------------------------
# resolve_runtime
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "device, expected",
    [
        (GPU, {"precision": "bf16", "num_workers": 8}),
        (
            DeviceDescription("cuda", native_bf16=True, n_cpus=4),
            {"precision": "bf16", "num_workers": 4},
        ),
        (
            DeviceDescription("cuda", native_bf16=False, n_cpus=16),
            {"precision": "fp32", "num_workers": 8},
        ),
        (DeviceDescription("cpu", n_cpus=16), {"precision": "fp32", "num_workers": 0}),
        (DeviceDescription("mps", n_cpus=8), {"precision": "fp32", "num_workers": 0}),
    ],
    ids=["cuda", "cuda_4_cpus", "cuda_without_bf16", "cpu", "mps"],
)
def test_runtime_auto_choices(device, expected):
    assert resolve_runtime(_params(), device) == expected


def test_runtime_explicit_values_are_kept():
    params = _params(precision="fp32", num_workers=2)
    assert resolve_runtime(params, GPU) == {"precision": "fp32", "num_workers": 2}
    assert (
        resolve_training_config(
            params,
            family="cdc",
            heads=CDCClusterer()._head_params(),
            data=DIGITS,
            device=GPU,
        )["precision"]
        == "fp32"
    )
