"""Spike-driven encoder classifier (reference: ``../shared/spec/spike-driven-encoder.md``).

The project's second SLM family: **every block Linear consumes binary spikes**, so on a
spike-driven device each of its matrix products is an accumulation of the weight columns its
spikes select (``qslm.kernels.spike_matmul``). It follows the Spike-driven Transformer (Yao et
al., NeurIPS 2023: membrane shortcut, spike-driven self-attention "SDSA", BatchNorm after every
Linear) as a text encoder for sequence classification (SST-2).

Read top to bottom:

1. :class:`SDTConfig` — the configuration (frozen, validated, ``to_dict``/``from_dict``).
2. :class:`MaskedBatchNorm` and :func:`fold_norm` — the normalization after every Linear: a
   BatchNorm whose training statistics skip padded tokens; at inference an affine that
   :func:`fold_norm` / :meth:`SpikeDrivenEncoder.fold_norms` fold into the Linear, leaving the
   deployed layer "spikes × weights + bias".
3. :class:`SpikeGate` (the AND of two spike tensors, with a spike tap),
   :class:`SpikeDrivenAttention`, :class:`SpikeMLP`, :class:`EncoderBlock`.
4. :class:`SpikeDrivenEncoder` — embedding, blocks, pooled head; ``forward`` has SpikeGPT's
   classifier signature ``(idx, targets=None, attention_mask=None)``.
5. The protocol the rest of qslm uses — ``hierarchy()``, ``spike_input_modules()``,
   ``workload()`` — and the spike taps (``record_spikes()`` → :class:`EncoderSpikeRecorder`).

Shapes: B batch, N tokens, S = ``t_sim`` simulation steps, C = ``n_embd``,
H = ``mlp_ratio·C``, K = ``num_classes``. Activations are laid out (B, N, S, C); the LIF neurons
(:class:`~qslm.models.spikegpt.LIFNode`, the SpikeGPT neuron: τ = 2, threshold 1, hard reset to
0, ATan surrogate α = 2) step over S — each sees (B·N, S, C), one independent neuron per token
and channel, its membrane starting at ``v_reset`` on every call (state reset per sequence).
Tokens are processed in parallel.

The function, per block (x: the real-valued membrane of the residual stream, (B, N, S, C))::

    s  = LIF_in(x)                                   attention input spikes
    q  = LIF_q(BN_q(W_q s)),  k = …,  v = …           (B, N, S, C) spikes
    f  = Σ_n m_n · (q_n ⊙ k_n) / Σ_n m_n             (B, S, C): masked column mean, m = mask
    a  = LIF_map(BN_map(f))                          (B, S, C): one gate per sequence, channel
    y  = a ⊙ v                                       (B, N, S, C): AND of two spike tensors
    x  = x + BN_o(W_o y)                             membrane shortcut
    x  = x + BN_2(W_2 LIF_h(BN_1(W_1 LIF_mlp(x))))

Embedding: ``x₀ = emb(idx) + pos(position)``, the same current at every simulation step (direct
encoding); positions count the valid tokens (``cumsum(mask) − 1``), so left and right padding
give the same result. Head: the final membrane averaged over valid tokens and steps →
LayerNorm (``head_norm``) → ``head`` (Linear with bias) → logits (B, K).

Design decisions (the spec leaves them to us):

- **SDSA** (the paper's "version 1", with the roles of the brief: the Q⊙K Hadamard product,
  masked, summed over tokens, a LIF, then ⊙V). No softmax and no N×N tensor: cost O(N·S·C) per
  block (the tests check that no intermediate has two token axes). The column sum is divided by
  the number of valid tokens (length-independent gate) and normalized per channel by
  ``BN_map`` before its LIF: with q and k firing at ≈ 12 % each, the raw fraction (≈ 1.5 %)
  would never reach the threshold. ``BN_map`` follows no Linear, so it is not folded: at
  inference it is a per-channel affine of the gate current (equivalently a per-channel
  threshold).
- **No LIF before** ``attn.o``: its input ``a ⊙ v`` is already exactly 0/1 (the AND of two LIF
  outputs), and a LIF (τ = 2, θ = 1, decay_input) driven by a 0/1 current cannot fire —
  H_t = (V_{t−1} + X_t)/2 ≤ 1 − 2^−t < 1 — so one there would silence the attention branch.
  The spike tap ``blocks.{l}.attn.gate`` records that input for the firing rates.
- Channel-wise attention: Q⊙K and the column sum act per channel, so heads (a reshape of C)
  would change nothing; there is no ``n_head``.
- **Norms**: :class:`MaskedBatchNorm` (BatchNorm1d's parameters and buffers; training
  statistics over valid tokens only, so pads influence nothing, even in training).
  ``fold_norms()`` folds them into the Linears (which then get a bias) and records
  ``norms_folded=True`` in the config, so a folded checkpoint rebuilds from its config.
  Quantize the folded model: that is the deployed layer.
- **Positions**: a learned table ``pos`` (``nn.Embedding(ctx_len, C)``, quantizable; switch
  ``pos_emb``): without it the encoder would be a bag of tokens (SDSA is order-blind).
- Init: Linear weights N(0, 4/in) — with spike inputs at rate ≈ 0.25 the currents have about
  unit variance (what BatchNorm gives in training), so an untrained model in eval mode fires.
  A LIF driven by a unit-variance current centred at 0 fires rarely (it needs ≳ 1.07 held for
  4 steps): ≈ 5 % for q/k/v and a gate open ≈ 0.5 % of the time, an attention branch nearly
  constant at init. So the norms that feed a LIF start with β = 0.5 (rates ≈ 12 %) and
  ``BN_map`` with β = 1 (gate LIF ≈ 20 %); the residual norms (o, fc2) keep β = 0.
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

from hwmodel.workload import Workload, spike_driven_workload
from qslm.errors import ConfigError, ShapeError
from qslm.models.spikegpt import LIFNode, SpikeRecorder, _check_float, _check_int

__all__ = [
    "FAMILY",
    "FORMAT_VERSION",
    "EncoderBlock",
    "EncoderSpikeRecorder",
    "MaskedBatchNorm",
    "SDTConfig",
    "SpikeDrivenAttention",
    "SpikeDrivenEncoder",
    "SpikeGate",
    "SpikeMLP",
    "fold_norm",
]

FAMILY = "spike-driven-encoder"  # written by SDTConfig.to_dict(), checked by from_dict()
FORMAT_VERSION = 1  # of SDTConfig.to_dict()
BN_EPS = 1e-5  # nn.BatchNorm1d defaults
BN_MOMENTUM = 0.1
LN_EPS = 1e-5
INIT_GAIN = 2.0  # Linear weights N(0, INIT_GAIN²/in_features) (module docstring)
LIF_NORM_BIAS_INIT = 0.5  # β at init of the norms that feed a LIF (q, k, v, fc1): rates ≈ 12 %
MAP_BIAS_INIT = 1.0  # β of attn.map_norm at init: rate of the gate LIF ≈ 20 %
ATTN_LINEARS = ("q", "k", "v", "o")
MLP_LINEARS = ("fc1", "fc2")


# ================================================================================================
# 1. Configuration
# ================================================================================================


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")


@dataclass(frozen=True)
class SDTConfig:
    """Shape and behaviour of a spike-driven encoder classifier."""

    vocab_size: int  # V: token ids are 0..V-1; emb has V rows
    n_layer: int  # L: number of encoder blocks
    n_embd: int  # C: residual (membrane) width
    num_classes: int = 2  # K: classes of the head (SST-2: 2)
    mlp_ratio: int = 4  # H = mlp_ratio·C, the MLP hidden width
    t_sim: int = 4  # S: simulation steps each input is presented for
    ctx_len: int = 128  # longest sequence (rows of the position table)
    pos_emb: bool = True  # learned position table `pos` (ctx_len × C), added to the embedding
    head_norm: bool = True  # LayerNorm on the pooled membrane before `head`
    pad_id: int = 1  # padding token when no attention_mask is given (20B tokenizer: 1)
    tau: float = 2.0  # LIF membrane time constant (decay_input=True), must be > 1
    v_threshold: float = 1.0  # LIF firing threshold
    v_reset: float = 0.0  # LIF hard-reset potential (also the initial membrane potential)
    norms_folded: bool = False  # True: BatchNorms folded into the Linears (deployed form)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_embd", "mlp_ratio", "t_sim", "ctx_len"):
            _check_int(name, getattr(self, name), 1)
        _check_int("num_classes", self.num_classes, 2)
        _check_int("pad_id", self.pad_id, 0)
        if self.pad_id >= self.vocab_size:
            raise ConfigError(f"pad_id must be < vocab_size={self.vocab_size}, got {self.pad_id}")
        for name in ("pos_emb", "head_norm", "norms_folded"):
            _check_bool(name, getattr(self, name))
        for name in ("tau", "v_threshold", "v_reset"):
            _check_float(name, getattr(self, name))
        if not self.tau > 1.0:
            raise ConfigError(f"tau must be > 1 (as in spikingjelly's LIFNode), got {self.tau!r}")
        if not self.v_threshold > self.v_reset:
            raise ConfigError(f"v_threshold ({self.v_threshold!r}) must exceed "
                              f"v_reset ({self.v_reset!r})")

    @property
    def is_classifier(self) -> bool:
        """Always True: this family is a sequence classifier (costed per sequence)."""
        return True

    @property
    def mlp_hidden(self) -> int:
        return self.mlp_ratio * self.n_embd

    def n_params(self) -> int:
        """Parameters of the model built from this config (buffers not included).

        Per block: Linears 4C² + 2HC; unfolded, the BatchNorms after them 2·(5C + H) and
        BN_map 2C; folded, the Linear biases 5C + H and BN_map 2C. Plus emb V·C, pos ctx_len·C,
        the head LayerNorm 2C and the head K·C + K.
        """
        V, L, C, H, K = self.vocab_size, self.n_layer, self.n_embd, self.mlp_hidden, \
            self.num_classes
        per_norm_channel = 1 if self.norms_folded else 2
        block = 4 * C * C + 2 * H * C + per_norm_channel * (5 * C + H) + 2 * C
        return (V * C + (self.ctx_len * C if self.pos_emb else 0) + L * block
                + (2 * C if self.head_norm else 0) + K * C + K)

    def to_dict(self) -> dict[str, Any]:
        return {"family": FAMILY, "format_version": FORMAT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SDTConfig:
        if not isinstance(d, Mapping):
            raise ConfigError(f"an SDT config must be a mapping, got {type(d).__name__}")
        if d.get("family") != FAMILY:
            raise ConfigError(f"not a {FAMILY} config (family {d.get('family')!r})")
        if d.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"SDT config format_version must be {FORMAT_VERSION}, "
                              f"got {d.get('format_version')!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields - {"family", "format_version"})
        if unknown:
            raise ConfigError(f"unknown SDT config field(s): {', '.join(unknown)}")
        missing = sorted(n for n in ("vocab_size", "n_layer", "n_embd") if n not in d)
        if missing:
            raise ConfigError(f"SDT config lacks field(s): {', '.join(missing)}")
        return cls(**{k: v for k, v in d.items() if k in fields})


# ================================================================================================
# 2. Normalization: a BatchNorm that skips pads, and its folding into the preceding Linear
# ================================================================================================


class MaskedBatchNorm(nn.Module):
    """Per-channel BatchNorm over every leading axis, statistics of valid tokens only.

    Parameters and buffers as ``nn.BatchNorm1d`` (``weight``, ``bias``, ``running_mean``,
    ``running_var``, ``num_batches_tracked``), same eps and momentum. ``forward(x, valid)``: x
    (B, N, S, C) with ``valid`` (B, N) bool, or x (..., C) with ``valid=None`` (every row
    counts). Training: normalize by the batch statistics of the valid rows, update the running
    ones (unbiased variance, as BatchNorm1d). Eval: ``(x − μ)/√(σ² + ε)·γ + β`` per element.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        if not self.training:
            return (x - self.running_mean) * self.scale() + self.bias
        rows = (x if valid is None else x[valid]).reshape(-1, self.num_features)  # (R, C)
        mean = rows.mean(dim=0)
        var = rows.var(dim=0, unbiased=False)
        with torch.no_grad():
            n = rows.shape[0]
            self.running_mean.lerp_(mean.detach(), BN_MOMENTUM)
            unbiased = var.detach() * (n / (n - 1)) if n > 1 else var.detach()
            self.running_var.lerp_(unbiased, BN_MOMENTUM)
            self.num_batches_tracked += 1
        return (x - mean) * (self.weight / torch.sqrt(var + BN_EPS)) + self.bias

    def scale(self) -> Tensor:
        """γ/√(σ² + ε) of the running statistics, (C,)."""
        return self.weight / torch.sqrt(self.running_var + BN_EPS)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={BN_EPS}, momentum={BN_MOMENTUM}"


