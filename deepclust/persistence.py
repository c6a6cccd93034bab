"""Pickle-free saving and loading of fitted deepclust estimators.

A saved model is a directory holding

- ``model.safetensors``: the network's weights and buffers (``module.*``) and the
  fitted arrays such as ``labels_`` (``attributes.*``);
- ``history.json``: the skorch training history;
- ``config.json``: the library version, the estimator class, its parameters, the
  fitted scalar attributes, the resolved training choices needed to rebuild the
  network (backbone name, epochs) and the SHA-256 of the two other files.

Loading reads JSON and safetensors only, so it executes no code from the files,
unlike ``pickle``/``joblib``/``torch.load``. The network is rebuilt from the
configuration and the weights are checked against it: a modified, truncated or
mismatched file raises a :class:`ValueError` that says what is wrong.
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from deepclust._version import __version__

__all__ = ["FORMAT_VERSION", "load", "save"]

FORMAT_NAME = "deepclust.model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
HISTORY_FILE = "history.json"

_MODULE_PREFIX = "module."
_ATTRIBUTE_PREFIX = "attributes."
# Fitted attributes that are rebuilt rather than stored as values.
_REBUILT_ATTRIBUTES = ("net_", "history_")
_MAX_LISTED = 5


# ---------------------------------------------------------------------------
# JSON encoding of nested states with tensors kept aside
# ---------------------------------------------------------------------------


def encode_tree(
    value, tensors: dict[str, torch.Tensor], key: str, *, where: str = "value"
):
    """A JSON-able copy of ``value`` whose tensors and arrays are moved to ``tensors``.

    Tensors and numeric arrays are replaced by ``{"__tensor__": name}`` or
    ``{"__ndarray__": name}`` with ``name`` a dotted path starting at ``key``;
    tuples and dicts with int keys are tagged so that :func:`decode_tree` gives
    them back unchanged.

    Raises
    ------
    TypeError
        For values that cannot be stored (functions, arbitrary objects); the
        message names ``where``.
    """
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().to("cpu").contiguous()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biuf":
            tensors[key] = torch.from_numpy(np.ascontiguousarray(value))
            return {"__ndarray__": key}
        if value.dtype.kind in "UO" and all(isinstance(v, str) for v in value.ravel()):
            return {"__strings__": value.tolist()}
        raise TypeError(
            f"{where} is an array of dtype {value.dtype}, which cannot be stored."
        )
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {
            "__tuple__": [
                encode_tree(v, tensors, f"{key}.{i}", where=where)
                for i, v in enumerate(value)
            ]
        }
    if isinstance(value, list):
        return [
            encode_tree(v, tensors, f"{key}.{i}", where=where)
            for i, v in enumerate(value)
        ]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {
                k: encode_tree(v, tensors, f"{key}.{k}", where=where)
                for k, v in value.items()
            }
        if all(isinstance(k, int) and not isinstance(k, bool) for k in value):
            return {
                "__intkeys__": {
                    str(k): encode_tree(v, tensors, f"{key}.{k}", where=where)
                    for k, v in value.items()
                }
            }
    raise TypeError(
        f"{where} holds a value of type {type(value).__name__} ({value!r:.80}), "
        "which cannot be stored as JSON."
    )


def decode_tree(value, tensors: dict[str, torch.Tensor]):
    """Inverse of :func:`encode_tree`; raises ``KeyError`` for a missing tensor."""
    if isinstance(value, list):
        return [decode_tree(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return tensors[value["__ndarray__"]].numpy()
    if "__strings__" in value:
        return np.asarray(value["__strings__"], dtype=object)
    if "__tuple__" in value:
        return tuple(decode_tree(v, tensors) for v in value["__tuple__"])
    if "__intkeys__" in value:
        return {
            int(k): decode_tree(v, tensors) for k, v in value["__intkeys__"].items()
        }
    return {k: decode_tree(v, tensors) for k, v in value.items()}


def sha256_file(path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path, content) -> None:
    """Write JSON through a temporary file so that a crash never leaves half a file."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(content, indent=1), encoding="utf-8")
    os.replace(temporary, path)


