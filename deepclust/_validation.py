"""Checks of plain values shared by every layer of deepclust.

numpy only: the torch-free inference path (:mod:`deepclust.onnx` and
:mod:`deepclust._inputs`) uses these too.
"""

# Authors: The deepclust developers
# SPDX-License-Identifier: BSD-3-Clause

from collections.abc import Sequence
from numbers import Integral

__all__ = ["check_image_size", "check_positive_int", "is_int"]


def is_int(value) -> bool:
    """Whether ``value`` is an integer (numpy integers too) and not a bool."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_positive_int(value, name: str) -> int:
    """``value`` as an int if it is a positive integer, else a ValueError naming it.

    Examples
    --------
    >>> check_positive_int(3, "batch_size")
    3
    >>> check_positive_int(0, "batch_size")
    Traceback (most recent call last):
    ...
    ValueError: batch_size must be a positive int; got 0.
    """
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}.")
    return int(value)


def check_image_size(image_size, name: str = "image_size", *, allow_none=True):
    """``(height, width)`` from a positive int or a pair of positive ints.

    None gives None when ``allow_none``; anything else raises a ValueError
    naming ``name``.

    Examples
    --------
    >>> check_image_size(8), check_image_size((4, 6)), check_image_size(None)
    ((8, 8), (4, 6), None)
    """
    if image_size is None and allow_none:
        return None
    if is_int(image_size) and image_size > 0:
        return (int(image_size), int(image_size))
    if (
        isinstance(image_size, Sequence)
        and not isinstance(image_size, str)
        and len(image_size) == 2
        and all(is_int(side) and side > 0 for side in image_size)
    ):
        return (int(image_size[0]), int(image_size[1]))
    allowed = "None, a positive int" if allow_none else "a positive int"
    raise ValueError(
        f"{name} must be {allowed} or a pair (height, width) of positive ints; "
        f"got {image_size!r}."
    )