@torch.no_grad()
def fold_norm(linear: nn.Linear, norm: MaskedBatchNorm) -> tuple[Tensor, Tensor]:
    """(weight, bias) of the Linear that equals ``norm(linear(x))`` at inference.

    With s = γ/√(σ² + ε): W' = diag(s)·W, b' = s·(b − μ) + β (b = 0 for a Linear without bias).
    """
    if norm.num_features != linear.out_features:
        raise ShapeError(f"a norm of {norm.num_features} channels cannot fold into a Linear "
                         f"with {linear.out_features} outputs")
    s = norm.scale()
    b = linear.bias if linear.bias is not None else torch.zeros_like(s)
    return linear.weight * s[:, None], (b - norm.running_mean) * s + norm.bias


def _linear_norm(linear: nn.Linear, norm: MaskedBatchNorm | None, x: Tensor,
                 valid: Tensor) -> Tensor:
    """norm(linear(x)) with the token mask; just linear(x) once the norm is folded."""
    y = linear(x)
    return y if norm is None else norm(y, valid)


def _lif(node: LIFNode, x: Tensor) -> Tensor:
    """LIF over the simulation axis of x (B, N, S, C) → spikes (B, N, S, C)."""
    return node(x.flatten(0, 1)).view(x.shape)


# ================================================================================================
# 3. Modules
# ================================================================================================


