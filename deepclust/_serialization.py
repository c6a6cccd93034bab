"""Serialization shared by saved models and training checkpoints, without pickle.

A JSON codec that keeps tensors and arrays aside for a safetensors file
(:func:`encode_tree`, :func:`decode_tree`), documents whose files are written
so that an interruption never leaves them half-written (:func:`write_document`:
content-named data files first, then the JSON that names them, replaced
atomically), SHA-256 hashes, and the checks that turn a damaged, edited, foreign
or hostile file into a clear ``ValueError`` that names it. Reading JSON and
safetensors executes no code from the files; only regular files of bounded size
are read (:func:`deepclust._files.read_regular_file`).

This module depends on no other deepclust module but the version, so that the
estimators (checkpoints) and :mod:`deepclust.persistence` (save/load) can both
use it.
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from deepclust._files import (
    atomic_output,
    atomic_path,
    read_regular_file,
    sha256_file,
    write_content_named,
)
from deepclust._version import __version__

__all__ = [
    "check_format",
    "check_state_dict",
    "decode_tree",
    "encode_tree",
    "read_document",
    "read_json",
    "read_json_bytes",
    "read_tensors",
    "sha256_file",
    "remove_unnamed_files",
    "write_document",
    "write_json",
    "write_tensors",
]

_MAX_LISTED = 5
# Caps of the files a document may name: a tampered folder must not make a
# reader exhaust memory (a symlink to /dev/zero, a huge JSON).
JSON_MAX_BYTES = 512 * 2**20
TENSORS_MAX_BYTES = 16 * 2**30


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


def write_json(path, content) -> None:
    """Write JSON through a temporary sibling so that a crash never leaves half a
    file (the previous file stays whole until the atomic replace)."""
    with atomic_output(path, "w", encoding="utf-8") as file:
        json.dump(content, file, indent=1)


def write_tensors(path, tensors: dict[str, torch.Tensor]) -> None:
    """Write a safetensors file through a temporary sibling (atomic replace)."""
    with atomic_path(path) as temporary:
        save_file(tensors, temporary)


def parse_json(data: bytes, path, what: str):
    """JSON from bytes read from ``path``, with a ValueError naming the file."""
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what}: {str(path)!r} is not UTF-8 text ({exc}).") from None
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{what}: {str(path)!r} is not valid JSON ({exc}); the file is truncated "
            "or was edited by hand."
        ) from None
    except RecursionError:
        raise ValueError(
            f"{what}: {str(path)!r} nests its JSON too deeply to be a file written "
            "by deepclust; it was edited or forged."
        ) from None


def read_json_bytes(path, what: str) -> bytes:
    """The bytes of a JSON file named by a document (regular file, capped)."""
    return read_regular_file(path, max_bytes=JSON_MAX_BYTES, what=what)


def read_json(path, what: str):
    """Parse a JSON file, with a clear error for missing, damaged or odd files."""
    return parse_json(read_json_bytes(path, what), path, what)


def read_tensors(path, expected_sha256: str, what: str) -> dict[str, torch.Tensor]:
    """Load a safetensors file on the CPU after checking its SHA-256.

    The bytes that are hashed are the bytes that are parsed, so the file cannot
    change between the check and the load.
    """
    if not Path(path).exists():
        raise ValueError(f"{what}: weights file {str(path)!r} does not exist.")
    data = read_regular_file(path, max_bytes=TENSORS_MAX_BYTES, what=what)
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected_sha256:
        raise ValueError(
            f"{what}: {str(path)!r} does not match the SHA-256 recorded when it was "
            f"saved (expected {expected_sha256}, got {actual}); the file was modified, "
            "truncated or replaced after saving."
        )
    try:
        return load_safetensors(data)
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


def remove_unnamed_files(directory, patterns, keep) -> None:
    """Delete the files of ``directory`` matching ``patterns`` but not in ``keep``,
    and the temporary files that interrupted writes left behind."""
    directory = Path(directory)
    for pattern in (*patterns, ".*.tmp"):
        for path in directory.glob(pattern):
            if path.name not in keep and path.is_file():
                with contextlib.suppress(OSError):
                    path.unlink()


def write_document(
    directory, name: str, content: dict, tensors, tensors_prefix: str
) -> str:
    """Write ``tensors`` to a content-named safetensors file, then ``content``
    (which records that file's name and SHA-256) to the JSON file ``name``.

    The JSON is replaced atomically and last: it is the single point at which
    the new document replaces the old one. Until then the old JSON still names
    its own, untouched data files, so an interruption (a kill, a full disk)
    leaves the previous document readable; after it, the files that no document
    names any more are removed.

    Returns
    -------
    tensors_name : str
        The name of the safetensors file written.
    """
    directory = Path(directory)
    weights, sha256 = write_content_named(
        directory,
        tensors_prefix,
        ".safetensors",
        lambda temporary: save_file(tensors, temporary),
    )
    write_json(
        directory / name,
        {**content, "weights_file": weights, "weights_sha256": sha256},
    )
    return weights


def read_document(directory, name: str, *, format_name: str, version: int, what: str):
    """The JSON document ``name`` of ``directory`` and its checked tensors.

    Returns
    -------
    content : dict
    tensors : dict of str to Tensor

    Raises
    ------
    ValueError
        If a file is missing, damaged, modified, not a regular file, too large,
        or of another format or a newer version.
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
