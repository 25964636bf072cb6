"""The exception family of qslm.

Every error that qslm raises for bad input is a :class:`QslmError`, itself a ``ValueError``, so
callers can catch one class. The Rust kernels (``qslm._kernels``) raise these same classes.
"""

from __future__ import annotations

__all__ = [
    "QslmError",
    "ShapeError",
    "BitWidthError",
    "DTypeError",
    "LayoutError",
    "CodeRangeError",
]


class QslmError(ValueError):
    """Base class of every qslm input error."""


class ShapeError(QslmError):
    """An array has the wrong number of dimensions, inconsistent shapes or a wrong length."""


class BitWidthError(QslmError):
    """A bit width outside the supported range."""


class DTypeError(QslmError):
    """An array of the wrong dtype."""


class LayoutError(QslmError):
    """An array that is not C-contiguous where a contiguous buffer is required."""


class CodeRangeError(QslmError):
    """An integer code that does not fit in the requested bit width."""
