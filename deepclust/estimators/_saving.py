"""One place remembers: saving, loading and upgrading fitted estimators.

A saved model is a folder:

- ``config.json``: the format and library versions, the estimator class, its
  parameters, its fitted attributes (among them ``training_config_``, which
  describes the network) and the names and SHA-256 of the two data files;
- ``model-<hash>.safetensors``: the network's weights and buffers
  (``module.*``) and the fitted arrays such as ``labels_`` (``attributes.*``);
- ``history-<hash>.json``: the skorch training history.

The data files are named after their content and written first; ``config.json``
is replaced atomically and last. Saving over a model therefore never breaks it:
until the last rename the old ``config.json`` names the old, untouched files;
after it, the new ones (and the old files are removed).

Loading reads JSON and safetensors only, so it executes no code from the
files. Only regular files of bounded size are read, only the fitted attributes
this version knows are set (with checked types), and every problem is a
``ValueError`` that names the file. :func:`upgrade` is the only code that knows
older formats: it turns the document of any earlier version into today's, so
the rest of the package sees current descriptions only.
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import warnings
from numbers import Integral
from pathlib import Path

import numpy as np
import torch
from skorch.history import History

from deepclust import distributed
from deepclust._files import write_content_named
from deepclust._serialization import (
    check_state_dict,
    decode_tree,
    encode_tree,
    parse_json,
    read_document,
    read_json_bytes,
    remove_unnamed_files,
    write_document,
)
from deepclust._version import __version__
from deepclust.estimators._config import (
    DeviceDescription,
    InputDescription,
    resolve_training_config,
)
from deepclust.estimators._net import resolve_device
from deepclust.models import build_model

__all__ = [
    "CONFIG_FILE",
    "MODEL_FORMAT_VERSION",
    "load_estimator",
    "register",
    "save_estimator",
    "upgrade",
    "upgrade_checkpoint",
]

MODEL_FORMAT = "deepclust.model"
# 1: deepclust 0.1.0 ("resolved" held the chosen backbone and epochs only).
# 2: training_config_ describes the network (model.safetensors, history.json).
# 3: content-named data files, resolved stems and widths in every description.
MODEL_FORMAT_VERSION = 3
CONFIG_FILE = "config.json"
_MODULE_PREFIX = "module."
_ATTRIBUTE_PREFIX = "attributes."
_DATA_FILES = ("model-*.safetensors", "history-*.json")
# Data files of formats 1 and 2, replaced when a model is saved over them.
_FIXED_NAME_FILES = ("model.safetensors", "history.json")
# Fitted attributes that are rebuilt rather than stored as values (the encoder
# from its specification, checked against the SHA-256 of its weights).
_REBUILT_ATTRIBUTES = ("net_", "history_", "encoder_")
# Estimator classes by name, for loading (filled by subclassing the base).
_ESTIMATOR_CLASSES: dict[str, type] = {}

# Parameters added after models were first saved, with the value that describes
# the models saved before them.
_ADDED_PARAMS = {
    "n_cluster_heads": 1,
    "head_selection": "loss",
    "neighbor_weight": 0.0,
    "encoder": None,
    "encoder_weights": None,
}
# Stage widths of "small_cnn" in descriptions that did not record them.
_FIRST_SMALL_CNN_WIDTHS = [64, 128, 256]


def register(estimator_class: type) -> None:
    """Make an estimator class loadable by its name."""
    _ESTIMATOR_CLASSES[estimator_class.__name__] = estimator_class


# ---------------------------------------------------------------------------
# The fitted attributes a saved model may set, and their types
# ---------------------------------------------------------------------------


def _int(minimum=0):
    def check(value):
        return (
            isinstance(value, Integral)
            and not isinstance(value, bool)
            and (value >= minimum)
        )

    check.expected = f"an int >= {minimum}"
    return check


def _one_of(*choices):
    def check(value):
        return isinstance(value, str) and value in choices

    check.expected = f"one of {list(choices)}"
    return check


def _optional(inner):
    def check(value):
        return value is None or inner(value)

    check.expected = f"None or {inner.expected}"
    return check


def _int_tuple(length):
    def check(value):
        return (
            isinstance(value, tuple)
            and len(value) == length
            and all(_int(1)(v) for v in value)
        )

    check.expected = f"a tuple of {length} positive ints"
    return check


def _array(kinds, ndim=1):
    def check(value):
        return (
            isinstance(value, np.ndarray)
            and value.dtype.kind in kinds
            and value.ndim == ndim
        )

    check.expected = f"a {ndim}-D array of dtype kind {kinds!r}"
    return check


def _strings(value):
    return value is None or (
        isinstance(value, (list, np.ndarray))
        and all(isinstance(v, str) or v is None for v in np.asarray(value).ravel())
    )


_strings.expected = "None or a list of file names"


def _dict(value):
    return isinstance(value, dict)


_dict.expected = "a dict"

_COMMON_ATTRIBUTES = {
    "training_config_": _dict,
    "n_epochs_": _int(0),
    "n_processes_": _int(1),
    "skipped_indices_": _array("iu"),
    "input_files_": _strings,
    "input_kind_": _one_of("image", "tabular"),
    "n_features_in_": _int(1),
    "input_shape_": _optional(_int_tuple(3)),
    "image_size_": _optional(_int_tuple(2)),
    "n_channels_": _optional(_int(1)),
    "input_dtype_": _one_of("uint8", "float32"),
}
_CLASS_ATTRIBUTES = {
    "CDCClusterer": {
        "labels_": _array("iu"),
        "cluster_sizes_": _array("iu"),
        "selected_head_": _int(0),
        "head_losses_": _optional(_array("f")),
        "head_agreement_": _optional(_array("f")),
    },
    "ContrastiveDisentangler": {},
}


def _check_attributes(attributes: dict, class_name: str, what: str) -> None:
    allowed = {**_COMMON_ATTRIBUTES, **_CLASS_ATTRIBUTES.get(class_name, {})}
    for name, value in attributes.items():
        check = allowed.get(name)
        if check is None:
            raise ValueError(
                f"{what}: config.json sets the attribute {name!r}, which is not a "
                f"fitted attribute of a saved {class_name}; it was edited or forged."
            )
        if not check(value):
            raise ValueError(
                f"{what}: config.json sets the attribute {name!r} to a "
                f"{type(value).__name__}; expected {check.expected}."
            )


# ---------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------


def save_estimator(estimator, path) -> None:
    """Write a fitted estimator to the folder ``path`` (see the module doc)."""
    if distributed.rank() != 0 and getattr(estimator.net_, "distributed", False):
        return  # the other processes of a distributed fit hold the same model
    params = _params_to_json(estimator)
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise ValueError(
            f"path {str(path)!r} is an existing file; save() writes a directory."
        )
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {
        _MODULE_PREFIX + name: tensor.detach().to("cpu").contiguous()
        for name, tensor in estimator.net_.unwrapped_module().state_dict().items()
    }
    attributes = {
        name: encode_tree(
            value, tensors, _ATTRIBUTE_PREFIX + name, where=f"attribute {name}"
        )
        for name, value in vars(estimator).items()
        if name.endswith("_")
        and not name.startswith("_")
        and name not in _REBUILT_ATTRIBUTES
    }
    history = encode_tree(
        estimator.history_.to_list(), tensors, "history", where="the history"
    )
    history_file, history_sha256 = write_content_named(
        directory,
        "history",
        ".json",
        lambda temporary: Path(temporary).write_text(
            json.dumps(history, indent=1), encoding="utf-8"
        ),
    )
    weights_file = write_document(
        directory,
        CONFIG_FILE,
        {
            "format": MODEL_FORMAT,
            "format_version": MODEL_FORMAT_VERSION,
            "deepclust_version": __version__,
            "class": type(estimator).__name__,
            "params": params,
            "attributes": attributes,
            "history_file": history_file,
            "history_sha256": history_sha256,
        },
        tensors,
        "model",
    )
    remove_unnamed_files(
        directory,
        (*_DATA_FILES, *_FIXED_NAME_FILES),
        keep={weights_file, history_file},
    )


def _params_to_json(estimator) -> dict:
    """The estimator's parameters as JSON; a ValueError names any that is not."""
    encoded = {}
    for name, value in estimator.get_params(deep=False).items():
        if name == "callbacks" and value is not None:
            raise ValueError(
                "callbacks cannot be saved without pickle (they are code); they only "
                "matter for training: call est.set_params(callbacks=None) before "
                "save(), or use pickle/joblib."
            )
        if name == "encoder" and callable(value):
            raise ValueError(
                f"encoder={value!r} is a callable, which cannot be saved without "
                "pickle (it is code); save() needs a named encoder "
                "('efficientnet_lite0', 'torchvision:NAME' or 'timm:NAME'), or use "
                "pickle/joblib."
            )
        if name == "backbone" and callable(value):
            raise ValueError(
                f"backbone={value!r} is a callable, which cannot be saved without "
                "pickle (it is code); save() needs a named backbone ('resnet18', "
                "'resnet34', 'resnet50', 'small_cnn' or 'mlp'). Use pickle/joblib "
                "instead."
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


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def load_estimator(path, *, device=None):
    """Load an estimator written by :func:`save_estimator` (or an older version).

    See :func:`deepclust.persistence.load`, which documents it.
    """
    directory = Path(path)
    what = f"cannot load a deepclust model from {str(path)!r}"
    if not directory.is_dir():
        raise ValueError(f"{what}: it is not a directory (save() writes a directory).")
    try:
        document, tensors = read_document(
            directory,
            CONFIG_FILE,
            format_name=MODEL_FORMAT,
            version=MODEL_FORMAT_VERSION,
            what=what,
        )
    except ValueError as exc:
        if "does not exist" not in str(exc) or not (directory / CONFIG_FILE).exists():
            raise
        # A save() replaced the model between reading config.json and its
        # weights; the new config.json names files that exist.
        document, tensors = read_document(
            directory,
            CONFIG_FILE,
            format_name=MODEL_FORMAT,
            version=MODEL_FORMAT_VERSION,
            what=what,
        )
    estimator_class = _estimator_class(document, what)
    try:
        document, tensors = upgrade(document, tensors, estimator_class)
        estimator = _estimator_from(document, tensors, estimator_class, what)
    except RecursionError:
        raise ValueError(
            f"{what}: config.json nests its values too deeply to be a file written "
            "by deepclust; it was edited or forged."
        ) from None
    history = _upgrade_history(_read_history(directory, document, tensors, what))
    estimator.device = _loading_device(document["params"].get("device"), device)
    _rebuild_encoder(estimator, what)
    model = _rebuild_model(estimator, tensors, what)
    estimator.net_ = estimator._build_net(model, resolve_device(estimator.device), 0)
    estimator.net_.initialize()
    estimator.net_.finish_training()
    estimator.net_.history = History(history)
    estimator.history_ = estimator.net_.history
    return estimator


def _estimator_class(document, what):
    class_name = document.get("class")
    estimator_class = (
        _ESTIMATOR_CLASSES.get(class_name) if isinstance(class_name, str) else None
    )
    if estimator_class is None:
        raise ValueError(
            f"{what}: unknown estimator class {class_name!r}; expected one "
            f"of {sorted(_ESTIMATOR_CLASSES)}."
        )
    for key, kind in (("params", dict), ("attributes", dict)):
        if not isinstance(document.get(key), kind):
            raise ValueError(
                f"{what}: config.json lacks the entry {key!r} (a JSON object); it "
                "was edited or truncated."
            )
    return estimator_class


def _estimator_from(document, tensors, estimator_class, what):
    """An estimator with the document's parameters and checked fitted attributes."""
    params = decode_tree(document["params"], {})
    try:
        estimator = estimator_class(**params)
    except TypeError as exc:
        raise ValueError(
            f"{what}: config.json has parameters unknown to "
            f"{estimator_class.__name__} in this version of deepclust ({exc})."
        ) from None
    try:
        estimator._validate_params()
    except ValueError as exc:
        raise ValueError(
            f"{what}: config.json holds an invalid parameter value ({exc})."
        ) from None
    try:
        attributes = {
            name: decode_tree(value, tensors)
            for name, value in document["attributes"].items()
        }
    except KeyError as exc:
        raise ValueError(
            f"{what}: the weights file lacks the tensor {exc} named in config.json."
        ) from None
    _check_attributes(attributes, estimator_class.__name__, what)
    for name, value in attributes.items():
        setattr(estimator, name, value)
    return estimator


def _read_history(directory, document, tensors, what):
    history_file = document.get("history_file")
    if not isinstance(history_file, str) or Path(history_file).name != history_file:
        raise ValueError(
            f"{what}: config.json names the file {history_file!r}, which "
            "is not a plain file name."
        )
    path = directory / history_file
    if not path.exists():
        raise ValueError(
            f"{what}: {history_file} is missing or does not match the SHA-256 "
            "recorded when it was saved; it was modified, truncated or replaced."
        )
    data = read_json_bytes(path, what)
    if hashlib.sha256(data).hexdigest() != document.get("history_sha256"):
        raise ValueError(
            f"{what}: {history_file} is missing or does not match the SHA-256 "
            "recorded when it was saved; it was modified, truncated or replaced."
        )
    try:
        return decode_tree(parse_json(data, path, what), tensors)
    except KeyError as exc:
        raise ValueError(
            f"{what}: the weights file lacks the tensor {exc} named in {history_file}."
        ) from None
    except RecursionError:
        raise ValueError(
            f"{what}: {history_file} nests its values too deeply to be a file "
            "written by deepclust."
        ) from None


def _rebuild_encoder(estimator, what) -> None:
    """The frozen encoder a model was trained on, from its specification.

    Its weights are not in the model folder: they come from where the encoder
    comes from (a package, a library's cache, a local file), and must be the
    very weights the heads were trained on.
    """
    description = estimator.training_config_.get("encoder")
    if description is None:
        return
    from deepclust.encoders import build_encoder

    try:
        encoder = build_encoder(estimator.encoder, estimator.encoder_weights)
    except (ValueError, OSError, TypeError) as exc:
        raise ValueError(
            f"{what}: its encoder {description['spec']!r} cannot be built here ({exc})"
        ) from None
    found = encoder.description["sha256"]
    if found != description["sha256"]:
        raise ValueError(
            f"{what}: the weights of its encoder {description['spec']!r} differ from "
            f"those the model was trained with (SHA-256 {found[:16]}... here, "
            f"{description['sha256'][:16]}... when trained): its embeddings would "
            "not be those the heads learnt. Install the encoder's weights the model "
            "was trained with (or pass the same encoder_weights file)."
        )
    encoder.set_unit_range(*description["value_range"])
    encoder.description = dict(description)
    estimator.encoder_ = encoder


def _rebuild_model(estimator, tensors, what):
    """The network described by ``training_config_``, with the stored weights."""
    try:
        description = estimator.training_config_["model"]
        expected = {"family": estimator._family, "heads": estimator._head_params()}
        stored = {name: description[name] for name in expected}
        model = build_model(description)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"{what}: config.json lacks fitted attributes or training choices needed "
            f"to rebuild the network ({type(exc).__name__}: {exc})."
        ) from None
    if encode_tree(stored, {}, "model") != encode_tree(expected, {}, "model"):
        raise ValueError(
            f"{what}: the parameters in config.json ({expected}) do not match the "
            f"stored network description ({stored}); config.json was edited."
        )
    weights = {
        name[len(_MODULE_PREFIX) :]: tensor
        for name, tensor in tensors.items()
        if name.startswith(_MODULE_PREFIX)
    }
    check_state_dict(model.state_dict(), weights, what)
    model.load_state_dict(weights)
    return model


