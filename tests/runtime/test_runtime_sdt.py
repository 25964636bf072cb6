"""The spike-driven encoder (qslm.models.sdt) on the packed runtime: loaded through the same
path as SpikeGPT (family from the stored config), every block Linear on ``spike_matmul`` with
its folded bias, parity with the fake-quant torch model (logits, spikes, accuracy), measured
firing rates (pads excluded) in the cost model, memory, and the errors of bad files."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from runtime_helpers import read_file, rewrite

import hwmodel
from qslm import kernels
from qslm.errors import (
    ArchitectureError,
    ConfigError,
    FormatVersionError,
    GenerationError,
    PackedModelError,
)
from qslm.eval import classification_accuracy, classification_batches
from qslm.models import SpikeDrivenEncoder, sdt
from qslm.models.sdt import SDTConfig
from qslm.quant import QuantPlan, QuantSpec, apply_fake_quant, export_packed, load_packed
from qslm.runtime import (
    LOGIT_RTOL,
    SPIKE_AGREEMENT_MIN,
    KernelLIF,
    PackedEmbedding,
    PackedLinear,
    RuntimeModel,
    SDTRuntime,
    load_runtime,
    parity_report,
    relative_logit_error,
)
from qslm.runtime.packed import packed_nbytes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

V, PAD, K = 300, 1, 3
DEVICE = "neuromorphic"

PLANS = {
    # the main case: 4-bit, groups of 64, asymmetric, every module
    "w4a-g64": QuantPlan({}, QuantSpec(4, False, group_size=64)),
    # mixed widths 1/3/5/8 (embedding, positions and head included), one module kept in fp32
    "mixed": QuantPlan({
        "_default": QuantSpec(4, group_size=32),
        "emb": QuantSpec(1, group_size=64),
        "pos": QuantSpec(3, False, group_size=16),
        "head": QuantSpec(8),
        "blocks.0.attn.q": QuantSpec(1),
        "blocks.0.attn.k": QuantSpec(3, False, group_size=16),
        "blocks.0.attn.v": QuantSpec(5, group_size=64),
        "blocks.0.mlp.fc1": QuantSpec(8, False, group_size=32),
        "blocks.1.mlp.fc2": QuantSpec(5, False, granularity="channel"),
        "blocks.1.attn.o": None,
    }),
}


def _batch(seed: int, B: int = 6, N: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (no pad id among the real tokens) and their mask; lengths vary."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, V, (B, N), generator=g)
    lengths = torch.randint(N // 4, N + 1, (B,), generator=g)
    lengths[0] = N
    mask = (torch.arange(N)[None, :] < lengths[:, None]).long()
    return ids.masked_fill(mask == 0, PAD), mask


def _examples(seed: int = 3, n: int = 20) -> list[tuple[list[int], int]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(2, V, (int(m),), generator=g).tolist(), int(m) % K)
            for m in torch.randint(2, 30, (n,), generator=g)]


def _batches() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return list(classification_batches(_examples(), 7, pad_id=PAD))


def _tiny_sdt(fold: bool = True) -> SpikeDrivenEncoder:
    """A random encoder whose norms hold the statistics of a batch (momentum 1: every tap fires
    as in a trained model), then folded into the Linears (the deployed form)."""
    torch.manual_seed(0)
    model = SpikeDrivenEncoder(SDTConfig(vocab_size=V, n_layer=2, n_embd=64, mlp_ratio=2,
                                         ctx_len=48, num_classes=K, pad_id=PAD))
    ids, mask = _batch(11, B=16, N=24)
    with pytest.MonkeyPatch.context() as mp, torch.no_grad():
        mp.setattr(sdt, "BN_MOMENTUM", 1.0)
        model.train()(ids, attention_mask=mask)
    model.eval()
    return model.fold_norms() if fold else model


@pytest.fixture(scope="module")
def model() -> SpikeDrivenEncoder:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _tiny_sdt()
    finally:
        torch.set_num_threads(n)


def _pair(tmp_path, model, plan, name="model.qslm.safetensors"):
    """(runtime of the exported plan, fake-quant copy of the model, file path)."""
    path = export_packed(model, plan, tmp_path / name)
    fq = copy.deepcopy(model)
    apply_fake_quant(fq, plan)
    return load_runtime(path), fq, path


# ---- export and the rebuilt fake-quant model --------------------------------------------------

def test_export_of_a_folded_encoder_and_rebuild(tmp_path, model):
    _, fq, path = _pair(tmp_path, model, PLANS["mixed"])
    pm = load_packed(path)
    assert pm.family == "spike-driven-encoder"
    # the folded biases and the gate norm are plain tensors; kept modules stay unpacked
    for layer in range(2):
        for lin in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc1", "mlp.fc2"):
            key = f"blocks.{layer}.{lin}.bias"
            assert pm.tensors[key].dtype == torch.float32, key
        assert f"blocks.{layer}.attn.map_norm.running_var" in pm.tensors
    assert "blocks.1.attn.o" not in pm.weights and "blocks.1.attn.o.weight" in pm.tensors
    assert not [k for k in pm.tensors if re.search(r"\.(q|k|v|o|fc1|fc2)_norm\.", k)]  # folded
    rebuilt = pm.build_model()
    assert type(rebuilt) is SpikeDrivenEncoder and rebuilt.config == model.config
    ids, mask = _batch(1)
    with torch.no_grad():
        assert torch.equal(rebuilt(ids, attention_mask=mask), fq(ids, attention_mask=mask))


# ---- parity with the fake-quant model ---------------------------------------------------------

@pytest.mark.parametrize("plan_name", list(PLANS))
def test_parity_with_fake_quant(tmp_path, model, plan_name):
    rt, fq, _ = _pair(tmp_path, model, PLANS[plan_name])
    assert isinstance(rt, SDTRuntime) and isinstance(rt, SpikeDrivenEncoder)
    for seed in (1, 2):
        ids, mask = _batch(seed)
        r = parity_report(rt, fq, ids, attention_mask=mask)
        assert r["parallel_rel_err"] <= LOGIT_RTOL, r
        assert r["spike_agreement"] >= SPIKE_AGREEMENT_MIN, r
        assert "recurrent_rel_err" not in r and "greedy" not in r  # no recurrent form
        assert r["ok"], r
        with torch.no_grad():  # the quantization is real
            assert relative_logit_error(rt(ids, attention_mask=mask),
                                        model(ids, attention_mask=mask)) > 10 * LOGIT_RTOL


def test_accuracy_identical_with_padding(tmp_path, model):
    rt, fq, _ = _pair(tmp_path, model, PLANS["w4a-g64"])
    batches = _batches()
    assert any(bool((m == 0).any()) for _, m, _ in batches)  # padded batches
    got = rt.accuracy(batches)
    assert got == classification_accuracy(fq, batches, progress=False)
    assert got["n"] == 20
    with torch.no_grad():
        for ids, mask, _ in batches:
            a, b = rt(ids, attention_mask=mask), fq(ids, attention_mask=mask)
            assert torch.equal(a.argmax(-1), b.argmax(-1))
            assert relative_logit_error(a, b) <= LOGIT_RTOL
    # pads do not matter: more right padding, the same logits up to float32 rounding (a sum
    # over a longer token axis, zeros included, may be ordered differently by the vectorised
    # reduction: ~3e-7 on an AMD EPYC host, 0 on a Xeon one; the fake-quant model is alike)
    ids, mask = _batch(4)
    for extra in (1, 7):
        wide = torch.cat([ids, torch.full((ids.shape[0], extra), PAD)], dim=1)
        wmask = torch.cat([mask, torch.zeros(ids.shape[0], extra, dtype=mask.dtype)], dim=1)
        with torch.no_grad():
            a, b = rt(ids, attention_mask=mask), rt(wide, attention_mask=wmask)
        assert relative_logit_error(b, a) <= 1e-5
        assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_unfolded_export_also_runs(tmp_path):
    m = _tiny_sdt(fold=False)
    rt, fq, _ = _pair(tmp_path, m, PLANS["w4a-g64"])
    assert not rt.config.norms_folded
    ids, mask = _batch(5)
    r = parity_report(rt, fq, ids, attention_mask=mask)
    assert r["ok"], r


# ---- what runs on which kernel ----------------------------------------------------------------

@pytest.mark.parametrize("plan_name", list(PLANS))
def test_every_block_linear_runs_spike_matmul(tmp_path, model, monkeypatch, plan_name):
    plan = PLANS[plan_name]
    rt, _, _ = _pair(tmp_path, model, plan)
    quantized = set(rt.module_specs)
    blocks = set(rt.spike_input_modules())
    by_ptr = {m.packed.data_ptr(): n for n, m in rt.named_modules() if isinstance(m, PackedLinear)}
    calls: dict[str, list[str]] = {"spike": [], "lowbit": []}

    def counting(kind, fn):
        def wrapped(*args, **kwargs):
            packed = args[2] if kind == "spike" else args[1]
            calls[kind].append(by_ptr[packed.ctypes.data])
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(kernels, "spike_matmul", counting("spike", kernels.spike_matmul))
    monkeypatch.setattr(kernels, "lowbit_matmul", counting("lowbit", kernels.lowbit_matmul))
    ids, mask = _batch(6)
    with torch.no_grad():
        rt(ids, attention_mask=mask)
    assert set(calls["spike"]) == blocks & quantized and len(calls["spike"]) == len(blocks &
                                                                                     quantized)
    assert calls["lowbit"] == (["head"] if "head" in quantized else [])
    for name in blocks & quantized:
        m = rt.get_submodule(name)
        assert m.spike_input and m.bias is not None and not m.bias.is_meta
    for name in blocks - quantized:  # kept at fp32: a plain Linear with its folded bias
        assert type(rt.get_submodule(name)) is torch.nn.Linear
    assert isinstance(rt.emb, PackedEmbedding) and isinstance(rt.pos, PackedEmbedding)
    lifs = [m for m in rt.modules() if isinstance(m, sdt.LIFNode)]
    assert lifs and all(isinstance(m, KernelLIF) for m in lifs)
    assert len(lifs) == 2 * 7


# ---- firing rates, cost, memory ---------------------------------------------------------------

def test_firing_rates_measured_pads_excluded_and_costed(tmp_path, model):
    rt, fq, _ = _pair(tmp_path, model, PLANS["w4a-g64"])
    assert rt.measured_elements() == 0 and set(rt.firing_rates().values()) == {0.0}
    batches = _batches()
    rt.accuracy(batches)
    with fq.record_spikes() as rec:
        classification_accuracy(fq, batches, progress=False)
    rates = rt.firing_rates()
    assert set(rates) == set(rt.tap_names()) == set(rec.rates())
    assert rates == pytest.approx(rec.rates(), abs=1e-12)
    assert rt.input_firing_rates() == pytest.approx(rec.input_rates(), abs=1e-12)
    assert rt.block_firing_rates() == pytest.approx(rec.block_rates(), abs=1e-12)
    assert 0.005 < min(rates.values()) and max(rates.values()) < 0.9
    # valid tokens only: per layer and step, 6 taps of C and lif_hidden (H) per valid token,
    # lif_map (C) per sequence
    n_valid = sum(int(m.sum()) for _, m, _ in batches)
    n_seq = sum(int(m.shape[0]) for _, m, _ in batches)
    L, S, C, H = 2, 4, 64, 128
    assert rt.measured_elements() == L * S * (n_valid * (6 * C + H) + n_seq * C)
    # the cost model gets the measured (exact, per Linear) rates
    n = 12
    assert rt.workload(seq_len=n) == fq.workload(rec.input_rates(), seq_len=n)
    got = rt.cost(DEVICE, seq_len=n)
    ref = hwmodel.cost(fq.workload(rec.input_rates(), seq_len=n), rt.hw_plan(), DEVICE)
    assert got.energy_j == pytest.approx(ref.energy_j, rel=1e-12)
    placeholder = hwmodel.cost(fq.workload(None, seq_len=n), rt.hw_plan(), DEVICE)
    assert got.energy_j != pytest.approx(placeholder.energy_j, rel=1e-6)
    # more padding: the same rates (pads are not counted)
    before = dict(rates)
    rt.reset_firing_rates()
    assert rt.measured_elements() == 0
    wide = [(torch.cat([i, torch.full((i.shape[0], 9), PAD)], 1),
             torch.cat([m, torch.zeros(m.shape[0], 9, dtype=m.dtype)], 1), y)
            for i, m, y in batches]
    rt.accuracy(wide)
    assert rt.firing_rates() == pytest.approx(before, abs=1e-12)
    # nested recorders see the same spikes while the model's own counter keeps counting
    rt.reset_firing_rates()
    ids, mask = _batch(7)
    with torch.no_grad(), rt.record_spikes(keep_spikes=True) as outer, \
            rt.record_spikes() as inner:
        rt(ids, attention_mask=mask)
    assert outer.rates() == pytest.approx(inner.rates(), abs=0)
    assert outer.rates() == pytest.approx(rt.firing_rates(), abs=0)
    assert outer.spikes("blocks.0.attn.gate").shape == (int(mask.sum()), 4, 64)


def test_hw_plan_memory_and_what_was_loaded(tmp_path, model):
    plan = PLANS["w4a-g64"]
    rt, _, path = _pair(tmp_path, model, plan)
    assert rt.plan == plan and rt.source == path
    assert set(rt.module_specs) == {n for b in rt.hierarchy().values() for n in b}
    hp = rt.hw_plan()
    assert hp.modules["blocks.1.mlp.fc2"].bits == 4
    mem = rt.memory()
    fp32 = sum(t.numel() * t.element_size() for t in
               list(model.parameters()) + list(model.buffers()))
    assert mem["packed"] == packed_nbytes(rt) and mem["total"] == mem["packed"] + mem["float"]
    assert mem["total"] < 0.25 * fp32, (mem, fp32)
    assert not any(p.requires_grad for p in rt.parameters())
    assert rt.cost(DEVICE, seq_len=10).fits


def test_generation_is_not_applicable(tmp_path, model):
    rt, _, path = _pair(tmp_path, model, PLANS["w4a-g64"])
    with pytest.raises(GenerationError, match="classifier.*cannot generate"):
        rt.generate([5, 6], 4)
    with pytest.raises(ConfigError, match="perplexity needs a language model"):
        rt.perplexity(torch.arange(40))
    assert isinstance(SDTRuntime.from_packed(path), SDTRuntime)
    with pytest.raises(ArchitectureError, match="not a SpikeGPT"):
        RuntimeModel.from_packed(path)


# ---- bad files --------------------------------------------------------------------------------

@pytest.fixture
def good(tmp_path, model):
    return export_packed(model, PLANS["w4a-g64"], tmp_path / "good.qslm.safetensors")


def _bad(tmp_path, good, **kw):
    return rewrite(good, tmp_path / "bad.qslm.safetensors", **kw)


def test_spikegpt_plan_on_an_encoder_file(tmp_path, good):
    def spikegpt_plan(d):
        d["plan"]["modules"] = {"blocks.0.att.key": {"bits": 4, "symmetric": True,
                                                     "granularity": "channel",
                                                     "group_size": None}}
    with pytest.raises(ArchitectureError, match="plan is not for this spike-driven encoder"):
        load_runtime(_bad(tmp_path, good, doc=spikegpt_plan))


def test_unknown_family(tmp_path, good):
    bad = _bad(tmp_path, good, doc=lambda d: d["config"].update(family="transformer-xl"))
    with pytest.raises(ArchitectureError, match="unknown model family 'transformer-xl'"):
        load_runtime(bad)
    with pytest.raises(ArchitectureError, match="unknown model family"):
        load_packed(bad).build_model()


def test_bad_encoder_configs(tmp_path, good):
    with pytest.raises(FormatVersionError, match="encoder config has format_version 9"):
        load_runtime(_bad(tmp_path, good, doc=lambda d: d["config"].update(format_version=9)))
    with pytest.raises(ArchitectureError, match="not a spike-driven encoder config.*n_head"):
        load_runtime(_bad(tmp_path, good, doc=lambda d: d["config"].update(n_head=4)))
    with pytest.raises(ArchitectureError, match=r"'emb' is packed with shape \[300, 64\], the "
                                                r"model's is \[300, 48\]"):
        load_runtime(_bad(tmp_path, good, doc=lambda d: d["config"].update(n_embd=48)))
    with pytest.raises(ArchitectureError, match="'blocks.2.attn.q'"):
        load_runtime(_bad(tmp_path, good, doc=lambda d: d["config"].update(n_layer=3)))


def test_encoder_config_on_a_spikegpt_plan_and_tensors(tmp_path, good):
    """A SpikeGPT config on an encoder file is caught as a SpikeGPT whose plan does not
    resolve; a missing folded bias or an unfolded-config mismatch are missing / unexpected
    tensors."""
    from runtime_helpers import tiny_model

    gpt = export_packed(tiny_model(), QuantPlan({}, QuantSpec(4, group_size=64)),
                        tmp_path / "gpt.qslm.safetensors")
    gpt_cfg = read_file(gpt)[1]["config"]
    with pytest.raises(ArchitectureError, match="SpikeGPT"):
        load_runtime(_bad(tmp_path, good, doc=lambda d: d.update(config=gpt_cfg)))
    with pytest.raises(PackedModelError, match="missing tensor 'blocks.0.attn.q.bias'"):
        load_runtime(_bad(tmp_path, good, tensors=lambda t: t.pop("blocks.0.attn.q.bias")))
    with pytest.raises(PackedModelError, match="missing tensor 'blocks.0.attn.q_norm.weight'"):
        load_runtime(_bad(tmp_path, good,
                          doc=lambda d: d["config"].update(norms_folded=False)))
