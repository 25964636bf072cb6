"""Workload: what one generated token (or one classified sequence) asks of the hardware.

A :class:`Workload` is built from a model's *configuration*, not from its weights, so the cost
model runs without torch. It lists the weight-bearing modules (:class:`ModuleWork`: weight shape,
whether the input is binary spikes or real values, the firing rate of spike inputs, how many times
the module runs per unit of work) plus the work that carries no quantizable weight: LIF neuron
updates, element-wise operations (the WKV recurrence), non-quantizable parameters (LayerNorms,
``time_*`` vectors) and the recurrent state.

Models plug in through a one-method protocol: any object with ``workload() -> Workload`` is
accepted wherever a workload is (see :func:`as_workload`). ``qslm.models`` will implement it;
until then :func:`spikegpt_workload` derives the SpikeGPT workload from ``(L, C, V)`` alone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from hwmodel.errors import WorkloadError

__all__ = [
    "DEFAULT_FIRING_RATE",
    "FORMAT_VERSION",
    "INPUT_KINDS",
    "MODEL_PRESETS",
    "ModuleWork",
    "Workload",
    "WorkloadSource",
    "as_workload",
    "parse_model_spec",
    "spikegpt_workload",
]

FORMAT_VERSION = 1
INPUT_KINDS = ("spikes", "real")
OPS = ("linear", "embedding")
PER = ("token", "sequence")
SPIKE_INPUTS = ("released", "idealized")

# Placeholder firing rate R̂ of spike inputs when none is measured. An assumption, not a
# measurement: pass the rates measured by qslm.runtime (or the paper's R̂) for real studies.
DEFAULT_FIRING_RATE = 0.2

# Named model configurations: name → (n_layer, n_embd, vocab_size). Source: spec spikegpt.md §3.
MODEL_PRESETS: Mapping[str, tuple[int, int, int]] = MappingProxyType({
    "spikegpt-216m": (18, 768, 50277),
})


def _num(x: Any, what: str, *, low: float = 0.0, high: float = math.inf) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise WorkloadError(f"{what} must be a finite number, got {x!r}")
    if not low <= x <= high:
        raise WorkloadError(f"{what} must be in [{low:g}, {high:g}], got {x!r}")
    return float(x)


@dataclass(frozen=True)
class ModuleWork:
    """One weight-bearing module and how often its weights are used per unit of work."""

    name: str  # fully-qualified module name, e.g. "blocks.3.att.key"
    block: str  # the block it belongs to, e.g. "blocks.3" (used for per-block breakdowns)
    out_features: int  # weight shape is (out_features, in_features), PyTorch layout
    in_features: int
    input_kind: str = "real"  # "spikes": binary input, accumulate-only; "real": multiply-accumulate
    input_rate: float = 1.0  # firing rate of a spike input in [0, 1]; 1.0 for real inputs
    calls: float = 1.0  # executions per unit (per token, or per sequence); lookups for an embedding
    weight_reads: float = 1.0  # full reads of the weight tensor per unit (linear only)
    op: str = "linear"  # "linear" (y = x Wᵀ) or "embedding" (row lookups, no arithmetic)
    quantizable: bool = True  # may a plan give it a bit width

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise WorkloadError(f"module name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.block, str) or not self.block:
            raise WorkloadError(f"{self.name}: block must be a non-empty string")
        for attr in ("out_features", "in_features"):
            v = getattr(self, attr)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise WorkloadError(f"{self.name}: {attr} must be a positive integer, got {v!r}")
        if self.op not in OPS:
            raise WorkloadError(f"{self.name}: op must be one of {OPS}, got {self.op!r}")
        if self.input_kind not in INPUT_KINDS:
            raise WorkloadError(
                f"{self.name}: input_kind must be one of {INPUT_KINDS}, got {self.input_kind!r}")
        rate = _num(self.input_rate, f"{self.name}: input_rate", high=1.0)
        if self.input_kind == "real" and rate != 1.0:
            raise WorkloadError(f"{self.name}: input_rate applies to spike inputs only; "
                                f"a real input has rate 1.0, got {rate!r}")
        if self.op == "embedding" and self.input_kind != "real":
            raise WorkloadError(f"{self.name}: an embedding has no spike input")
        object.__setattr__(self, "input_rate", rate)
        object.__setattr__(self, "calls", _num(self.calls, f"{self.name}: calls"))
        object.__setattr__(self, "weight_reads",
                           _num(self.weight_reads, f"{self.name}: weight_reads"))

    @property
    def weight_shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def params(self) -> int:
        return self.out_features * self.in_features

    @property
    def synaptic_ops(self) -> float:
        """Weight uses per unit (MACs if dense): calls · N · K; 0 for an embedding."""
        return 0.0 if self.op == "embedding" else self.calls * self.params

    @property
    def events(self) -> float:
        """Operations actually performed: accumulates at the firing rate for spike inputs."""
        return self.synaptic_ops * (self.input_rate if self.input_kind == "spikes" else 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "block": self.block, "out_features": self.out_features,
            "in_features": self.in_features, "input_kind": self.input_kind,
            "input_rate": self.input_rate, "calls": self.calls,
            "weight_reads": self.weight_reads, "op": self.op, "quantizable": self.quantizable,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModuleWork:
        try:
            return cls(**dict(d))
        except TypeError as exc:
            raise WorkloadError(f"bad module entry {dict(d)!r}: {exc}") from None


def _counts(m: Any, what: str) -> Mapping[str, float]:
    if m is None:
        return MappingProxyType({})
    if not isinstance(m, Mapping):
        raise WorkloadError(f"{what} must be a mapping block → count, got {type(m).__name__}")
    return MappingProxyType({str(k): _num(v, f"{what}[{k!r}]") for k, v in m.items()})


@dataclass(frozen=True)
class Workload:
    """Everything the cost model needs about a model, per token or per sequence."""

    name: str  # e.g. "spikegpt(L=18,C=768,V=50277)/idealized"
    per: str  # "token" (generation) or "sequence" (classification)
    modules: tuple[ModuleWork, ...]
    neuron_updates: Mapping[str, float] = field(default_factory=dict)  # block → LIF updates/unit
    elementwise_ops: Mapping[str, float] = field(default_factory=dict)  # block → ops/unit (WKV)
    other_param_bytes: float = 0.0  # non-quantizable parameters, at their stored precision
    other_param_reads: float = 1.0  # full reads of those parameters per unit
    state_bytes: float = 0.0  # recurrent state (RNN rows + membrane potentials)
    state_updates: float = 1.0  # times per unit the state is read and written once
    description: str = ""

    def __post_init__(self) -> None:
        if self.per not in PER:
            raise WorkloadError(f"per must be one of {PER}, got {self.per!r}")
        mods = tuple(self.modules)
        if not mods:
            raise WorkloadError("a workload needs at least one module")
        for m in mods:
            if not isinstance(m, ModuleWork):
                raise WorkloadError(f"modules must be ModuleWork entries, got {type(m).__name__}")
        names = [m.name for m in mods]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise WorkloadError(f"duplicate module names: {', '.join(dup)}")
        object.__setattr__(self, "modules", mods)
        object.__setattr__(self, "neuron_updates", _counts(self.neuron_updates, "neuron_updates"))
        object.__setattr__(self, "elementwise_ops", _counts(self.elementwise_ops, "elementwise_ops"))
        for attr in ("other_param_bytes", "other_param_reads", "state_bytes", "state_updates"):
            object.__setattr__(self, attr, _num(getattr(self, attr), attr))

    # ---- derived quantities -----------------------------------------------------------------
    @property
    def module_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modules)

    @property
    def blocks(self) -> tuple[str, ...]:
        """Block names in order of first appearance (modules, then neuron/element-wise work)."""
        seen: dict[str, None] = {}
        for m in self.modules:
            seen.setdefault(m.block, None)
        for b in list(self.neuron_updates) + list(self.elementwise_ops):
            seen.setdefault(b, None)
        return tuple(seen)

    @property
    def total_neuron_updates(self) -> float:
        return float(sum(self.neuron_updates.values()))

    @property
    def total_elementwise_ops(self) -> float:
        return float(sum(self.elementwise_ops.values()))

    @property
    def embedding_lookups(self) -> float:
        """Embedding rows read per unit."""
        return float(sum(m.calls for m in self.modules if m.op == "embedding"))

    @property
    def n_params(self) -> int:
        """Parameters of the weight-bearing modules (the other parameters are in bytes)."""
        return sum(m.params for m in self.modules)

    @property
    def fp32_param_bytes(self) -> float:
        """Footprint of the fp32 checkpoint: every module weight at 4 bytes + other parameters."""
        return 4.0 * self.n_params + self.other_param_bytes

    def with_firing_rates(self, rates: float | Mapping[str, float]) -> Workload:
        """A copy whose spike-input modules get new firing rates.

        ``rates`` is one rate for all, or a mapping whose keys are module names or block names.
        """
        new = _apply_rates(self.modules, rates)
        return Workload(self.name, self.per, new, self.neuron_updates, self.elementwise_ops,
                        self.other_param_bytes, self.other_param_reads, self.state_bytes,
                        self.state_updates, self.description)

    # ---- serialization -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION, "name": self.name, "per": self.per,
            "description": self.description,
            "modules": [m.to_dict() for m in self.modules],
            "neuron_updates": dict(self.neuron_updates),
            "elementwise_ops": dict(self.elementwise_ops),
            "other_param_bytes": self.other_param_bytes,
            "other_param_reads": self.other_param_reads,
            "state_bytes": self.state_bytes, "state_updates": self.state_updates,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Workload:
        if d.get("format_version") != FORMAT_VERSION:
            raise WorkloadError(f"workload format_version must be {FORMAT_VERSION}, "
                                f"got {d.get('format_version')!r}")
        try:
            return cls(
                name=d["name"], per=d["per"],
                modules=tuple(ModuleWork.from_dict(m) for m in d["modules"]),
                neuron_updates=d.get("neuron_updates", {}),
                elementwise_ops=d.get("elementwise_ops", {}),
                other_param_bytes=d.get("other_param_bytes", 0.0),
                other_param_reads=d.get("other_param_reads", 1.0),
                state_bytes=d.get("state_bytes", 0.0),
                state_updates=d.get("state_updates", 1.0),
                description=d.get("description", ""),
            )
        except KeyError as exc:
            raise WorkloadError(f"workload dict lacks key {exc.args[0]!r}") from None


def _apply_rates(modules: tuple[ModuleWork, ...],
                 rates: float | Mapping[str, float] | None) -> tuple[ModuleWork, ...]:
    if rates is None:
        return modules
    spiking = [m for m in modules if m.input_kind == "spikes"]
    if isinstance(rates, Mapping):
        names = {m.name for m in spiking}
        blocks = {m.block for m in spiking}
        unknown = [k for k in rates if k not in names and k not in blocks]
        if unknown:
            raise WorkloadError("firing rates given for names that are neither spike-input "
                                f"modules nor their blocks: {', '.join(map(str, unknown))}")
        lookup = {k: _num(v, f"firing rate of {k!r}", high=1.0) for k, v in rates.items()}
    else:
        r = _num(rates, "firing rate", high=1.0)
        lookup = {m.name: r for m in spiking}
    out = []
    for m in modules:
        if m.input_kind == "spikes":
            r = lookup.get(m.name, lookup.get(m.block, m.input_rate))
            m = ModuleWork(m.name, m.block, m.out_features, m.in_features, m.input_kind, r,
                           m.calls, m.weight_reads, m.op, m.quantizable)
        out.append(m)
    return tuple(out)


@runtime_checkable
class WorkloadSource(Protocol):
    """What a model implements to be costed: ``workload() -> Workload``."""

    def workload(self) -> Workload: ...


# --------------------------------------------------------------------------------------------
# SpikeGPT (spec spikegpt.md)
# --------------------------------------------------------------------------------------------

# Linear layers of one block, in state_dict order: (suffix, out, in) as multiples of C, and
# whether the layer takes spikes in the paper's idealized accounting (spec §11: R/K/V
# projections and the FFN at E_AC·R̂; the attention output projection is not listed there,
# its input σ(r)⊙WKV is real-valued, so it stays a MAC layer).
_BLOCK_LINEARS = (
    ("att.key", 1, 1, True),
    ("att.value", 1, 1, True),
    ("att.receptance", 1, 1, True),
    ("att.output", 1, 1, False),
    ("ffn.key", 4, 1, True),
    ("ffn.receptance", 1, 1, True),
    ("ffn.value", 1, 4, True),
)
WKV_OPS_PER_CHANNEL = 7  # spec §11: attention mixing costs E_MAC·7·T·d
RNN_STATE_ROWS = 5  # spec §6: per block, ffn shift, att shift, WKV a, b, p
LIF_PER_BLOCK = 2  # lif1 (att branch) and lif2 (ffn branch), C neurons each


def spikegpt_workload(
    n_layer: int,
    n_embd: int,
    vocab_size: int,
    firing_rates: float | Mapping[str, float] | None = None,
    spike_inputs: str = "released",
    *,
    per: str = "token",
    seq_len: int = 1,
    num_classes: int | None = None,
    weight_reads: float | None = None,
) -> Workload:
    """The SpikeGPT workload from its configuration (spec spikegpt.md §3–§6, §11).

    Parameters
    ----------
    n_layer, n_embd, vocab_size:
        L, C, V of spec §3 (FFN hidden size 4C).
    firing_rates:
        Firing rate R̂ of spike inputs: one number, or a mapping module-or-block name → rate.
        None uses :data:`DEFAULT_FIRING_RATE` (a placeholder). Ignored when every input is real
        (``spike_inputs="released"``).
    spike_inputs:
        ``"released"``: the arithmetic of the released checkpoint (spec §5): every Linear takes
        real-valued inputs (LayerNorm outputs, squared ReLU, σ(r)⊙WKV), so all are MAC layers.
        ``"idealized"``: the paper's accounting (spec §11): the R/K/V projections and the three
        FFN Linears take spikes at rate R̂ (accumulate-only); ``att.output`` and ``head`` stay MAC.
    per, seq_len:
        ``"token"``: one generated token (seq_len must be 1). ``"sequence"``: one sequence of
        ``seq_len`` tokens processed by the recurrent form (every count is ×seq_len, the state is
        updated once per token).
    num_classes:
        With ``per="sequence"``: replace the LM head by ``classify_head`` (num_classes × C), run
        once per sequence on the pooled state.
    weight_reads:
        Full weight reads per unit for the block Linears. Default: once per token (seq_len per
        sequence), i.e. token-by-token execution that streams weights not held on chip.
    """
    for v, what in ((n_layer, "n_layer"), (n_embd, "n_embd"), (vocab_size, "vocab_size"),
                    (seq_len, "seq_len")):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise WorkloadError(f"{what} must be a positive integer, got {v!r}")
    if spike_inputs not in SPIKE_INPUTS:
        raise WorkloadError(f"spike_inputs must be one of {SPIKE_INPUTS}, got {spike_inputs!r}")
    if per not in PER:
        raise WorkloadError(f"per must be one of {PER}, got {per!r}")
    if per == "token" and seq_len != 1:
        raise WorkloadError("per='token' describes one token: seq_len must be 1")
    if num_classes is not None:
        if per != "sequence":
            raise WorkloadError("num_classes (a classification head) needs per='sequence'")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise WorkloadError(f"num_classes must be a positive integer, got {num_classes!r}")
    L, C, V, T = n_layer, n_embd, vocab_size, seq_len
    reads = float(T) if weight_reads is None else _num(weight_reads, "weight_reads")
    idealized = spike_inputs == "idealized"
    default_rate = DEFAULT_FIRING_RATE if firing_rates is None or isinstance(firing_rates, Mapping) \
        else _num(firing_rates, "firing rate", high=1.0)

    modules: list[ModuleWork] = [
        ModuleWork("emb", "emb", V, C, calls=float(T), weight_reads=0.0, op="embedding"),
    ]
    for layer in range(L):
        block = f"blocks.{layer}"
        for suffix, out_mult, in_mult, spikes in _BLOCK_LINEARS:
            kind = "spikes" if (idealized and spikes) else "real"
            modules.append(ModuleWork(
                f"{block}.{suffix}", block, out_mult * C, in_mult * C, input_kind=kind,
                input_rate=default_rate if kind == "spikes" else 1.0,
                calls=float(T), weight_reads=reads))
    if num_classes is None:
        modules.append(ModuleWork("head", "head", V, C, calls=float(T), weight_reads=reads))
    else:
        modules.append(ModuleWork("classify_head", "classify_head", num_classes, C, calls=1.0,
                                  weight_reads=1.0))
    mods = tuple(modules)
    if idealized and isinstance(firing_rates, Mapping):
        mods = _apply_rates(mods, firing_rates)

    blocks = [f"blocks.{layer}" for layer in range(L)]
    # Non-quantizable parameters (spec §3): per block 11C (time-mix 5C, channel-mix 2C, ln1+ln2
    # 4C), plus ln0 and ln_out (2C each); fp32 in the checkpoint.
    other_params = L * 11 * C + 4 * C
    name = f"spikegpt(L={L},C={C},V={V})/{spike_inputs}"
    if per == "sequence":
        name += f"/seq{T}" + (f"/cls{num_classes}" if num_classes else "")
    return Workload(
        name=name, per=per, modules=mods,
        neuron_updates={b: float(LIF_PER_BLOCK * C * T) for b in blocks},
        elementwise_ops={b: float(WKV_OPS_PER_CHANNEL * C * T) for b in blocks},
        other_param_bytes=4.0 * other_params, other_param_reads=float(T),
        state_bytes=4.0 * (RNN_STATE_ROWS + LIF_PER_BLOCK) * L * C, state_updates=float(T),
        description=(f"SpikeGPT L={L} C={C} V={V}, {spike_inputs} spike inputs, per {per}"
                     + (f" of {T} tokens" if per == "sequence" else "")),
    )


_SPEC_RE = re.compile(r"^spikegpt:(\d+),(\d+),(\d+)$")


def parse_model_spec(spec: str, **kwargs: Any) -> Workload:
    """A workload from a model string: a preset name (``spikegpt-216m``) or ``spikegpt:L,C,V``.

    Keyword arguments go to :func:`spikegpt_workload`. qslm model names will plug in through the
    :class:`WorkloadSource` protocol once ``qslm.models`` implements it.
    """
    s = spec.strip().lower()
    if s in MODEL_PRESETS:
        L, C, V = MODEL_PRESETS[s]
        return spikegpt_workload(L, C, V, **kwargs)
    m = _SPEC_RE.match(s.replace(" ", ""))
    if m:
        L, C, V = (int(g) for g in m.groups())
        return spikegpt_workload(L, C, V, **kwargs)
    raise WorkloadError(f"unknown model {spec!r}: use one of {', '.join(MODEL_PRESETS)} or "
                        "'spikegpt:L,C,V' (e.g. spikegpt:12,512,50277)")


def as_workload(model: Workload | WorkloadSource | str, **kwargs: Any) -> Workload:
    """Accept a Workload, any object with ``workload()``, or a model string."""
    if isinstance(model, Workload):
        return model
    if isinstance(model, str):
        return parse_model_spec(model, **kwargs)
    fn = getattr(model, "workload", None)
    if callable(fn):
        w = fn()
        if not isinstance(w, Workload):
            raise WorkloadError(f"{type(model).__name__}.workload() returned "
                                f"{type(w).__name__}, not a Workload")
        return w
    raise WorkloadError(f"cannot derive a workload from {type(model).__name__}: pass a Workload, "
                        "a model string, or an object with a workload() method")


# --------------------------------------------------------------------------------------------
# Spike-driven encoder (spec spike-driven-encoder.md; the model is qslm.models.sdt)
# --------------------------------------------------------------------------------------------

__all__ += ["spike_driven_workload"]

# Linear layers of one encoder block, in state_dict order: (suffix, out, in) with "C" the width
# and "H" the MLP hidden width. Every one takes binary spikes (spec: a LIF, or the AND of two
# spike tensors, sits in front of each), so every one is accumulate-only.
_SDT_BLOCK_LINEARS = (
    ("attn.q", "C", "C"), ("attn.k", "C", "C"), ("attn.v", "C", "C"), ("attn.o", "C", "C"),
    ("mlp.fc1", "H", "C"), ("mlp.fc2", "C", "H"),
)
# Element-wise work per block, per token and simulation step, in units of C: q⊙k (an AND), its
# masked column sum (an add), gate⊙v (an AND), and the two membrane-shortcut adds.
SDT_ELEMENTWISE_PER_TOKEN = 5
# ... and per sequence and simulation step, in units of C: the column sum's 1/n scale and the
# per-channel affine (2 ops) of the attention-map current.
SDT_ELEMENTWISE_PER_STEP = 3
# LIF layers per block and token, in units of C (attn.lif_in, lif_q, lif_k, lif_v, mlp.lif_in);
# plus mlp.lif_hidden (H per token) and attn.lif_map (C per sequence).
SDT_TOKEN_LIFS_C = 5


def spike_driven_workload(
    n_layer: int,
    n_embd: int,
    vocab_size: int,
    num_classes: int,
    *,
    seq_len: int,
    t_sim: int = 4,
    mlp_hidden: int | None = None,
    pos_rows: int = 0,
    head_norm: bool = True,
    firing_rates: float | Mapping[str, float] | None = None,
    weight_reads: float | None = None,
) -> Workload:
    """The workload of one classified sequence of a spike-driven encoder (``qslm.models.sdt``).

    Execution model: step-major, as a spike-driven device runs it — each of the ``t_sim``
    simulation steps takes all ``seq_len`` tokens through every block, so every block Linear
    runs ``seq_len·t_sim`` times per sequence on binary inputs (accumulates at the firing rate),
    its weights are read once per step (``weight_reads`` = ``t_sim`` by default: the weights of
    a step serve all tokens), and the LIF membranes of every layer persist from step to step
    (the state: fp32, updated once per step). Norms are folded into the Linears (the deployed
    form, "spikes × weights + bias"); the attention-map affine stays element-wise work.

    Parameters
    ----------
    n_layer, n_embd, vocab_size, num_classes:
        L, C, V and the classes K of the head (``head``: K × C, real input, once per sequence).
    seq_len, t_sim:
        N tokens per sequence (valid tokens: pads are not computed on a device) and S
        simulation steps.
    mlp_hidden:
        H, the MLP hidden width (default 4C).
    pos_rows:
        Rows of the learned position table ``pos`` (the model's ctx_len); 0: no position table.
    head_norm:
        Whether a LayerNorm (2C parameters) precedes the head.
    firing_rates:
        Rate of the spike inputs: one number, or a mapping module-or-block name → rate (e.g.
        the model recorder's ``input_rates()`` or ``block_rates()``); None:
        :data:`DEFAULT_FIRING_RATE` (a placeholder).
    weight_reads:
        Full weight reads of each block Linear per sequence (default ``t_sim``).
    """
    for v, what in ((n_layer, "n_layer"), (n_embd, "n_embd"), (vocab_size, "vocab_size"),
                    (num_classes, "num_classes"), (seq_len, "seq_len"), (t_sim, "t_sim")):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise WorkloadError(f"{what} must be a positive integer, got {v!r}")
    H = 4 * n_embd if mlp_hidden is None else mlp_hidden
    if isinstance(H, bool) or not isinstance(H, int) or H < 1:
        raise WorkloadError(f"mlp_hidden must be a positive integer, got {mlp_hidden!r}")
    if isinstance(pos_rows, bool) or not isinstance(pos_rows, int) or pos_rows < 0:
        raise WorkloadError(f"pos_rows must be an integer >= 0, got {pos_rows!r}")
    L, C, V, K, N, S = n_layer, n_embd, vocab_size, num_classes, seq_len, t_sim
    reads = float(S) if weight_reads is None else _num(weight_reads, "weight_reads")
    rate = DEFAULT_FIRING_RATE if firing_rates is None or isinstance(firing_rates, Mapping) \
        else _num(firing_rates, "firing rate", high=1.0)
    width = {"C": C, "H": H}

    modules = [ModuleWork("emb", "emb", V, C, calls=float(N), weight_reads=0.0, op="embedding")]
    if pos_rows:
        modules.append(ModuleWork("pos", "pos", pos_rows, C, calls=float(N), weight_reads=0.0,
                                  op="embedding"))
    for layer in range(L):
        block = f"blocks.{layer}"
        for suffix, out, inp in _SDT_BLOCK_LINEARS:
            modules.append(ModuleWork(f"{block}.{suffix}", block, width[out], width[inp],
                                      input_kind="spikes", input_rate=rate,
                                      calls=float(N * S), weight_reads=reads))
    modules.append(ModuleWork("head", "head", K, C, calls=1.0, weight_reads=1.0))
    mods = tuple(modules)
    if isinstance(firing_rates, Mapping):
        mods = _apply_rates(mods, firing_rates)

    blocks = [f"blocks.{layer}" for layer in range(L)]
    # Non-quantizable tensors of the deployed form, fp32: per block the folded biases (5C + H)
    # and the attention-map affine (weight, bias, running mean and variance: 4C); the head's
    # LayerNorm (2C) and bias (K).
    other = L * (9 * C + H) + (2 * C if head_norm else 0) + K
    lif_state = L * (N * (SDT_TOKEN_LIFS_C * C + H) + C)  # membranes that persist across steps
    elementwise = {b: float((SDT_ELEMENTWISE_PER_TOKEN * N + SDT_ELEMENTWISE_PER_STEP) * C * S)
                   for b in blocks}
    elementwise["head"] = float(N * S * C + (5 * C if head_norm else 0))  # mean pool (+ LN)
    return Workload(
        name=f"spike-driven(L={L},C={C},H={H},V={V},S={S})/seq{N}/cls{K}", per="sequence",
        modules=mods,
        neuron_updates={b: float((SDT_TOKEN_LIFS_C * C + H) * N * S + C * S) for b in blocks},
        elementwise_ops=elementwise,
        other_param_bytes=4.0 * other, other_param_reads=float(S),
        state_bytes=4.0 * lif_state, state_updates=float(S),
        description=(f"spike-driven encoder L={L} C={C} H={H} V={V}, {S} simulation steps, "
                     f"per sequence of {N} tokens, {K} classes; every block Linear takes spikes"),
    )
