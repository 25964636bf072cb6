"""Hand-computed golden cases: a two-layer toy workload on every preset.

The expected numbers are computed here from the raw TOML values (read with tomllib, not through
hwmodel) with the equations of docs/hwmodel.md written out by hand, so a wrong coefficient,
placement or unit conversion in hwmodel makes these tests fail.
"""

from __future__ import annotations

import math
import tomllib

import numpy as np
import pytest

from hwmodel import CostModel, ModuleSpec, ModuleWork, Plan, Workload, cost, load_device
from hwmodel.device import preset_path

PJ = 1e-12
REL = 1e-9

# Two layers: a real-input 4×8 Linear and a spike-input 8×4 Linear firing at 0.5.
TOY = Workload(
    name="toy",
    per="token",
    modules=(
        ModuleWork("blocks.0.lin", "blocks.0", out_features=4, in_features=8, input_kind="real"),
        ModuleWork("blocks.1.lin", "blocks.1", out_features=8, in_features=4,
                   input_kind="spikes", input_rate=0.5),
    ),
    neuron_updates={"blocks.0": 4.0, "blocks.1": 8.0},
    elementwise_ops={"blocks.0": 10.0},
    other_param_bytes=16.0,
    state_bytes=32.0,
)
# Plan A: first layer 4 bit (one fp16 scale per row), second kept in fp32.
PLAN_A = Plan({"blocks.0.lin": ModuleSpec(4), "blocks.1.lin": None})
# Plan B: first layer 4 bit with groups of 2 (4 groups per row), second 8 bit, asymmetric.
PLAN_B = Plan({"blocks.0.lin": ModuleSpec(4, group_size=2),
               "blocks.1.lin": ModuleSpec(8, symmetric=False)})

# Storage by hand (bytes):
#   A: layer 0: 4 rows × ceil(8·4/8) = 16 B + 4 scales × 2 B = 8 B; layer 1: 8·4·4 B = 128 B
#   B: layer 0: 16 B + 4 rows × 4 groups × 2 B = 32 B; layer 1: 8 rows × 4 B = 32 B
#      + 8 rows × (scale + zero point) × 2 B = 32 B
STORE = {"A": {"w": (16.0, 128.0), "s": (8.0, 0.0)}, "B": {"w": (16.0, 32.0), "s": (32.0, 32.0)}}
OTHER, STATE = 16.0, 32.0
MACS0 = 4 * 8  # layer 0 synaptic ops per token
SYN1 = 8 * 4  # layer 1 synaptic ops per token; 16 of them carry a spike


def raw(name: str) -> dict:
    return tomllib.loads(preset_path(name).read_text(encoding="utf-8"))


def add_pj(e: dict, bits: float) -> float:  # adders: linear through (8, int8) and (32, int32)
    if bits <= 8:
        return e["int8_add_pj"] * bits / 8
    return e["int8_add_pj"] + (e["int32_add_pj"] - e["int8_add_pj"]) * (bits - 8) / 24


def mult_pj(e: dict, wb: float, ab: float) -> float:  # multipliers: linear in wb·ab
    p = wb * ab
    if p <= 64:
        return e["int8_mult_pj"] * p / 64
    return e["int8_mult_pj"] + (e["int32_mult_pj"] - e["int8_mult_pj"]) * (p - 64) / 960


CONVENTIONAL = ("cmos45", "edge-gpu", "edge-npu", "mcu")


