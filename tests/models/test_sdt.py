"""The spike-driven encoder against its spec (../shared/spec/spike-driven-encoder.md): binary
inputs of every block Linear, pads, norm folding, linear attention cost, the qslm protocol."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import hwmodel
from hwmodel.workload import Workload
from qslm.errors import ConfigError, ShapeError
from qslm.eval import classification_accuracy, classification_batches
from qslm.hierarchy import build_hierarchy
from qslm.models import SpikeGPTConfig
from qslm.models import sdt
from qslm.models.sdt import MaskedBatchNorm, SDTConfig, SpikeDrivenEncoder, fold_norm
from qslm.quant import QuantPlan, QuantSpec, apply_fake_quant, quantizable_modules
from qslm.sensitivity import ClassificationTask, measure_sensitivity

V, PAD = 40, 1
MAX_FOLD_ERR = 1e-10  # folded vs unfolded logits, float64 (identical spikes, rounding only)


def tiny(seed: int = 0, **kw) -> SpikeDrivenEncoder:
    fields = dict(vocab_size=V, n_layer=2, n_embd=16, ctx_len=48, num_classes=3, pad_id=PAD)
    fields.update(kw)
    torch.manual_seed(seed)
    return SpikeDrivenEncoder(SDTConfig(**fields)).eval()


def batch(seed: int = 0, B: int = 4, N: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (no pad id among the real tokens) and their attention mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, V, (B, N), generator=g)
    lengths = torch.randint(N // 3, N + 1, (B,), generator=g)
    lengths[0] = N
    mask = (torch.arange(N)[None, :] < lengths[:, None]).long()
    return ids.masked_fill(mask == 0, PAD), mask


def calibrated(model: SpikeDrivenEncoder, monkeypatch: pytest.MonkeyPatch,
               seed: int = 1) -> SpikeDrivenEncoder:
    """Running statistics = one batch's statistics (momentum 1), so that the eval-mode model
    fires in every tap, as a trained one does."""
    monkeypatch.setattr(sdt, "BN_MOMENTUM", 1.0)
    ids, mask = batch(seed, B=8)
    with torch.no_grad():
        model.train()(ids, attention_mask=mask)
    return model.eval()


def block_linears(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
            and n.startswith("blocks.")]


# ---- configuration ---------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    pytest.param("n_layer", 0, id="no-layers"),
    pytest.param("n_embd", -4, id="negative-width"),
    pytest.param("vocab_size", 2.5, id="float-vocab"),
    pytest.param("num_classes", 1, id="one-class"),
    pytest.param("t_sim", 0, id="no-sim-steps"),
    pytest.param("mlp_ratio", True, id="bool-ratio"),
    pytest.param("pad_id", 40, id="pad-outside-vocab"),
    pytest.param("tau", 1.0, id="tau-1"),
    pytest.param("v_threshold", 0.0, id="threshold-at-reset"),
    pytest.param("v_reset", float("nan"), id="nan-reset"),
    pytest.param("pos_emb", 1, id="int-switch"),
])
def test_config_rejects_bad_fields(field, value) -> None:
    fields = dict(vocab_size=V, n_layer=2, n_embd=16)
    fields[field] = value
    with pytest.raises(ConfigError, match=field):
        SDTConfig(**fields)


def test_config_round_trips_and_from_dict_checks() -> None:
    c = SDTConfig(vocab_size=V, n_layer=3, n_embd=8, t_sim=2, pos_emb=False, norms_folded=True)
    d = c.to_dict()
    assert d["family"] == sdt.FAMILY and d["format_version"] == sdt.FORMAT_VERSION
    assert SDTConfig.from_dict(d) == c
    for bad, match in [({**d, "family": "spikegpt"}, "family"),
                       ({**d, "format_version": 99}, "format_version"),
                       ({**d, "n_head": 4}, "unknown"),
                       ({k: v for k, v in d.items() if k != "n_embd"}, "lacks"),
                       ([1, 2], "mapping")]:
        with pytest.raises(ConfigError, match=match):
            SDTConfig.from_dict(bad)
    with pytest.raises(ConfigError, match="unknown"):  # the families do not mix
        SpikeGPTConfig.from_dict(d)
    with pytest.raises(ConfigError, match="SDTConfig"):
        SpikeDrivenEncoder(SpikeGPTConfig(vocab_size=V, n_layer=1, n_embd=8))


@pytest.mark.parametrize("pos_emb, head_norm, folded", [
    (True, True, False), (False, False, False), (True, False, True)])
def test_n_params_counts_the_module(pos_emb, head_norm, folded) -> None:
    model = tiny(pos_emb=pos_emb, head_norm=head_norm, norms_folded=folded)
    assert model.config.n_params() == sum(p.numel() for p in model.parameters())


# ---- the spike-driven property ---------------------------------------------------------------

@pytest.mark.parametrize("fold", [False, True], ids=["with-norms", "folded"])
def test_every_block_linear_takes_exactly_binary_spikes(fold, monkeypatch) -> None:
    model = calibrated(tiny(n_layer=3), monkeypatch)
    if fold:
        model.fold_norms()
    seen: dict[str, list[torch.Tensor]] = {}

    def hook(name):
        return lambda module, args: seen.setdefault(name, []).append(args[0].detach())

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, nn.Linear)]
    ids, mask = batch(2)
    with torch.no_grad():
        model(ids, attention_mask=mask)
    for h in handles:
        h.remove()
    binary = sorted(n for n, xs in seen.items() if all(((x == 0) | (x == 1)).all() for x in xs))
    assert binary == sorted(block_linears(model)) == sorted(model.spike_input_modules())
    assert "head" in seen and "head" not in binary  # the pooled membrane is real-valued
    for name in binary:  # and they do spike: neither silent nor saturated
        x = torch.cat([x.flatten() for x in seen[name]])
        assert 0 < float(x.mean()) < 1, name


def test_a_lif_on_a_binary_current_never_fires() -> None:
    """Why attn.o has no LIF of its own: its input a⊙v is already 0/1, and a LIF driven by a
    0/1 current stays below threshold: H_t ≤ 1 − 2^−t (float32 rounds it up to 1 only after
    about 24 steps, far beyond any t_sim)."""
    from qslm.models.spikegpt import lif_multistep

    x = torch.ones(1, 16, 8)  # the strongest binary input, every one of 16 steps
    assert lif_multistep(x).sum() == 0


# ---- pads ------------------------------------------------------------------------------------

def test_pads_do_not_influence_valid_tokens(monkeypatch) -> None:
    model = calibrated(tiny(), monkeypatch)
    short = torch.tensor([[5, 6, 7, 8, 9]])
    longer = torch.tensor([[11, 12, 13, 14, 15, 16, 17, 18, 19, 20]])
    with torch.no_grad(), model.record_spikes() as rec:
        alone = model(short)
    gates = [r for tap, r in rec.rates().items() if tap.endswith("attn.gate")]
    assert len(gates) == 2 and min(gates) > 0  # the attention mixes tokens: pads could leak
    with torch.no_grad():
        ids = torch.cat([torch.cat([short, torch.full((1, 5), PAD)], 1), longer])
        padded = model(ids)  # pads recognised by pad_id
        mask = (ids != PAD).long()
        garbage = ids.masked_fill(mask == 0, 33)  # pad positions hold any token: mask decides
        masked = model(garbage, attention_mask=mask)
        left = model(torch.cat([torch.full((1, 5), PAD), short], 1))  # left padding too
        long_alone = model(longer)
    torch.testing.assert_close(padded[0], alone[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(masked, padded, rtol=0, atol=1e-6)
    torch.testing.assert_close(left, alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(padded[1], long_alone[0], rtol=0, atol=1e-6)


def test_training_statistics_skip_pads() -> None:
    model = tiny().train()
    ids, mask = batch(3)
    with torch.no_grad():
        a = model(ids, attention_mask=mask)
        b = model(ids.masked_fill(mask == 0, 30), attention_mask=mask)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_rates_count_valid_tokens_only(monkeypatch) -> None:
    model = calibrated(tiny(), monkeypatch)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    padded = torch.cat([ids, torch.full((1, 4), PAD)], 1)
    with torch.no_grad(), model.record_spikes(keep_spikes=True) as r1:
        model(ids)
    with torch.no_grad(), model.record_spikes(keep_spikes=True) as r2:
        model(padded)
    assert r2.rates() == pytest.approx(r1.rates())
    S, C = model.config.t_sim, model.config.n_embd
    assert r2.spikes("blocks.0.attn.lif_in").shape == (6, S, C)
    assert r2.spikes("blocks.0.attn.lif_map").shape == (1, S, C)
    assert r2.spikes("blocks.1.mlp.lif_hidden").shape == (6, S, model.config.mlp_hidden)
    assert set(r1.rates()) == set(model.tap_names())
    with pytest.raises(ConfigError, match="no spike tap"):
        r1.spikes("blocks.0.attn.q")


@pytest.mark.parametrize("make_idx, match", [
    pytest.param(lambda: torch.tensor([[1.0, 2.0]]), "integer", id="float-ids"),
    pytest.param(lambda: torch.tensor([3, 4]), r"\(B, N\)", id="1-d"),
    pytest.param(lambda: torch.tensor([[3, V]]), "in \\[0", id="out-of-vocab"),
    pytest.param(lambda: torch.full((1, 49), 3), "ctx_len", id="too-long"),
    pytest.param(lambda: torch.tensor([[3, 4], [PAD, PAD]]), "only pad", id="all-pads"),
])
def test_forward_rejects_bad_input(make_idx, match) -> None:
    with pytest.raises(ShapeError, match=match):
        tiny()(make_idx())


def test_each_call_starts_from_fresh_membranes() -> None:
    model = tiny()
    ids, mask = batch(4)
    with torch.no_grad():
        first = model(ids, attention_mask=mask)
        second = model(ids, attention_mask=mask)
    assert torch.equal(first, second)


# ---- norm folding ----------------------------------------------------------------------------

def test_fold_norm_of_one_linear() -> None:
    torch.manual_seed(0)
    for bias in (False, True):
        lin, norm = nn.Linear(6, 5, bias=bias), MaskedBatchNorm(5).eval()
        with torch.no_grad():
            for t in (norm.weight, norm.bias, norm.running_mean):
                t.normal_()
            norm.running_var.uniform_(0.2, 3.0)
        w, b = fold_norm(lin, norm)
        x = torch.randn(7, 6)
        torch.testing.assert_close(x @ w.T + b, norm(lin(x)).detach())
    with pytest.raises(ShapeError, match="cannot fold"):
        fold_norm(nn.Linear(6, 5), MaskedBatchNorm(4))


def test_folding_keeps_the_function_and_the_spikes() -> None:
    model = tiny(n_layer=3).double()
    with torch.no_grad():  # arbitrary statistics and affines, not the identity
        for m in model.modules():
            if isinstance(m, MaskedBatchNorm):
                m.weight.uniform_(0.5, 2.0)
                m.bias.normal_(0.0, 0.5)
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.3, 2.0)
    ids, mask = batch(5)
    with torch.no_grad(), model.record_spikes(keep_spikes=True) as before:
        expected = model(ids, attention_mask=mask)
    n_norms = sum(isinstance(m, MaskedBatchNorm) for m in model.modules())
    assert model.fold_norms() is model and model.config.norms_folded
    assert sum(isinstance(m, MaskedBatchNorm) for m in model.modules()) == 3  # map_norm stays
    assert n_norms == 3 * 7
    with torch.no_grad(), model.record_spikes(keep_spikes=True) as after:
        got = model(ids, attention_mask=mask)
    torch.testing.assert_close(got, expected, rtol=0, atol=MAX_FOLD_ERR)
    for tap in model.tap_names():
        assert torch.equal(after.spikes(tap), before.spikes(tap)), tap
    assert all(model.get_submodule(n).bias is not None for n in block_linears(model))
    # a folded model rebuilds from its config and loads its own state dict
    clone = SpikeDrivenEncoder(SDTConfig.from_dict(model.config.to_dict())).double().eval()
    clone.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(clone(ids, attention_mask=mask), got)
    assert model.fold_norms() is model  # folding twice is a no-op


# ---- cost linear in sequence length -------------------------------------------------------

class _Shapes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def _trace(model: SpikeDrivenEncoder, N: int) -> list[tuple[int, ...]]:
    ids = torch.randint(2, V, (2, N), generator=torch.Generator().manual_seed(N))
    labels = torch.tensor([0, 2])
    with _Shapes() as mode:
        _, loss = model(ids, labels)
        loss.backward()
    return mode.shapes


def test_no_tensor_spans_two_token_axes_and_memory_is_linear() -> None:
    model = tiny(ctx_len=64, n_embd=8).train()  # N = 29, 58 differ from every other size
    small, big = _trace(model, 29), _trace(model, 58)
    for N, shapes in ((29, small), (58, big)):
        assert not [s for s in shapes if sum(d == N for d in s) >= 2], N
    assert len(small) == len(big)  # the same operations, only longer
    numel = [max(1, torch.Size(s).numel()) for s in small]
    numel_big = [max(1, torch.Size(s).numel()) for s in big]
    assert all(b <= 2 * a for a, b in zip(numel, numel_big))


# ---- training --------------------------------------------------------------------------------

def test_gradients_reach_every_weight_through_the_surrogate() -> None:
    model = tiny(seed=3, n_layer=2).train()
    ids, mask = batch(6, B=6)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    _, loss = model(ids, labels, attention_mask=mask)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    # q and k reach the loss only through lif_q/lif_k, Q⊙K and lif_map: surrogates all along
    assert model.get_parameter("blocks.0.attn.q.weight").grad.abs().sum() > 0


def test_a_few_training_steps_lower_the_loss() -> None:
    model = tiny(seed=2, n_layer=1, n_embd=16).train()
    ids, mask = batch(7, B=16)
    labels = (ids[:, 0] % 3).long()  # learnable from the first token
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        _, loss = model(ids, labels, attention_mask=mask)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


# ---- protocol used by the rest of qslm ------------------------------------------------------

@pytest.mark.parametrize("pos_emb", [True, False])
def test_hierarchy_covers_every_quantizable_module(pos_emb) -> None:
    model = tiny(n_layer=3, pos_emb=pos_emb)
    h = model.hierarchy()
    assert list(h) == ["emb", *(["pos"] if pos_emb else []), "blocks.0", "blocks.1",
                       "blocks.2", "head"]
    assert h["blocks.1"] == [f"blocks.1.{s}" for s in (
        "attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc1", "mlp.fc2")]
    leaves = [n for names in h.values() for n in names]
    every = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    assert leaves == every  # each once, in model order
    assert list(quantizable_modules(model)) == leaves
    tree = build_hierarchy(model)
    assert tree.source == "protocol" and tree.module_names == tuple(leaves)
    assert [b.name for b in tree.repeated_blocks] == ["blocks.0", "blocks.1", "blocks.2"]
    assert set(model.spike_input_modules()) == set(block_linears(model))
    model.fold_norms()
    assert [n for names in model.hierarchy().values() for n in names] == leaves


def test_workload_matches_the_model_and_uses_firing_rates(monkeypatch) -> None:
    model = calibrated(tiny(n_layer=2), monkeypatch)
    w = model.workload(seq_len=10)
    assert isinstance(w, Workload) and w.per == "sequence"
    assert w.module_names == tuple(n for names in model.hierarchy().values() for n in names)
    spiking = {m.name for m in w.modules if m.input_kind == "spikes"}
    assert spiking == set(model.spike_input_modules())
    shapes = {n: tuple(m.weight.shape) for n, m in quantizable_modules(model).items()}
    assert {m.name: m.weight_shape for m in w.modules} == shapes
    # Deployed form: every fp32 tensor outside the quantized weights is "other"
    folded = dataclasses.replace(model.config, norms_folded=True)
    sd = SpikeDrivenEncoder(folded).state_dict()
    other = sum(t.numel() for k, t in sd.items() if t.is_floating_point()
                and k.removesuffix(".weight") not in shapes)
    assert w.other_param_bytes == 4 * other
    S = model.config.t_sim
    assert {m.calls for m in w.modules if m.input_kind == "spikes"} == {10.0 * S}
    assert model.workload().name.endswith(f"/seq{model.config.ctx_len}/cls3")  # default N

    ids, mask = batch(8)
    with torch.no_grad(), model.record_spikes() as rec:
        model(ids, attention_mask=mask)
    exact = model.workload(rec.input_rates(), seq_len=10)
    assert {m.name: m.input_rate for m in exact.modules if m.input_kind == "spikes"} == \
        pytest.approx(rec.input_rates())
    assert rec.input_rates()["blocks.0.attn.o"] == pytest.approx(rec.rates()["blocks.0.attn.gate"])
    by_block = model.workload(rec.block_rates(), "sequence", spike_inputs="idealized", seq_len=10)
    for b in ("blocks.0", "blocks.1"):  # block rates count the same accumulates
        events = lambda wl: sum(m.events for m in wl.modules if m.block == b)  # noqa: E731
        assert events(by_block) == pytest.approx(events(exact))
    lo, hi = (hwmodel.cost(model.workload(r, seq_len=10), 4, "neuromorphic").energy_j
              for r in (0.05, 0.5))
    assert 0 < lo < hi
    with pytest.raises(ConfigError, match="per sequence"):
        model.workload(per="token")
    with pytest.raises(ConfigError, match="spike_inputs"):
        model.workload(spike_inputs="dense")
    with pytest.raises(hwmodel.WorkloadError, match="neither"):
        model.workload({"blocks.0.attn.lif_q": 0.1})


def test_eval_sensitivity_and_fake_quant_need_no_special_case(monkeypatch) -> None:
    model = calibrated(tiny(n_layer=1), monkeypatch).fold_norms()
    g = torch.Generator().manual_seed(9)
    examples = [(torch.randint(2, V, (int(n),), generator=g).tolist(), int(n) % 3)
                for n in torch.randint(3, 15, (12,), generator=g)]
    acc = classification_accuracy(model, classification_batches(examples, 5, pad_id=PAD),
                                  progress=False)
    assert acc["n"] == 12
    task = ClassificationTask(classification_batches(examples, 6, pad_id=PAD), "loss")
    table = measure_sensitivity(model, task, [QuantSpec(2)], progress=False)
    assert set(table.modules) == set(quantizable_modules(model))
    assert set(table.blocks) == set(model.hierarchy())
    before = task.metric(model)
    with apply_fake_quant(model, QuantPlan.uniform(QuantSpec(4, group_size=8))):
        assert torch.isfinite(torch.tensor(task.metric(model)))
    assert task.metric(model) == before  # the weights are back, bit for bit
