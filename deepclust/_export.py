"""Torch side of the ONNX export: graph wrapper, exporter calls and metadata.

Users call :func:`deepclust.onnx.export_onnx` (or ``estimator.export_onnx``),
which imports this module lazily so that :mod:`deepclust.onnx` stays torch-free.

The exported graph starts from raw input as users hold it (uint8 NHWC images,
raw float NCHW images or float32 rows): the cast, the layout change and the
model's own input scaling (:class:`deepclust.models.InputScaler` buffers) are
part of the graph, so onnxruntime needs no preprocessing code besides resizing.
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from sklearn.utils.validation import check_is_fitted
from torch import nn

from deepclust._files import atomic_path
from deepclust._version import __version__
from deepclust.models import CDCModel, CDModel

__all__ = ["export_onnx"]

INPUT_FORMATS = ("auto", "uint8_nhwc", "float_nchw")
# Output names in graph order; the first entries are exported by default.
CDC_OUTPUTS = ("labels", "probabilities", "embedding", "instance")
CD_OUTPUTS = ("heads", "embedding")
_CDC_DEFAULT_OUTPUTS = ("labels", "probabilities")
_CD_DEFAULT_OUTPUTS = ("heads",)
# transform_output parameter value -> graph output that holds it.
_TRANSFORM_OUTPUTS = {
    "proba": "probabilities",
    "heads": "heads",
    "embedding": "embedding",
    "instance": "instance",
}
INPUT_NAME = "input"
# The post-export check compares onnxruntime with torch on the example batch.
_CHECK_RTOL = 1e-3
_CHECK_ATOL = 1e-4
# Loggers that print progress or diagnostics while exporting.
_NOISY_LOGGERS = (
    "torch.onnx",
    "torch.export",
    "torch._dynamo",
    "torch.fx",
    "onnxscript",
)


class ExportGraph(nn.Module):
    """Raw input -> the selected outputs of a CD or CDC model.

    Parameters
    ----------
    model : CDModel or CDCModel
        The trained network (its scaler holds the input scaling).
    outputs : sequence of str
        Output names, in the order the graph returns them.
    channels_last_input : bool
        Whether image input arrives as NHWC (permuted to NCHW in the graph).
    encoder : FrozenEncoder or None, default=None
        The frozen encoder whose embeddings ``model`` takes: raw images go
        through it first, so one graph runs encoder and heads.

    Examples
    --------
    >>> import torch
    >>> from deepclust.models import CDModel, InputScaler
    >>> model = CDModel(torch.nn.Flatten(), 12, InputScaler(3, image=True),
    ...                 projection_dim=4, n_heads=5).eval()
    >>> graph = ExportGraph(model, ["heads", "embedding"], channels_last_input=True)
    >>> [tuple(t.shape) for t in graph(torch.zeros(2, 2, 2, 3, dtype=torch.uint8))]
    [(2, 5), (2, 12)]
    """

    def __init__(
        self, model: nn.Module, outputs, *, channels_last_input: bool, encoder=None
    ) -> None:
        super().__init__()
        self.model = model
        self.outputs = tuple(outputs)
        self.channels_last_input = channels_last_input
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.channels_last_input:
            x = x.permute(0, 3, 1, 2)
        if self.encoder is not None:
            x = self.encoder(x)
        # One call for every output: the backbone runs once in the graph.
        return self.model(self.model.scaler.to_unit(x), self.outputs)


def export_onnx(
    estimator,
    path,
    *,
    outputs=None,
    input_format="auto",
    opset=18,
    dynamic_batch=True,
):
    """Export a fitted estimator to one self-contained ONNX file.

    See :func:`deepclust.onnx.export_onnx` for the documentation.
    """
    model = _fitted_model(estimator)
    is_cdc = isinstance(model, CDCModel)
    outputs = _check_outputs(outputs, estimator, is_cdc)
    input_format = _check_input_format(input_format, estimator)
    opset = _check_opset(opset)
    if not isinstance(dynamic_batch, (bool, np.bool_)):
        raise ValueError(f"dynamic_batch must be a bool; got {dynamic_batch!r}.")
    path = _check_path(path)

    example = _example_input(estimator, input_format, 2 if dynamic_batch else 1)
    encoder = getattr(estimator, "encoder_", None)
    modules = [model] if encoder is None else [model, encoder]
    # Per-module flags: a model may mix modes (e.g. a frozen backbone in eval).
    training_flags = [
        (module, module.training) for part in modules for module in part.modules()
    ]
    # Exporting a copy keeps the estimator's model where it is (e.g. on a GPU)
    # and lets the graph's weights be plain CPU tensors.
    on_cpu = _device_of(model).type == "cpu"
    export_model = model if on_cpu else copy.deepcopy(model).cpu()
    if encoder is not None and _device_of(encoder).type != "cpu":
        encoder = copy.deepcopy(encoder).cpu()
    graph = ExportGraph(
        export_model,
        outputs,
        channels_last_input=input_format == "uint8_nhwc",
        encoder=encoder,
    )
    try:
        graph.eval()
        with torch.no_grad():
            expected = [t.numpy() for t in graph(example)]
            proto, exporter = _export_graph(
                graph, example, outputs, opset, bool(dynamic_batch)
            )
    finally:
        for module, flag in training_flags:
            module.training = flag

    _add_metadata(proto, estimator, model, outputs, input_format, opset, exporter)
    onnx.checker.check_model(proto, full_check=True)
    _check_against_torch(proto, example.numpy(), outputs, expected)
    # Through a temporary sibling: a full disk or a kill never truncates an
    # existing export.
    with atomic_path(path) as temporary:
        onnx.save_model(proto, temporary, save_as_external_data=False)
    return path


# ----------------------------------------------------------------- validation
def _fitted_model(estimator) -> nn.Module:
    # Duck-typed: the estimators call this module (estimator.export_onnx), so it
    # cannot import them without an import cycle.
    if not (hasattr(estimator, "get_params") and hasattr(estimator, "export_onnx")):
        raise TypeError(
            "estimator must be a fitted CDCClusterer or ContrastiveDisentangler; got "
            f"{type(estimator).__name__}."
        )
    check_is_fitted(estimator, "net_")
    model = estimator.net_.unwrapped_module()
    if not isinstance(model, (CDModel, CDCModel)):
        raise TypeError(
            "estimator must hold a CDModel or CDCModel network; "
            f"{type(estimator).__name__} holds {type(model).__name__}."
        )
    return model


def _check_outputs(outputs, estimator, is_cdc: bool) -> tuple[str, ...]:
    available = CDC_OUTPUTS if is_cdc else CD_OUTPUTS
    if outputs is None:
        chosen = list(_CDC_DEFAULT_OUTPUTS if is_cdc else _CD_DEFAULT_OUTPUTS)
        # The estimator's transform output is always exported, so that
        # OnnxClusterer.transform returns what estimator.transform returns.
        chosen.append(_TRANSFORM_OUTPUTS[estimator._checked_transform_output()])
    elif isinstance(outputs, str):
        chosen = [outputs]
    else:
        try:
            chosen = list(outputs)
        except TypeError:
            raise ValueError(
                "outputs must be None, an output name or a list of names; "
                f"got {outputs!r}."
            ) from None
    unknown = [name for name in chosen if name not in available]
    if unknown or not chosen:
        raise ValueError(
            f"outputs={outputs!r} is not valid for {type(estimator).__name__}: "
            f"unknown name(s) {unknown}; available outputs are {list(available)}."
        )
    return tuple(name for name in available if name in chosen)


def _check_input_format(input_format, estimator) -> str:
    if input_format not in INPUT_FORMATS:
        raise ValueError(
            f"input_format must be one of {list(INPUT_FORMATS)}; got {input_format!r}."
        )
    if estimator.input_kind_ == "tabular":
        if input_format != "auto":
            raise ValueError(
                f"input_format={input_format!r} applies to image models only; "
                f"{type(estimator).__name__} was fitted on tabular data and its graph "
                "takes float32 rows (n_samples, n_features). Leave input_format='auto'."
            )
        return "float_tabular"
    if input_format == "auto":
        return "uint8_nhwc" if estimator.input_dtype_ == "uint8" else "float_nchw"
    return input_format


def _check_opset(opset) -> int:
    if isinstance(opset, (bool, np.bool_)) or not isinstance(opset, (int, np.integer)):
        raise ValueError(f"opset must be an int (e.g. 18); got {opset!r}.")
    low = 7
    high = _max_opset()
    if not low <= opset <= high:
        raise ValueError(
            f"opset must be between {low} and {high} (this torch version's maximum); "
            f"got {opset}."
        )
    return int(opset)


def _max_opset() -> int:
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET
    except ImportError:  # the private constant moved: let the exporter decide
        return 10**6
    return int(ONNX_MAX_OPSET)


def _check_path(path) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or path-like; got {type(path).__name__}.")
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"path {str(path)!r} is a directory; give the .onnx file to write."
        )
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"path {str(path)!r}: the directory {str(path.parent)!r} does not exist."
        )
    return path


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return torch.device("cpu") if tensor is None else tensor.device


def _example_input(estimator, input_format: str, batch: int) -> torch.Tensor:
    """A seeded random batch in the graph's input layout and dtype."""
    rng = np.random.default_rng(0)
    if input_format == "float_tabular":
        return torch.from_numpy(
            rng.standard_normal((batch, estimator.n_features_in_)).astype(np.float32)
        )
    height, width = estimator.image_size_
    channels = estimator.n_channels_
    if input_format == "uint8_nhwc":
        return torch.from_numpy(
            rng.integers(0, 256, (batch, height, width, channels), dtype=np.uint8)
        )
    # Raw float images: values spread over the range mapped to [0, 1].
    low, high = _raw_value_range(estimator)
    unit = rng.random((batch, channels, height, width), dtype=np.float32)
    return torch.from_numpy((low + unit * (high - low)).astype(np.float32))


