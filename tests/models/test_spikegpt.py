"""SpikeGPT against its spec (../shared/spec/spikegpt.md): layout, equations, the two forms."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from hwmodel.workload import Workload
from qslm.errors import ConfigError, QslmError, ShapeError
from qslm.models import SpikeGPT, SpikeGPTConfig
from qslm.models.spikegpt import (
    heaviside_atan,
    lif_multistep,
    lif_step,
    wkv_parallel,
    wkv_sequential,
)

PARAMS_216M = 215_399_424  # spec §3: the released SpikeGPT-OpenWebText-216M
TENSORS_216M = 330  # spec §4
MAX_LOGIT_DIFF = 1e-4  # parallel vs recurrent (brief); with identical spikes it is exactly 0
MAX_WKV_ERR = 1e-5  # chunked softmax vs the stable recurrence, float32, |v| ~ 1


def tiny(seed: int = 0, **kw) -> SpikeGPT:
    fields = dict(vocab_size=40, n_layer=2, n_embd=32, ctx_len=64)
    fields.update(kw)
    torch.manual_seed(seed)
    return SpikeGPT(SpikeGPTConfig(**fields)).eval()


def spec_keys(L: int, C: int, V: int) -> list[tuple[str, tuple[int, ...]]]:
    """The state-dict keys and shapes of spec §4, in order, written from the spec's table."""
    keys: list[tuple[str, tuple[int, ...]]] = [("emb.weight", (V, C))]
    for layer in range(L):
        p = f"blocks.{layer}."
        keys += [(p + n, (C,)) for n in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias")]
        if layer == 0:
            keys += [(p + "ln0.weight", (C,)), (p + "ln0.bias", (C,))]
        keys += [(p + "att.time_decay", (C,)), (p + "att.time_first", (C,))]
        keys += [(p + f"att.time_mix_{c}", (1, 1, C)) for c in "kvr"]
        keys += [(p + f"att.{n}.weight", (C, C)) for n in ("key", "value", "receptance", "output")]
        keys += [(p + "ffn.time_mix_k", (1, 1, C)), (p + "ffn.time_mix_r", (1, 1, C)),
                 (p + "ffn.key.weight", (4 * C, C)), (p + "ffn.receptance.weight", (C, C)),
                 (p + "ffn.value.weight", (C, 4 * C))]
    keys += [("ln_out.weight", (C,)), ("ln_out.bias", (C,)), ("head.weight", (V, C))]
    return keys


# ---- configuration ---------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    pytest.param("n_layer", 0, id="no-layers"),
    pytest.param("n_embd", -4, id="negative-width"),
    pytest.param("vocab_size", 2.5, id="float-vocab"),
    pytest.param("rescale_every", -1, id="negative-rescale"),
    pytest.param("num_classes", True, id="bool-classes"),
    pytest.param("pooling", "max", id="unknown-pooling"),
    pytest.param("pad_id", 40, id="pad-outside-vocab"),
    pytest.param("tau", 1.0, id="tau-not-above-1"),
    pytest.param("v_threshold", 0.0, id="threshold-not-above-reset"),
    pytest.param("dropout", 1.0, id="dropout-1"),
    pytest.param("binary_embedding", 1, id="switch-not-bool"),
])
def test_config_rejects_bad_fields(field, value) -> None:
    fields = dict(vocab_size=40, n_layer=2, n_embd=8)
    fields[field] = value
    with pytest.raises(ConfigError, match=field):
        SpikeGPTConfig(**fields)


def test_config_round_trips_through_dict() -> None:
    c = SpikeGPTConfig(50277, 18, 768, binary_embedding=False, rescale_every=6, num_classes=2)
    d = c.to_dict()
    assert d["format_version"] == 1
    assert SpikeGPTConfig.from_dict(d) == c
    with pytest.raises(ConfigError, match="format_version"):
        SpikeGPTConfig.from_dict({**d, "format_version": 99})
    with pytest.raises(ConfigError, match="unknown.*colour"):
        SpikeGPTConfig.from_dict({**d, "colour": "red"})


@pytest.mark.parametrize("num_classes", [0, 5])
def test_n_params_counts_the_module(num_classes) -> None:
    m = tiny(n_layer=3, num_classes=num_classes)
    assert m.config.n_params() == sum(p.numel() for p in m.parameters())


