"""Quantization specs and plans: which module gets which bits, and what that costs in bytes.

A :class:`QuantSpec` says how one weight matrix is quantized (bits, symmetric or not, scale
granularity); a :class:`QuantPlan` maps fully-qualified module names to a spec or to ``None``
(keep the original precision). Plan keys are exact module names, ``re:``-prefixed regular
expressions (matched against the whole name, ``re.fullmatch``), and ``_default``. Lookup:

    exact name  >  first matching ``re:`` key, in insertion order  >  ``_default``  >  keep

Storage of a quantized ``(N, K)`` weight (docs/kernels.md layout; ``G`` scales per row):

* packed codes: ``N · ceil(K·b/8)`` bytes (every row starts on a byte boundary);
* fp16 scales: ``2 · S`` bytes, ``S = 1`` (tensor), ``N`` (channel) or ``N · ceil(K/g)`` (group);
* fp16 zero points (asymmetric only): another ``2 · S`` bytes.

``clip="mse"`` shrinks each scale's range to the one that minimises the squared rounding and
clipping error of its group (:func:`qslm.quant.primitives.choose_qparams`); the stored layout is
the same, so it costs nothing in bytes. A spec's JSON names ``clip`` only when it is ``"mse"``.

So the *effective* bits per weight are ``b + 16/g`` for group size ``g`` (``g = K`` per channel),
``+ 16/g`` more with zero points — ignoring the padding of a partial last byte or group; the
exact byte counts are :meth:`QuantSpec.storage_bytes` and :func:`footprint`.

1-bit symmetric is sign binarization (see :mod:`qslm.quant.primitives`): its zero point is the
constant 1/2, implied by the spec and never stored, so it costs ``1 + 16/g`` bits like any
symmetric spec.

On disk (``format_version`` 1)::

    {"format_version": 1,
     "default": {"bits": 4, "symmetric": true, "granularity": "group", "group_size": 64} | null,
     "modules": {"blocks.0.att.key": {...} | null, "re:blocks\\.\\d+\\.ffn\\..*": {...}, ...}}

``hwmodel`` reads its own, narrower format (no granularity; ``group_size: null`` = per channel):
:meth:`QuantPlan.to_hwmodel_dict` writes it.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from qslm._io import atomic_write_bytes
from qslm.errors import FormatVersionError, PlanError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = [
    "DEFAULT_KEY",
    "FORMAT_VERSION",
    "CLIPS",
    "GRANULARITIES",
    "REGEX_PREFIX",
    "SCALE_BYTES",
    "Footprint",
    "ModuleFootprint",
    "QuantPlan",
    "QuantSpec",
    "footprint",
    "quantizable_modules",
]

FORMAT_VERSION = 1  # of QuantPlan.to_dict()
HWMODEL_FORMAT_VERSION = 1  # of hwmodel.plan.read_plan_json's format
DEFAULT_KEY = "_default"
REGEX_PREFIX = "re:"
GRANULARITIES = ("tensor", "channel", "group")
CLIPS = ("minmax", "mse")  # range choice: full min/max range, or the MSE-optimal shrunk range
MIN_BITS, MAX_BITS = 1, 8
SCALE_BYTES = 2  # fp16 scale, and fp16 zero point
FP32_BYTES = 4


# ================================================================================================
# QuantSpec
# ================================================================================================


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class QuantSpec:
    """How one weight matrix ``(N, K)`` (out × in; an embedding is ``(V, C)``) is quantized.

    ``granularity`` defaults to ``"group"`` when ``group_size`` is given, else ``"channel"``.
    """

    bits: int  # 1..8: width of the integer codes
    symmetric: bool = True  # True: signed codes, W = s·q; False: unsigned codes + zero point
    granularity: str | None = None  # "tensor" | "channel" (per output row) | "group"
    group_size: int | None = None  # columns per scale along the input dim ("group" only)
    clip: str = "minmax"  # how the range is chosen: "minmax" (the full range) or "mse"

    def __post_init__(self) -> None:
        if not _is_int(self.bits) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise PlanError(f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, "
                            f"got {self.bits!r}")
        if not isinstance(self.symmetric, bool):
            raise PlanError(f"symmetric must be true or false, got {self.symmetric!r}")
        if self.clip not in CLIPS:
            raise PlanError(f"clip must be one of {', '.join(CLIPS)}, got {self.clip!r}")
        gran = self.granularity
        if gran is None:
            gran = "channel" if self.group_size is None else "group"
            object.__setattr__(self, "granularity", gran)
        if gran not in GRANULARITIES:
            raise PlanError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {gran!r}")
        if gran == "group":
            if not _is_int(self.group_size) or self.group_size < 1:
                raise PlanError(f"group_size must be an integer >= 1 with granularity 'group', "
                                f"got {self.group_size!r}")
        elif self.group_size is not None:
            raise PlanError(f"group_size is only used with granularity 'group', got "
                            f"group_size={self.group_size!r} with granularity {gran!r}")

    # ---- derived properties --------------------------------------------------------------------
    @property
    def is_binary(self) -> bool:
        """1-bit symmetric: sign binarization, ``W = ±s/2`` (implicit zero point 1/2)."""
        return self.bits == 1 and self.symmetric

    @property
    def stores_zero_points(self) -> bool:
        """Whether zero points are stored (asymmetric; binarization's 1/2 is implied)."""
        return not self.symmetric

    def kernel_group_size(self, in_features: int) -> int:
        """The kernels' ``group_size`` for a weight with ``in_features`` columns."""
        return self.group_size if self.granularity == "group" else max(int(in_features), 1)

    def n_scales(self, out_features: int, in_features: int) -> int:
        """Number of scales (= of zero points when stored) of an ``(N, K)`` weight."""
        if self.granularity == "tensor":
            return 1
        if self.granularity == "channel":
            return out_features
        return out_features * math.ceil(in_features / self.group_size)

    def storage_bytes(self, out_features: int, in_features: int) -> tuple[int, int, int]:
        """(packed code bytes, fp16 scale bytes, fp16 zero-point bytes) of an ``(N, K)`` weight."""
        packed = out_features * math.ceil(in_features * self.bits / 8)
        scales = SCALE_BYTES * self.n_scales(out_features, in_features)
        return packed, scales, scales if self.stores_zero_points else 0

    def effective_bits(self, in_features: int | None = None,
                       out_features: int | None = None) -> float:
        """Bits per weight including scales: ``b + 16/g`` (``+ 16/g`` with zero points).

        ``g`` is the group size; per channel ``g = in_features``; per tensor ``g = N·K``, so those
        two need the shape. Ignores the padding of partial bytes and groups (see
        :meth:`storage_bytes` for exact bytes).
        """
        if self.granularity == "group":
            g = self.group_size
        elif self.granularity == "channel":
            if in_features is None:
                raise PlanError("effective_bits of a per-channel spec needs in_features")
            g = in_features
        else:
            if in_features is None or out_features is None:
                raise PlanError("effective_bits of a per-tensor spec needs in_features and "
                                "out_features")
            g = in_features * out_features
        per_scale = 8 * SCALE_BYTES * (2 if self.stores_zero_points else 1)
        return self.bits + per_scale / g

    # ---- (de)serialization ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"bits": self.bits, "symmetric": self.symmetric,
                             "granularity": self.granularity, "group_size": self.group_size}
        if self.clip != "minmax":  # written only when not the default: older files stay valid
            d["clip"] = self.clip
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = "spec") -> QuantSpec:
        """From :meth:`to_dict`'s form; errors start with ``where`` (e.g. the plan key)."""
        if not isinstance(d, Mapping):
            raise PlanError(f"{where}: expected an object {{'bits': ...}} or null, got {d!r}")
        unknown = sorted(set(d) - {"bits", "symmetric", "granularity", "group_size", "clip"})
        if unknown:
            raise PlanError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")
        if "bits" not in d:
            raise PlanError(f"{where}: missing field 'bits'")
        try:
            return cls(d["bits"], d.get("symmetric", True), d.get("granularity"),
                       d.get("group_size"), d.get("clip", "minmax"))
        except PlanError as exc:
            raise PlanError(f"{where}: {exc}") from None

    def to_hwmodel_dict(self) -> dict[str, Any]:
        """hwmodel's ModuleSpec form. hwmodel has no per-tensor scale: "tensor" is written as per
        channel (``group_size: null``), which overstates its scale bytes by ``2·(N − 1)``."""
        return {"bits": self.bits,
                "group_size": self.group_size if self.granularity == "group" else None,
                "symmetric": self.symmetric}

    def __str__(self) -> str:
        g = {"tensor": "t", "channel": "c"}.get(self.granularity, f"g{self.group_size}")
        return f"w{self.bits}{'s' if self.symmetric else 'a'}{g}{'m' if self.clip == 'mse' else ''}"


