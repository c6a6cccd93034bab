"""Cluster millions of image files with an ONNX model on a data-parallel engine.

:func:`predict_files` is the partition function: given the path of an ONNX file
written by :func:`deepclust.onnx.export_onnx` and some image paths, it returns a
pandas DataFrame with one row per path, in the given order. Hand it to the
engine that runs your batch jobs (Dask's ``map_partitions``, Ray Data's
``map_batches``, Spark's ``mapInPandas``); the engine partitions, schedules and
retries, this module only clusters one partition. :func:`predict_files_dask`
builds the whole lazy job on Dask; :func:`iter_image_files` lists a folder
without building the list twice; :func:`result_meta` gives the columns and
dtypes without running the model. ``docs/batch_inference.md`` has the recipes.

Like :mod:`deepclust.onnx`, this module needs neither torch nor scikit-learn;
pandas and Dask are imported when a function needs them
(``pip install 'deepclust[scale]'``).
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

import os
import threading
from collections import OrderedDict

import numpy as np

from deepclust._inputs import _is_listed_image, collect_skipped_inputs
from deepclust._validation import check_positive_int, is_int
from deepclust.inspection import labels_and_confidence

__all__ = [
    "iter_image_files",
    "predict_files",
    "predict_files_dask",
    "result_meta",
]

_ON_ERROR = ("skip", "raise")
_MAX_CACHED_MODELS = 4
# Loaded models of this process. The key holds the file's size and mtime, so a
# model exported again at the same path is loaded again by long-lived workers.
_CACHE = OrderedDict()
_CACHE_LOCK = threading.Lock()
# warnings.catch_warnings swaps process-wide state: two threads inside it at once
# can lose each other's SkippedInputsWarning (and with it the reasons of the
# unreadable files), so calls that record warnings take turns.
_PREDICT_LOCK = threading.Lock()
_INSTALL_HINT = "pip install 'deepclust[scale]'"


def iter_image_files(root):
    """Yield the image files below a folder, recursively, in sorted order.

    The order is that of :func:`deepclust._inputs.image_files_in` (and of
    ``OnnxClusterer.predict(folder)``): full paths sorted as strings. Only one
    folder's entries are sorted in memory at a time, so the first paths come
    before the whole tree is walked, and a listing of millions of files is
    built once, by the caller, if at all.

    Parameters
    ----------
    root : str or os.PathLike
        The folder to search. Symbolic links to files are listed, and so are
        broken ones (their rows say why they cannot be read); symbolic links to
        folders are neither followed nor listed, as in ``image_files_in``.

    Yields
    ------
    path : str
        ``os.path.join(root, ...)`` of each file whose extension (any case) is
        one of ``deepclust._inputs.IMAGE_EXTENSIONS``.

    Raises
    ------
    NotADirectoryError
        If ``root`` is not a folder.

    See Also
    --------
    predict_files_dask : Lists a folder with this function.

    Examples
    --------
    >>> import os, tempfile
    >>> from deepclust.batch_inference import iter_image_files
    >>> with tempfile.TemporaryDirectory() as root:
    ...     for name in ["b.png", "a/c.JPG", "a.png", "notes.txt"]:
    ...         os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
    ...         open(os.path.join(root, name), "wb").close()
    ...     [os.path.relpath(p, root) for p in iter_image_files(root)]
    ['a.png', 'a/c.JPG', 'b.png']
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise NotADirectoryError(
            f"root {root!r} is not a folder; expected the folder holding the images."
        )
    # The sorted full paths list "a.png" < "a/c.png" < "a0/x.png" < "b.png": the
    # order of each folder's entries sorted by name, with "/" after folder names.
    stack = [iter(_sorted_entries(root))]
    while stack:
        for path, is_dir in stack[-1]:
            if is_dir:
                stack.append(iter(_sorted_entries(path)))
                break
            yield path
        else:
            stack.pop()


def _sorted_entries(folder):
    """(path, is_folder) of a folder's subfolders and image files, in path order."""
    keyed = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                keyed.append((entry.name + "/", entry.path, True))
            elif _is_listed_image(entry):
                # Broken links too: predict_files gives them an unreadable row.
                keyed.append((entry.name, entry.path, False))
    keyed.sort()
    return [(path, is_dir) for _, path, is_dir in keyed]


