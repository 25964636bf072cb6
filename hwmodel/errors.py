"""The exception family of hwmodel.

Every error that hwmodel raises for bad input is a :class:`HwModelError`, itself a ``ValueError``
(the same convention as ``qslm.errors``), so callers can catch one class. hwmodel does not import
qslm: the cost model stays usable (and fast to import) without torch or the Rust extension.
"""

from __future__ import annotations

__all__ = ["HwModelError", "PresetError", "WorkloadError", "PlanError"]


class HwModelError(ValueError):
    """Base class of every hwmodel input error."""


class PresetError(HwModelError):
    """A device preset (TOML) that is missing, malformed or physically invalid.

    The message names the file and the offending key, e.g. ``"mcu.toml: compute.clock_hz: ..."``.
    """


class WorkloadError(HwModelError):
    """A workload description with invalid shapes, counts, rates or names."""


class PlanError(HwModelError):
    """A quantization plan that is malformed or does not match the workload."""