def test_216m_layout_on_meta_device() -> None:
    cfg = SpikeGPTConfig(vocab_size=50277, n_layer=18, n_embd=768)
    with torch.device("meta"):
        m = SpikeGPT(cfg)
    assert sum(p.numel() for p in m.parameters()) == PARAMS_216M == cfg.n_params()
    sd = m.state_dict()
    assert len(sd) == TENSORS_216M
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == spec_keys(18, 768, 50277)
    assert not any(mod.bias is not None for mod in m.modules() if isinstance(mod, nn.Linear))


def test_classifier_layout_has_classify_head_and_no_head() -> None:
    sd = tiny(num_classes=3).state_dict()
    assert "head.weight" not in sd
    assert tuple(sd["classify_head.weight"].shape) == (3, 32)
    assert list(sd)[:-2] == [k for k, _ in spec_keys(2, 32, 40)][:-1]


# ---- LIF and the surrogate (spec §5) ---------------------------------------------------------

def test_lif_constant_current_fires_every_other_step() -> None:
    # tau 2, I = 1.5: H = 0.75, 1.125 (fire, reset), 0.75, 1.125 ... → spikes at t = 1, 3, 5 ...
    x = torch.full((1, 8, 1), 1.5)
    expected = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1], dtype=torch.float32)
    assert torch.equal(lif_multistep(x)[0, :, 0], expected)
    v, spikes = torch.zeros(1, 1), []
    for t in range(8):
        s, v = lif_step(x[:, t], v)
        spikes.append(float(s))
    assert spikes == expected.tolist()


def test_lif_threshold_is_inclusive_and_reset_is_hard() -> None:
    s = lif_multistep(torch.tensor([[[2.0], [1.98], [1.98]]]))  # H = 1.0 → fires (Θ(0) = 1)
    assert s.flatten().tolist() == [1.0, 0.0, 1.0]  # reset to 0; 0.99, then 0.495 + 0.99


def test_surrogate_gradient_value() -> None:
    h = torch.tensor([1.5], requires_grad=True)
    heaviside_atan(h - 1.0).sum().backward()
    assert h.grad.item() == pytest.approx(1 / (1 + (math.pi * 0.5) ** 2))
    # one LIF step from V = 0: H = X/2, dS/dX = surrogate(H − 1) / tau
    x = torch.tensor([[3.0]], requires_grad=True)
    s, _ = lif_step(x, torch.zeros(1, 1))
    s.sum().backward()
    assert x.grad.item() == pytest.approx(0.5 / (1 + (math.pi * 0.5) ** 2))


def test_lif_multistep_gradient_equals_autograd_of_the_steps() -> None:
    torch.manual_seed(1)
    x = (torch.randn(3, 20, 5, dtype=torch.float64) * 1.5 + 1.0).requires_grad_()
    upstream = torch.randn(3, 20, 5, dtype=torch.float64)
    (lif_multistep(x) * upstream).sum().backward()
    fast = x.grad.clone()
    x.grad = None
    v, out = torch.zeros(3, 5, dtype=torch.float64), []
    for t in range(20):
        s, v = lif_step(x[:, t], v)
        out.append(s)
    assert torch.equal(torch.stack(out, 1), lif_multistep(x.detach()))
    (torch.stack(out, 1) * upstream).sum().backward()
    torch.testing.assert_close(fast, x.grad, rtol=1e-12, atol=1e-12)


# ---- WKV (spec §5) ---------------------------------------------------------------------------

@pytest.mark.parametrize("T, chunk", [(1, 16), (5, 16), (37, 16), (37, 1), (37, 7), (64, 64),
                                      (100, 200)])
def test_wkv_parallel_equals_the_stable_recurrence(T, chunk) -> None:
    torch.manual_seed(T + chunk)
    B, C = 2, 6
    k, v = torch.randn(B, T, C) * 4, torch.randn(B, T, C)
    w, u = -torch.exp(torch.randn(C) * 2), torch.randn(C)
    torch.testing.assert_close(wkv_parallel(w, u, k, v, chunk), wkv_sequential(w, u, k, v),
                               rtol=0, atol=MAX_WKV_ERR)


def test_wkv_is_stable_with_extreme_exponents() -> None:
    T, C = 300, 4
    k = torch.linspace(-80, 80, T)[None, :, None].repeat(1, 1, C)  # e^80 overflows fp32
    v = torch.randn(1, T, C)
    w = -torch.exp(torch.tensor([-8.0, 0.0, 3.0, 6.0]))  # near 0 and very strong decay
    u = torch.tensor([0.0, 50.0, -50.0, 1.0])
    y = wkv_parallel(w, u, k, v)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, wkv_sequential(w, u, k, v), rtol=0, atol=MAX_WKV_ERR)


