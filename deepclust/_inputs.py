"""Validation and batched reading of the inputs accepted by deepclust estimators.

:func:`read_input` validates any input and wraps it for batched reading;
:func:`resolve_path` is the one place that decides what a path stands for.

*Arrays.* bool and integer arrays other than uint8 are read as float32 values,
as are float arrays (raw values, not rescaled); uint8 stays uint8. Object arrays
holding numbers are converted, as scikit-learn does. Memory-mapped arrays are
read lazily, batch by batch.

*Channels and pixel depth.* PIL modes ``"1"``, ``"L"``, ``"LA"``, ``"I"``,
``"F"`` and ``"I;16*"`` are grayscale, any other mode is converted to RGB, and a
mix of grayscale and colour images gives 3 channels. Converting RGB to one
channel uses PIL's ITU-R 601-2 luma weights, also for arrays; converting gray to
three channels replicates it. Image files are turned upright as their EXIF
orientation says. Deeper pixels become 8 bits: modes ``"I;16*"`` and ``"I"``
are scaled from [0, 65535] (``"I"`` values outside it make the image
unreadable), mode ``"F"`` is scaled from [0, 1] when every value is within it,
kept when every value is within [0, 255], and unreadable otherwise.

*Unreadable files* are corrupt or truncated files, paths that vanished or are
broken links, link loops, folders in a list, FIFOs, devices and sockets (refused
unopened, so that reading never blocks), files the OS refuses to open, and
32-bit images whose values cannot be scaled to 8 bits.
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

# This module must stay importable with numpy and Pillow only: the torch-free
# ONNX inference class reads its inputs through it.  Never import torch,
# scikit-learn or onnx here, not even inside functions.  That is also why it
# does not call scikit-learn's check_array: it checks arrays itself (with the
# same messages, so the estimators' errors read like scikit-learn's), chunk by
# chunk so that memory-mapped arrays are never loaded whole, and it reads
# images, which check_array does not.

import os
import stat
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from deepclust._validation import check_image_size, check_positive_int, is_int

__all__ = [
    "IMAGE_EXTENSIONS",
    "CorruptImageError",
    "DerivedRows",
    "ImageInput",
    "InputError",
    "PathError",
    "SkippedInputsWarning",
    "TabularInput",
    "check_matches",
    "check_min_samples",
    "check_value_range",
    "image_files_in",
    "iter_batches",
    "labels_from_proba",
    "read_input",
    "resolve_path",
    "shard_input",
]

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")

_SUPPORTED_CHANNELS = (1, 3)
_DATA_FORMATS = ("auto", "channels_last", "channels_first")
_DEFAULT_CACHE_BYTES = 2 * 1024**3
# Finite checks on big (possibly memory-mapped) arrays run chunk by chunk so
# that a memmap is never loaded into memory as a whole.
_SCAN_CHUNK_BYTES = 64 * 1024**2
_MAX_LISTED = 10
_MAX_LISTED_FILES = 20
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})
_LIST_KIND_LABELS = {
    "pil": "PIL images",
    "path": "paths",
    "array": "image arrays",
    "values": "numbers or sequences of numbers",
}
# Opening a FIFO for reading waits for a writer: image files are opened
# without blocking and refused unless they are regular files.
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_EXIF_ORIENTATION = 0x0112
# How the unreadable files of an input are summed up: "decode" failures come
# from the image decoder, "read" failures from the file system or the values.
_FAILURE_PHRASES = {
    frozenset({"decode"}): "cannot be decoded (corrupt or truncated)",
    frozenset({"read"}): "cannot be read",
    frozenset({"read", "decode"}): "cannot be read or decoded",
}


class InputError(ValueError):
    """Raised when the data passed to a deepclust estimator is invalid.

    It subclasses :class:`ValueError`, which is what scikit-learn's estimator
    checks expect for invalid data.  The message names the input and says
    what is expected.
    """


class CorruptImageError(InputError):
    """Raised when image files cannot be decoded (corrupt or truncated).

    Parameters
    ----------
    message : str
        Error message; it lists the offending file paths.
    paths : list of str
        All unreadable files.

    Attributes
    ----------
    paths : list of str
        All unreadable files.
    """

    def __init__(self, message, paths):
        super().__init__(message)
        self.paths = list(paths)


class PathError(InputError):
    """Raised when a path argument stands for no input (see :func:`resolve_path`).

    Parameters
    ----------
    message : str
        Error message; it names the path and what is wrong with it.
    path : str
        The path.
    problem : {"missing", "no_images", "bad_npy", "not_data"}
        What is wrong: the path does not exist, is a folder without image
        files, is a ``.npy`` file that cannot be loaded, or is another file.

    Attributes
    ----------
    path : str
        The path.
    problem : str
        What is wrong, as above.
    """

    def __init__(self, message, path, problem):
        super().__init__(message)
        self.path = path
        self.problem = problem


class SkippedInputsWarning(UserWarning):
    """Warns that unreadable image files were skipped (``on_error="skip"``).

    Outputs keep one row per input: the rows of skipped files hold label -1
    and NaN values.

    Parameters
    ----------
    message : str
        Warning message; it lists the skipped files.
    errors : dict of int to (str, str)
        For each skipped input, its position in the input and ``(path,
        reason)``.

    Attributes
    ----------
    errors : dict of int to (str, str)
        For each skipped input, its position in the input and ``(path,
        reason)``.
    """

    def __init__(self, message, errors):
        super().__init__(message)
        self.errors = dict(errors)


@contextmanager
def collect_skipped_inputs():
    """Turn the SkippedInputsWarnings raised inside into ``{position: reason}``.

    The dict yielded is filled when the block ends; other warnings raised
    inside are issued again then, so that callers still see them.

    Examples
    --------
    >>> with collect_skipped_inputs() as skipped:
    ...     warnings.warn(SkippedInputsWarning("1 skipped", {3: ("a.png", "empty")}))
    >>> skipped
    {3: 'empty'}
    """
    skipped = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedInputsWarning)
        yield skipped
    for warning in caught:
        if isinstance(warning.message, SkippedInputsWarning):
            for position, (_, reason) in warning.message.errors.items():
                skipped[position] = reason
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )


class _UnreadableFile(Exception):
    # A file that exists but cannot give pixels for a reason of its own (not a
    # regular file, values out of range); the message is the reason shown.
    pass


class _NonNumericInputError(InputError, TypeError):
    # Object arrays holding non-numbers make ``np.asarray(X, dtype=float)``
    # raise TypeError in scikit-learn, and its estimator checks expect that
    # type; being an InputError too keeps the "InputError for bad X" contract.
    pass


# ---------------------------------------------------------------------------
# Canonical representations
# ---------------------------------------------------------------------------


@dataclass(eq=False)
class ImageInput:
    """Images that can be read in batches as NCHW arrays.

    Build it with :func:`read_input`; the constructor does no validation.

    Parameters
    ----------
    n_samples : int
        Number of images.
    channels : {1, 3}
        Number of channels of the arrays returned by :meth:`read`.
    size : tuple of (int, int)
        ``(height, width)`` of the arrays returned by :meth:`read`.
    dtype : numpy.dtype
        ``uint8`` for uint8 arrays, PIL images and image files; ``float32``
        for every other numeric array (raw values, not rescaled).
    source_shape : tuple of (int, int, int) or None, default=None
        ``(channels, height, width)`` of an input array before any channel
        conversion or resizing; None for lists of images, PIL images and
        files.
    source_kind : {"array", "arrays", "pil", "files"}, default="array"
        What the images come from: one array (possibly memory-mapped), a list
        of per-image arrays, a list of PIL images, or image files.
    array : ndarray or None, default=None
        The input array as given (a memmap stays a memmap), for
        ``source_kind="array"``.
    channels_last : bool, default=False
        Whether a 4-D ``array`` is laid out as NHWC.
    paths : list of str or None, default=None
        The image files that were kept, for ``source_kind="files"``.
    kept_indices : ndarray of shape (n_samples,) or None, default=None
        Positions, in the original input, of the images that can be read
        (unreadable files are left out with ``on_error="skip"``).
    n_inputs : int or None, default=None
        Number of inputs given, readable or not; None means ``n_samples``.
    skipped : dict of int to (str, str), default={}
        For each unreadable input left out, its position in the input and
        ``(path, reason)``.

    Attributes
    ----------
    kind : str
        Always ``"image"``.
    nbytes : int
        Size in bytes of the array returned by :meth:`materialize`.

    Notes
    -----
    :meth:`read` and :meth:`materialize` return the readable images only;
    :meth:`to_input_rows` puts per-image results back at the positions of
    the input, so that every output has one row per input, in input order.
    """

    n_samples: int
    channels: int
    size: tuple
    dtype: np.dtype
    source_shape: tuple | None = None
    source_kind: str = "array"
    array: np.ndarray | None = field(default=None, repr=False)
    channels_last: bool = False
    paths: list | None = field(default=None, repr=False)
    kept_indices: np.ndarray | None = field(default=None, repr=False)
    n_inputs: int | None = None
    skipped: dict = field(default_factory=dict, repr=False)
    _items: list | None = field(default=None, repr=False)
    _cache: np.ndarray | None = field(default=None, repr=False)
    _max_workers: int | None = field(default=None, repr=False)

    kind = "image"

    def __post_init__(self):
        if self.n_inputs is None:
            self.n_inputs = self.n_samples

    def to_input_rows(self, values, fill):
        """Results of the readable images placed back at their input positions.

        Parameters
        ----------
        values : ndarray of shape (n_samples, ...)
            One row per readable image, in reading order.
        fill : scalar
            Value of the rows of unreadable inputs (NaN, or -1 for labels).

        Returns
        -------
        rows : ndarray of shape (n_inputs, ...)
            One row per input, in input order; ``values`` itself when every
            input was readable.
        """
        return _to_input_rows(values, self.kept_indices, self.n_inputs, fill)

    @property
    def input_paths(self):
        """Every file given, readable or not, in input order (None for arrays)."""
        if self.source_kind != "files":
            return None
        paths = [None] * self.n_inputs
        for position, path in zip(self.kept_indices, self.paths, strict=True):
            paths[position] = path
        for position, (path, _) in self.skipped.items():
            paths[position] = path
        return paths

    @property
    def nbytes(self):
        """Size in bytes of the fully materialised ``(N, C, H, W)`` array."""
        height, width = self.size
        return self.n_samples * self.channels * height * width * self.dtype.itemsize

    def read(self, indices):
        """Read some images as one NCHW batch.

        Parameters
        ----------
        indices : slice or array-like of int
            Which images to read.

        Returns
        -------
        batch : ndarray of shape (len(indices), channels, height, width)
            C-contiguous, of dtype :attr:`dtype`.
        """
        positions = _positions(indices, self.n_samples)
        # A slice reads one contiguous block (from a memmap, a single read)
        # instead of gathering rows one by one.
        rows = indices if isinstance(indices, slice) else positions
        source = self._cache if self._cache is not None else self.array
        if source is not None:
            batch = source[rows]
            # Basic slicing gives a view: copy so that the caller never
            # writes into the user's array or the cache.
            batch = np.array(batch) if isinstance(rows, slice) else np.asarray(batch)
            if self._cache is not None:
                return batch
            if batch.ndim == 3:
                batch = batch[:, np.newaxis]
            elif self.channels_last:
                batch = batch.transpose(0, 3, 1, 2)
            return _finish_batch(batch, self.dtype, self.channels, self.size)
        if self.source_kind == "arrays":
            return _stack(
                [
                    _finish_batch(
                        self._items[i][np.newaxis], self.dtype, self.channels, self.size
                    )[0]
                    for i in positions
                ],
                self,
            )
        if self.source_kind == "pil":
            return _stack(
                [
                    _pil_to_chw(self._items[i], self.channels, self.size)
                    for i in positions
                ],
                self,
            )
        return _stack(self._decode_files([self.paths[i] for i in positions]), self)

    def materialize(self):
        """Read all images into one array.

        Returns
        -------
        images : ndarray of shape (n_samples, channels, height, width)
            Of dtype :attr:`dtype`.  When the decoded files were cached by
            :func:`read_input`, this is the cache itself: do not modify it in
            place.
        """
        if self._cache is not None:
            return self._cache
        out = np.empty((self.n_samples, self.channels, *self.size), dtype=self.dtype)
        # Chunks bound the temporary memory of the per-batch conversions.
        step = 256
        for start in range(0, self.n_samples, step):
            stop = min(start + step, self.n_samples)
            out[start:stop] = self.read(slice(start, stop))
        return out

    def _decode_files(self, paths):
        def decode(path):
            try:
                with _open_image_file(path) as image:
                    return _pil_to_chw(image, self.channels, self.size)
            except Exception as exc:  # PIL raises many exception types
                raise CorruptImageError(
                    f"Image file {path!r} could not be decoded "
                    f"({_failure(exc)[1]}); it was readable when the input was "
                    "checked, so it may have been modified since.",
                    [path],
                ) from exc

        if len(paths) <= 1:
            return [decode(path) for path in paths]
        with ThreadPoolExecutor(max_workers=self._max_workers) as executor:
            return list(executor.map(decode, paths))


@dataclass(eq=False)
class TabularInput:
    """Tabular data, ``(n_samples, n_features)`` float32.

    Parameters
    ----------
    data : ndarray of shape (n_samples, n_features)
        The validated, finite float32 data.

    Attributes
    ----------
    kind : str
        Always ``"tabular"``.
    n_samples : int
        Number of rows.
    n_features : int
        Number of columns.
    nbytes : int
        Size of ``data`` in bytes.
    """

    data: np.ndarray = field(repr=False)

    kind = "tabular"

    @property
    def n_samples(self):
        """Number of rows."""
        return self.data.shape[0]

    @property
    def n_features(self):
        """Number of columns."""
        return self.data.shape[1]

    @property
    def nbytes(self):
        """Size of ``data`` in bytes."""
        return self.data.nbytes

    @property
    def n_inputs(self):
        """Number of rows given (every row is kept)."""
        return self.data.shape[0]

    @property
    def skipped(self):
        """Always empty: tabular rows are never skipped."""
        return {}

    def to_input_rows(self, values, fill):
        """``values`` unchanged: tabular rows are never skipped.

        Parameters
        ----------
        values : ndarray of shape (n_samples, ...)
        fill : scalar
            Unused.

        Returns
        -------
        values : ndarray of shape (n_samples, ...)
        """
        return _to_input_rows(values, None, self.n_inputs, fill)

    def read(self, indices):
        """Return some rows.

        Parameters
        ----------
        indices : slice or array-like of int
            Which rows to return.

        Returns
        -------
        rows : ndarray of shape (len(indices), n_features)
            float32 rows (a view for a slice).
        """
        return self.data[indices]

    def materialize(self):
        """Return all rows.

        Returns
        -------
        data : ndarray of shape (n_samples, n_features)
            The ``data`` attribute itself.
        """
        return self.data

    def __repr__(self):
        return f"TabularInput(n_samples={self.n_samples}, n_features={self.n_features})"


@dataclass(eq=False, repr=False)
class DerivedRows(TabularInput):
    """Feature rows computed from the readable inputs of another input.

    The embeddings of images by a frozen encoder, for instance: one row per
    readable image, while :meth:`to_input_rows` and the other row bookkeeping
    are those of the images, so outputs keep one row per input.

    Parameters
    ----------
    data : ndarray of shape (n_samples, n_features)
        One row per readable input of ``origin``, in reading order.
    origin : ImageInput or TabularInput
        The input the rows were computed from.

    Examples
    --------
    >>> import numpy as np
    >>> images = read_input(np.zeros((3, 4, 4), dtype=np.uint8))
    >>> rows = DerivedRows(np.ones((3, 2), dtype=np.float32), origin=images)
    >>> rows.n_inputs, rows.to_input_rows(rows.data, np.nan).shape
    (3, (3, 2))
    """

    origin: object = field(default=None, repr=False)

    @property
    def n_inputs(self):
        """Number of inputs of the origin, readable or not."""
        return self.origin.n_inputs

    @property
    def skipped(self):
        """The origin's inputs left out as unreadable."""
        return self.origin.skipped

    def to_input_rows(self, values, fill):
        """Results placed back at the positions of the origin's inputs."""
        return self.origin.to_input_rows(values, fill)