# ------------------------------------------------------------------ exporting
@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporters' progress prints, warnings and log records."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _export_graph(
    graph: nn.Module, example: torch.Tensor, outputs, opset: int, dynamic_batch: bool
):
    """Export with torch.export (dynamo), falling back to the TorchScript exporter."""
    export_parameters = inspect.signature(torch.onnx.export).parameters
    dynamo_error = None
    if "dynamo" in export_parameters:
        dynamic_shapes = None
        if dynamic_batch:
            dynamic_shapes = {"x": {0: torch.export.Dim("batch", min=1)}}
        try:
            with _quiet_exporter():
                program = torch.onnx.export(
                    graph,
                    (example,),
                    dynamo=True,
                    external_data=False,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=list(outputs),
                    dynamic_shapes=dynamic_shapes,
                    verbose=False,
                )
            return program.model_proto, "dynamo"
        except (torch.onnx.errors.OnnxExporterError, ImportError) as error:
            # ImportError: onnxscript, which only the dynamo exporter needs, is
            # missing or too old.
            dynamo_error = error
    buffer = io.BytesIO()
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: "batch"} for name in (INPUT_NAME, *outputs)}
    legacy = {"dynamo": False} if "dynamo" in export_parameters else {}
    with _quiet_exporter():
        torch.onnx.export(
            graph,
            (example,),
            buffer,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(outputs),
            dynamic_axes=dynamic_axes,
            verbose=False,
            do_constant_folding=True,
            **legacy,
        )
    if dynamo_error is not None:
        reason = (str(dynamo_error).splitlines() or [""])[0][:300]
        warnings.warn(
            "The torch.export-based ONNX exporter failed "
            f"({type(dynamo_error).__name__}: {reason}); "
            "the model was exported with the TorchScript-based exporter instead.",
            UserWarning,
            stacklevel=3,
        )
    return onnx.load_model_from_string(buffer.getvalue()), "torchscript"