def write_tensors(path, tensors: dict[str, torch.Tensor]) -> None:
    """Write a safetensors file through a temporary file (atomic replace)."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    save_file(tensors, str(temporary))
    os.replace(temporary, path)


def read_json(path, what: str):
    """Parse a JSON file, with a clear error for missing or damaged files."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{what}: {str(path)!r} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what}: {str(path)!r} cannot be read ({exc}).") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{what}: {str(path)!r} is not valid JSON ({exc}); the file is truncated "
            "or was edited by hand."
        ) from exc


def read_tensors(path, expected_sha256: str, what: str) -> dict[str, torch.Tensor]:
    """Load a safetensors file on the CPU after checking its SHA-256."""
    if not Path(path).is_file():
        raise ValueError(f"{what}: weights file {str(path)!r} does not exist.")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ValueError(
            f"{what}: {str(path)!r} does not match the SHA-256 recorded when it was "
            f"saved (expected {expected_sha256}, got {actual}); the file was modified, "
            "truncated or replaced after saving."
        )
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(
            f"{what}: {str(path)!r} is not a valid safetensors file ({exc})."
        ) from exc


def check_format(content, *, name: str, path, what: str) -> None:
    """Raise unless ``content`` is a JSON object of format ``name``, readable here."""
    if not isinstance(content, dict) or content.get("format") != name:
        raise ValueError(
            f"{what}: {str(path)!r} is not a {name} file (no 'format': {name!r})."
        )
    version = content.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ValueError(
            f"{what}: {str(path)!r} has no valid 'format_version' (got {version!r})."
        )
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{what}: {str(path)!r} has format version {version}, written by a newer "
            f"deepclust ({content.get('deepclust_version')!r}); this version "
            f"({__version__}) reads format version {FORMAT_VERSION}. Upgrade deepclust."
        )
    if version < 1:
        raise ValueError(
            f"{what}: {str(path)!r} has an invalid format version {version}."
        )


def check_state_dict(
    expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], what: str
) -> None:
    """Raise if tensor names or shapes of ``found`` differ from the model's."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong_shape = [
        f"{name} {tuple(found[name].shape)} instead of {tuple(expected[name].shape)}"
        for name in expected
        if name in found and found[name].shape != expected[name].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {_listing(unexpected)}")
    if wrong_shape:
        problems.append(f"tensors of the wrong shape: {_listing(wrong_shape)}")
    if problems:
        raise ValueError(
            f"{what}: the stored weights do not match the network built from the "
            f"stored parameters ({'; '.join(problems)}); the configuration or the "
            "weights were edited, or they come from different models."
        )


def _listing(items) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        shown += f" and {len(items) - _MAX_LISTED} more"
    return shown


# ---------------------------------------------------------------------------
# Estimator parameters and fitted attributes
# ---------------------------------------------------------------------------


def params_to_json(estimator) -> dict:
    """The estimator's parameters as JSON; a ValueError names any that is not."""
    encoded = {}
    for name, value in estimator.get_params(deep=False).items():
        if name == "callbacks" and value is not None:
            raise ValueError(
                "callbacks cannot be saved without pickle (they are code); they only "
                "matter for training: call est.set_params(callbacks=None) before save(), "
                "or use pickle/joblib."
            )
        if name == "backbone" and callable(value):
            raise ValueError(
                f"backbone={value!r} is a callable, which cannot be saved without pickle "
                "(it is code); save() needs a named backbone ('resnet18', 'resnet34', "
                "'resnet50', 'small_cnn' or 'mlp'). Use pickle/joblib instead."
            )
        if isinstance(value, torch.device):
            value = str(value)
        elif isinstance(value, os.PathLike):
            value = os.fspath(value)
        try:
            encoded[name] = encode_tree(value, {}, name, where=f"parameter {name}")
        except TypeError as exc:
            raise ValueError(
                f"{exc} save() stores parameters as JSON: set {name} to a plain value "
                "(e.g. random_state to an int) or use pickle/joblib."
            ) from None
    return encoded


def _fitted_attributes(estimator) -> dict:
    return {
        name: value
        for name, value in vars(estimator).items()
        if name.endswith("_")
        and not name.startswith("_")
        and name not in _REBUILT_ATTRIBUTES
    }


# ---------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------