# ---------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------


def read_input(
    X,
    *,
    image_size=None,
    channels=None,
    data_format="auto",
    on_error="raise",
    allow_tabular=True,
    name="X",
    cache_bytes=_DEFAULT_CACHE_BYTES,
    max_workers=None,
    min_readable=1,
):
    """Validate ``X`` and wrap it for batched reading.

    Every problem is reported here, before any training starts: wrong shapes
    or dtypes, non-finite values, missing paths, unreadable image files.

    Parameters
    ----------
    X : array-like, str, os.PathLike or list
        One of:

        - a numeric array (or nested lists): 2-D ``(n_samples, n_features)``
          is tabular, 3-D ``(N, H, W)`` is grayscale images, 4-D is images
          laid out as set by ``data_format`` (see *Arrays* in the module
          docstring for their dtypes);
        - a path to a directory, a ``.npy`` file or one image (see
          :func:`resolve_path`);
        - a list or tuple of PIL images, of paths to image files, or of
          arrays each holding one image, ``(H, W)`` or ``(H, W, C)``.
    image_size : int or tuple of (int, int), default=None
        ``(height, width)`` every image is resized to, lazily in
        :meth:`ImageInput.read` (bilinear, with antialiasing when reducing);
        an int gives a square.  None keeps the size of the images, which must
        then all have the same size.
    channels : {1, 3}, default=None
        Channels of the images returned.  None decides from the data; 1
        converts RGB to grayscale and 3 replicates a grayscale channel (see
        *Channels and pixel depth* in the module docstring).
    data_format : {"auto", "channels_last", "channels_first"}, default="auto"
        Layout of 4-D arrays (and of 3-D arrays in a list).  ``"auto"`` takes
        the axis (last or second) whose length is 1 or 3 as the channel axis;
        when both are, uint8 arrays are channels-last (as decoded images) and
        any other dtype channels-first (as tensors).
    on_error : {"raise", "skip"}, default="raise"
        What to do with unreadable image files (*Unreadable files* in the
        module docstring): raise (an :class:`InputError` for paths that do
        not exist or are folders, a :class:`CorruptImageError` for the
        others), or leave them out with a :class:`SkippedInputsWarning` that
        gives each one's reason (``ImageInput.kept_indices`` and
        ``ImageInput.skipped`` tell which were kept and which were not;
        :meth:`ImageInput.to_input_rows` puts results back in input order).
    allow_tabular : bool, default=True
        Whether 2-D tabular input is accepted.
    name : str, default="X"
        Name of the input in error messages.
    cache_bytes : int, default=2 GiB
        Decoded (and resized) files that take at most this many bytes are kept
        in memory, not decoded again (built in one pass, which can briefly use
        twice this memory).  0 disables the cache.
    max_workers : int, default=None
        Threads that decode image files (each fully, once); None uses
        :class:`concurrent.futures.ThreadPoolExecutor`'s default.
    min_readable : {0, 1}, default=1
        With ``on_error="skip"``, whether at least one file must be readable
        (training) or none need be (prediction, where every input then gets
        a marked row; ``image_size`` and ``channels`` must then be given).

    Returns
    -------
    inp : ImageInput or TabularInput
        The validated input.

    Raises
    ------
    InputError
        If ``X`` is invalid; the message says what is expected.
    CorruptImageError
        If image files cannot be decoded and ``on_error="raise"``.

    Examples
    --------
    >>> import numpy as np
    >>> from deepclust._inputs import read_input
    >>> images = np.zeros((10, 32, 32, 3), dtype=np.uint8)
    >>> inp = read_input(images)
    >>> inp.n_samples, inp.channels, inp.size, inp.dtype
    (10, 3, (32, 32), dtype('uint8'))
    >>> inp.read([0, 1]).shape
    (2, 3, 32, 32)
    >>> read_input(images, image_size=16, channels=1).read(slice(0, 4)).shape
    (4, 1, 16, 16)
    >>> read_input([[0.0, 1.0], [2.0, 3.0]])
    TabularInput(n_samples=2, n_features=2)
    """
    size = check_image_size(image_size)
    _check_params(channels, data_format, on_error, cache_bytes)

    if isinstance(X, (str, os.PathLike)):
        X = resolve_path(X, name)
    if isinstance(X, (list, tuple)):
        files = {
            "on_error": on_error,
            "cache_bytes": cache_bytes,
            "max_workers": max_workers,
            "min_readable": min_readable,
        }
        return _read_list(X, size, channels, data_format, allow_tabular, name, files)
    return _read_array(X, size, channels, data_format, allow_tabular, name)