def test_wkv_equals_the_spec_formula_and_gradients_agree() -> None:
    torch.manual_seed(3)
    B, T, C = 1, 9, 3
    k = torch.randn(B, T, C, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, T, C, dtype=torch.float64, requires_grad=True)
    w = -torch.exp(torch.randn(C, dtype=torch.float64)).requires_grad_()
    u = torch.randn(C, dtype=torch.float64, requires_grad=True)
    direct = torch.empty(B, T, C, dtype=torch.float64)
    for t in range(T):  # y_t = (Σ_{i<t} e^{(t−1−i)w+k_i} v_i + e^{u+k_t} v_t) / (same, v = 1)
        wt = [torch.exp((t - 1 - i) * w + k[:, i]) for i in range(t)] + [torch.exp(u + k[:, t])]
        num = sum(e * v[:, i] for i, e in enumerate(wt))
        direct[:, t] = num / sum(wt)
    y = wkv_parallel(w, u, k, v, chunk=4)
    torch.testing.assert_close(y, direct.detach(), rtol=1e-12, atol=1e-12)
    g = torch.randn(B, T, C, dtype=torch.float64)
    ours = torch.autograd.grad((y * g).sum(), (k, v, w, u))
    ref = torch.autograd.grad((wkv_sequential(w, u, k, v) * g).sum(), (k, v, w, u))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


# ---- the two forms agree (spec §5–§7) --------------------------------------------------------

def _both_forms(model: SpikeGPT, idx: torch.Tensor):
    with torch.no_grad():
        with model.record_spikes(keep_spikes=True) as par:
            lp = model(idx)
        with model.record_spikes(keep_spikes=True) as rec:
            lr = model.forward_recurrent(idx)
    return lp, lr, par, rec


@pytest.mark.parametrize("n_layer", [1, 2, 7])
@pytest.mark.parametrize("binary", [True, False], ids=["binary-emb", "real-emb"])
def test_parallel_and_recurrent_forms_agree(n_layer, binary) -> None:
    model = tiny(seed=n_layer, n_layer=n_layer, binary_embedding=binary)
    idx = torch.randint(0, 40, (2, 24), generator=torch.Generator().manual_seed(n_layer))
    lp, lr, par, rec = _both_forms(model, idx)
    assert lp.shape == lr.shape == (2, 24, 40)
    assert (lp - lr).abs().max() <= MAX_LOGIT_DIFF
    for name in model.lif_names():
        assert torch.equal(par.spikes(name), rec.spikes(name)), name
    rates = par.rates()
    assert list(rates) == [f"blocks.{i}.lif{j}" for i in range(n_layer) for j in (1, 2)]
    assert all(0 < r < 1 for r in rates.values())  # the init makes neurons fire
    assert rates == pytest.approx(rec.rates())


def test_rescale_changes_the_function_but_both_forms_follow_it() -> None:
    idx = torch.randint(0, 40, (2, 24), generator=torch.Generator().manual_seed(0))
    model = tiny(seed=7, n_layer=7, binary_embedding=False)
    plain = model.forward_recurrent(idx)
    model.set_switches(rescale_every=6)
    lp, lr, par, rec = _both_forms(model, idx)
    assert (lp - lr).abs().max() <= MAX_LOGIT_DIFF  # parallel form implements the trick too
    assert (lr - plain).abs().max() > 0.1  # spec §7: the trick is not output-preserving
    assert torch.equal(par.spikes("blocks.6.lif1"), rec.spikes("blocks.6.lif1"))