def save(estimator, path) -> None:
    """Save a fitted estimator to a directory, without pickle.

    Parameters
    ----------
    estimator : ContrastiveDisentangler or CDCClusterer
        A fitted estimator with a named backbone and no callbacks.
    path : str or path-like
        Directory to write (created if needed); ``config.json``,
        ``model.safetensors`` and ``history.json`` in it are overwritten.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        If the estimator is not fitted.
    ValueError
        If a parameter cannot be stored as JSON (a callable backbone, callbacks,
        a ``RandomState`` instance), or ``path`` is an existing file.
    """
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(estimator, "net_")
    params = params_to_json(estimator)
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise ValueError(
            f"path {str(path)!r} is an existing file; save() writes a directory."
        )
    directory.mkdir(parents=True, exist_ok=True)

    tensors: dict[str, torch.Tensor] = {}
    state = estimator.net_.unwrapped_module().state_dict()
    for name, tensor in state.items():
        tensors[_MODULE_PREFIX + name] = tensor.detach().to("cpu").contiguous()
    attributes = {
        name: encode_tree(
            value, tensors, _ATTRIBUTE_PREFIX + name, where=f"attribute {name}"
        )
        for name, value in _fitted_attributes(estimator).items()
    }
    resolved = encode_tree(
        dict(getattr(estimator, "_resolved_config", {})),
        {},
        "resolved",
        where="the resolved training configuration",
    )
    history = encode_tree(
        estimator.history_.to_list(), tensors, "history", where="the history"
    )
    write_tensors(directory / WEIGHTS_FILE, tensors)
    write_json(directory / HISTORY_FILE, history)
    write_json(
        directory / CONFIG_FILE,
        {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "deepclust_version": __version__,
            "class": type(estimator).__name__,
            "params": params,
            "resolved": resolved,
            "attributes": attributes,
            "weights_file": WEIGHTS_FILE,
            "weights_sha256": sha256_file(directory / WEIGHTS_FILE),
            "history_file": HISTORY_FILE,
            "history_sha256": sha256_file(directory / HISTORY_FILE),
        },
    )


def load(path, *, device=None):
    """Load an estimator written by ``save``, executing no code from the files.

    The network is rebuilt from the stored parameters, its weights are read with
    safetensors, and the SHA-256 of the files and the names and shapes of the
    tensors are checked.

    Parameters
    ----------
    path : str or path-like
        Directory written by ``est.save(path)``.
    device : str, default=None
        Device to load the model on ("cpu", "cuda", "cuda:N" or "auto"). None
        keeps the saved ``device`` parameter when that device exists here and
        falls back to the CPU with a warning otherwise (a model trained on a GPU
        loads on a CPU-only machine). The estimator's ``device`` parameter is set
        to the device used.

    Returns
    -------
    estimator : ContrastiveDisentangler or CDCClusterer
        The fitted estimator, ready for ``predict``/``transform``/``score`` and
        export. It gives the same outputs as the saved one.

    Raises
    ------
    ValueError
        If the directory is not a deepclust model, was written by a newer format
        version, or its files were modified, truncated or do not match each other.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from sklearn.datasets import make_blobs
    >>> from deepclust import CDCClusterer
    >>> from deepclust.persistence import load
    >>> X, _ = make_blobs(n_samples=40, n_features=3, centers=2, random_state=0)
    >>> cdc = CDCClusterer(n_clusters=2, max_epochs=1, batch_size=20,
    ...                    random_state=0).fit(X)
    >>> with tempfile.TemporaryDirectory() as directory:
    ...     cdc.save(directory)
    ...     loaded = load(directory)
    >>> bool(np.array_equal(loaded.predict_proba(X), cdc.predict_proba(X)))
    True
    """
    from deepclust import estimators
    from deepclust.estimators._base import BaseDeepEstimator, resolve_device

    directory = Path(path)
    what = f"cannot load a deepclust model from {str(path)!r}"
    if not directory.is_dir():
        raise ValueError(f"{what}: it is not a directory (save() writes a directory).")
    config = read_json(directory / CONFIG_FILE, what)
    check_format(config, name=FORMAT_NAME, path=directory / CONFIG_FILE, what=what)
    try:
        class_name = config["class"]
        params = decode_tree(config["params"], {})
        resolved = decode_tree(config["resolved"], {})
        weights_file, weights_sha256 = config["weights_file"], config["weights_sha256"]
        history_file, history_sha256 = config["history_file"], config["history_sha256"]
        stored_attributes = config["attributes"]
    except (KeyError, TypeError) as exc:
        raise ValueError(
            f"{what}: config.json lacks the entry {exc}; it was edited or truncated."
        ) from None
    for name in (weights_file, history_file):
        if not isinstance(name, str) or Path(name).name != name:
            raise ValueError(
                f"{what}: config.json names the file {name!r}, which is not a plain file name."
            )
    estimator_class = (
        getattr(estimators, class_name, None) if isinstance(class_name, str) else None
    )
    if not (
        isinstance(estimator_class, type)
        and issubclass(estimator_class, BaseDeepEstimator)
    ):
        raise ValueError(
            f"{what}: unknown estimator class {class_name!r}; expected one of "
            f"{sorted(estimators.__all__)}."
        )

    tensors = read_tensors(directory / weights_file, weights_sha256, what)
    if (
        not (directory / history_file).is_file()
        or sha256_file(directory / history_file) != history_sha256
    ):
        raise ValueError(
            f"{what}: {history_file} is missing or does not match the SHA-256 recorded "
            "when it was saved; it was modified, truncated or replaced."
        )
    try:
        history = decode_tree(read_json(directory / history_file, what), tensors)
    except KeyError as exc:
        raise ValueError(
            f"{what}: the weights file lacks the tensor {exc} named in {history_file}."
        ) from None

    try:
        estimator = estimator_class(**params)
    except TypeError as exc:
        raise ValueError(
            f"{what}: config.json has parameters unknown to {class_name} in this "
            f"version of deepclust ({exc})."
        ) from None
    try:
        estimator._validate_params()
    except ValueError as exc:
        raise ValueError(
            f"{what}: config.json holds an invalid parameter value ({exc})."
        ) from None
    estimator.device = _loading_device(
        params.get("device", "auto"), device, resolve_device
    )
    target = resolve_device(estimator.device)

    try:
        attributes = {
            name: decode_tree(value, tensors)
            for name, value in stored_attributes.items()
        }
    except KeyError as exc:
        raise ValueError(
            f"{what}: the weights file lacks the tensor {exc} named in config.json."
        ) from None
    for name, value in attributes.items():
        setattr(estimator, name, value)
    _rebuild_net(estimator, resolved, target, tensors, history, what)
    return estimator


