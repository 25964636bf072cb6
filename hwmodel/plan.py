"""Quantization plans as the cost model sees them: bits per module, plus the scale layout.

A :class:`Plan` maps module names to a :class:`ModuleSpec` (bits, group size, symmetric) or to
``None`` (keep the original fp32 weights). Keys are exact module names or ``re:``-prefixed regular
expressions; the lookup order is exact name > first matching regex > ``default``. This mirrors
qslm's ``QuantPlan`` (DESIGN.md), and :func:`read_plan_json` is the single place that knows the
on-disk JSON format, so switching to ``qslm.quant.QuantPlan`` later touches one function.

Storage cost of a quantized ``(N, K)`` weight (docs/kernels.md layout):
``N · ceil(K·b/8)`` bytes of packed codes, plus fp16 scales ``N · ceil(K/g) · 2`` bytes (``g`` =
group size; per-output-channel when ``group_size`` is None), plus as many fp16 zero points when
asymmetric.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Union

import numpy as np

from hwmodel.errors import PlanError
from hwmodel.workload import Workload

__all__ = [
    "FORMAT_VERSION",
    "KEEP",
    "MAX_BITS",
    "ModuleSpec",
    "Plan",
    "as_plan",
    "read_plan_json",
    "scale_bytes",
    "weight_bytes",
]

FORMAT_VERSION = 1
KEEP = 0  # bit-width code for "keep fp32" in bit vectors/matrices (32 is accepted as well)
MAX_BITS = 16  # widest integer width the cost model accepts
SCALE_BYTES = 2  # fp16 scale (and fp16 zero point)


@dataclass(frozen=True)
class ModuleSpec:
    """How one module is quantized."""

    bits: int  # 1..16
    group_size: int | None = None  # groups along the input dim; None = one scale per output row
    symmetric: bool = True  # False adds an fp16 zero point per group

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or \
                not 1 <= self.bits <= MAX_BITS:
            raise PlanError(f"bits must be an integer in 1..{MAX_BITS} (or keep), got {self.bits!r}")
        if self.group_size is not None and (isinstance(self.group_size, bool) or
                                            not isinstance(self.group_size, int) or
                                            self.group_size < 1):
            raise PlanError(f"group_size must be a positive integer or None, got {self.group_size!r}")
        if not isinstance(self.symmetric, bool):
            raise PlanError(f"symmetric must be true or false, got {self.symmetric!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"bits": self.bits, "group_size": self.group_size, "symmetric": self.symmetric}


def weight_bytes(out_features: int, in_features: int, bits: int) -> int:
    """Packed bytes of an (N, K) weight at ``bits`` (KEEP or 32 → fp32, 4 bytes per weight)."""
    if bits in (KEEP, 32):
        return 4 * out_features * in_features
    return out_features * math.ceil(in_features * bits / 8)


def scale_bytes(out_features: int, in_features: int, bits: int, group_size: int | None,
                symmetric: bool) -> int:
    """fp16 scale (and zero-point) bytes of an (N, K) weight; 0 when kept in fp32."""
    if bits in (KEEP, 32):
        return 0
    groups = 1 if group_size is None else math.ceil(in_features / group_size)
    return out_features * groups * SCALE_BYTES * (1 if symmetric else 2)


SpecLike = Union[ModuleSpec, int, None]


def _spec(v: Any, where: str) -> ModuleSpec | None:
    if v is None or isinstance(v, ModuleSpec):
        return v
    if isinstance(v, bool):
        raise PlanError(f"{where}: bits must be an integer or null, got {v!r}")
    if isinstance(v, int):
        if v in (KEEP, 32):
            return None
        try:
            return ModuleSpec(v)
        except PlanError as exc:
            raise PlanError(f"{where}: {exc}") from None
    raise PlanError(f"{where}: expected bits (int), a ModuleSpec or None, got {v!r}")


@dataclass(frozen=True)
class Plan:
    """Module name (or ``re:`` pattern) → ModuleSpec or None (keep fp32), plus a default."""

    modules: Mapping[str, ModuleSpec | None] = field(default_factory=dict)
    default: ModuleSpec | None = None  # for modules no key matches; None = keep fp32

    def __post_init__(self) -> None:
        if not isinstance(self.modules, Mapping):
            raise PlanError(f"plan modules must be a mapping, got {type(self.modules).__name__}")
        mods: dict[str, ModuleSpec | None] = {}
        for k, v in self.modules.items():
            if not isinstance(k, str) or not k:
                raise PlanError(f"plan keys must be non-empty strings, got {k!r}")
            if k.startswith("re:"):
                try:
                    re.compile(k[3:])
                except re.error as exc:
                    raise PlanError(f"plan key {k!r}: bad regular expression: {exc}") from None
            mods[k] = _spec(v, f"plan module {k!r}")
        object.__setattr__(self, "modules", MappingProxyType(mods))
        object.__setattr__(self, "default", _spec(self.default, "plan default"))

    @classmethod
    def from_bits(cls, bits: Mapping[str, int | None], default: int | None = None, *,
                  group_size: int | None = None, symmetric: bool = True) -> Plan:
        """From ``{name: bits or None}`` and a default (bits or None = keep)."""
        def mk(b: Any, where: str) -> ModuleSpec | None:
            s = _spec(b, where)
            return None if s is None else ModuleSpec(s.bits, group_size, symmetric)
        return cls({k: mk(v, f"plan module {k!r}") for k, v in bits.items()},
                   mk(default, "plan default"))

    @classmethod
    def uniform(cls, bits: int | None, *, group_size: int | None = None,
                symmetric: bool = True) -> Plan:
        """Every module at ``bits`` (None = keep everything in fp32)."""
        return cls.from_bits({}, bits, group_size=group_size, symmetric=symmetric)

    def spec_for(self, name: str) -> ModuleSpec | None:
        """Exact name > first matching ``re:`` key (insertion order) > default."""
        if name in self.modules:
            return self.modules[name]
        for k, v in self.modules.items():
            if k.startswith("re:") and re.fullmatch(k[3:], name):
                return v
        return self.default

    def resolve(self, workload: Workload, *, strict: bool = True) -> tuple[ModuleSpec | None, ...]:
        """One spec per workload module, in workload order.

        With ``strict``, exact keys that name no module of the workload are an error (a plan made
        for another model), and so is a bit width on a module marked non-quantizable.
        """
        names = set(workload.module_names)
        if strict:
            unknown = [k for k in self.modules if not k.startswith("re:") and k not in names]
            if unknown:
                shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
                raise PlanError(f"plan names {len(unknown)} module(s) not in workload "
                                f"{workload.name}: {shown}")
        out = []
        for m in workload.modules:
            s = self.spec_for(m.name)
            if s is not None and not m.quantizable:
                if strict and m.name in self.modules:
                    raise PlanError(f"module {m.name} is not quantizable but the plan gives it "
                                    f"{s.bits} bits")
                s = None
            out.append(s)
        return tuple(out)

    def bits_vector(self, workload: Workload, *, strict: bool = True) -> np.ndarray:
        """Bit widths in workload order (int16), KEEP (0) for fp32 modules."""
        return np.array([KEEP if s is None else s.bits
                         for s in self.resolve(workload, strict=strict)], dtype=np.int16)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able form read back by :func:`read_plan_json`."""
        return {
            "format_version": FORMAT_VERSION,
            "default": None if self.default is None else self.default.to_dict(),
            "modules": {k: None if v is None else v.to_dict() for k, v in self.modules.items()},
        }


