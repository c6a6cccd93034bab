"""Testing for input validation and batched reading (deepclust._inputs)."""

import errno
import io
import os
import re
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image, ImageOps

from deepclust._inputs import (
    CorruptImageError,
    ImageInput,
    InputError,
    PathError,
    SkippedInputsWarning,
    TabularInput,
    check_matches,
    check_min_samples,
    check_value_range,
    image_files_in,
    iter_batches,
    read_input,
    resolve_path,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
rng = np.random.RandomState(0)
RGB_NHWC = rng.randint(0, 256, size=(4, 5, 6, 3)).astype(np.uint8)


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return str(path)


def _png_bytes(array, fmt="PNG"):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


# ---------------------------------------------------------------------------
# Accepted inputs
# ---------------------------------------------------------------------------


def test_nhwc_uint8_array():
    # Check that a uint8 NHWC array is read as uint8 NCHW with the same values.
    inp = read_input(RGB_NHWC)
    assert isinstance(inp, ImageInput)
    assert (inp.n_samples, inp.channels, inp.size) == (4, 3, (5, 6))
    assert inp.dtype == np.uint8
    assert inp.source_shape == (3, 5, 6)
    batch = inp.read([2, 0])
    assert batch.flags.c_contiguous
    np.testing.assert_array_equal(batch, RGB_NHWC[[2, 0]].transpose(0, 3, 1, 2))


def test_nchw_float_array():
    # Check that a float64 NCHW array is read as float32 raw values, not rescaled.
    X = rng.uniform(-5, 300, size=(3, 3, 4, 7))
    inp = read_input(X)
    assert (inp.n_samples, inp.channels, inp.size) == (3, 3, (4, 7))
    assert inp.dtype == np.float32
    assert inp.source_shape == (3, 4, 7)
    np.testing.assert_allclose(inp.materialize(), X.astype(np.float32))


def test_grayscale_3d_int_array():
    # Check that an (N, H, W) int16 array gives 1-channel float32 images.
    X = rng.randint(-1000, 1000, size=(5, 4, 3)).astype(np.int16)
    inp = read_input(X)
    assert (inp.channels, inp.size, inp.dtype) == (1, (4, 3), np.float32)
    assert inp.source_shape == (1, 4, 3)
    np.testing.assert_array_equal(inp.read(slice(1, 3)), X[1:3, None])


@pytest.mark.parametrize(
    "dtype, channels_last", [(np.uint8, True), (np.float32, False)]
)
def test_ambiguous_layout_follows_dtype(dtype, channels_last):
    # Check that an (N, 3, H, 3) array is NHWC for uint8 and NCHW for floats.
    X = np.arange(2 * 3 * 5 * 3).reshape(2, 3, 5, 3).astype(dtype)
    inp = read_input(X)
    assert inp.channels_last is channels_last
    assert inp.size == ((3, 5) if channels_last else (5, 3))


def test_explicit_data_format():
    # Check that data_format overrides the automatic layout choice.
    X = np.zeros((2, 3, 4, 3), dtype=np.uint8)
    assert read_input(X, data_format="channels_first").size == (4, 3)
    assert read_input(X, data_format="channels_last").size == (3, 4)


def test_tabular_inputs():
    # Check that 2-D arrays and nested lists are tabular float32 data.
    inp = read_input(np.arange(12).reshape(4, 3))
    assert isinstance(inp, TabularInput)
    assert (inp.n_samples, inp.n_features) == (4, 3)
    assert inp.data.dtype == np.float32
    from_list = read_input([[1, 2.5], [3, 4]])
    np.testing.assert_array_equal(from_list.data, [[1, 2.5], [3, 4]])
    object_numbers = read_input(np.array([[1, 2.0]], dtype=object))
    assert object_numbers.data.dtype == np.float32
    with pytest.raises(InputError, match="2-D tabular data"):
        read_input(np.ones((3, 2)), allow_tabular=False)


def test_npy_memmap_is_read_lazily(tmp_path):
    # Check that a .npy path stays a memmap and is read batch by batch.
    path = tmp_path / "images.npy"
    np.save(path, RGB_NHWC)
    inp = read_input(path)
    assert isinstance(inp.array, np.memmap)
    assert inp.source_shape == (3, 5, 6)
    expected = RGB_NHWC[[3]].transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(inp.read([3]), expected)
    floats = tmp_path / "floats.npy"
    np.save(floats, rng.uniform(size=(3, 1, 4, 4)).astype(np.float32))
    assert isinstance(read_input(str(floats)).array, np.memmap)


def test_list_of_pil_images():
    # Check PIL lists: all "L" gives 1 channel, a gray/RGB mix gives 3.
    gray = Image.fromarray(RGB_NHWC[0, :, :, 0])
    color = Image.fromarray(RGB_NHWC[1])
    only_gray = read_input([gray, gray])
    assert only_gray.channels == 1
    assert (only_gray.size, only_gray.dtype) == ((5, 6), np.uint8)
    assert only_gray.source_shape is None
    mixed = read_input([gray, color])
    assert mixed.channels == 3
    batch = mixed.read([0, 1])
    gray_as_rgb = np.repeat(RGB_NHWC[None, 0, :, :, 0], 3, axis=0)
    np.testing.assert_array_equal(batch[0], gray_as_rgb)
    np.testing.assert_array_equal(batch[1], RGB_NHWC[1].transpose(2, 0, 1))


def test_list_of_paths_and_directory(tmp_path):
    # Check that paths and folders (recursive, sorted, any-case suffix) are read.
    b = _save(tmp_path / "b.PNG", RGB_NHWC[1])
    a = _save(tmp_path / "sub" / "a.png", RGB_NHWC[0])
    (tmp_path / "notes.txt").write_text("not an image")
    assert image_files_in(tmp_path) == sorted([a, b])
    from_dir = read_input(tmp_path)
    assert from_dir.paths == sorted([a, b])
    assert (from_dir.n_samples, from_dir.channels, from_dir.dtype) == (2, 3, np.uint8)
    from_list = read_input([a, Path(b)])
    expected = RGB_NHWC[:2].transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(from_list.materialize(), expected)
    single = read_input(a)
    np.testing.assert_array_equal(single.read([0]), expected[:1])


def test_files_cache_and_lazy_decoding(tmp_path):
    # Check that cached files need no decoding later while uncached ones do.
    paths = [_save(tmp_path / f"{i}.png", RGB_NHWC[i]) for i in range(3)]
    cached = read_input(paths)
    uncached = read_input(paths, cache_bytes=0)
    np.testing.assert_array_equal(cached.materialize(), uncached.materialize())
    for path in paths:
        Path(path).unlink()
    expected = RGB_NHWC[[1]].transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(cached.read([1]), expected)
    with pytest.raises(CorruptImageError, match="0.png"):
        uncached.read([0])


@pytest.mark.parametrize("cache_bytes", [0, 10**6])
def test_gray_and_color_files(tmp_path, cache_bytes):
    # Check that a folder mixing gray and RGB files gives replicated 3 channels.
    _save(tmp_path / "a.png", RGB_NHWC[0, :, :, 0])
    _save(tmp_path / "b.jpg", RGB_NHWC[1])
    inp = read_input(tmp_path, cache_bytes=cache_bytes)
    assert (inp.channels, inp.size) == (3, (5, 6))
    batch = inp.materialize()
    np.testing.assert_array_equal(batch[0], np.repeat(RGB_NHWC[None, 0, :, :, 0], 3, 0))
    gray = read_input(tmp_path, channels=1, image_size=(2, 3), cache_bytes=cache_bytes)
    assert gray.read([0, 1]).shape == (2, 1, 2, 3)


def test_16_bit_png_is_rescaled(tmp_path):
    # Check that a 16-bit grayscale PNG is scaled to 8 bits, not clipped at 255.
    pixels = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    path = _save(tmp_path / "deep.png", pixels)
    inp = read_input(path)
    assert inp.channels == 1
    np.testing.assert_array_equal(inp.read([0]), [[[[0, 128, 255]]]])


def test_list_of_arrays():
    # Check that per-image arrays (H, W) and (H, W, C) are stacked as NCHW.
    gray = RGB_NHWC[0, :, :, 0]
    inp = read_input([gray, RGB_NHWC[1]])
    assert (inp.channels, inp.size, inp.dtype) == (3, (5, 6), np.uint8)
    np.testing.assert_array_equal(inp.read([1])[0], RGB_NHWC[1].transpose(2, 0, 1))
    mixed_dtypes = read_input([gray, gray.astype(np.float64)])
    assert (mixed_dtypes.channels, mixed_dtypes.dtype) == (1, np.float32)


def test_resizing_matches_pil():
    # Check that arrays, PIL images and files are resized with PIL bilinear.
    image = Image.fromarray(RGB_NHWC[0])
    expected = np.asarray(image.resize((3, 2), Image.BILINEAR))
    from_array = read_input(RGB_NHWC, image_size=(2, 3))
    assert from_array.size == (2, 3)
    assert from_array.source_shape == (3, 5, 6)
    np.testing.assert_array_equal(from_array.read([0])[0], expected.transpose(2, 0, 1))
    from_pil = read_input([Image.fromarray(RGB_NHWC[0])], image_size=(2, 3))
    np.testing.assert_array_equal(from_pil.read([0])[0], expected.transpose(2, 0, 1))
    floats = rng.uniform(size=(1, 1, 5, 6)).astype(np.float32)
    resized = read_input(floats, image_size=4).read([0])
    float_image = Image.fromarray(floats[0, 0])
    expected_float = np.asarray(float_image.resize((4, 4), Image.BILINEAR))
    np.testing.assert_allclose(resized[0, 0], expected_float)
    sizes_differ = [Image.new("L", (5, 4)), Image.new("RGB", (7, 9))]
    resized_list = read_input(sizes_differ, image_size=(3, 3)).materialize()
    assert resized_list.shape == (2, 3, 3, 3)


def test_channels_forcing():
    # Check that channels=1 uses PIL's luma and channels=3 replicates gray.
    expected_gray = np.asarray(Image.fromarray(RGB_NHWC[2]).convert("L"))
    from_array = read_input(RGB_NHWC, channels=1)
    assert from_array.channels == 1
    assert from_array.source_shape == (3, 5, 6)
    np.testing.assert_array_equal(from_array.read([2])[0, 0], expected_gray)
    from_pil = read_input([Image.fromarray(RGB_NHWC[2])], channels=1)
    np.testing.assert_array_equal(from_pil.read([0])[0, 0], expected_gray)
    gray = read_input(RGB_NHWC[..., 0], channels=3).read([0])
    np.testing.assert_array_equal(gray[0], np.repeat(RGB_NHWC[None, 0, ..., 0], 3, 0))
    float_gray = read_input(RGB_NHWC.astype(np.float32), channels=1).read([2])
    np.testing.assert_allclose(float_gray[0, 0], expected_gray, atol=0.5)


def test_read_returns_copies_and_checks_indices():
    # Check that read never returns a view of the input and validates indices.
    X = np.zeros((4, 3, 2, 2), dtype=np.uint8)
    inp = read_input(X)
    inp.read(slice(0, 2))[:] = 7
    assert X.max() == 0
    np.testing.assert_array_equal(inp.read([-1]), inp.read([3]))
    mask = np.array([True, False, True, False])
    assert inp.read(mask).shape == (2, 3, 2, 2)
    assert inp.read([]).shape == (0, 3, 2, 2)
    with pytest.raises(IndexError, match="out of range"):
        inp.read([4])


def test_materialize_nbytes_and_iter_batches():
    # Check nbytes, materialize and the batches yielded by iter_batches.
    inp = read_input(RGB_NHWC)
    assert inp.nbytes == RGB_NHWC.nbytes == inp.materialize().nbytes
    batches = list(iter_batches(inp, 3))
    assert [(start, batch.shape[0]) for start, batch in batches] == [(0, 3), (3, 1)]
    stacked = np.concatenate([batch for _, batch in batches])
    np.testing.assert_array_equal(stacked, inp.materialize())
    tabular = read_input(np.ones((5, 2)))
    assert [start for start, _ in iter_batches(tabular, 2)] == [0, 2, 4]
    with pytest.raises(ValueError, match="batch_size"):
        next(iter_batches(tabular, 0))


# ---------------------------------------------------------------------------
# Invalid inputs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_values(bad_value):
    # Check that NaN/inf raise and the message counts them.
    X = np.ones((4, 3))
    X[0, 0] = X[2, 1] = bad_value
    with pytest.raises(InputError, match=r"2 non-finite value\(s\) \(NaN or inf\)"):
        read_input(X)
    with pytest.raises(InputError, match="non-finite"):
        read_input(np.where(np.ones((2, 1, 4, 4)) > 0, bad_value, 0.0))


def test_values_beyond_float32():
    # Check that float64 values that would overflow float32 are rejected.
    with pytest.raises(InputError, match="float32 range"):
        read_input(np.array([[1e300, 1.0]]))


@pytest.mark.parametrize(
    "X", [[], (), np.empty((0, 3)), np.empty((0, 4, 4)), np.empty(0)]
)
def test_empty(X):
    # Check that empty inputs raise "X is empty".
    with pytest.raises(InputError, match="X is empty"):
        read_input(X)


def test_zero_features():
    # Check scikit-learn's wording for arrays without features.
    with pytest.raises(InputError, match=r"0 feature\(s\) \(shape=\(3, 0\)\)"):
        read_input(np.empty((3, 0)))


def test_wrong_ndim():
    # Check that 0-D, 1-D and 5-D arrays raise with the ndim in the message.
    with pytest.raises(InputError, match="1-D.*Reshape your data"):
        read_input(np.arange(3.0))
    with pytest.raises(InputError, match="5 dimensions.*accepted are 2"):
        read_input(np.zeros((2, 3, 4, 4, 3)))
    with pytest.raises(InputError, match="0-dimensional"):
        read_input(3.0)


def test_four_channels():
    # Check that RGBA arrays are rejected with the hint to drop alpha.
    with pytest.raises(InputError, match=r"RGBA/4-channel.*\[\.\.\., :3\]"):
        read_input(np.zeros((2, 5, 5, 4), dtype=np.uint8))
    with pytest.raises(InputError, match="RGBA"):
        read_input(np.zeros((2, 4, 5, 5)), data_format="channels_first")


def test_two_channels():
    # Check that 2-channel arrays are rejected naming the supported counts.
    with pytest.raises(InputError, match=r"1 \(grayscale\) or 3 \(RGB\)"):
        read_input(np.zeros((2, 5, 5, 2), dtype=np.uint8))
    with pytest.raises(InputError, match=r"2 channels.*'channels_last'"):
        read_input(np.zeros((2, 3, 5, 2)), data_format="channels_last")
    with pytest.raises(InputError, match=r"X\[1\] .* 1 \(grayscale\) or 3"):
        read_input([np.zeros((5, 5)), np.zeros((5, 5, 2))])


def test_mixed_image_sizes(tmp_path):
    # Check that images of different sizes need image_size.
    images = [Image.new("L", (4, 5)), Image.new("L", (6, 7)), Image.new("L", (4, 5))]
    with pytest.raises(InputError, match=r"different sizes.*5x4, 7x6.*image_size"):
        read_input(images)
    paths = [_save(tmp_path / "a.png", np.zeros((3, 3), np.uint8)),
             _save(tmp_path / "b.png", np.zeros((4, 3), np.uint8))]  # fmt: skip
    with pytest.raises(InputError, match="different sizes"):
        read_input(tmp_path)
    with pytest.raises(InputError, match="different sizes"):
        read_input([np.zeros((3, 3)), np.zeros((4, 3))])
    assert read_input(paths, image_size=3).size == (3, 3)


def test_mixed_kinds(tmp_path):
    # Check that lists mixing kinds of items name the kinds found.
    path = _save(tmp_path / "a.png", np.zeros((3, 3), np.uint8))
    with pytest.raises(InputError, match="PIL images, paths.*one kind"):
        read_input([Image.new("L", (3, 3)), path])
    with pytest.raises(InputError, match="image arrays, numbers"):
        read_input([np.zeros((3, 3)), [1, 2]])


def test_non_existent_paths(tmp_path):
    # Check that missing paths are named, up to 10 of them.
    with pytest.raises(InputError, match="does not exist"):
        read_input(str(tmp_path / "nope"))
    missing = [str(tmp_path / f"missing{i}.png") for i in range(12)]
    with pytest.raises(InputError, match=r"12 path\(s\).*missing9.png' and 2 more"):
        read_input(missing)


def test_directory_without_images(tmp_path):
    # Check that a folder without image files is reported.
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(InputError, match="contains no image files"):
        read_input(tmp_path)


def test_unsupported_files(tmp_path):
    # Check that non-image files and broken .npy files raise InputError.
    text = tmp_path / "data.txt"
    text.write_text("1 2 3")
    with pytest.raises(InputError, match="neither a .npy array nor an image"):
        read_input(text)
    broken = tmp_path / "broken.npy"
    broken.write_bytes(b"not numpy")
    with pytest.raises(InputError, match="could not be loaded as a .npy"):
        read_input(broken)


def test_resolve_path_says_what_a_path_stands_for(tmp_path):
    # Check the one decision of what a path is: a folder's image files, a .npy
    # file's memory-mapped array, an image file itself; and the problem named
    # by PathError (which the command line words its own way) otherwise.
    image = _save(tmp_path / "images" / "b.png", np.zeros((3, 3), np.uint8))
    _save(tmp_path / "images" / "a.png", np.zeros((3, 3), np.uint8))
    assert resolve_path(tmp_path / "images") == [
        str(tmp_path / "images" / "a.png"),
        str(image),
    ]
    assert resolve_path(image) == [str(image)]
    np.save(tmp_path / "rows.npy", np.ones((2, 3)))
    assert isinstance(resolve_path(tmp_path / "rows.npy"), np.memmap)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("text")
    (tmp_path / "broken.npy").write_bytes(b"not numpy")
    for path, problem in [
        (tmp_path / "nope", "missing"),
        (tmp_path / "empty", "no_images"),
        (tmp_path / "notes.txt", "not_data"),
        (tmp_path / "broken.npy", "bad_npy"),
    ]:
        with pytest.raises(PathError) as caught:
            resolve_path(path, name="DATA")
        assert caught.value.problem == problem
        assert caught.value.path == str(path)
        assert str(caught.value).startswith("DATA: ")
        assert isinstance(caught.value, InputError)


def _write_bad_files(tmp_path):
    noise = rng.randint(0, 256, size=(32, 32, 3)).astype(np.uint8)
    good = _save(tmp_path / "good.png", noise)
    corrupt = tmp_path / "x.png"
    corrupt.write_bytes(rng.bytes(300))
    png = _png_bytes(noise)
    truncated_png = tmp_path / "half.png"
    truncated_png.write_bytes(png[: len(png) // 2])
    jpeg = _png_bytes(noise, fmt="JPEG")
    truncated_jpeg = tmp_path / "half.jpg"
    truncated_jpeg.write_bytes(jpeg[: len(jpeg) // 2])
    return good, [str(corrupt), str(truncated_png), str(truncated_jpeg)]


def test_corrupt_files_raise(tmp_path):
    # Check that corrupt and truncated files raise, naming each file.
    good, bad = _write_bad_files(tmp_path)
    for path in bad:
        with pytest.raises(CorruptImageError, match=Path(path).name) as info:
            read_input([good, path])
        assert info.value.paths == [path]
    with pytest.raises(CorruptImageError, match="3 image file") as info:
        read_input(tmp_path)
    assert sorted(info.value.paths) == sorted(bad)


def test_corrupt_files_skipped(tmp_path):
    # Check that on_error="skip" warns with the files and keeps the good ones.
    good, bad = _write_bad_files(tmp_path)
    with pytest.warns(UserWarning, match="Skipped 3 image file") as record:
        inp = read_input([bad[0], good, bad[1], bad[2]], on_error="skip")
    message = str(record[0].message)
    assert all(path in message for path in bad)
    assert inp.paths == [good]
    np.testing.assert_array_equal(inp.kept_indices, [1])
    assert inp.materialize().shape == (1, 3, 32, 32)
    with pytest.raises(CorruptImageError, match="no readable image is left"):
        read_input(bad, on_error="skip")


def test_truncated_pil_image(tmp_path):
    # Check that a lazily opened truncated PIL image fails in read_input.
    good, bad = _write_bad_files(tmp_path)
    with Image.open(bad[1]) as truncated, warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CorruptImageError, match=r"X\[0\]"):
            read_input([truncated])


@pytest.mark.parametrize(
    "X, extra",
    [
        (np.ones((3, 2), dtype=np.complex64), "Complex data not supported"),
        (np.array([["a", "b"]], dtype=object), "object"),
        (np.array([["a", "b"]]), "<U1"),
        ([["a", "b"]], "<U1"),
    ],
)
def test_non_numeric_dtypes(X, extra):
    # Check that complex, object and string data raise "non-numeric dtype".
    with pytest.raises(InputError, match=f"non-numeric dtype.*{re.escape(extra)}"):
        read_input(X)


def test_object_array_of_non_numbers_is_also_type_error():
    # Check scikit-learn's expectation: non-numeric objects raise a TypeError.
    X = np.ones((2, 2), dtype=object)
    X[0, 0] = {"foo": "bar"}
    with pytest.raises(TypeError, match="argument must be .* string.* number"):
        read_input(X)


def test_invalid_parameters():
    # Check that bad parameters raise ValueError naming the parameter.
    X = np.zeros((2, 4, 4), dtype=np.uint8)
    for kwargs, param in [
        ({"image_size": 0}, "image_size"),
        ({"image_size": (3, 3, 3)}, "image_size"),
        ({"channels": 2}, "channels"),
        ({"data_format": "nhwc"}, "data_format"),
        ({"on_error": "ignore"}, "on_error"),
        ({"cache_bytes": -1}, "cache_bytes"),
    ]:
        with pytest.raises(ValueError, match=param):
            read_input(X, **kwargs)


def test_check_matches():
    # Check each predict-time mismatch and that a match passes.
    images = read_input(np.zeros((2, 1, 8, 8)))
    fitted = dict(kind="image", channels=1, size=(8, 8), source_shape=(1, 8, 8))
    assert check_matches(images, **fitted) is None
    with pytest.raises(InputError, match="fitted on tabular data"):
        check_matches(images, kind="tabular", n_features=4)
    tabular = read_input(np.zeros((2, 5)))
    sklearn_wording = "X has 5 features, but CDC is expecting 4 features as input"
    with pytest.raises(InputError, match=sklearn_wording):
        check_matches(tabular, kind="tabular", n_features=4, owner="CDC")
    with pytest.raises(InputError, match="the model was fitted with 4 features"):
        check_matches(tabular, kind="tabular", n_features=4)
    with pytest.raises(InputError, match="fitted on image data"):
        check_matches(tabular, **fitted)
    expected_message = r"got shape \(1, 9, 8\), expected shape \(1, 8, 8\)"
    with pytest.raises(InputError, match=expected_message):
        check_matches(read_input(np.zeros((2, 9, 8))), **fitted)
    with pytest.raises(InputError, match="3-channel images.*channels=1"):
        check_matches(read_input([Image.new("RGB", (8, 8))]), **fitted)
    with pytest.raises(InputError, match=r"size \(H, W\) = \(9, 8\).*image_size"):
        check_matches(read_input([Image.new("L", (8, 9))]), **fitted)
    # PIL images resized to the model size are not shape-checked.
    resized = read_input([Image.new("RGB", (5, 3))], image_size=8, channels=1)
    assert check_matches(resized, **fitted) is None


def test_check_min_samples():
    # Check that one sample is reported with scikit-learn's "1 sample" wording.
    inp = read_input(np.ones((1, 3)))
    expected_message = r"X has 1 sample\(s\) but at least 2 are required \(batch"
    with pytest.raises(InputError, match=expected_message):
        check_min_samples(inp, 2, what="batch norm needs 2 samples")
    assert check_min_samples(inp, 1) is None


# ---------------------------------------------------------------------------
# Robustness and import isolation
# ---------------------------------------------------------------------------

_DTYPES = [
    "uint8", "int16", "float16", "float32", "float64", "bool", "complex64", "object"
]  # fmt: skip


@st.composite
def _any_array(draw):
    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    # sampled_from draws about uniformly, so images (3-D/4-D, no zero side)
    # are common enough to exercise the success paths too.
    ndim = draw(st.sampled_from([0, 1, 2, 3, 4, 4, 5]))
    sides = st.sampled_from([0, 1, 2, 3, 3, 4, 5])
    shape = tuple(draw(sides) for _ in range(ndim))
    if dtype.kind == "O":
        elements = st.one_of(
            st.integers(-5, 5), st.floats(), st.text(max_size=2), st.none()
        )
        return draw(hnp.arrays(dtype, shape, elements=elements))
    return draw(hnp.arrays(dtype, shape))


@settings(max_examples=200, deadline=None, database=None)
@given(
    _any_array(),
    st.sampled_from([None, 1, 3]),
    st.sampled_from([None, 2, (3, 1)]),
)
def test_random_arrays_succeed_or_raise_input_error(X, channels, image_size):
    # Check that any shape/dtype either reads correctly or raises InputError.
    for candidate in (X, X.tolist()):
        try:
            inp = read_input(candidate, channels=channels, image_size=image_size)
        except InputError:
            continue
        batch = inp.materialize()
        assert batch.shape[0] == X.shape[0]
        if isinstance(inp, ImageInput):
            assert batch.shape == (inp.n_samples, inp.channels, *inp.size)
            assert batch.dtype == inp.dtype
            assert channels is None or inp.channels == channels
            if image_size is not None:
                assert inp.size == ((2, 2) if image_size == 2 else image_size)
        else:
            assert batch.dtype == np.float32


def test_module_imports_without_torch_sklearn_onnx():
    # Check that the module imports and works with torch, sklearn and onnx blocked.
    code = f"""
import importlib.util, sys
for blocked in ("torch", "sklearn", "onnx", "onnxruntime", "skorch"):
    sys.modules[blocked] = None
spec = importlib.util.spec_from_file_location(
    "deepclust_inputs_isolated", {str(REPO_ROOT / "deepclust" / "_inputs.py")!r}
)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
import numpy as np
inp = module.read_input(np.zeros((2, 4, 4, 3), dtype=np.uint8), image_size=2)
print(inp.read([0, 1]).shape)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(2, 3, 2, 2)"


# ---------------------------------------------------------------------------
# Files that vanish, links, FIFOs, 32-bit TIFFs and EXIF orientation
# ---------------------------------------------------------------------------


def _gray_files(folder, n=3):
    return [
        _save(folder / f"ok{i}.png", np.full((4, 4), 60 * i, np.uint8))
        for i in range(n)
    ]


def test_missing_files_are_skipped_with_a_reason(tmp_path):
    # Check that a file removed after it was listed is skipped with a reason
    # (not an error) with on_error="skip", and named by an InputError otherwise.
    files = _gray_files(tmp_path)
    Path(files[1]).unlink()
    with pytest.warns(SkippedInputsWarning, match="Skipped 1 image file") as record:
        inp = read_input(files, on_error="skip", image_size=4, channels=1)
    path, reason = record[0].message.errors[1]
    assert path == files[1] and reason.startswith("FileNotFoundError: no such file")
    np.testing.assert_array_equal(inp.kept_indices, [0, 2])
    assert inp.skipped == {1: (path, reason)}
    assert inp.input_paths == files
    with pytest.raises(InputError, match=r"1 path\(s\) that do not exist: '.*ok1"):
        read_input(files)


def test_broken_and_looping_links_are_listed_and_reported(tmp_path):
    # Check that broken and looping links named like images are listed, that a
    # link loop to a folder does not make the listing endless, and that reading
    # the folder reports each link instead of leaving it out unseen.
    files = _gray_files(tmp_path)
    (tmp_path / "broken.png").symlink_to("nowhere.png")
    (tmp_path / "loop.png").symlink_to("loop.png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to("..", target_is_directory=True)
    (tmp_path / "folder.png").symlink_to("sub", target_is_directory=True)
    broken, loop = str(tmp_path / "broken.png"), str(tmp_path / "loop.png")
    assert image_files_in(tmp_path) == sorted([*files, broken, loop])
    with pytest.warns(SkippedInputsWarning, match="Skipped 2 image file") as record:
        inp = read_input(tmp_path, on_error="skip")
    reasons = dict(record[0].message.errors.values())
    assert reasons[broken] == "FileNotFoundError: broken symbolic link to 'nowhere.png'"
    assert "Too many levels of symbolic links" in reasons[loop]
    assert inp.n_samples == 3 and inp.n_inputs == 5
    with pytest.raises(InputError, match=r"broken.png' \(broken symbolic link\)"):
        read_input(tmp_path)
    with pytest.raises(CorruptImageError, match="Too many levels") as info:
        read_input([*files, loop])
    assert info.value.paths == [loop]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_named_like_an_image_does_not_hang(tmp_path):
    # Check that a FIFO named like an image is reported as unreadable at once,
    # where opening it would wait for a writer forever.
    files = _gray_files(tmp_path)
    fifo = str(tmp_path / "pipe.png")
    os.mkfifo(fifo)
    outcome = {}

    def read():
        try:
            read_input([*files, fifo], on_error="skip")
        except Exception as exc:  # reported below
            outcome["error"] = exc
        outcome["done"] = True

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(30)
    if reader.is_alive():
        # Unblock the reader (a writer opens the FIFO) before failing.
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(30)
        pytest.fail("reading a FIFO blocked")
    assert "error" not in outcome, outcome
    (warning,) = [w.message for w in caught if w.category is SkippedInputsWarning]
    assert warning.errors == {3: (fifo, "not a regular file: a FIFO, device or socket")}


def test_file_that_cannot_be_opened_is_unreadable(tmp_path, monkeypatch):
    # Check that a file the OS refuses to open (no permission) is skipped with
    # the OS reason. The refusal is simulated: root may open any file.
    files = _gray_files(tmp_path)
    real_open = os.open

    def refusing_open(path, *args, **kwargs):
        if os.fspath(path) == files[0]:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    with pytest.warns(SkippedInputsWarning, match="cannot be read") as record:
        read_input(files, on_error="skip")
    assert record[0].message.errors == {
        0: (files[0], "PermissionError: Permission denied")
    }
    with pytest.raises(CorruptImageError, match=r"ok0.png' \(PermissionError"):
        read_input(files)


def _tiff(folder, name, array):
    path = str(folder / name)
    Image.fromarray(array).save(path)
    return path


def test_32_bit_tiffs_are_scaled_not_clipped(tmp_path):
    # Check the policy for 32-bit TIFFs: floats in [0, 1] are scaled to 0-255,
    # floats in [0, 255] kept, integers scaled from [0, 65535]; other values
    # make the file unreadable with a reason naming the range.
    cases = {
        "unit.tif": (np.array([[0.0, 0.5, 1.0]], np.float32), [0, 128, 255]),
        "bytes.tif": (np.array([[0.0, 100.4, 255.0]], np.float32), [0, 100, 255]),
        "wide.tif": (np.array([[0, 257 * 128, 65535]], np.int32), [0, 128, 255]),
    }
    for name, (pixels, expected) in cases.items():
        path = _tiff(tmp_path, name, pixels)
        with Image.open(path) as image:
            assert image.mode == ("F" if pixels.dtype.kind == "f" else "I")
        for cache_bytes in (0, 10**6):
            batch = read_input(path, cache_bytes=cache_bytes).read([0])
            np.testing.assert_array_equal(batch.ravel(), expected, err_msg=name)
    floats = _tiff(tmp_path, "floats.tif", np.array([[-1, 0, 300]], np.float32))
    ints = _tiff(tmp_path, "ints.tif", np.array([[0, 70000, 5]], np.int32))
    for path, message in [
        (floats, r"mode 'F'\) with values in \[-1, 300\]: only values in \[0, 1\]"),
        (ints, r"mode 'I'\) with values in \[0, 70000\]: only values in \[0, 65535\]"),
    ]:
        for cache_bytes in (0, 10**6):
            with pytest.raises(CorruptImageError, match="cannot be read: .*" + message):
                read_input(path, cache_bytes=cache_bytes)
    with pytest.raises(InputError, match=r"X\[0\] is a PIL image of 32-bit float"):
        read_input([Image.fromarray(np.array([[2.0, 300.0]], np.float32))])
    unit = read_input([Image.fromarray(np.array([[0.0, 1.0]], np.float32))])
    np.testing.assert_array_equal(unit.read([0]).ravel(), [0, 255])


def test_exif_orientation_is_applied(tmp_path):
    # Check that a JPEG whose EXIF says "rotate 90 degrees clockwise" is read
    # upright, with the same pixels whether decoded when probed or later.
    pixels = np.zeros((4, 8, 3), np.uint8)
    pixels[:, 4:] = 255  # left half black, right half white
    exif = Image.Exif()
    exif[0x0112] = 6
    path = str(tmp_path / "rotated.jpg")
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    with Image.open(path) as image:
        expected = np.asarray(ImageOps.exif_transpose(image)).transpose(2, 0, 1)
    cached = read_input(path)
    lazy = read_input(path, cache_bytes=0)
    assert cached.size == lazy.size == (8, 4)
    np.testing.assert_array_equal(cached.read([0])[0], expected)
    np.testing.assert_array_equal(lazy.read([0])[0], expected)
    # Turned clockwise, the black left half is now the top half.
    assert expected[:, :4].max() < 64 and expected[:, 4:].min() > 192


def test_check_value_range():
    # Check the scales refused for models fitted on uint8 and on float images.
    images = RGB_NHWC.transpose(0, 3, 1, 2)
    uint8 = {"fitted_dtype": "uint8", "value_range": (0, 255)}
    check_value_range(images, **uint8)
    check_value_range(images.astype(np.float32), **uint8)
    check_value_range(np.zeros((2, 1, 3, 3), np.float32), **uint8)
    with pytest.raises(InputError, match=r"\(X \* 255\)\.astype\(np\.uint8\)"):
        check_value_range(images / 255.0, **uint8)
    with pytest.raises(InputError, match=r"X holds float images .*\[0, 1\]"):
        check_value_range((images > 127).astype(np.float32), **uint8)
    with pytest.raises(
        InputError, match=r"imgs holds values in \[-3, \d+\], outside \[0, 255\]"
    ):
        check_value_range(images - 3.0, name="imgs", **uint8)
    # None means (0, 255) for uint8 models and "not known" for float models.
    with pytest.raises(InputError, match="uint8 images"):
        check_value_range(images / 255.0, fitted_dtype="uint8", value_range=None)
    check_value_range(images, fitted_dtype="float32", value_range=None)
    unit = {"fitted_dtype": "float32", "value_range": (0.0, 1.0)}
    check_value_range(images / 255.0, **unit)
    check_value_range(np.full((1, 1, 2, 2), 1.5, np.float32), **unit)
    check_value_range(np.full((1, 1, 2, 2), -0.5, np.float32), **unit)
    with pytest.raises(InputError, match=r"X.astype\(np.float32\) / 255"):
        check_value_range(images, **unit)
    with pytest.raises(InputError, match=r"values in \[-0.6, -0.6\].*\[0, 1\]"):
        check_value_range(np.full((1, 1, 2, 2), -0.6, np.float32), **unit)
    wide = {"fitted_dtype": "float32", "value_range": (0.0, 255.0)}
    check_value_range(images, **wide)
    with pytest.raises(InputError, match=r"\[-200, -200\].*rescale X to \[0, 255\]"):
        check_value_range(np.full((1, 1, 2, 2), -200.0, np.float32), **wide)
    bright = {"fitted_dtype": "float32", "value_range": (100.0, 255.0)}
    with pytest.raises(InputError, match=r"pass X \* 255"):
        check_value_range(images / 255.0, **bright)
    with pytest.raises(ValueError, match="fitted_dtype must be"):
        check_value_range(images, fitted_dtype="float64", value_range=None)
    with pytest.raises(ValueError, match="value_range must be"):
        check_value_range(images, fitted_dtype="float32", value_range=(1, 1))