class SpikeGate(nn.Module):
    """y = a ⊙ v: the per-sequence gate a (B, S, C) AND the token spikes v (B, N, S, C).

    No parameters; a spike tap like :class:`LIFNode` (``tap_name``, ``recorder``), since its
    output is the input of ``attn.o``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tap_name = ""  # fully-qualified name, set by SpikeDrivenEncoder
        self.recorder: SpikeRecorder | None = None

    def forward(self, a: Tensor, v: Tensor) -> Tensor:
        y = a[:, None] * v  # (B, N, S, C)
        if self.recorder is not None:
            self.recorder.add(self.tap_name, y.flatten(0, 1))
        return y


def _new_norm(C: int, folded: bool) -> MaskedBatchNorm | None:
    return None if folded else MaskedBatchNorm(C)


class SpikeDrivenAttention(nn.Module):
    """SDSA (module docstring): spikes → Q, K, V spikes → masked column mean of Q⊙K → LIF gate
    → gate ⊙ V → ``o`` + norm. Cost linear in the number of tokens."""

    def __init__(self, config: SDTConfig) -> None:
        super().__init__()
        C, folded = config.n_embd, config.norms_folded
        lif = (config.tau, config.v_threshold, config.v_reset)
        # Registration (= state-dict) order is the forward order.
        self.lif_in = LIFNode(*lif)
        self.q = nn.Linear(C, C, bias=folded)
        self.register_module("q_norm", _new_norm(C, folded))
        self.lif_q = LIFNode(*lif)
        self.k = nn.Linear(C, C, bias=folded)
        self.register_module("k_norm", _new_norm(C, folded))
        self.lif_k = LIFNode(*lif)
        self.v = nn.Linear(C, C, bias=folded)
        self.register_module("v_norm", _new_norm(C, folded))
        self.lif_v = LIFNode(*lif)
        self.map_norm = MaskedBatchNorm(C)
        self.lif_map = LIFNode(*lif)
        self.gate = SpikeGate()
        self.o = nn.Linear(C, C, bias=folded)
        self.register_module("o_norm", _new_norm(C, folded))

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:  # (B, N, S, C) membrane → current
        s = _lif(self.lif_in, x)  # (B, N, S, C) spikes
        q = _lif(self.lif_q, _linear_norm(self.q, self.q_norm, s, valid))
        k = _lif(self.lif_k, _linear_norm(self.k, self.k_norm, s, valid))
        v = _lif(self.lif_v, _linear_norm(self.v, self.v_norm, s, valid))
        w = valid.to(q.dtype)
        w = w / w.sum(dim=1, keepdim=True)  # (B, N): 1/n_valid on valid tokens, 0 on pads
        f = torch.einsum("bn,bnsc->bsc", w, q * k)  # (B, S, C) masked column mean of Q⊙K
        a = self.lif_map(self.map_norm(f))  # (B, S, C) gate spikes, one per sequence/channel
        y = self.gate(a, v)  # (B, N, S, C) spikes
        return _linear_norm(self.o, self.o_norm, y, valid)


class SpikeMLP(nn.Module):
    """LIF → fc1 (C→H) → norm → LIF → fc2 (H→C) → norm."""

    def __init__(self, config: SDTConfig) -> None:
        super().__init__()
        C, H, folded = config.n_embd, config.mlp_hidden, config.norms_folded
        lif = (config.tau, config.v_threshold, config.v_reset)
        self.lif_in = LIFNode(*lif)
        self.fc1 = nn.Linear(C, H, bias=folded)
        self.register_module("fc1_norm", _new_norm(H, folded))
        self.lif_hidden = LIFNode(*lif)
        self.fc2 = nn.Linear(H, C, bias=folded)
        self.register_module("fc2_norm", _new_norm(C, folded))

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:  # (B, N, S, C) membrane → current
        s = _lif(self.lif_in, x)
        h = _lif(self.lif_hidden, _linear_norm(self.fc1, self.fc1_norm, s, valid))  # (.., H)
        return _linear_norm(self.fc2, self.fc2_norm, h, valid)


class EncoderBlock(nn.Module):
    """x += attn(x); x += mlp(x) — the membrane shortcut (x real-valued, (B, N, S, C))."""

    def __init__(self, config: SDTConfig) -> None:
        super().__init__()
        self.attn = SpikeDrivenAttention(config)
        self.mlp = SpikeMLP(config)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        x = x + self.attn(x, valid)
        return x + self.mlp(x, valid)

    def norm_pairs(self) -> list[tuple[str, str]]:
        """(Linear, norm) attribute paths inside the block, e.g. ("attn.q", "attn.q_norm")."""
        return [(f"attn.{n}", f"attn.{n}_norm") for n in ATTN_LINEARS] + \
            [(f"mlp.{n}", f"mlp.{n}_norm") for n in MLP_LINEARS]


# ================================================================================================
# 4. Spike taps
# ================================================================================================


class EncoderSpikeRecorder(SpikeRecorder):
    """Spikes of every tap (each LIF and each ``attn.gate``) while
    :meth:`SpikeDrivenEncoder.record_spikes` is active, **valid tokens only**: pads are not
    computed on a device, so they count neither as spikes nor as elements.

    ``rates()``: mean firing rate per tap. ``input_rates()``: per block Linear, the rate of its
    input (q/k/v ← ``attn.lif_in``, o ← ``attn.gate``, fc1 ← ``mlp.lif_in``, fc2 ←
    ``mlp.lif_hidden``), keyed by module name — the exact rates for ``workload()``.
    ``block_rates()``: per block "blocks.{l}", the mean of its Linears' input rates weighted by
    their weight sizes, so a block-level workload counts the same accumulates.
    ``spikes(name)``: the kept spikes, (rows, S, C), rows = valid tokens (or sequences for
    ``attn.lif_map``) of every call, concatenated (``keep_spikes=True`` only).
    """

    _TAP_KIND = "spike tap"
    _CONCAT_DIM = 0  # rows of valid tokens

    def __init__(self, names: list[str], keep_spikes: bool, token_taps: set[str],
                 inputs: Mapping[str, tuple[str, str, int]]) -> None:
        super().__init__(names, keep_spikes)
        self._token_taps = token_taps
        self._inputs = dict(inputs)  # Linear name → (block, input tap, weight elements)
        self.valid: Tensor | None = None  # (B·N,) bool of the current call, set by the model

    def add(self, name: str, s: Tensor) -> None:
        if name in self._token_taps and self.valid is not None:
            s = s[self.valid]  # (n_valid, S, C)
        super().add(name, s)

    def input_rates(self) -> dict[str, float]:
        rates = self.rates()
        return {m: rates[tap] for m, (_, tap, _) in self._inputs.items()}

    def block_rates(self) -> dict[str, float]:
        num: dict[str, float] = {}
        den: dict[str, int] = {}
        for m, r in self.input_rates().items():
            block, _, size = self._inputs[m]
            num[block] = num.get(block, 0.0) + r * size
            den[block] = den.get(block, 0) + size
        return {b: num[b] / den[b] for b in num}



# ================================================================================================
# 5. The model
# ================================================================================================


class SpikeDrivenEncoder(nn.Module):
    """Spike-driven encoder classifier (module docstring).

    Module names: ``emb``, ``pos``, ``blocks.{l}.attn.{q,k,v,o}``, ``blocks.{l}.mlp.{fc1,fc2}``
    (the quantizable Linears, each followed by ``…_norm`` until :meth:`fold_norms`),
    ``head_norm``, ``head``; LIFs ``blocks.{l}.attn.{lif_in,lif_q,lif_k,lif_v,lif_map}``,
    ``blocks.{l}.mlp.{lif_in,lif_hidden}``; spike tap ``blocks.{l}.attn.gate``.
    """

    def __init__(self, config: SDTConfig) -> None:
        super().__init__()
        if not isinstance(config, SDTConfig):
            raise ConfigError(f"config must be an SDTConfig, got {type(config).__name__}")
        self.config = config
        C = config.n_embd
        self.emb = nn.Embedding(config.vocab_size, C)
        self.pos = nn.Embedding(config.ctx_len, C) if config.pos_emb else None
        self.blocks = nn.ModuleList(EncoderBlock(config) for _ in range(config.n_layer))
        self.head_norm = nn.LayerNorm(C, eps=LN_EPS) if config.head_norm else None
        self.head = nn.Linear(C, config.num_classes)
        self._recorder: EncoderSpikeRecorder | None = None
        for name, module in self.named_modules():
            if isinstance(module, (LIFNode, SpikeGate)):
                module.tap_name = name
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise for training from scratch: emb and pos N(0, 1), block Linears
        N(0, INIT_GAIN²/in), norms γ = 1 with fresh statistics and β = 0, except those feeding
        a LIF (β = LIF_NORM_BIAS_INIT) and ``attn.map_norm`` (β = MAP_BIAS_INIT; see the module
        docstring), head N(0, 1/C) with bias 0."""
        nn.init.normal_(self.emb.weight, 0.0, 1.0)
        if self.pos is not None:
            nn.init.normal_(self.pos.weight, 0.0, 1.0)
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, INIT_GAIN / math.sqrt(m.in_features))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, MaskedBatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
                m.num_batches_tracked.zero_()
        for block in self.blocks:
            for norm in (block.attn.q_norm, block.attn.k_norm, block.attn.v_norm,
                         block.mlp.fc1_norm):
                if norm is not None:
                    nn.init.constant_(norm.bias, LIF_NORM_BIAS_INIT)
            nn.init.constant_(block.attn.map_norm.bias, MAP_BIAS_INIT)
        if self.head_norm is not None:
            self.head_norm.reset_parameters()
        nn.init.normal_(self.head.weight, 0.0, 1.0 / math.sqrt(self.config.n_embd))
        nn.init.zeros_(self.head.bias)

    # ---- forward -------------------------------------------------------------------------------
    def valid_mask(self, idx: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, N) bool: real tokens (``attention_mask != 0``, or ``idx != pad_id`` without one)."""
        self._check_idx(idx)
        valid = (idx != self.config.pad_id) if attention_mask is None else attention_mask != 0
        if valid.shape != idx.shape:
            raise ShapeError(f"attention_mask shape {tuple(valid.shape)} != idx shape "
                             f"{tuple(idx.shape)}")
        n = valid.sum(dim=1)
        if bool((n == 0).any()):
            raise ShapeError(f"sequence {int((n == 0).nonzero()[0])} of the batch has only pad "
                             "tokens: nothing to classify")
        return valid

    def trunk(self, idx: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Token ids (B, N) → final membrane (B, N, S, C) (pad positions hold garbage)."""
        valid = self.valid_mask(idx, attention_mask)
        return self._trunk(idx, valid)

    def _trunk(self, idx: Tensor, valid: Tensor) -> Tensor:
        B, N = idx.shape
        x = self.emb(idx)  # (B, N, C)
        if self.pos is not None:
            x = x + self.pos((valid.long().cumsum(dim=1) - 1).clamp(min=0))
        x = x[:, :, None, :].expand(B, N, self.config.t_sim, self.config.n_embd)  # (B,N,S,C)
        if self._recorder is not None:
            self._recorder.valid = valid.reshape(-1)
        for block in self.blocks:
            x = block(x, valid)
        return x

    def forward(self, idx: Tensor, targets: Tensor | None = None,
                attention_mask: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """idx (B, N) int64 → logits (B, num_classes); with ``targets`` (B,) class ids →
        (logits, mean cross-entropy). ``attention_mask`` (B, N) marks real tokens (1) and pads
        (0); without it, pads are ``idx == pad_id``. Valid tokens' outputs do not depend on the
        pads (their ids, number or place)."""
        valid = self.valid_mask(idx, attention_mask)
        x = self._trunk(idx, valid)  # (B, N, S, C)
        w = valid.to(x.dtype)
        w = w / (w.sum(dim=1, keepdim=True) * self.config.t_sim)  # (B, N)
        pooled = torch.einsum("bn,bnsc->bc", w, x)  # mean over valid tokens and steps
        if self.head_norm is not None:
            pooled = self.head_norm(pooled)
        logits = self.head(pooled)  # (B, K)
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits, targets)

    def _check_idx(self, idx: Tensor) -> None:
        if not isinstance(idx, Tensor) or idx.dtype not in (torch.int64, torch.int32):
            raise ShapeError(f"token ids must be an integer (int64) tensor, got "
                             f"{getattr(idx, 'dtype', type(idx).__name__)}")
        if idx.ndim != 2 or idx.numel() == 0:
            raise ShapeError(f"token ids must be a non-empty (B, N) tensor, got shape "
                             f"{tuple(idx.shape)}")
        if idx.shape[1] > self.config.ctx_len:
            raise ShapeError(f"sequence length {idx.shape[1]} exceeds ctx_len="
                             f"{self.config.ctx_len}")
        if idx.device.type != "meta":
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= self.config.vocab_size:
                raise ShapeError(f"token ids must be in [0, {self.config.vocab_size}), "
                                 f"got values in [{lo}, {hi}]")

    # ---- deployment ----------------------------------------------------------------------------
    @torch.no_grad()
    def fold_norms(self) -> SpikeDrivenEncoder:
        """Fold every block norm into its Linear (in place; returns self), with the running
        statistics: the eval-mode function is unchanged, each Linear gains a bias, the norms are
        gone, and ``config.norms_folded`` becomes True. A folded model is already folded: no-op.
        ``attn.map_norm`` stays (it follows no Linear)."""
        if self.config.norms_folded:
            return self
        for block in self.blocks:
            for lin_path, norm_path in block.norm_pairs():
                lin: nn.Linear = block.get_submodule(lin_path)
                norm: MaskedBatchNorm = block.get_submodule(norm_path)
                weight, bias = fold_norm(lin, norm)
                lin.weight = nn.Parameter(weight)
                lin.bias = nn.Parameter(bias)
                parent, attr = norm_path.split(".")
                setattr(block.get_submodule(parent), attr, None)
        self.config = dataclasses.replace(self.config, norms_folded=True)
        return self

    # ---- spike taps ----------------------------------------------------------------------------
    def tap_names(self) -> list[str]:
        """Every spike tap: the LIFs and the ``attn.gate`` of each block, in model order."""
        return [n for n, m in self.named_modules() if isinstance(m, (LIFNode, SpikeGate))]

    def linear_inputs(self) -> dict[str, str]:
        """Block Linear → the spike tap that feeds it."""
        out = {}
        for layer in range(self.config.n_layer):
            p = f"blocks.{layer}."
            out |= {p + f"attn.{n}": p + "attn.lif_in" for n in ("q", "k", "v")}
            out[p + "attn.o"] = p + "attn.gate"
            out[p + "mlp.fc1"] = p + "mlp.lif_in"
            out[p + "mlp.fc2"] = p + "mlp.lif_hidden"
        return out

    @contextlib.contextmanager
    def record_spikes(self, keep_spikes: bool = False) -> Iterator[EncoderSpikeRecorder]:
        """Record every tap's spikes (valid tokens only) while the block runs::

            with model.record_spikes() as rec:
                model(idx, attention_mask=mask)
            model.workload(rec.input_rates(), seq_len=n)   # or rec.block_rates()
        """
        taps = [m for m in self.modules() if isinstance(m, (LIFNode, SpikeGate))]
        names = [m.tap_name for m in taps]
        inputs = {lin: (lin.rsplit(".", 2)[0], tap, self.get_submodule(lin).weight.numel())
                  for lin, tap in self.linear_inputs().items()}
        token_taps = {n for n in names if not n.endswith(".lif_map")}
        rec = EncoderSpikeRecorder(names, keep_spikes, token_taps, inputs)
        for m in taps:
            m.recorder = rec
        self._recorder = rec
        try:
            yield rec
        finally:
            for m in taps:
                m.recorder = None
            self._recorder = None

    # ---- protocol used by the rest of qslm -----------------------------------------------------
    def hierarchy(self) -> dict[str, list[str]]:
        """Block name → quantizable leaves, in model order: "emb", "pos" (if any),
        "blocks.{l}" (attn.q/k/v/o, mlp.fc1/fc2), "head". Matches ``workload()``'s modules."""
        out: dict[str, list[str]] = {"emb": ["emb"]}
        if self.pos is not None:
            out["pos"] = ["pos"]
        for layer in range(self.config.n_layer):
            out[f"blocks.{layer}"] = [f"blocks.{layer}.{s}" for s in (
                *(f"attn.{n}" for n in ATTN_LINEARS), *(f"mlp.{n}" for n in MLP_LINEARS))]
        out["head"] = ["head"]
        return out

    def spike_input_modules(self) -> list[str]:
        """Quantizable leaves whose input is binary spikes: every block Linear (not emb, pos,
        head)."""
        return list(self.linear_inputs())

    def workload(self, firing_rates: float | Mapping[str, float] | None = None,
                 per: str | None = None, *, spike_inputs: str = "released",
                 seq_len: int | None = None, weight_reads: float | None = None) -> Workload:
        """The hardware workload of one classified sequence
        (:func:`hwmodel.workload.spike_driven_workload`, the deployed form: norms folded).

        ``firing_rates``: one rate, or a mapping module-or-block name → rate
        (``rec.input_rates()`` exact, ``rec.block_rates()``); None: hwmodel's placeholder.
        ``per``: only "sequence" (the default). ``spike_inputs``: "released" or "idealized",
        accepted for the SpikeGPT signature; both are the same here (every block Linear takes
        spikes in the model as built). ``seq_len``: valid tokens per sequence (default
        ``ctx_len``, the most costly).
        """
        c = self.config
        if per not in (None, "sequence"):
            raise ConfigError(f"a classifier is costed per sequence: use per='sequence', "
                              f"got {per!r}")
        if spike_inputs not in ("released", "idealized"):
            raise ConfigError(f"spike_inputs must be 'released' or 'idealized', "
                              f"got {spike_inputs!r}")
        n = c.ctx_len if seq_len is None else seq_len
        _check_int("seq_len", n, 1)
        return spike_driven_workload(
            c.n_layer, c.n_embd, c.vocab_size, c.num_classes, seq_len=n, t_sim=c.t_sim,
            mlp_hidden=c.mlp_hidden, pos_rows=c.ctx_len if c.pos_emb else 0,
            head_norm=c.head_norm, firing_rates=firing_rates, weight_reads=weight_reads)
