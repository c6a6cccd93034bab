"""Testing for the API shared by the deepclust estimators, and sklearn's checks."""

import functools
import pickle

import joblib
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.base import clone, is_clusterer
from sklearn.exceptions import NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks
from skorch.callbacks import Callback, EarlyStopping

from deepclust import CDCClusterer, ContrastiveDisentangler
from deepclust._inputs import InputError, read_input
from deepclust.backbones import MLP, FrozenBackbone, SmallCNN, make_backbone
from deepclust.estimators import _net

# Tiny CDC fits often leave a cluster empty; that warning is tested in test_cdc.py.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

ESTIMATORS = [ContrastiveDisentangler, CDCClusterer]
ESTIMATOR_IDS = ["CD", "CDC"]
parametrize_estimators = pytest.mark.parametrize(
    "Estimator", ESTIMATORS, ids=ESTIMATOR_IDS
)

# Smallest heads of each estimator; tests add what they need on top.
_OWN_PARAMS = {
    ContrastiveDisentangler: {"n_heads": 4, "projection_dim": 4},
    CDCClusterer: {"n_clusters": 3, "instance_dim": 4},
}


def tiny(Estimator, **params):
    """A tiny CPU configuration of ``Estimator`` (one epoch, batches of 16)."""
    defaults = {"max_epochs": 1, "batch_size": 16, "device": "cpu", "random_state": 0}
    return Estimator(**{**_OWN_PARAMS[Estimator], **defaults, **params})


def n_outputs(estimator):
    """Columns of ``transform`` for the default ``transform_output``."""
    if isinstance(estimator, CDCClusterer):
        return estimator.n_clusters
    return estimator.n_heads


# ---------------------------------------------------------------------------
# scikit-learn's estimator checks
# ---------------------------------------------------------------------------

_N_CLUSTERS_1_REASON = (
    "the check sets n_clusters=1, which CDCClusterer rejects (n_clusters >= 2): "
    "one cluster leaves nothing to contrast or balance"
)


def _expected_failed_checks(estimator):
    if isinstance(estimator, CDCClusterer):
        return {
            name: _N_CLUSTERS_1_REASON
            for name in [
                "check_dont_overwrite_parameters",
                "check_methods_subset_invariance",
                "check_fit2d_1sample",
                "check_fit2d_1feature",
                "check_fit2d_predict1d",
            ]
        }
    return {}


@parametrize_with_checks(
    [
        ContrastiveDisentangler(
            n_heads=4, projection_dim=4, max_epochs=2, batch_size=16, random_state=0
        ),
        CDCClusterer(
            n_clusters=3, instance_dim=4, max_epochs=3, batch_size=16, random_state=0
        ),
    ],
    expected_failed_checks=_expected_failed_checks,
    # An expected failure that passes fails the test: no check that cannot fail.
    xfail_strict=True,
)
def test_sklearn_compatible_estimator(estimator, check):
    # Check that the estimators pass scikit-learn's estimator checks on 2-D data.
    check(estimator)


# ---------------------------------------------------------------------------
# API contract
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted_on_blobs(blobs):
    """Estimator class -> tiny estimator fitted on the blobs (read-only)."""
    return {Estimator: tiny(Estimator).fit(blobs[0]) for Estimator in ESTIMATORS}


@pytest.fixture(scope="module")
def fitted_on_images(shape_images):
    """Estimator class -> tiny estimator fitted on 8x8 RGB images (read-only)."""
    return {Estimator: tiny(Estimator).fit(shape_images[0]) for Estimator in ESTIMATORS}


@parametrize_estimators
def test_tags(Estimator):
    # Check the tags sklearn reads: transform keeps float32 for both estimators
    # (ClusterMixin would reset it for CDC), and CDC is a clusterer.
    tags = Estimator().__sklearn_tags__()
    assert tags.transformer_tags.preserves_dtype == ["float32"]
    assert is_clusterer(Estimator()) == (Estimator is CDCClusterer)


@parametrize_estimators
def test_fit_returns_self(Estimator, blobs):
    # Check that fit returns the estimator itself.
    estimator = tiny(Estimator)
    assert estimator.fit(blobs[0]) is estimator


@parametrize_estimators
def test_clone_is_unfitted_with_equal_params(Estimator, fitted_on_blobs, blobs):
    # Check that clone of a fitted estimator gives an unfitted copy with equal params.
    fitted = fitted_on_blobs[Estimator]
    copy = clone(fitted)
    assert copy.get_params() == fitted.get_params()
    assert not hasattr(copy, "net_")
    with pytest.raises(NotFittedError):
        copy.transform(blobs[0])


