"""The spike-driven encoder workload, from its configuration alone (no torch)."""

from __future__ import annotations

import pytest

from hwmodel import DEFAULT_FIRING_RATE, Workload, WorkloadError, cost, list_presets
from hwmodel.workload import spike_driven_workload

L, C, V, K = 2, 8, 30, 2
N, S = 10, 4


def workload(**kw) -> Workload:
    return spike_driven_workload(L, C, V, K, seq_len=N, t_sim=S, **kw)


def test_modules_shapes_and_input_kinds() -> None:
    w = workload(pos_rows=16)
    block = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc1", "mlp.fc2")
    assert w.module_names == ("emb", "pos", *(f"blocks.{b}.{s}" for b in range(L)
                                              for s in block), "head")
    shapes = {m.name: m.weight_shape for m in w.modules}
    assert shapes["emb"] == (V, C) and shapes["pos"] == (16, C) and shapes["head"] == (K, C)
    assert shapes["blocks.1.mlp.fc1"] == (4 * C, C) and shapes["blocks.1.mlp.fc2"] == (C, 4 * C)
    spikes = [m for m in w.modules if m.input_kind == "spikes"]
    assert len(spikes) == 6 * L and all(m.op == "linear" for m in spikes)
    assert {m.calls for m in spikes} == {float(N * S)}
    assert {m.weight_reads for m in spikes} == {float(S)}  # once per step, shared by all tokens
    assert {m.input_rate for m in spikes} == {DEFAULT_FIRING_RATE}
    emb, head = w.modules[0], w.modules[-1]
    assert emb.op == "embedding" and emb.calls == N and emb.weight_reads == 0
    assert head.input_kind == "real" and head.calls == 1
    assert w.per == "sequence" and "pos" not in workload().module_names


def test_counts_follow_the_formulas() -> None:
    H = 3 * C
    w = workload(mlp_hidden=H, head_norm=False)
    assert w.neuron_updates["blocks.0"] == (5 * C + H) * N * S + C * S
    assert w.elementwise_ops["blocks.1"] == (5 * N + 3) * C * S
    assert w.elementwise_ops["head"] == N * S * C
    assert w.other_param_bytes == 4 * (L * (9 * C + H) + K)
    assert w.state_bytes == 4 * L * (N * (5 * C + H) + C) and w.state_updates == S


def test_firing_rates_scale_the_accumulates() -> None:
    one = workload(firing_rates=0.1)
    assert all(m.input_rate == 0.1 for m in one.modules if m.input_kind == "spikes")
    mixed = workload(firing_rates={"blocks.0": 0.3, "blocks.1.attn.o": 0.05})
    rates = {m.name: m.input_rate for m in mixed.modules if m.input_kind == "spikes"}
    assert rates["blocks.0.mlp.fc2"] == 0.3 and rates["blocks.1.attn.o"] == 0.05
    assert rates["blocks.1.attn.q"] == DEFAULT_FIRING_RATE
    lo, hi = (cost(workload(firing_rates=r), 8, "cmos45") for r in (0.05, 0.4))
    assert 0 < lo.spike_synaptic_energy_j < hi.spike_synaptic_energy_j
    assert hi.spike_synaptic_energy_j == pytest.approx(8 * lo.spike_synaptic_energy_j)
    assert lo.real_synaptic_energy_j == pytest.approx(hi.real_synaptic_energy_j)  # head only


def test_round_trips_and_costs_on_every_preset() -> None:
    w = workload(pos_rows=N)
    assert Workload.from_dict(w.to_dict()) == w
    for preset in list_presets():
        r = cost(w, 4, preset)
        assert r.energy_j > 0 and r.latency_s > 0


@pytest.mark.parametrize("kw, match", [
    pytest.param(dict(seq_len=0), "seq_len", id="no-tokens"),
    pytest.param(dict(t_sim=0), "t_sim", id="no-steps"),
    pytest.param(dict(mlp_hidden=0), "mlp_hidden", id="no-hidden"),
    pytest.param(dict(pos_rows=-1), "pos_rows", id="negative-pos"),
    pytest.param(dict(firing_rates=1.5), "firing rate", id="rate-above-1"),
    pytest.param(dict(firing_rates={"blocks.0.attn.lif_q": 0.1}), "neither", id="unknown-name"),
])
def test_rejects_bad_arguments(kw, match) -> None:
    args = dict(seq_len=N, t_sim=S) | kw
    with pytest.raises(WorkloadError, match=match):
        spike_driven_workload(L, C, V, K, **args)
