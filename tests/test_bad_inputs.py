"""Every bad input of the estimators and OnnxClusterer gives a clear, early error.

``CASES`` lists the bad inputs; each one is run against every class it applies to
and its outcome (exception type and exact message, warning, or documented
conversion) is checked here. The same outcomes make the table in
``docs/bad_inputs.md``: ``test_docs_table_is_up_to_date`` fails when the file
differs from them, and ``python tools/make_bad_inputs_table.py`` rewrites it.

The hypothesis test at the end feeds random shapes and dtypes to ``fit`` and
``predict`` and checks that only the documented exception types come out, raised
by deepclust's or scikit-learn's validation and never from deeper in torch.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.utils._param_validation import InvalidParameterError

from deepclust import CDCClusterer, ContrastiveDisentangler
from deepclust._inputs import CorruptImageError, InputError, SkippedInputsWarning
from deepclust.datasets import make_shape_images

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS_TABLE = REPO_ROOT / "docs" / "bad_inputs.md"
CD, CDC, ONNX = "ContrastiveDisentangler", "CDCClusterer", "OnnxClusterer"
ESTIMATORS = (CD, CDC)
SMALL = {"max_epochs": 1, "batch_size": 16, "random_state": 0}
N_CLUSTERS = 3
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

_RNG = np.random.default_rng(0)
TABULAR = _RNG.standard_normal((24, 4))
IMAGES = make_shape_images(24, image_size=8, n_classes=3, random_state=0)[
    0
]  # (24, 8, 8, 3) uint8


# ---------------------------------------------------------------------------
# What the cases run on
# ---------------------------------------------------------------------------


class Context:
    """Files and fitted models shared by the cases, built on first use."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._fitted = {}
        self._onnx = {}
        rng = np.random.default_rng(1)
        self.ok = [
            self._image(f"ok_{i}.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
            for i in range(4)
        ]
        self.large = self._image(
            "large.png", rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
        )
        self.rgba = self._image(
            "rgba.png", rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
        )
        self.corrupt = str(self.root / "corrupt.png")
        Path(self.corrupt).write_bytes(b"this is not a PNG file")
        complete = self.root / "complete.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            complete
        )
        self.truncated = str(self.root / "truncated.png")
        Path(self.truncated).write_bytes(complete.read_bytes()[:600])
        complete.unlink()
        self.empty_dir = self.root / "no_images"
        self.empty_dir.mkdir()
        (self.empty_dir / "notes.txt").write_text("no images here")
        self.missing = str(self.root / "missing.png")
        # A folder of images with a link to a file that is gone, a link that
        # points at itself, and a FIFO (opening it would wait for a writer).
        self.links = self.root / "with_links"
        self.links.mkdir()
        for i, path in enumerate(self.ok):
            (self.links / f"ok_{i}.png").write_bytes(Path(path).read_bytes())
        (self.links / "broken.png").symlink_to("gone.png")
        self.loop = str(self.root / "loop.png")
        os.symlink("loop.png", self.loop)
        self.fifo = str(self.root / "pipe.png")
        os.mkfifo(self.fifo)
        # 32-bit TIFFs (PIL modes "F" and "I") and an EXIF-rotated JPEG.
        ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
        self.unit_tiff = self._image("unit.tif", ramp)
        self.float_tiff = self._image("float.tif", ramp * 301 - 1)
        self.int_tiff = self._image("int.tif", (ramp * 70000).astype(np.int32))
        exif = Image.Exif()
        exif[0x0112] = 6  # displayed turned 90 degrees clockwise
        self.rotated = str(self.root / "rotated.jpg")
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            self.rotated, exif=exif
        )

    def _image(self, name, array):
        path = self.root / name
        Image.fromarray(array).save(path)
        return str(path)

    def new(self, name, **params):
        """An unfitted estimator with tiny settings."""
        if name == CD:
            return ContrastiveDisentangler(**{"n_heads": 4, **SMALL, **params})
        return CDCClusterer(**{"n_clusters": N_CLUSTERS, **SMALL, **params})

    def fitted(self, name, kind):
        """An estimator (or the CDCClusterer's OnnxClusterer) fitted on ``kind``."""
        if name == ONNX:
            return self.onnx(kind)
        if (name, kind) not in self._fitted:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                self._fitted[name, kind] = self.new(name).fit(
                    TABULAR if kind == "tabular" else IMAGES
                )
        return self._fitted[name, kind]

    def onnx(self, kind):
        from deepclust.onnx import OnnxClusterer, export_onnx

        if kind not in self._onnx:
            path = export_onnx(self.fitted(CDC, kind), self.root / f"cdc_{kind}.onnx")
            self._onnx[kind] = OnnxClusterer(path)
        return self._onnx[kind]

    def normalise(self, message: str) -> str:
        """The message with temporary paths and addresses replaced by placeholders."""
        message = message.replace(str(self.root), "<tmp>")
        message = re.sub(r"\b0x[0-9a-fA-F]{6,}\b", "0x...", message)
        # scikit-learn lists the options of a parameter in set order, which
        # changes from one Python process to the next: sort them.
        return re.sub(r"\{'[^{}]*'\}", _sorted_set, message)


