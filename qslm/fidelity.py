"""The data-free fidelity task: how far a quantized language model's predictions move from the
original model's, on text sampled from the original model itself.

Why sampled text
----------------
Without a data set (DESIGN.md, "Data") the search still needs a metric that is cheap,
deterministic and sensitive to quantization. Text the model generates from its own distribution
is text *the model itself finds likely*: scoring there weights each context by how probable the
model thinks it is, so the metric measures the change of the model's behaviour where it matters to
the model, and needs no tokenizer and no data.

Definitions
-----------
:func:`sample_calibration` draws ``n`` sequences of ``T`` tokens from the unquantized model:
column 0 is ``bos_id``, column ``t >= 1`` is sampled from ``softmax(logits_{t-1} / temperature)``
(optionally restricted to the ``top_k`` most likely tokens), with the model's recurrent form
(``init_state`` / ``step``: cost linear in ``T``) where it has one.

:class:`FidelityTask` stores the reference model's next-token log-probabilities ``log p`` at every
position of the ``(N, T)`` windows (parallel form, float32) and scores a model ``q`` by one of:

* ``metric="kl"`` (name ``"fidelity-kl"``, lower is better): the mean over all ``N·T`` positions
  of the forward KL divergence ``KL(p || q) = Σ_v p(v) · (log p(v) − log q(v))``, in nats — the
  expected extra code length when the quantized model encodes text distributed as the original
  model predicts it. The reference model scores 0 (up to rounding), so the sensitivity delta is the
  metric itself.
* ``metric="top1"`` (name ``"fidelity-top1"``, higher is better): the fraction of the ``N·T``
  positions where both models' most likely next token agree (1.0 for the reference).

:meth:`FidelityTask.both` computes both in one pass (the search report shows both).

Memory
------
The reference log-probabilities are ``N·T·V`` float32 values, kept on the CPU and part of every
pickled copy of the task: 16 × 64 tokens × 300 tokens of vocabulary is 1.2 MB, but with the
released SpikeGPT's V = 50277 the defaults (16 × 64) take 206 MB. Keep ``N·T`` small: the KL is
a smooth average, and a thousand or so positions rank quantization choices well.

Both the windows and the reference log-probabilities enter :meth:`FidelityTask.fingerprint`, so a
sensitivity cache built on one reference model's samples is never reused for another's.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qslm.errors import SensitivityError
from qslm.sensitivity import _as_long_2d, _check_batch_size, _eval_mode, _hash_tensor, _model_device

__all__ = ["FIDELITY_METRICS", "FidelityTask", "sample_calibration"]

FIDELITY_METRICS = ("kl", "top1")
SAMPLE_BATCH_SIZE = 64  # sequences sampled together (the recurrent state is tiny: L·B·C·7 floats)


# ================================================================================================
# Helpers
# ================================================================================================


def _check_int(what: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SensitivityError(f"{what} must be an integer >= {low}, got {value!r}")
    return value


def _check_language_model(model: Any, seq_len: int | None = None) -> tuple[int | None, bool]:
    """Validate that ``model`` is a language model (not a classifier) whose context holds
    ``seq_len`` tokens. Returns (vocabulary size from its config or None, has a recurrent form)."""
    if not isinstance(model, nn.Module):
        raise SensitivityError(f"model must be a torch nn.Module, got {type(model).__name__}")
    config = getattr(model, "config", None)
    if int(getattr(config, "num_classes", 0) or 0) > 0:
        raise SensitivityError(f"the fidelity task is for language models, got a classifier "
                               f"(num_classes={config.num_classes}); use a ClassificationTask")
    ctx_len = getattr(config, "ctx_len", None)
    if seq_len is not None and isinstance(ctx_len, int) and seq_len > ctx_len:
        raise SensitivityError(f"seq_len {seq_len} exceeds the model's ctx_len={ctx_len} (the "
                               "task evaluates whole windows with the parallel form)")
    vocab = getattr(config, "vocab_size", None)
    recurrent = callable(getattr(model, "init_state", None)) and callable(getattr(model, "step",
                                                                                  None))
    return (vocab if isinstance(vocab, int) else None), recurrent


def _next_token_logits(logits: Any, batch: int, what: str) -> Tensor:
    """Check the logits of one sampling step: (B, V) float32."""
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != batch:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise SensitivityError(f"{what} must return next-token logits (B, V) = ({batch}, V), "
                               f"got {got} (the fidelity task is for language models)")
    logits = logits.float()
    if not bool(torch.isfinite(logits).all()):
        raise SensitivityError("the model produced non-finite logits while sampling")
    return logits


def _draw(logits: Tensor, u: Tensor, temperature: float, top_k: int | None) -> Tensor:
    """Inverse-CDF sampling: logits (B, V) on the model's device, u (B,) uniforms in [0, 1) →
    token ids (B,) int64 on the CPU. A token of zero probability is never drawn."""
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[1]:
        kth = torch.topk(logits, top_k, dim=1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = torch.softmax(logits, dim=1)
    cdf = torch.cumsum(probs, dim=1)  # (B, V)
    x = (u.to(cdf.device, cdf.dtype) * cdf[:, -1]).unsqueeze(1)  # (B, 1), in [0, total)
    idx = torch.searchsorted(cdf, x, right=True).squeeze(1)  # first token whose cdf exceeds x
    vocab = torch.arange(probs.shape[1], device=probs.device)
    last = torch.where(probs > 0, vocab, 0).amax(dim=1)  # rounding can put x at the very end
    return torch.minimum(idx, last).cpu()


# ================================================================================================
# Sampling
# ================================================================================================


def sample_calibration(model: nn.Module, n_sequences: int, seq_len: int, *, seed: int = 0,
                       temperature: float = 1.0, top_k: int | None = None, bos_id: int = 0,
                       batch_size: int = SAMPLE_BATCH_SIZE) -> Tensor:
    """``n_sequences`` token sequences of ``seq_len`` tokens sampled from the language model
    ``model`` (unquantized): ``(n_sequences, seq_len)`` int64 on the CPU.

    Column 0 is ``bos_id``; column ``t`` is drawn from ``softmax(logits / temperature)`` of the
    model given columns ``0..t−1``, restricted to the ``top_k`` most likely tokens when given
    (tokens tied with the k-th are kept).
    The model runs in eval mode without gradients (its mode is restored), in its recurrent form
    (``init_state(B)`` / ``step(tokens, state) -> (logits, state)``) when it has one, else in its
    parallel form on the growing prefix (quadratic cost). ``batch_size`` sequences run together.

    Deterministic: every random number comes from a CPU ``torch.Generator`` seeded with ``seed``
    (uniforms drawn up front, one per sampled token), so the same seed gives the same tokens,
    whatever ``batch_size``, and the global torch RNG is left alone. ``seq_len`` must fit the
    model's ``config.ctx_len`` (the windows are scored with the parallel form). Raises
    :class:`~qslm.errors.SensitivityError` for bad arguments and for a classifier.
    """
    _check_int("n_sequences", n_sequences, 1)
    _check_int("seq_len", seq_len, 1)
    _check_int("batch_size", batch_size, 1)
    _check_int("bos_id", bos_id, 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SensitivityError(f"seed must be an integer, got {seed!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or \
            not math.isfinite(temperature) or temperature <= 0:
        raise SensitivityError(f"temperature must be a finite number > 0, got {temperature!r}")
    if top_k is not None:
        _check_int("top_k", top_k, 1)
    vocab, recurrent = _check_language_model(model, seq_len)
    if vocab is not None and bos_id >= vocab:
        raise SensitivityError(f"bos_id {bos_id} is outside the model's vocabulary of {vocab}")

    g = torch.Generator().manual_seed(seed)
    uniforms = torch.rand(n_sequences, max(seq_len - 1, 0), generator=g, dtype=torch.float64)
    out = torch.full((n_sequences, seq_len), bos_id, dtype=torch.int64)
    dev = _model_device(model)
    with torch.no_grad(), _eval_mode(model):
        for start in range(0, n_sequences, batch_size):
            rows = slice(start, min(start + batch_size, n_sequences))
            seqs, u = out[rows], uniforms[rows]  # views: writing seqs fills out
            b = seqs.shape[0]
            state = model.init_state(b) if recurrent and seq_len > 1 else None
            for t in range(1, seq_len):
                if state is not None:
                    logits, state = model.step(seqs[:, t - 1].to(dev), state)
                    logits = _next_token_logits(logits, b, "model.step()")
                else:
                    full = model(seqs[:, :t].to(dev))
                    if not isinstance(full, Tensor) or full.ndim != 3:
                        got = tuple(full.shape) if isinstance(full, Tensor) \
                            else type(full).__name__
                        raise SensitivityError(f"the model must return logits (B, T, V), got "
                                               f"{got} (the fidelity task is for language "
                                               "models)")
                    logits = _next_token_logits(full[:, -1], b, "the model")
                if t == 1 and bos_id >= logits.shape[1]:  # a model without config
                    raise SensitivityError(f"bos_id {bos_id} is outside the model's "
                                           f"{logits.shape[1]} logits")
                seqs[:, t] = _draw(logits, u[:, t - 1], float(temperature), top_k)
    return out


# ================================================================================================
# The task
# ================================================================================================


class FidelityTask:
    """Agreement of a model's next-token predictions with a reference model's, on fixed windows
    (see the module docstring for the definitions).

    ``windows``: integer ``(N, T)`` tokens, ``T >= 1`` and ``T <= ctx_len``; every position of
    every window is scored (the prediction of the token after it). At construction the reference
    model's log-probabilities over them are computed (parallel form, eval mode, no grad, float32;
    the model's mode is restored) and kept: ``N·T·V`` floats on the CPU. ``metric``: ``"kl"``
    (mean KL(p_ref || p_model) in nats, lower is better) or ``"top1"`` (agreement fraction,
    higher is better). ``batch_size`` windows per model call. Picklable (plain tensors).
    """

    higher_is_better: bool

    def __init__(self, reference_model: nn.Module, windows: Tensor | Any, metric: str = "kl",
                 batch_size: int = 8) -> None:
        if metric not in FIDELITY_METRICS:
            raise SensitivityError(f"metric must be one of {FIDELITY_METRICS}, got {metric!r}")
        w = _as_long_2d(windows, "windows")
        self.batch_size = _check_batch_size(batch_size)
        vocab, _ = _check_language_model(reference_model, w.shape[1])
        if vocab is not None and int(w.max()) >= vocab:
            raise SensitivityError(f"token id {int(w.max())} is outside the model's "
                                   f"vocabulary of {vocab}")
        self.windows = w  # (N, T) int64, CPU
        self.kind = metric
        self.name = f"fidelity-{metric}"
        self.higher_is_better = metric == "top1"
        self.sampling: dict[str, Any] | None = None  # how the windows were sampled (sampled())
        dev = _model_device(reference_model)
        parts: list[Tensor] = []
        with torch.no_grad(), _eval_mode(reference_model):
            for i in range(0, w.shape[0], self.batch_size):
                parts.append(self._log_probs(reference_model, w[i:i + self.batch_size].to(dev),
                                             None).cpu())
        self.ref_log_probs = torch.cat(parts).contiguous()  # (N, T, V) float32, CPU

    @classmethod
    def sampled(cls, model: nn.Module, n_sequences: int = 16, seq_len: int = 64, *,
                seed: int = 0, metric: str = "kl", batch_size: int = 8,
                temperature: float = 1.0, top_k: int | None = None,
                bos_id: int = 0) -> FidelityTask:
        """The task on ``n_sequences`` windows of ``seq_len`` tokens sampled from ``model`` with
        :func:`sample_calibration` (``seed``, ``temperature``, ``top_k``, ``bos_id``), scored
        against ``model`` itself. Pass the unquantized model."""
        if metric not in FIDELITY_METRICS:  # before sampling: fail fast
            raise SensitivityError(f"metric must be one of {FIDELITY_METRICS}, got {metric!r}")
        windows = sample_calibration(model, n_sequences, seq_len, seed=seed,
                                     temperature=temperature, top_k=top_k, bos_id=bos_id)
        task = cls(model, windows, metric=metric, batch_size=batch_size)
        task.sampling = {"seed": seed, "temperature": float(temperature), "top_k": top_k,
                         "bos_id": bos_id}
        return task

    @property
    def vocab_size(self) -> int:
        return int(self.ref_log_probs.shape[-1])

    def _log_probs(self, model: nn.Module, w: Tensor, vocab: int | None) -> Tensor:
        """log_softmax of the model's logits on windows w (B, T): (B, T, V) float32, checked."""
        logits = model(w)
        if not isinstance(logits, Tensor) or logits.ndim != 3 or logits.shape[:2] != w.shape:
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise SensitivityError(f"the model must return next-token logits (B, T, V) = "
                                   f"({w.shape[0]}, {w.shape[1]}, V), got {got} (the fidelity "
                                   "task is for language models)")
        if vocab is not None and logits.shape[2] != vocab:
            raise SensitivityError(f"the model has {logits.shape[2]} logits, the reference "
                                   f"model {vocab}")
        if int(w.max()) >= logits.shape[2]:
            raise SensitivityError(f"token id {int(w.max())} is outside the model's "
                                   f"{logits.shape[2]} logits")
        return F.log_softmax(logits.float(), dim=-1)

    def both(self, model: nn.Module) -> dict[str, float]:
        """``{"kl": mean KL(p_ref || p_model) in nats, "top1": agreement fraction}`` over all
        ``N·T`` positions, in one pass (eval mode, no grad; the model's mode is restored)."""
        dev = _model_device(model)
        n, t = self.windows.shape
        kl = 0.0
        agree = 0
        with torch.no_grad(), _eval_mode(model):
            for i in range(0, n, self.batch_size):
                w = self.windows[i:i + self.batch_size].to(dev)
                log_q = self._log_probs(model, w, self.vocab_size)  # (B, T, V)
                log_p = self.ref_log_probs[i:i + self.batch_size].to(dev)
                p = log_p.exp()
                # 0 · log 0 = 0: a token the reference rules out contributes nothing
                terms = torch.where(p > 0, p * (log_p - log_q), 0.0)
                kl += float(terms.sum(dim=-1).cpu().double().sum())  # (B, T) per position
                agree += int((log_q.argmax(dim=-1) == log_p.argmax(dim=-1)).sum())
        return {"kl": kl / (n * t), "top1": agree / (n * t)}

    def metric(self, model: nn.Module) -> float:
        """Mean KL(p_ref || p_model) (``"kl"``) or top-1 agreement (``"top1"``) of ``model``."""
        return self.both(model)[self.kind]

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"qslm.FidelityTask/1|metric={self.kind}|"
                           f"batch_size={self.batch_size}|".encode())
        _hash_tensor(h, self.windows)
        _hash_tensor(h, self.ref_log_probs)
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        n, t = self.windows.shape
        info: dict[str, Any] = {"name": self.name, "metric": self.kind, "n_sequences": n,
                                "seq_len": t, "vocab_size": self.vocab_size,
                                "batch_size": self.batch_size}
        if self.sampling is not None:
            info["sampling"] = dict(self.sampling)
        return info

    def __repr__(self) -> str:
        n, t = self.windows.shape
        return (f"FidelityTask({n} sequences × {t} tokens, V={self.vocab_size}, "
                f"metric={self.kind!r}, batch_size={self.batch_size})")
