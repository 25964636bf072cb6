"""SpikeGPT: a spiking RWKV-4 language model (reference: ``../shared/spec/spikegpt.md``).

Read top to bottom:

1. :class:`SpikeGPTConfig` — the configuration (spec §3) and the two switches of spec §7.
2. The spiking pieces — the Heaviside step with the ATan surrogate gradient and the LIF neuron
   (spec §5), as a fast multi-step scan and as a single step.
3. WKV — the linear-attention recurrence of RWKV-4 (spec §5): a numerically stable step, the
   sequential reference built from it, and the chunked softmax form used by the parallel forward.
4. The modules — :class:`TimeMix` (``att``), :class:`ChannelMix` (``ffn``), :class:`Block`, and
   :class:`SpikeGPT` with the released module names, so ``state_dict()`` keys are those of
   spec §4 and the public checkpoints load by name.
5. The two forms — ``forward`` (parallel, whole sequences: training and evaluation) and ``step``
   (recurrent, one token: generation and the runtime) compute the same function.
6. The protocol the rest of qslm uses — ``hierarchy()``, ``spike_input_modules()``,
   ``workload()`` — and the spike taps (``record_spikes()``).

Shapes: B batch, T tokens, C = ``n_embd``, V = ``vocab_size``, L = ``n_layer``. The LIF "time"
axis is the token axis: one token is one SNN time step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hwmodel.workload import Workload, spikegpt_workload
from qslm.errors import ConfigError, ShapeError

__all__ = [
    "FORMAT_VERSION",
    "Block",
    "ChannelMix",
    "LIFNode",
    "SpikeGPT",
    "SpikeGPTConfig",
    "SpikeGPTState",
    "SpikeRecorder",
    "TimeMix",
    "heaviside_atan",
    "lif_multistep",
    "lif_step",
    "wkv_parallel",
    "wkv_sequential",
    "wkv_step",
]

FORMAT_VERSION = 1  # of SpikeGPTConfig.to_dict(), written into safetensors metadata
POOLINGS = ("mean", "last")
SURROGATE_ALPHA = 2.0  # spec §3: surrogate.ATan(alpha=2)
P_INIT = -1e30  # spec §6: initial WKV exponent offset of the recurrent form ("minus infinity")
WKV_CHUNK = 16  # tokens per chunk of the parallel WKV (fastest on CPU); memory O(B·C·T·chunk)
LN_EPS = 1e-5  # nn.LayerNorm default, as in the released code


# ================================================================================================
# 1. Configuration
# ================================================================================================


def _check_int(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")


@dataclass(frozen=True)
class SpikeGPTConfig:
    """Shape and behaviour of a SpikeGPT model (spec §3; the released 216M is L=18, C=768,
    V=50277). The shape fields determine the parameters; the others are switches that a
    checkpoint loader may set freely."""

    vocab_size: int  # V: token ids are 0..V-1; emb and head have V rows
    n_layer: int  # L: number of blocks
    n_embd: int  # C: residual width; attention width C, FFN hidden width 4C (hard-coded)
    ctx_len: int = 1024  # longest sequence of the parallel form (no position embedding)
    binary_embedding: bool = True  # Θ(emb) before ln0 (spec §5 step 1; §7: run.py omits it)
    rescale_every: int = 0  # r > 0: run.py's fp16 trick (spec §6): weights /2^⌊l/r⌋, x/2 every r
    num_classes: int = 0  # 0: language model with `head`; > 0: classifier with `classify_head`
    pooling: str = "mean"  # classifier pooling of LN_out over non-pad tokens: "mean" or "last"
    pad_id: int = 1  # padding token (20B tokenizer "<|padding|>" = 1, spec §9–§10)
    tau: float = 2.0  # LIF membrane time constant (decay_input=True), must be > 1
    v_threshold: float = 1.0  # LIF firing threshold
    v_reset: float = 0.0  # LIF hard-reset potential (also the initial membrane potential)
    dropout: float = 0.03  # dropout on the residual stream after every block (training only)

    def __post_init__(self) -> None:
        _check_int("vocab_size", self.vocab_size, 1)
        _check_int("n_layer", self.n_layer, 1)
        _check_int("n_embd", self.n_embd, 1)
        _check_int("ctx_len", self.ctx_len, 1)
        _check_int("rescale_every", self.rescale_every, 0)
        _check_int("num_classes", self.num_classes, 0)
        if not isinstance(self.binary_embedding, bool):
            raise ConfigError("binary_embedding must be True or False, got "
                              f"{self.binary_embedding!r}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        _check_int("pad_id", self.pad_id, 0)
        if self.pad_id >= self.vocab_size:
            raise ConfigError(f"pad_id must be < vocab_size={self.vocab_size}, got {self.pad_id}")
        for name in ("tau", "v_threshold", "v_reset", "dropout"):
            _check_float(name, getattr(self, name))
        if not self.tau > 1.0:
            raise ConfigError(f"tau must be > 1 (as in spikingjelly's LIFNode), got {self.tau!r}")
        if not self.v_threshold > self.v_reset:
            raise ConfigError(f"v_threshold ({self.v_threshold!r}) must exceed "
                              f"v_reset ({self.v_reset!r})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def is_classifier(self) -> bool:
        return self.num_classes > 0

    def n_params(self) -> int:
        """Number of parameters (spec §3): N = 2·V·C + L·(13·C² + 11·C) + 4·C for the LM.

        Per block: time-mix 4C² + 5C, channel-mix 9C² + 2C, ln1 + ln2 4C; plus ln0 and ln_out
        (2C each). The classifier replaces ``head`` (V·C) by ``classify_head`` (K·C + K bias).
        """
        V, L, C, K = self.vocab_size, self.n_layer, self.n_embd, self.num_classes
        trunk = V * C + L * (13 * C * C + 11 * C) + 4 * C
        return trunk + (K * C + K if self.is_classifier else V * C)

    def to_dict(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SpikeGPTConfig:
        if not isinstance(d, Mapping):
            raise ConfigError(f"a SpikeGPT config must be a mapping, got {type(d).__name__}")
        if d.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"SpikeGPT config format_version must be {FORMAT_VERSION}, "
                              f"got {d.get('format_version')!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields - {"format_version"})
        if unknown:
            raise ConfigError(f"unknown SpikeGPT config field(s): {', '.join(unknown)}")
        missing = sorted(n for n in ("vocab_size", "n_layer", "n_embd") if n not in d)
        if missing:
            raise ConfigError(f"SpikeGPT config lacks field(s): {', '.join(missing)}")
        return cls(**{k: v for k, v in d.items() if k != "format_version"})


# ================================================================================================
# 2. Spiking pieces: Heaviside with ATan surrogate, LIF neuron (spec §5)
# ================================================================================================


class _ATanHeaviside(torch.autograd.Function):
    """Θ(x) = 1 if x ≥ 0 else 0 forward; ATan surrogate α/2 / (1 + (π/2·α·x)²) backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, alpha: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        a = ctx.alpha
        return grad * (a / 2) / (1 + (math.pi / 2 * a * x) ** 2), None


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for the spiking and WKV arithmetic; float64 inputs stay float64 (gradcheck)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def heaviside_atan(x: Tensor, alpha: float = SURROGATE_ALPHA) -> Tensor:
    """Θ(x) (note Θ(0) = 1) with the ATan surrogate gradient; α = 2 gives 1/(1 + (πx)²)."""
    return _ATanHeaviside.apply(x, alpha)