def _sorted_set(match):
    items = sorted(item.strip() for item in match.group(0)[1:-1].split(","))
    return "{" + ", ".join(items) + "}"


def _predict(estimator, X):
    # ContrastiveDisentangler has no predict: transform is its inference call.
    return (
        estimator.transform(X)
        if isinstance(estimator, ContrastiveDisentangler)
        else estimator.predict(X)
    )


# ---------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------


@dataclass
class Case:
    """One bad input.

    Parameters
    ----------
    id : str
        Test id.
    row : str
        Row label of the docs table (the bad input, in the issue's words).
    call : {"fit", "predict", "before fit", "construct"}
        What the user calls: ``fit(X)`` on a new estimator, ``predict(X)`` (CD:
        ``transform``) on a fitted one, ``predict`` on an unfitted one, or
        ``fit`` with invalid parameters (``OnnxClusterer(path, **params)``).
    X : callable
        ``X(ctx)`` gives the input.
    expected : type or None
        Exception (or warning) class expected; None when the input is accepted
        (a documented conversion).
    match : str
        Regular expression the message must contain (for accepted inputs: the
        note shown in the table).
    targets : tuple of str
        Classes the case applies to.
    kind : {"tabular", "image"}
        Data the model of a predict call was fitted on.
    params : dict
        Parameters of the estimator (or of OnnxClusterer).
    """

    id: str
    row: str
    call: str
    X: callable
    expected: type | None
    match: str
    targets: tuple = ESTIMATORS
    kind: str = "tabular"
    params: dict = field(default_factory=dict)

    def run(self, target, ctx):
        """Call the target; return ``(outcome class or None, message)``."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                self._call(target, ctx)
            except Exception as exc:  # the outcome is whatever is raised
                return type(exc), ctx.normalise(str(exc))
        user = [
            w
            for w in caught
            if issubclass(w.category, UserWarning)
            and not issubclass(w.category, ConvergenceWarning)
        ]
        if user:
            return user[0].category, ctx.normalise(str(user[0].message))
        return None, self.match

    def _call(self, target, ctx):
        if self.call == "fit":
            ctx.new(target, **self.params).fit(self.X(ctx))
        elif self.call == "predict":
            _predict(ctx.fitted(target, self.kind), self.X(ctx))
        elif self.call == "before fit":
            _predict(ctx.new(target), self.X(ctx))
        elif target == ONNX:
            from deepclust.onnx import OnnxClusterer

            OnnxClusterer(ctx.onnx(self.kind).path, **self.params)
        else:
            ctx.new(target, **self.params).fit(self.X(ctx))


ALL = (CD, CDC, ONNX)


def _with(array, index, value):
    array = np.array(array, dtype=np.float64)
    array[index] = value
    return array


def _nchw_float(images):
    return images.transpose(0, 3, 1, 2).astype(np.float32)


CASES = [
    # Values
    Case(
        "nan-fit",
        "NaN values (tabular)",
        "fit",
        lambda c: _with(TABULAR, (0, 1), np.nan),
        InputError,
        r"contains 1 non-finite value\(s\) \(NaN or inf\)",
    ),
    Case(
        "nan-predict",
        "NaN values (tabular)",
        "predict",
        lambda c: _with(TABULAR[:5], (2, 0), np.nan),
        InputError,
        r"non-finite",
        targets=ALL,
    ),
    Case(
        "nan-image-fit",
        "NaN values (float images)",
        "fit",
        lambda c: _with(_nchw_float(IMAGES), (0, 0, 0, 0), np.nan),
        InputError,
        r"non-finite",
    ),
    Case(
        "inf-fit",
        "inf values",
        "fit",
        lambda c: _with(TABULAR, (3, 2), np.inf),
        InputError,
        r"non-finite",
    ),
    Case(
        "inf-predict",
        "inf values",
        "predict",
        lambda c: _with(TABULAR[:5], (0, 0), -np.inf),
        InputError,
        r"non-finite",
        targets=ALL,
    ),
    Case(
        "huge-float64",
        "values beyond the float32 range",
        "fit",
        lambda c: _with(TABULAR, (0, 0), 1e300),
        InputError,
        r"beyond the float32 range",
    ),
    # Sizes
    Case(
        "empty-array",
        "empty input: array of shape (0, 4)",
        "fit",
        lambda c: np.empty((0, 4)),
        InputError,
        r"is empty",
    ),
    Case(
        "empty-list",
        "empty input: empty list",
        "fit",
        lambda c: [],
        InputError,
        r"is empty",
    ),
    Case(
        "empty-predict",
        "empty input: array of shape (0, 4)",
        "predict",
        lambda c: np.empty((0, 4)),
        InputError,
        r"is empty",
        targets=ALL,
    ),
    Case(
        "one-sample",
        "one sample",
        "fit",
        lambda c: TABULAR[:1],
        InputError,
        r"1 sample\(s\) but at least 2 are required",
    ),
    Case(
        "fewer-than-clusters",
        "fewer samples than n_clusters",
        "fit",
        lambda c: TABULAR[:4],
        InputError,
        r"4 samples but n_clusters=5",
        targets=(CDC,),
        params={"n_clusters": 5},
    ),
    # Shapes
    Case(
        "1d", "wrong ndim: 1-D", "fit", lambda c: TABULAR[:, 0], InputError, r"is 1-D"
    ),
    Case(
        "1d-predict",
        "wrong ndim: 1-D",
        "predict",
        lambda c: TABULAR[0],
        InputError,
        r"is 1-D",
        targets=ALL,
    ),
    Case(
        "5d",
        "wrong ndim: 5-D",
        "fit",
        lambda c: np.zeros((4, 2, 8, 8, 3)),
        InputError,
        r"has 5 dimensions",
    ),
    Case(
        "0d", "wrong ndim: a scalar", "fit", lambda c: 3.0, InputError, r"0-dimensional"
    ),
    Case(
        "1-pixel",
        "images of 1x1 pixel",
        "fit",
        lambda c: np.zeros((4, 1, 1, 3), np.uint8),
        InputError,
        r"at least 2x2 pixels",
    ),
    Case(
        "2-channels",
        "2 channels",
        "fit",
        lambda c: np.zeros((4, 8, 8, 2), np.uint8),
        InputError,
        r"no channel axis of a supported size",
    ),
    Case(
        "5-channels",
        "5 channels",
        "fit",
        lambda c: np.zeros((4, 5, 8, 8), np.float32),
        InputError,
        r"no channel axis of a supported size",
    ),
    Case(
        "rgba-array",
        "4 channels (RGBA) array",
        "fit",
        lambda c: np.zeros((4, 8, 8, 4), np.uint8),
        InputError,
        r"RGBA/4-channel images are not supported",
    ),
    Case(
        "rgba-array-predict",
        "4 channels (RGBA) array",
        "predict",
        lambda c: np.zeros((2, 8, 8, 4), np.uint8),
        InputError,
        r"RGBA",
        kind="image",
        targets=ALL,
    ),
    Case(
        "rgba-file",
        "4 channels (RGBA) PNG file or PIL image",
        "fit",
        lambda c: [c.rgba, *c.ok],
        None,
        "accepted: converted to RGB (alpha dropped)",
    ),
    Case(
        "tabular-to-image-model",
        "tabular data for an image model",
        "predict",
        lambda c: TABULAR[:3],
        InputError,
        r"images are expected",
        kind="image",
        targets=ALL,
    ),
    Case(
        "image-to-tabular-model",
        "images for a tabular model",
        "predict",
        lambda c: IMAGES[:3],
        InputError,
        r"fitted on tabular data",
        targets=ALL,
    ),
    # Lists
    Case(
        "mixed-sizes-arrays",
        "mixed image sizes in a list of arrays",
        "fit",
        lambda c: [IMAGES[0], np.zeros((10, 10, 3), np.uint8)],
        InputError,
        r"images of different sizes .*pass image_size",
    ),
    Case(
        "mixed-sizes-files",
        "mixed image sizes in a list of paths",
        "fit",
        lambda c: [*c.ok, c.large],
        InputError,
        r"images of different sizes",
    ),
    Case(
        "mixed-sizes-predict",
        "mixed image sizes in a list of paths",
        "predict",
        lambda c: [*c.ok, c.large],
        None,
        "accepted: resized to the fitted image size",
        kind="image",
        targets=ALL,
    ),
    Case(
        "mixed-kinds",
        "list mixing arrays, PIL images and paths",
        "fit",
        lambda c: [IMAGES[0], Image.fromarray(IMAGES[1]), c.ok[0]],
        InputError,
        r"mixes several kinds of items \(PIL images, paths, image arrays\)",
    ),
    Case(
        "mixed-kinds-predict",
        "list mixing arrays, PIL images and paths",
        "predict",
        lambda c: [IMAGES[0], c.ok[0]],
        InputError,
        r"mixes several kinds",
        kind="image",
        targets=ALL,
    ),
    # Files
    Case(
        "missing-path",
        "non-existent path",
        "fit",
        lambda c: c.missing,
        InputError,
        r"path '<tmp>/missing.png' does not exist",
    ),
    Case(
        "missing-in-list",
        "non-existent path in a list",
        "fit",
        lambda c: [*c.ok, c.missing],
        InputError,
        r"1 path\(s\) that do not exist: '<tmp>/missing.png'",
    ),
    Case(
        "missing-predict",
        "non-existent path",
        "predict",
        lambda c: c.missing,
        InputError,
        r"does not exist",
        kind="image",
        targets=ALL,
    ),
    Case(
        "empty-directory",
        "directory with no images",
        "fit",
        lambda c: c.empty_dir,
        InputError,
        r"contains no image files",
    ),
    Case(
        "empty-directory-predict",
        "directory with no images",
        "predict",
        lambda c: c.empty_dir,
        InputError,
        r"contains no image files",
        kind="image",
        targets=ALL,
    ),
    Case(
        "corrupt-file",
        "corrupt image file",
        "fit",
        lambda c: [*c.ok, c.corrupt],
        CorruptImageError,
        r"'<tmp>/corrupt.png' \(UnidentifiedImageError",
    ),
    Case(
        "truncated-file",
        "truncated image file",
        "fit",
        lambda c: [*c.ok, c.truncated],
        CorruptImageError,
        r"'<tmp>/truncated.png' \(",
    ),
    Case(
        "corrupt-predict",
        "corrupt image file",
        "predict",
        lambda c: [c.ok[0], c.corrupt],
        CorruptImageError,
        r"'<tmp>/corrupt.png'",
        kind="image",
        targets=ALL,
    ),
    Case(
        "corrupt-skip",
        "corrupt image file with on_error='skip'",
        "fit",
        lambda c: [*c.ok, c.corrupt, c.truncated],
        UserWarning,
        r"Skipped 2 image file\(s\).*'<tmp>/corrupt.png'.*'<tmp>/truncated.png'",
        params={"on_error": "skip"},
    ),
    Case(
        "vanished-skip",
        "file removed after it was listed, with on_error='skip'",
        "fit",
        lambda c: [*c.ok, c.missing],
        SkippedInputsWarning,
        r"Skipped 1 image file\(s\) of X that cannot be read.*'<tmp>/missing.png' "
        r"\(FileNotFoundError: no such file",
        params={"on_error": "skip"},
    ),
    Case(
        "broken-link",
        "broken symbolic link in a folder",
        "fit",
        lambda c: c.links,
        InputError,
        r"1 path\(s\) that do not exist: '<tmp>/with_links/broken.png' \(broken "
        r"symbolic link\)",
    ),
    Case(
        "broken-link-skip",
        "broken symbolic link in a folder with on_error='skip'",
        "fit",
        lambda c: c.links,
        SkippedInputsWarning,
        r"Skipped 1 image file\(s\) .*broken.png' \(FileNotFoundError: broken "
        r"symbolic link to 'gone.png'\)",
        params={"on_error": "skip"},
    ),
    Case(
        "broken-link-predict",
        "broken symbolic link in a folder",
        "predict",
        lambda c: c.links,
        InputError,
        r"do not exist: '<tmp>/with_links/broken.png'",
        kind="image",
        targets=ALL,
    ),
    Case(
        "link-loop",
        "symbolic link loop named like an image",
        "fit",
        lambda c: [*c.ok, c.loop],
        CorruptImageError,
        r"cannot be read: '<tmp>/loop.png' \(OSError: Too many levels of symbolic "
        r"links\)",
    ),
    Case(
        "fifo",
        "FIFO (named pipe) named like an image",
        "fit",
        lambda c: [*c.ok, c.fifo],
        CorruptImageError,
        r"'<tmp>/pipe.png' \(not a regular file: a FIFO, device or socket\)",
    ),
    Case(
        "float-tiff-range",
        "32-bit float TIFF with values beyond [0, 255]",
        "fit",
        lambda c: [*c.ok, c.float_tiff],
        CorruptImageError,
        r"mode 'F'\) with values in \[-1, 300\]: only values in \[0, 1\]",
    ),
    Case(
        "int-tiff-range",
        "32-bit integer TIFF with values beyond [0, 65535]",
        "fit",
        lambda c: [*c.ok, c.int_tiff],
        CorruptImageError,
        r"mode 'I'\) with values in \[0, 70000\]: only values in \[0, 65535\]",
    ),
    Case(
        "float-tiff-unit",
        "32-bit float TIFF with values in [0, 1]",
        "fit",
        lambda c: [*c.ok, c.unit_tiff],
        None,
        "accepted: scaled from [0, 1] to [0, 255] (values within [0, 255] are kept, "
        "32-bit integers are scaled from [0, 65535])",
    ),
    Case(
        "exif-rotated",
        "JPEG with an EXIF orientation",
        "fit",
        lambda c: [*c.ok, c.rotated],
        None,
        "accepted: turned upright as its EXIF orientation says",
    ),
    # Scales
    Case(
        "unit-floats-for-uint8-model",
        "float images in [0, 1] for a model fitted on uint8 images",
        "predict",
        lambda c: IMAGES[:3] / 255.0,
        InputError,
        r"look like images scaled to \[0, 1\], but the model expects values in "
        r"\[0, 255\] as it was fitted on uint8 images; pass \(X \* 255\)",
        kind="image",
        targets=ALL,
    ),
    # Dtypes
    Case(
        "strings",
        "non-numeric dtype: strings",
        "fit",
        lambda c: np.full((4, 3), "a"),
        InputError,
        r"non-numeric dtype <U1",
    ),
    Case(
        "complex",
        "non-numeric dtype: complex",
        "fit",
        lambda c: np.ones((4, 3), dtype=np.complex64),
        InputError,
        r"Complex data not supported",
    ),
    Case(
        "object",
        "non-numeric dtype: objects",
        "fit",
        lambda c: np.array([[1.0, None], [2.0, "x"], [3.0, 1.0]], dtype=object),
        TypeError,
        r"non-numeric dtype object",
    ),
    Case(
        "datetime",
        "non-numeric dtype: datetime64",
        "fit",
        lambda c: np.zeros((4, 3), dtype="datetime64[s]"),
        InputError,
        r"non-numeric dtype",
    ),
    Case(
        "strings-predict",
        "non-numeric dtype: strings",
        "predict",
        lambda c: np.full((2, 4), "a"),
        InputError,
        r"non-numeric dtype",
        targets=ALL,
    ),
    # Fitted or not
    Case(
        "not-fitted",
        "predict/transform before fit",
        "before fit",
        lambda c: TABULAR,
        NotFittedError,
        r"is not fitted yet",
    ),
    Case(
        "features",
        "predict with a different feature count",
        "predict",
        lambda c: TABULAR[:3, :3],
        InputError,
        r"X has 3 features, but \w+ is expecting 4 features",
        targets=ALL,
    ),
    Case(
        "image-shape",
        "predict with a different image shape",
        "predict",
        lambda c: np.zeros((2, 10, 10, 3), np.uint8),
        InputError,
        r"fitted on an array of images of shape \(3, 8, 8\)",
        kind="image",
        targets=ALL,
    ),
    Case(
        "image-channels",
        "predict with a different channel count",
        "predict",
        lambda c: np.zeros((2, 8, 8), np.uint8),
        InputError,
        r"\(C, H, W\) = \(1, 8, 8\)",
        kind="image",
        targets=ALL,
    ),
    Case(
        "image-size-files",
        "predict with a different image size (files)",
        "predict",
        lambda c: [c.large],
        None,
        "accepted: resized to the fitted image size",
        kind="image",
        targets=ALL,
    ),
    # Parameters
    Case(
        "negative-temperature",
        "negative temperature",
        "construct",
        lambda c: TABULAR,
        InvalidParameterError,
        r"'temperature' parameter of CDCClusterer must be a float in the "
        r"range \(0.0, inf\)",
        targets=(CDC,),
        params={"temperature": -0.5},
    ),
    Case(
        "negative-instance-temperature",
        "negative temperature",
        "construct",
        lambda c: TABULAR,
        InvalidParameterError,
        r"'instance_temperature' parameter",
        targets=(CD,),
        params={"instance_temperature": -0.5},
    ),
    Case(
        "n-clusters",
        "n_clusters < 2",
        "construct",
        lambda c: TABULAR,
        InvalidParameterError,
        r"'n_clusters' parameter of CDCClusterer must be an int in the range "
        r"\[2, inf\)",
        targets=(CDC,),
        params={"n_clusters": 1},
    ),
    Case(
        "n-heads",
        "n_heads < 2",
        "construct",
        lambda c: TABULAR,
        InvalidParameterError,
        r"'n_heads' parameter",
        targets=(CD,),
        params={"n_heads": 1},
    ),
    Case(
        "batch-size",
        "batch_size < 2",
        "construct",
        lambda c: TABULAR,
        InvalidParameterError,
        r"'batch_size' parameter of \w+ must be an int in the range \[2, inf\)",
        params={"batch_size": 1},
    ),
    Case(
        "onnx-batch-size",
        "batch_size < 1",
        "construct",
        lambda c: None,
        ValueError,
        r"batch_size must be a positive int",
        targets=(ONNX,),
        params={"batch_size": 0},
    ),
    Case(
        "backbone",
        "unknown backbone name",
        "construct",
        lambda c: TABULAR,
        InvalidParameterError,
        r"'backbone' parameter of \w+ must be a str among .*'resnet18'.* or a callable",
        params={"backbone": "resnet9"},
    ),
    Case(
        "device",
        "unknown device",
        "construct",
        lambda c: TABULAR,
        ValueError,
        r"Unknown device 'tpu'; expected 'auto', 'cpu', 'cuda' or 'cuda:N'",
        params={"device": "tpu"},
    ),
    Case(
        "onnx-device",
        "unknown device",
        "construct",
        lambda c: None,
        ValueError,
        r"providers contains 'tpu'",
        targets=(ONNX,),
        params={"providers": ["tpu"]},
    ),
    Case(
        "checkpoint-every",
        "checkpoint_every < 1",
        "construct",
        lambda c: TABULAR,
        InvalidParameterError,
        r"'checkpoint_every' parameter",
        params={"checkpoint_every": 0},
    ),
    Case(
        "resume-without-dir",
        "resume=True without checkpoint_dir",
        "construct",
        lambda c: TABULAR,
        ValueError,
        r"resume=True needs checkpoint_dir",
        params={"resume": True},
    ),
]

PAIRS = [(case, target) for case in CASES for target in case.targets]


def run_all(ctx) -> dict:
    """Outcome of every (case id, target): ``(class or None, message)``."""
    return {(case.id, target): case.run(target, ctx) for case, target in PAIRS}


def render_table(outcomes) -> str:
    """The markdown of docs/bad_inputs.md for these outcomes."""
    lines = [
        "# Bad inputs and the errors they raise",
        "",
        "<!-- Generated by `python tools/make_bad_inputs_table.py` from the cases of",
        "tests/test_bad_inputs.py; the test suite fails when this file is out of",
        "date. -->",
        "",
        "Every bad input is rejected before training starts, with a message that",
        "names the input or parameter and says what is expected. `InputError`,",
        "`PathError` (a path that stands for no input) and `CorruptImageError`",
        "(`deepclust._inputs`) subclass `ValueError`;",
        "scikit-learn's `InvalidParameterError` subclasses `ValueError` and",
        "`TypeError`; the",
        "object-array error is both an `InputError` and a `TypeError`. Calls: `fit`",
        "on a new estimator, `predict` on a fitted one (`transform` for",
        "`ContrastiveDisentangler`, `predict` for `OnnxClusterer`, built from an",
        "exported `CDCClusterer`); invalid parameters are reported by `fit` for the",
        "estimators and by the constructor for `OnnxClusterer`. `OnnxClusterer` is",
        "built from a trained model: it has no training and is never unfitted, so the",
        "`fit` rows do not apply to it. `<tmp>` stands for the folder of the files.",
        "",
        "| Bad input | Call | Class | Result | Message |",
        "| --- | --- | --- | --- | --- |",
    ]
    for case in CASES:
        groups = {}
        for target in case.targets:
            groups.setdefault(outcomes[case.id, target], []).append(target)
        for (outcome, message), targets in groups.items():
            result = "accepted" if outcome is None else f"`{_public_name(outcome)}`"
            if outcome is not None and issubclass(outcome, Warning):
                result = f"warns `{outcome.__name__}`"
            names = ", ".join(f"`{t}`" for t in targets)
            call = case.call
            if call == "construct":
                call = "OnnxClusterer(path, ...)" if targets == [ONNX] else "fit"
            lines.append(
                f"| {case.row} | `{call}` | {names} | {result} | {_cell(message)} |"
            )
    return "\n".join(lines) + "\n"


def _public_name(cls) -> str:
    """The name of the first public class of ``cls``'s hierarchy."""
    return next(c.__name__ for c in cls.__mro__ if not c.__name__.startswith("_"))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