def rwkv_rnn_reference(sd: dict[str, torch.Tensor], tokens: list[int], n_layer: int,
                       binary_embedding: bool, rescale_every: int) -> torch.Tensor:
    """A direct reading of spec §6 (RWKV_RNN): one sequence, state (5L, C), mem1/mem2 lists."""
    w = {k: v.clone().float() for k, v in sd.items()}
    for k in list(w):
        if ".time_" in k:
            w[k] = w[k].squeeze()
        if k.endswith("time_decay"):
            w[k] = -torch.exp(w[k])
        if rescale_every and (k.endswith("att.output.weight") or k.endswith("ffn.value.weight")):
            w[k] = w[k] / 2 ** (int(k.split(".")[1]) // rescale_every)
    C = w["emb.weight"].shape[1]
    state = torch.zeros(5 * n_layer, C)
    state[4::5] = -1e30
    mem1, mem2 = [torch.zeros(C) for _ in range(n_layer)], [torch.zeros(C) for _ in range(n_layer)]

    def ln(x, p):
        return torch.nn.functional.layer_norm(x, (C,), w[p + ".weight"], w[p + ".bias"])

    def lif(x, mem, i):
        h = mem[i] + (x - mem[i]) / 2.0
        s = (h >= 1.0).float()
        mem[i] = h * (1 - s)
        return s

    out = []
    for tok in tokens:
        x = w["emb.weight"][tok]
        if binary_embedding:
            x = (x >= 0).float()
        x = ln(x, "blocks.0.ln0")
        for i in range(n_layer):
            a = f"blocks.{i}.att."
            xx = ln(x, f"blocks.{i}.ln1")
            prev = state[5 * i + 1].clone()
            state[5 * i + 1] = xx
            mu = {c: w[a + f"time_mix_{c}"] for c in "kvr"}
            mix = {c: xx * mu[c] + prev * (1 - mu[c]) for c in "kvr"}
            r = torch.sigmoid(w[a + "receptance.weight"] @ mix["r"])
            k = w[a + "key.weight"] @ mix["k"]
            v = w[a + "value.weight"] @ mix["v"]
            aa, bb, pp = state[5 * i + 2], state[5 * i + 3], state[5 * i + 4]
            ww = w[a + "time_first"] + k
            p = torch.maximum(pp, ww)
            e1, e2 = torch.exp(pp - p), torch.exp(ww - p)
            wkv = (e1 * aa + e2 * v) / (e1 * bb + e2)
            ww = pp + w[a + "time_decay"]
            p = torch.maximum(ww, k)
            e1, e2 = torch.exp(ww - p), torch.exp(k - p)
            state[5 * i + 2], state[5 * i + 3], state[5 * i + 4] = e1 * aa + e2 * v, e1 * bb + e2, p
            x = x + lif(w[a + "output.weight"] @ (r * wkv), mem1, i)
            f = f"blocks.{i}.ffn."
            xx = ln(x, f"blocks.{i}.ln2")
            prev = state[5 * i + 0].clone()
            state[5 * i + 0] = xx
            xk = xx * w[f + "time_mix_k"] + prev * (1 - w[f + "time_mix_k"])
            xr = xx * w[f + "time_mix_r"] + prev * (1 - w[f + "time_mix_r"])
            r = torch.sigmoid(w[f + "receptance.weight"] @ xr)
            kk = torch.square(torch.relu(w[f + "key.weight"] @ xk))
            x = x + lif(r * (w[f + "value.weight"] @ kk), mem2, i)
            if rescale_every and (i + 1) % rescale_every == 0:
                x = x / 2
        out.append(w["head.weight"] @ ln(x, "ln_out"))
    return torch.stack(out)


@pytest.mark.parametrize("binary, rescale", [(False, 6), (True, 6), (False, 0)])
def test_recurrent_form_equals_a_direct_reading_of_spec_6(binary, rescale) -> None:
    model = tiny(seed=11, n_layer=7, binary_embedding=binary, rescale_every=rescale)
    tokens = torch.randint(0, 40, (20,), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = model.forward_recurrent(tokens[None])[0]
    ref = rwkv_rnn_reference(model.state_dict(), tokens.tolist(), 7, binary, rescale)
    torch.testing.assert_close(ours, ref, rtol=0, atol=MAX_LOGIT_DIFF)


def test_step_leaves_the_given_state_alone() -> None:
    model = tiny()
    state = model.init_state(3)
    assert state.p.eq(-1e30).all() and state.a.eq(0).all()
    assert state.rnn_rows().shape == (3, 5 * 2, 32)
    before = dataclasses.astuple(state)
    logits, new = model.step(torch.tensor([1, 2, 3]), state)
    assert logits.shape == (3, 40)
    assert all(torch.equal(a, b) for a, b in zip(before, dataclasses.astuple(state)))
    assert not torch.equal(new.att_x, state.att_x)
    with pytest.raises(ShapeError, match="batch size 3"):
        model.step(torch.tensor([1]), state)


@pytest.mark.parametrize("make_idx, match", [
    pytest.param(lambda: torch.zeros(1, 65, dtype=torch.long), "ctx_len", id="too-long"),
    pytest.param(lambda: torch.full((1, 4), 40), r"\[0, 40\)", id="token-out-of-range"),
    pytest.param(lambda: torch.zeros(1, 4), "int64", id="float-ids"),
    pytest.param(lambda: torch.zeros(4, dtype=torch.long), r"\(B, T\)", id="1-d-ids"),
])
def test_forward_rejects_bad_token_ids(make_idx, match) -> None:
    with pytest.raises(ShapeError, match=match):
        tiny()(make_idx())


# ---- classifier (spec §10, our reconstruction) -----------------------------------------------

def test_classifier_mean_pooling_ignores_right_padding() -> None:
    model = tiny(num_classes=3, pad_id=1)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 1, 1, 1]])
    with torch.no_grad():
        logits = model(ids)
        alone = model(ids[1:, :3])
        hidden = model.trunk(ids)
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits[1], alone[0])  # the pads change nothing
    torch.testing.assert_close(logits[1], model.classify_head(hidden[1, :3].mean(0)).detach())
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    torch.testing.assert_close(model(ids, attention_mask=mask), logits)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_recurrent(ids), logits, rtol=0, atol=1e-5)
    labels = torch.tensor([0, 2])
    _, loss = model(ids, labels)
    expected = nn.functional.cross_entropy(logits, labels).item()
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_classifier_last_pooling_and_errors() -> None:
    model = tiny(num_classes=2, pooling="last")
    ids = torch.tensor([[5, 6, 7, 1], [8, 9, 1, 1]])
    with torch.no_grad():
        hidden = model.trunk(ids)
        torch.testing.assert_close(model(ids), model.classify_head(hidden[[0, 1], [2, 1]]))
    with pytest.raises(ShapeError, match="only pad"):
        model(torch.tensor([[1, 1, 1]]))
    with pytest.raises(ConfigError, match="classifier"):
        model.step(torch.tensor([3]), model.init_state())