def result_meta(model_path):
    """The columns and dtypes of :func:`predict_files`'s result, with no rows.

    Engines that plan before they run need them: Dask's ``meta``, the schema of
    Spark's ``mapInPandas``. Only the model's metadata is read; nothing is
    predicted.

    Parameters
    ----------
    model_path : str or os.PathLike
        ONNX file written by :func:`deepclust.onnx.export_onnx` from an
        estimator fitted on images.

    Returns
    -------
    meta : pandas.DataFrame
        Zero rows. ``path``, ``status`` and ``error`` are pandas ``"string"``
        columns. A :class:`~deepclust.CDCClusterer` model adds ``label``
        (``"Int64"``, missing for unreadable files), ``probability`` (the top
        probability) and ``proba_0`` ... ``proba_{K-1}`` (float32); a
        :class:`~deepclust.ContrastiveDisentangler` model adds ``head_0`` ...
        ``head_{K-1}`` (float32).

    Examples
    --------
    >>> from deepclust.batch_inference import result_meta
    >>> result_meta("cdc.onnx").dtypes  # doctest: +SKIP
    path           string
    status         string
    error          string
    label           Int64
    probability   float32
    proba_0       float32
    proba_1       float32
    proba_2       float32
    dtype: object
    """
    pd = _import("pandas")
    return _empty_frame(_Columns(_load(model_path, None, 256, "skip", None)), pd)


def predict_files(
    model_path,
    paths,
    *,
    batch_size=256,
    on_error="skip",
    providers=None,
    threads=None,
    root=None,
):
    """Cluster image files with an ONNX model: one row per path, in order.

    This is the function to run on each partition of a data-parallel job.
    The model is loaded once per process and kept for later calls (the key is
    the file, its size and modification time, ``providers``, ``batch_size``,
    ``on_error`` and ``threads``): ship the path to the workers, not a loaded
    model, whose onnxruntime session cannot be pickled. The paths are read and
    predicted ``batch_size`` at a time, so memory holds one batch of decoded
    images besides the result; each file is decoded once.

    Parameters
    ----------
    model_path : str or os.PathLike
        ONNX file written by :func:`deepclust.onnx.export_onnx` from an
        estimator fitted on images, at a path every worker can read.
    paths : sequence of str, pandas.Series or pandas.DataFrame
        Image files. A DataFrame must have a ``path`` column (what Ray Data's
        ``map_batches`` and Spark's ``mapInPandas`` pass); the index of a
        Series or DataFrame is kept, so the rows line up with the input.
    batch_size : int, default=256
        Files decoded and predicted per onnxruntime call.
    on_error : {"skip", "raise"}, default="skip"
        What to do with files that cannot be read (corrupt, truncated, not an
        image, missing, a folder): give them a row with status
        ``"unreadable"``, the reason in ``error`` and no label, or raise
        (``deepclust._inputs.CorruptImageError`` or ``InputError``, naming the
        files).
    providers : {"cpu", "cuda"}, list or None, default=None
        onnxruntime execution providers, as for
        :class:`~deepclust.onnx.OnnxClusterer`.
    threads : int, default=None
        onnxruntime intra-op threads of the model. None keeps onnxruntime's
        default, one per physical core, which suits one worker process per
        machine; with several worker processes on a machine, use about
        ``cores // processes``.
    root : str or os.PathLike, default=None
        Folder that relative ``paths`` are relative to. The ``path`` column
        keeps the paths as given.

    Returns
    -------
    result : pandas.DataFrame
        One row per path, in the given order: ``path``, ``status`` (``"ok"``
        or ``"unreadable"``), ``error`` (the reason, missing for ``"ok"``),
        then the values: ``label``, ``probability`` and ``proba_0`` ...
        ``proba_{K-1}`` for :class:`~deepclust.CDCClusterer` models, or
        ``head_0`` ... ``head_{K-1}`` for
        :class:`~deepclust.ContrastiveDisentangler` models; unreadable rows
        have missing labels and NaN values. See :func:`result_meta`.

    Raises
    ------
    ValueError
        If a parameter is invalid, or the model was fitted on tabular data.
    ImportError
        If pandas is not installed.

    See Also
    --------
    predict_files_dask : The whole job on Dask, built on this function.
    deepclust.onnx.OnnxClusterer : The same predictions for inputs in memory.

    Examples
    --------
    >>> import os, shutil, tempfile, warnings
    >>> from PIL import Image
    >>> from deepclust import CDCClusterer
    >>> from deepclust.batch_inference import predict_files
    >>> from deepclust.datasets import make_shape_images
    >>> images, _ = make_shape_images(24, image_size=8, random_state=0)
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")  # one epoch leaves clusters empty
    ...     cdc = CDCClusterer(n_clusters=3, max_epochs=1, batch_size=24,
    ...                        random_state=0).fit(images)
    >>> folder = tempfile.mkdtemp()
    >>> model = cdc.export_onnx(os.path.join(folder, "cdc.onnx"))
    >>> Image.fromarray(images[0]).save(os.path.join(folder, "a.png"))
    >>> with open(os.path.join(folder, "b.png"), "wb") as file:
    ...     _ = file.write(b"not an image")
    >>> rows = predict_files(model, ["a.png", "b.png"], root=folder)
    >>> rows[["path", "status", "label"]]
        path      status  label
    0  a.png          ok      ...
    1  b.png  unreadable   <NA>
    >>> rows.columns[3:].tolist()
    ['label', 'probability', 'proba_0', 'proba_1', 'proba_2']
    >>> shutil.rmtree(folder)
    """
    pd = _import("pandas")
    batch_size = check_positive_int(batch_size, "batch_size")
    _check_options(on_error, threads)
    clusterer = _load(model_path, providers, batch_size, on_error, threads)
    columns = _Columns(clusterer)
    names, index = _path_list(paths, pd)
    opened = names if root is None else [os.path.join(root, n) for n in names]
    values, errors = _predict_paths(clusterer, columns, opened, batch_size, on_error)
    return columns.frame(names, index, values, errors, pd)