def lif_step(x: Tensor, v: Tensor, tau: float = 2.0, v_threshold: float = 1.0,
             v_reset: float = 0.0, alpha: float = SURROGATE_ALPHA) -> tuple[Tensor, Tensor]:
    """One LIF step (spikingjelly ``LIFNode``, decay_input, hard reset, reset not detached).

    x, v: (..., C) input current and membrane potential → (spikes, new membrane potential).
    H = V + (X − (V − v_reset))/τ;  S = Θ(H − v_threshold);  V' = H·(1 − S) + v_reset·S.
    Differentiable through :func:`heaviside_atan` (the reference of :func:`lif_multistep`).
    """
    h = v + (x - (v - v_reset)) / tau
    s = heaviside_atan(h - v_threshold, alpha)
    return s, h * (1 - s) + v_reset * s


class _LIFScan(torch.autograd.Function):
    """Multi-step LIF over dim 0 with a hand-written backward (no autograd graph per step).

    Forward saves H (T, B, C). Backward runs the recursion of the chain rule:
      dS_t/dH_t = g_t (surrogate),  dV_t/dH_t = (1 − S_t) + (v_reset − H_t)·g_t,
      dH_t/dV_{t−1} = 1 − 1/τ,  dH_t/dX_t = 1/τ.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, tau: float, v_threshold: float, v_reset: float,
                alpha: float) -> Tensor:
        hs = torch.empty_like(x)  # (T, B, C) membrane potential before firing
        v = torch.full_like(x[0], v_reset)  # (B, C)
        for t in range(x.shape[0]):
            # H = V + (X − (V − v_reset))/τ, the same float operations as lif_step
            d = x[t] - v if v_reset == 0 else x[t] - (v - v_reset)
            h = torch.add(v, d.div_(tau), out=hs[t])
            v = torch.where(h >= v_threshold, v_reset, h)  # = H·(1 − S) + v_reset·S
        ctx.save_for_backward(hs)
        ctx.params = (tau, v_threshold, v_reset, alpha)
        return (hs >= v_threshold).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_s: Tensor) -> tuple[Tensor | None, ...]:
        (hs,) = ctx.saved_tensors
        tau, v_threshold, v_reset, alpha = ctx.params
        z = hs - v_threshold
        g = (alpha / 2) / (1 + (math.pi / 2 * alpha * z) ** 2)  # dS/dH, (T, B, C)
        dv_dh = (z < 0).to(hs.dtype) + (v_reset - hs) * g  # (1 − S) + (v_reset − H)·g
        gs_dh = grad_s * g
        grad_h = torch.empty_like(hs)
        grad_v = torch.zeros_like(hs[0])  # dLoss/dV_t flowing back from step t+1
        for t in range(hs.shape[0] - 1, -1, -1):
            gh = torch.addcmul(gs_dh[t], grad_v, dv_dh[t], out=grad_h[t])
            grad_v = gh * (1 - 1 / tau)
        return grad_h.div_(tau), None, None, None, None


def lif_multistep(x: Tensor, tau: float = 2.0, v_threshold: float = 1.0, v_reset: float = 0.0,
                  alpha: float = SURROGATE_ALPHA) -> Tensor:
    """LIF over the token axis of x (B, T, C), starting at V = v_reset → spikes (B, T, C).

    Computed in float32 (float64 stays float64; spikes are returned in x's dtype); equals T
    calls of :func:`lif_step`, values and gradients.
    """
    xt = x.to(_compute_dtype(x)).transpose(0, 1).contiguous()  # (T, B, C)
    s = _LIFScan.apply(xt, float(tau), float(v_threshold), float(v_reset), float(alpha))
    return s.transpose(0, 1).to(x.dtype)  # (B, T, C)


class SpikeRecorder:
    """Spikes of every LIF while :meth:`SpikeGPT.record_spikes` is active.

    ``rates()``: mean firing rate per LIF (``"blocks.{l}.lif1"`` att branch, ``lif2`` ffn
    branch) over every element seen — all calls, all tokens, pad positions included.
    ``spikes(name)``: the spikes themselves (B, T, C), concatenated over calls along T (only with
    ``keep_spikes=True``).
    """

    def __init__(self, names: list[str], keep_spikes: bool) -> None:
        self.keep_spikes = keep_spikes
        self._counts: dict[str, Tensor | int] = dict.fromkeys(names, 0)
        self._totals: dict[str, int] = dict.fromkeys(names, 0)
        self._spikes: dict[str, list[Tensor]] = {n: [] for n in names}

    def add(self, name: str, s: Tensor) -> None:
        """Record spikes s (B, T, C) of one call (a step records (B, 1, C))."""
        s = s.detach()
        self._counts[name] = self._counts[name] + (s != 0).sum()  # int64, exact
        self._totals[name] += s.numel()
        if self.keep_spikes:
            self._spikes[name].append(s.to(torch.bool))

    def add_counts(self, name: str, spikes: int, elements: int) -> None:
        """Record ``spikes`` fired among ``elements`` neuron updates without the spikes
        themselves (a fused kernel that only counts); not with ``keep_spikes``."""
        if self.keep_spikes:
            raise ConfigError("this recorder keeps spikes: it needs the spike tensors, not counts")
        self._counts[name] = self._counts[name] + int(spikes)
        self._totals[name] += int(elements)

    def rates(self) -> dict[str, float]:
        return {n: float(self._counts[n]) / t if (t := self._totals[n]) else 0.0
                for n in self._counts}

    def block_rates(self) -> dict[str, float]:
        """Mean rate of the two LIFs of each block, keyed "blocks.{l}" (for ``workload()``)."""
        per_block: dict[str, list[float]] = {}
        for name, r in self.rates().items():
            per_block.setdefault(name.rsplit(".", 1)[0], []).append(r)
        return {b: sum(rs) / len(rs) for b, rs in per_block.items()}

    # What a tap is called in messages, and the axis along which calls are concatenated.
    _TAP_KIND = "LIF"
    _CONCAT_DIM = 1

    def spikes(self, name: str) -> Tensor:
        if name not in self._spikes:
            raise ConfigError(f"no {self._TAP_KIND} named {name!r}; known: "
                              f"{', '.join(self._spikes)}")
        if not self.keep_spikes:
            raise ConfigError("spikes were not kept: use record_spikes(keep_spikes=True)")
        if not self._spikes[name]:
            raise ConfigError(f"{name} recorded no spikes: run the model inside record_spikes()")
        return torch.cat(self._spikes[name], dim=self._CONCAT_DIM)


class LIFNode(nn.Module):
    """A multi-step LIF neuron layer (no parameters, no state-dict keys; spec §4 lif1/lif2)."""

    def __init__(self, tau: float, v_threshold: float, v_reset: float) -> None:
        super().__init__()
        self.tau, self.v_threshold, self.v_reset = tau, v_threshold, v_reset
        self.tap_name = ""  # fully-qualified name, set by SpikeGPT
        self.recorder: SpikeRecorder | None = None

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C) current → (B, T, C) spikes
        s = lif_multistep(x, self.tau, self.v_threshold, self.v_reset)
        if self.recorder is not None:
            self.recorder.add(self.tap_name, s)
        return s

    def step(self, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:  # (B, C), (B, C) fp32
        s, v = lif_step(x.float(), v, self.tau, self.v_threshold, self.v_reset)
        if self.recorder is not None:
            self.recorder.add(self.tap_name, s[:, None])
        return s.to(x.dtype), v

    def extra_repr(self) -> str:
        return f"tau={self.tau}, v_threshold={self.v_threshold}, v_reset={self.v_reset}"


# ================================================================================================
# 3. WKV (spec §5): y_t = (Σ_{i<t} e^{(t−1−i)w + k_i} v_i + e^{u+k_t} v_t) / (same without v)
# ================================================================================================


def wkv_step(w: Tensor, u: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor,
             p: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One token of the stable WKV recurrence (spec §5), all float32.

    w, u: (C,) decay (w = −exp(time_decay) < 0) and bonus; k, v: (B, C) this token;
    a, b, p: (B, C) numerator, denominator and exponent offset of the past → (y, a', b', p').
    """
    q = torch.maximum(p, u + k)
    e1, e2 = torch.exp(p - q), torch.exp(u + k - q)
    y = (e1 * a + e2 * v) / (e1 * b + e2)
    q = torch.maximum(p + w, k)
    e1, e2 = torch.exp(p + w - q), torch.exp(k - q)
    return y, e1 * a + e2 * v, e1 * b + e2, q


def wkv_sequential(w: Tensor, u: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Reference WKV over a sequence: T calls of :func:`wkv_step`. k, v (B, T, C) → y (B, T, C)."""
    dt = _compute_dtype(k)
    w, u, k, v = w.to(dt), u.to(dt), k.to(dt), v.to(dt)
    B, T, C = k.shape
    a = torch.zeros(B, C, dtype=dt, device=k.device)
    b = torch.zeros(B, C, dtype=dt, device=k.device)
    p = torch.full((B, C), P_INIT, dtype=dt, device=k.device)
    ys = []
    for t in range(T):
        y, a, b, p = wkv_step(w, u, k[:, t], v[:, t], a, b, p)
        ys.append(y)
    return torch.stack(ys, dim=1)


def wkv_parallel(w: Tensor, u: Tensor, k: Tensor, v: Tensor, chunk: int = WKV_CHUNK) -> Tensor:
    """WKV as a per-channel softmax, in chunks of ``chunk`` tokens. k, v (B, T, C) → y (B, T, C).

    y_t is a softmax-weighted mean of values with exponents E[t, i] = (t−1−i)·w + k_i (i < t),
    u + k_t (i = t), −∞ (i > t): the spec §5 formula, stable for any T (softmax subtracts the
    row maximum). E is a per-channel matrix M[t, i] plus k_i, so one chunk costs one broadcast
    add, a softmax and a batched mat-vec. Tokens before the chunk (start s) enter as one extra
    key: exponent m = log Σ_{i<s} e^{(s−1−i)w + k_i}, shifted by (t − s)·w for query t, with
    value ȳ = their softmax-weighted mean; after the chunk (m, ȳ) move on by n tokens the same
    way. Memory per chunk O(B·C·chunk²); chunk ≥ T is the plain T×T softmax. Computed in
    float32 (float64 inputs stay float64, for gradcheck).
    """
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1, got {chunk}")
    dt = _compute_dtype(k)
    k = k.to(dt).transpose(1, 2)  # (B, C, T)
    v = v.to(dt).transpose(1, 2)  # (B, C, T)
    w, u = w.to(dt), u.to(dt)  # (C,)
    T = k.shape[-1]
    m: Tensor | None = None  # (B, C) exponent of the past as one key; None: no past yet
    ybar: Tensor | None = None  # (B, C) the past's weighted mean value
    ys = []
    matrices: dict[int, tuple[Tensor, Tensor]] = {}  # chunk length → (query, state) offsets
    for s in range(0, T, chunk):
        n = min(chunk, T - s)
        if n not in matrices:
            matrices[n] = _wkv_chunk_matrices(w, u, n)
        m_query, m_state = matrices[n]  # (C, n, n+1), (C, n+1)
        keys, vals = k[..., s:s + n], v[..., s:s + n]  # (B, C, n)
        if m is not None:
            keys = torch.cat([keys, m[..., None]], dim=-1)  # (B, C, n+1)
            vals = torch.cat([vals, ybar[..., None]], dim=-1)
        else:
            m_query, m_state = m_query[..., :n], m_state[..., :n]
        e = m_query + keys[:, :, None, :]  # (B, C, n, keys): query t, key i
        ys.append((torch.softmax(e, dim=-1) @ vals[..., None]).squeeze(-1))  # (B, C, n)
        if s + n < T:  # carry the past to the next chunk start s + n
            e = m_state + keys  # (B, C, keys)
            m = torch.logsumexp(e, dim=-1)  # (B, C)
            ybar = (torch.softmax(e, dim=-1) * vals).sum(dim=-1)  # (B, C)
    return torch.cat(ys, dim=-1).transpose(1, 2)  # (B, T, C)


def _wkv_chunk_matrices(w: Tensor, u: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Per-channel exponent offsets of a chunk of n tokens (keys 0..n−1, then the past key n).

    query (C, n, n+1): [t, i] = (t−1−i)·w (i < t), u (i = t), −∞ (i > t); [t, n] = t·w.
    state (C, n+1): [i] = (n−1−i)·w, [n] = n·w — the exponents seen from the next chunk start.
    """
    pos = torch.arange(n, device=w.device)
    dist = (pos[:, None] - 1 - pos[None, :]).clamp(min=0).to(w.dtype)  # (n, n): t−1−i
    mq = torch.where(pos[None, :] < pos[:, None], dist * w[:, None, None],
                     torch.where(pos[None, :] == pos[:, None], u[:, None, None], -math.inf))
    past = pos.to(w.dtype) * w[:, None]  # (C, n): t·w
    mq = torch.cat([mq, past[..., None]], dim=-1)  # (C, n, n+1)
    ms = torch.cat([(n - 1 - pos).to(w.dtype) * w[:, None], n * w[:, None]], dim=-1)  # (C, n+1)
    return mq, ms


# ================================================================================================
# 4. Modules (names and parameter order exactly as the released checkpoints, spec §4)
# ================================================================================================


def _token_shift(x: Tensor) -> Tensor:
    """shift(x)[t] = x[t−1], shift(x)[0] = 0. (B, T, C) → (B, T, C)."""
    return F.pad(x, (0, 0, 1, -1))


def _mix(x: Tensor, x_prev: Tensor, mu: Tensor) -> Tensor:
    """mix(a, a', μ) = a·μ + a'·(1 − μ)."""
    return x * mu + x_prev * (1 - mu)


class TimeMix(nn.Module):
    """RWKV-4 time-mixing (``att``): token shift, R/K/V projections, WKV, output projection."""

    def __init__(self, n_embd: int) -> None:
        super().__init__()
        C = n_embd
        self.time_decay = nn.Parameter(torch.empty(C))  # raw; w = −exp(time_decay)
        self.time_first = nn.Parameter(torch.empty(C))  # u, the bonus of the current token
        self.time_mix_k = nn.Parameter(torch.empty(1, 1, C))
        self.time_mix_v = nn.Parameter(torch.empty(1, 1, C))
        self.time_mix_r = nn.Parameter(torch.empty(1, 1, C))
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)

    def forward(self, h: Tensor) -> Tensor:  # h = ln1(x) (B, T, C) → current (B, T, C)
        h_prev = _token_shift(h)
        k = self.key(_mix(h, h_prev, self.time_mix_k))  # (B, T, C)
        v = self.value(_mix(h, h_prev, self.time_mix_v))
        r = self.receptance(_mix(h, h_prev, self.time_mix_r))
        y = wkv_parallel(-torch.exp(self.time_decay.float()), self.time_first, k, v)  # fp32
        return self.output(torch.sigmoid(r) * y.to(r.dtype))

    def step(self, h: Tensor, h_prev: Tensor, a: Tensor, b: Tensor,
             p: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One token: h, h_prev (B, C); WKV state a, b, p (B, C) → (current, a', b', p')."""
        mk, mv, mr = (m.view(-1) for m in (self.time_mix_k, self.time_mix_v, self.time_mix_r))
        k = self.key(_mix(h, h_prev, mk))  # (B, C)
        v = self.value(_mix(h, h_prev, mv))
        r = self.receptance(_mix(h, h_prev, mr))
        w = -torch.exp(self.time_decay.float())
        y, a, b, p = wkv_step(w, self.time_first.float(), k.float(), v.float(), a, b, p)
        return self.output(torch.sigmoid(r) * y.to(r.dtype)), a, b, p


class ChannelMix(nn.Module):
    """RWKV-4 channel-mixing (``ffn``): token shift, squared-ReLU FFN (4C) gated by σ(R)."""

    def __init__(self, n_embd: int) -> None:
        super().__init__()
        C = n_embd
        self.time_mix_k = nn.Parameter(torch.empty(1, 1, C))
        self.time_mix_r = nn.Parameter(torch.empty(1, 1, C))
        self.key = nn.Linear(C, 4 * C, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(4 * C, C, bias=False)

    def _mixed(self, g: Tensor, g_prev: Tensor, mk: Tensor, mr: Tensor) -> Tensor:
        kappa = torch.square(torch.relu(self.key(_mix(g, g_prev, mk))))  # (..., 4C)
        return torch.sigmoid(self.receptance(_mix(g, g_prev, mr))) * self.value(kappa)

    def forward(self, g: Tensor) -> Tensor:  # g = ln2(x) (B, T, C) → current (B, T, C)
        return self._mixed(g, _token_shift(g), self.time_mix_k, self.time_mix_r)

    def step(self, g: Tensor, g_prev: Tensor) -> Tensor:  # (B, C), (B, C) → (B, C)
        return self._mixed(g, g_prev, self.time_mix_k.view(-1), self.time_mix_r.view(-1))


class Block(nn.Module):
    """One SpikeGPT block: x += LIF₁(att(ln1 x)); x += LIF₂(ffn(ln2 x)); dropout (spec §5).

    ``out_scale`` divides both branch currents before their LIF (the recurrent rescale trick
    of spec §6: dividing att.output / ffn.value weights by 2^⌊l/r⌋ is exactly this, since a
    power-of-two scale commutes with float rounding).
    """

    def __init__(self, config: SpikeGPTConfig, layer_id: int) -> None:
        super().__init__()
        C = config.n_embd
        self.layer_id = layer_id
        # Registration order fixes the state-dict order: ln1, ln2, ln0 (block 0), att, ffn.
        self.ln1 = nn.LayerNorm(C, eps=LN_EPS)
        self.ln2 = nn.LayerNorm(C, eps=LN_EPS)
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C, eps=LN_EPS)
        self.att = TimeMix(C)
        self.ffn = ChannelMix(C)
        lif = (config.tau, config.v_threshold, config.v_reset)
        self.lif1 = LIFNode(*lif)
        self.lif2 = LIFNode(*lif)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, out_scale: float = 1.0) -> Tensor:  # (B, T, C) → (B, T, C)
        a = self.att(self.ln1(x))
        x = x + self.lif1(a / out_scale if out_scale != 1.0 else a)
        f = self.ffn(self.ln2(x))
        x = x + self.lif2(f / out_scale if out_scale != 1.0 else f)
        return self.dropout(x)


@dataclass
class SpikeGPTState:
    """Recurrent state of a batch (spec §6), each field (L, B, C) float32, block l at index l.

    The spec's 5L×C layout per sequence is rows 5l+0 = ``ffn_x``, 5l+1 = ``att_x``, 5l+2 = ``a``,
    5l+3 = ``b``, 5l+4 = ``p`` (see :meth:`rnn_rows`); ``v1``/``v2`` are the membranes of the
    per-block ``lif1``/``lif2`` neurons (the original's ``mem1``/``mem2``).
    """

    att_x: Tensor  # previous ln1 output (att token shift)
    ffn_x: Tensor  # previous ln2 output (ffn token shift)
    a: Tensor  # WKV numerator
    b: Tensor  # WKV denominator
    p: Tensor  # WKV exponent offset (fresh: −1e30)
    v1: Tensor  # lif1 membrane potential (fresh: v_reset)
    v2: Tensor  # lif2 membrane potential

    @property
    def batch_size(self) -> int:
        return self.a.shape[1]

    def rnn_rows(self) -> Tensor:
        """The spec §6 layout without the membranes: (B, 5L, C)."""
        rows = torch.stack([self.ffn_x, self.att_x, self.a, self.b, self.p], dim=1)  # (L,5,B,C)
        return rows.flatten(0, 1).transpose(0, 1)


# ================================================================================================
# 5. The model
# ================================================================================================


class SpikeGPT(nn.Module):
    """SpikeGPT language model (``num_classes == 0``) or sequence classifier (``> 0``).

    Both forms honour both switches of spec §7: ``binary_embedding`` (Θ on the embedding) and
    ``rescale_every`` (the recurrent fp16 trick of run.py, also implemented in the parallel form
    so that it can evaluate a checkpoint the way run.py runs it); with equal switches ``forward``
    and ``forward_recurrent`` give the same spikes and logits.

    Classifier (spec §10: the original ``model_classify.py`` was never published; this is our
    reconstruction): the same trunk ``emb … ln_out`` without ``head``, then ``classify_head``
    (``nn.Linear(C, num_classes)`` with bias) on LN_out(x) pooled over non-pad tokens — the mean
    by default (``pooling="mean"``), or the last non-pad token (``"last"``). Pads are
    ``attention_mask == 0``, or ``idx == pad_id`` without a mask; right padding is assumed (the
    model is causal, so trailing pads do not change earlier positions).
    """

    def __init__(self, config: SpikeGPTConfig) -> None:
        super().__init__()
        if not isinstance(config, SpikeGPTConfig):
            raise ConfigError(f"config must be a SpikeGPTConfig, got {type(config).__name__}")
        self.config = config
        C = config.n_embd
        self.emb = nn.Embedding(config.vocab_size, C)
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layer))
        self.ln_out = nn.LayerNorm(C, eps=LN_EPS)
        if config.is_classifier:
            self.classify_head = nn.Linear(C, config.num_classes)
        else:
            self.head = nn.Linear(C, config.vocab_size, bias=False)  # not tied to emb
        for name, module in self.named_modules():
            if isinstance(module, LIFNode):
                module.tap_name = name
        self.reset_parameters()

    # ---- initialisation (spec §12) -------------------------------------------------------------
    # Time parameters: the spec §12 formulas. Linear weights: N(0, gain²/in_features). Gain 1
    # keeps unit variance through key/value/receptance; the two projections feeding a LIF
    # (att.output, ffn.value) get BRANCH_GAIN so that the currents reach the threshold at init:
    # with RWKV's zero init — or PyTorch's default, current std ≈ 0.2 here — no neuron fires,
    # the residual stream stays LN0(Θ(e)) and the blocks learn only through the surrogate's
    # tail. Gain 5 fires ≈ 11 % (lif1) and ≈ 15 % (lif2) of the neurons of a random model,
    # independent of the width (measured for C = 64…768). Head gain 0.5 as RWKV's init;
    # emb N(0, 1) (PyTorch default), so Θ(e) is a fair coin per channel.
    BRANCH_GAIN = 5.0
    HEAD_GAIN = 0.5

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise for training from scratch (spec §12 time parameters; see BRANCH_GAIN)."""
        L, C = self.config.n_layer, self.config.n_embd
        nn.init.normal_(self.emb.weight, 0.0, 1.0)
        i = torch.arange(C, dtype=torch.float32, device=self.emb.weight.device)
        frac = i / C  # i/C
        frac_dec = i / max(C - 1, 1)  # i/(C−1)
        for layer, block in enumerate(self.blocks):
            r01 = layer / (L - 1) if L > 1 else 0.0  # spec divides by L−1; L = 1 → 0
            r10 = 1.0 - layer / L
            att, ffn = block.att, block.ffn
            att.time_decay.copy_(-5 + 8 * frac_dec ** (0.7 + 1.3 * r01))
            att.time_first.copy_(math.log(0.3) + 0.5 * (((i + 1) % 3) - 1))
            att.time_mix_k.copy_((frac ** r10).view(1, 1, C))
            att.time_mix_v.copy_((frac ** r10 + 0.3 * r01).view(1, 1, C))
            att.time_mix_r.copy_((frac ** (0.5 * r10)).view(1, 1, C))
            ffn.time_mix_k.copy_((frac ** r10).view(1, 1, C))
            ffn.time_mix_r.copy_((frac ** r10).view(1, 1, C))
            for lin in (att.key, att.value, att.receptance, ffn.key, ffn.receptance):
                _init_linear(lin, 1.0)
            for lin in (att.output, ffn.value):
                _init_linear(lin, self.BRANCH_GAIN)
            for ln in (block.ln1, block.ln2, getattr(block, "ln0", None)):
                if ln is not None:
                    ln.reset_parameters()
        self.ln_out.reset_parameters()
        if self.config.is_classifier:
            _init_linear(self.classify_head, 1.0)
            nn.init.zeros_(self.classify_head.bias)
        else:
            _init_linear(self.head, self.HEAD_GAIN)

    def set_switches(self, *, binary_embedding: bool | None = None,
                     rescale_every: int | None = None) -> SpikeGPT:
        """Change the spec §7 switches in place (they do not touch the parameters)."""
        changes = {k: v for k, v in (("binary_embedding", binary_embedding),
                                     ("rescale_every", rescale_every)) if v is not None}
        self.config = dataclasses.replace(self.config, **changes)
        return self

    # ---- parallel form (spec §5) ---------------------------------------------------------------
    def _scale(self, layer: int) -> float:
        """Branch-current divisor 2^⌊l/r⌋ of the rescale trick (1 when rescale_every = 0)."""
        r = self.config.rescale_every
        return float(2 ** (layer // r)) if r else 1.0

    def _embed(self, idx: Tensor) -> Tensor:  # (B, T) or (B,) → (..., C), after ln0
        e = self.emb(idx)
        if self.config.binary_embedding:
            e = heaviside_atan(e)  # Θ(e) ∈ {0, 1}, ATan surrogate backward
        return self.blocks[0].ln0(e)

    def trunk(self, idx: Tensor) -> Tensor:
        """emb … ln_out: token ids (B, T) → LN_out output (B, T, C)."""
        self._check_idx(idx, 2)
        T = idx.shape[1]
        if T > self.config.ctx_len:
            raise ShapeError(f"sequence length {T} exceeds ctx_len={self.config.ctx_len}")
        x = self._embed(idx)  # (B, T, C)
        r = self.config.rescale_every
        for layer, block in enumerate(self.blocks):
            x = block(x, self._scale(layer))
            if r and (layer + 1) % r == 0:
                x = x / 2
        return self.ln_out(x)

    def forward(self, idx: Tensor, targets: Tensor | None = None,
                attention_mask: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """Parallel form. idx (B, T) int64 → logits (B, T, V), or (B, num_classes) for a
        classifier; with ``targets`` → (logits, mean cross-entropy).

        LM: targets (B, T), positions with target −100 (or ``attention_mask == 0``) are ignored.
        Classifier: targets (B,) class ids; ``attention_mask`` (B, T) marks real tokens.
        The original wraps the LM loss in ``L2Wrap`` (a gradient-only regulariser, spec §5
        step 5); it is not applied here.
        """
        hidden = self.trunk(idx)  # (B, T, C)
        if self.config.is_classifier:
            logits = self.classify_head(self._pool(hidden, idx, attention_mask))  # (B, K)
            if targets is None:
                return logits
            return logits, F.cross_entropy(logits, targets)
        logits = self.head(hidden)  # (B, T, V)
        if targets is None:
            return logits
        if targets.shape != idx.shape:
            raise ShapeError(f"targets shape {tuple(targets.shape)} != idx shape "
                             f"{tuple(idx.shape)}")
        if attention_mask is not None:
            targets = targets.masked_fill(attention_mask == 0, -100)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return logits, loss

    def _pool(self, hidden: Tensor, idx: Tensor, attention_mask: Tensor | None) -> Tensor:
        """(B, T, C) → (B, C): mean over, or last of, the non-pad positions."""
        mask = (idx != self.config.pad_id) if attention_mask is None else attention_mask != 0
        if mask.shape != idx.shape:
            raise ShapeError(f"attention_mask shape {tuple(mask.shape)} != idx shape "
                             f"{tuple(idx.shape)}")
        n = mask.sum(dim=1)  # (B,)
        if bool((n == 0).any()):
            raise ShapeError(f"sequence {int((n == 0).nonzero()[0])} of the batch has only pad "
                             "tokens: nothing to pool")
        if self.config.pooling == "mean":
            m = mask.to(hidden.dtype)[..., None]  # (B, T, 1)
            return (hidden * m).sum(dim=1) / n.to(hidden.dtype)[:, None]
        pos = torch.arange(1, idx.shape[1] + 1, device=idx.device)
        last = (mask * pos).argmax(dim=1)  # (B,) last non-pad position
        return hidden[torch.arange(idx.shape[0], device=idx.device), last]

    def _check_idx(self, idx: Tensor, ndim: int) -> None:
        if not isinstance(idx, Tensor) or idx.dtype not in (torch.int64, torch.int32):
            raise ShapeError(f"token ids must be an integer (int64) tensor, got "
                             f"{getattr(idx, 'dtype', type(idx).__name__)}")
        if idx.ndim != ndim or idx.numel() == 0:
            want = "(B, T)" if ndim == 2 else "(B,)"
            raise ShapeError(f"token ids must be a non-empty {want} tensor, got shape "
                             f"{tuple(idx.shape)}")
        if idx.device.type != "meta":
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= self.config.vocab_size:
                raise ShapeError(f"token ids must be in [0, {self.config.vocab_size}), "
                                 f"got values in [{lo}, {hi}]")

    # ---- recurrent form (spec §6) --------------------------------------------------------------
    def init_state(self, batch_size: int = 1) -> SpikeGPTState:
        """A fresh state: zeros, p = −1e30, membranes at v_reset."""
        _check_int("batch_size", batch_size, 1)
        shape = (self.config.n_layer, batch_size, self.config.n_embd)
        dev = self.emb.weight.device
        z = torch.zeros(shape, device=dev)
        v0 = torch.full(shape, float(self.config.v_reset), device=dev)
        return SpikeGPTState(att_x=z, ffn_x=z.clone(), a=z.clone(), b=z.clone(),
                             p=torch.full(shape, P_INIT, device=dev), v1=v0, v2=v0.clone())

    def _step_hidden(self, token_ids: Tensor, state: SpikeGPTState) -> tuple[Tensor, SpikeGPTState]:
        """One token through the trunk: (B,) → (LN_out output (B, C), new state)."""
        self._check_idx(token_ids, 1)
        if state.batch_size != token_ids.shape[0]:
            raise ShapeError(f"state is for batch size {state.batch_size}, token_ids has "
                             f"{token_ids.shape[0]}")
        x = self._embed(token_ids)  # (B, C)
        r = self.config.rescale_every
        new: dict[str, list[Tensor]] = {f.name: [] for f in dataclasses.fields(SpikeGPTState)}
        for layer, block in enumerate(self.blocks):
            scale = self._scale(layer)
            h = block.ln1(x)  # (B, C)
            att, a, b, p = block.att.step(h, state.att_x[layer], state.a[layer], state.b[layer],
                                          state.p[layer])
            s1, v1 = block.lif1.step(att / scale if scale != 1.0 else att, state.v1[layer])
            x = x + s1
            g = block.ln2(x)
            f = block.ffn.step(g, state.ffn_x[layer])
            s2, v2 = block.lif2.step(f / scale if scale != 1.0 else f, state.v2[layer])
            x = x + s2
            if r and (layer + 1) % r == 0:
                x = x / 2
            for name, value in (("att_x", h), ("ffn_x", g), ("a", a), ("b", b), ("p", p),
                                ("v1", v1), ("v2", v2)):
                new[name].append(value.float())
        return self.ln_out(x), SpikeGPTState(**{k: torch.stack(v) for k, v in new.items()})

    def step(self, token_ids: Tensor, state: SpikeGPTState) -> tuple[Tensor, SpikeGPTState]:
        """Recurrent form, one token: token_ids (B,) → (logits (B, V), new state).

        The state passed in is not modified. Language model only (a classifier pools over the
        whole sequence: use :meth:`forward_recurrent`).
        """
        if self.config.is_classifier:
            raise ConfigError("step() returns next-token logits and a classifier has no head; "
                              "use forward_recurrent(idx) to classify with the recurrent form")
        hidden, state = self._step_hidden(token_ids, state)
        return self.head(hidden), state

    def forward_recurrent(self, idx: Tensor, state: SpikeGPTState | None = None,
                          attention_mask: Tensor | None = None, return_state: bool = False,
                          ) -> Tensor | tuple[Tensor, SpikeGPTState]:
        """Run the recurrent form over idx (B, T): logits (B, T, V), or (B, num_classes) for a
        classifier (pooled as in ``forward``); starts from ``state`` (fresh if None)."""
        self._check_idx(idx, 2)
        state = self.init_state(idx.shape[0]) if state is None else state
        hidden = []
        for t in range(idx.shape[1]):
            h, state = self._step_hidden(idx[:, t], state)
            hidden.append(h)
        hid = torch.stack(hidden, dim=1)  # (B, T, C)
        if self.config.is_classifier:
            logits = self.classify_head(self._pool(hid, idx, attention_mask))
        else:
            logits = self.head(hid)
        return (logits, state) if return_state else logits

    # ---- spike taps ----------------------------------------------------------------------------
    def lif_names(self) -> list[str]:
        """Fully-qualified names of every LIF: blocks.{l}.lif1 (att), blocks.{l}.lif2 (ffn)."""
        return [n for n, m in self.named_modules() if isinstance(m, LIFNode)]

    @contextlib.contextmanager
    def record_spikes(self, keep_spikes: bool = False) -> Iterator[SpikeRecorder]:
        """Record every LIF's spikes (both forms) while the block runs::

            with model.record_spikes() as rec:
                model(idx)
            rec.rates()        # {"blocks.0.lif1": 0.12, ...}
        """
        lifs = [m for m in self.modules() if isinstance(m, LIFNode)]
        rec = SpikeRecorder([m.tap_name for m in lifs], keep_spikes)
        for m in lifs:
            m.recorder = rec
        try:
            yield rec
        finally:
            for m in lifs:
                m.recorder = None

    # ---- protocol used by the rest of qslm -----------------------------------------------------
    def hierarchy(self) -> dict[str, list[str]]:
        """Block name → fully-qualified names of its quantizable leaves, in state-dict order.

        Blocks: "emb", "blocks.{l}" (att.key/value/receptance/output, ffn.key/receptance/value),
        then "head" (LM) or "classify_head" (classifier). Matches ``workload()``'s modules.
        """
        out: dict[str, list[str]] = {"emb": ["emb"]}
        for layer in range(self.config.n_layer):
            out[f"blocks.{layer}"] = [f"blocks.{layer}.{s}" for s in (
                "att.key", "att.value", "att.receptance", "att.output",
                "ffn.key", "ffn.receptance", "ffn.value")]
        last = "classify_head" if self.config.is_classifier else "head"
        out[last] = [last]
        return out

    def spike_input_modules(self) -> list[str]:
        """Quantizable leaves whose input is binary spikes: none (spec §5 — every Linear takes
        LayerNorm outputs, a squared ReLU or σ(r)⊙WKV; spikes only enter the residual stream)."""
        return []

    def workload(self, firing_rates: float | Mapping[str, float] | None = None,
                 per: str | None = None, *, spike_inputs: str = "released",
                 seq_len: int | None = None) -> Workload:
        """The hardware workload (``hwmodel.workload.spikegpt_workload``) of this model.

        ``per``: "token" (default for the LM) or "sequence" (default, and required, for the
        classifier, which then needs ``seq_len``). ``firing_rates`` only matter with
        ``spike_inputs="idealized"`` (the paper's accounting); measured per-block rates come from
        ``record_spikes()``: ``model.workload(rec.block_rates(), spike_inputs="idealized")``.
        """
        c = self.config
        per = per or ("sequence" if c.is_classifier else "token")
        if c.is_classifier and per != "sequence":
            raise ConfigError("a classifier is costed per sequence: use per='sequence'")
        if per == "sequence" and seq_len is None:
            raise ConfigError("per='sequence' needs seq_len (tokens per sequence)")
        return spikegpt_workload(
            c.n_layer, c.n_embd, c.vocab_size, firing_rates, spike_inputs, per=per,
            seq_len=1 if seq_len is None else seq_len,
            num_classes=c.num_classes if c.is_classifier else None)


def _init_linear(lin: nn.Linear, gain: float) -> None:
    nn.init.normal_(lin.weight, 0.0, gain / math.sqrt(lin.in_features))
