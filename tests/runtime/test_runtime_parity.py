"""The packed runtime against the fake-quant torch model of the same plan: logits (parallel and
recurrent form), spikes, greedy generations, task metrics; and its building blocks (packed
embedding rows, the kernel LIF, spike inputs)."""

from __future__ import annotations

import copy

import hwmodel
import pytest
import torch
from runtime_helpers import PLANS, one_thread, tiny_model

from qslm.eval import classification_accuracy, classification_batches, lm_perplexity
from qslm.models.spikegpt import lif_multistep, lif_step
from qslm.quant import QuantPlan, QuantSpec, apply_fake_quant, export_packed, load_packed
from qslm.runtime import (
    GREEDY,
    LOGIT_RTOL,
    METRIC_RTOL,
    SPIKE_AGREEMENT_MIN,
    KernelLIF,
    PackedEmbedding,
    PackedLinear,
    RuntimeModel,
    load_runtime,
    parity_report,
    relative_logit_error,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GEN_TOKENS = 16


def _pair(tmp_path, model, plan):
    """(runtime of the exported plan, fake-quant copy of the model)."""
    path = export_packed(model, plan, tmp_path / "model.qslm.safetensors")
    fq = copy.deepcopy(model)
    apply_fake_quant(fq, plan)
    return load_runtime(path), fq


@pytest.fixture(scope="module")
def lm():
    with one_thread():
        return tiny_model(seed=0)


@pytest.mark.parametrize("plan_name", list(PLANS))
def test_parity_with_fake_quant(tmp_path, lm, plan_name):
    rt, fq = _pair(tmp_path, lm, PLANS[plan_name])
    assert isinstance(rt, RuntimeModel)
    idx = torch.randint(0, 300, (2, 24), generator=torch.Generator().manual_seed(1))
    r = parity_report(rt, fq, idx, gen_tokens=GEN_TOKENS)
    assert r["parallel_rel_err"] <= LOGIT_RTOL, r
    assert r["recurrent_rel_err"] <= LOGIT_RTOL, r
    assert r["spike_agreement"] >= SPIKE_AGREEMENT_MIN, r
    assert r["greedy_identical"], r
    assert len(r["greedy"][0]) == GEN_TOKENS
    assert r["ok"]
    # the quantization is real: the unquantized model gives other logits
    with torch.no_grad():
        assert relative_logit_error(rt(idx), lm(idx)) > 10 * LOGIT_RTOL


def test_generate_equals_the_fake_quant_step_loop(tmp_path, lm):
    rt, fq = _pair(tmp_path, lm, PLANS["w4a-g64"])
    prompt = [5, 17, 42, 99]
    got = rt.generate(prompt, GEN_TOKENS)
    state, toks = fq.init_state(1), []
    with torch.no_grad():
        for t in prompt:
            logits, state = fq.step(torch.tensor([t]), state)
        for _ in range(GEN_TOKENS):
            toks.append(int(logits[0].argmax()))
            logits, state = fq.step(torch.tensor([toks[-1]]), state)
    assert got == toks
    assert rt.generate(prompt, GEN_TOKENS, GREEDY) == got  # deterministic
    assert rt.generate(prompt, 0) == []


def test_perplexity_matches_fake_quant(tmp_path, lm):
    rt, fq = _pair(tmp_path, lm, PLANS["mixed"])
    ids = torch.randint(0, 300, (200,), generator=torch.Generator().manual_seed(3))
    a = rt.perplexity(ids, ctx_len=64, batch_size=4)
    b = lm_perplexity(fq, ids, 64, 4, progress=False)
    assert a["n_tokens_scored"] == b["n_tokens_scored"] == 199
    assert abs(a["token_ppl"] / b["token_ppl"] - 1) <= METRIC_RTOL


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_classifier_parity_and_accuracy(tmp_path, pooling):
    model = tiny_model(seed=4, num_classes=3, pooling=pooling)
    plan = QuantPlan({"classify_head": QuantSpec(8, False)}, QuantSpec(4, group_size=32))
    rt, fq = _pair(tmp_path, model, plan)
    assert isinstance(rt.classify_head, PackedLinear) and rt.classify_head.bias is not None
    g = torch.Generator().manual_seed(5)
    examples = [(torch.randint(2, 300, (int(n),), generator=g).tolist(), int(c))
                for n, c in zip(torch.randint(3, 20, (24,), generator=g),
                                torch.randint(0, 3, (24,), generator=g))]
    ids, mask, _ = next(classification_batches(examples, 24))
    with torch.no_grad():
        assert relative_logit_error(rt(ids, attention_mask=mask),
                                    fq(ids, attention_mask=mask)) <= LOGIT_RTOL
        assert relative_logit_error(rt.forward_recurrent(ids, attention_mask=mask),
                                    fq.forward_recurrent(ids, attention_mask=mask)) <= LOGIT_RTOL
    a = rt.accuracy(classification_batches(examples, 8))
    b = classification_accuracy(fq, classification_batches(examples, 8), progress=False)
    assert a == b
    with pytest.raises(ValueError, match="classifier"):
        rt.generate([1, 2], 4)


def test_switches_and_lif_parameters(tmp_path):
    """rescale_every, no binary embedding, a non-zero reset potential and another tau."""
    model = tiny_model(seed=6, rescale_every=1, binary_embedding=False, tau=3.0, v_reset=0.25,
                       v_threshold=1.2)
    rt, fq = _pair(tmp_path, model, PLANS["w4a-g64"])
    idx = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(7))
    r = parity_report(rt, fq, idx, gen_tokens=8)
    assert r["ok"], r