@parametrize_estimators
def test_get_params_set_params_round_trip(Estimator):
    # Check that set_params(**get_params()) reproduces every parameter.
    source = tiny(Estimator, lr=1e-3, verbose=0, image_size=(8, 8), hflip=True)
    target = Estimator().set_params(**source.get_params())
    assert target.get_params() == source.get_params()
    assert target.lr == 1e-3
    assert target.image_size == (8, 8)


@parametrize_estimators
def test_init_stores_params_unchanged(Estimator):
    # Check that __init__ stores its arguments as given, without copy or validation.
    callbacks = [EarlyStopping(monitor="train_loss")]
    random_state = np.random.RandomState(0)
    estimator = Estimator(
        batch_size=0,
        image_size=[8, 9],
        callbacks=callbacks,
        random_state=random_state,
        device="tpu",
    )
    assert estimator.batch_size == 0
    assert estimator.image_size == [8, 9]
    assert estimator.callbacks is callbacks
    assert estimator.random_state is random_state
    assert estimator.device == "tpu"


def test_init_does_not_validate_n_clusters(blobs):
    # Check that an invalid n_clusters is accepted by __init__ and rejected by fit.
    estimator = CDCClusterer(n_clusters=-1)
    assert estimator.n_clusters == -1
    with pytest.raises(ValueError, match="n_clusters"):
        estimator.fit(blobs[0])


@parametrize_estimators
def test_refit_forgets_previous_fit(Estimator, blobs):
    # Check that fitting on X1 then X2 gives the same model as fitting on X2 only.
    X1 = np.random.RandomState(1).normal(size=(30, 3))
    X2 = blobs[0]
    refitted = tiny(Estimator).fit(X1).fit(X2)
    fresh = tiny(Estimator).fit(X2)
    assert refitted.n_features_in_ == 2
    np.testing.assert_array_equal(refitted.transform(X2), fresh.transform(X2))
    assert len(refitted.history_) == len(fresh.history_)


@parametrize_estimators
@pytest.mark.parametrize("serializer", ["pickle", "joblib"])
def test_serialization_round_trip(Estimator, serializer, blobs, tmp_path):
    # Check that pickle and joblib round trips keep fitted and unfitted estimators.
    def round_trip(estimator):
        if serializer == "pickle":
            return pickle.loads(pickle.dumps(estimator))
        path = tmp_path / "model.joblib"
        joblib.dump(estimator, path)
        return joblib.load(path)

    X = blobs[0]
    fitted = tiny(Estimator).fit(X)
    restored = round_trip(fitted)
    np.testing.assert_array_equal(restored.transform(X), fitted.transform(X))
    assert restored.score(X) == fitted.score(X)

    unfitted = round_trip(tiny(Estimator))
    assert unfitted.get_params() == tiny(Estimator).get_params()
    np.testing.assert_array_equal(unfitted.fit(X).transform(X), fitted.transform(X))


@parametrize_estimators
def test_random_state_makes_fit_reproducible(Estimator, blobs):
    # Check that an int random_state gives identical fits on CPU, and another
    # int a different one.
    X = blobs[0]
    first = tiny(Estimator, random_state=3).fit(X).transform(X)
    second = tiny(Estimator, random_state=3).fit(X).transform(X)
    other = tiny(Estimator, random_state=4).fit(X).transform(X)
    np.testing.assert_array_equal(first, second)
    assert not np.allclose(first, other)


@pytest.mark.parametrize(
    "Estimator, method",
    [
        (Estimator, method)
        for Estimator in ESTIMATORS
        for method in ["transform", "predict", "predict_proba", "score", "embed"]
        if hasattr(Estimator, method)
    ],
)
def test_not_fitted_error(Estimator, method, blobs):
    # Check that every inference method raises NotFittedError before fit.
    estimator = tiny(Estimator)
    with pytest.raises(NotFittedError):
        getattr(estimator, method)(blobs[0])


@parametrize_estimators
def test_get_feature_names_out(Estimator, fitted_on_blobs):
    # Check that the output feature names are the class-name prefix plus an index.
    estimator = fitted_on_blobs[Estimator]
    names = estimator.get_feature_names_out()
    prefix = Estimator.__name__.lower()
    assert names.tolist() == [f"{prefix}{i}" for i in range(n_outputs(estimator))]


