"""Workloads: the SpikeGPT derivation from (L, C, V), the protocol, validation."""

from __future__ import annotations

import pytest

from hwmodel import (
    DEFAULT_FIRING_RATE,
    ModuleWork,
    Workload,
    WorkloadError,
    as_workload,
    parse_model_spec,
    spikegpt_workload,
)

L, C, V = 18, 768, 50277
PARAMS_216M = 215_399_424  # spec spikegpt.md §3, the released checkpoint


def test_216m_parameter_count_matches_the_checkpoint() -> None:
    w = spikegpt_workload(L, C, V)
    assert w.n_params + w.other_param_bytes / 4 == PARAMS_216M
    assert w.fp32_param_bytes == 4 * PARAMS_216M
    assert len(w.modules) == 2 + 7 * L


def test_module_names_follow_the_state_dict_keys() -> None:
    names = spikegpt_workload(2, 8, 10).module_names
    assert names == (
        "emb",
        *(f"blocks.{b}.{s}" for b in range(2) for s in (
            "att.key", "att.value", "att.receptance", "att.output",
            "ffn.key", "ffn.receptance", "ffn.value")),
        "head",
    )
    shapes = {m.name: m.weight_shape for m in spikegpt_workload(2, 8, 10).modules}
    assert shapes["emb"] == (10, 8) and shapes["head"] == (10, 8)
    assert shapes["blocks.1.ffn.key"] == (32, 8) and shapes["blocks.1.ffn.value"] == (8, 32)
    assert shapes["blocks.0.att.output"] == (8, 8)


def test_released_every_linear_is_real_valued() -> None:
    w = spikegpt_workload(L, C, V, firing_rates=0.1, spike_inputs="released")
    assert {m.input_kind for m in w.modules} == {"real"}
    assert all(m.input_rate == 1.0 for m in w.modules)


def test_idealized_rkv_and_ffn_take_spikes_at_the_rate() -> None:
    w = spikegpt_workload(L, C, V, firing_rates=0.13, spike_inputs="idealized")
    spiking = {m.name.split(".", 2)[-1] for m in w.modules if m.input_kind == "spikes"}
    assert spiking == {"att.key", "att.value", "att.receptance", "ffn.key", "ffn.receptance",
                       "ffn.value"}
    kinds = {m.name: (m.input_kind, m.input_rate) for m in w.modules}
    assert kinds["blocks.5.att.output"] == ("real", 1.0)
    assert kinds["head"] == ("real", 1.0)
    assert kinds["blocks.5.ffn.value"] == ("spikes", 0.13)
    default = spikegpt_workload(2, 8, 10, spike_inputs="idealized")
    assert {m.input_rate for m in default.modules if m.input_kind == "spikes"} == {
        DEFAULT_FIRING_RATE}


def test_per_token_counts_follow_spec_11() -> None:
    w = spikegpt_workload(L, C, V)
    assert w.total_elementwise_ops == 7 * C * L  # WKV: 7·T·d per layer, T = 1
    assert w.total_neuron_updates == 2 * C * L  # lif1 + lif2
    assert w.state_bytes == 4 * 7 * L * C  # 5 RNN rows + 2 membranes, fp32
    assert w.embedding_lookups == 1
    assert sum(m.synaptic_ops for m in w.modules) == L * 13 * C * C + V * C


def test_firing_rates_by_block_and_module() -> None:
    w = spikegpt_workload(2, 8, 10, spike_inputs="idealized",
                          firing_rates={"blocks.0": 0.5, "blocks.1.ffn.key": 0.25})
    rates = {m.name: m.input_rate for m in w.modules if m.input_kind == "spikes"}
    assert rates["blocks.0.att.key"] == 0.5 and rates["blocks.0.ffn.value"] == 0.5
    assert rates["blocks.1.ffn.key"] == 0.25
    assert rates["blocks.1.att.key"] == DEFAULT_FIRING_RATE
    assert w.with_firing_rates(0.9).modules[1].input_rate == 0.9
    with pytest.raises(WorkloadError, match="neither spike-input modules nor their blocks: head"):
        w.with_firing_rates({"head": 0.5})
    with pytest.raises(WorkloadError, match=r"firing rate must be in \[0, 1\]"):
        spikegpt_workload(2, 8, 10, spike_inputs="idealized", firing_rates=1.5)