@pytest.fixture(scope="module")
def outcomes():
    with tempfile.TemporaryDirectory() as root:
        yield run_all(Context(root))


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "target"), PAIRS, ids=[f"{c.id}-{t}" for c, t in PAIRS]
)
def test_bad_input(outcomes, case, target):
    # Check that the bad input gives the documented exception (or warning, or
    # conversion) with a message that says what is wrong.
    outcome, message = outcomes[case.id, target]
    if case.expected is None:
        assert outcome is None, (
            f"{case.row} should be accepted; got {outcome}: {message}"
        )
        return
    assert outcome is not None and issubclass(outcome, case.expected), (
        outcome,
        message,
    )
    assert re.search(case.match, message), message


def test_corrupt_file_error_lists_every_file(tmp_path):
    # Check that CorruptImageError names every unreadable file in its message and paths.
    ctx = Context(tmp_path)
    with pytest.raises(CorruptImageError) as info:
        ctx.new(CDC).fit([*ctx.ok, ctx.corrupt, ctx.truncated])
    assert info.value.paths == [ctx.corrupt, ctx.truncated]
    assert "corrupt.png" in str(info.value) and "truncated.png" in str(info.value)


def test_skipped_files_keep_their_rows(tmp_path):
    # Check that on_error="skip" trains on the readable files only, and that
    # labels_ keeps one row per input with -1 for the unreadable file.
    ctx = Context(tmp_path)
    files = [ctx.ok[0], ctx.corrupt, *ctx.ok[1:]]
    with pytest.warns(SkippedInputsWarning, match="Skipped 1 image file") as record:
        cdc = ctx.new(CDC, on_error="skip").fit(files)
    assert record[0].message.errors[1][0] == ctx.corrupt
    assert cdc.labels_.shape == (len(files),)
    assert cdc.labels_[1] == -1 and (cdc.labels_[[0, 2, 3, 4]] >= 0).all()
    np.testing.assert_array_equal(cdc.skipped_indices_, [1])
    assert cdc.input_files_ == files
    assert cdc.cluster_sizes_.sum() == len(ctx.ok)


