"""Device presets: TOML data files → validated, frozen :class:`Device` objects.

A preset is a TOML file (see ``hwmodel/devices/*.toml`` and ``docs/hwmodel.md``). Units are part of
every key name (``clock_hz``, ``capacity_bytes``, ``read_pj_per_byte``, ``static_w``); energies are
written in picojoules in the file and converted to joules **once**, here, so that every
``Device`` field ending in ``_j`` is in joules and every ``_s`` field in seconds.

Bit-width dependence of operation energy (used for integer weights):

* adders are linear in their width: ``E_add(b)`` is the piecewise-linear curve through
  ``(0, 0)``, ``(8, int8_add)``, ``(32, int32_add)``, extended past 32 bits with the last slope;
* multipliers are quadratic: ``E_mult(b_w, b_a)`` is linear in the product of the operand widths
  ``p = b_w·b_a`` through ``(0, 0)``, ``(64, int8_mult)``, ``(1024, int32_mult)``, so a square
  ``b×b`` multiplier scales with ``b²``.

Both curves pass exactly through the tabulated points of the preset (Horowitz's 8- and 32-bit
figures in ``cmos45``), so nothing is fitted.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hwmodel.errors import PresetError

__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    "Compute",
    "Device",
    "MemoryLevel",
    "Neuromorphic",
    "OpEnergies",
    "device_from_toml",
    "list_presets",
    "load_device",
    "preset_path",
]

FORMAT_VERSION = 1
KINDS = ("asic", "npu", "mcu", "gpu", "neuromorphic")
PJ = 1e-12  # joules per picojoule: the one conversion from preset units

_MAX_INT_BITS = 16  # widest integer weight the cost model accepts


# --------------------------------------------------------------------------------------------
# Dataclasses (validated in __post_init__; SI units in the field names)
# --------------------------------------------------------------------------------------------


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise PresetError(msg)


@dataclass(frozen=True)
class MemoryLevel:
    """One level of the memory hierarchy (on-chip SRAM, embedded flash, DRAM, ...)."""

    name: str  # unique within the device, e.g. "sram"
    on_chip: bool  # counted as on-chip memory energy (else off-chip)
    capacity_bytes: float  # usable capacity for model data
    read_j_per_byte: float  # energy to read one byte
    write_j_per_byte: float  # energy to write one byte (state updates)
    bandwidth_bytes_per_s: float  # sustained read bandwidth seen by the compute units
    holds_weights: bool = True  # parameters may be placed here
    holds_state: bool = True  # writable: recurrent state may be placed here

    def __post_init__(self) -> None:
        _require(bool(self.name), "memory level needs a non-empty name")
        _require(self.capacity_bytes > 0, f"memory {self.name}: capacity_bytes must be > 0")
        _require(self.read_j_per_byte >= 0, f"memory {self.name}: read energy must be >= 0")
        _require(self.write_j_per_byte >= 0, f"memory {self.name}: write energy must be >= 0")
        _require(self.bandwidth_bytes_per_s > 0, f"memory {self.name}: bandwidth must be > 0")


@dataclass(frozen=True)
class OpEnergies:
    """Energy per arithmetic operation, in joules, with the bit-width laws of the module doc."""

    int8_add_j: float
    int32_add_j: float
    int8_mult_j: float
    int32_mult_j: float
    fp32_add_j: float
    fp32_mult_j: float
    elementwise_op_j: float  # one element-wise op of the WKV recurrence (default: one fp32 MAC)
    neuron_update_j: float  # one LIF update (default: 3 fp32 adds + 1 fp32 mult)
    fp16_add_j: float | None = None  # informational (shown by --show), not used by the model
    fp16_mult_j: float | None = None

    def __post_init__(self) -> None:
        for name in ("int8_add_j", "int32_add_j", "int8_mult_j", "int32_mult_j", "fp32_add_j",
                     "fp32_mult_j", "elementwise_op_j", "neuron_update_j"):
            _require(getattr(self, name) >= 0, f"energy: {name} must be >= 0")
        _require(self.int8_add_j <= self.int32_add_j,
                 "energy: int8_add_pj must not exceed int32_add_pj (adders grow with width)")
        _require(self.int8_mult_j <= self.int32_mult_j,
                 "energy: int8_mult_pj must not exceed int32_mult_pj (multipliers grow with width)")

    def add_j(self, bits: float) -> float:
        """Energy of one ``bits``-wide integer addition (linear in the width)."""
        return _piecewise_linear(bits, (8.0, self.int8_add_j), (32.0, self.int32_add_j))

    def mult_j(self, weight_bits: float, act_bits: float) -> float:
        """Energy of one ``weight_bits × act_bits`` integer multiply (linear in the bit product)."""
        return _piecewise_linear(weight_bits * act_bits, (64.0, self.int8_mult_j),
                                 (1024.0, self.int32_mult_j))

    @property
    def fp32_mac_j(self) -> float:
        """One fp32 multiply-accumulate (E_MAC of the SNN papers: 3.7 + 0.9 = 4.6 pJ at 45 nm)."""
        return self.fp32_mult_j + self.fp32_add_j

    @property
    def fp32_ac_j(self) -> float:
        """One fp32 accumulate (E_AC of the SNN papers: 0.9 pJ at 45 nm)."""
        return self.fp32_add_j


def _piecewise_linear(x: float, p1: tuple[float, float], p2: tuple[float, float]) -> float:
    """The line through (0, 0), p1, p2, extended past p2 with the p1→p2 slope."""
    (x1, y1), (x2, y2) = p1, p2
    if x <= x1:
        return y1 * x / x1
    return y1 + (y2 - y1) * (x - x1) / (x2 - x1)


@dataclass(frozen=True)
class Compute:
    """Throughput of a clocked (non-neuromorphic) device."""

    clock_hz: float
    int_macs_per_cycle: Mapping[int, float]  # native integer weight width → MACs per cycle
    fp32_macs_per_cycle: float  # fp32 ("keep") layers, possibly on a host-CPU fallback
    activation_bits: int  # width of real-valued activations fed to integer MACs
    accumulator_bits: int  # 0 = sized per layer (b_w + b_a + ceil(log2 K), capped at 32)
    skips_zero_spikes: bool  # spike inputs cost time only for the spikes (event-driven)
    elementwise_ops_per_cycle: float
    neuron_updates_per_cycle: float
    arbitrary_int_width: bool = False  # any width 1..16 runs at its own width (ideal datapath)

    def __post_init__(self) -> None:
        _require(self.clock_hz > 0, "compute.clock_hz must be > 0")
        _require(len(self.int_macs_per_cycle) > 0, "compute.int_macs_per_cycle must list a width")
        widths = sorted(self.int_macs_per_cycle)
        for w in widths:
            _require(1 <= w <= _MAX_INT_BITS,
                     f"compute.int_macs_per_cycle: width {w} outside 1..{_MAX_INT_BITS}")
            _require(self.int_macs_per_cycle[w] > 0,
                     f"compute.int_macs_per_cycle.{w} must be > 0")
        rates = [self.int_macs_per_cycle[w] for w in widths]
        _require(all(a >= b for a, b in zip(rates, rates[1:])),
                 "compute.int_macs_per_cycle must not increase with the width "
                 "(the model assumes narrower formats are at least as fast)")
        _require(self.fp32_macs_per_cycle > 0, "compute.fp32_macs_per_cycle must be > 0")
        _require(self.fp32_macs_per_cycle <= rates[-1],
                 "compute.fp32_macs_per_cycle must not exceed the widest integer rate")
        _require(1 <= self.activation_bits <= 32, "compute.activation_bits must be in 1..32")
        _require(0 <= self.accumulator_bits <= 64, "compute.accumulator_bits must be in 0..64")
        _require(self.elementwise_ops_per_cycle > 0, "compute.elementwise_ops_per_cycle must be > 0")
        _require(self.neuron_updates_per_cycle > 0, "compute.neuron_updates_per_cycle must be > 0")
        object.__setattr__(self, "int_macs_per_cycle",
                           MappingProxyType({w: float(self.int_macs_per_cycle[w]) for w in widths}))

    def compute_width(self, bits: int) -> int | None:
        """Width at which a ``bits``-bit integer weight is computed; None → fp32 fallback path."""
        widths = list(self.int_macs_per_cycle)
        if self.arbitrary_int_width:
            return bits if bits <= max(widths) else None
        for w in widths:
            if w >= bits:
                return w
        return None

    def int_macs_per_s(self, width: int) -> float:
        """MAC throughput for a compute width (rate of the narrowest listed width ≥ it)."""
        for w, rate in self.int_macs_per_cycle.items():
            if w >= width:
                return rate * self.clock_hz
        raise PresetError(f"no integer format of width >= {width}")  # guarded by compute_width


@dataclass(frozen=True)
class Neuromorphic:
    """Event-driven many-core chip: energy and time per synaptic operation and neuron update."""

    cores: int
    core_memory_bytes: float  # synaptic memory per core; a core holds weights of one module
    weight_bits: tuple[int, ...]  # native synaptic weight widths
    synop_j: float  # one binary-spike synaptic operation (accumulate)
    graded_synop_j: float  # one real-valued (graded-spike) synaptic operation
    neuron_update_j: float
    elementwise_op_j: float
    synop_time_s: float  # per core; cores work in parallel
    neuron_update_time_s: float
    elementwise_op_time_s: float

    def __post_init__(self) -> None:
        _require(self.cores >= 1, "neuromorphic.cores must be >= 1")
        _require(self.core_memory_bytes > 0, "neuromorphic.core_memory_bytes must be > 0")
        _require(len(self.weight_bits) > 0, "neuromorphic.weight_bits must list a width")
        for b in self.weight_bits:
            _require(1 <= b <= _MAX_INT_BITS,
                     f"neuromorphic.weight_bits: {b} outside 1..{_MAX_INT_BITS}")
        for name in ("synop_j", "graded_synop_j", "neuron_update_j", "elementwise_op_j"):
            _require(getattr(self, name) >= 0, f"neuromorphic: {name} must be >= 0")
        for name in ("synop_time_s", "neuron_update_time_s", "elementwise_op_time_s"):
            _require(getattr(self, name) > 0, f"neuromorphic: {name} must be > 0")
        object.__setattr__(self, "weight_bits", tuple(sorted(set(self.weight_bits))))


@dataclass(frozen=True)
class Device:
    """A validated device preset. Build one with :func:`load_device`."""

    name: str
    kind: str  # one of KINDS; only "neuromorphic" changes the equations
    description: str
    memory: tuple[MemoryLevel, ...]
    static_power_w: float
    energy: OpEnergies | None = None  # required unless kind == "neuromorphic"
    compute: Compute | None = None  # required unless kind == "neuromorphic"
    neuromorphic: Neuromorphic | None = None  # required iff kind == "neuromorphic"
    source_path: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _require(self.kind in KINDS, f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        _require(len(self.memory) > 0, "a device needs at least one [[memory]] level")
        names = [m.name for m in self.memory]
        _require(len(set(names)) == len(names), f"memory level names must be unique: {names}")
        _require(any(m.holds_weights for m in self.memory),
                 "at least one [[memory]] level must have holds_weights = true")
        _require(any(m.holds_state for m in self.memory),
                 "at least one [[memory]] level must have holds_state = true")
        _require(self.static_power_w >= 0, "power.static_w must be >= 0")
        if self.kind == "neuromorphic":
            _require(self.neuromorphic is not None, "kind = 'neuromorphic' needs [neuromorphic]")
        else:
            _require(self.compute is not None, f"kind = {self.kind!r} needs [compute]")
            _require(self.energy is not None, f"kind = {self.kind!r} needs [energy]")
            _require(self.neuromorphic is None,
                     "[neuromorphic] is only allowed with kind = 'neuromorphic'")

    @property
    def is_neuromorphic(self) -> bool:
        return self.kind == "neuromorphic"

    def with_memory_capacity(self, level: str, capacity_bytes: float) -> Device:
        """A copy with one memory level resized (what-if studies, property tests)."""
        levels = []
        found = False
        for m in self.memory:
            if m.name == level:
                found = True
                m = MemoryLevel(m.name, m.on_chip, float(capacity_bytes), m.read_j_per_byte,
                                m.write_j_per_byte, m.bandwidth_bytes_per_s, m.holds_weights,
                                m.holds_state)
            levels.append(m)
        if not found:
            raise PresetError(f"{self.name}: no memory level named {level!r}")
        return Device(self.name, self.kind, self.description, tuple(levels), self.static_power_w,
                      self.energy, self.compute, self.neuromorphic, self.source_path)

    def summary(self) -> str:
        """A human-readable description in SI units (what ``python -m hwmodel --show`` prints)."""
        lines = [f"{self.name} ({self.kind}): {self.description}"]
        if self.compute is not None:
            c = self.compute
            rates = ", ".join(f"int{w}: {r:g}" for w, r in c.int_macs_per_cycle.items())
            lines += [
                f"  clock: {c.clock_hz / 1e6:g} MHz",
                f"  MACs/cycle: {rates}; fp32: {c.fp32_macs_per_cycle:g}"
                + ("  (any integer width up to the widest listed)" if c.arbitrary_int_width else ""),
                f"  activations: {c.activation_bits} bit; accumulator: "
                + (f"{c.accumulator_bits} bit" if c.accumulator_bits else "sized per layer"),
                f"  spike inputs skip zeros: {c.skips_zero_spikes}",
            ]
        if self.energy is not None:
            e = self.energy
            lines += [
                "  energy/op (pJ): "
                + f"int8 add {e.int8_add_j / PJ:g}, int32 add {e.int32_add_j / PJ:g}, "
                + f"int8 mult {e.int8_mult_j / PJ:g}, int32 mult {e.int32_mult_j / PJ:g}, "
                + f"fp32 add {e.fp32_add_j / PJ:g}, fp32 mult {e.fp32_mult_j / PJ:g}",
                f"  E_MAC(fp32) {e.fp32_mac_j / PJ:g} pJ, E_AC(fp32) {e.fp32_ac_j / PJ:g} pJ, "
                f"element-wise op {e.elementwise_op_j / PJ:g} pJ, "
                f"neuron update {e.neuron_update_j / PJ:g} pJ",
            ]
        if self.neuromorphic is not None:
            n = self.neuromorphic
            lines += [
                f"  cores: {n.cores} × {n.core_memory_bytes / 1024:g} KiB; weight bits "
                f"{', '.join(map(str, n.weight_bits))}",
                f"  synaptic op {n.synop_j / PJ:g} pJ ({n.synop_time_s * 1e9:g} ns), graded "
                f"{n.graded_synop_j / PJ:g} pJ, neuron update {n.neuron_update_j / PJ:g} pJ "
                f"({n.neuron_update_time_s * 1e9:g} ns), element-wise {n.elementwise_op_j / PJ:g} pJ",
            ]
        for m in self.memory:
            lines.append(
                f"  memory {m.name}: {'on' if m.on_chip else 'off'}-chip, "
                f"{_fmt_bytes(m.capacity_bytes)}, read {m.read_j_per_byte / PJ:g} pJ/B, "
                f"write {m.write_j_per_byte / PJ:g} pJ/B, {m.bandwidth_bytes_per_s / 1e9:g} GB/s"
                + ("" if m.holds_weights else ", no weights")
                + ("" if m.holds_state else ", read-only")
            )
        lines.append(f"  static power: {self.static_power_w:g} W")
        return "\n".join(lines)


def _fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n:g} B"


# --------------------------------------------------------------------------------------------
# TOML schema and loading
# --------------------------------------------------------------------------------------------

# key → (kind, unit/meaning used in messages, required, default)
#   kinds: "pos" (> 0 number), "nonneg" (>= 0 number), "int", "bool", "str", "intlist"
_Spec = tuple[str, str, bool, Any]

_TOP: dict[str, _Spec] = {
    "format_version": ("int", "format version", True, None),
    "name": ("str", "preset name", True, None),
    "kind": ("str", f"one of {', '.join(KINDS)}", True, None),
    "description": ("str", "one-line description", True, None),
}
_COMPUTE: dict[str, _Spec] = {
    "clock_hz": ("pos", "Hz", True, None),
    "fp32_macs_per_cycle": ("pos", "MACs per cycle", True, None),
    "activation_bits": ("int", "bits", True, None),
    "accumulator_bits": ("int", "bits (0 = sized per layer)", True, None),
    "skips_zero_spikes": ("bool", "true/false", True, None),
    "elementwise_ops_per_cycle": ("pos", "ops per cycle", True, None),
    "neuron_updates_per_cycle": ("pos", "updates per cycle", True, None),
    "arbitrary_int_width": ("bool", "true/false", False, False),
    # int_macs_per_cycle is a sub-table, checked separately
}
_ENERGY: dict[str, _Spec] = {
    "int8_add_pj": ("nonneg", "pJ", True, None),
    "int32_add_pj": ("nonneg", "pJ", True, None),
    "int8_mult_pj": ("nonneg", "pJ", True, None),
    "int32_mult_pj": ("nonneg", "pJ", True, None),
    "fp32_add_pj": ("nonneg", "pJ", True, None),
    "fp32_mult_pj": ("nonneg", "pJ", True, None),
    "fp16_add_pj": ("nonneg", "pJ", False, None),
    "fp16_mult_pj": ("nonneg", "pJ", False, None),
    "elementwise_op_pj": ("nonneg", "pJ", False, None),
    "neuron_update_pj": ("nonneg", "pJ", False, None),
}
_NEURO: dict[str, _Spec] = {
    "cores": ("int", "cores", True, None),
    "core_memory_bytes": ("pos", "bytes", True, None),
    "weight_bits": ("intlist", "list of bit widths", True, None),
    "synop_pj": ("nonneg", "pJ", True, None),
    "graded_synop_pj": ("nonneg", "pJ", True, None),
    "neuron_update_pj": ("nonneg", "pJ", True, None),
    "elementwise_op_pj": ("nonneg", "pJ", True, None),
    "synop_time_s": ("pos", "s", True, None),
    "neuron_update_time_s": ("pos", "s", True, None),
    "elementwise_op_time_s": ("pos", "s", True, None),
}
_MEMORY: dict[str, _Spec] = {
    "name": ("str", "level name", True, None),
    "on_chip": ("bool", "true/false", True, None),
    "capacity_bytes": ("pos", "bytes", True, None),
    "read_pj_per_byte": ("nonneg", "pJ per byte", True, None),
    "write_pj_per_byte": ("nonneg", "pJ per byte", True, None),
    "bandwidth_bytes_per_s": ("pos", "bytes per second", True, None),
    "holds_weights": ("bool", "true/false", False, True),
    "holds_state": ("bool", "true/false", False, True),
}
_POWER: dict[str, _Spec] = {
    "static_w": ("nonneg", "W", True, None),
}
_SECTIONS = ("compute", "energy", "neuromorphic", "memory", "power")


class _Checker:
    """Reads one TOML document, naming the file and the full key in every error."""

    def __init__(self, label: str) -> None:
        self.label = label

    def fail(self, key: str, msg: str) -> PresetError:
        return PresetError(f"{self.label}: {key}: {msg}")

    def section(self, table: Any, prefix: str, spec: dict[str, _Spec],
                extra: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(table, dict):
            raise self.fail(prefix, "must be a table")
        for key in table:
            if key not in spec and key not in extra:
                raise self.fail(f"{prefix}.{key}" if prefix else key,
                                _unknown_key_message(key, list(spec) + list(extra)))
        out: dict[str, Any] = {}
        for key, (kind, unit, required, default) in spec.items():
            full = f"{prefix}.{key}" if prefix else key
            if key not in table:
                if required:
                    raise self.fail(full, f"missing (expected {unit})")
                out[key] = default
                continue
            out[key] = self.value(full, table[key], kind, unit)
        return out

    def value(self, full: str, v: Any, kind: str, unit: str) -> Any:
        if kind in ("pos", "nonneg"):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                hint = " (units belong in the key name, the value is a plain number)" \
                    if isinstance(v, str) else ""
                raise self.fail(full, f"must be a number in {unit}, got {v!r}{hint}")
            if not math.isfinite(v):
                raise self.fail(full, f"must be finite, got {v!r}")
            if kind == "pos" and v <= 0:
                raise self.fail(full, f"must be > 0 ({unit}), got {v!r}")
            if kind == "nonneg" and v < 0:
                raise self.fail(full, f"must be >= 0 ({unit}), got {v!r}")
            return float(v)
        if kind == "int":
            if isinstance(v, bool) or not isinstance(v, int):
                raise self.fail(full, f"must be an integer ({unit}), got {v!r}")
            if v < 0:
                raise self.fail(full, f"must be >= 0 ({unit}), got {v!r}")
            return v
        if kind == "bool":
            if not isinstance(v, bool):
                raise self.fail(full, f"must be true or false, got {v!r}")
            return v
        if kind == "str":
            if not isinstance(v, str) or not v:
                raise self.fail(full, f"must be a non-empty string ({unit}), got {v!r}")
            return v
        if kind == "intlist":
            if not isinstance(v, list) or not v or not all(
                    isinstance(x, int) and not isinstance(x, bool) for x in v):
                raise self.fail(full, f"must be a non-empty list of integers ({unit}), got {v!r}")
            return tuple(v)
        raise AssertionError(kind)


_UNIT_TOKENS = frozenset({
    "hz", "khz", "mhz", "ghz", "b", "byte", "bytes", "kb", "kib", "mb", "mib", "gb", "gib",
    "j", "pj", "nj", "uj", "fj", "mj", "w", "mw", "uw", "kw", "s", "ms", "us", "ns", "ps",
})


def _unit_free(key: str) -> str:
    return "_".join("<unit>" if part in _UNIT_TOKENS else part for part in key.lower().split("_"))


def _unknown_key_message(key: str, known: list[str]) -> str:
    """'unknown key', with a hint when the key is a known one written with other units."""
    same = [k for k in known if _unit_free(k) == _unit_free(key)]
    if same:
        return (f"unknown key; did you mean {same[0]!r}? Units are part of the key name: give "
                f"the value in the units {same[0]!r} names")
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return f"unknown key; expected one of: {', '.join(sorted(known))}"


def _parse(doc: dict[str, Any], label: str) -> Device:
    ck = _Checker(label)
    top = ck.section(doc, "", _TOP, extra=_SECTIONS)
    if top["format_version"] != FORMAT_VERSION:
        raise ck.fail("format_version", f"must be {FORMAT_VERSION}, got {top['format_version']}")
    kind = top["kind"]
    if kind not in KINDS:
        raise ck.fail("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    neuro = kind == "neuromorphic"

    def need(section: str, wanted: bool) -> None:
        if wanted and section not in doc:
            raise ck.fail(section, f"missing section [{section}] (required for kind = {kind!r})")
        if not wanted and section in doc:
            raise ck.fail(section, f"section [{section}] is not used with kind = {kind!r}")

    need("compute", not neuro)
    need("energy", not neuro)
    need("neuromorphic", neuro)
    need("power", True)
    if "memory" not in doc:
        raise ck.fail("memory", "missing: at least one [[memory]] level is required")

    try:
        compute = energy = neuromorphic = None
        if not neuro:
            craw = doc["compute"]
            c = ck.section(craw, "compute", _COMPUTE, extra=("int_macs_per_cycle",))
            if "int_macs_per_cycle" not in craw:
                raise ck.fail("compute.int_macs_per_cycle",
                              "missing (a table: integer weight width = MACs per cycle)")
            rates_raw = craw["int_macs_per_cycle"]
            if not isinstance(rates_raw, dict) or not rates_raw:
                raise ck.fail("compute.int_macs_per_cycle",
                              "must be a non-empty table, e.g. [compute.int_macs_per_cycle] 8 = 256")
            rates: dict[int, float] = {}
            for wk, rv in rates_raw.items():
                full = f"compute.int_macs_per_cycle.{wk}"
                if not wk.isdigit():
                    raise ck.fail(full, "keys are integer weight widths in bits, e.g. 8")
                rates[int(wk)] = ck.value(full, rv, "pos", "MACs per cycle")
            compute = Compute(
                clock_hz=c["clock_hz"], int_macs_per_cycle=rates,
                fp32_macs_per_cycle=c["fp32_macs_per_cycle"],
                activation_bits=c["activation_bits"], accumulator_bits=c["accumulator_bits"],
                skips_zero_spikes=c["skips_zero_spikes"],
                elementwise_ops_per_cycle=c["elementwise_ops_per_cycle"],
                neuron_updates_per_cycle=c["neuron_updates_per_cycle"],
                arbitrary_int_width=c["arbitrary_int_width"],
            )
            e = ck.section(doc["energy"], "energy", _ENERGY)
            fp32_mac = e["fp32_mult_pj"] + e["fp32_add_pj"]
            ew = e["elementwise_op_pj"] if e["elementwise_op_pj"] is not None else fp32_mac
            nu = (e["neuron_update_pj"] if e["neuron_update_pj"] is not None
                  else 3 * e["fp32_add_pj"] + e["fp32_mult_pj"])
            energy = OpEnergies(
                int8_add_j=e["int8_add_pj"] * PJ, int32_add_j=e["int32_add_pj"] * PJ,
                int8_mult_j=e["int8_mult_pj"] * PJ, int32_mult_j=e["int32_mult_pj"] * PJ,
                fp32_add_j=e["fp32_add_pj"] * PJ, fp32_mult_j=e["fp32_mult_pj"] * PJ,
                elementwise_op_j=ew * PJ, neuron_update_j=nu * PJ,
                fp16_add_j=None if e["fp16_add_pj"] is None else e["fp16_add_pj"] * PJ,
                fp16_mult_j=None if e["fp16_mult_pj"] is None else e["fp16_mult_pj"] * PJ,
            )
        else:
            n = ck.section(doc["neuromorphic"], "neuromorphic", _NEURO)
            neuromorphic = Neuromorphic(
                cores=n["cores"], core_memory_bytes=n["core_memory_bytes"],
                weight_bits=n["weight_bits"], synop_j=n["synop_pj"] * PJ,
                graded_synop_j=n["graded_synop_pj"] * PJ,
                neuron_update_j=n["neuron_update_pj"] * PJ,
                elementwise_op_j=n["elementwise_op_pj"] * PJ,
                synop_time_s=n["synop_time_s"], neuron_update_time_s=n["neuron_update_time_s"],
                elementwise_op_time_s=n["elementwise_op_time_s"],
            )
        mems = doc["memory"]
        if not isinstance(mems, list) or not mems:
            raise ck.fail("memory", "must be an array of tables ([[memory]] ...)")
        levels = []
        for i, mraw in enumerate(mems):
            m = ck.section(mraw, f"memory[{i}]", _MEMORY)
            levels.append(MemoryLevel(
                name=m["name"], on_chip=m["on_chip"], capacity_bytes=m["capacity_bytes"],
                read_j_per_byte=m["read_pj_per_byte"] * PJ,
                write_j_per_byte=m["write_pj_per_byte"] * PJ,
                bandwidth_bytes_per_s=m["bandwidth_bytes_per_s"],
                holds_weights=m["holds_weights"], holds_state=m["holds_state"],
            ))
        p = ck.section(doc["power"], "power", _POWER)
        return Device(name=top["name"], kind=kind, description=top["description"],
                      memory=tuple(levels), static_power_w=p["static_w"], energy=energy,
                      compute=compute, neuromorphic=neuromorphic)
    except PresetError as exc:
        msg = str(exc)
        if msg.startswith(label + ":"):
            raise
        raise PresetError(f"{label}: {msg}") from None


def _presets_dir() -> Any:
    return resources.files("hwmodel") / "devices"


def list_presets() -> list[str]:
    """Names of the bundled presets (``hwmodel/devices/*.toml``), sorted."""
    return sorted(p.name[:-5] for p in _presets_dir().iterdir() if p.name.endswith(".toml"))


def preset_path(name: str) -> Path:
    """Path of a bundled preset by name."""
    if name not in list_presets():
        raise PresetError(f"unknown device preset {name!r}; presets: {', '.join(list_presets())}")
    return Path(str(_presets_dir() / f"{name}.toml"))


def _resolve(name_or_path: str | Path) -> Path:
    s = str(name_or_path)
    if s in list_presets():
        return preset_path(s)
    p = Path(s)
    if p.is_file():
        return p
    if s.endswith(".toml") or "/" in s or "\\" in s:
        raise PresetError(f"{s}: no such file")
    raise PresetError(f"unknown device {s!r}: not a preset ({', '.join(list_presets())}) "
                      "and not a TOML file")


def load_device(name_or_path: str | Path | Device) -> Device:
    """Load and validate a bundled preset (by name) or a user TOML file (by path).

    Raises :class:`PresetError` naming the file and the key for any missing key, unknown key
    (including a unit other than the one in the key name), wrong type or out-of-range number.
    """
    if isinstance(name_or_path, Device):
        return name_or_path
    path = _resolve(name_or_path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise PresetError(f"{path.name}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise PresetError(f"{path}: cannot read: {exc.strerror}") from None
    dev = _parse(doc, path.name)
    object.__setattr__(dev, "source_path", str(path))
    return dev


def device_from_toml(text: str, label: str = "<string>") -> Device:
    """Parse a preset from TOML text (tests, generated presets)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PresetError(f"{label}: not valid TOML: {exc}") from None
    return _parse(doc, label)
