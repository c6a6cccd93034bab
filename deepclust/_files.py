"""Writes that never leave half a file, and reads that never hang or explode.

Every file deepclust writes (saved models, checkpoints, ONNX exports, CSV
predictions, HTML reports, plots) goes to a temporary sibling first, is flushed
to disk, and only then replaces the target with an atomic rename: a kill, a full
disk or an exception part-way leaves the previous file whole (or no file).

Reads of files that a model folder names go through :func:`read_regular_file`,
which refuses FIFOs, devices and oversized files, so a tampered folder cannot
make ``load`` hang or fill memory.

This module uses the standard library only: the command line imports it before
torch.
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from pathlib import Path

__all__ = [
    "atomic_output",
    "atomic_path",
    "read_regular_file",
    "sha256_file",
    "write_content_named",
]


def _current_umask() -> int:
    # os.umask can only be read by setting it; this runs once, at import.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (no-op where unsupported)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # e.g. Windows, or file systems without directory fsync
    finally:
        os.close(descriptor)


def _temporary_sibling(path: Path) -> str:
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    os.close(descriptor)
    # mkstemp creates the file readable by its owner only; the result should get
    # the permissions of a file opened normally.
    os.chmod(temporary, 0o666 & ~_UMASK)
    return temporary


def _commit(temporary: str, path: Path) -> None:
    # Writers that replace the file by name (safetensors does) drop the
    # permissions set when it was created.
    os.chmod(temporary, 0o666 & ~_UMASK)
    with open(temporary, "rb+") as written:
        os.fsync(written.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path next to ``path`` that replaces it when the block succeeds.

    For writers that take a file name (``safetensors``, ``onnx.save_model``,
    ``joblib.dump``, ``Figure.savefig``). When the block raises, the temporary
    file is removed and ``path`` is left as it was.

    Parameters
    ----------
    path : str or path-like
        The file to write; its folder must exist.

    Yields
    ------
    temporary : str
        Where to write.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     target = Path(folder) / "out.txt"
    ...     with atomic_path(target) as temporary:
    ...         _ = Path(temporary).write_text("done")
    ...     target.read_text(), sorted(p.name for p in Path(folder).iterdir())
    ('done', ['out.txt'])
    """
    path = Path(path)
    temporary = _temporary_sibling(path)
    try:
        yield temporary
        _commit(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def atomic_output(path, mode: str = "w", **open_kwargs):
    """An open file that replaces ``path`` only when the block succeeds.

    Parameters
    ----------
    path : str or path-like
        The file to write; its folder must exist.
    mode : {"w", "wb"}, default="w"
    **open_kwargs
        Passed to :func:`open` (``encoding``, ``newline``...).

    Yields
    ------
    file : file object

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     target = Path(folder) / "out.csv"
    ...     _ = target.write_text("old")
    ...     try:
    ...         with atomic_output(target) as file:
    ...             _ = file.write("half a")
    ...             raise OSError("No space left on device")
    ...     except OSError:
    ...         pass
    ...     target.read_text()
    'old'
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb'; got {mode!r}.")
    with atomic_path(path) as temporary, open(temporary, mode, **open_kwargs) as file:
        yield file


def sha256_file(path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_content_named(directory, prefix: str, suffix: str, write) -> tuple[str, str]:
    """Write a file under a name made of ``prefix``, its SHA-256 and ``suffix``.

    ``write(temporary_path)`` writes the content to a temporary sibling; once it
    is on disk, it is renamed to ``{prefix}-{first 16 hex digits}{suffix}``. A
    new version therefore never overwrites a file that a current document
    names, which is what lets documents replace each other atomically.

    Returns
    -------
    name, sha256 : str
        The file name (in ``directory``) and the full hex SHA-256.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     name, sha = write_content_named(
    ...         folder, "notes", ".txt", lambda p: Path(p).write_text("hi"))
    >>> name
    'notes-8f434346648f6b96.txt'
    """
    directory = Path(directory)
    temporary = _temporary_sibling(directory / f"{prefix}{suffix}")
    try:
        write(temporary)
        sha256 = sha256_file(temporary)
        name = f"{prefix}-{sha256[:16]}{suffix}"
        _commit(temporary, directory / name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return name, sha256


def read_regular_file(path, *, max_bytes: int, what: str) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, or a ValueError.

    Symbolic links are followed, but what they lead to must be a regular file:
    FIFOs (which would block), devices such as ``/dev/zero`` (which never end)
    and directories are refused, and so are files above the cap. The read itself
    stops at the cap, so a file that grows meanwhile cannot exhaust memory.

    Parameters
    ----------
    path : str or path-like
    max_bytes : int
    what : str
        The start of the error message (what could not be done).

    Returns
    -------
    content : bytes
    """
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ValueError(f"{what}: {str(path)!r} does not exist.") from None
    except OSError as exc:
        raise ValueError(f"{what}: {str(path)!r} cannot be opened ({exc}).") from None
    with os.fdopen(descriptor, "rb") as file:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise ValueError(
                f"{what}: {str(path)!r} is not a regular file (a FIFO, device, "
                "socket or directory); a model folder holds regular files only."
            )
        if status.st_size > max_bytes:
            raise ValueError(
                f"{what}: {str(path)!r} has {status.st_size} bytes, more than the "
                f"{max_bytes} bytes such a file may have."
            )
        content = file.read(max_bytes + 1)
    if len(content) > max_bytes:
        raise ValueError(
            f"{what}: {str(path)!r} grew beyond {max_bytes} bytes while it was read."
        )
    return content