def predict_files_dask(
    model_path,
    files,
    *,
    partition_size=10_000,
    batch_size=256,
    on_error="skip",
    providers=None,
    threads=None,
    root=None,
):
    """Cluster image files on Dask: a lazy DataFrame with one row per file, in order.

    The files become a Dask DataFrame of paths (``partition_size`` per
    partition, indexed by input position) and :func:`predict_files` runs on
    each partition with ``map_partitions``. Dask does the partitioning,
    scheduling and retries; nothing runs until the result is computed
    (``.compute()``, ``.to_parquet(...)``), on the default scheduler or on the
    :class:`distributed.Client` created last. The columns and dtypes are
    declared from the model's metadata, so Dask never runs the model to infer
    them.

    Parameters
    ----------
    model_path : str or os.PathLike
        ONNX file written by :func:`deepclust.onnx.export_onnx`, at the same
        path on this machine (its metadata is read here) and on every worker.
    files : str, os.PathLike, iterable of str or dask DataFrame
        A folder (its image files, recursively, listed by
        :func:`iter_image_files`), the paths themselves (a list, a generator,
        a pandas Series), or a Dask DataFrame with a ``path`` column (for
        listings too large for this machine's memory, read with
        ``dask.dataframe.read_parquet``), which is used as it is partitioned.
    partition_size : int, default=10_000
        Files per partition, the unit of work (and of retry) of a task. Make
        it many times ``batch_size`` and small enough for several partitions
        per worker.
    batch_size, on_error, providers, threads, root
        See :func:`predict_files`.

    Returns
    -------
    result : dask.dataframe.DataFrame
        Lazy. One row per file, in input order, each file exactly once, with
        the columns of :func:`predict_files`; indexed by input position with
        known divisions (for a Dask DataFrame of paths, its own index).

    Raises
    ------
    ValueError
        If a parameter is invalid, ``files`` is empty, or the model was
        fitted on tabular data.
    NotADirectoryError
        If ``files`` is a path but not a folder.
    ImportError
        If Dask or pandas is not installed.

    See Also
    --------
    predict_files : The function that runs on each partition.

    Examples
    --------
    >>> from dask.distributed import Client, LocalCluster
    >>> from deepclust.batch_inference import predict_files_dask
    >>> with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, \\
    ...         Client(cluster):  # doctest: +SKIP
    ...     result = predict_files_dask("model.onnx", "images/", threads=1)
    ...     result.to_parquet("clusters/")
    """
    pd = _import("pandas")
    dd = _import("dask.dataframe")
    partition_size = check_positive_int(partition_size, "partition_size")
    batch_size = check_positive_int(batch_size, "batch_size")
    _check_options(on_error, threads)
    meta = _empty_frame(
        _Columns(_load(model_path, providers, batch_size, on_error, threads)), pd
    )
    frame = _paths_frame(files, partition_size, pd, dd)
    # predict_files keeps the index of each partition: the meta must have it too,
    # or writers such as to_parquet look for an index column that is not there.
    meta.index = frame._meta.index[:0]
    return frame.map_partitions(
        _predict_partition,
        os.fspath(model_path),
        batch_size=batch_size,
        on_error=on_error,
        providers=providers,
        threads=threads,
        root=None if root is None else os.fspath(root),
        meta=meta,
    )