# ---- training --------------------------------------------------------------------------------

def test_a_few_training_steps_lower_the_loss() -> None:
    model = tiny(seed=2, vocab_size=16, n_layer=2, n_embd=32).train()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 16, (4, 32), generator=g)
    targets = torch.roll(idx, -1, dims=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(15):
        opt.zero_grad()
        _, loss = model(idx, targets)
        loss.backward()
        if step == 0:  # att.key reaches the loss only through the lif1 spikes (surrogate)
            for name in ("blocks.0.att.key.weight", "blocks.1.ffn.key.weight", "emb.weight"):
                grad = model.get_parameter(name).grad
                assert grad is not None and grad.abs().sum() > 0, name
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0]


# ---- protocol used by the rest of qslm ------------------------------------------------------

@pytest.mark.parametrize("num_classes", [0, 4])
def test_hierarchy_lists_every_weight_matrix_once(num_classes) -> None:
    model = tiny(n_layer=3, num_classes=num_classes)
    h = model.hierarchy()
    last = "classify_head" if num_classes else "head"
    assert list(h) == ["emb", "blocks.0", "blocks.1", "blocks.2", last]
    leaves = [n for names in h.values() for n in names]
    matrices = [k.removesuffix(".weight") for k, v in model.state_dict().items() if v.ndim == 2]
    assert leaves == matrices
    assert all(isinstance(model.get_submodule(n), (nn.Linear, nn.Embedding)) for n in leaves)
    assert model.spike_input_modules() == []


def test_workload_matches_the_model() -> None:
    model = tiny(n_layer=3)
    w = model.workload()
    assert isinstance(w, Workload) and w.per == "token"
    assert len(w.modules) == 2 + 7 * 3
    assert list(w.module_names) == [n for names in model.hierarchy().values() for n in names]
    assert w.n_params + w.other_param_bytes / 4 == model.config.n_params()
    with torch.no_grad(), model.record_spikes() as rec:
        model(torch.randint(0, 40, (2, 16)))
    ideal = model.workload(rec.block_rates(), spike_inputs="idealized")
    rates = {m.block: m.input_rate for m in ideal.modules if m.input_kind == "spikes"}
    assert rates == pytest.approx(rec.block_rates())
    cls = tiny(num_classes=2).workload(seq_len=12)
    assert cls.per == "sequence" and cls.module_names[-1] == "classify_head"
    with pytest.raises(QslmError, match="seq_len"):
        tiny(num_classes=2).workload()