def _read_list(items, size, channels, data_format, allow_tabular, name, files):
    """A list or tuple of inputs, read by the reader of its kind of items.

    ``files`` holds the options of :func:`_read_files` for lists of paths.
    """
    if len(items) == 0:
        raise InputError(f"{name} is empty; expected at least one sample.")
    kind = _list_kind(items, name)
    if kind == "path":
        paths = [os.fspath(p) for p in items]
        return _read_files(paths, size, channels, name=name, **files)
    if kind == "pil":
        return _read_pil_list(list(items), size, channels, name)
    if kind == "array":
        return _read_array_list(list(items), size, channels, data_format, name)
    return _read_array(items, size, channels, data_format, allow_tabular, name)


# ---------------------------------------------------------------------------
# Checks used by the estimators
# ---------------------------------------------------------------------------


def check_min_samples(inp, n_min, *, what=None, name="X"):
    """Raise if an input has fewer than ``n_min`` samples.

    Parameters
    ----------
    inp : ImageInput or TabularInput
        The validated input.
    n_min : int
        Minimum number of samples.
    what : str, default=None
        Why they are needed, shown in parentheses.
    name : str, default="X"
        Name of the input in the message.

    Raises
    ------
    InputError
        If ``inp.n_samples < n_min``.

    Examples
    --------
    >>> import numpy as np
    >>> from deepclust._inputs import check_min_samples, read_input
    >>> check_min_samples(read_input(np.ones((1, 3))), 2, what="batch norm needs 2")
    Traceback (most recent call last):
    ...
    deepclust._inputs.InputError: X has 1 sample(s) but at least 2 are required
    (batch norm needs 2).
    """
    if inp.n_samples < n_min:
        reason = f" ({what})" if what else ""
        raise InputError(
            f"{name} has {inp.n_samples} sample(s) but at least {n_min} are "
            f"required{reason}."
        )