# ================================================================================================
# QuantPlan
# ================================================================================================


def _check_value(key: str, v: Any) -> QuantSpec | None:
    if v is None or isinstance(v, QuantSpec):
        return v
    raise PlanError(f"plan key {key!r}: expected a QuantSpec or None (keep), got "
                    f"{type(v).__name__} {v!r}")


@dataclass(frozen=True, eq=False)
class QuantPlan:
    """Module name / ``re:`` pattern → :class:`QuantSpec` or ``None`` (keep), plus a default.

    ``QuantPlan({"_default": QuantSpec(4, group_size=64), "re:.*\\.ffn\\..*": QuantSpec(8),
    "head": None})``. A ``_default`` entry in ``entries`` becomes :attr:`default`. Equality
    compares the entries *in order* (the order of ``re:`` keys matters).
    """

    entries: Mapping[str, QuantSpec | None] = field(default_factory=dict)
    default: QuantSpec | None = None  # modules no key matches; None = keep original precision

    def __post_init__(self) -> None:
        if not isinstance(self.entries, Mapping):
            raise PlanError(f"plan entries must be a mapping, got {type(self.entries).__name__}")
        default = _check_value(DEFAULT_KEY, self.default)
        entries: dict[str, QuantSpec | None] = {}
        patterns: list[tuple[str, re.Pattern[str], QuantSpec | None]] = []
        for k, v in self.entries.items():
            if not isinstance(k, str) or not k:
                raise PlanError(f"plan keys must be non-empty strings, got {k!r}")
            v = _check_value(k, v)
            if k == DEFAULT_KEY:
                if default is not None and v != default:
                    raise PlanError(f"plan key {DEFAULT_KEY!r} given twice (in entries and as "
                                    "default) with different specs")
                default = v
                continue
            if k.startswith(REGEX_PREFIX):
                try:
                    patterns.append((k, re.compile(k[len(REGEX_PREFIX):]), v))
                except re.error as exc:
                    raise PlanError(f"plan key {k!r}: bad regular expression: {exc}") from None
            entries[k] = v
        object.__setattr__(self, "entries", MappingProxyType(entries))
        object.__setattr__(self, "default", default)
        object.__setattr__(self, "_patterns", tuple(patterns))

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def uniform(cls, spec: QuantSpec | None) -> QuantPlan:
        """Every quantizable module with ``spec`` (None: keep everything)."""
        return cls({}, spec)

    def updated(self, entries: Mapping[str, QuantSpec | None]) -> QuantPlan:
        """A new plan with ``entries`` added or replaced (existing keys keep their position)."""
        merged: dict[str, QuantSpec | None] = {DEFAULT_KEY: self.default, **self.entries}
        merged.update(entries)
        return QuantPlan(merged)

    # ---- lookup --------------------------------------------------------------------------------
    def spec_for(self, name: str) -> QuantSpec | None:
        """Exact name > first matching ``re:`` key (insertion order, full match) > default."""
        if name in self.entries and not name.startswith(REGEX_PREFIX):
            return self.entries[name]
        for _key, pattern, spec in self._patterns:  # type: ignore[attr-defined]
            if pattern.fullmatch(name):
                return spec
        return self.default

    def resolve(self, module_names: Iterable[str], *,
                strict: bool = True) -> dict[str, QuantSpec | None]:
        """``{name: spec or None}`` for every name, in the given order.

        ``strict``: an exact key that names none of ``module_names`` is an error (a plan for
        another model, or a typo) — the message names the key.
        """
        names = list(module_names)
        if strict:
            known = set(names)
            unknown = [k for k in self.entries if not k.startswith(REGEX_PREFIX) and k not in known]
            if unknown:
                shown = ", ".join(map(repr, unknown[:5])) + (" ..." if len(unknown) > 5 else "")
                raise PlanError(f"plan key(s) {shown} name no quantizable module of the model "
                                f"({len(names)} quantizable modules, e.g. "
                                f"{', '.join(map(repr, names[:3]))})")
        return {n: self.spec_for(n) for n in names}

    # ---- (de)serialization ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "default": None if self.default is None else self.default.to_dict(),
            "modules": {k: None if v is None else v.to_dict() for k, v in self.entries.items()},
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "plan") -> QuantPlan:
        if not isinstance(d, Mapping):
            raise PlanError(f"{where}: a plan is a JSON object, got {type(d).__name__}")
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise FormatVersionError(f"{where}: plan format_version must be {FORMAT_VERSION}, "
                                     f"got {version!r}")
        unknown = sorted(set(d) - {"format_version", "default", "modules"})
        if unknown:
            raise PlanError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")
        mods = d.get("modules", {})
        if not isinstance(mods, Mapping):
            raise PlanError(f"{where}: 'modules' must be an object, got {type(mods).__name__}")
        entries: dict[str, QuantSpec | None] = {}
        for k, v in mods.items():
            entries[k] = None if v is None else QuantSpec.from_dict(v, f"{where}: plan key {k!r}")
        default = d.get("default")
        if default is not None:
            default = QuantSpec.from_dict(default, f"{where}: plan key 'default'")
        if DEFAULT_KEY in entries:
            raise PlanError(f"{where}: the default goes in 'default', not in "
                            f"modules[{DEFAULT_KEY!r}]")
        return cls(entries, default)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "plan") -> QuantPlan:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PlanError(f"{where}: not valid JSON: {exc}") from None
        return cls.from_dict(doc, where)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_json` to ``path`` atomically; returns the path."""
        return atomic_write_bytes(path, self.to_json().encode("utf-8"))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> QuantPlan:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise PlanError(f"{p}: cannot read plan: {exc.strerror}") from None
        return cls.from_json(text, str(p))

    def to_hwmodel_dict(self) -> dict[str, Any]:
        """hwmodel's plan format (``hwmodel.plan.read_plan_json``); see
        :meth:`QuantSpec.to_hwmodel_dict` for how per-tensor specs are written."""
        return {
            "format_version": HWMODEL_FORMAT_VERSION,
            "default": None if self.default is None else self.default.to_hwmodel_dict(),
            "modules": {k: None if v is None else v.to_hwmodel_dict()
                        for k, v in self.entries.items()},
        }

    def to_hwmodel_json(self) -> str:
        return json.dumps(self.to_hwmodel_dict(), indent=2) + "\n"

    def save_hwmodel(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_hwmodel_json` to ``path`` atomically."""
        return atomic_write_bytes(path, self.to_hwmodel_json().encode("utf-8"))

    # ---- equality ------------------------------------------------------------------------------
    def _key(self) -> tuple[Any, ...]:
        return (tuple(self.entries.items()), self.default)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantPlan):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (executors ship plans to workers)
        return (QuantPlan, (dict(self.entries), self.default))

    def __repr__(self) -> str:
        items = ", ".join(f"{k!r}: {v!s}" for k, v in self.entries.items())
        return f"QuantPlan({{{items}}}, default={self.default!s})"


# ================================================================================================
# Quantizable modules and the memory footprint
# ================================================================================================


def quantizable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Fully-qualified name → module of every quantizable leaf, in model order.

    Uses ``model.hierarchy()`` (block → leaf names) when the model has one (SpikeGPT), else every
    ``nn.Linear`` and ``nn.Embedding``. A leaf must be an ``nn.Linear`` (weight ``(out, in)``) or
    an ``nn.Embedding`` (weight ``(V, C)``: a row per token, C is the "input" dimension).
    """
    from torch import nn

    allowed = (nn.Linear, nn.Embedding)
    if callable(getattr(model, "hierarchy", None)):
        modules = dict(model.named_modules())
        out: dict[str, nn.Module] = {}
        for block, leaves in model.hierarchy().items():
            for name in leaves:
                m = modules.get(name)
                if m is None:
                    raise PlanError(f"hierarchy block {block!r} names module {name!r}, which the "
                                    "model does not have")
                if not isinstance(m, allowed):
                    raise PlanError(f"quantizable module {name!r} is a {type(m).__name__}; only "
                                    "nn.Linear and nn.Embedding weights can be quantized")
                out[name] = m
        return out
    return {n: m for n, m in model.named_modules() if isinstance(m, allowed)}