@parametrize_estimators
def test_set_output_pandas(Estimator, blobs):
    # Check that set_output(transform="pandas") returns a DataFrame with the
    # output feature names.
    pd = pytest.importorskip("pandas")
    X = blobs[0]
    estimator = tiny(Estimator).set_output(transform="pandas").fit(X)
    output = estimator.transform(X)
    assert isinstance(output, pd.DataFrame)
    assert output.columns.tolist() == estimator.get_feature_names_out().tolist()
    assert output.shape == (len(X), n_outputs(estimator))


@parametrize_estimators
def test_score_is_deterministic_in_unit_interval(Estimator, fitted_on_blobs, blobs):
    # Check that score returns the same float in [0, 1] on every call.
    estimator = fitted_on_blobs[Estimator]
    score = estimator.score(blobs[0])
    assert isinstance(score, float)
    assert 0.0 <= score <= 1.0
    assert estimator.score(blobs[0]) == score


@parametrize_estimators
def test_n_epochs_and_history_length(Estimator, blobs):
    # Check that n_epochs_ and the history count the trained epochs.
    estimator = tiny(Estimator, max_epochs=2).fit(blobs[0])
    assert estimator.n_epochs_ == 2
    assert len(estimator.history_) == 2
    assert [len(epoch["batches"]) for epoch in estimator.history_] == [4, 4]


@parametrize_estimators
def test_pickle_after_verbose_fit(Estimator, blobs):
    # Check that an estimator fitted with a progress bar can be pickled.
    estimator = tiny(Estimator, verbose=1).fit(blobs[0])
    restored = pickle.loads(pickle.dumps(estimator))
    np.testing.assert_array_equal(
        restored.transform(blobs[0]), estimator.transform(blobs[0])
    )


@parametrize_estimators
def test_numpy_integer_params(Estimator, blobs):
    # Check that numpy integers are accepted wherever an int is, as they come
    # out of np.arange in parameter grids.
    estimator = tiny(
        Estimator,
        max_epochs=np.int64(2),
        batch_size=np.int64(16),
        random_state=np.int64(0),
    ).fit(blobs[0])
    assert estimator.n_epochs_ == 2
    expected = tiny(Estimator, max_epochs=2).fit(blobs[0]).transform(blobs[0])
    np.testing.assert_array_equal(estimator.transform(blobs[0]), expected)


@parametrize_estimators
def test_invalid_transform_output_after_fit(Estimator, blobs):
    # Check that transform rejects an invalid transform_output set after fit.
    estimator = tiny(Estimator).fit(blobs[0])
    estimator.set_params(transform_output="bogus")
    with pytest.raises(ValueError, match="transform_output"):
        estimator.transform(blobs[0])


# ---------------------------------------------------------------------------
# Accepted inputs
# ---------------------------------------------------------------------------


def _save_pngs(images, folder):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        path = folder / f"image_{index:02d}.png"
        Image.fromarray(image).save(path)
        paths.append(str(path))
    return paths


def _image_input(kind, rgb, gray, folder):
    """The 8x8 images ``rgb`` (NHWC uint8) or ``gray`` as input of the given kind."""
    if kind == "nhwc_uint8":
        return rgb
    if kind == "nchw_float":
        return rgb.transpose(0, 3, 1, 2) / np.float32(255)
    if kind == "nhw_gray":
        return gray
    if kind == "pil_list":
        return [Image.fromarray(image) for image in rgb]
    if kind == "path_list":
        return _save_pngs(rgb, folder)
    _save_pngs(gray, folder)
    return str(folder)


@parametrize_estimators
@pytest.mark.parametrize(
    "kind, channels",
    [
        ("nhwc_uint8", 3),
        ("nchw_float", 3),
        ("nhw_gray", 1),
        ("pil_list", 3),
        ("path_list", 3),
        ("directory", 1),
    ],
)
def test_image_inputs_accepted(
    Estimator, kind, channels, shape_images, gray_images, tmp_path
):
    # Check that every kind of image input fits, and transforms to one row per image.
    X = _image_input(kind, shape_images[0], gray_images[0], tmp_path / "images")
    estimator = tiny(Estimator).fit(X)
    assert estimator.input_kind_ == "image"
    assert estimator.n_channels_ == channels
    assert estimator.image_size_ == (8, 8)
    output = estimator.transform(X)
    assert output.shape == (24, n_outputs(estimator))
    assert np.isfinite(output).all()