def check_matches(
    inp,
    *,
    kind,
    channels=None,
    size=None,
    source_shape=None,
    n_features=None,
    name="X",
    owner="the model",
):
    """Raise if a predict-time input does not match what a model was fitted on.

    Parameters
    ----------
    inp : ImageInput or TabularInput
        The validated predict-time input.
    kind : {"image", "tabular"}
        Kind of data the model was fitted on.
    channels : int, default=None
        Channels the model expects (images); None skips the check.
    size : tuple of (int, int), default=None
        ``(height, width)`` the model expects (images); None skips the
        check.
    source_shape : tuple of (int, int, int), default=None
        ``(C, H, W)`` of the array the model was fitted on.  Only compared
        when ``inp`` also comes from an array: lists of PIL images and files
        are resized to the model's size instead.
    n_features : int, default=None
        Number of features the model expects (tabular).
    name : str, default="X"
        Name of the input in messages.
    owner : str, default="the model"
        Who expects the input; pass the estimator's class name to get
        scikit-learn's exact wording ("X has 5 features, but KMeans is
        expecting 4 features as input").

    Raises
    ------
    InputError
        On the first mismatch found.

    Examples
    --------
    >>> import numpy as np
    >>> from deepclust._inputs import check_matches, read_input
    >>> check_matches(read_input(np.ones((3, 5))), kind="tabular", n_features=4)
    Traceback (most recent call last):
    ...
    deepclust._inputs.InputError: X has 5 features, but the model is expecting 4
    features as input: the model was fitted with 4 features.
    """
    if inp.kind != kind:
        got = (
            f"tabular data of shape {inp.data.shape}"
            if inp.kind == "tabular"
            else f"images ({inp.channels} channel(s), size {inp.size})"
        )
        raise InputError(
            f"{name} is {got}, but {owner} was fitted on {kind} data; pass the "
            "same kind of data as in fit."
        )
    if kind == "tabular":
        if n_features is not None and inp.n_features != n_features:
            raise InputError(
                f"{name} has {inp.n_features} features, but {owner} is expecting "
                f"{n_features} features as input: the model was fitted with "
                f"{n_features} features."
            )
        return
    if (
        source_shape is not None
        and inp.source_shape is not None
        and tuple(inp.source_shape) != tuple(source_shape)
    ):
        raise InputError(
            f"{name} holds images of shape (C, H, W) = {tuple(inp.source_shape)}, "
            f"but {owner} was fitted on an array of images of shape "
            f"{tuple(source_shape)}; got shape {tuple(inp.source_shape)}, "
            f"expected shape {tuple(source_shape)}."
        )
    if channels is not None and inp.channels != channels:
        raise InputError(
            f"{name} has {inp.channels}-channel images, but {owner} was fitted on "
            f"{channels}-channel images; pass channels={channels} to convert them."
        )
    if size is not None and tuple(inp.size) != tuple(size):
        raise InputError(
            f"{name} yields images of size (H, W) = {tuple(inp.size)}, but "
            f"{owner} expects {tuple(size)}; pass image_size={tuple(size)} to "
            "resize them."
        )


def check_value_range(batch, *, fitted_dtype, value_range, name="X"):
    """Raise if raw images cannot be on the scale a model was fitted on.

    A model maps raw pixel values to [0, 1] with the range it saw in ``fit``:
    [0, 255] for uint8 images, [min(0, lowest), max(1, highest)] of the
    training images for float images. Images on another scale (floats in [0,
    1] for a model fitted on uint8 images, or uint8 images for a model fitted
    on floats in [0, 1]) would give wrong predictions without any error; this
    check turns them into an error. It costs one min and one max per batch:
    call it on each batch of a streaming inference.

    Parameters
    ----------
    batch : ndarray of shape (n_samples, channels, height, width)
        Raw images, as :meth:`ImageInput.read` returns them (uint8 or float).
    fitted_dtype : {"uint8", "float32"}
        The dtype of the images the model was fitted on (the estimators'
        ``input_dtype_``).
    value_range : tuple of (float, float) or None
        ``(low, high)``: the raw values the model maps to [0, 1]; ``(0,
        255)`` for models fitted on uint8 images, which are always checked
        against [0, 255]. ``low`` and ``high`` may be per-channel sequences:
        the widest range is used. None when unknown: models fitted on uint8
        images are then checked against [0, 255], models fitted on floats are
        not checked.
    name : str, default="X"
        Name of the input in the message.

    Raises
    ------
    InputError
        For a model fitted on uint8 images: if ``batch`` holds floats whose
        maximum is in (0, 1] (images scaled to [0, 1]) or floats outside [0,
        255]. For a model fitted on floats: if ``batch`` holds values beyond
        ``value_range`` by more than half its width on either side. A batch
        of zeros (blank images) always passes.
    ValueError
        If ``fitted_dtype`` or ``value_range`` is invalid.

    Examples
    --------
    >>> import numpy as np
    >>> from deepclust._inputs import check_value_range
    >>> uint8_images = np.full((2, 3, 4, 4), 200, dtype=np.uint8)
    >>> check_value_range(uint8_images, fitted_dtype="uint8", value_range=(0, 255))
    >>> check_value_range(
    ...     uint8_images / 255.0, fitted_dtype="uint8", value_range=(0, 255)
    ... )
    Traceback (most recent call last):
    ...
    deepclust._inputs.InputError: X holds float images with values in [0.784,
    0.784], which look like images scaled to [0, 1], but the model expects values
    in [0, 255] as it was fitted on uint8 images; pass (X * 255).astype(np.uint8).
    >>> check_value_range(uint8_images, fitted_dtype="float32", value_range=(0, 1))
    Traceback (most recent call last):
    ...
    deepclust._inputs.InputError: X holds values in [200, 200], but the model was
    fitted on images with values in [0, 1]: values that far beyond that range are
    on another scale; pass X.astype(np.float32) / 255.
    >>> check_value_range(uint8_images, fitted_dtype="float32", value_range=None)
    """
    fitted = _fitted_range(fitted_dtype, value_range)
    batch = np.asarray(batch)
    if batch.size == 0:
        return
    found = float(batch.min()), float(batch.max())
    if found[0] == found[1] == 0:
        return  # blank images are on every scale
    if fitted_dtype == "uint8":
        _check_uint8_scale(batch.dtype, found, name)
    elif fitted is not None:
        _check_float_scale(found, fitted, name)


def _fitted_range(fitted_dtype, value_range):
    """``(low, high)`` of check_value_range's arguments, or None; checks them."""
    if fitted_dtype not in ("uint8", "float32"):
        raise ValueError(
            f"fitted_dtype must be 'uint8' or 'float32'; got {fitted_dtype!r}."
        )
    if value_range is None:
        return None
    try:
        valid = len(value_range) == 2
        low, high = float(np.min(value_range[0])), float(np.max(value_range[1]))
        valid = valid and np.isfinite([low, high]).all() and high > low
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(
            "value_range must be None or (low, high) with high > low; got "
            f"{value_range!r}."
        )
    return low, high


def _check_uint8_scale(dtype, found, name):
    """Raise if values ``found`` (min, max) are not on a uint8 model's [0, 255]."""
    found_low, found_high = found
    shown = f"[{found_low:.3g}, {found_high:.3g}]"
    # Such a model always maps [0, 255] to [0, 1], whatever value_range says.
    if dtype.kind == "f" and found_low >= 0 and found_high <= 1:
        raise InputError(
            f"{name} holds float images with values in {shown}, which look like "
            "images scaled to [0, 1], but the model expects values in [0, 255] "
            f"as it was fitted on uint8 images; pass ({name} * 255)"
            ".astype(np.uint8)."
        )
    if found_low < 0 or found_high > 255:
        raise InputError(
            f"{name} holds values in {shown}, outside [0, 255], but the model "
            "was fitted on uint8 images (values 0 to 255); pass uint8 images "
            f"or rescale {name} to [0, 255]."
        )


def _check_float_scale(found, fitted, name):
    """Raise if values ``found`` are far beyond a float model's ``fitted`` range."""
    (found_low, found_high), (low, high) = found, fitted
    margin = (high - low) / 2
    if found_low >= low - margin and found_high <= high + margin:
        return
    if found_low >= 0 and found_high <= 255 and high <= 1.5:
        hint = f"pass {name}.astype(np.float32) / 255"
    elif found_low >= 0 and found_high <= 1 and high > 1.5:
        hint = f"pass {name} * 255"
    else:
        hint = f"rescale {name} to [{low:.3g}, {high:.3g}]"
    raise InputError(
        f"{name} holds values in [{found_low:.3g}, {found_high:.3g}], but the model "
        f"was fitted on images with values in [{low:.3g}, {high:.3g}]: values that "
        f"far beyond that range are on another scale; {hint}."
    )


def iter_batches(inp, batch_size):
    """Yield consecutive batches of an input, for streaming inference.

    Parameters
    ----------
    inp : ImageInput or TabularInput
        The validated input.
    batch_size : int
        Number of samples per batch (the last batch may be smaller).

    Yields
    ------
    start : int
        Position of the first sample of the batch.
    batch : ndarray
        ``inp.read(slice(start, start + batch_size))``.

    Examples
    --------
    >>> import numpy as np
    >>> from deepclust._inputs import iter_batches, read_input
    >>> inp = read_input(np.zeros((5, 8, 8), dtype=np.uint8))
    >>> [(start, batch.shape) for start, batch in iter_batches(inp, 2)]
    [(0, (2, 1, 8, 8)), (2, (2, 1, 8, 8)), (4, (1, 1, 8, 8))]
    """
    check_positive_int(batch_size, "batch_size")
    for start in range(0, inp.n_samples, batch_size):
        yield start, inp.read(slice(start, start + batch_size))