@dataclass(frozen=True)
class ModuleFootprint:
    """Bytes of one quantizable module's weight under a plan (spec None: fp32 kept)."""

    name: str
    shape: tuple[int, int]  # (N, K) = (out, in), or (V, C) for an embedding
    spec: QuantSpec | None
    packed_bytes: int  # packed codes, or the weight at its stored precision when kept
    scale_bytes: int
    zero_point_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.packed_bytes + self.scale_bytes + self.zero_point_bytes


@dataclass(frozen=True)
class Footprint:
    """Memory footprint of a model under a plan, by component (bytes).

    ``total = packed weights + scales + zero points + every non-quantized parameter at its stored
    precision`` (kept weights of quantizable modules, biases, LayerNorms, time parameters).
    ``fp32_bytes`` is the baseline: every parameter in fp32. Runtime state is not included.
    """

    packed_weight_bytes: int
    scale_bytes: int
    zero_point_bytes: int
    kept_bytes: int  # non-quantized parameters at their stored precision
    fp32_bytes: int  # baseline: all parameters at 4 bytes
    modules: Mapping[str, ModuleFootprint]  # every quantizable module, quantized or kept

    @property
    def total_bytes(self) -> int:
        return self.packed_weight_bytes + self.scale_bytes + self.zero_point_bytes + self.kept_bytes

    @property
    def memory_reduction(self) -> float:
        """``1 − total / fp32`` (0 for a model without parameters)."""
        return 1.0 - self.total_bytes / self.fp32_bytes if self.fp32_bytes else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "packed_weight_bytes": self.packed_weight_bytes,
            "scale_bytes": self.scale_bytes,
            "zero_point_bytes": self.zero_point_bytes,
            "kept_bytes": self.kept_bytes,
            "total_bytes": self.total_bytes,
            "fp32_bytes": self.fp32_bytes,
            "memory_reduction": self.memory_reduction,
            "modules": {n: {"shape": list(m.shape), "spec": None if m.spec is None else
                            m.spec.to_dict(), "packed_bytes": m.packed_bytes,
                            "scale_bytes": m.scale_bytes, "zero_point_bytes": m.zero_point_bytes}
                        for n, m in self.modules.items()},
        }