@parametrize_estimators
def test_tabular_input_accepted(Estimator, fitted_on_blobs, blobs):
    # Check that 2-D float input is read as tabular data.
    estimator = fitted_on_blobs[Estimator]
    assert estimator.input_kind_ == "tabular"
    assert estimator.n_features_in_ == 2
    assert estimator.transform(blobs[0].tolist()).shape == (60, n_outputs(estimator))


@parametrize_estimators
def test_images_of_different_sizes_resized(Estimator, shape_images):
    # Check that a list of images of different sizes is resized to image_size.
    rgb = shape_images[0]
    images = [
        Image.fromarray(image).resize((8 + i % 3, 8 + i % 5))
        for i, image in enumerate(rgb)
    ]
    estimator = tiny(Estimator, image_size=8).fit(images)
    assert estimator.image_size_ == (8, 8)
    assert estimator.transform(images).shape == (24, n_outputs(estimator))


@parametrize_estimators
def test_transform_resizes_pil_images(Estimator, fitted_on_images, shape_images):
    # Check that PIL images of another size than the training images are resized.
    estimator = fitted_on_images[Estimator]
    images = [Image.fromarray(im).resize((12, 10)) for im in shape_images[0][:5]]
    assert estimator.transform(images).shape == (5, n_outputs(estimator))


@parametrize_estimators
@pytest.mark.parametrize(
    "fitted_on, X, match",
    [
        ("images", np.zeros((3, 12, 12, 3), np.uint8), r"got shape \(3, 12, 12\)"),
        ("images", np.zeros((3, 8, 8), np.uint8), r"got shape \(1, 8, 8\)"),
        ("images", np.zeros((3, 4)), "images are expected"),
        ("blobs", np.zeros((3, 3)), "X has 3 features"),
        ("blobs", np.zeros((3, 8, 8, 3), np.uint8), "fitted on tabular data"),
    ],
    ids=[
        "image_size",
        "channels",
        "tabular_for_images",
        "n_features",
        "images_for_tabular",
    ],
)
def test_predict_input_must_match_fit(
    Estimator, fitted_on, X, match, fitted_on_images, fitted_on_blobs
):
    # Check that inference on data unlike the training data raises InputError.
    fitted = {"images": fitted_on_images, "blobs": fitted_on_blobs}[fitted_on]
    with pytest.raises(InputError, match=match):
        fitted[Estimator].transform(X)


@pytest.fixture
def streamed_training(monkeypatch):
    """Make fit stream batches through a DataLoader instead of uploading the data."""
    monkeypatch.setattr(_net, "_MATERIALIZE_BYTES", 0)


@parametrize_estimators
def test_streamed_training(Estimator, shape_images, streamed_training):
    # Check that training from a streamed (not materialised) input works and is
    # reproducible.
    X = shape_images[0]
    assert _net.InputDataset(read_input(X), torch.device("cpu")).tensor is None
    first = tiny(Estimator).fit(X)
    second = tiny(Estimator).fit(X)
    np.testing.assert_array_equal(first.transform(X), second.transform(X))
    assert first.transform(X).shape == (24, n_outputs(first))


@parametrize_estimators
def test_streamed_training_lone_last_sample(Estimator, shape_images, streamed_training):
    # Check that a last batch of a single sample does not break streamed training.
    X = shape_images[0][:17]
    assert tiny(Estimator).fit(X).transform(X).shape == (17, n_outputs(tiny(Estimator)))


@parametrize_estimators
def test_lone_last_sample(Estimator, shape_images):
    # Check that a last batch of a single sample does not break training on
    # materialised data.
    X = shape_images[0][:17]
    assert tiny(Estimator).fit(X).transform(X).shape == (17, n_outputs(tiny(Estimator)))