def _spec_from_json(v: Any, where: str) -> ModuleSpec | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        raise PlanError(f"{where}: expected an object {{'bits': ...}} or null, got {v!r}")
    extra = set(v) - {"bits", "group_size", "symmetric", "granularity", "clip"}
    if extra:
        raise PlanError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
    if "bits" not in v:
        raise PlanError(f"{where}: missing 'bits'")
    # qslm's QuantPlan files name the granularity (and the range choice, "clip", which does not
    # change any byte); the cost model needs only the group size
    # ("tensor" is costed as per channel, overstating its scales by 2·(N − 1) bytes)
    gran = v.get("granularity")
    if gran not in (None, "tensor", "channel", "group"):
        raise PlanError(f"{where}: granularity must be tensor, channel or group, got {gran!r}")
    if gran in ("tensor", "channel") and v.get("group_size") is not None:
        raise PlanError(f"{where}: group_size is only used with granularity 'group'")
    if gran == "group" and v.get("group_size") is None:
        raise PlanError(f"{where}: granularity 'group' needs a group_size")
    try:
        return ModuleSpec(v["bits"], v.get("group_size"), v.get("symmetric", True))
    except PlanError as exc:
        raise PlanError(f"{where}: {exc}") from None


def read_plan_json(path: str | Path) -> Plan:
    """Read a plan file: ``{"format_version": 1, "default": {...}|null, "modules": {...}}``.

    Each module value is ``{"bits": b, "group_size": g|null, "symmetric": true}`` or ``null``
    (keep fp32). This is the only function that knows the file format.
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PlanError(f"{p}: cannot read plan: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise PlanError(f"{p}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PlanError(f"{p}: a plan is a JSON object")
    if doc.get("format_version") != FORMAT_VERSION:
        raise PlanError(f"{p}: format_version must be {FORMAT_VERSION}, "
                        f"got {doc.get('format_version')!r}")
    extra = set(doc) - {"format_version", "default", "modules"}
    if extra:
        raise PlanError(f"{p}: unknown key(s) {', '.join(sorted(extra))}")
    mods = doc.get("modules", {})
    if not isinstance(mods, dict):
        raise PlanError(f"{p}: 'modules' must be an object")
    return Plan({k: _spec_from_json(v, f"{p.name}: modules[{k!r}]") for k, v in mods.items()},
                _spec_from_json(doc.get("default"), f"{p.name}: default"))


def as_plan(plan: Plan | Mapping[str, int | None] | str | Path | int | None,
            default: int | None = None) -> Plan:
    """Accept a Plan, a ``{name: bits|None}`` mapping (with ``default``), a JSON path, or one
    bit width for every module (None = keep all)."""
    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, Mapping):
        return Plan.from_bits(plan, default)
    if isinstance(plan, (str, Path)):
        return read_plan_json(plan)
    if plan is None or (isinstance(plan, int) and not isinstance(plan, bool)):
        return Plan.uniform(plan)
    raise PlanError(f"cannot read a plan from {type(plan).__name__}")