def _json(value) -> str:
    # repr for what JSON cannot hold (callables, callbacks, RandomState, ...).
    return json.dumps(value, default=repr, sort_keys=True)


def _add_metadata(
    proto, estimator, model, outputs, input_format: str, opset: int, exporter: str
) -> None:
    tabular = input_format == "float_tabular"
    scaler = model.scaler
    normalization = {
        name: [float(v) for v in getattr(scaler, name).detach().cpu().tolist()]
        for name in ("offset", "scale", "mean", "std")
    }
    if tabular:
        input_shape = [estimator.n_features_in_]
    elif input_format == "uint8_nhwc":
        input_shape = [*estimator.image_size_, estimator.n_channels_]
    else:
        input_shape = [estimator.n_channels_, *estimator.image_size_]
    params = estimator.get_params(deep=False)
    metadata = {
        "deepclust_version": __version__,
        "estimator": type(estimator).__name__,
        "params": params,
        "input_kind": estimator.input_kind_,
        "input_format": input_format,
        "input_layout": (
            "NF" if tabular else "NHWC" if input_format == "uint8_nhwc" else "NCHW"
        ),
        "input_dtype": "uint8" if input_format == "uint8_nhwc" else "float32",
        "input_shape": input_shape,
        "fit_input_dtype": estimator.input_dtype_,
        "fit_input_shape": None if tabular else _list_or_none(estimator.input_shape_),
        "n_features": estimator.n_features_in_ if tabular else None,
        "n_channels": None if tabular else estimator.n_channels_,
        "image_size": None if tabular else list(estimator.image_size_),
        # The raw values the model maps to [0, 1]: inputs far outside are on
        # another scale (deepclust._inputs.check_value_range refuses them).
        "value_range": None if tabular else list(_raw_value_range(estimator)),
        "encoder": (
            None
            if getattr(estimator, "encoder_", None) is None
            else estimator.encoder_.description
        ),
        "normalization": normalization,
        "n_clusters": model.n_clusters if isinstance(model, CDCModel) else None,
        "outputs": list(outputs),
        "transform_output": _TRANSFORM_OUTPUTS[estimator._checked_transform_output()],
        "opset": opset,
        "exporter": exporter,
    }
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key = key
        entry.value = _json(value)
    proto.doc_string = (
        f"deepclust {__version__} {type(estimator).__name__}; input {INPUT_NAME!r} "
        f"({metadata['input_dtype']} {metadata['input_layout']}), "
        f"outputs {list(outputs)}."
    )


def _raw_value_range(estimator) -> tuple[float, float]:
    """The raw image values the model (or its encoder) maps to [0, 1]."""
    encoder = getattr(estimator, "encoder_", None)
    if encoder is not None:
        return encoder.unit_range()
    return estimator.net_.unwrapped_module().scaler.unit_range()


def _list_or_none(shape):
    return None if shape is None else [int(v) for v in shape]


def _check_against_torch(proto, example: np.ndarray, outputs, expected) -> None:
    """Raise if onnxruntime does not reproduce the torch outputs on the example."""
    try:
        import onnxruntime
    except ImportError:  # the check is a safeguard, not a requirement of export
        return
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    got = session.run(list(outputs), {INPUT_NAME: example})
    for name, value, reference in zip(outputs, got, expected, strict=True):
        if name == "labels":
            continue  # near-ties may flip; the probabilities are compared instead
        if not np.allclose(value, reference, rtol=_CHECK_RTOL, atol=_CHECK_ATOL):
            raise RuntimeError(
                f"The exported ONNX output {name!r} differs from torch (max abs "
                f"difference {float(np.abs(value - reference).max()):.3g}): an "
                "exporter bug for this model. Try another opset or torch version."
            )