def footprint(model: nn.Module, plan: QuantPlan, *, strict: bool = True) -> Footprint:
    """Bytes of ``model`` quantized with ``plan`` (see :class:`Footprint`).

    A quantized module's weight counts as packed codes ``N·ceil(K·b/8)`` plus fp16 scales (and
    zero points); everything else — its bias, kept weights, all other parameters — at
    ``numel · element_size`` of the stored tensor. Shared parameters count once.
    """
    leaves = quantizable_modules(model)
    specs = plan.resolve(leaves, strict=strict)
    quantized_ids: set[int] = set()
    mods: dict[str, ModuleFootprint] = {}
    packed = scales = zeros = 0
    for name, spec in specs.items():
        w = leaves[name].weight
        n, k = int(w.shape[0]), int(w.shape[1])
        if spec is None:
            mods[name] = ModuleFootprint(name, (n, k), None, w.numel() * w.element_size(), 0, 0)
            continue
        if id(w) in quantized_ids:
            raise PlanError(f"module {name!r} shares its weight with another quantized module")
        quantized_ids.add(id(w))
        p, s, z = spec.storage_bytes(n, k)
        mods[name] = ModuleFootprint(name, (n, k), spec, p, s, z)
        packed, scales, zeros = packed + p, scales + s, zeros + z
    kept = fp32 = 0
    for _, param in model.named_parameters():  # deduplicated by torch
        fp32 += FP32_BYTES * param.numel()
        if id(param) not in quantized_ids:
            kept += param.numel() * param.element_size()
    return Footprint(packed, scales, zeros, kept, fp32, mods)
