"""Load ``model.qslm.safetensors`` and run it on the Rust kernels: :func:`load_runtime`.

How a packed file becomes a model, without ever holding a float32 copy of a quantized weight:

1. :func:`qslm.quant.export.load_packed` reads the file (format version, tensors present with
   the shapes their specs imply);
2. the stored config names the model family (:func:`qslm.quant.export.config_family`: no
   ``family`` key or ``"spikegpt"`` → SpikeGPT, ``"spike-driven-encoder"`` → the encoder
   classifier; any other, or no config, is an :class:`~qslm.errors.ArchitectureError`) and must
   be a valid config of it; the family's runtime class — :class:`RuntimeModel` (a
   :class:`~qslm.models.SpikeGPT`) or :class:`~qslm.runtime.sdt.SDTRuntime` (a
   :class:`~qslm.models.SpikeDrivenEncoder`) — is built from it **on the meta device**, so no
   parameter memory is allocated;
3. the stored plan is resolved on the model's quantizable modules and checked against the packed
   weights: every module the plan quantizes is packed with exactly the plan's spec, kind and
   shape match the model (:class:`~qslm.errors.ArchitectureError` for a plan or module of
   another architecture, :class:`~qslm.errors.PackedCodeError` for codes or quantization
   parameters that do not fit the plan's bit widths);
4. every quantized leaf is swapped for a :class:`~qslm.runtime.packed.PackedLinear` (declared a
   spike input — ``spike_matmul`` — for the model's ``spike_input_modules()``) /
   :class:`~qslm.runtime.packed.PackedEmbedding` holding the packed codes, and every LIF for a
   :class:`~qslm.runtime.packed.KernelLIF`;
5. the non-quantized tensors (LayerNorms, time parameters, kept weights, biases, norm
   statistics) are assigned from the file (``load_state_dict(assign=True)``; float16/bfloat16
   kept tensors become float32, as in the fake-quant model), strictly: a missing or unexpected
   tensor is an error.

Steps 3–5 are family-independent (:func:`build_packed_runtime`); a family only provides its
runtime class (the torch model with :class:`PackedRuntime` mixed in and KernelLIFs) and its
config reader.

The model owns its memory: packed codes, float32 scales (and zero points) and the other tensors
are copied out of the file's memory map once, so the process holds about the packed size
(:meth:`PackedRuntime.memory`), the file is not kept mapped, and changing or deleting it later
does not affect the loaded model.

The result computes what the fake-quant torch model of the same plan computes (SpikeGPT:
``forward``, ``step``, ``forward_recurrent``, ``record_spikes``; the encoder: ``forward``,
``record_spikes``), with the matrix products in the kernels' float32 accumulation order (see
:mod:`qslm.runtime.parity` for the tolerances).

Firing rates: every spike tap's spikes are counted during every run (any call, any form) into
the model's own recorder: :meth:`PackedRuntime.firing_rates` (per LIF / tap) and
:meth:`PackedRuntime.block_firing_rates` (per block), which :meth:`PackedRuntime.workload` and
:meth:`PackedRuntime.cost` hand to hwmodel, so energy estimates use the quantized model's rates.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from qslm.errors import (
    ArchitectureError,
    ConfigError,
    FormatVersionError,
    GenerationError,
    PackedCodeError,
    PackedModelError,
    PlanError,
)
from qslm.models.spikegpt import (
    FORMAT_VERSION as CONFIG_FORMAT_VERSION,
    P_INIT,
    SpikeGPT,
    SpikeGPTConfig,
    SpikeGPTState,
    SpikeRecorder,
)
from qslm.models.sdt import FAMILY as SDT_FAMILY
from qslm.quant.export import (
    PACKED_FILENAME,
    PackedModel,
    PackedWeight,
    config_family,
    load_packed,
)
from qslm.quant.plan import QuantPlan, QuantSpec, quantizable_modules
from qslm.runtime.packed import KernelLIF, PackedEmbedding, PackedLinear, packed_nbytes
from qslm.runtime.sampling import GREEDY, Sampling, next_token

if TYPE_CHECKING:
    from qslm.runtime.sdt import SDTRuntime

__all__ = ["PackedRuntime", "RuntimeModel", "build_packed_runtime", "build_runtime",
           "load_runtime"]

_ARCH_KEYS = ("arch", "architecture", "model_type")  # a foreign config may name its model


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """torch on one thread for the recurrent form: its per-token tensors are (B, C), too small
    to gain from threads, and waking torch's worker threads between the kernels' calls (their
    own rayon pool) costs more than the ops themselves. Restored afterwards."""
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class _RateCounter(SpikeRecorder):
    """The model's own always-on recorder (rates only) that also counts neuron updates."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(names, keep_spikes=False)
        self.n_elements = 0

    def add(self, name: str, s: Tensor) -> None:
        super().add(name, s)
        self.n_elements += s.numel()

    def add_counts(self, name: str, spikes: int, elements: int) -> None:
        super().add_counts(name, spikes, elements)
        self.n_elements += int(elements)