# ---------------------------------------------------------------------------
# Parameter validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "Estimator, params, name",
    [
        (
            ContrastiveDisentangler,
            {"instance_temperature": -0.5},
            "instance_temperature",
        ),
        (ContrastiveDisentangler, {"feature_temperature": 0.0}, "feature_temperature"),
        (CDCClusterer, {"temperature": -0.1}, "temperature"),
        (CDCClusterer, {"cluster_temperature": -0.1}, "cluster_temperature"),
        (CDCClusterer, {"n_clusters": 1}, "n_clusters"),
        (ContrastiveDisentangler, {"batch_size": 1}, "batch_size"),
        (CDCClusterer, {"batch_size": 1}, "batch_size"),
        (ContrastiveDisentangler, {"backbone": "vgg16"}, "backbone"),
        (CDCClusterer, {"backbone": "vgg16"}, "backbone"),
        (ContrastiveDisentangler, {"device": "tpu"}, "device"),
        (CDCClusterer, {"device": "tpu"}, "device"),
        (ContrastiveDisentangler, {"precision": "fp8"}, "precision"),
        (CDCClusterer, {"precision": "fp8"}, "precision"),
    ],
)
def test_invalid_parameter_raises(Estimator, params, name, blobs):
    # Check that fit rejects an invalid parameter with a message naming it
    # (\b keeps "temperature" from matching "cluster_temperature").
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        tiny(Estimator, **params).fit(blobs[0])


@parametrize_estimators
def test_one_sample_raises(Estimator):
    # Check that fitting a single sample says that one sample is not enough.
    with pytest.raises(ValueError, match="1 sample"):
        tiny(Estimator).fit(np.ones((1, 3)))


def test_fewer_samples_than_clusters_raises(blobs):
    # Check that CDC needs at least n_clusters samples.
    with pytest.raises(InputError, match="n_clusters"):
        tiny(CDCClusterer, n_clusters=5).fit(blobs[0][:4])


# ---------------------------------------------------------------------------
# "auto" resolution
# ---------------------------------------------------------------------------


@parametrize_estimators
def test_auto_backbone(Estimator, fitted_on_images, fitted_on_blobs):
    # Check that backbone="auto" picks SmallCNN for 8x8 images on CPU and an MLP
    # for tabular data.
    assert isinstance(fitted_on_images[Estimator].net_.module_.backbone, SmallCNN)
    assert isinstance(fitted_on_blobs[Estimator].net_.module_.backbone, MLP)


@parametrize_estimators
def test_auto_augmentation_for_small_images(Estimator, fitted_on_images):
    # Check the "auto" augmentation for 8x8 RGB images: crops of 30-100% of the
    # area, flips (colour images), no blur.
    augment = fitted_on_images[Estimator].net_.criterion_.augment
    assert augment.crop_scale == (0.3, 1.0)
    assert augment.flip_p == 0.5
    assert augment.blur_p == 0.0


@parametrize_estimators
@pytest.mark.parametrize(
    "backbone, expected_lr",
    [("auto", 1e-3), ("mlp", 1e-3), (functools.partial(MLP, 2, hidden=(8,)), 3e-4)],
)
def test_auto_lr(Estimator, blobs, backbone, expected_lr):
    # Check that lr="auto" is 1e-3 for the small networks and 3e-4 (the reference
    # setting) otherwise, and that an explicit lr wins.
    estimator = tiny(Estimator, backbone=backbone, cosine_schedule=False).fit(blobs[0])
    assert estimator.lr == "auto"
    np.testing.assert_allclose(estimator.history_[:, "event_lr"], [expected_lr])
    explicit = tiny(Estimator, backbone=backbone, lr=5e-4, cosine_schedule=False)
    np.testing.assert_allclose(explicit.fit(blobs[0]).history_[:, "event_lr"], [5e-4])


@parametrize_estimators
def test_auto_max_epochs(Estimator, blobs):
    # Check that max_epochs="auto" resolves to a positive number of epochs (early
    # stopping after the second epoch keeps the test short).
    stop = EarlyStopping(
        monitor="train_loss", patience=1, threshold=np.inf, threshold_mode="abs"
    )
    estimator = tiny(Estimator, max_epochs="auto", callbacks=[stop]).fit(blobs[0])
    assert estimator.max_epochs == "auto"
    assert isinstance(estimator.net_.max_epochs, int)
    assert estimator.net_.max_epochs >= 5
    assert estimator.n_epochs_ == 2


@parametrize_estimators
def test_verbose_progress_bar(Estimator, blobs, capsys):
    # Check that verbose=1 draws a progress bar on stderr and verbose=0 prints nothing.
    tiny(Estimator, verbose=0).fit(blobs[0])
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ""
    tiny(Estimator, max_epochs=2, verbose=1).fit(blobs[0])
    captured = capsys.readouterr()
    assert "epochs" in captured.err
    assert "2/2" in captured.err


# ---------------------------------------------------------------------------
# Training path
# ---------------------------------------------------------------------------


class _EpochCounter(Callback):
    def __init__(self):
        self.epochs = 0

    def on_epoch_end(self, net, **kwargs):
        self.epochs += 1