def _loading_device(saved, requested) -> str:
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
            stacklevel=4,
        )
        return "cpu"
    return saved


# ---------------------------------------------------------------------------
# Older formats
# ---------------------------------------------------------------------------


def upgrade(document: dict, tensors: dict, estimator_class) -> tuple[dict, dict]:
    """Turn a saved model's document and tensors of any format into today's.

    Parameters
    ----------
    document : dict
        The content of ``config.json`` (format version 1 to
        :data:`MODEL_FORMAT_VERSION`).
    tensors : dict of str to Tensor
        The content of the weights file.
    estimator_class : type
        The class named by the document.

    Returns
    -------
    document, tensors
        New objects in today's format; the inputs are not modified.
    """
    document = {
        **document,
        "params": dict(document["params"]),
        "attributes": dict(document["attributes"]),
    }
    tensors = dict(tensors)
    version = document["format_version"]
    accepted = set(_signature_params(estimator_class))
    for name, value in _ADDED_PARAMS.items():
        if name in accepted:
            document["params"].setdefault(name, value)
    if version == 1:
        document["attributes"]["training_config_"] = _format_1_training_config(
            document, estimator_class
        )
    if version <= 2:
        config = decode_tree(document["attributes"]["training_config_"], {})
        # Before encoders and neighbour pairs: feature vectors trained on
        # augmented copies, images on their pixels.
        config.setdefault("encoder", None)
        config.setdefault("pair_neighbors", None)
        _upgrade_model_description(config["model"])
        document["attributes"]["training_config_"] = encode_tree(config, {}, "config")
        bias = _MODULE_PREFIX + "cluster_bias"
        if estimator_class.__name__ == "CDCClusterer" and bias not in tensors:
            n_clusters = config["model"]["heads"]["n_clusters"]
            tensors[bias] = torch.zeros(n_clusters)
    document["format_version"] = MODEL_FORMAT_VERSION
    return document, tensors