def test_spikes_are_identical_and_rates_measured(tmp_path, lm):
    rt, fq = _pair(tmp_path, lm, PLANS["w4a-g64"])
    assert rt.measured_elements() == 0 and set(rt.firing_rates().values()) == {0.0}
    idx = torch.randint(0, 300, (3, 20), generator=torch.Generator().manual_seed(8))
    with torch.no_grad(), rt.record_spikes(keep_spikes=True) as ra, \
            fq.record_spikes(keep_spikes=True) as rb:
        rt(idx)
        fq(idx)
    for name in rb.rates():
        assert torch.equal(ra.spikes(name), rb.spikes(name)), name
    # the model's own counter saw the same run (nested recorders both count)
    assert rt.firing_rates() == pytest.approx(rb.rates(), abs=1e-12)
    assert rt.block_firing_rates() == pytest.approx(rb.block_rates(), abs=1e-12)
    assert 0.01 < min(rt.firing_rates().values()) and max(rt.firing_rates().values()) < 0.9
    # handed to hwmodel: the measured rates replace the placeholder in the idealized accounting
    measured = rt.workload(spike_inputs="idealized")
    assert measured == lm.workload(rb.block_rates(), spike_inputs="idealized")
    assert measured != lm.workload(spike_inputs="idealized")
    report = rt.cost("edge-npu", spike_inputs="idealized")
    ref = hwmodel.cost(lm.workload(rb.block_rates(), spike_inputs="idealized"), rt.hw_plan(),
                       "edge-npu")
    assert report.energy_j == ref.energy_j > 0
    assert report.param_bytes < report.fp32_param_bytes / 4
    # generation counts too; reset clears
    rt.reset_firing_rates()
    rt.generate([1, 2, 3], 4)
    assert rt.measured_elements() == 2 * 2 * 64 * (3 + 3)  # L·2 LIFs·C·steps
    rt.reset_firing_rates()
    assert rt.measured_elements() == 0


def test_hw_plan_is_the_loaded_plan(tmp_path, lm):
    rt, _ = _pair(tmp_path, lm, PLANS["mixed"])
    hp = rt.hw_plan()
    assert hp.spec_for("head") is None and hp.spec_for("blocks.1.att.output") is None
    s = hp.spec_for("blocks.0.att.value")
    assert (s.bits, s.group_size, s.symmetric) == (2, 32, False)
    assert hp.spec_for("blocks.0.att.key").group_size is None  # per channel


# ---- building blocks ---------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [QuantSpec(4, False, group_size=64), QuantSpec(1, group_size=16),
                                  QuantSpec(1), QuantSpec(3, False, group_size=12),
                                  QuantSpec(8, granularity="tensor"), QuantSpec(6, clip="mse")])
def test_packed_embedding_rows_are_the_fake_quant_rows(tmp_path, lm, spec):
    plan = QuantPlan({"emb": spec})
    pm = load_packed(export_packed(lm, plan, tmp_path / "m.safetensors"))
    emb = PackedEmbedding(pm.weights["emb"])
    table = pm.weights["emb"].dequantize()
    idx = torch.tensor([[0, 299, 5], [5, 17, 0]])
    got = emb(idx)
    assert got.shape == (2, 3, 64) and got.dtype == torch.float32
    assert torch.equal(got, table[idx])


def test_kernel_lif_is_bit_identical():
    g = torch.Generator().manual_seed(9)
    x = torch.randn(3, 11, 37, generator=g) * 2
    for tau, vth, vr in ((2.0, 1.0, 0.0), (3.0, 0.7, -0.2)):
        lif = KernelLIF(tau, vth, vr)
        assert torch.equal(lif(x), lif_multistep(x, tau, vth, vr))
        v = torch.full((3, 37), vr)
        for t in range(11):
            s_ref, v_ref = lif_step(x[:, t], v, tau, vth, vr)
            s, v_new = lif.step(x[:, t], v)
            assert torch.equal(s, s_ref) and torch.equal(v_new, v_ref)
            v = v_new


def test_spike_input_linear_uses_spike_matmul(tmp_path, lm):
    plan = QuantPlan({"blocks.0.ffn.value": QuantSpec(4, False, group_size=64)})
    pw = load_packed(export_packed(lm, plan, tmp_path / "m.safetensors")).weights[
        "blocks.0.ffn.value"]
    w = pw.dequantize()  # (64, 256)
    spiking, plain = PackedLinear(pw, spike_input=True), PackedLinear(pw)
    s = (torch.rand(5, 7, 256, generator=torch.Generator().manual_seed(10)) < 0.2).float()
    ref = s @ w.T
    tol = 1e-5 * (s.abs() @ w.abs().T).max()
    assert torch.allclose(spiking(s), ref, atol=float(tol), rtol=0)
    assert torch.allclose(plain(s), ref, atol=float(tol), rtol=0)
    x = torch.randn(4, 256)  # not spikes: the real-valued kernel
    assert torch.equal(spiking(x), plain(x))


def test_no_float_copy_of_quantized_weights(tmp_path, lm):
    rt, _ = _pair(tmp_path, lm, PLANS["w4a-g64"])
    quantized = {tuple(p.shape) for n, p in lm.named_parameters() if n.endswith(".weight")
                 and p.ndim == 2}
    for name, t in list(rt.named_parameters()) + list(rt.named_buffers()):
        assert not t.is_meta, name
        if t.is_floating_point():
            assert tuple(t.shape) not in quantized or name.endswith(("scales", "zero_points")), \
                name
    fp32_bytes = sum(p.numel() * 4 for p in lm.parameters())
    mem = rt.memory()
    assert mem["float"] < fp32_bytes / 20  # LayerNorms and time parameters only
    assert mem["total"] < fp32_bytes / 5  # 4 bits + f32 scales and zero points per 64
    assert not any(p.requires_grad for p in rt.parameters())
