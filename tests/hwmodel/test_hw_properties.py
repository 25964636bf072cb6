"""Monotonicity properties of the cost model (hypothesis), on every preset.

* fewer bits for any module never increase memory or energy (nor latency);
* a higher firing rate never lowers energy;
* a larger on-chip memory never increases energy.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hwmodel import CostModel, list_presets, load_device, spikegpt_workload
from hwmodel.cost import VALID_BITS

PRESETS = tuple(list_presets())
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)
# L=2, C=64, V=256: ~0.55 MB of fp32 parameters, so capacities in the presets' range matter.
SHAPE = (2, 64, 256)
ORDERED = sorted(VALID_BITS, key=lambda b: 32 if b == 0 else b)  # 1 < ... < 16 < keep


def _width(b: int) -> int:
    return 32 if b == 0 else b


@lru_cache(maxsize=None)
def _model(device: str, spike_inputs: str) -> CostModel:
    w = spikegpt_workload(*SHAPE, firing_rates=0.3, spike_inputs=spike_inputs)
    return CostModel(w, device)


N_MODULES = 2 + 7 * SHAPE[0]
bit_vectors = st.lists(st.sampled_from(VALID_BITS), min_size=N_MODULES, max_size=N_MODULES)


@SETTINGS
@given(device=st.sampled_from(PRESETS), spike_inputs=st.sampled_from(["released", "idealized"]),
       bits=bit_vectors, module=st.integers(0, N_MODULES - 1), data=st.data())
def test_fewer_bits_never_cost_more(device, spike_inputs, bits, module, data) -> None:
    model = _model(device, spike_inputs)
    wider = _width(bits[module])
    narrower = data.draw(st.sampled_from([b for b in ORDERED if _width(b) <= wider]))
    lower = list(bits)
    lower[module] = narrower
    s = model.score(np.array([bits, lower]))
    for key in ("param_bytes", "memory_bytes", "energy_j", "compute_energy_j", "latency_s"):
        assert s[key][1] <= s[key][0] * (1 + 1e-12), (key, bits[module], narrower)
    assert s["fits"][1] >= s["fits"][0]


@SETTINGS
@given(device=st.sampled_from(PRESETS), bits=bit_vectors,
       rates=st.tuples(st.floats(0, 1), st.floats(0, 1)))
def test_higher_firing_rate_never_lowers_energy(device, bits, rates) -> None:
    lo, hi = sorted(rates)
    energies = []
    for rate in (lo, hi):
        w = spikegpt_workload(*SHAPE, firing_rates=rate, spike_inputs="idealized")
        energies.append(CostModel(w, device).score(np.array(bits))["energy_j"][0])
    assert energies[1] >= energies[0] * (1 - 1e-12)


def _cheapest_level(device: str) -> str:
    dev = load_device(device)
    return min(dev.memory, key=lambda m: m.read_j_per_byte).name


@SETTINGS
@given(device=st.sampled_from(PRESETS), bits=bit_vectors,
       caps=st.tuples(st.integers(1, 4 << 20), st.integers(1, 4 << 20)))
def test_larger_sram_never_increases_energy(device, bits, caps) -> None:
    small, large = sorted(caps)
    dev = load_device(device)
    level = _cheapest_level(device)
    w = spikegpt_workload(*SHAPE, firing_rates=0.3, spike_inputs="idealized")
    s_small = CostModel(w, dev.with_memory_capacity(level, small)).score(np.array(bits))
    s_large = CostModel(w, dev.with_memory_capacity(level, large)).score(np.array(bits))
    assert s_large["energy_j"][0] <= s_small["energy_j"][0] * (1 + 1e-12)
    assert s_large["latency_s"][0] <= s_small["latency_s"][0] * (1 + 1e-12)
    assert s_large["fits_on_chip"][0] >= s_small["fits_on_chip"][0]
