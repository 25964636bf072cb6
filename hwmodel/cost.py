"""Cost of a quantization plan on a device: memory, energy, latency, power.

Two entry points share one implementation:

* :class:`CostModel` precomputes, for every module and every bit width, its stored bytes, read
  bytes, compute energy and compute time (tables of shape ``(n_modules, 33)``). Scoring a matrix
  of plans (``n_plans × n_modules`` bit widths, 0 or 32 = keep fp32) is then a handful of
  gathers, a matrix product and a few reductions: :meth:`CostModel.score`.
* :func:`cost` scores one plan and returns a :class:`CostReport` with per-module, per-block,
  per-memory-level and per-component breakdowns.

Equations (per unit of work, i.e. per token or per sequence; docs/hwmodel.md has the full list):

* memory: weights ``N·ceil(K·b/8)`` + fp16 scales/zero points + other parameters + state;
* placement: memory levels sorted by read energy; the state goes first into writable levels;
  parameters fill the rest in order of read intensity (reads per stored byte), each intensity
  class spread uniformly over the address range it occupies; bytes beyond the last level do not
  fit (they are charged at the last level's cost and ``fits`` is False);
* energy = compute + on-chip memory + off-chip memory + static power × latency;
* latency = Σ_modules max(compute time, memory time) + other-parameter and state traffic +
  element-wise and neuron-update time; power = energy / latency.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hwmodel.device import Device, load_device
from hwmodel.errors import PlanError
from hwmodel.plan import KEEP, MAX_BITS, Plan, as_plan, scale_bytes, weight_bytes
from hwmodel.workload import ModuleWork, Workload, WorkloadSource, as_workload

__all__ = [
    "BlockCost",
    "CostModel",
    "CostReport",
    "LevelUse",
    "ModuleCost",
    "SCORE_KEYS",
    "VALID_BITS",
    "cost",
]

_NB = 33  # table columns: bit index 0..32 (0 and 32 both mean keep fp32)
VALID_BITS = (KEEP, *range(1, MAX_BITS + 1), 32)
SCORE_KEYS = (
    "weight_bytes", "scale_bytes", "param_bytes", "state_bytes", "memory_bytes",
    "fits", "fits_on_chip", "supported", "cores_needed",
    "compute_energy_j", "onchip_memory_energy_j", "offchip_memory_energy_j",
    "static_energy_j", "energy_j", "latency_s", "power_w",
)


def _is_keep(k: int) -> bool:
    return k == KEEP or k == 32


def _module_compute(m: ModuleWork, k: int, dev: Device) -> tuple[float, float, bool]:
    """(energy_j, time_s, natively supported) of one module at bit index ``k`` per unit."""
    if dev.is_neuromorphic:
        n = dev.neuromorphic
        assert n is not None
        supported = (not _is_keep(k)) and k in n.weight_bits
        if m.op == "embedding":
            return 0.0, 0.0, supported
        spike = m.input_kind == "spikes"
        # Every input event (a spike, or a graded spike for a real value) costs one synaptic op
        # per fan-out synapse; the weight read is part of the op. Independent of the weight width.
        energy = m.events * (n.synop_j if spike else n.graded_synop_j)
        time = m.events * n.synop_time_s / n.cores
        return energy, time, supported
    c, e = dev.compute, dev.energy
    assert c is not None and e is not None
    if m.op == "embedding":
        return 0.0, 0.0, True
    spike = m.input_kind == "spikes"
    width = None if _is_keep(k) else c.compute_width(k)
    if width is None:  # fp32 path: kept weights, or wider than every native integer format
        op_j = e.fp32_ac_j if spike else e.fp32_mac_j
        rate = c.fp32_macs_per_cycle * c.clock_hz
    else:
        log_k = math.ceil(math.log2(m.in_features)) if m.in_features > 1 else 0
        if spike:  # binary input: the weight is added (accumulate-only), no multiply
            acc = c.accumulator_bits or min(32, width + log_k)
            op_j = e.add_j(acc)
        else:
            acc = c.accumulator_bits or min(32, width + c.activation_bits + log_k)
            op_j = e.mult_j(width, c.activation_bits) + e.add_j(acc)
        rate = c.int_macs_per_s(width)
    energy = m.events * op_j  # zero spikes cost no energy (gated / skipped)
    work = m.events if (spike and c.skips_zero_spikes) else m.synaptic_ops
    return energy, work / rate, True


@dataclass(frozen=True)
class ModuleCost:
    """Per-module part of a :class:`CostReport` (per unit of work)."""

    name: str
    block: str
    bits: int  # 0 = keep fp32
    weight_bytes: float
    scale_bytes: float
    read_bytes: float
    compute_energy_j: float
    memory_energy_j: float
    compute_time_s: float
    memory_time_s: float
    latency_s: float  # max(compute, memory): the per-module roofline


@dataclass(frozen=True)
class BlockCost:
    """Per-block totals (modules + element-wise + neuron work of the block)."""

    block: str
    compute_energy_j: float
    memory_energy_j: float
    static_energy_j: float
    latency_s: float

    @property
    def energy_j(self) -> float:
        return self.compute_energy_j + self.memory_energy_j + self.static_energy_j


@dataclass(frozen=True)
class LevelUse:
    """How a plan occupies one memory level."""

    name: str
    on_chip: bool
    capacity_bytes: float
    state_bytes: float
    param_bytes: float
    whole_model_fits: bool  # parameters + state would fit in this level alone


@dataclass(frozen=True)
class CostReport:
    """The cost of one plan on one device (units: bytes, joules, seconds, watts)."""

    device: str
    workload: str
    per: str  # energy, latency are per "token" or per "sequence"
    weight_bytes: float
    scale_bytes: float
    other_param_bytes: float
    state_bytes: float
    param_bytes: float  # weights + scales + other parameters: the model footprint
    memory_bytes: float  # param_bytes + state_bytes
    fp32_param_bytes: float  # footprint of the fp32 checkpoint
    fits: bool
    fits_on_chip: bool
    supported: bool  # every module runs in a format the device supports
    cores_needed: float  # neuromorphic core count (0 for other devices)
    compute_energy_j: float
    spike_synaptic_energy_j: float  # accumulate-only layers (part of compute)
    real_synaptic_energy_j: float  # multiply-accumulate layers (part of compute)
    elementwise_energy_j: float  # WKV (part of compute)
    neuron_energy_j: float  # LIF updates (part of compute)
    onchip_memory_energy_j: float
    offchip_memory_energy_j: float
    static_energy_j: float
    energy_j: float
    latency_s: float
    power_w: float
    levels: tuple[LevelUse, ...]
    modules: tuple[ModuleCost, ...]
    blocks: tuple[BlockCost, ...]

    @property
    def memory_reduction(self) -> float:
        """1 − footprint / fp32 footprint (DESIGN.md)."""
        return 1.0 - self.param_bytes / self.fp32_param_bytes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["memory_reduction"] = self.memory_reduction
        for b, bd in zip(self.blocks, d["blocks"]):
            bd["energy_j"] = b.energy_j
        return d


class CostModel:
    """Precomputed per-module coefficients for fast, vectorized scoring of many plans.

    ``group_size`` and ``symmetric`` fix the scale layout of quantized modules (one value, or one
    per module in workload order); they affect only the scale bytes. ``symmetric_bits``: widths
    costed without zero points whatever ``symmetric`` says (qslm's 1 bit is sign binarization).
    """

    def __init__(self, workload: Workload | WorkloadSource | str, device: Device | str, *,
                 group_size: int | None | Sequence[int | None] = None,
                 symmetric: bool | Sequence[bool] = True,
                 symmetric_bits: Sequence[int] = ()) -> None:
        self.workload = as_workload(workload)
        self.device = load_device(device)
        wl, dev = self.workload, self.device
        mods = wl.modules
        M = len(mods)
        self.n_modules = M
        gs = list(group_size) if isinstance(group_size, Sequence) else [group_size] * M
        sym = list(symmetric) if isinstance(symmetric, Sequence) else [symmetric] * M
        if len(gs) != M or len(sym) != M:
            raise PlanError(f"group_size/symmetric need one value per module ({M})")

        valid = np.zeros(_NB, dtype=bool)
        valid[list(VALID_BITS)] = True
        self._valid = valid
        wb = np.zeros((M, _NB))
        sb = np.zeros((M, _NB))
        rd = np.zeros((M, _NB))
        ec = np.zeros((M, _NB))
        tc = np.zeros((M, _NB))
        sup = np.ones((M, _NB), dtype=bool)
        cores = np.zeros((M, _NB))
        neuro = dev.neuromorphic
        for i, m in enumerate(mods):
            N, K = m.out_features, m.in_features
            for k in VALID_BITS:
                w = weight_bytes(N, K, k)
                s = scale_bytes(N, K, k, gs[i], sym[i] or k in symmetric_bits)
                wb[i, k], sb[i, k] = w, s
                if m.op == "embedding":  # rows read: one packed row + its scales per lookup
                    rd[i, k] = m.calls * (w + s) / N
                else:
                    rd[i, k] = m.weight_reads * (w + s)
                ec[i, k], tc[i, k], sup[i, k] = _module_compute(m, k, dev)
                if neuro is not None:
                    cores[i, k] = math.ceil((w + s) / neuro.core_memory_bytes)
        self._tables = {"weight": wb, "scale": sb, "read": rd, "ec": ec, "tc": tc, "cores": cores}
        self._flat = {k: v.ravel() for k, v in self._tables.items()}
        self._sup_flat = sup.ravel()
        self._row_offset = (np.arange(M) * _NB).astype(np.int64)
        self._is_spike = np.array([m.input_kind == "spikes" and m.op == "linear" for m in mods])

        # ---- memory levels, state placement (plan-independent) --------------------------------
        levels = dev.memory
        order = sorted(range(len(levels)),
                       key=lambda i: (levels[i].read_j_per_byte, -levels[i].bandwidth_bytes_per_s))
        self._levels = [levels[i] for i in order]
        lv = self._levels
        state_in = np.zeros(len(lv))
        remaining = wl.state_bytes
        for i, lev in enumerate(lv):
            if lev.holds_state and remaining > 0:
                put = min(remaining, lev.capacity_bytes)
                state_in[i] = put
                remaining -= put
        self._state_fits = remaining <= 0
        if remaining > 0:  # overflow: charged at the last writable level
            last = max(i for i, lev in enumerate(lv) if lev.holds_state)
            state_in[last] += remaining
        self._state_in = state_in
        self._state_on_chip = all(state_in[i] == 0 or lv[i].on_chip for i in range(len(lv)))
        traffic = wl.state_bytes * wl.state_updates
        frac = state_in / wl.state_bytes if wl.state_bytes > 0 else state_in
        self._state_energy_on = traffic * sum(
            frac[i] * (lv[i].read_j_per_byte + lv[i].write_j_per_byte)
            for i in range(len(lv)) if lv[i].on_chip)
        self._state_energy_off = traffic * sum(
            frac[i] * (lv[i].read_j_per_byte + lv[i].write_j_per_byte)
            for i in range(len(lv)) if not lv[i].on_chip)
        self._state_time = 2.0 * traffic * sum(
            frac[i] / lv[i].bandwidth_bytes_per_s for i in range(len(lv)))

        # weight-holding levels in placement order, with the capacity the state leaves
        widx = [i for i, lev in enumerate(lv) if lev.holds_weights]
        self._wlevels = [lv[i] for i in widx]
        caps = np.array([max(0.0, lv[i].capacity_bytes - state_in[i]) for i in widx])
        self._param_capacity = float(caps.sum())
        bounds = np.concatenate([[0.0], np.cumsum(caps)])
        self._lo = bounds[:-1].copy()
        self._hi = bounds[1:].copy()
        self._hi[-1] = np.inf  # overflow lands in the last level (and fits = False)
        self._read_e = np.array([lev.read_j_per_byte for lev in self._wlevels])
        self._inv_bw = np.array([1.0 / lev.bandwidth_bytes_per_s for lev in self._wlevels])
        self._on = np.array([lev.on_chip for lev in self._wlevels], dtype=float)

        # ---- intensity classes (reads per stored byte), highest first ------------------------
        def intensity(m: ModuleWork) -> float:
            return m.calls / m.out_features if m.op == "embedding" else m.weight_reads
        keys = [round(intensity(m), 12) for m in mods] + [round(wl.other_param_reads, 12)]
        classes = sorted(set(keys), reverse=True)
        cls_idx = np.array([classes.index(x) for x in keys])
        self._n_classes = len(classes)
        self._module_class = cls_idx[:M]
        self._other_class = int(cls_idx[M])
        onehot = np.zeros((M, len(classes)))
        onehot[np.arange(M), self._module_class] = 1.0
        self._onehot = onehot
        self._other_stored = wl.other_param_bytes
        self._other_read = wl.other_param_bytes * wl.other_param_reads

        # ---- plan-independent compute ----------------------------------------------------------
        ew, nu = wl.total_elementwise_ops, wl.total_neuron_updates
        if neuro is not None:
            self._ew_j, self._nu_j = neuro.elementwise_op_j, neuro.neuron_update_j
            self._ew_s = neuro.elementwise_op_time_s / neuro.cores
            self._nu_s = neuro.neuron_update_time_s / neuro.cores
            self._const_cores = math.ceil(
                (wl.other_param_bytes + wl.state_bytes) / neuro.core_memory_bytes)
        else:
            c, e = dev.compute, dev.energy
            assert c is not None and e is not None
            self._ew_j, self._nu_j = e.elementwise_op_j, e.neuron_update_j
            self._ew_s = 1.0 / (c.elementwise_ops_per_cycle * c.clock_hz)
            self._nu_s = 1.0 / (c.neuron_updates_per_cycle * c.clock_hz)
            self._const_cores = 0
        self._const_compute_e = ew * self._ew_j + nu * self._nu_j
        self._const_time = ew * self._ew_s + nu * self._nu_s + self._state_time

    # ------------------------------------------------------------------------------------------
    @property
    def fp32_param_bytes(self) -> float:
        return self.workload.fp32_param_bytes

    @property
    def other_param_bytes(self) -> float:
        """Bytes of the parameters no plan quantizes (stored as they are)."""
        return float(self._other_stored)

    @property
    def param_capacity_bytes(self) -> float:
        """Bytes the weight-holding memory levels leave for parameters once the state is placed."""
        return self._param_capacity

    @property
    def const_cores(self) -> int:
        """Neuromorphic cores the non-quantized parameters and the state need (0 otherwise)."""
        return int(self._const_cores)

    def module_bytes_table(self) -> np.ndarray:
        """``(n_modules, 33)``: stored bytes (codes + scales) of each module at each bit index
        (columns 0 and 32: fp32)."""
        return self._tables["weight"] + self._tables["scale"]

    def module_cores_table(self) -> np.ndarray:
        """``(n_modules, 33)``: neuromorphic cores each module needs at each bit index (zeros for
        other devices)."""
        return self._tables["cores"].copy()

    def bits_matrix(self, plans: Sequence[Plan | Mapping[str, int | None]]) -> np.ndarray:
        """Stack plans into the ``(n_plans, n_modules)`` matrix that :meth:`score` takes."""
        return np.stack([as_plan(p).bits_vector(self.workload) for p in plans])

    def _indices(self, bits: Any) -> np.ndarray:
        B = np.asarray(bits)
        if B.ndim == 1:
            B = B[None, :]
        if B.ndim != 2 or B.shape[1] != self.n_modules:
            raise PlanError(f"bits must have shape (n_plans, {self.n_modules}), "
                            f"got {np.shape(bits)}")
        if B.size and not np.issubdtype(B.dtype, np.integer):
            if not np.all(np.equal(np.mod(B, 1), 0)):
                raise PlanError("bit widths must be integers")
        B = B.astype(np.int64, copy=False)
        if B.size and (B.min() < 0 or B.max() > 32 or not self._valid[B].all()):
            bad = sorted(set(np.unique(B).tolist()) - set(VALID_BITS))
            raise PlanError(f"invalid bit widths {bad}: use 1..{MAX_BITS}, or 0/32 for keep fp32")
        return B + self._row_offset

    def score(self, bits: Any) -> dict[str, np.ndarray]:
        """Score a matrix of plans: ``bits`` is ``(n_plans, n_modules)`` (0 or 32 = keep fp32).

        Returns arrays of shape ``(n_plans,)`` for every key of :data:`SCORE_KEYS`.
        """
        return self._evaluate(self._indices(bits), detail=False)

    def _evaluate(self, idx: np.ndarray, *, detail: bool) -> dict[str, Any]:
        f = self._flat
        P = idx.shape[0]
        wbytes = f["weight"].take(idx)
        sbytes = f["scale"].take(idx)
        stored = wbytes + sbytes
        read = f["read"].take(idx)
        ec = f["ec"].take(idx)
        tc = f["tc"].take(idx)

        # stored and read bytes per intensity class
        S = stored @ self._onehot
        R = read @ self._onehot
        S[:, self._other_class] += self._other_stored
        R[:, self._other_class] += self._other_read
        start = np.cumsum(S, axis=1) - S
        end = start + S
        overlap = np.clip(np.minimum(end[:, :, None], self._hi)
                          - np.maximum(start[:, :, None], self._lo), 0.0, None)  # (P, C, I)
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(S[:, :, None] > 0, overlap / S[:, :, None], 0.0)
        e_byte = frac @ self._read_e  # (P, C) energy per byte read
        e_on = frac @ (self._read_e * self._on)
        inv_bw = frac @ self._inv_bw  # (P, C) seconds per byte read
        mem_on = (R * e_on).sum(axis=1) + self._state_energy_on
        mem_total = (R * e_byte).sum(axis=1)
        mem_off = mem_total - (R * e_on).sum(axis=1) + self._state_energy_off

        t_mem = read * inv_bw[:, self._module_class]
        t_mod = np.maximum(tc, t_mem)
        latency = (t_mod.sum(axis=1) + self._other_read * inv_bw[:, self._other_class]
                   + self._const_time)
        compute = ec.sum(axis=1) + self._const_compute_e
        static = self.device.static_power_w * latency
        energy = compute + mem_on + mem_off + static

        w_total = wbytes.sum(axis=1)
        s_total = sbytes.sum(axis=1)
        param = w_total + s_total + self._other_stored
        fits = (param <= self._param_capacity * (1 + 1e-12)) & self._state_fits
        on_bytes = (overlap.sum(axis=1) @ self._on)  # exact when fits (no overflow)
        fits_on_chip = fits & (on_bytes >= param * (1 - 1e-12)) & self._state_on_chip
        supported = self._sup_flat.take(idx).all(axis=1)
        if self.device.neuromorphic is not None:
            cores = f["cores"].take(idx).sum(axis=1) + self._const_cores
            fits &= cores <= self.device.neuromorphic.cores
            fits_on_chip &= fits
        else:
            cores = np.zeros(P)
        state = np.full(P, self.workload.state_bytes)
        with np.errstate(divide="ignore", invalid="ignore"):
            power = np.where(latency > 0, energy / latency, 0.0)
        out: dict[str, Any] = {
            "weight_bytes": w_total, "scale_bytes": s_total, "param_bytes": param,
            "state_bytes": state, "memory_bytes": param + state,
            "fits": fits, "fits_on_chip": fits_on_chip, "supported": supported,
            "cores_needed": cores,
            "compute_energy_j": compute, "onchip_memory_energy_j": mem_on,
            "offchip_memory_energy_j": mem_off, "static_energy_j": static,
            "energy_j": energy, "latency_s": latency, "power_w": power,
        }
        if detail:
            out.update(wbytes=wbytes, sbytes=sbytes, read=read, ec=ec, tc=tc, t_mem=t_mem,
                       t_mod=t_mod, e_byte=e_byte, inv_bw=inv_bw, overlap=overlap)
        return out

    # ------------------------------------------------------------------------------------------
    def report(self, bits: Any) -> CostReport:
        """The detailed :class:`CostReport` of one plan given as a bit vector."""
        idx = self._indices(bits)
        if idx.shape[0] != 1:
            raise PlanError("report() takes one plan (a bit vector)")
        d = self._evaluate(idx, detail=True)
        wl, dev = self.workload, self.device
        bits_row = (idx[0] - self._row_offset).tolist()

        def s(key: str) -> float:
            return float(d[key][0])

        mods = []
        mem_e_mod = d["read"][0] * d["e_byte"][0][self._module_class]
        for i, m in enumerate(wl.modules):
            mods.append(ModuleCost(
                name=m.name, block=m.block, bits=0 if bits_row[i] == 32 else bits_row[i],
                weight_bytes=float(d["wbytes"][0, i]), scale_bytes=float(d["sbytes"][0, i]),
                read_bytes=float(d["read"][0, i]), compute_energy_j=float(d["ec"][0, i]),
                memory_energy_j=float(mem_e_mod[i]), compute_time_s=float(d["tc"][0, i]),
                memory_time_s=float(d["t_mem"][0, i]), latency_s=float(d["t_mod"][0, i])))

        # per-block: module costs + the block's element-wise and neuron work
        acc: dict[str, list[float]] = {b: [0.0, 0.0, 0.0] for b in wl.blocks}
        for mc in mods:
            a = acc[mc.block]
            a[0] += mc.compute_energy_j
            a[1] += mc.memory_energy_j
            a[2] += mc.latency_s
        for b, n in wl.elementwise_ops.items():
            acc[b][0] += n * self._ew_j
            acc[b][2] += n * self._ew_s
        for b, n in wl.neuron_updates.items():
            acc[b][0] += n * self._nu_j
            acc[b][2] += n * self._nu_s
        other_t = self._other_read * float(d["inv_bw"][0, self._other_class])
        other_e = self._other_read * float(d["e_byte"][0, self._other_class])
        acc["(other parameters)"] = [0.0, other_e, other_t]
        acc["(state)"] = [0.0, self._state_energy_on + self._state_energy_off, self._state_time]
        pw = dev.static_power_w
        blocks = tuple(BlockCost(b, v[0], v[1], pw * v[2], v[2]) for b, v in acc.items())

        levels = []
        lv_w = {lev.name: j for j, lev in enumerate(self._wlevels)}
        placed = d["overlap"][0].sum(axis=0)  # (I,) param bytes per weight-holding level
        total_mem = s("param_bytes") + wl.state_bytes
        for i, lev in enumerate(self._levels):
            j = lv_w.get(lev.name)
            levels.append(LevelUse(
                name=lev.name, on_chip=lev.on_chip, capacity_bytes=lev.capacity_bytes,
                state_bytes=float(self._state_in[i]),
                param_bytes=0.0 if j is None else float(placed[j]),
                whole_model_fits=bool(lev.holds_weights and total_mem <= lev.capacity_bytes
                                      and (lev.holds_state or wl.state_bytes == 0))))

        spike_e = float(d["ec"][0][self._is_spike].sum())
        real_e = float(d["ec"][0][~self._is_spike].sum())
        return CostReport(
            device=dev.name, workload=wl.name, per=wl.per,
            weight_bytes=s("weight_bytes"), scale_bytes=s("scale_bytes"),
            other_param_bytes=wl.other_param_bytes, state_bytes=wl.state_bytes,
            param_bytes=s("param_bytes"), memory_bytes=s("memory_bytes"),
            fp32_param_bytes=wl.fp32_param_bytes,
            fits=bool(d["fits"][0]), fits_on_chip=bool(d["fits_on_chip"][0]),
            supported=bool(d["supported"][0]), cores_needed=s("cores_needed"),
            compute_energy_j=s("compute_energy_j"), spike_synaptic_energy_j=spike_e,
            real_synaptic_energy_j=real_e,
            elementwise_energy_j=wl.total_elementwise_ops * self._ew_j,
            neuron_energy_j=wl.total_neuron_updates * self._nu_j,
            onchip_memory_energy_j=s("onchip_memory_energy_j"),
            offchip_memory_energy_j=s("offchip_memory_energy_j"),
            static_energy_j=s("static_energy_j"), energy_j=s("energy_j"),
            latency_s=s("latency_s"), power_w=s("power_w"),
            levels=tuple(levels), modules=tuple(mods), blocks=blocks,
        )


def cost(workload: Workload | WorkloadSource | str, plan: Plan | Mapping[str, int | None] | str
         | int | None, device: Device | str, *, default: int | None = None) -> CostReport:
    """The cost of one plan on one device.

    ``plan`` is a :class:`Plan`, a ``{module: bits or None}`` mapping (``default`` for the rest;
    None = keep fp32), a plan JSON path, or one bit width for every module.
    """
    wl = as_workload(workload)
    p = as_plan(plan, default)
    specs = p.resolve(wl)
    model = CostModel(wl, device,
                      group_size=[None if s is None else s.group_size for s in specs],
                      symmetric=[True if s is None else s.symmetric for s in specs])
    return model.report(p.bits_vector(wl))
