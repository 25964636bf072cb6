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


# --- data sets and tokenizers (qslm.data) -------------------------------------------------------

__all__ += ["DatasetError", "DataNotFoundError", "DownloadError", "ChecksumError", "TokenizerError"]


class DatasetError(QslmError):
    """A data set problem: unknown name or split, or a file that is not in the expected format."""


class DataNotFoundError(DatasetError):
    """A data set is in none of the places qslm looks, and could not be (or may not be) downloaded."""


class DownloadError(DataNotFoundError):
    """Downloading a data set failed (network, HTTP error, incomplete transfer or bad checksum)."""


class ChecksumError(DatasetError):
    """A data file exists but its size or sha256 differs from the official file's."""


class TokenizerError(QslmError):
    """A tokenizer file that is missing or is not a valid ``tokenizers`` JSON file."""


# --- models and checkpoints (qslm.models) -------------------------------------------------------

__all__ += ["ConfigError", "CheckpointError", "MissingKeyError", "UnexpectedKeyError",
            "CheckpointShapeError"]


class ConfigError(QslmError):
    """A model configuration with an invalid or inconsistent value (the message names the field)."""


class CheckpointError(QslmError):
    """A checkpoint file that is missing, truncated, corrupt, or not a model state dict."""


class MissingKeyError(CheckpointError):
    """A checkpoint that lacks a tensor the model needs (the message names the key and shape)."""


class UnexpectedKeyError(CheckpointError):
    """A checkpoint that holds a tensor the model does not have (the message names the key)."""


class CheckpointShapeError(CheckpointError, ShapeError):
    """A checkpoint tensor whose shape differs from the model's (names key, expected, actual)."""


# --- quantization (qslm.quant) ------------------------------------------------------------------

__all__ += ["QuantizationError", "PlanError", "FormatVersionError", "PackedModelError"]


class QuantizationError(QslmError):
    """Quantization parameters or weights that cannot be quantized (non-finite values, a bad
    granularity or group size, scales out of the fp16 range)."""


class PlanError(QslmError):
    """An invalid quantization plan or spec (the message names the plan key or the field)."""


class FormatVersionError(QslmError):
    """A file (plan, packed model) written in a format version this qslm does not read."""


class PackedModelError(CheckpointError):
    """A packed model file that is truncated, corrupt, not a qslm packed model, or inconsistent
    (a missing tensor or a shape that disagrees with its plan; the message names the key)."""


# --- hierarchy and sensitivity (qslm.hierarchy, qslm.sensitivity) -------------------------------

__all__ += ["HierarchyError", "SensitivityError", "SensitivityCacheError"]


class HierarchyError(QslmError):
    """A model hierarchy that cannot be built or is inconsistent (a block naming a module the
    model lacks or cannot quantize, a module in two blocks, nothing quantizable)."""


class SensitivityError(QslmError):
    """Bad input to a sensitivity measurement (no specs, a module outside the model), or a
    sensitivity asked for that was not measured (the message names the module and spec)."""


class SensitivityCacheError(SensitivityError):
    """A sensitivity cache whose metadata belongs to another model, task or format version."""


# --- packed-model runtime (qslm.runtime, python -m qslm.generate) --------------------------------

__all__ += ["ArchitectureError", "PackedCodeError", "GenerationError"]


class ArchitectureError(PackedModelError):
    """A packed model made for another architecture than the runtime executes: no or a foreign
    model config, a plan naming modules the model lacks, or a packed module whose kind or shape
    differs from the model's (the message names the module or the config field)."""


class PackedCodeError(PackedModelError):
    """Packed codes or quantization parameters that do not fit the bit widths of the plan: a
    module stored with other bits (or scheme) than the plan gives it, non-zero padding bits past
    the last code of a row, zero points outside the code range, non-finite or non-positive
    scales (the message names the module)."""


class GenerationError(QslmError):
    """Bad generation or sampling arguments (an empty prompt, a token outside the vocabulary,
    a temperature, top-p or top-k out of range), or a classifier asked to generate."""
