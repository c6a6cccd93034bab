"""Testing for deepclust.batch_inference: clustering folders of files on Dask.

Every result must have one row per file, in input order, each readable file's
row equal to OnnxClusterer's prediction for that file alone and each
unreadable file marked, whatever the batches and partitions.
"""

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepclust import CDCClusterer, ContrastiveDisentangler
from deepclust._inputs import CorruptImageError, image_files_in
from deepclust.datasets import make_shape_images

pd = pytest.importorskip("pandas")
dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")
onnx = pytest.importorskip("deepclust.onnx")
batch_inference = pytest.importorskip("deepclust.batch_inference")
predict_files = batch_inference.predict_files
predict_files_dask = batch_inference.predict_files_dask

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

N_GOOD = 24
# Positions (in sorted order) of unreadable files: first, in a subfolder,
# middle, and last; 3 and 4 also sit next to each other across a batch edge.
BAD = {0: "junk", 3: "empty", 4: "truncated", 13: "junk", N_GOOD + 3: "junk"}
SUBFOLDER = {4, 5}


def _write_images(folder: Path, images):
    folder.mkdir(parents=True)
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"train{index:02d}.png")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """ONNX files of a CDC and a CD fitted on a folder of 30 8x8 PNGs."""
    folder = tmp_path_factory.mktemp("models")
    images, _ = make_shape_images(30, image_size=8, n_classes=3, random_state=0)
    _write_images(folder / "train", images)
    small = {"max_epochs": 1, "batch_size": 15, "random_state": 0}
    cdc = CDCClusterer(n_clusters=3, **small).fit(str(folder / "train"))
    cd = ContrastiveDisentangler(n_heads=4, **small).fit(str(folder / "train"))
    return {
        "cdc": str(cdc.export_onnx(folder / "cdc.onnx")),
        "cd": str(cd.export_onnx(folder / "cd.onnx")),
    }


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Readable PNGs with unreadable files at BAD, a subfolder and a text file."""
    root = tmp_path_factory.mktemp("images")
    images, _ = make_shape_images(N_GOOD, image_size=8, n_classes=3, random_state=1)
    good = iter(images)
    valid_png = root / "valid.tmp"
    Image.fromarray(images[0]).save(valid_png, format="PNG")
    for position in range(N_GOOD + len(BAD)):
        # Zero-padded names make the sorted order equal to `position`, also for
        # the files in subfolders ("f03.png" < "f04/inner.png" < "f05...").
        name = f"f{position:02d}" + ("/inner.png" if position in SUBFOLDER else ".png")
        path = root / name
        path.parent.mkdir(exist_ok=True)
        kind = BAD.get(position)
        if kind == "junk":
            path.write_bytes(b"not an image")
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "truncated":
            path.write_bytes(valid_png.read_bytes()[:60])
        else:
            Image.fromarray(next(good)).save(path)
    valid_png.unlink()
    (root / "notes.txt").write_text("not listed")
    return root


@pytest.fixture(scope="module")
def files(folder):
    paths = image_files_in(folder)
    assert len(paths) == N_GOOD + len(BAD)
    return paths


@pytest.fixture(scope="module")
def client():
    """A real local Dask cluster: 2 worker processes of 1 thread, on loopback."""
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def _alone(model, path):
    """OnnxClusterer's output for one file on its own."""
    clusterer = onnx.OnnxClusterer(model)
    if clusterer.n_clusters:
        return clusterer.predict_proba([path])[0]
    return clusterer.transform([path], output="heads")[0]


def _check_rows(result, files, model, value_prefix):
    assert result["path"].tolist() == files
    assert result.index.tolist() == list(range(len(files)))
    values = result[[c for c in result.columns if c.startswith(value_prefix)]]
    for position, path in enumerate(files):
        row = result.iloc[position]
        if position in BAD:
            assert row["status"] == "unreadable", path
            assert "Error" in row["error"], path
            assert np.isnan(values.iloc[position].to_numpy(float)).all(), path
            if "label" in result:
                assert row["label"] is pd.NA and np.isnan(row["probability"])
        else:
            assert row["status"] == "ok" and row["error"] is pd.NA, path
            alone = _alone(model, path)
            np.testing.assert_allclose(
                values.iloc[position].to_numpy(float), alone, rtol=1e-5, atol=1e-6
            )
            if "label" in result:
                assert row["label"] == alone.argmax()
                assert row["probability"] == pytest.approx(alone.max(), rel=1e-6)