def shard_input(X, rank, world_size, *, name="X"):
    """The share of X one process of a distributed job reads: every
    ``world_size``-th input, starting at ``rank``.

    Interleaving (rather than cutting X in blocks) gives every process a similar
    mix when X is sorted, e.g. by class. Only the share is read: a folder or a
    list of files becomes the list of this process's files, and a (memory-mapped)
    array the copy of this process's rows.

    Parameters
    ----------
    X : array-like, str, os.PathLike or list
        Any input accepted by :func:`read_input`.
    rank, world_size : int
        This process and the number of processes.
    name : str, default="X"

    Returns
    -------
    X_local : array or list
        This process's inputs, to pass to :func:`read_input`.
    positions : ndarray of int
        Their positions in X.
    n_inputs : int
        Number of inputs of X.
    input_paths : list of str or None
        Every file of X, in input order, when X names files.

    Examples
    --------
    >>> import numpy as np
    >>> X_local, positions, n, _ = shard_input(np.arange(10).reshape(5, 2), 1, 2)
    >>> X_local.tolist(), positions.tolist(), n
    ([[2, 3], [6, 7]], [1, 3], 5)
    """
    if isinstance(X, (str, os.PathLike)):
        X = resolve_path(X, name)
    if isinstance(X, (list, tuple)):
        positions = np.arange(rank, len(X), world_size)
        paths = None
        if X and all(isinstance(item, (str, os.PathLike)) for item in X):
            paths = [os.fspath(item) for item in X]
        return [X[i] for i in positions], positions, len(X), paths
    array = X if isinstance(X, np.ndarray) else np.asarray(X)
    if array.ndim == 0:
        return X, np.arange(0), 0, None  # read_input explains what is wrong
    positions = np.arange(rank, len(array), world_size)
    return array[positions], positions, len(array), None


def labels_from_proba(proba):
    """Cluster labels from probabilities; -1 for the rows of unreadable inputs.

    Parameters
    ----------
    proba : ndarray of shape (n_samples, n_clusters)
        Cluster probabilities, with NaN rows for inputs that could not be read.

    Returns
    -------
    labels : ndarray of shape (n_samples,)
        int64 argmax of each row, -1 for NaN rows (as HDBSCAN marks noise).

    Examples
    --------
    >>> import numpy as np
    >>> from deepclust._inputs import labels_from_proba
    >>> labels_from_proba(np.array([[0.2, 0.8], [np.nan, np.nan], [0.9, 0.1]]))
    array([ 1, -1,  0])
    """
    proba = np.asarray(proba)
    missing = np.isnan(proba).any(axis=1)
    labels = np.where(missing, -1, np.nan_to_num(proba).argmax(axis=1))
    return labels.astype(np.int64)


def _to_input_rows(values, kept_indices, n_inputs, fill):
    values = np.asarray(values)
    if kept_indices is None or (len(values) == n_inputs == len(kept_indices)):
        return values
    if values.dtype.kind in "iub" and isinstance(fill, float) and np.isnan(fill):
        values = values.astype(np.float32)
    rows = np.full((n_inputs, *values.shape[1:]), fill, dtype=values.dtype)
    rows[kept_indices] = values
    return rows


def image_files_in(directory):
    """List the image files below a directory, recursively, sorted.

    Parameters
    ----------
    directory : str or os.PathLike
        Directory to search.

    Returns
    -------
    paths : list of str
        Every entry whose extension (any case) is one of
        :data:`IMAGE_EXTENSIONS` and that is not a folder: files, and also
        broken or looping symbolic links, FIFOs and the like, so that reading
        them reports them as unreadable instead of leaving them out unseen.

    Notes
    -----
    Symbolic links to folders are neither followed nor listed, so a link loop
    cannot make the listing endless. Subfolders that cannot be listed (no
    permission) are passed over.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from deepclust._inputs import image_files_in
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     for name in ["b.PNG", "a.jpg", "sub/c.png", "notes.txt"]:
    ...         (Path(tmp) / name).parent.mkdir(exist_ok=True)
    ...         (Path(tmp) / name).touch()
    ...     [str(Path(p).relative_to(tmp)) for p in image_files_in(tmp)]
    ['a.jpg', 'b.PNG', 'sub/c.png']
    """
    found = []
    pending = [Path(directory)]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(folder / entry.name)
                    elif _is_listed_image(entry):
                        found.append(str(folder / entry.name))
        except OSError:
            # As pathlib's rglob did: a folder that cannot be listed (or that
            # vanished meanwhile) gives no entries.
            continue
    return sorted(found)


def _is_listed_image(entry):
    """Whether a folder entry (os.DirEntry) is listed as an image file."""
    if os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
        return False
    try:
        # is_dir follows links: a link to a folder is not an image file.
        return not entry.is_dir()
    except OSError:
        return True  # a symbolic link loop: listed, then reported unreadable


# ---------------------------------------------------------------------------
# Parameter checks
# ---------------------------------------------------------------------------


def _check_params(channels, data_format, on_error, cache_bytes):
    if channels is not None and channels not in _SUPPORTED_CHANNELS:
        raise ValueError(f"channels must be None, 1 or 3; got {channels!r}.")
    if data_format not in _DATA_FORMATS:
        raise ValueError(
            f"data_format must be one of {_DATA_FORMATS}; got {data_format!r}."
        )
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip'; got {on_error!r}.")
    if not is_int(cache_bytes) or cache_bytes < 0:
        raise ValueError(
            f"cache_bytes must be a non-negative int; got {cache_bytes!r}."
        )


# ---------------------------------------------------------------------------
# Arrays
# ---------------------------------------------------------------------------


def _read_array(X, size, channels, data_format, allow_tabular, name):
    if hasattr(X, "toarray") and hasattr(X, "nnz"):
        raise InputError(
            f"{name} is a sparse matrix, which is not supported; convert it with "
            f"{name}.toarray()."
        )
    if isinstance(X, np.ndarray):
        # No np.asarray: it would turn a memmap into a plain array.
        array = X
    else:
        try:
            array = np.asarray(X)
        except (ValueError, TypeError) as exc:
            raise InputError(
                f"{name} could not be converted to a numeric array ({exc}); "
                "expected an array-like of numbers, a path, or a list of images."
            ) from exc

    if array.ndim == 0:
        raise InputError(
            f"{name} is a 0-dimensional value of type {type(X).__name__}; expected "
            "a 2-D (n_samples, n_features), 3-D (N, H, W) or 4-D (N, H, W, C) / "
            "(N, C, H, W) array, a path, or a list of images."
        )
    if array.size == 0:
        if array.ndim == 2 and array.shape[0] > 0:
            raise InputError(
                f"{name} has 0 feature(s) (shape={array.shape}) while a minimum of 1 "
                "is required."
            )
        raise InputError(
            f"{name} is empty (shape={array.shape}); expected at least one sample."
        )
    if array.ndim == 1:
        raise InputError(
            f"{name} is 1-D (shape={array.shape}); expected a 2-D array "
            "(n_samples, n_features) or 3-D/4-D images. Reshape your data either "
            f"using {name}.reshape(-1, 1) if your data has a single feature or "
            f"{name}.reshape(1, -1) if it contains a single sample."
        )
    if array.ndim > 4:
        raise InputError(
            f"{name} has {array.ndim} dimensions (shape={array.shape}); accepted "
            "are 2 (n_samples, n_features), 3 (N, H, W) and 4 (N, H, W, C) or "
            "(N, C, H, W)."
        )
    array = _numeric(array, name)

    if array.ndim == 2:
        if not allow_tabular:
            raise InputError(
                f"{name} is 2-D tabular data (shape={array.shape}), but images are "
                "expected: a 3-D (N, H, W) or 4-D (N, H, W, C) / (N, C, H, W) "
                "array, a path, or a list of images."
            )
        _check_finite(array, name)
        data = array.astype(np.float32, copy=False)
        return TabularInput(data=data)

    if array.ndim == 3:
        channels_last = False
        source_shape = (1, *array.shape[1:])
    else:
        channels_last = _channels_last(array.shape[1:], array.dtype, data_format, name)
        if channels_last:
            source_shape = (array.shape[3], array.shape[1], array.shape[2])
        else:
            source_shape = tuple(array.shape[1:])
    _check_finite(array, name)
    return ImageInput(
        n_samples=array.shape[0],
        channels=channels or source_shape[0],
        size=size or tuple(source_shape[1:]),
        dtype=_output_dtype([array.dtype]),
        source_shape=tuple(int(v) for v in source_shape),
        source_kind="array",
        array=array,
        channels_last=channels_last,
        kept_indices=np.arange(array.shape[0]),
    )


