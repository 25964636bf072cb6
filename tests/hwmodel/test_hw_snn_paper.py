"""The SNN-paper energy method (spec spikegpt.md §11) reproduced on the cmos45 preset.

With every weight kept in fp32 on cmos45 and the idealized SpikeGPT-216M workload at firing rate
R̂, the accumulate-only energy must be E_AC·R̂·ops over the spike-input layers (R/K/V projections
3·T·d² and the FFN 9·T·d² per layer) and the WKV energy E_MAC·7·T·d per layer, with
E_AC = 0.9 pJ and E_MAC = 4.6 pJ (Horowitz ISSCC 2014, 45 nm).
"""

from __future__ import annotations

import pytest

from hwmodel import cost, spikegpt_workload

E_AC = 0.9e-12  # J, fp32 add at 45 nm
E_MAC = 4.6e-12  # J, fp32 mult + add at 45 nm
L, D, V = 18, 768, 50277  # SpikeGPT-216M
FL_MLP = 9 * D * D  # FFN: C→4C, C→C receptance, 4C→C per token


@pytest.mark.parametrize("rate", [0.05, 0.13, 0.5])
@pytest.mark.parametrize("T", [1, 64])
def test_accumulate_only_energy_matches_spec_11(rate: float, T: int) -> None:
    per = "token" if T == 1 else "sequence"
    w = spikegpt_workload(L, D, V, firing_rates=rate, spike_inputs="idealized", per=per,
                          seq_len=T)
    r = cost(w, None, "cmos45")  # None: every weight kept in fp32, as in the paper
    rkv = E_AC * rate * 3 * T * D * D * L
    ffn = E_AC * rate * FL_MLP * T * L
    wkv = E_MAC * 7 * T * D * L
    assert r.spike_synaptic_energy_j == pytest.approx(rkv + ffn, rel=1e-12)
    assert r.elementwise_energy_j == pytest.approx(wkv, rel=1e-12)
    # what stays multiply-accumulate: the attention output projection and the LM head
    assert r.real_synaptic_energy_j == pytest.approx(E_MAC * T * (D * D * L + V * D), rel=1e-12)


def test_released_checkpoint_arithmetic_has_no_accumulate_only_layer() -> None:
    w = spikegpt_workload(L, D, V, firing_rates=0.13, spike_inputs="released")
    r = cost(w, None, "cmos45")
    assert r.spike_synaptic_energy_j == 0.0
    assert r.real_synaptic_energy_j == pytest.approx(E_MAC * (13 * D * D * L + V * D), rel=1e-12)


def test_spike_energy_is_linear_in_the_rate() -> None:
    def spike_j(rate: float) -> float:
        w = spikegpt_workload(L, D, V, firing_rates=rate, spike_inputs="idealized")
        return cost(w, None, "cmos45").spike_synaptic_energy_j

    assert spike_j(0.4) == pytest.approx(2 * spike_j(0.2), rel=1e-12)
    assert spike_j(0.0) == 0.0