def test_errors_come_before_training(monkeypatch):
    # Check that invalid input fails before the skorch net is built or trained.
    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(CDCClusterer, "_build_net", no_training)
    with pytest.raises(InputError, match="non-finite"):
        CDCClusterer(n_clusters=2, **SMALL).fit(_with(TABULAR, (0, 0), np.nan))
    with pytest.raises(ValueError, match="batch_size"):
        CDCClusterer(n_clusters=2, batch_size=1).fit(TABULAR)


def test_docs_table_is_up_to_date(outcomes):
    # Check that docs/bad_inputs.md equals the table generated from these outcomes.
    expected = render_table(outcomes)
    actual = DOCS_TABLE.read_text(encoding="utf-8") if DOCS_TABLE.exists() else ""
    assert actual == expected, (
        "docs/bad_inputs.md is out of date: run python tools/make_bad_inputs_table.py"
    )


# ---------------------------------------------------------------------------
# Fuzzing the validation layer through the estimators
# ---------------------------------------------------------------------------

_DTYPES = [
    "uint8",
    "int16",
    "int64",
    "float16",
    "float32",
    "float64",
    "bool",
    "complex64",
    "<U2",
    "object",
    "datetime64[s]",
]
_DOCUMENTED = (InputError, ValueError, TypeError, NotFittedError)
_VALIDATION_FILES = (
    os.path.join("deepclust", ""),
    os.path.join("sklearn", "utils", "_param_validation.py"),
    os.path.join("sklearn", "utils", "validation.py"),
)