def _loading_device(saved, requested, resolve_device) -> str:
    if requested is not None:
        resolve_device(requested)
        return str(requested)
    try:
        resolve_device(saved)
    except ValueError:
        warnings.warn(
            f"The model was saved with device={saved!r}, which is not available here; "
            "loading it on the CPU (device='cpu').",
            UserWarning,
            stacklevel=3,
        )
        return "cpu"
    return saved


def _rebuild_net(estimator, resolved, device, tensors, history, what) -> None:
    """Build the network from stored choices and load the stored weights into it."""
    from skorch.history import History

    from deepclust._inputs import ImageInput, TabularInput
    from deepclust.estimators._base import _InputDataset

    try:
        if estimator.input_kind_ == "tabular":
            source = TabularInput(
                data=np.zeros((0, estimator.n_features_in_), dtype=np.float32)
            )
        else:
            source = ImageInput(
                n_samples=0,
                channels=estimator.n_channels_,
                size=tuple(estimator.image_size_),
                dtype=np.dtype(estimator.input_dtype_),
                source_shape=estimator.input_shape_,
            )
        config = estimator._resolve_config(source, device)
        config.update(backbone=resolved["backbone"], max_epochs=resolved["max_epochs"])
    except (AttributeError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{what}: config.json lacks fitted attributes or training choices needed "
            f"to rebuild the network ({type(exc).__name__}: {exc})."
        ) from None
    # The weights come from the file: never read the backbone_weights file again.
    config["backbone_weights"] = None
    with torch.random.fork_rng(devices=[]):
        model = estimator._build_model(source, config)
    weights = {
        name[len(_MODULE_PREFIX) :]: tensor
        for name, tensor in tensors.items()
        if name.startswith(_MODULE_PREFIX)
    }
    check_state_dict(model.state_dict(), weights, what)
    model.load_state_dict(weights)
    estimator.net_ = estimator._build_net(
        model, config, device, 0, _InputDataset(source, device)
    )
    estimator.net_.initialize()
    estimator.net_.history = History(history)
    estimator.history_ = estimator.net_.history
    estimator._resolved_config = {
        "backbone": resolved["backbone"],
        "max_epochs": resolved["max_epochs"],
    }