def expected_conventional(name: str, plan: str) -> dict[str, float]:
    d = raw(name)
    c, e, mem, pw = d["compute"], d["energy"], d["memory"][0], d["power"]["static_w"]
    assert mem["on_chip"]  # the first level of every preset is the cheapest, on-chip one
    rates = {int(k): v for k, v in c["int_macs_per_cycle"].items()}
    clock, a = c["clock_hz"], c["activation_bits"]
    fp32_mac = e["fp32_mult_pj"] + e["fp32_add_pj"]

    def width(bits: int) -> int:
        return bits if c.get("arbitrary_int_width") else min(w for w in rates if w >= bits)

    def rate(w: int) -> float:  # MACs/cycle of the narrowest listed width that holds w
        return rates[min(ww for ww in rates if ww >= w)]

    # layer 0: 4-bit weights, real input → MACs at the compute width
    w0 = width(4)
    acc0 = c["accumulator_bits"] or min(32, w0 + a + 3)  # ceil(log2 8) = 3
    e0 = MACS0 * (mult_pj(e, w0, a) + add_pj(e, acc0))
    t0c = MACS0 / (rate(w0) * clock)
    # layer 1: spike input, 16 accumulates
    spikes_work = 16 if c["skips_zero_spikes"] else SYN1
    if plan == "A":  # fp32 weights
        e1 = 16 * e["fp32_add_pj"]
        t1c = spikes_work / (c["fp32_macs_per_cycle"] * clock)
    else:  # 8-bit weights
        w1 = width(8)
        acc1 = c["accumulator_bits"] or min(32, w1 + 2)  # ceil(log2 4) = 2
        e1 = 16 * add_pj(e, acc1)
        t1c = spikes_work / (rate(w1) * clock)
    ew = 10 * e.get("elementwise_op_pj", fp32_mac)
    nu = 12 * e.get("neuron_update_pj", 3 * e["fp32_add_pj"] + e["fp32_mult_pj"])
    compute = (e0 + e1 + ew + nu) * PJ

    s = STORE[plan]
    b0, b1 = s["w"][0] + s["s"][0], s["w"][1] + s["s"][1]
    params = b0 + b1 + OTHER
    bw = mem["bandwidth_bytes_per_s"]
    onchip = (params * mem["read_pj_per_byte"]
              + STATE * (mem["read_pj_per_byte"] + mem["write_pj_per_byte"])) * PJ
    latency = (max(t0c, b0 / bw) + max(t1c, b1 / bw) + OTHER / bw + 2 * STATE / bw
               + 10 / (c["elementwise_ops_per_cycle"] * clock)
               + 12 / (c["neuron_updates_per_cycle"] * clock))
    static = pw * latency
    energy = compute + onchip + static
    return {"param_bytes": params, "weight_bytes": sum(s["w"]), "scale_bytes": sum(s["s"]),
            "compute_energy_j": compute, "onchip_memory_energy_j": onchip,
            "offchip_memory_energy_j": 0.0, "static_energy_j": static, "energy_j": energy,
            "latency_s": latency, "power_w": energy / latency}


def expected_neuromorphic(plan: str) -> dict[str, float]:
    n, mem, pw = raw("neuromorphic")["neuromorphic"], raw("neuromorphic")["memory"][0], \
        raw("neuromorphic")["power"]["static_w"]
    cores = n["cores"]
    s = STORE[plan]
    b0, b1 = s["w"][0] + s["s"][0], s["w"][1] + s["s"][1]
    bw = mem["bandwidth_bytes_per_s"]
    # 32 graded synaptic ops (real input) + 16 binary synaptic ops, whatever the weight width
    compute = (MACS0 * n["graded_synop_pj"] + 16 * n["synop_pj"]
               + 10 * n["elementwise_op_pj"] + 12 * n["neuron_update_pj"]) * PJ
    latency = (max(MACS0 * n["synop_time_s"] / cores, b0 / bw)
               + max(16 * n["synop_time_s"] / cores, b1 / bw)
               + OTHER / bw + 2 * STATE / bw
               + 10 * n["elementwise_op_time_s"] / cores + 12 * n["neuron_update_time_s"] / cores)
    static = pw * latency
    energy = compute + static  # memory reads are inside the synaptic-op energy (0 pJ/B)
    per_core = n["core_memory_bytes"]
    return {"param_bytes": b0 + b1 + OTHER, "compute_energy_j": compute,
            "onchip_memory_energy_j": 0.0, "offchip_memory_energy_j": 0.0,
            "static_energy_j": static, "energy_j": energy, "latency_s": latency,
            "power_w": energy / latency,
            "cores_needed": math.ceil(b0 / per_core) + math.ceil(b1 / per_core)
            + math.ceil((OTHER + STATE) / per_core)}


PLANS = {"A": PLAN_A, "B": PLAN_B}


@pytest.mark.parametrize("plan", ["A", "B"])
@pytest.mark.parametrize("device", CONVENTIONAL)
def test_golden_conventional(device: str, plan: str) -> None:
    r = cost(TOY, PLANS[plan], device)
    exp = expected_conventional(device, plan)
    for key, value in exp.items():
        assert getattr(r, key) == pytest.approx(value, rel=REL, abs=1e-30), key
    assert r.fits and r.fits_on_chip and r.supported
    assert r.state_bytes == STATE and r.memory_bytes == exp["param_bytes"] + STATE


@pytest.mark.parametrize("plan", ["A", "B"])
def test_golden_neuromorphic(plan: str) -> None:
    r = cost(TOY, PLANS[plan], "neuromorphic")
    exp = expected_neuromorphic(plan)
    for key, value in exp.items():
        assert getattr(r, key) == pytest.approx(value, rel=REL, abs=1e-30), key
    assert r.fits
    assert r.supported == (plan == "B")  # fp32 weights are not a Loihi synapse format