def _signature_params(estimator_class):
    return [
        name
        for name in inspect.signature(estimator_class.__init__).parameters
        if name != "self"
    ]


def _format_1_training_config(document, estimator_class) -> dict:
    """Format 1 stored only the backbone and the epochs chosen: resolve the rest."""
    try:
        resolved = decode_tree(document["resolved"], {})
        params = decode_tree(document["params"], {})
        attributes = {
            name: decode_tree(value, {})
            for name, value in document["attributes"].items()
            if not isinstance(value, dict) or "__ndarray__" not in value
        }
        params = {
            **params,
            "backbone": resolved["backbone"],
            "max_epochs": resolved["max_epochs"],
        }
        estimator = estimator_class(**params)
        tabular = attributes["input_kind_"] == "tabular"
        data = InputDescription(
            attributes["input_kind_"],
            image_size=None if tabular else tuple(attributes["image_size_"]),
            n_channels=None if tabular else attributes["n_channels_"],
            n_features=attributes.get("n_features_in_"),
        )
        config = resolve_training_config(
            estimator.get_params(deep=False),
            family=estimator._family,
            heads=estimator._head_params(),
            data=data,
            device=DeviceDescription("cpu"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"config.json of format 1 lacks what its network needs ({exc!r})."
        ) from None
    # Format 1 predates recorded widths and resolved stems.
    del config["model"]["backbone_widths"]
    config["model"]["stem"] = params["stem"]
    return encode_tree(config, {}, "config")


def _upgrade_model_description(model: dict) -> None:
    """Descriptions of format 2 (and 1) in today's form, in place."""
    small_cnn = model.get("backbone") == "small_cnn"
    if "backbone_widths" not in model:
        model["backbone_widths"] = list(_FIRST_SMALL_CNN_WIDTHS) if small_cnn else None
    if small_cnn and model.get("stem") == "auto":
        # "auto" meant stride 1 before "small_cnn" had a strided stem.
        model["stem"] = "cifar"


def _upgrade_history(history: list) -> list:
    """Histories written before per-head losses were one list per batch.

    Format 2 recorded ``cluster_head{h}_loss`` floats; today's batches hold one
    ``cluster_heads_loss`` list.
    """
    for epoch in history:
        for batch in epoch.get("batches", []):
            heads = sorted(
                (int(name[len("cluster_head") : -len("_loss")]), name)
                for name in batch
                if re.fullmatch(r"cluster_head\d+_loss", name)
            )
            if heads:
                batch["cluster_heads_loss"] = [batch.pop(name) for _, name in heads]
    return history


def upgrade_checkpoint(content: dict) -> dict:
    """A training checkpoint of any format version in today's form.

    Checkpoints of deepclust 0.1 held the random generators of one process
    under ``generators``; today's hold every process's state under
    ``processes``.
    """
    content = dict(content)
    if "processes" not in content and "generators" in content:
        content["processes"] = [{"generators": content.pop("generators")}]
    return content