def _paths_frame(files, partition_size, pd, dd):
    """``files`` of predict_files_dask as a Dask DataFrame with a ``path`` column."""
    if isinstance(files, dd.Series):
        return files.to_frame(name="path")
    if isinstance(files, dd.DataFrame):
        if "path" not in files.columns:
            raise ValueError(
                "files is a Dask DataFrame without a 'path' column; expected one "
                f"holding the image paths (it has {list(files.columns)})."
            )
        return files[["path"]]
    if isinstance(files, (str, os.PathLike)):
        if not os.path.isdir(files):
            raise NotADirectoryError(
                f"files {os.fspath(files)!r} is not a folder; expected a folder of "
                "images, an iterable of image paths or a DataFrame with a 'path' "
                "column."
            )
        files = iter_image_files(files)
    elif isinstance(files, pd.DataFrame):
        if "path" not in files.columns:
            raise ValueError(
                "files is a DataFrame without a 'path' column; expected one holding "
                f"the image paths (it has {list(files.columns)})."
            )
        files = files["path"]
    if not hasattr(files, "__iter__"):
        raise TypeError(
            "files must be a folder, an iterable of image paths or a DataFrame "
            f"with a 'path' column; got {type(files).__name__}."
        )
    paths = pd.Series(
        files.tolist() if isinstance(files, pd.Series) else list(files),
        dtype="string",
        name="path",
    )
    if len(paths) == 0:
        raise ValueError("files holds no image file; expected at least one path.")
    missing = np.flatnonzero(paths.isna().to_numpy())
    if len(missing):
        raise ValueError(
            f"files has a missing value at position {missing[0]}; expected a path "
            "to an image file at every position."
        )
    # The index is the input position: rows of the result can be joined back to
    # the listing, and the divisions are known.
    return dd.from_pandas(paths.to_frame(), chunksize=partition_size, sort=True)


def _predict_partition(frame, model_path, **options):
    """map_partitions takes the data first; predict_files takes the model first."""
    return predict_files(model_path, frame, **options)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


class _Columns:
    """The value columns of a model's results and how to fill them."""

    def __init__(self, clusterer):
        self.clusterer_model = bool(clusterer.n_clusters)
        needed = "probabilities" if self.clusterer_model else "heads"
        if needed not in clusterer.output_names:
            raise ValueError(
                f"model_path {os.fspath(clusterer.path)!r} has no {needed!r} output "
                f"(it has {clusterer.output_names}); export the estimator again "
                f"with outputs including {needed!r}."
            )
        if self.clusterer_model:
            self.n_values = clusterer.n_clusters
            self.value_names = [f"proba_{k}" for k in range(self.n_values)]
        else:
            self.n_values = clusterer.metadata["params"]["n_heads"]
            self.value_names = [f"head_{k}" for k in range(self.n_values)]

    def frame(self, names, index, values, errors, pd):
        ok = np.array([error is None for error in errors], dtype=bool)
        data = {
            "path": pd.array(names, dtype="string"),
            "status": pd.array(np.where(ok, "ok", "unreadable"), dtype="string"),
            "error": pd.array(errors, dtype="string"),
        }
        if self.clusterer_model:
            labels, top = labels_and_confidence(values)
            # Unreadable rows have NaN values (label -1): their label is missing.
            labels[~ok] = 0
            data["label"] = pd.arrays.IntegerArray(labels, ~ok)
            data["probability"] = np.where(ok, top, np.nan).astype(np.float32)
        for k, name in enumerate(self.value_names):
            data[name] = values[:, k]
        return pd.DataFrame(data, index=index)


def _empty_frame(columns, pd):
    return columns.frame(
        [], pd.RangeIndex(0), np.empty((0, columns.n_values), np.float32), [], pd
    )


