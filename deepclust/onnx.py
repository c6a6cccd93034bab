"""ONNX export of fitted estimators and torch-free inference with onnxruntime.

:func:`export_onnx` writes a fitted :class:`~deepclust.CDCClusterer` or
:class:`~deepclust.ContrastiveDisentangler` to one self-contained ONNX file whose
graph starts from raw input (uint8 NHWC images by default) and includes the
model's input scaling. :class:`OnnxClusterer` runs such a file with onnxruntime:
it reads the same inputs as the estimators (arrays, PIL images, image files,
folders, ``.npy`` files), resizes images to the model's size, and works as a
fitted step of a scikit-learn :class:`~sklearn.pipeline.Pipeline`.

This module imports only numpy, Pillow (through :mod:`deepclust._inputs`) and,
when a model is loaded, onnxruntime: inference needs neither torch nor
scikit-learn. :func:`export_onnx` imports torch when it is called.
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

import inspect
import json
import os
import warnings

import numpy as np

from deepclust._inputs import (
    InputError,
    check_matches,
    check_value_range,
    iter_batches,
    labels_from_proba,
    read_input,
)
from deepclust._validation import check_positive_int

__all__ = ["OnnxClusterer", "export_onnx"]

_CPU = "CPUExecutionProvider"
_CUDA = "CUDAExecutionProvider"
# Outputs each estimator can export (see deepclust._export).
_KNOWN_OUTPUTS = {
    "CDCClusterer": ("labels", "probabilities", "embedding", "instance"),
    "ContrastiveDisentangler": ("heads", "embedding"),
}
_DEFAULT_PARAMS = {
    "providers": None,
    "batch_size": 256,
    "on_error": None,
    "n_threads": None,
}


def export_onnx(
    estimator,
    path,
    *,
    outputs=None,
    input_format="auto",
    opset=18,
    dynamic_batch=True,
):
    """Export a fitted estimator to a single self-contained ONNX file.

    The graph takes raw input as users hold it and applies the model's own
    scaling (the cast to float, the layout change, the mapping to the unit
    range and the channel standardisation) before the network, so predictions
    need no preprocessing code. Images are not resized in the graph: feed
    images of the model's size, or use :class:`OnnxClusterer`, which resizes.

    The model is exported in eval mode (its training flag is restored
    afterwards) with torch's ``torch.export``-based exporter, or with the
    TorchScript-based exporter (with a warning) when the former fails. The
    file is checked with :func:`onnx.checker.check_model` and, when
    onnxruntime is installed, onnxruntime's outputs are compared with torch's.

    Parameters
    ----------
    estimator : CDCClusterer or ContrastiveDisentangler
        A fitted estimator.
    path : str or path-like
        The ``.onnx`` file to write (its directory must exist). Weights are
        stored inside the file: no ``.data`` file is written next to it.
    outputs : str or list of str, default=None
        Graph outputs. :class:`~deepclust.CDCClusterer`: ``"labels"`` (int64
        cluster indices), ``"probabilities"`` (float32, rows sum to 1),
        ``"embedding"`` (backbone features) and ``"instance"`` (the normalised
        instance part z^n). :class:`~deepclust.ContrastiveDisentangler`:
        ``"heads"`` (head activations in (0, 1)) and ``"embedding"``. None
        exports ``["labels", "probabilities"]`` or ``["heads"]``, plus the
        output selected by the estimator's ``transform_output``. Outputs are
        always in the order listed here.
    input_format : {"auto", "uint8_nhwc", "float_nchw"}, default="auto"
        Input of image graphs. ``"uint8_nhwc"``: uint8 images of shape
        (batch, H, W, C), as decoded images and most image arrays are laid
        out. ``"float_nchw"``: float32 images of shape (batch, C, H, W) holding
        raw values as passed to the estimator (not rescaled). ``"auto"`` picks
        ``"uint8_nhwc"`` for models fitted on uint8 images, PIL images or
        files and ``"float_nchw"`` for models fitted on float arrays. Models
        fitted on tabular data take float32 rows (batch, n_features) and
        require ``"auto"``.
    opset : int, default=18
        ONNX opset version.
    dynamic_batch : bool, default=True
        Whether the batch dimension is dynamic. False fixes it to 1.

    Returns
    -------
    path : pathlib.Path
        The file written.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        If the estimator is not fitted.
    ValueError
        If ``outputs``, ``input_format``, ``opset`` or ``dynamic_batch`` is
        invalid.
    FileNotFoundError
        If the directory of ``path`` does not exist.

    See Also
    --------
    OnnxClusterer : Run the exported file with onnxruntime (with an example).

    Notes
    -----
    The file's ``metadata_props`` hold the deepclust version, the estimator
    class and its parameters (JSON; values JSON cannot hold are stored as
    their repr), the input kind, format, layout, dtype and per-sample shape,
    the image size and channels or the number of features, the scaler
    buffers (``normalization``: offset, scale, mean, std), ``n_clusters`` and
    the output names. onnxruntime exposes them as
    ``session.get_modelmeta().custom_metadata_map`` (JSON strings);
    :attr:`OnnxClusterer.metadata` holds them decoded.
    """
    from deepclust._export import export_onnx as _export_onnx

    return _export_onnx(
        estimator,
        path,
        outputs=outputs,
        input_format=input_format,
        opset=opset,
        dynamic_batch=dynamic_batch,
    )


class OnnxClusterer:
    """Cluster or embed data with an exported deepclust model, without torch.

    A predict-only estimator: the model is already trained, so :meth:`fit`
    does nothing and the object counts as fitted for scikit-learn. It reads
    the same inputs as the estimators, resizes images to the model's image
    size (bilinear, as the estimators do), converts each batch to the graph's
    input layout and dtype, and streams the input through onnxruntime in
    batches of ``batch_size``.

    Parameters
    ----------
    path : str or path-like
        ONNX file written by :func:`export_onnx`.
    providers : {"cpu", "cuda"}, list or None, default=None
        onnxruntime execution providers. None and ``"cpu"`` use the CPU.
        ``"cuda"`` uses ``CUDAExecutionProvider`` (from the onnxruntime-gpu
        package) with the CPU as fallback. A list of provider names (or
        ``(name, options)`` pairs) is passed on in order. Providers that this
        onnxruntime installation lacks are dropped with a warning; the CPU
        provider is always appended.
    batch_size : int, default=256
        Samples per onnxruntime call.
    on_error : {"raise", "skip"} or None, default=None
        What to do with image files that cannot be read: raise, or leave them
        out with a warning; their rows then hold label -1 and NaN values, so
        outputs keep one row per input, in input order. None uses the
        exported estimator's ``on_error``.
    n_threads : int or None, default=None
        onnxruntime's intra-op threads; None lets onnxruntime use one per core.
        Set it to 1 when several processes share a machine (batch jobs).

    Attributes
    ----------
    session : onnxruntime.InferenceSession
        The loaded model.
    metadata : dict
        The model's metadata, decoded from JSON (see :func:`export_onnx`).
    input_name : str
        Name of the graph input.
    output_names : list of str
        Names of the graph outputs.
    n_clusters : int or None
        Number of clusters (None for ContrastiveDisentangler models).
    n_features_in_ : int
        Number of features, for models fitted on tabular data only.

    See Also
    --------
    export_onnx : Write the ONNX file of a fitted estimator.

    Notes
    -----
    One instance can serve several threads at once (a web application's
    workers): ``predict``, ``predict_proba`` and ``transform`` only read the
    attributes set when the file is loaded, and onnxruntime's
    ``InferenceSession.run`` may be called concurrently. Do not call
    ``set_params`` while other threads predict.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from sklearn.datasets import make_blobs
    >>> from deepclust import CDCClusterer
    >>> from deepclust.onnx import OnnxClusterer, export_onnx
    >>> X, _ = make_blobs(n_samples=60, n_features=4, centers=3, random_state=0)
    >>> cdc = CDCClusterer(n_clusters=3, max_epochs=2, batch_size=30,
    ...                    random_state=0).fit(X)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = export_onnx(cdc, os.path.join(folder, "cdc.onnx"))
    ...     clusterer = OnnxClusterer(path)
    >>> clusterer.output_names, clusterer.n_clusters
    (['labels', 'probabilities'], 3)
    >>> np.allclose(clusterer.predict_proba(X), cdc.predict_proba(X), atol=1e-5)
    True
    """

    def __init__(
        self, path, *, providers=None, batch_size=256, on_error=None, n_threads=None
    ):
        self.path = path
        self.providers = providers
        self.batch_size = batch_size
        self.n_threads = n_threads
        self.on_error = on_error
        self._load()

    # ------------------------------------------------------------- loading
    def _check_params(self):
        check_positive_int(self.batch_size, "batch_size")
        if self.n_threads is not None:
            check_positive_int(self.n_threads, "n_threads")
        if self.on_error not in (None, "raise", "skip"):
            raise ValueError(
                f"on_error must be None, 'raise' or 'skip'; got {self.on_error!r}."
            )

    def _load(self):
        self._check_params()
        if not isinstance(self.path, (str, os.PathLike)):
            raise TypeError(
                f"path must be a str or path-like to an .onnx file; got "
                f"{type(self.path).__name__}."
            )
        path = os.fspath(self.path)
        if not os.path.isfile(path):
            what = "is a directory" if os.path.isdir(path) else "does not exist"
            raise FileNotFoundError(
                f"path {path!r} {what}; expected an .onnx file written by "
                "deepclust.onnx.export_onnx."
            )
        onnxruntime = _import_onnxruntime()
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: no optimiser chatter
        if self.n_threads is not None:
            # Several worker processes on one machine should not each spin up a
            # thread per core.
            options.intra_op_num_threads = self.n_threads
            options.inter_op_num_threads = 1
        providers = _resolve_providers(self.providers, onnxruntime)
        try:
            session = onnxruntime.InferenceSession(path, options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(
                f"path {path!r} could not be loaded as an ONNX model "
                f"({type(exc).__name__}: {exc})."
            ) from exc
        raw = session.get_modelmeta().custom_metadata_map
        if "deepclust_version" not in raw:
            raise ValueError(
                f"path {path!r} is an ONNX model without deepclust metadata; "
                "expected a file written by deepclust.onnx.export_onnx."
            )
        metadata = {key: _from_json(value) for key, value in raw.items()}
        _check_metadata(metadata, session, path)
        self.session = session
        self.metadata = metadata
        graph_input = session.get_inputs()[0]
        self.input_name = graph_input.name
        batch_dim = graph_input.shape[0]
        self._static_batch = batch_dim if isinstance(batch_dim, int) else None
        self.output_names = [output.name for output in session.get_outputs()]
        self.n_clusters = self.metadata.get("n_clusters")
        if self.metadata["input_kind"] == "tabular":
            self.n_features_in_ = self.metadata["n_features"]
        elif hasattr(self, "n_features_in_"):
            del self.n_features_in_  # set_params loaded an image model

    def __getstate__(self):
        # InferenceSession cannot be pickled: it is rebuilt from the file.
        state = self.__dict__.copy()
        state.pop("session", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._load()

    # --------------------------------------------- scikit-learn integration
    # This module must import without scikit-learn (deployment needs only
    # onnxruntime, numpy and Pillow), so OnnxClusterer cannot inherit
    # BaseEstimator: it implements the parameter protocol from its signature,
    # and a new model file must be loaded when ``path`` or ``providers`` change.
    def get_params(self, deep=True):
        """Get the parameters of this estimator.

        Parameters
        ----------
        deep : bool, default=True
            Unused: OnnxClusterer has no sub-estimators.

        Returns
        -------
        params : dict
            The ``__init__`` parameters: ``path``, ``providers``, ``batch_size``
            and ``on_error``.
        """
        names = list(inspect.signature(type(self).__init__).parameters)[1:]
        return {name: getattr(self, name) for name in names}

    def set_params(self, **params):
        """Set parameters; a new ``path`` or ``providers`` reloads the model.

        Parameters
        ----------
        **params : dict
            Any of ``path``, ``providers``, ``batch_size`` and ``on_error``.

        Returns
        -------
        self : OnnxClusterer
            This object.
        """
        valid = self.get_params()
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise ValueError(
                f"Invalid parameter(s) {unknown} for OnnxClusterer; valid parameters "
                f"are {sorted(valid)}."
            )
        old = dict(valid)
        for key, value in params.items():
            setattr(self, key, value)
        try:
            if any(
                getattr(self, name) is not old[name]
                for name in ("path", "providers", "n_threads")
            ):
                self._load()
            else:
                self._check_params()
        except Exception:
            for key, value in old.items():
                setattr(self, key, value)
            raise
        return self

    def __sklearn_is_fitted__(self):
        return True

    def __sklearn_tags__(self):
        # Only scikit-learn calls this, so importing it here keeps the module
        # free of a scikit-learn dependency.
        from sklearn.utils import InputTags, Tags, TargetTags, TransformerTags

        return Tags(
            estimator_type="clusterer" if self.n_clusters else None,
            target_tags=TargetTags(required=False),
            transformer_tags=TransformerTags(preserves_dtype=["float32"]),
            input_tags=InputTags(
                two_d_array=self.metadata["input_kind"] == "tabular",
                three_d_array=self.metadata["input_kind"] == "image",
            ),
            requires_fit=False,
        )

    def __repr__(self):
        extra = "".join(
            f", {key}={value!r}"
            for key, value in self.get_params().items()
            if key != "path" and value != _DEFAULT_PARAMS[key]
        )
        return f"OnnxClusterer({os.fspath(self.path)!r}{extra})"

    def fit(self, X=None, y=None):
        """Do nothing: the model is already trained.

        Parameters
        ----------
        X : Ignored
            Not used, present for API consistency.
        y : Ignored
            Not used, present for API consistency.

        Returns
        -------
        self : OnnxClusterer
            This object.
        """
        return self

    # ------------------------------------------------------------ inference
    def predict(self, X):
        """Cluster index of each sample.

        Parameters
        ----------
        X : array-like, list of PIL images or paths, or a directory path
            The inputs accepted by the estimator that was exported.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            int64 cluster indices in [0, n_clusters), one per input in input
            order; -1 for image files that could not be read.
        """
        if "labels" in self.output_names:
            return self._run(X, ["labels"])[0].astype(np.int64, copy=False)
        if "probabilities" in self.output_names:
            return labels_from_proba(self._run(X, ["probabilities"])[0])
        raise ValueError(self._no_cluster_output_message("predict"))

    def fit_predict(self, X, y=None):
        """Same as :meth:`predict` (``fit`` does nothing).

        Parameters
        ----------
        X : array-like, list of PIL images or paths, or a directory path
        y : Ignored

        Returns
        -------
        labels : ndarray of shape (n_samples,)
        """
        return self.predict(X)

    def predict_proba(self, X):
        """Cluster probabilities.

        Parameters
        ----------
        X : array-like, list of PIL images or paths, or a directory path

        Returns
        -------
        proba : ndarray of shape (n_samples, n_clusters)
            float32 rows summing to 1, one per input in input order; NaN rows
            for image files that could not be read.
        """
        if "probabilities" not in self.output_names:
            raise ValueError(self._no_cluster_output_message("predict_proba"))
        return self._run(X, ["probabilities"])[0]

    def transform(self, X, output=None):
        """Values of one graph output.

        Parameters
        ----------
        X : array-like, list of PIL images or paths, or a directory path
        output : str, default=None
            Name of the output (one of :attr:`output_names`). None returns what
            the exported estimator's ``transform`` returns (its
            ``transform_output``): head activations for ContrastiveDisentangler
            and cluster probabilities for CDCClusterer by default.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features_out)
            float32 (int64 of shape (n_samples,) for ``"labels"``).
        """
        if output is None:
            output = self.metadata.get("transform_output")
            if output not in self.output_names:
                floats = [name for name in self.output_names if name != "labels"]
                output = floats[0] if floats else "labels"
        elif output not in self.output_names:
            known = _KNOWN_OUTPUTS.get(self.metadata.get("estimator"), ())
            hint = (
                f"; re-export the estimator with outputs including {output!r} to get it"
                if output in known
                else ""
            )
            raise ValueError(
                f"output={output!r} is not an output of this model; available "
                f"outputs are {self.output_names}{hint}."
            )
        return self._run(X, [output])[0]

    def fit_transform(self, X, y=None, output=None):
        """Same as :meth:`transform` (``fit`` does nothing).

        Parameters
        ----------
        X : array-like, list of PIL images or paths, or a directory path
        y : Ignored
        output : str, default=None
            See :meth:`transform`.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features_out)
        """
        return self.transform(X, output=output)

    def _no_cluster_output_message(self, method):
        return (
            f"{method} needs cluster outputs, but this {self.metadata['estimator']} "
            f"model has only {self.output_names}; use transform, or export a "
            "CDCClusterer with outputs including 'labels' or 'probabilities'."
        )

    def _read(self, X):
        meta = self.metadata
        params = meta.get("params") or {}
        image = meta["input_kind"] == "image"
        size = tuple(meta["image_size"]) if image else None
        channels = meta["n_channels"] if image else None
        source = read_input(
            X,
            image_size=size,
            channels=channels,
            data_format=params.get("data_format", "auto"),
            on_error=self.on_error or params.get("on_error", "raise"),
            allow_tabular=not image,
            min_readable=0,
        )
        check_matches(
            source,
            kind=meta["input_kind"],
            channels=channels,
            size=size,
            source_shape=meta.get("fit_input_shape"),
            n_features=meta.get("n_features"),
            owner="OnnxClusterer",
        )
        return source

    def _run(self, X, names):
        """Graph outputs ``names`` for every input, one row each, in input order.

        Inputs skipped as unreadable (``on_error="skip"``) get NaN rows (-1
        for ``"labels"``).
        """
        source = self._read(X)
        parts = [[] for _ in names]
        batches = iter_batches(source, self.batch_size)
        if source.n_samples == 0:
            # Every input was unreadable: one blank image gives the output shapes.
            blank = np.zeros((1, source.channels, *source.size), dtype=source.dtype)
            batches = [(0, blank)]
        for _, raw in batches:
            values = self._run_batch(self._graph_input(raw), names)
            for part, value in zip(parts, values, strict=True):
                part.append(value)
        outputs = []
        for name, part in zip(names, parts, strict=True):
            values = np.concatenate(part)[: source.n_samples]
            outputs.append(
                source.to_input_rows(values, -1 if name == "labels" else np.nan)
            )
        return outputs

    def _graph_input(self, raw):
        """An NCHW (or tabular) batch from read_input in the graph's layout.

        Image batches are first checked against the scale of the training
        images (:func:`~deepclust._inputs.check_value_range`), so that images
        on another scale fail instead of giving wrong clusters.
        """
        if self.metadata["input_kind"] == "image":
            self._check_value_range(raw)
        if self.metadata["input_format"] == "uint8_nhwc":
            return np.ascontiguousarray(_as_uint8(raw).transpose(0, 2, 3, 1))
        return np.ascontiguousarray(raw, dtype=np.float32)

    def _check_value_range(self, raw):
        meta = self.metadata
        fitted_dtype = meta.get("fit_input_dtype")
        value_range = meta.get("value_range")
        if value_range is None and fitted_dtype == "uint8":
            value_range = (0, 255)
        if value_range is None:
            return  # an export that does not say: nothing to check against
        check_value_range(
            raw,
            fitted_dtype="uint8" if fitted_dtype == "uint8" else "float32",
            value_range=value_range,
        )

    def _run_batch(self, batch, names):
        if self._static_batch is None:
            return self.session.run(names, {self.input_name: batch})
        # A graph exported with a fixed batch size: run it chunk by chunk and
        # pad the last chunk with copies of its last row.
        step = self._static_batch
        chunks = []
        for start in range(0, len(batch), step):
            chunk = batch[start : start + step]
            n_rows = len(chunk)
            if n_rows < step:
                padding = np.repeat(chunk[-1:], step - n_rows, axis=0)
                chunk = np.concatenate([chunk, padding])
            values = self.session.run(names, {self.input_name: chunk})
            chunks.append([value[:n_rows] for value in values])
        return [np.concatenate(values) for values in zip(*chunks, strict=True)]


_INPUT_TYPES = {
    "uint8_nhwc": ("tensor(uint8)", 4),
    "float_nchw": ("tensor(float)", 4),
    "float_tabular": ("tensor(float)", 2),
}


def _check_metadata(metadata, session, path) -> None:
    """Raise a ValueError naming ``path`` unless its deepclust metadata is whole
    and describes its graph (a file edited or stripped after export)."""

    def broken(what):
        return ValueError(
            f"path {path!r} is an ONNX model whose deepclust metadata {what}; it "
            "was edited after export. Export the model again with "
            "deepclust.onnx.export_onnx."
        )

    def positive_ints(value, length):
        return (
            isinstance(value, list)
            and len(value) == length
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                    for v in value)
        )  # fmt: skip

    kind = metadata.get("input_kind")
    input_format = metadata.get("input_format")
    if metadata.get("estimator") not in _KNOWN_OUTPUTS:
        raise broken(f"names no known estimator ({metadata.get('estimator')!r})")
    if kind not in ("image", "tabular") or input_format not in _INPUT_TYPES:
        raise broken(
            f"lacks a valid input kind and format ({kind!r}, {input_format!r})"
        )
    if kind == "image" and not (
        positive_ints(metadata.get("image_size"), 2)
        and metadata.get("n_channels") in (1, 3)
    ):
        raise broken("lacks a valid image_size and n_channels")
    if kind == "tabular" and not positive_ints([metadata.get("n_features")], 1):
        raise broken("lacks a valid n_features")
    n_clusters = metadata.get("n_clusters")
    if n_clusters is not None and not positive_ints([n_clusters], 1):
        raise broken(f"has an invalid n_clusters ({n_clusters!r})")
    if not isinstance(metadata.get("params", {}), dict):
        raise broken("has params that are not a JSON object")
    graph_input = session.get_inputs()[0]
    dtype, rank = _INPUT_TYPES[input_format]
    if graph_input.type != dtype or len(graph_input.shape) != rank:
        raise broken(
            f"says {input_format!r} input, but the graph takes a "
            f"{graph_input.type} of rank {len(graph_input.shape)}"
        )


def _import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise ImportError(
            "OnnxClusterer needs onnxruntime: pip install onnxruntime (or "
            "onnxruntime-gpu for CUDA)."
        ) from exc
    return onnxruntime


def _resolve_providers(providers, onnxruntime):
    """The provider list for InferenceSession, CPU last as fallback."""
    if providers is None or (isinstance(providers, str) and providers.lower() == "cpu"):
        return [_CPU]
    if isinstance(providers, str):
        gpu = providers.lower() in ("cuda", "gpu")
        requested = [_CUDA, _CPU] if gpu else [providers]
    elif isinstance(providers, (list, tuple)):
        requested = list(providers)
    else:
        raise ValueError(
            "providers must be None, 'cpu', 'cuda' or a list of onnxruntime "
            f"provider names; got {providers!r}."
        )
    known = set(onnxruntime.get_all_providers())
    available = onnxruntime.get_available_providers()
    kept, missing = [], []
    for entry in requested:
        name = entry[0] if isinstance(entry, tuple) else entry
        if not isinstance(name, str) or name not in known:
            raise ValueError(
                f"providers contains {entry!r}, which is not an onnxruntime execution "
                "provider; expected 'cpu', 'cuda' or names such as "
                f"{[_CUDA, _CPU]}."
            )
        (kept if name in available else missing).append(entry)
    if missing:
        warnings.warn(
            f"onnxruntime execution provider(s) {missing} are not available in this "
            f"installation (available: {available}); running on "
            f"{[e[0] if isinstance(e, tuple) else e for e in kept] or [_CPU]}. CUDA "
            "needs the onnxruntime-gpu package.",
            UserWarning,
            stacklevel=4,
        )
    if _CPU not in [entry[0] if isinstance(entry, tuple) else entry for entry in kept]:
        kept.append(_CPU)
    return kept


def _from_json(value):
    try:
        return json.loads(value)
    except ValueError:
        return value


def _as_uint8(batch):
    """uint8 view of a batch for uint8 graphs; float values must be whole 0-255.

    Floats in [0, 1] (not all zero) are refused: they are images scaled to
    [0, 1], which would become black images of 0s and 1s.
    """
    if batch.dtype == np.uint8:
        return batch
    if batch.size and batch.min() >= 0 and 0 < batch.max() <= 1:
        raise InputError(
            f"X holds float images with values in [{float(batch.min()):.3g}, "
            f"{float(batch.max()):.3g}], which look like images scaled to [0, 1], "
            "but this ONNX model takes uint8 images with values in [0, 255]; pass "
            "(X * 255).astype(np.uint8)."
        )
    whole = np.array_equal(batch, np.round(batch))
    if not whole or batch.min() < 0 or batch.max() > 255:
        raise InputError(
            "X holds float images with values that are not whole numbers in "
            "[0, 255], but this ONNX model takes uint8 images; pass uint8 images "
            "or export the estimator with input_format='float_nchw'."
        )
    return batch.astype(np.uint8)