class _FanOut:
    """Hands one LIF's spikes to several recorders (the model's own rate counter and the ones of
    nested ``record_spikes()`` blocks)."""

    def __init__(self, recorders: Sequence[SpikeRecorder]) -> None:
        self.recorders = list(recorders)

    def add(self, name: str, s: Tensor) -> None:
        for r in self.recorders:
            r.add(name, s)


class PackedRuntime:
    """What every runtime model adds to the torch model of its family (a mixin, listed before
    the family's class: ``class RuntimeModel(PackedRuntime, SpikeGPT)``).

    What was loaded (:attr:`plan`, :attr:`module_specs`, :attr:`source`); the always-on
    firing-rate recorder and nested :meth:`record_spikes` blocks; :meth:`firing_rates`,
    :meth:`block_firing_rates`, :meth:`workload` / :meth:`cost` with the measured rates,
    :meth:`hw_plan`, :meth:`memory`, :meth:`accuracy`. A family provides the hooks
    :meth:`_rate_counter`, :meth:`_spike_recorder`, :meth:`_wire_recorders` (and may change
    :meth:`_measured_rates`, what :meth:`workload` hands to hwmodel) and :attr:`ARCH_NAME`.
    """

    ARCH_NAME = "model"  # in messages: "the stored plan is not for this {ARCH_NAME}"
    plan: QuantPlan | None
    module_specs: dict[str, QuantSpec]
    source: Path | None

    def _init_runtime(self) -> None:
        """Call at the end of the family's ``__init__`` (after its LIFs became KernelLIFs)."""
        self.plan = None
        self.module_specs = {}  # quantized module → its spec
        self.source = None
        self._rates = self._rate_counter()
        self._recorders: list[Any] = [self._rates]
        self._wire_recorders()

    # ---- family hooks --------------------------------------------------------------------------
    def _rate_counter(self) -> Any:
        """A fresh rates-only recorder of every spike tap with ``n_elements``."""
        raise NotImplementedError

    def _spike_recorder(self, keep_spikes: bool) -> Any:
        """The recorder :meth:`record_spikes` yields (the family's own)."""
        raise NotImplementedError

    def _wire_recorders(self) -> None:
        """Point every spike tap at ``self._recorders`` (one, or a fan-out to several)."""
        raise NotImplementedError

    def _measured_rates(self) -> dict[str, float]:
        """The measured rates :meth:`workload` hands to hwmodel (default: per block)."""
        return self.block_firing_rates()

    def arch_summary(self) -> str:
        """The model's shape in messages, e.g. ``"L=2, C=64, V=300"``."""
        c = self.config  # type: ignore[attr-defined]
        return f"L={c.n_layer}, C={c.n_embd}, V={c.vocab_size}"

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def from_packed(cls, path: str | os.PathLike[str]) -> Any:
        """Same as :func:`load_runtime`, for a file of this class's family."""
        model = load_runtime(path)
        if not isinstance(model, cls):
            raise ArchitectureError(f"{path}: holds a {model.ARCH_NAME}, not a {cls.ARCH_NAME} "
                                    f"({cls.__name__}): use load_runtime")
        return model

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """No-op: a runtime model's parameters come from the packed file."""

    # ---- spike taps and firing rates -----------------------------------------------------------
    @contextlib.contextmanager
    def record_spikes(self, keep_spikes: bool = False) -> Iterator[Any]:
        """As the family's ``record_spikes`` (same recorder); blocks may nest, and the model's
        own firing-rate counter keeps counting meanwhile."""
        rec = self._spike_recorder(keep_spikes)
        self._recorders.append(rec)
        self._wire_recorders()
        try:
            yield rec
        finally:
            self._recorders.remove(rec)
            self._wire_recorders()

    def firing_rates(self) -> dict[str, float]:
        """Mean firing rate of every spike tap (SpikeGPT: ``"blocks.{l}.lif1"`` / ``lif2``) over
        everything this model ran since it was loaded or :meth:`reset_firing_rates` (0.0 before
        any run)."""
        return self._rates.rates()

    def block_firing_rates(self) -> dict[str, float]:
        """Per block, keyed ``"blocks.{l}"`` (hwmodel's form): the recorder's ``block_rates()``
        (SpikeGPT: the mean rate of the block's two LIFs)."""
        return self._rates.block_rates()

    def measured_elements(self) -> int:
        """Neuron updates counted by the firing-rate recorder (0: nothing measured yet)."""
        return self._rates.n_elements

    def reset_firing_rates(self) -> None:
        self._rates = self._rate_counter()
        self._recorders[0] = self._rates
        self._wire_recorders()

    def workload(self, firing_rates: float | Mapping[str, float] | None = None,
                 per: str | None = None, *, spike_inputs: str = "released",
                 seq_len: int | None = None, **kwargs: Any):
        """The family's ``workload`` with the **measured** firing rates by default (when
        anything was run, :meth:`_measured_rates`; else hwmodel's placeholder). For SpikeGPT
        the rates matter for ``spike_inputs="idealized"`` (the paper's accounting)."""
        if firing_rates is None and self.measured_elements():
            firing_rates = self._measured_rates()
        return super().workload(firing_rates, per,  # type: ignore[misc]
                                spike_inputs=spike_inputs, seq_len=seq_len, **kwargs)

    def hw_plan(self):
        """The loaded plan as an hwmodel :class:`~hwmodel.Plan` (one entry per module)."""
        from hwmodel import ModuleSpec, Plan

        mods: dict[str, ModuleSpec | None] = {}
        for block in self.hierarchy().values():  # type: ignore[attr-defined]
            for name in block:
                s = self.module_specs.get(name)
                mods[name] = None if s is None else ModuleSpec(
                    s.bits, s.group_size if s.granularity == "group" else None, s.symmetric)
        return Plan(mods, None)

    def cost(self, device: Any, per: str | None = None, *, spike_inputs: str = "released",
             seq_len: int | None = None):
        """hwmodel's cost (memory, energy, latency, power) of this packed model on ``device``
        (a preset name or a :class:`hwmodel.Device`), with the measured firing rates."""
        import hwmodel

        wl = self.workload(None, per, spike_inputs=spike_inputs, seq_len=seq_len)
        return hwmodel.cost(wl, self.hw_plan(), device)

    # ---- memory --------------------------------------------------------------------------------
    def memory(self) -> dict[str, int]:
        """Bytes held: ``packed`` (codes, scales, zero points of the quantized modules),
        ``float`` (every other parameter or buffer: kept weights, norms, biases, time
        parameters)."""
        packed = packed_nbytes(self)  # type: ignore[arg-type]
        ids = {id(b) for m in self.modules()  # type: ignore[attr-defined]
               if isinstance(m, (PackedLinear, PackedEmbedding))
               for b in (m.packed, m.scales, m.zero_points) if b is not None}
        other = sum(t.numel() * t.element_size() for t in
                    list(self.parameters()) + list(self.buffers())  # type: ignore[attr-defined]
                    if id(t) not in ids)
        return {"packed": packed, "float": other, "total": packed + other}

    # ---- scoring -------------------------------------------------------------------------------
    def accuracy(self, batches: Iterable[tuple[Tensor, Tensor, Any]],
                 **kwargs: Any) -> dict[str, Any]:
        """:func:`qslm.eval.classification_accuracy` of this classifier over ``batches``
        (``(ids, attention_mask, labels)``, e.g. :func:`qslm.eval.classification_batches`)."""
        from qslm.eval import classification_accuracy

        if not self.config.is_classifier:  # type: ignore[attr-defined]
            raise ConfigError("accuracy needs a classifier; this is a language model")
        kwargs.setdefault("progress", False)
        return classification_accuracy(self, batches, **kwargs)