class _BackboneAtTrainBegin(Callback):
    """Copies the backbone's state dict just before training starts."""

    def on_train_begin(self, net, **kwargs):
        state = net.module_.backbone.state_dict()
        self.state_ = {key: value.clone() for key, value in state.items()}


def _assert_same_state(actual, expected):
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)


@parametrize_estimators
def test_cosine_schedule_decays_lr(Estimator, blobs):
    # Check that the cosine schedule decays the learning rate every epoch, and
    # that cosine_schedule=False keeps it constant.
    lr = 1e-3
    cosine = tiny(Estimator, max_epochs=3, lr=lr).fit(blobs[0])
    np.testing.assert_allclose(
        cosine.history_[:, "event_lr"], [lr, 0.75 * lr, 0.25 * lr]
    )
    constant = tiny(Estimator, max_epochs=3, lr=lr, cosine_schedule=False)
    constant.fit(blobs[0])
    np.testing.assert_allclose(constant.history_[:, "event_lr"], [lr] * 3)


@parametrize_estimators
def test_no_gradient_clipping(Estimator, blobs):
    # Check that grad_clip_norm=None trains without the clipping callback.
    estimator = tiny(Estimator, grad_clip_norm=None).fit(blobs[0])
    assert "grad_clip" not in dict(estimator.net_.callbacks_)
    assert "grad_clip" in dict(tiny(Estimator).fit(blobs[0]).net_.callbacks_)
    assert np.isfinite(estimator.history_[:, "train_loss"]).all()


@parametrize_estimators
def test_user_callbacks_called(Estimator, blobs):
    # Check that callbacks passed by the user run at every epoch.
    counter = _EpochCounter()
    tiny(Estimator, max_epochs=2, callbacks=[counter]).fit(blobs[0])
    assert counter.epochs == 2


@parametrize_estimators
def test_freeze_backbone(Estimator, shape_images):
    # Check that freeze_backbone=True leaves the backbone weights and BatchNorm
    # statistics unchanged while the heads train.
    recorder = _BackboneAtTrainBegin()
    estimator = tiny(
        Estimator, freeze_backbone=True, max_epochs=2, callbacks=[recorder]
    ).fit(shape_images[0])
    model = estimator.net_.module_
    assert isinstance(model.backbone, FrozenBackbone)
    _assert_same_state(model.backbone.state_dict(), recorder.state_)
    assert all(
        p.requires_grad
        for name, p in model.named_parameters()
        if not name.startswith("backbone.")
    )


@parametrize_estimators
def test_backbone_weights_loaded(Estimator, gray_images, tmp_path):
    # Check that backbone_weights loads a saved state dict into the backbone
    # before training.
    backbone, _ = make_backbone("resnet18", in_channels=1, image_size=8, stem="cifar")
    with torch.no_grad():
        for parameter in backbone.parameters():
            parameter.uniform_(-0.1, 0.1)
    path = tmp_path / "resnet18.pt"
    torch.save(backbone.state_dict(), path)

    recorder = _BackboneAtTrainBegin()
    estimator = tiny(
        Estimator,
        backbone="resnet18",
        stem="cifar",
        backbone_weights=path,
        batch_size=8,
        callbacks=[recorder],
    )
    estimator.fit(gray_images[0][:8])
    _assert_same_state(recorder.state_, backbone.state_dict())
    assert estimator.transform(gray_images[0][:3]).shape == (3, n_outputs(estimator))


@parametrize_estimators
def test_callable_backbone(Estimator, shape_images):
    # Check that a callable backbone is built and its pooled output feeds the heads.
    factory = functools.partial(torch.nn.Conv2d, 3, 5, 3)
    estimator = tiny(Estimator, backbone=factory, transform_output="embedding")
    estimator.fit(shape_images[0])
    assert estimator.transform(shape_images[0]).shape == (24, 5)


@pytest.mark.gpu
@parametrize_estimators
def test_fit_on_gpu(Estimator, blobs):
    # Check that a bf16 fit on CUDA gives float32 outputs on the host and marks
    # the estimator non-deterministic.
    estimator = tiny(Estimator, device="cuda").fit(blobs[0])
    output = estimator.transform(blobs[0])
    assert output.dtype == np.float32
    assert np.isfinite(output).all()
    assert estimator.net_.precision_dtype == torch.bfloat16
    assert estimator.__sklearn_tags__().non_deterministic