def _predict_paths(clusterer, columns, opened, batch_size, on_error):
    """Values of every file, ``batch_size`` at a time, and the errors (or None)."""
    values = np.full((len(opened), columns.n_values), np.nan, dtype=np.float32)
    errors = [None] * len(opened)
    for start in range(0, len(opened), batch_size):
        chunk = opened[start : start + batch_size]
        chunk_values, chunk_errors = _predict_chunk(clusterer, columns, chunk, on_error)
        values[start : start + len(chunk)] = chunk_values
        for offset, reason in chunk_errors.items():
            errors[start + offset] = reason
    return values, errors


def _predict_chunk(clusterer, columns, opened, on_error):
    """Values of one batch of files and the reasons of the unreadable ones."""
    values = np.full((len(opened), columns.n_values), np.nan, dtype=np.float32)
    errors = {}
    if on_error == "skip":
        # A file removed after the listing must not fail the whole partition
        # (a retry would fail again): it is unreadable like a corrupt one.
        for offset, path in enumerate(opened):
            if not os.path.isfile(path):
                what = (
                    "IsADirectoryError" if os.path.isdir(path) else "FileNotFoundError"
                )
                errors[offset] = f"{what}: {path!r} is not a file"
    present = [offset for offset in range(len(opened)) if offset not in errors]
    if not present:
        return values, errors
    with _PREDICT_LOCK, collect_skipped_inputs() as skipped:
        inputs = [opened[offset] for offset in present]
        if columns.clusterer_model:
            rows = clusterer.predict_proba(inputs)
        else:
            rows = clusterer.transform(inputs, output="heads")
    for position, reason in skipped.items():
        errors[present[position]] = reason
    if len(rows) != len(present):
        # OnnxClusterer guarantees one row per input; never pair rows by luck.
        raise RuntimeError(
            f"got {len(rows)} rows for {len(present)} files; please report this bug."
        )
    values[present] = rows
    return values, errors


def _path_list(paths, pd):
    """The paths as a list of str and the index of the result."""
    index = None
    if isinstance(paths, pd.DataFrame):
        if "path" not in paths.columns:
            raise ValueError(
                "paths is a DataFrame without a 'path' column; expected one holding "
                f"the image paths (it has {list(paths.columns)})."
            )
        paths = paths["path"]
    if isinstance(paths, pd.Series):
        index = paths.index
        paths = paths.tolist()
    elif isinstance(paths, (str, os.PathLike)):
        raise TypeError(
            f"paths must be a sequence of image paths, not one path ({paths!r}); "
            "wrap a single file in a list, or list a folder with iter_image_files."
        )
    else:
        paths = list(paths)
    names = []
    for position, path in enumerate(paths):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(
                f"paths[{position}] is {path!r}; expected a str or path-like path "
                "to an image file."
            )
        names.append(os.fspath(path))
    if index is None:
        index = pd.RangeIndex(len(names))
    return names, index


def _check_options(on_error, threads):
    if on_error not in _ON_ERROR:
        raise ValueError(f"on_error must be 'skip' or 'raise'; got {on_error!r}.")
    if threads is not None and (not is_int(threads) or threads < 1):
        raise ValueError(f"threads must be None or a positive int; got {threads!r}.")


def _load(model_path, providers, batch_size, on_error, threads):
    """This process's OnnxClusterer for these settings, loaded on first use."""
    from deepclust.onnx import OnnxClusterer

    if not isinstance(model_path, (str, os.PathLike)):
        raise TypeError(
            "model_path must be a str or path-like to an .onnx file; got "
            f"{type(model_path).__name__}."
        )
    path = os.path.abspath(os.fspath(model_path))
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        raise FileNotFoundError(
            f"model_path {path!r} {what}; expected an .onnx file written by "
            "deepclust.onnx.export_onnx, at the same path on every worker."
        )
    stat = os.stat(path)
    key = (
        path,
        (stat.st_size, stat.st_mtime_ns),
        repr(providers),
        batch_size,
        on_error,
        threads,
    )
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        clusterer = OnnxClusterer(
            path,
            providers=providers,
            batch_size=batch_size,
            on_error=on_error,
            n_threads=threads,
        )
        if clusterer.metadata["input_kind"] != "image":
            raise ValueError(
                f"model_path {path!r} was fitted on tabular data; predict_files "
                "reads image files, so it needs a model fitted on images."
            )
        _CACHE[key] = clusterer
        while len(_CACHE) > _MAX_CACHED_MODELS:
            _CACHE.popitem(last=False)
        return clusterer


def _import(module):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"deepclust.batch_inference needs {module.split('.')[0]} (and pandas): "
            f"{_INSTALL_HINT}."
        ) from exc
