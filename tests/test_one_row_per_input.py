"""Every output has one row per input, in input order, for every predictor.

Unreadable image files (``on_error="skip"``) keep their row: label -1 and NaN
values. Each readable file's row must equal the result of predicting that file
alone, wherever the unreadable files sit.
"""

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepclust import CDCClusterer, ContrastiveDisentangler
from deepclust._inputs import (
    CorruptImageError,
    SkippedInputsWarning,
    image_files_in,
    read_input,
)
from deepclust.datasets import make_shape_images

onnx = pytest.importorskip("deepclust.onnx")

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

SMALL = {"max_epochs": 1, "batch_size": 8, "random_state": 0}
N_GOOD = 9


def _write_folder(root: Path, bad_positions):
    """Readable PNGs with corrupt files at ``bad_positions`` (in sorted order)."""
    images, _ = make_shape_images(N_GOOD, image_size=8, n_classes=3, random_state=1)
    root.mkdir(parents=True, exist_ok=True)
    names = []
    good = iter(images)
    for position in range(N_GOOD + len(bad_positions)):
        # Zero-padded names keep the sorted order equal to `position`, also
        # for the file placed in a subfolder.
        name = f"f{position:02d}.png"
        if position == 4:
            name = f"f{position:02d}/inner.png"
        path = root / name
        path.parent.mkdir(exist_ok=True)
        if position in bad_positions:
            path.write_bytes(b"not an image")
        else:
            Image.fromarray(next(good)).save(path)
        names.append(str(path))
    assert image_files_in(root) == names
    return names


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A fitted CDC and CD on 8x8 RGB images, and their ONNX files."""
    images, _ = make_shape_images(24, image_size=8, n_classes=3, random_state=0)
    folder = tmp_path_factory.mktemp("onnx")
    cdc = CDCClusterer(n_clusters=3, **SMALL).fit(images)
    cd = ContrastiveDisentangler(n_heads=4, **SMALL).fit(images)
    return {
        "cdc": cdc,
        "cd": cd,
        "cdc_onnx": onnx.OnnxClusterer(
            cdc.export_onnx(folder / "cdc.onnx"), on_error="skip"
        ),
        "cd_onnx": onnx.OnnxClusterer(
            cd.export_onnx(folder / "cd.onnx", outputs=["heads", "embedding"]),
            on_error="skip",
        ),
    }


def _predictors(models):
    """(name, callable) pairs covering every method that returns rows."""
    cdc = models["cdc"].set_params(on_error="skip")
    cd = models["cd"].set_params(on_error="skip")
    cdc_onnx, cd_onnx = models["cdc_onnx"], models["cd_onnx"]
    return [
        ("CDC.predict", cdc.predict),
        ("CDC.predict_proba", cdc.predict_proba),
        (
            "CDC.transform(instance)",
            lambda X: cdc.set_params(transform_output="instance").transform(X),
        ),
        ("CDC.embed", cdc.embed),
        (
            "CD.transform(heads)",
            lambda X: cd.set_params(transform_output="heads").transform(X),
        ),
        (
            "CD.transform(embedding)",
            lambda X: cd.set_params(transform_output="embedding").transform(X),
        ),
        ("Onnx.predict", cdc_onnx.predict),
        ("Onnx.predict_proba", cdc_onnx.predict_proba),
        ("Onnx.transform(labels)", lambda X: cdc_onnx.transform(X, output="labels")),
        ("OnnxCD.transform(heads)", cd_onnx.transform),
        (
            "OnnxCD.transform(embedding)",
            lambda X: cd_onnx.transform(X, output="embedding"),
        ),
    ]


def _is_marked(row):
    row = np.atleast_1d(row)
    return (
        bool(np.all(row == -1)) if row.dtype.kind == "i" else bool(np.isnan(row).all())
    )


@pytest.mark.parametrize(
    "bad_positions",
    [(0,), (4,), (5,), (N_GOOD,), (0, 4, 7, N_GOOD + 2)],
    ids=["first", "in-subfolder", "middle", "last", "everywhere"],
)
def test_unreadable_files_keep_their_rows(models, tmp_path, bad_positions):
    # Check that, on a folder and on a list of paths, every predictor returns one
    # row per file, each readable file's row equal to predicting that file alone
    # and each unreadable file's row marked (-1 or NaN).
    names = _write_folder(tmp_path / "images", set(bad_positions))
    for name, predict in _predictors(models):
        for X in (str(tmp_path / "images"), names):
            with pytest.warns(SkippedInputsWarning) as record:
                rows = predict(X)
            assert sorted(record[0].message.errors) == sorted(bad_positions), name
            assert len(rows) == len(names), name
            for position, path in enumerate(names):
                if position in bad_positions:
                    assert _is_marked(rows[position]), (name, position)
                else:
                    alone = predict([path])
                    np.testing.assert_allclose(
                        rows[position],
                        alone[0],
                        rtol=1e-5,
                        atol=1e-6,
                        err_msg=f"{name}: row {position} ({path})",
                    )


def test_all_files_unreadable_gives_marked_rows(models, tmp_path):
    # Check that predicting only unreadable files with on_error="skip" returns one
    # marked row per file instead of raising or returning nothing.
    bad = []
    for index in range(3):
        path = tmp_path / f"bad{index}.png"
        path.write_bytes(b"junk")
        bad.append(str(path))
    for name, predict in _predictors(models):
        with pytest.warns(SkippedInputsWarning):
            rows = predict(bad)
        assert len(rows) == 3, name
        assert all(_is_marked(row) for row in rows), name


def test_on_error_raise_names_the_file(models, tmp_path):
    # Check that the default on_error="raise" refuses to predict instead of
    # leaving a row out.
    names = _write_folder(tmp_path / "images", {2})
    cdc = models["cdc"].set_params(on_error="raise")
    with pytest.raises(CorruptImageError, match="f02.png") as info:
        cdc.predict(names)
    assert info.value.paths == [names[2]]
    with pytest.raises(CorruptImageError, match="on_error='skip'"):
        onnx.OnnxClusterer(models["cdc_onnx"].path).predict(names)


def test_fit_with_skip_joins_back_to_files(tmp_path):
    # Check that a fit on a folder with unreadable files records the files and
    # the skipped positions, and that labels_ has one row per file.
    names = _write_folder(tmp_path / "images", {0, 6})
    with pytest.warns(SkippedInputsWarning):
        cdc = CDCClusterer(n_clusters=3, on_error="skip", **SMALL).fit(
            str(tmp_path / "images")
        )
    assert cdc.input_files_ == names
    np.testing.assert_array_equal(cdc.skipped_indices_, [0, 6])
    assert cdc.labels_.shape == (len(names),)
    assert cdc.labels_[0] == cdc.labels_[6] == -1
    with pytest.warns(SkippedInputsWarning):
        np.testing.assert_array_equal(cdc.predict(names), cdc.labels_)
    assert cdc.cluster_sizes_.sum() == N_GOOD
    with pytest.warns(SkippedInputsWarning):
        cd = ContrastiveDisentangler(n_heads=4, on_error="skip", **SMALL)
        heads = cd.fit_transform(names)
    assert heads.shape == (len(names), 4)
    assert (
        np.isnan(heads[[0, 6]]).all()
        and not np.isnan(np.delete(heads, [0, 6], 0)).any()
    )


@pytest.mark.parametrize(
    "kind", ["nhwc", "nchw-float", "gray", "pil", "arrays", "npy", "tabular"]
)
def test_every_input_kind_gives_one_row_per_input(models, tmp_path, kind):
    # Check len(predict(X)) == len(X), in input order, for every kind of input.
    images, _ = make_shape_images(7, image_size=8, n_classes=3, random_state=2)
    cdc = models["cdc"]
    if kind == "tabular":
        X = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
        cdc = CDCClusterer(n_clusters=2, **SMALL).fit(X)
    elif kind == "nhwc":
        X = images
    elif kind == "nchw-float":
        X = images.transpose(0, 3, 1, 2).astype(np.float32)
        cdc = CDCClusterer(n_clusters=2, **SMALL).fit(X)
    elif kind == "gray":
        X = images[..., 0]
        cdc = CDCClusterer(n_clusters=2, **SMALL).fit(X)
    elif kind == "pil":
        X = [Image.fromarray(image) for image in images]
    elif kind == "arrays":
        X = list(images)
    else:
        X = str(tmp_path / "images.npy")
        np.save(X, images)
    labels = cdc.predict(X)
    assert labels.shape == (7,)
    # Reversing the input reverses the rows: nothing is reordered.
    reversed_X = X if kind == "npy" else X[::-1]
    if kind != "npy":
        np.testing.assert_array_equal(cdc.predict(reversed_X), labels[::-1])
    assert cdc.predict_proba(X).shape == (7, cdc.n_clusters)


def test_read_input_records_skipped_files(tmp_path):
    # Check the bookkeeping of read_input with on_error="skip": kept positions,
    # skipped files with their reasons, and input_paths in input order.
    names = _write_folder(tmp_path / "images", {1, 3})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedInputsWarning)
        source = read_input(names, on_error="skip")
    assert source.n_inputs == len(names) and source.n_samples == len(names) - 2
    assert sorted(source.skipped) == [1, 3]
    assert source.skipped[1][0] == names[1] and "Error" in source.skipped[1][1]
    assert source.input_paths == names
    rows = source.to_input_rows(np.arange(source.n_samples, dtype=float), np.nan)
    assert np.isnan(rows[[1, 3]]).all()
    np.testing.assert_array_equal(np.delete(rows, [1, 3]), np.arange(source.n_samples))
