"""Validation and batched reading of the inputs accepted by deepclust estimators."""

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
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from deepclust._validation import check_image_size, check_positive_int, is_int

__all__ = [
    "IMAGE_EXTENSIONS",
    "CorruptImageError",
    "ImageInput",
    "InputError",
    "SkippedInputsWarning",
    "TabularInput",
    "check_matches",
    "check_min_samples",
    "image_files_in",
    "iter_batches",
    "labels_from_proba",
    "read_input",
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
                with Image.open(path) as image:
                    image.load()
                    return _pil_to_chw(image, self.channels, self.size)
            except Exception as exc:  # PIL raises many exception types
                raise CorruptImageError(
                    f"Image file {path!r} could not be decoded "
                    f"({type(exc).__name__}: {exc}); it was readable when the "
                    "input was checked, so it may have been modified since.",
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

    Every problem is reported here, before any training starts: wrong
    shapes or dtypes, non-finite values, missing paths and unreadable image
    files (each file is fully decoded once, in a thread pool).

    Parameters
    ----------
    X : array-like, str, os.PathLike or list
        One of:

        - a numeric array (or nested lists): 2-D ``(n_samples, n_features)``
          is tabular, 3-D ``(N, H, W)`` is grayscale images, 4-D is images
          laid out as set by ``data_format``.  bool and integer arrays other
          than uint8 are read as float32 values, as are float arrays (raw
          values, not rescaled); uint8 stays uint8.  Object arrays holding
          numbers are converted, as scikit-learn does.  Memory-mapped arrays
          are read lazily, batch by batch;
        - a path to a directory (all image files below it, recursively, in
          sorted order), to a ``.npy`` file (memory-mapped) or to one image;
        - a list or tuple of PIL images, of paths to image files, or of
          arrays each holding one image, ``(H, W)`` or ``(H, W, C)``.
    image_size : int or tuple of (int, int), default=None
        ``(height, width)`` every image is resized to (bilinear, with
        antialiasing when reducing); an int gives a square.  None keeps the
        size of the images, which must then all have the same size.
        Resizing happens lazily in :meth:`ImageInput.read`.
    channels : {1, 3}, default=None
        Channels of the images returned.  None decides from the data: PIL
        modes ``"1"``, ``"L"``, ``"LA"``, ``"I"``, ``"F"`` and ``"I;16*"``
        are grayscale, any other mode is converted to RGB, and a mix of
        grayscale and colour images gives 3 channels.  1 converts RGB to
        grayscale (PIL's ITU-R 601-2 luma weights, also for arrays); 3
        replicates a grayscale channel.
    data_format : {"auto", "channels_last", "channels_first"}, default="auto"
        Layout of 4-D arrays (and of 3-D arrays in a list).  ``"auto"``
        takes the axis (last or second) whose length is 1 or 3 as the
        channel axis; when both are, uint8 arrays are read as channels-last
        (the usual layout of decoded images) and any other dtype as
        channels-first (the usual layout of tensors).
    on_error : {"raise", "skip"}, default="raise"
        What to do with image files that cannot be decoded: raise a
        :class:`CorruptImageError`, or leave them out with a
        :class:`SkippedInputsWarning` (``ImageInput.kept_indices`` and
        ``ImageInput.skipped`` tell which inputs were kept and which were
        not; :meth:`ImageInput.to_input_rows` puts results back in input
        order).
    allow_tabular : bool, default=True
        Whether 2-D tabular input is accepted.
    name : str, default="X"
        Name of the input in error messages.
    cache_bytes : int, default=2 GiB
        When the decoded (and resized) files take at most this many bytes,
        they are kept in memory so that reading them again does not decode
        them again.  The cache is built in one pass, which can briefly use
        twice this memory.  0 disables the cache.
    max_workers : int, default=None
        Threads that decode image files; None uses
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
        X = _resolve_path(X, name)
    if isinstance(X, (list, tuple)):
        if len(X) == 0:
            raise InputError(f"{name} is empty; expected at least one sample.")
        kind = _list_kind(X, name)
        if kind == "path":
            return _read_files(
                [os.fspath(p) for p in X], size, channels, on_error, name,
                cache_bytes, max_workers, min_readable,
            )  # fmt: skip
        if kind == "pil":
            return _read_pil_list(list(X), size, channels, name)
        if kind == "array":
            return _read_array_list(list(X), size, channels, data_format, name)
    return _read_array(X, size, channels, data_format, allow_tabular, name)


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
        X = _resolve_path(X, name)
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
        Files whose extension (any case) is one of :data:`IMAGE_EXTENSIONS`.

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
    return sorted(
        str(path)
        for path in Path(directory).rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    )


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


def _pil_to_chw(image, channels, size):
    if image.mode.startswith("I;16"):
        # PIL's convert("L") clips 16-bit values at 255; rescale to 8 bits.
        wide = np.asarray(image).astype(np.uint32)
        image = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))
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


def _resolve_path(X, name):
    """The image files a path stands for, or the memory-mapped array of a .npy."""
    path = os.fspath(X)
    if os.path.isdir(path):
        files = image_files_in(path)
        if not files:
            raise InputError(
                f"{name}: directory {path!r} contains no image files (searched "
                f"recursively for {', '.join(IMAGE_EXTENSIONS)}, any case)."
            )
        return files
    if not os.path.exists(path):
        raise InputError(f"{name}: path {path!r} does not exist.")
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        try:
            return np.load(path, mmap_mode="r")
        except Exception as exc:  # np.load raises several types on bad files
            raise InputError(
                f"{name}: {path!r} could not be loaded as a .npy array "
                f"({type(exc).__name__}: {exc})."
            ) from exc
    if suffix in IMAGE_EXTENSIONS:
        return [path]
    raise InputError(
        f"{name}: file {path!r} is neither a .npy array nor an image file "
        f"(supported extensions: {', '.join(IMAGE_EXTENSIONS)})."
    )


@dataclass
class _Probe:
    channels: int | None = None
    size: tuple | None = None
    array: np.ndarray | None = None
    error: str | None = None


def _read_files(
    paths, size, channels, on_error, name, cache_bytes, max_workers, min_readable
):
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        raise InputError(
            f"{name} has {len(missing)} path(s) that do not exist: "
            + _listing([repr(p) for p in missing], _MAX_LISTED)
        )
    directories = [p for p in paths if os.path.isdir(p)]
    if directories:
        raise InputError(
            f"{name} has {len(directories)} path(s) that are directories, not "
            "image files: "
            + _listing([repr(p) for p in directories], _MAX_LISTED)
            + "; pass a directory on its own to read all the images inside."
        )

    budget = _CacheBudget(cache_bytes)

    def probe(path):
        try:
            with Image.open(path) as image:
                # A full decode: Image.open only reads the header, and a
                # truncated file only fails when its pixels are decoded.
                image.load()
                natural = _pil_channels(image.mode)
                source_size = (image.height, image.width)
                target_size = size or source_size
                n_bytes = (channels or natural) * target_size[0] * target_size[1]
                array = None
                if budget.reserve(n_bytes):
                    array = _pil_to_chw(image, channels or natural, target_size)
                return _Probe(natural, source_size, array)
        except Exception as exc:  # PIL raises many exception types
            return _Probe(error=f"{type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(max_workers=max_workers) as executor:
        probes = list(executor.map(probe, paths))

    bad = {
        i: (p, r.error)
        for i, (p, r) in enumerate(zip(paths, probes, strict=True))
        if r.error
    }
    if bad:
        listed = [f"{p!r} ({error})" for p, error in bad.values()]
        # Prediction can mark every row; training needs something to learn from,
        # and the image size must be known to read the rest.
        nothing_left = len(bad) == len(paths) and (
            min_readable > 0 or size is None or channels is None
        )
        if on_error == "raise" or nothing_left:
            also = (
                "; no readable image is left" if on_error == "skip" else
                "; pass on_error='skip' to leave them out"
            )  # fmt: skip
            raise CorruptImageError(
                f"{name} has {len(bad)} image file(s) that cannot be decoded "
                "(corrupt or truncated): "
                + _listing(listed, _MAX_LISTED_FILES)
                + also
                + ".",
                [p for p, _ in bad.values()],
            )
        warnings.warn(
            SkippedInputsWarning(
                f"Skipped {len(bad)} image file(s) of {name} that cannot be decoded "
                "(corrupt or truncated); their rows get label -1 and NaN values: "
                + _listing(listed, _MAX_LISTED_FILES)
                + ".",
                bad,
            ),
            stacklevel=3,
        )
    kept_indices = np.array(
        [i for i in range(len(paths)) if i not in bad], dtype=np.intp
    )
    kept_paths = [paths[i] for i in kept_indices]
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
        paths=kept_paths,
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