class RuntimeModel(PackedRuntime, SpikeGPT):
    """A SpikeGPT whose quantized leaves are packed modules on the Rust kernels.

    Build it with :func:`load_runtime` (or :meth:`from_packed`). It is a
    :class:`~qslm.models.SpikeGPT`: ``forward`` (parallel form), ``step`` / ``forward_recurrent``
    (recurrent form), ``record_spikes``, ``hierarchy``, ``workload`` behave as there. Added:
    :meth:`generate`, :meth:`perplexity`, :meth:`accuracy`, measured firing rates, :meth:`cost`,
    and what was loaded (:attr:`plan`, :attr:`module_specs`, :attr:`source`).
    Inference only (parameters do not require gradients), on the CPU. The recurrent form
    (``step``, ``forward_recurrent``, ``generate``) runs torch on one thread while it works
    (``torch.set_num_threads``, restored afterwards; not for concurrent use from several threads).
    """

    ARCH_NAME = "SpikeGPT"

    def __init__(self, config: SpikeGPTConfig) -> None:
        # Build under ``torch.device("meta")`` (load_runtime does): reset_parameters is a no-op,
        # every parameter is assigned from the packed file afterwards.
        super().__init__(config)
        lif = (config.tau, config.v_threshold, config.v_reset)
        for layer, block in enumerate(self.blocks):
            for attr in ("lif1", "lif2"):
                k = KernelLIF(*lif)
                k.tap_name = f"blocks.{layer}.{attr}"
                setattr(block, attr, k)
        # generate() on the fused Rust step (qslm.runtime.engine); False: on step(), the
        # torch modules calling the kernels one product at a time.
        self.fused_step = True
        self._init_runtime()

    def init_state(self, batch_size: int = 1) -> SpikeGPTState:
        """A fresh recurrent state on the CPU (zeros, p = −1e30, membranes at v_reset)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        shape = (self.config.n_layer, batch_size, self.config.n_embd)
        z = torch.zeros(shape)
        v0 = torch.full(shape, float(self.config.v_reset))
        return SpikeGPTState(att_x=z, ffn_x=z.clone(), a=z.clone(), b=z.clone(),
                             p=torch.full(shape, P_INIT), v1=v0, v2=v0.clone())

    def step(self, token_ids: Tensor, state: SpikeGPTState) -> tuple[Tensor, SpikeGPTState]:
        """:meth:`SpikeGPT.step` (one token, recurrent form) with torch on one thread."""
        with _one_torch_thread():
            return super().step(token_ids, state)

    def forward_recurrent(self, idx: Tensor, state: SpikeGPTState | None = None,
                          attention_mask: Tensor | None = None, return_state: bool = False,
                          ) -> Tensor | tuple[Tensor, SpikeGPTState]:
        """:meth:`SpikeGPT.forward_recurrent` with torch on one thread."""
        with _one_torch_thread():
            return super().forward_recurrent(idx, state, attention_mask, return_state)

    # ---- spike taps (PackedRuntime's hooks) ----------------------------------------------------
    def _rate_counter(self) -> _RateCounter:
        return _RateCounter(self.lif_names())

    def _spike_recorder(self, keep_spikes: bool) -> SpikeRecorder:
        return SpikeRecorder(self.lif_names(), keep_spikes)

    def _wire_recorders(self) -> None:
        recs = self._recorders
        target: Any = None if not recs else recs[0] if len(recs) == 1 else _FanOut(recs)
        for m in self.modules():
            if isinstance(m, KernelLIF):
                m.recorder = target

    # ---- generation ----------------------------------------------------------------------------
    def _check_token_ids(self, ids: Any, what: str) -> list[int]:
        if isinstance(ids, Tensor):
            if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.ndim != 1:
                raise GenerationError(f"{what} must be a 1-D integer tensor or a list of ints")
            out = [int(v) for v in ids.tolist()]
        else:
            try:
                out = [int(v) for v in ids]
            except (TypeError, ValueError):
                raise GenerationError(f"{what} must be a sequence of token ids, got "
                                      f"{type(ids).__name__}") from None
            if any(isinstance(v, (bool, float)) for v in ids):
                raise GenerationError(f"{what} must hold integer token ids")
        V = self.config.vocab_size
        bad = [v for v in out if not 0 <= v < V]
        if bad:
            raise GenerationError(f"{what}: token id {bad[0]} is outside the vocabulary "
                                  f"[0, {V})")
        return out

    @torch.no_grad()
    def generate(self, prompt_ids: Sequence[int] | Tensor, max_new_tokens: int,
                 sampling: Sampling = GREEDY, *, stop_tokens: Iterable[int] = (),
                 on_token: Callable[[int], None] | None = None) -> list[int]:
        """Recurrent generation (spec §6): the prompt is fed token by token through
        :meth:`step`, then ``max_new_tokens`` tokens are chosen by ``sampling`` (greedy by
        default; :meth:`Sampling.run_py` for run.py's) and fed back. Returns the new token ids
        (stopping early, the stop token included, at any of ``stop_tokens``). ``on_token`` is
        called with each new token as it is chosen (streaming)."""
        if self.config.is_classifier:
            raise GenerationError("a classifier has no next-token head: it cannot generate")
        if not isinstance(sampling, Sampling):
            raise GenerationError(f"sampling must be a Sampling, got {type(sampling).__name__}")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or \
                max_new_tokens < 0:
            raise GenerationError(f"max_new_tokens must be an integer >= 0, got "
                                  f"{max_new_tokens!r}")
        prompt = self._check_token_ids(prompt_ids, "prompt")
        if not prompt:
            raise GenerationError("the prompt is empty: generation needs at least one token "
                                  "(e.g. 0, <|endoftext|>)")
        stops = set(self._check_token_ids(list(stop_tokens), "stop_tokens"))
        if max_new_tokens == 0:
            return []
        with _one_torch_thread():
            if self.fused_step and not any(r.keep_spikes for r in self._recorders):
                return self._generate_fused(prompt, max_new_tokens, sampling, stops, on_token)
            return self._generate(prompt, max_new_tokens, sampling, stops, on_token)

    def _generate(self, prompt: list[int], max_new_tokens: int, sampling: Sampling,
                  stops: set[int], on_token: Callable[[int], None] | None) -> list[int]:
        state = self.init_state(1)

        def step(tok: int) -> Tensor:
            nonlocal state
            logits, state = self.step(torch.tensor([tok], dtype=torch.int64), state)
            return logits[0]

        return self._decode(step, prompt, max_new_tokens, sampling, stops, on_token)

    def _generate_fused(self, prompt: list[int], max_new_tokens: int, sampling: Sampling,
                        stops: set[int], on_token: Callable[[int], None] | None) -> list[int]:
        """:meth:`_generate` on the Rust step engine (:mod:`qslm.runtime.engine`): one kernel
        call per token; the spikes it counted go to the firing-rate recorders at the end."""
        from qslm.runtime.engine import engine_for

        engine = engine_for(self)
        state = engine.new_state()
        try:
            return self._decode(lambda tok: torch.from_numpy(engine.step(tok, state)), prompt,
                                max_new_tokens, sampling, stops, on_token)
        finally:
            counts = state.spike_counts.tolist()
            per_lif = state.steps * self.config.n_embd
            for layer in range(self.config.n_layer):  # the engine's order: lif1, lif2 per block
                for j in (1, 2):
                    for rec in self._recorders:
                        rec.add_counts(f"blocks.{layer}.lif{j}", counts[2 * layer + j - 1],
                                       per_lif)

    @staticmethod
    def _decode(step: Callable[[int], Tensor], prompt: list[int], max_new_tokens: int,
                sampling: Sampling, stops: set[int],
                on_token: Callable[[int], None] | None) -> list[int]:
        """Feed the prompt through ``step`` (token → logits (V,)), then choose and feed back
        up to ``max_new_tokens`` tokens."""
        gen = sampling.generator() if not sampling.greedy else None
        logits = None
        for tok in prompt:
            logits = step(tok)
        out: list[int] = []
        for i in range(max_new_tokens):
            tok = next_token(logits, sampling, gen)
            out.append(tok)
            if on_token is not None:
                on_token(tok)
            if tok in stops or i == max_new_tokens - 1:
                break
            logits = step(tok)
        return out

    # ---- scoring -------------------------------------------------------------------------------
    def perplexity(self, token_ids: Any, ctx_len: int | None = None, batch_size: int = 8,
                   stride: int | None = None, **kwargs: Any) -> dict[str, Any]:
        """:func:`qslm.eval.lm_perplexity` of this model (windows of ``ctx_len``, default the
        config's; parallel form). Extra keyword arguments go to it (``progress`` defaults to
        False)."""
        from qslm.eval import lm_perplexity

        if self.config.is_classifier:
            raise ConfigError("perplexity needs a language model; this is a classifier")
        kwargs.setdefault("progress", False)
        return lm_perplexity(self, token_ids, ctx_len or self.config.ctx_len, batch_size,
                             stride, **kwargs)


# ================================================================================================
# Loading and validation (family-independent helpers, used by every runtime family)
# ================================================================================================


def _runtime_family(config: Mapping[str, Any] | None, where: str) -> str:
    """The family of the stored config (:func:`qslm.quant.export.config_family`): SpikeGPT
    (no ``family`` key, or ``"spikegpt"``) or ``"spike-driven-encoder"``."""
    if config is None:
        raise ArchitectureError(f"{where}: the packed model stores no model config; the runtime "
                                "runs SpikeGPT and spike-driven encoder models exported with "
                                "their config")
    try:
        return config_family(config)
    except ArchitectureError as exc:
        raise ArchitectureError(f"{where}: {exc}; the runtime runs no other") from None


def _spikegpt_config(config: Mapping[str, Any] | None, where: str) -> SpikeGPTConfig:
    if config is None:
        raise ArchitectureError(f"{where}: the packed model stores no model config; the runtime "
                                "runs SpikeGPT models exported with their config")
    for key in _ARCH_KEYS:
        if key in config and str(config[key]).lower().replace("-", "") != "spikegpt":
            raise ArchitectureError(f"{where}: the packed model is a {config[key]!r} model "
                                    f"(config {key!r}); the runtime runs SpikeGPT")
    d = {k: v for k, v in config.items() if k not in _ARCH_KEYS and k != "family"}
    if "format_version" in d and d["format_version"] != CONFIG_FORMAT_VERSION:
        raise FormatVersionError(f"{where}: the stored SpikeGPT config has format_version "
                                 f"{d['format_version']!r}; this qslm reads "
                                 f"{CONFIG_FORMAT_VERSION}")
    try:
        return SpikeGPTConfig.from_dict(d)
    except (ConfigError, TypeError) as exc:
        raise ArchitectureError(f"{where}: the stored config is not a SpikeGPT config: "
                                f"{exc}") from None


def _check_codes(pw: PackedWeight, where: str) -> None:
    """Quantization parameters and padding bits that fit the module's bit width."""
    name, spec = pw.name, pw.spec
    s = pw.scales.to(torch.float32)
    if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise PackedCodeError(f"{where}: module {name!r}: scales must be finite and > 0")
    if pw.zero_points is not None:
        z = pw.zero_points.to(torch.float32)
        qmax = (1 << spec.bits) - 1
        ok = torch.isfinite(z) & (z == torch.round(z)) & (z >= 0) & (z <= qmax)
        if not bool(ok.all()):
            bad = float(z[~ok].flatten()[0])
            raise PackedCodeError(f"{where}: module {name!r}: zero point {bad!r} is not an "
                                  f"integer code of {spec.bits} bits (0..{qmax})")
    k = pw.shape[1]
    used = (k * spec.bits) % 8
    if used and pw.packed.shape[0]:
        last = pw.packed[:, -1].numpy()
        if np.any(last >> used):
            raise PackedCodeError(f"{where}: module {name!r}: bits set past the last "
                                  f"{spec.bits}-bit code of a row: the codes were not packed "
                                  f"with {spec.bits} bits for {k} columns")


def _check_module(name: str, pw: PackedWeight, module: nn.Module, where: str) -> None:
    if isinstance(module, nn.Embedding):
        kind, shape = "embedding", (module.num_embeddings, module.embedding_dim)
    else:
        kind, shape = "linear", (module.out_features, module.in_features)
    if pw.kind != kind:
        raise ArchitectureError(f"{where}: module {name!r} is packed as {pw.kind!r}, the model's "
                                f"{name} is an {kind}")
    if tuple(pw.shape) != tuple(shape):
        raise ArchitectureError(f"{where}: module {name!r} is packed with shape "
                                f"{list(pw.shape)}, the model's is {list(shape)}")


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def _resolve_packed(model: PackedRuntime, pm: PackedModel, where: str,
                    check_codes: bool) -> dict[str, nn.Module]:
    """Resolve the stored plan on the model's quantizable modules and check every packed
    weight against it (kind, shape, exact spec; codes and parameters with ``check_codes``).
    Returns the quantizable leaves (name → the model's module)."""
    leaves = quantizable_modules(model)  # type: ignore[arg-type]
    try:
        specs = pm.plan.resolve(leaves, strict=True)
    except PlanError as exc:
        raise ArchitectureError(f"{where}: the stored plan is not for this {model.ARCH_NAME}: "
                                f"{exc}") from None
    foreign = [n for n in pm.weights if n not in leaves]
    if foreign:
        raise ArchitectureError(f"{where}: packed module(s) {', '.join(map(repr, foreign[:5]))} "
                                f"are not quantizable modules of a {model.ARCH_NAME} "
                                f"({model.arch_summary()})")
    for name, spec in specs.items():
        pw = pm.weights.get(name)
        if spec is None:
            if pw is not None:
                raise PackedCodeError(f"{where}: the plan keeps {name!r} at full precision but "
                                      f"the file packs it as {pw.spec}")
            continue
        if pw is None:
            raise ArchitectureError(f"{where}: the plan quantizes {name!r} ({spec}) but the "
                                    f"file holds no packed weight for it "
                                    f"({name}.weight.packed): made for another model shape?")
        if pw.spec != spec:
            raise PackedCodeError(f"{where}: module {name!r} is packed as {pw.spec} "
                                  f"({pw.spec.bits} bits) but the plan gives it {spec} "
                                  f"({spec.bits} bits)")
        _check_module(name, pw, leaves[name], where)
        if check_codes:
            _check_codes(pw, where)
    return leaves


def _swap_packed(model: PackedRuntime, pm: PackedModel, leaves: Mapping[str, nn.Module]) -> None:
    """Every packed module becomes a :class:`PackedEmbedding` or a :class:`PackedLinear`
    (``spike_input`` for the model's ``spike_input_modules()``: ``spike_matmul``)."""
    spike_in = set(model.spike_input_modules())  # type: ignore[attr-defined]
    for name, pw in pm.weights.items():
        old = leaves[name]
        if isinstance(old, nn.Embedding):
            new: nn.Module = PackedEmbedding(pw)
        else:
            new = PackedLinear(pw, bias=old.bias is not None, spike_input=name in spike_in)
        _swap(model, name, new)  # type: ignore[arg-type]


def _assign_tensors(model: nn.Module, pm: PackedModel, where: str) -> None:
    """Assign every non-packed tensor from the file (strictly: missing, unexpected or misshapen
    tensors are errors), floating ones as float32 copies (the model's own memory)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in pm.tensors]
    if missing:
        k = missing[0]
        raise PackedModelError(f"{where}: missing tensor {k!r} (shape "
                               f"{list(expected[k].shape)}){' and more' if len(missing) > 1 else ''}")
    unexpected = [k for k in pm.tensors if k not in expected]
    if unexpected:
        raise PackedModelError(f"{where}: unexpected tensor(s) "
                               f"{', '.join(map(repr, unexpected[:5]))}: not part of the model "
                               "(or a module stored both packed and unpacked)")
    sd: dict[str, Tensor] = {}
    for k, ref in expected.items():
        t = pm.tensors[k]
        if tuple(t.shape) != tuple(ref.shape):
            raise PackedModelError(f"{where}: tensor {k!r} has shape {list(t.shape)}, the model "
                                   f"needs {list(ref.shape)}")
        if t.is_floating_point():
            t = t.to(torch.float32, copy=True)  # own memory, not the file's memory map
        elif ref.is_floating_point():
            raise PackedModelError(f"{where}: tensor {k!r} is {t.dtype}, expected floating point")
        else:
            t = t.to(ref.dtype, copy=True)
        sd[k] = t
    model.load_state_dict(sd, strict=True, assign=True)
    for p in model.parameters():
        p.requires_grad_(False)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
            if t.is_meta]
    if left:  # cannot happen after a strict load; a guard against a silent meta tensor
        raise PackedModelError(f"{where}: tensor(s) {', '.join(left[:5])} were not loaded")


def build_packed_runtime(cls: Callable[[Any], Any], config: Any, pm: PackedModel, where: str,
                         *, check_codes: bool = True) -> Any:
    """The runtime model ``cls(config)`` (a :class:`PackedRuntime` of some family) of ``pm``:
    built on the meta device, plan resolved and checked, quantized leaves swapped for packed
    modules, the other tensors assigned strictly (steps 3–5 of the module docstring)."""
    with torch.device("meta"):
        model = cls(config)
    leaves = _resolve_packed(model, pm, where, check_codes)
    _swap_packed(model, pm, leaves)
    _assign_tensors(model, pm, where)
    model.plan = pm.plan
    model.module_specs = {n: pw.spec for n, pw in pm.weights.items()}
    return model.eval()


def build_runtime(pm: PackedModel, where: str = "<packed model>", *,
                  check_codes: bool = True) -> RuntimeModel | SDTRuntime:
    """The runtime model of an already read :class:`~qslm.quant.export.PackedModel`, of the
    family its config names: a :class:`RuntimeModel` (SpikeGPT) or a
    :class:`~qslm.runtime.sdt.SDTRuntime` (spike-driven encoder); see the module docstring for
    every check. Packed codes and the other tensors are copied into the model's own memory."""
    if _runtime_family(pm.config, where) == SDT_FAMILY:
        from qslm.runtime.sdt import SDTRuntime, sdt_config

        return build_packed_runtime(SDTRuntime, sdt_config(pm.config, where), pm, where,
                                    check_codes=check_codes)
    return build_packed_runtime(RuntimeModel, _spikegpt_config(pm.config, where), pm, where,
                                check_codes=check_codes)


def load_runtime(path: str | os.PathLike[str], *, check_codes: bool = True
                 ) -> RuntimeModel | SDTRuntime:
    """Load a packed model file (or a folder holding ``model.qslm.safetensors``) for the runtime:
    a :class:`RuntimeModel` for a SpikeGPT, a :class:`~qslm.runtime.sdt.SDTRuntime` for a
    spike-driven encoder (the family named by the stored config).

    Raises (all :class:`~qslm.errors.PackedModelError`, itself a ``ValueError``):
    ``PackedModelError`` for a missing, truncated or corrupt file, missing or unexpected tensors,
    or tensors whose shapes disagree with their spec; ``FormatVersionError`` (not a
    PackedModelError, a :class:`~qslm.errors.QslmError`) for another format version;
    ``ArchitectureError`` for a config (or an unknown model family), plan or module of another
    architecture; ``PackedCodeError`` for codes or parameters that do not fit the plan's bit
    widths (``check_codes=False`` skips the scan of scales, zero points and padding bits).
    """
    p = Path(path)
    if p.is_dir():
        p = p / PACKED_FILENAME
    pm = load_packed(p)
    model = build_runtime(pm, str(p), check_codes=check_codes)
    model.source = p
    return model
