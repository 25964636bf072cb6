"""Parity of the packed runtime with the fake-quant torch model of the same plan.

The two compute the same function with the same integer codes and fp16 scales; only the order of
the float32 accumulations in the matrix products differs (the kernels' lanes and groups vs
torch's GEMM), so their currents differ in the last bits. The LIF turns a current into a spike by
a threshold: a current within rounding of the threshold may fire in one and not in the other,
which then changes that token's residual stream by 1 — rare, but possible. Hence three criteria:

* :data:`LOGIT_RTOL` — logits: for every position (a classifier's: every sequence),
  ``max_v |Δ| ≤ LOGIT_RTOL · max_v |ref|`` (:func:`relative_logit_error` is the largest such
  ratio over all positions);
* :data:`SPIKE_AGREEMENT_MIN` — at least this fraction of all LIF outputs identical
  (:func:`spike_agreement`, over every LIF — every spike tap of the encoder, valid tokens
  only — and position);
* :data:`METRIC_RTOL` — task metric (perplexity, accuracy) on the evaluation data within this
  relative difference; and greedy generations identical.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from qslm.errors import ShapeError

__all__ = [
    "LOGIT_RTOL",
    "METRIC_RTOL",
    "SPIKE_AGREEMENT_MIN",
    "parity_report",
    "relative_logit_error",
    "spike_agreement",
]

LOGIT_RTOL = 1e-3  # per position: max |Δlogit| / max |reference logit|
SPIKE_AGREEMENT_MIN = 0.999  # fraction of identical LIF outputs
METRIC_RTOL = 1e-3  # 0.1 %: |metric − reference| / |reference|


def relative_logit_error(logits: Tensor, reference: Tensor) -> float:
    """Largest per-position ``max |logits − reference| / max |reference|`` (last dim = logits)."""
    if logits.shape != reference.shape:
        raise ShapeError(f"logits {tuple(logits.shape)} and reference {tuple(reference.shape)} "
                         "differ in shape")
    a = logits.detach().double()
    b = reference.detach().double()
    num = (a - b).abs().amax(dim=-1)
    den = b.abs().amax(dim=-1).clamp_min(1e-30)
    return float((num / den).max())


def spike_agreement(recorder: Any, reference: Any) -> float:
    """Fraction of identical spikes over every LIF both recorders kept
    (``record_spikes(keep_spikes=True)`` of the two models run on the same input)."""
    same = total = 0
    for name in reference.rates():  # the LIF names, in model order
        a, b = recorder.spikes(name), reference.spikes(name)
        if a.shape != b.shape:
            raise ShapeError(f"{name}: spikes {tuple(a.shape)} vs {tuple(b.shape)}")
        same += int((a == b).sum())
        total += a.numel()
    return same / total if total else 1.0


@torch.no_grad()
def parity_report(runtime: nn.Module, reference: nn.Module, idx: Tensor,
                  gen_tokens: int = 16, attention_mask: Tensor | None = None) -> dict[str, Any]:
    """Compare ``runtime`` with the fake-quant ``reference`` on token ids ``idx`` ``(B, T)``
    (and ``attention_mask`` ``(B, T)`` when given: a classifier's pads): parallel-form logits
    and spikes, and — for models that have them — recurrent-form logits and (language models)
    greedy generation of ``gen_tokens`` tokens from ``idx[0]``.

    Returns ``{"parallel_rel_err", "spike_agreement", "ok"}``, plus ``"recurrent_rel_err"``
    when both models have a recurrent form (``forward_recurrent``: SpikeGPT, not the
    spike-driven encoder), ``"greedy_identical"`` and ``"greedy"`` (runtime tokens, reference
    tokens) for a language model, and for a :class:`~qslm.runtime.RuntimeModel` with its fused
    step on, ``"fused_rel_err"`` (the Rust step engine's logits along ``idx[0]``); the runtime's
    greedy tokens come from its own ``generate`` (the fused engine by default).
    """
    from qslm.runtime.sampling import GREEDY, next_token

    kw = {} if attention_mask is None else {"attention_mask": attention_mask}
    reference.eval()
    runtime.eval()
    with runtime.record_spikes(keep_spikes=True) as ra, \
            reference.record_spikes(keep_spikes=True) as rb:
        la, lb = runtime(idx, **kw), reference(idx, **kw)
    out: dict[str, Any] = {"parallel_rel_err": relative_logit_error(la, lb),
                           "spike_agreement": spike_agreement(ra, rb)}
    if hasattr(runtime, "forward_recurrent") and hasattr(reference, "forward_recurrent"):
        out["recurrent_rel_err"] = relative_logit_error(
            runtime.forward_recurrent(idx, **kw), reference.forward_recurrent(idx, **kw))
    if not getattr(runtime.config, "is_classifier", False) and hasattr(reference, "step"):
        prompt = idx[0].tolist()
        state = reference.init_state(1)
        ref_logits = []
        for t in prompt:
            logits, state = reference.step(torch.tensor([t]), state)
            ref_logits.append(logits[0])
        toks = []
        for _ in range(gen_tokens):
            t = next_token(logits[0], GREEDY)
            toks.append(t)
            logits, state = reference.step(torch.tensor([t]), state)
        if hasattr(runtime, "generate"):  # a RuntimeModel: its own generation path
            gen = runtime.generate(prompt, gen_tokens)
        else:
            gen = _greedy(runtime, prompt, gen_tokens)
        out["greedy"] = (gen, toks)
        out["greedy_identical"] = gen == toks
        if getattr(runtime, "fused_step", False):  # the Rust step engine along the prompt
            from qslm.runtime.engine import engine_for

            engine = engine_for(runtime)
            st = engine.new_state()
            fused = torch.stack([torch.from_numpy(engine.step(t, st)) for t in prompt])
            out["fused_rel_err"] = relative_logit_error(fused, torch.stack(ref_logits))
    out["ok"] = (out["parallel_rel_err"] <= LOGIT_RTOL
                 and out.get("recurrent_rel_err", 0.0) <= LOGIT_RTOL
                 and out.get("fused_rel_err", 0.0) <= LOGIT_RTOL
                 and out["spike_agreement"] >= SPIKE_AGREEMENT_MIN
                 and out.get("greedy_identical", True))
    return out


def _greedy(model: nn.Module, prompt: list[int], n: int) -> list[int]:
    from qslm.runtime.sampling import GREEDY, next_token

    state = model.init_state(1)
    for t in prompt:
        logits, state = model.step(torch.tensor([t]), state)
    toks = []
    for _ in range(n):
        toks.append(next_token(logits[0], GREEDY))
        logits, state = model.step(torch.tensor([toks[-1]]), state)
    return toks