def test_golden_spill_to_dram_on_cmos45() -> None:
    """SRAM of 100 B: the state (32 B) goes first, 68 B of parameters stay on chip and the
    other 100 B (plan A: 168 B of parameters, one read-intensity class) come from DRAM."""
    d = raw("cmos45")
    sram, dram = d["memory"]
    dev = load_device("cmos45").with_memory_capacity("sram", 100)
    r = cost(TOY, PLAN_A, dev)
    assert r.fits and not r.fits_on_chip
    assert r.onchip_memory_energy_j == pytest.approx(
        (68 * sram["read_pj_per_byte"]
         + STATE * (sram["read_pj_per_byte"] + sram["write_pj_per_byte"])) * PJ, rel=REL)
    assert r.offchip_memory_energy_j == pytest.approx(100 * dram["read_pj_per_byte"] * PJ, rel=REL)
    levels = {lv.name: lv for lv in r.levels}
    assert levels["sram"].state_bytes == STATE and levels["sram"].param_bytes == pytest.approx(68)
    assert levels["dram"].param_bytes == pytest.approx(100)
    # every byte of the class costs the class average: 68/168 from SRAM, 100/168 from DRAM
    sec_per_byte = (68 / 168) / sram["bandwidth_bytes_per_s"] + \
        (100 / 168) / dram["bandwidth_bytes_per_s"]
    m1 = r.modules[1]
    assert m1.memory_time_s == pytest.approx(128 * sec_per_byte, rel=REL)
    # too small everywhere: does not fit
    tiny = dev.with_memory_capacity("dram", 50)
    r2 = cost(TOY, PLAN_A, tiny)
    assert not r2.fits and not r2.fits_on_chip


def test_neuromorphic_needs_a_core_per_128_kib_of_a_module() -> None:
    big = Workload("big", "token", (ModuleWork("m", "b", 512, 512),))
    r = cost(big, 8, "neuromorphic")
    # 512 rows × 512 B + 512 fp16 scales = 263168 B → ceil(263168 / 131072) = 3 cores
    assert r.cores_needed == 3 and r.fits
    many = Workload("many", "token", tuple(ModuleWork(f"m{i}", "b", 512, 512) for i in range(43)))
    assert not cost(many, 8, "neuromorphic").fits  # 129 cores > 128
    assert cost(many, 4, "neuromorphic").fits  # 131584 B → 2 cores each, 86 in all


def test_score_matrix_agrees_with_single_plan_reports() -> None:
    model = CostModel(TOY, "edge-npu")  # per-channel symmetric scales
    bits = np.array([[4, 0], [4, 32], [8, 8], [1, 2], [16, 3]])
    scores = model.score(bits)
    for i, row in enumerate(bits):
        r = cost(TOY, {"blocks.0.lin": int(row[0]), "blocks.1.lin": int(row[1])}, "edge-npu")
        for key in ("param_bytes", "energy_j", "latency_s", "power_w", "compute_energy_j"):
            assert scores[key][i] == pytest.approx(getattr(r, key), rel=1e-12), (key, row)
    assert scores["energy_j"][0] == scores["energy_j"][1]  # 0 and 32 both mean keep fp32


def test_score_rejects_bad_bit_matrices() -> None:
    model = CostModel(TOY, "mcu")
    from hwmodel import PlanError
    with pytest.raises(PlanError, match=r"invalid bit widths \[17\]"):
        model.score(np.array([[17, 4]]))
    with pytest.raises(PlanError, match=r"shape \(n_plans, 2\)"):
        model.score(np.array([[4, 4, 4]]))
    with pytest.raises(PlanError, match="integers"):
        model.score(np.array([[4.5, 4]]))


def test_report_breakdowns_add_up() -> None:
    r = cost(TOY, PLAN_B, "mcu")
    assert r.energy_j == pytest.approx(r.compute_energy_j + r.onchip_memory_energy_j
                                       + r.offchip_memory_energy_j + r.static_energy_j, rel=1e-12)
    assert r.compute_energy_j == pytest.approx(
        r.spike_synaptic_energy_j + r.real_synaptic_energy_j + r.elementwise_energy_j
        + r.neuron_energy_j, rel=1e-12)
    assert sum(b.energy_j for b in r.blocks) == pytest.approx(r.energy_j, rel=1e-12)
    assert sum(b.latency_s for b in r.blocks) == pytest.approx(r.latency_s, rel=1e-12)
    assert [m.bits for m in r.modules] == [4, 8]
    d = r.to_dict()
    assert d["memory_reduction"] == pytest.approx(1 - (48 + 64 + 16) / (4 * 64 + 16))
