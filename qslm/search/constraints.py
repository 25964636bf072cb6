"""Search constraints: a performance floor and a memory budget, parsed from the command line.

Every performance floor is reduced to one number, the **allowed degradation** ``D_max`` in the
units of the evaluation metric's degradation (:func:`qslm.sensitivity.degradation`: positive =
worse), given the fp32 model's metric:

==================  =======================  ===========================================
floor               evaluation metric         allowed degradation ``D_max``
==================  =======================  ===========================================
``acc-drop`` x      accuracy (fraction)       ``x / 100``             (x in points)
``min-acc`` a       accuracy                  ``acc_fp − a``
``ppl-increase`` r  mean NLL (nats/token)     ``ln(1 + r)``           (PPL = exp(NLL))
``max-ppl`` p       mean NLL                  ``ln p − NLL_fp``
``kl`` k            mean KL (nats/token)      ``k``                   (KL_fp = 0)
==================  =======================  ===========================================

The performance term of the trade-off score (:func:`relative_performance`) is normalised so that
higher is better and the fp32 model scores 1: ``acc / acc_fp`` for accuracy, ``PPL_fp / PPL =
exp(−ΔNLL)`` for perplexity, ``exp(−KL)`` for fidelity.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from qslm.errors import QslmError

__all__ = [
    "FLOOR_KINDS",
    "MemoryBudget",
    "PerformanceFloor",
    "SearchInputError",
    "parse_bytes",
    "parse_fraction",
    "relative_performance",
]


class SearchInputError(QslmError, ValueError):
    """A search option that cannot be used (malformed, out of range, contradictory)."""


FLOOR_KINDS = ("acc-drop", "min-acc", "ppl-increase", "max-ppl", "kl")
# which evaluation metric each floor needs
FLOOR_METRIC = {"acc-drop": "accuracy", "min-acc": "accuracy", "ppl-increase": "nll",
                "max-ppl": "nll", "kl": "kl"}

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "k": 2**10, "m": 2**20, "g": 2**30}


def parse_bytes(text: str) -> int:
    """``"2MiB"``, ``"1.5 MB"``, ``"300000"``, ``"512k"`` → bytes (binary units for bare
    K/M/G and KiB/MiB/GiB, decimal for kB/MB/GB)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m:
        raise SearchInputError(f"cannot read {text!r} as a size: use e.g. 2MiB, 1.5MB, 300000")
    value, unit = float(m.group(1)), m.group(2).lower()
    if unit not in _UNITS:
        raise SearchInputError(f"unknown size unit {m.group(2)!r} in {text!r}: use B, kB, MB, GB, "
                               "KiB, MiB or GiB")
    n = value * _UNITS[unit]
    if not math.isfinite(n) or n < 1:
        raise SearchInputError(f"a memory budget must be at least 1 byte, got {text!r}")
    return int(n)


def parse_fraction(text: str, what: str) -> float:
    """``"5%"`` → 0.05; ``"0.05"`` → 0.05. Must be ≥ 0 and finite."""
    s = str(text).strip()
    pct = s.endswith("%")
    try:
        v = float(s[:-1] if pct else s)
    except ValueError:
        raise SearchInputError(f"{what}: cannot read {text!r} as a number (e.g. 5% or 0.05)") \
            from None
    v = v / 100.0 if pct else v
    if not math.isfinite(v) or v < 0:
        raise SearchInputError(f"{what} must be a finite number >= 0, got {text!r}")
    return v


@dataclass(frozen=True)
class PerformanceFloor:
    """The performance constraint (see the module docstring)."""

    kind: str  # one of FLOOR_KINDS
    value: float

    def __post_init__(self) -> None:
        if self.kind not in FLOOR_KINDS:
            raise SearchInputError(f"performance floor kind must be one of "
                                   f"{', '.join(FLOOR_KINDS)}, got {self.kind!r}")
        if not math.isfinite(self.value) or self.value < 0:
            raise SearchInputError(f"the {self.kind} floor must be a finite number >= 0, "
                                   f"got {self.value!r}")
        if self.kind == "min-acc" and self.value > 1:
            raise SearchInputError(f"--min-acc is a fraction in [0, 1], got {self.value}")
        if self.kind == "max-ppl" and self.value < 1:
            raise SearchInputError(f"--max-ppl must be >= 1 (a perplexity), got {self.value}")

    @property
    def metric(self) -> str:
        """The evaluation metric this floor is stated in: accuracy, nll or kl."""
        return FLOOR_METRIC[self.kind]

    def allowed_degradation(self, baseline: float) -> float:
        """``D_max`` given the fp32 metric ``baseline`` (accuracy, NLL or KL)."""
        k, v = self.kind, self.value
        if k == "acc-drop":
            return v / 100.0
        if k == "min-acc":
            return baseline - v
        if k == "ppl-increase":
            return math.log1p(v)
        if k == "max-ppl":
            return math.log(v) - baseline
        return v

    def describe(self) -> str:
        k, v = self.kind, self.value
        return {"acc-drop": f"accuracy drop <= {v:g} points",
                "min-acc": f"accuracy >= {v:.4g}",
                "ppl-increase": f"perplexity increase <= {v * 100:g} %",
                "max-ppl": f"perplexity <= {v:g}",
                "kl": f"KL to the fp32 model <= {v:g} nats/token"}[k]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value, "text": self.describe()}


@dataclass(frozen=True)
class MemoryBudget:
    """``bytes`` (parameter footprint ≤ bytes), ``fit`` (the device's cost model says the model
    fits: parameters + state within its memory levels, cores on a neuromorphic chip), or none."""

    kind: str  # "bytes" | "fit" | "none"
    bytes: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> MemoryBudget:
        if text is None or str(text).strip().lower() in ("", "none"):
            return cls("none")
        if str(text).strip().lower() == "fit":
            return cls("fit")
        return cls("bytes", parse_bytes(text))

    def describe(self) -> str:
        if self.kind == "bytes":
            assert self.bytes is not None
            return f"footprint <= {self.bytes:,} B ({self.bytes / 2**20:.3f} MiB)"
        return {"fit": "fits the device", "none": "no memory budget"}[self.kind]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "bytes": self.bytes, "text": self.describe()}


def relative_performance(metric: str, degradation: Any, baseline: float) -> Any:
    """Performance relative to fp32 (higher is better, fp32 = 1) from a degradation: a float for
    a float, an array for an array (the search scores thousands of plans at once)."""
    d = np.asarray(degradation, dtype=np.float64)
    if metric == "accuracy":
        out = (baseline - d) / baseline if baseline > 0 else np.zeros_like(d)
    else:
        out = np.exp(-d)
    return float(out) if out.ndim == 0 else out