def test_iter_image_files_matches_image_files_in(tmp_path):
    # Check the streaming lister gives exactly the sorted order of image_files_in,
    # also where folder names are prefixes of file names.
    names = [
        "b.png", "a.png", "a/c.png", "a/b/z.PNG", "a0/x.jpg", "a-b.png", "a.b/y.png",
        "z/deep/er/w.webp", "empty/", "notes.txt", "a/readme.md",
    ]  # fmt: skip
    for name in names:
        path = tmp_path / name
        if name.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    listed = list(batch_inference.iter_image_files(tmp_path))
    assert listed == image_files_in(tmp_path)
    assert len(listed) == 8
    with pytest.raises(NotADirectoryError, match="root"):
        next(batch_inference.iter_image_files(tmp_path / "b.png"))


def test_predict_files_one_row_per_file_in_order(models, files):
    # Check one row per file in input order with batches smaller than the input,
    # each readable row equal to predicting the file alone, unreadable rows marked.
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the reasons go to rows, not warnings
        result = predict_files(models["cdc"], files, batch_size=4)
    _check_rows(result, files, models["cdc"], "proba_")
    assert result.columns.tolist()[:5] == [
        "path", "status", "error", "label", "probability"
    ]  # fmt: skip
    assert (result.dtypes == batch_inference.result_meta(models["cdc"]).dtypes).all()
    # One call per file gives the same rows: batch edges change nothing.
    pd.testing.assert_frame_equal(
        predict_files(models["cdc"], files, batch_size=1), result
    )


def test_predict_files_cd_gives_head_columns(models, files):
    result = predict_files(models["cd"], files, batch_size=5)
    assert [c for c in result.columns if c.startswith("head_")] == [
        f"head_{k}" for k in range(4)
    ]
    assert "label" not in result and "probability" not in result
    _check_rows(result, files, models["cd"], "head_")


def test_predict_files_keeps_index_and_relative_paths(models, folder, files):
    # Check that a DataFrame partition (as Ray and Spark pass) keeps its index and
    # that relative paths are read below root but reported as given.
    relative = [os.path.relpath(path, folder) for path in files]
    frame = pd.DataFrame({"path": relative}, index=range(100, 100 + len(files)))
    result = predict_files(models["cdc"], frame, root=folder, batch_size=7)
    assert result.index.tolist() == frame.index.tolist()
    assert result["path"].tolist() == relative
    expected = predict_files(models["cdc"], files, batch_size=7)
    np.testing.assert_array_equal(result["label"], expected["label"])
    np.testing.assert_array_equal(result["status"], expected["status"])


def test_missing_file_is_unreadable_or_raises(models, folder, files, tmp_path):
    # Check that a file removed after the listing gets an unreadable row instead
    # of failing the partition, and that on_error="raise" names the bad file.
    gone = str(tmp_path / "gone.png")
    result = predict_files(models["cdc"], [files[1], gone, str(folder / "f04")])
    assert result["status"].tolist() == ["ok", "unreadable", "unreadable"]
    assert "FileNotFoundError" in result["error"][1]
    assert "IsADirectoryError" in result["error"][2]
    with pytest.raises(CorruptImageError, match="f13.png"):
        predict_files(models["cdc"], files[10:15], on_error="raise")


def test_model_loaded_once_per_process(models, files):
    batch_inference._CACHE.clear()
    predict_files(models["cdc"], files[:2], threads=1)
    first = list(batch_inference._CACHE.values())
    predict_files(models["cdc"], files[2:4], threads=1)
    assert list(batch_inference._CACHE.values()) == first and len(first) == 1