def _read_array_list(arrays, size, channels, data_format, name):
    items = []
    for i, array in enumerate(arrays):
        item_name = f"{name}[{i}]"
        if array.ndim not in (2, 3):
            raise InputError(
                f"{item_name} has {array.ndim} dimensions (shape={array.shape}); "
                "each array of a list must be one image, (H, W) or (H, W, C)."
            )
        if array.size == 0:
            raise InputError(f"{item_name} is empty (shape={array.shape}).")
        array = _numeric(array, item_name)
        _check_finite(array, item_name)
        if array.ndim == 2:
            array = array[np.newaxis]
        elif _channels_last(array.shape, array.dtype, data_format, item_name):
            array = array.transpose(2, 0, 1)
        items.append(array)
    source_channels = {item.shape[0] for item in items}
    _check_same_size([item.shape[1:] for item in items], size, name)
    return ImageInput(
        n_samples=len(items),
        channels=channels or max(source_channels),
        size=size or tuple(items[0].shape[1:]),
        dtype=_output_dtype([item.dtype for item in items]),
        source_kind="arrays",
        kept_indices=np.arange(len(items)),
        _items=items,
    )


def _numeric(array, name):
    kind = array.dtype.kind
    if kind in "biuf":
        return array
    if kind == "c":
        raise InputError(
            f"{name} has non-numeric dtype {array.dtype}: Complex data not "
            "supported; expected real numbers (bool, int, uint8 or float)."
        )
    if kind == "O":
        # scikit-learn treats object arrays of numbers as numeric data.
        try:
            return array.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise _NonNumericInputError(
                f"{name} has non-numeric dtype object and its values are not all "
                f"numbers ({exc}); expected real numbers (bool, int, uint8 or "
                "float)."
            ) from exc
    raise InputError(
        f"{name} has non-numeric dtype {array.dtype}; expected real numbers "
        "(bool, int, uint8 or float)."
    )


