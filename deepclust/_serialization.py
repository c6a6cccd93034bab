"""Serialization shared by saved models and training checkpoints, without pickle.

A JSON codec that keeps tensors and arrays aside for a safetensors file
(:func:`encode_tree`, :func:`decode_tree`), writes that never leave half a file
(:func:`write_json`, :func:`write_tensors`), SHA-256 hashes, and the checks
that turn a damaged, edited or foreign file into a clear ``ValueError``.
Reading JSON and safetensors executes no code from the files.

This module depends on no other deepclust module but the version, so that the
estimators (checkpoints) and :mod:`deepclust.persistence` (save/load) can both
use it.
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from deepclust._version import __version__

__all__ = [
    "check_format",
    "check_state_dict",
    "decode_tree",
    "encode_tree",
    "read_document",
    "read_json",
    "read_tensors",
    "sha256_file",
    "write_document",
    "write_json",
    "write_tensors",
]

_MAX_LISTED = 5


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


def check_format(content, *, name: str, version: int, path, what: str) -> None:
    """Raise unless ``content`` is a ``name`` document of ``version`` or older."""
    if not isinstance(content, dict) or content.get("format") != name:
        raise ValueError(
            f"{what}: {str(path)!r} is not a {name} file (no 'format': {name!r})."
        )
    found = content.get("format_version")
    if not isinstance(found, int) or isinstance(found, bool):
        raise ValueError(
            f"{what}: {str(path)!r} has no valid 'format_version' (got {found!r})."
        )
    if found > version:
        raise ValueError(
            f"{what}: {str(path)!r} has format version {found}, written by a newer "
            f"deepclust ({content.get('deepclust_version')!r}); this version "
            f"({__version__}) reads format versions up to {version}. Upgrade deepclust."
        )
    if found < 1:
        raise ValueError(
            f"{what}: {str(path)!r} has an invalid format version {found}."
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


def write_document(
    directory, name: str, content: dict, tensors, tensors_name: str
) -> None:
    """Write ``tensors`` to ``tensors_name``, then ``content`` (which records its
    name and SHA-256) to the JSON file ``name``, both atomically, in that order.

    Because the JSON names the tensors file last, an interruption leaves the
    previous document readable.
    """
    directory = Path(directory)
    write_tensors(directory / tensors_name, tensors)
    content = {
        **content,
        "weights_file": tensors_name,
        "weights_sha256": sha256_file(directory / tensors_name),
    }
    write_json(directory / name, content)


def read_document(directory, name: str, *, format_name: str, version: int, what: str):
    """The JSON document ``name`` of ``directory`` and its checked tensors.

    Returns
    -------
    content : dict
    tensors : dict of str to Tensor

    Raises
    ------
    ValueError
        If a file is missing, damaged, modified or of another format or a newer
        version.
    """
    directory = Path(directory)
    content = read_json(directory / name, what)
    check_format(
        content, name=format_name, version=version, path=directory / name, what=what
    )
    weights = content.get("weights_file")
    if not isinstance(weights, str) or Path(weights).name != weights:
        raise ValueError(
            f"{what}: {name} names the file {weights!r}, which is not a plain file "
            "name."
        )
    if not isinstance(content.get("weights_sha256"), str):
        raise ValueError(
            f"{what}: {name} lacks the entry 'weights_sha256'; it was "
            "edited or truncated."
        )
    return content, read_tensors(directory / weights, content["weights_sha256"], what)