def _random_array(shape, dtype, special, seed):
    rng = np.random.default_rng(seed)
    values = rng.normal(scale=100.0, size=shape)
    if dtype == "object":
        array = values.astype(object)
        if array.size and special is not None:
            array.flat[0] = "text"
        return array
    if dtype in ("<U2", "datetime64[s]"):
        return values.astype(np.int64).astype(dtype)
    if np.dtype(dtype).kind in "ui":
        info = np.iinfo(dtype)
        return np.clip(values, info.min, info.max).astype(dtype)
    array = values.astype(dtype)
    if special is not None and array.size and np.dtype(dtype).kind in "fc":
        array.flat[-1] = special
    return array


def _check_documented(exc):
    assert isinstance(exc, _DOCUMENTED), f"{type(exc).__name__}: {exc}"
    origin = traceback.extract_tb(exc.__traceback__)[-1].filename
    assert any(part in origin for part in _VALIDATION_FILES), (
        f"{type(exc).__name__} raised from {origin}, not by input validation: {exc}"
    )
    assert str(exc), "the message is empty"


# Mostly shapes that validation accepts, so that odd but valid inputs (1x1
# images, one feature, a single channel) reach training too.
_shapes = st.one_of(
    st.tuples(st.integers(2, 20), st.integers(1, 9)),
    st.tuples(st.integers(2, 20), st.integers(1, 9), st.integers(1, 9)),
    st.tuples(
        st.integers(2, 20),
        st.integers(1, 9),
        st.integers(1, 9),
        st.sampled_from([1, 3]),
    ),
    st.lists(st.integers(0, 9), min_size=0, max_size=5).map(tuple),
)


