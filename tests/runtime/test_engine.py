"""The fused Rust step engine (``qslm.runtime.engine``, ``rust/src/rwkv.rs``) against the torch
modules of the same packed model: logits within the parity tolerance token by token, identical
greedy generations and identical firing rates, for every packed scheme, both switches of spec §7,
weights kept at full precision; rebuilt when a parameter changes; clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qslm import _kernels
from qslm.errors import GenerationError, QslmError, ShapeError
from qslm.quant import QuantPlan, QuantSpec, export_packed
from qslm.runtime import LOGIT_RTOL, load_runtime, relative_logit_error
from qslm.runtime.engine import engine_for

from runtime_helpers import PLANS, tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOKENS = [0, 17, 5, 299, 42, 42, 7, 123, 64, 1, 250, 3]


def _runtime(tmp_path, plan, **config):
    model = tiny_model(seed=3, **config)
    return load_runtime(export_packed(model, plan, tmp_path / "m.qslm.safetensors"))


def _torch_logits(rt, tokens):
    state, out = rt.init_state(1), []
    with torch.no_grad():
        for t in tokens:
            logits, state = rt.step(torch.tensor([t]), state)
            out.append(logits[0])
    return torch.stack(out)


def _fused_logits(rt, tokens):
    engine = engine_for(rt)
    state = engine.new_state()
    return torch.stack([torch.from_numpy(engine.step(t, state)) for t in tokens]), state


@pytest.mark.parametrize("plan", sorted(PLANS))
@pytest.mark.parametrize("switches", [{}, {"binary_embedding": False, "rescale_every": 1}],
                         ids=["released", "run.py"])
def test_fused_step_matches_torch_step(tmp_path, plan, switches):
    rt = _runtime(tmp_path, PLANS[plan], **switches)
    fused, state = _fused_logits(rt, TOKENS)
    ref = _torch_logits(rt, TOKENS)
    assert relative_logit_error(fused, ref) <= LOGIT_RTOL
    assert state.steps == len(TOKENS)
    assert state.spike_counts.shape == (2 * rt.config.n_layer,)
    assert state.spike_counts.sum() > 0


def test_fused_generation_identical_with_the_same_rates(tmp_path):
    rt = _runtime(tmp_path, PLANS["mixed"])
    assert rt.fused_step
    a = rt.generate(TOKENS[:4], 24)
    rates_fused, n_fused = rt.firing_rates(), rt.measured_elements()
    rt.reset_firing_rates()
    rt.fused_step = False
    b = rt.generate(TOKENS[:4], 24)
    assert a == b
    assert n_fused == rt.measured_elements() == 27 * rt.config.n_embd * 2 * rt.config.n_layer
    assert rates_fused == pytest.approx(rt.firing_rates(), abs=0)


def test_sampled_generation_identical(tmp_path):
    from qslm.runtime import Sampling

    rt = _runtime(tmp_path, PLANS["w4a-g64"])
    s = Sampling(temperature=0.9, top_p=0.8, seed=11)
    a = rt.generate([1, 2, 3], 20, s)
    rt.fused_step = False
    assert a == rt.generate([1, 2, 3], 20, s)


def test_keep_spikes_runs_the_torch_modules(tmp_path):
    rt = _runtime(tmp_path, PLANS["w4a-g64"])
    with rt.record_spikes(keep_spikes=True) as rec:
        out = rt.generate([1, 2], 5)
    # 2 prompt tokens + 4 fed back, each recorded as (1, 1, C)
    assert rec.spikes("blocks.0.lif1").shape == (1, 6, rt.config.n_embd)
    assert len(out) == 5
    with rt.record_spikes() as rec:  # rates only: the fused engine counts
        rt.generate([1, 2], 5)
    assert sum(rec.rates().values()) > 0


def test_engine_follows_parameter_changes(tmp_path):
    rt = _runtime(tmp_path, PLANS["mixed"])  # head and one att.output kept at full precision
    before, _ = _fused_logits(rt, TOKENS[:3])
    e0 = engine_for(rt)
    assert engine_for(rt) is e0  # cached while nothing changes
    with torch.no_grad():
        rt.head.weight.mul_(2.0)  # in place: torch's version counter moves
        rt.blocks[1].ln1.bias.add_(0.25)
    assert engine_for(rt) is not e0
    after, _ = _fused_logits(rt, TOKENS[:3])
    assert relative_logit_error(after, _torch_logits(rt, TOKENS[:3])) <= LOGIT_RTOL
    assert not torch.allclose(before, after)


def test_large_vocab_and_width(tmp_path):
    """Matrices big enough for the kernels' multi-task schedules and SIMD paths."""
    rt = _runtime(tmp_path, QuantPlan({"emb": QuantSpec(1, True, group_size=64)},
                                      QuantSpec(3, False, group_size=64)),
                  vocab_size=5003, n_embd=256, n_layer=2)
    fused, _ = _fused_logits(rt, [5, 4000, 17, 9])
    assert relative_logit_error(fused, _torch_logits(rt, [5, 4000, 17, 9])) <= LOGIT_RTOL


def test_bad_tokens_and_bad_engine_inputs(tmp_path):
    rt = _runtime(tmp_path, PLANS["w4a-g64"])
    engine = engine_for(rt)
    state = engine.new_state()
    with pytest.raises(ShapeError, match="outside the vocabulary"):
        engine.step(300, state)
    with pytest.raises(ShapeError, match=">= 0"):
        engine.step(-1, state)
    assert state.steps == 0  # nothing half-done
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        rt.generate([300], 3)

    from qslm.runtime.engine import _inputs

    config, tensors, packed, _ = _inputs(rt)
    _kernels.RwkvEngine(config, tensors, packed)  # the real inputs build
    t2 = dict(tensors)
    del t2["blocks.1.ln2.bias"]
    with pytest.raises(ShapeError, match="blocks.1.ln2.bias"):
        _kernels.RwkvEngine(config, t2, packed)
    t2 = dict(tensors, **{"ln_out.weight": np.zeros(7, np.float32)})
    with pytest.raises(ShapeError, match="ln_out.weight"):
        _kernels.RwkvEngine(config, t2, packed)
    p2 = dict(packed)
    codes, scales, zp, bits, g = p2["blocks.0.ffn.key"]
    p2["blocks.0.ffn.key"] = (codes[:-1], scales[:-1], None if zp is None else zp[:-1], bits, g)
    with pytest.raises(ShapeError, match="blocks.0.ffn.key"):
        _kernels.RwkvEngine(config, tensors, p2)
    with pytest.raises(QslmError, match="n_layer"):
        _kernels.RwkvEngine({k: v for k, v in config.items() if k != "n_layer"}, tensors, packed)
    with pytest.raises(QslmError, match="tau"):
        _kernels.RwkvEngine(dict(config, tau=0.0), tensors, packed)