def _check_finite(array, name):
    if array.dtype.kind != "f":
        return
    n_nonfinite = 0
    max_abs = 0.0
    rows_per_chunk = max(1, _SCAN_CHUNK_BYTES // max(1, array[:1].nbytes))
    for start in range(0, array.shape[0], rows_per_chunk):
        chunk = np.asarray(array[start : start + rows_per_chunk])
        finite = np.isfinite(chunk)
        n_nonfinite += int(chunk.size - np.count_nonzero(finite))
        if array.dtype.itemsize > 4 and finite.any():
            max_abs = max(max_abs, float(np.abs(chunk[finite]).max()))
    if n_nonfinite:
        raise InputError(
            f"{name} contains {n_nonfinite} non-finite value(s) (NaN or inf); "
            "all values must be finite."
        )
    float32_max = float(np.finfo(np.float32).max)
    if max_abs > float32_max:
        raise InputError(
            f"{name} contains values up to {max_abs:.3g}, beyond the float32 range "
            f"(about {float32_max:.3g}); rescale the data."
        )


def _channels_last(image_shape, dtype, data_format, name):
    # image_shape is one image's (a, b, c): channels are a (first) or c (last).
    first, last = image_shape[0], image_shape[-1]
    if data_format == "channels_last":
        _check_channel_count(last, image_shape, name, data_format)
        return True
    if data_format == "channels_first":
        _check_channel_count(first, image_shape, name, data_format)
        return False
    last_ok = last in _SUPPORTED_CHANNELS
    first_ok = first in _SUPPORTED_CHANNELS
    if last_ok and first_ok:
        return dtype == np.uint8
    if last_ok or first_ok:
        return last_ok
    if 4 in (first, last):
        _raise_rgba(image_shape, name)
    raise InputError(
        f"{name} holds images of shape {tuple(image_shape)} with no channel axis of "
        "a supported size: images must have 1 (grayscale) or 3 (RGB) channels, as "
        "the last axis (H, W, C) or the first axis (C, H, W) of each image. "
        "Pass data_format to set the layout explicitly."
    )


def _check_channel_count(n_channels, image_shape, name, data_format):
    if n_channels == 4:
        _raise_rgba(image_shape, name)
    if n_channels not in _SUPPORTED_CHANNELS:
        raise InputError(
            f"{name} holds images of shape {tuple(image_shape)} with "
            f"{n_channels} channels for data_format={data_format!r}; supported "
            "channel counts are 1 (grayscale) and 3 (RGB)."
        )


def _raise_rgba(image_shape, name):
    raise InputError(
        f"{name} holds images of shape {tuple(image_shape)} with 4 channels: "
        "RGBA/4-channel images are not supported; convert them to RGB, e.g. drop "
        f"the alpha channel with {name}[..., :3] (channels last) or {name}[:, :3] "
        "(channels first)."
    )


def _positions(indices, n_samples):
    # Avoid np.arange(n_samples)[indices]: it would allocate n_samples ints on
    # every batch of a streaming read.
    if isinstance(indices, slice):
        return range(n_samples)[indices]
    positions = np.asarray(indices)
    if positions.dtype == bool:
        if positions.shape != (n_samples,):
            raise IndexError(
                f"boolean indices must have shape ({n_samples},); got "
                f"{positions.shape}."
            )
        return np.flatnonzero(positions)
    if positions.ndim != 1 or (positions.size and positions.dtype.kind not in "iu"):
        raise IndexError(
            "indices must be a slice or a 1-D array-like of int; got "
            f"{positions.dtype} array of shape {positions.shape}."
        )
    positions = positions.astype(np.intp, copy=False)
    out_of_range = positions.size and (
        positions.min() < -n_samples or positions.max() >= n_samples
    )
    if out_of_range:
        raise IndexError(
            f"indices out of range for {n_samples} sample(s): min "
            f"{positions.min()}, max {positions.max()}."
        )
    return np.where(positions < 0, positions + n_samples, positions)


def _output_dtype(dtypes):
    if all(dtype == np.uint8 for dtype in dtypes):
        return np.dtype(np.uint8)
    return np.dtype(np.float32)


def _finish_batch(batch, dtype, channels, size):
    # batch is (n, C, H, W) in the source dtype.
    batch = batch.astype(dtype, copy=False)
    if batch.shape[1] != channels:
        batch = _convert_channels(batch, channels)
    if tuple(batch.shape[2:]) != tuple(size):
        batch = _resize(batch, size)
    return np.ascontiguousarray(batch)


def _convert_channels(batch, channels):
    if channels == 3:
        return np.repeat(batch, 3, axis=1)
    red, green, blue = batch[:, 0:1], batch[:, 1:2], batch[:, 2:3]
    if batch.dtype == np.uint8:
        # PIL's fixed-point ITU-R 601-2 luma, so arrays convert exactly as
        # PIL's Image.convert("L") does.
        red, green, blue = (c.astype(np.uint32) for c in (red, green, blue))
        return ((red * 19595 + green * 38470 + blue * 7471 + 0x8000) >> 16).astype(
            np.uint8
        )
    return red * 0.299 + green * 0.587 + blue * 0.114


def _resize(batch, size):
    height, width = size
    out = np.empty((*batch.shape[:2], height, width), dtype=batch.dtype)
    # One PIL image per channel: mode "L" for uint8, "F" for float32.  Each
    # band is resampled independently, so this equals resizing an RGB image.
    for i in range(batch.shape[0]):
        for c in range(batch.shape[1]):
            band = Image.fromarray(np.ascontiguousarray(batch[i, c]))
            out[i, c] = np.asarray(band.resize((width, height), Image.BILINEAR))
    return out


# ---------------------------------------------------------------------------
# PIL images and files
# ---------------------------------------------------------------------------


def _pil_channels(mode):
    return 1 if mode in _GRAY_MODES or mode.startswith("I;16") else 3


def _to_8_bit(image):
    """A mode "L" image of a 16-bit, 32-bit integer or float image, scaled.

    PIL's ``convert("L")`` clips such values at 0 and 255 instead of scaling
    them. The policy: "I;16*" and "I" (32-bit integers, in practice 16-bit
    data) are scaled from [0, 65535]; "F" (32-bit floats) is scaled from
    [0, 1] when every value is within it and kept as it is when every value
    is within [0, 255]. Anything else cannot be mapped to 8 bits without
    guessing, so the image is unreadable (_UnreadableFile, with the range).
    Other modes are returned unchanged.
    """
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        wide = np.asarray(image)
        if mode == "I" and wide.size:
            low, high = int(wide.min()), int(wide.max())
            if low < 0 or high > 65535:
                raise _UnreadableFile(
                    f"32-bit integer pixels (PIL mode 'I') with values in [{low}, "
                    f"{high}]: only values in [0, 65535] (16-bit data) can be "
                    "scaled to 8 bits; rescale the image to [0, 65535] or 8 bits"
                )
        wide = wide.astype(np.uint32)
        return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():
            raise _UnreadableFile(
                "32-bit float pixels (PIL mode 'F') with NaN or infinite values"
            )
        low = float(values.min()) if values.size else 0.0
        high = float(values.max()) if values.size else 0.0
        if low < 0 or high > 255:
            raise _UnreadableFile(
                f"32-bit float pixels (PIL mode 'F') with values in [{low:.6g}, "
                f"{high:.6g}]: only values in [0, 1] (scaled to 0-255) or in "
                "[0, 255] can be read; rescale the image to one of these ranges"
            )
        if high <= 1:
            values = values * 255
        return Image.fromarray(np.rint(values).astype(np.uint8))
    return image


def _pil_to_chw(image, channels, size):
    image = _to_8_bit(image)
    target_mode = "L" if channels == 1 else "RGB"
    if image.mode != target_mode:
        image = image.convert(target_mode)
    height, width = size
    if (image.height, image.width) != (height, width):
        image = image.resize((width, height), Image.BILINEAR)
    array = np.asarray(image)
    if array.ndim == 2:
        return array[np.newaxis]
    return array.transpose(2, 0, 1)


def _stack(images, inp):
    out = np.empty((len(images), inp.channels, *inp.size), dtype=inp.dtype)
    for i, image in enumerate(images):
        out[i] = image
    return out


def _list_kind(items, name):
    kinds = []
    for item in items:
        if isinstance(item, Image.Image):
            kinds.append("pil")
        elif isinstance(item, (str, os.PathLike)):
            kinds.append("path")
        elif isinstance(item, np.ndarray) and item.ndim >= 2:
            kinds.append("array")
        else:
            kinds.append("values")
    found = sorted(set(kinds), key=list(_LIST_KIND_LABELS).index)
    if len(found) == 1:
        return found[0]
    raise InputError(
        f"{name} mixes several kinds of items "
        f"({', '.join(_LIST_KIND_LABELS[k] for k in found)}); expected one kind: "
        "all PIL images, all paths to image files, all image arrays, or rows of "
        "numbers."
    )


def _read_pil_list(images, size, channels, name):
    bad = []
    for i, image in enumerate(images):
        try:
            # Images from Image.open are decoded lazily: decode now so that a
            # truncated file fails here and not in the middle of training.
            image.load()
        except Exception as exc:  # PIL raises many exception types
            bad.append(f"{name}[{i}] ({type(exc).__name__}: {exc})")
    if bad:
        raise CorruptImageError(
            f"{name} has {len(bad)} PIL image(s) that cannot be decoded: "
            + _listing(bad, _MAX_LISTED_FILES),
            bad,
        )
    for i, image in enumerate(images):
        if image.mode in ("I", "F"):
            try:
                _to_8_bit(image)
            except _UnreadableFile as exc:
                raise InputError(f"{name}[{i}] is a PIL image of {exc}.") from None
    sizes = [(image.height, image.width) for image in images]
    _check_same_size(sizes, size, name)
    natural = {_pil_channels(image.mode) for image in images}
    return ImageInput(
        n_samples=len(images),
        channels=channels or max(natural),
        size=size or sizes[0],
        dtype=np.dtype(np.uint8),
        source_kind="pil",
        kept_indices=np.arange(len(images)),
        _items=images,
    )


def resolve_path(X, name="X"):
    """What a path argument stands for: the one place that decides it.

    A folder stands for the image files below it (:func:`image_files_in`), a
    ``.npy`` file for its memory-mapped array, and an image file for itself.
    :func:`read_input`, the command line's DATA argument and the plots all
    resolve paths here.

    Parameters
    ----------
    X : str or os.PathLike
        The path.
    name : str, default="X"
        Name of the input in error messages.

    Returns
    -------
    X_resolved : list of str or numpy.memmap
        The image files (one for an image file), or the array of a ``.npy``
        file, opened read-only without loading it.

    Raises
    ------
    PathError
        If the path does not exist, is a folder without image files, is a
        ``.npy`` file that cannot be loaded, or is any other file; its
        ``problem`` says which.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from deepclust._inputs import resolve_path
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     (Path(tmp) / "a.png").touch()
    ...     [Path(p).name for p in resolve_path(tmp)]
    ['a.png']
    >>> try:
    ...     resolve_path("no/such/folder", name="DATA")
    ... except PathError as exc:
    ...     print(exc.problem, "|", exc)
    missing | DATA: path 'no/such/folder' does not exist.
    """
    path = os.fspath(X)
    if os.path.isdir(path):
        files = image_files_in(path)
        if not files:
            raise PathError(
                f"{name}: directory {path!r} contains no image files (searched "
                f"recursively for {', '.join(IMAGE_EXTENSIONS)}, any case).",
                path,
                "no_images",
            )
        return files
    if not os.path.exists(path):
        raise PathError(f"{name}: path {path!r} does not exist.", path, "missing")
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        try:
            return np.load(path, mmap_mode="r")
        except Exception as exc:  # np.load raises several types on bad files
            raise PathError(
                f"{name}: {path!r} could not be loaded as a .npy array "
                f"({type(exc).__name__}: {exc}).",
                path,
                "bad_npy",
            ) from exc
    if suffix in IMAGE_EXTENSIONS:
        return [path]
    raise PathError(
        f"{name}: file {path!r} is neither a .npy array nor an image file "
        f"(supported extensions: {', '.join(IMAGE_EXTENSIONS)}).",
        path,
        "not_data",
    )


@dataclass
class _Probe:
    channels: int | None = None
    size: tuple | None = None
    array: np.ndarray | None = None
    error: str | None = None
    failure: str | None = None  # "read" or "decode" when error is set


def _os_reason(exc):
    # The path is shown next to the reason: keep the OS message only.
    return f"{type(exc).__name__}: {exc.strerror or exc}"


def _path_problem(path):
    """``(kind, reason)`` when ``path`` cannot be opened as an image file, else None.

    kind is "missing" (no such file, or a broken symbolic link), "directory" or
    "read" (a symbolic link loop, no permission on a folder of the path, a
    FIFO, a device or a socket). One ``stat`` per path.
    """
    try:
        status = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            try:
                target = f" to {os.readlink(path)!r}"
            except OSError:
                target = ""
            return "missing", f"FileNotFoundError: broken symbolic link{target}"
        return "missing", (
            "FileNotFoundError: no such file (it may have been removed after it "
            "was listed)"
        )
    except OSError as exc:  # ELOOP, EACCES on a folder of the path, ...
        return "read", _os_reason(exc)
    if stat.S_ISDIR(status.st_mode):
        return "directory", "IsADirectoryError: a directory, not an image file"
    if not stat.S_ISREG(status.st_mode):
        return "read", "not a regular file: a FIFO, device or socket"
    return None


def _failure(exc):
    """``(kind, reason)`` of an exception raised while reading an image file."""
    if isinstance(exc, _UnreadableFile):
        return "read", str(exc)
    return "decode", f"{type(exc).__name__}: {exc}"


@contextmanager
def _open_image_file(path):
    """The decoded image of a file, upright (its EXIF orientation applied).

    The file is opened without blocking and must be a regular file, so that a
    FIFO or a device named like an image cannot hang or flood the reader.
    Failures to open it raise _UnreadableFile; decoding errors are PIL's.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | _O_NONBLOCK)
    except OSError as exc:
        raise _UnreadableFile(_os_reason(exc)) from exc
    with os.fdopen(descriptor, "rb") as file:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise _UnreadableFile("not a regular file: a FIFO, device or socket")
        try:
            image = Image.open(file)
        except UnidentifiedImageError as exc:
            # PIL names the file object; name the path, as Image.open(path) does.
            raise UnidentifiedImageError(
                f"cannot identify image file {path!r}"
            ) from exc
        with image:
            image.load()
            yield _upright(image)


def _upright(image):
    """``image`` turned as its EXIF orientation says it is displayed."""
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a damaged EXIF block leaves the pixels readable
        return image
    if orientation in range(2, 9):
        return ImageOps.exif_transpose(image)
    return image


def _read_files(
    paths, size, channels, on_error, name, cache_bytes, max_workers, min_readable
):
    """An ImageInput of image files: every file checked and fully decoded once."""
    problems = {}
    for i, path in enumerate(paths):
        problem = _path_problem(path)
        if problem is not None:
            problems[i] = problem
    if on_error == "raise":
        _raise_missing_or_folders(paths, problems, name)
    budget = _CacheBudget(cache_bytes)
    probes = _probe_files(paths, problems, size, channels, budget, max_workers)
    bad = {i: (paths[i], probes[i].error) for i in sorted(probes) if probes[i].error}
    if bad:
        # Prediction can mark every row; training needs something to learn from,
        # and the image size must be known to read the rest.
        nothing_left = len(bad) == len(paths) and (
            min_readable > 0 or size is None or channels is None
        )
        _unreadable_files(bad, probes, on_error, nothing_left, name)
    kept_indices = np.array(
        [i for i in range(len(paths)) if i not in bad], dtype=np.intp
    )
    kept = [probes[i] for i in kept_indices]
    _check_same_size([r.size for r in kept], size, name)
    n_channels = channels or max(r.channels for r in kept)
    out_size = size or kept[0].size
    inp = ImageInput(
        n_samples=len(kept),
        channels=n_channels,
        size=out_size,
        dtype=np.dtype(np.uint8),
        source_kind="files",
        paths=[paths[i] for i in kept_indices],
        kept_indices=kept_indices,
        n_inputs=len(paths),
        skipped=bad,
        _max_workers=max_workers,
    )
    if not budget.exceeded and inp.nbytes <= cache_bytes:
        cache = np.empty((inp.n_samples, n_channels, *out_size), dtype=np.uint8)
        for i, r in enumerate(kept):
            # A grayscale image in a colour set is broadcast to 3 channels.
            cache[i] = r.array
            r.array = None
        inp._cache = cache
    return inp


def _raise_missing_or_folders(paths, problems, name):
    """With on_error="raise": raise for paths that do not exist or are folders."""
    missing = [
        repr(paths[i]) + (" (broken symbolic link)" if "symbolic" in why else "")
        for i, (kind, why) in problems.items()
        if kind == "missing"
    ]
    if missing:
        raise InputError(
            f"{name} has {len(missing)} path(s) that do not exist: "
            + _listing(missing, _MAX_LISTED)
        )
    directories = [paths[i] for i, (kind, _) in problems.items() if kind == "directory"]
    if directories:
        raise InputError(
            f"{name} has {len(directories)} path(s) that are directories, not "
            "image files: "
            + _listing([repr(p) for p in directories], _MAX_LISTED)
            + "; pass a directory on its own to read all the images inside."
        )


def _probe_files(paths, problems, size, channels, budget, max_workers):
    """``{position: _Probe}`` of every file, decoded in a thread pool.

    Files with a known ``problem`` are not opened. Decoded pixels are kept
    while ``budget`` allows.
    """

    def probe(path):
        try:
            # A full decode: Image.open only reads the header, and a truncated
            # file only fails when its pixels are decoded.
            with _open_image_file(path) as image:
                natural = _pil_channels(image.mode)
                source_size = (image.height, image.width)
                target_size = size or source_size
                n_bytes = (channels or natural) * target_size[0] * target_size[1]
                array = None
                if budget.reserve(n_bytes):
                    array = _pil_to_chw(image, channels or natural, target_size)
                elif image.mode in ("I", "F"):
                    _to_8_bit(image)  # values that cannot be read fail here
                return _Probe(natural, source_size, array)
        except Exception as exc:  # PIL raises many exception types
            failure, reason = _failure(exc)
            return _Probe(error=reason, failure=failure)

    to_probe = [i for i in range(len(paths)) if i not in problems]
    with ThreadPoolExecutor(max_workers=max_workers) as executor:
        probed = executor.map(probe, [paths[i] for i in to_probe])
        probes = dict(zip(to_probe, probed, strict=True))
    for i, (_, reason) in problems.items():
        probes[i] = _Probe(error=reason, failure="read")
    return probes


def _unreadable_files(bad, probes, on_error, nothing_left, name):
    """Raise for the unreadable files ``bad``, or warn that they are skipped."""
    listed = [f"{p!r} ({error})" for p, error in bad.values()]
    phrase = _FAILURE_PHRASES[frozenset(probes[i].failure for i in bad)]
    if on_error == "raise" or nothing_left:
        also = (
            "; no readable image is left" if on_error == "skip" else
            "; pass on_error='skip' to leave them out"
        )  # fmt: skip
        raise CorruptImageError(
            f"{name} has {len(bad)} image file(s) that {phrase}: "
            + _listing(listed, _MAX_LISTED_FILES)
            + also
            + ".",
            [p for p, _ in bad.values()],
        )
    warnings.warn(
        SkippedInputsWarning(
            f"Skipped {len(bad)} image file(s) of {name} that {phrase}; their "
            "rows get label -1 and NaN values: "
            + _listing(listed, _MAX_LISTED_FILES)
            + ".",
            bad,
        ),
        # The caller of read_input: read_input -> _read_list -> _read_files ->
        # here.
        stacklevel=5,
    )


class _CacheBudget:
    # Shared by the decoding threads: once the budget is exceeded nobody
    # keeps decoded pixels any more, so memory stays bounded by cache_bytes.
    def __init__(self, limit):
        self.limit = limit
        self.used = 0
        self.exceeded = limit == 0
        self._lock = threading.Lock()

    def reserve(self, n_bytes):
        with self._lock:
            if self.exceeded or self.used + n_bytes > self.limit:
                self.exceeded = True
                return False
            self.used += n_bytes
            return True


def _check_same_size(sizes, size, name):
    if size is not None:
        return
    distinct = list(dict.fromkeys(tuple(int(v) for v in s) for s in sizes))
    if len(distinct) > 1:
        shown = ", ".join(f"{h}x{w}" for h, w in distinct[:3])
        raise InputError(
            f"{name} contains images of different sizes (height x width: {shown}"
            f"{', ...' if len(distinct) > 3 else ''}); pass image_size=(height, "
            "width) to resize them all to one size."
        )


def _listing(items, limit):
    shown = ", ".join(items[:limit])
    if len(items) > limit:
        shown += f" and {len(items) - limit} more"
    return shown