@settings(max_examples=40, deadline=None, database=None)
@given(
    shape=_shapes,
    predict_shape=_shapes,
    dtype=st.one_of(
        st.sampled_from(["uint8", "float32", "float64"]), st.sampled_from(_DTYPES)
    ),
    special=st.sampled_from([None, None, np.nan, np.inf]),
    estimator=st.sampled_from(ESTIMATORS),
    seed=st.integers(0, 2**16),
)
def test_fuzz_fit_and_predict_raise_documented_errors(
    shape, predict_shape, dtype, special, estimator, seed
):
    # Check that random shapes and dtypes through fit and predict either work or
    # raise a documented validation error, never an error from deep in torch.
    X = _random_array(tuple(shape), dtype, special, seed)
    est = (
        ContrastiveDisentangler(n_heads=2, max_epochs=1, batch_size=16, random_state=0)
        if estimator == CD
        else CDCClusterer(n_clusters=2, max_epochs=1, batch_size=16, random_state=0)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for call, data in ((est.fit, X), (lambda a: _predict(est, a), None)):
            if data is None:
                data = _random_array(tuple(predict_shape), dtype, special, seed + 1)
            try:
                call(data)
            except _DOCUMENTED as exc:
                _check_documented(exc)
                if call is est.fit:
                    return
            except Exception as exc:  # anything else is a bug
                pytest.fail(
                    f"{type(exc).__name__} for X of shape {np.shape(data)} and "
                    f"dtype {dtype}: {exc}"
                )


def write_docs(path=DOCS_TABLE) -> None:
    """Run the cases and write the table (used by tools/make_bad_inputs_table.py)."""
    torch.set_num_threads(1)
    root = tempfile.mkdtemp()
    try:
        Path(path).write_text(render_table(run_all(Context(root))), encoding="utf-8")
    finally:
        shutil.rmtree(root, ignore_errors=True)