def test_per_sequence_scales_every_count() -> None:
    t = spikegpt_workload(2, 8, 10, spike_inputs="idealized", firing_rates=0.2)
    s = spikegpt_workload(2, 8, 10, spike_inputs="idealized", firing_rates=0.2,
                          per="sequence", seq_len=16)
    assert s.per == "sequence"
    assert s.total_elementwise_ops == 16 * t.total_elementwise_ops
    assert sum(m.events for m in s.modules) == pytest.approx(16 * sum(m.events for m in t.modules))
    assert s.state_updates == 16 and s.state_bytes == t.state_bytes
    c = spikegpt_workload(2, 8, 10, per="sequence", seq_len=16, num_classes=2)
    assert c.modules[-1].name == "classify_head" and c.modules[-1].weight_shape == (2, 8)
    assert c.modules[-1].calls == 1
    with pytest.raises(WorkloadError, match="seq_len must be 1"):
        spikegpt_workload(2, 8, 10, seq_len=4)
    with pytest.raises(WorkloadError, match="needs per='sequence'"):
        spikegpt_workload(2, 8, 10, num_classes=2)


def test_protocol_and_model_strings() -> None:
    class Model:
        def workload(self) -> Workload:
            return spikegpt_workload(1, 4, 6)

    assert as_workload(Model()).name == "spikegpt(L=1,C=4,V=6)/released"
    assert parse_model_spec("spikegpt-216m").n_params + 0 == spikegpt_workload(L, C, V).n_params
    assert parse_model_spec("spikegpt:12,512,50277").modules[1].weight_shape == (512, 512)
    assert as_workload("spikegpt:1,4,6", spike_inputs="idealized").modules[1].input_kind == "spikes"
    with pytest.raises(WorkloadError, match="unknown model 'gpt2'"):
        parse_model_spec("gpt2")
    with pytest.raises(WorkloadError, match="cannot derive a workload from int"):
        as_workload(3)  # type: ignore[arg-type]

    class Broken:
        def workload(self) -> dict:
            return {}

    with pytest.raises(WorkloadError, match="returned dict, not a Workload"):
        as_workload(Broken())  # type: ignore[arg-type]


def test_round_trip_through_dict() -> None:
    w = spikegpt_workload(2, 8, 10, spike_inputs="idealized", firing_rates=0.3,
                          per="sequence", seq_len=3)
    assert Workload.from_dict(w.to_dict()) == w


@pytest.mark.parametrize(("kwargs", "match"), [
    pytest.param(dict(input_kind="spikes", input_rate=1.5), r"input_rate must be in \[0, 1\]",
                 id="rate-above-one"),
    pytest.param(dict(input_kind="real", input_rate=0.5), "applies to spike inputs only",
                 id="rate-on-real-input"),
    pytest.param(dict(input_kind="analog"), "input_kind must be one of", id="bad-kind"),
    pytest.param(dict(out_features=0), "out_features must be a positive integer", id="zero-dim"),
    pytest.param(dict(calls=-1.0), r"calls must be in \[0, inf\]", id="negative-calls"),
])
def test_module_validation(kwargs: dict, match: str) -> None:
    base = dict(name="m", block="b", out_features=2, in_features=2)
    with pytest.raises(WorkloadError, match=match):
        ModuleWork(**{**base, **kwargs})


def test_workload_validation() -> None:
    m = ModuleWork("m", "b", 2, 2)
    with pytest.raises(WorkloadError, match="duplicate module names: m"):
        Workload("w", "token", (m, m))
    with pytest.raises(WorkloadError, match="per must be one of"):
        Workload("w", "batch", (m,))
    with pytest.raises(WorkloadError, match=r"state_bytes must be in \[0, inf\]"):
        Workload("w", "token", (m,), state_bytes=-4.0)