def test_runs_without_torch_and_names_the_extra(models, files, monkeypatch):
    # Check that the workers need neither torch nor scikit-learn, and that a
    # missing pandas or Dask names the extra to install.
    code = f"""
import sys
sys.modules["torch"] = None
sys.modules["sklearn"] = None
from deepclust.batch_inference import predict_files
print(predict_files({models["cdc"]!r}, {files[:2]!r})["status"].tolist())
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['unreadable', 'ok']"
    for module in ("pandas", "dask.dataframe"):
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, module, None)
            with pytest.raises(ImportError, match=r"deepclust\[scale\]"):
                predict_files_dask(models["cdc"], files)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 0}, "batch_size must be a positive int"),
        ({"on_error": "ignore"}, "on_error must be 'skip' or 'raise'"),
        ({"threads": 0}, "threads must be None or a positive int"),
        ({"paths": "one.png"}, "paths must be a sequence"),
        ({"paths": ["a.png", None]}, r"paths\[1\] is None"),
        ({"paths": pd.DataFrame({"file": ["a.png"]})}, "without a 'path' column"),
        ({"model_path": "missing.onnx"}, "missing.onnx"),
    ],
)
def test_predict_files_errors_name_the_parameter(models, kwargs, match):
    arguments = {"model_path": models["cdc"], "paths": ["a.png"], **kwargs}
    with pytest.raises((ValueError, TypeError, FileNotFoundError), match=match):
        predict_files(arguments.pop("model_path"), arguments.pop("paths"), **arguments)


def test_dask_one_row_per_file_in_order(models, folder, files, client):
    # Check on a real two-process cluster that a folder split in several
    # partitions gives each file exactly once, in order, equal to predict_files.
    result = predict_files_dask(
        models["cdc"], folder, partition_size=5, batch_size=2, threads=1
    )
    assert result.npartitions == 6 and result.known_divisions
    # The dtypes are declared, not inferred by running the model.
    pd.testing.assert_frame_equal(
        result._meta, batch_inference.result_meta(models["cdc"])
    )
    computed = result.compute()
    expected = predict_files(models["cdc"], files, batch_size=2)
    pd.testing.assert_frame_equal(computed, expected)
    assert computed["path"].is_unique
    # Each worker process that ran a partition loaded the model once.
    loaded = client.run(lambda: len(batch_inference._CACHE))
    assert sorted(loaded.values())[-1] == 1 and set(loaded.values()) <= {0, 1}


def test_dask_cd_and_relative_paths(models, folder, files, client):
    # Check CD head columns on Dask, and a list of relative paths with root.
    relative = [os.path.relpath(path, folder) for path in files]
    result = predict_files_dask(
        models["cd"], iter(relative), root=folder, partition_size=8, threads=1
    ).compute()
    expected = predict_files(models["cd"], files)
    assert result["path"].tolist() == relative
    pd.testing.assert_frame_equal(
        result.drop(columns="path"), expected.drop(columns="path")
    )
    assert [c for c in result.columns if c.startswith("head_")] == [
        f"head_{k}" for k in range(4)
    ]


# Dask's Parquet writer still passes inplace=True, which pandas 3.1 deprecates.
@pytest.mark.filterwarnings("ignore:The inplace keyword:DeprecationWarning:dask")
def test_dask_dataframe_of_paths_and_errors(models, files, tmp_path):
    # Check a listing already in Dask (as read_parquet gives) keeps its
    # partitions and named index through a Parquet round trip, and that bad files
    # arguments name the parameter.
    index = pd.Index(range(10, 10 + len(files)), name="position")
    listing = dd.from_pandas(pd.DataFrame({"path": files}, index=index), npartitions=3)
    result = predict_files_dask(models["cdc"], listing)
    assert result.npartitions == 3 and result.index.name == "position"
    result.to_parquet(tmp_path / "clusters", compute_kwargs={"scheduler": "sync"})
    written = dd.read_parquet(tmp_path / "clusters", calculate_divisions=True)
    pd.testing.assert_frame_equal(
        written.compute(), predict_files(models["cdc"], listing.compute())
    )
    with pytest.raises(ValueError, match="files holds no image file"):
        predict_files_dask(models["cdc"], [])
    with pytest.raises(ValueError, match="files has a missing value at position 1"):
        predict_files_dask(models["cdc"], ["a.png", None])
    with pytest.raises(ValueError, match="without a 'path' column"):
        predict_files_dask(models["cdc"], listing.rename(columns={"path": "file"}))
    with pytest.raises(NotADirectoryError, match="files .*f01.png' is not a folder"):
        predict_files_dask(models["cdc"], files[1])
    with pytest.raises(ValueError, match="partition_size must be a positive int"):
        predict_files_dask(models["cdc"], files, partition_size=0)
