"""The spike-driven encoder classifier (:mod:`qslm.models.sdt`) on the packed runtime.

:func:`qslm.runtime.load_runtime` returns an :class:`SDTRuntime` for a packed file whose config
names the family ``"spike-driven-encoder"``; it is loaded and checked exactly as a SpikeGPT
(:func:`qslm.runtime.model.build_packed_runtime`: meta-device build, plan resolution and checks,
packed leaves, strict assignment of the other tensors).

What runs where:

* every block Linear (``blocks.{l}.attn.{q,k,v,o}``, ``blocks.{l}.mlp.{fc1,fc2}``: the model's
  ``spike_input_modules()``) is a :class:`~qslm.runtime.packed.PackedLinear` declared a spike
  input, so its exactly-0/1 input goes through ``spike_matmul`` (bit-packed spikes, accumulate
  only) and then adds its bias. The bundled checkpoints are stored folded
  (:meth:`~qslm.models.SpikeDrivenEncoder.fold_norms`): each block BatchNorm is already in the
  Linear's weights and bias, so the deployed layer is "spikes × weights + bias". (An unfolded
  export also runs — its ``MaskedBatchNorm`` modules stay eval-mode affines after the product,
  as in its fake-quant model — but the folded form is the one to quantize and deploy.)
  ``attn.map_norm`` follows no Linear and stays a per-channel affine of the gate current;
* ``emb`` and ``pos`` are :class:`~qslm.runtime.packed.PackedEmbedding` (rows decoded on
  lookup); ``head`` (real-valued pooled input) a :class:`~qslm.runtime.packed.PackedLinear` on
  ``lowbit_matmul``; ``head_norm`` stays a LayerNorm;
* every LIF is a :class:`~qslm.runtime.packed.KernelLIF` (``lif_scan``): the encoder's LIFs step
  over the simulation axis of ``(B·N, S, C)`` (``attn.lif_map``: ``(B, S, C)``), which is the
  kernel LIF's ``(B, T, C)`` layout, with the same parameters, membranes starting at
  ``v_reset`` on every call, spikes bit-identical in float32.

Spike taps keep the encoder's semantics (:class:`~qslm.models.sdt.EncoderSpikeRecorder`: the
LIFs and each ``attn.gate``, valid tokens only — pads are not computed on a device): the model's
own always-on counter and any nested :meth:`~SDTRuntime.record_spikes` blocks. The measured
per-Linear input rates (exact) go to :meth:`~SDTRuntime.workload` and :meth:`~SDTRuntime.cost`.

There is no recurrent form and no next-token head: :meth:`SDTRuntime.generate` and
:meth:`SDTRuntime.perplexity` raise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from qslm.errors import (
    ArchitectureError,
    ConfigError,
    FormatVersionError,
    GenerationError,
)
from qslm.models.sdt import (
    FORMAT_VERSION as SDT_FORMAT_VERSION,
    EncoderSpikeRecorder,
    SDTConfig,
    SpikeDrivenEncoder,
    SpikeGate,
)
from qslm.models.spikegpt import LIFNode
from qslm.runtime.model import PackedRuntime, _swap
from qslm.runtime.packed import KernelLIF

__all__ = ["SDTRuntime", "sdt_config"]


def sdt_config(config: Mapping[str, Any] | None, where: str) -> SDTConfig:
    """The :class:`~qslm.models.SDTConfig` of a packed file's stored config
    (:class:`~qslm.errors.FormatVersionError` for another config format version,
    :class:`~qslm.errors.ArchitectureError` for an invalid one)."""
    if config is None:
        raise ArchitectureError(f"{where}: the packed model stores no model config")
    if config.get("format_version") != SDT_FORMAT_VERSION:
        raise FormatVersionError(f"{where}: the stored spike-driven encoder config has "
                                 f"format_version {config.get('format_version')!r}; this qslm "
                                 f"reads {SDT_FORMAT_VERSION}")
    try:
        return SDTConfig.from_dict(config)
    except (ConfigError, TypeError) as exc:
        raise ArchitectureError(f"{where}: the stored config is not a spike-driven encoder "
                                f"config: {exc}") from None


class _EncoderRateCounter(EncoderSpikeRecorder):
    """The model's own always-on recorder (rates only) that also counts neuron updates (valid
    tokens only, as the rates)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.n_elements = 0

    def add(self, name: str, s: Tensor) -> None:
        before = self._totals[name]
        super().add(name, s)
        self.n_elements += self._totals[name] - before


class _EncoderFanOut:
    """Hands one tap's spikes to several encoder recorders; setting ``valid`` (the model does,
    once per call) sets it on each, so each keeps the valid tokens only."""

    def __init__(self, recorders: Sequence[EncoderSpikeRecorder]) -> None:
        self.recorders = list(recorders)

    @property
    def valid(self) -> Tensor | None:
        return self.recorders[0].valid

    @valid.setter
    def valid(self, value: Tensor | None) -> None:
        for r in self.recorders:
            r.valid = value

    def add(self, name: str, s: Tensor) -> None:
        for r in self.recorders:
            r.add(name, s)


class SDTRuntime(PackedRuntime, SpikeDrivenEncoder):
    """A spike-driven encoder whose quantized leaves are packed modules on the Rust kernels.

    Build it with :func:`qslm.runtime.load_runtime` (or :meth:`from_packed`). It is a
    :class:`~qslm.models.SpikeDrivenEncoder`: ``forward(idx, targets=None,
    attention_mask=None)``, ``record_spikes``, ``hierarchy``, ``spike_input_modules``,
    ``workload`` behave as there. Added (:class:`~qslm.runtime.model.PackedRuntime`):
    :meth:`accuracy`, measured firing rates (:meth:`firing_rates` per tap,
    :meth:`input_firing_rates` per block Linear, :meth:`block_firing_rates`), :meth:`workload` /
    :meth:`cost` with them, :meth:`hw_plan`, :meth:`memory`, and what was loaded (:attr:`plan`,
    :attr:`module_specs`, :attr:`source`). Inference only, on the CPU.
    """

    ARCH_NAME = "spike-driven encoder"

    def __init__(self, config: SDTConfig) -> None:
        # Build under ``torch.device("meta")`` (load_runtime does): reset_parameters is a no-op,
        # every parameter is assigned from the packed file afterwards.
        super().__init__(config)
        for name, m in list(self.named_modules()):
            if isinstance(m, LIFNode) and not isinstance(m, KernelLIF):
                k = KernelLIF(m.tau, m.v_threshold, m.v_reset)
                k.tap_name = name
                _swap(self, name, k)
        self._init_runtime()

    def arch_summary(self) -> str:
        c = self.config
        return (f"L={c.n_layer}, C={c.n_embd}, H={c.mlp_hidden}, V={c.vocab_size}, "
                f"ctx_len={c.ctx_len}")

    # ---- spike taps (PackedRuntime's hooks) ----------------------------------------------------
    def _taps(self) -> list[Any]:
        return [m for m in self.modules() if isinstance(m, (LIFNode, SpikeGate))]

    def _recorder_args(self) -> tuple[list[str], set[str], dict[str, tuple[str, str, int]]]:
        """(tap names, token taps, Linear → (block, input tap, weight elements)): what
        :meth:`SpikeDrivenEncoder.record_spikes` gives its recorder, with the weight sizes from
        the packed modules' shapes (they hold no ``weight``)."""
        names = [m.tap_name for m in self._taps()]
        inputs = {}
        for lin, tap in self.linear_inputs().items():
            m = self.get_submodule(lin)
            inputs[lin] = (lin.rsplit(".", 2)[0], tap, m.in_features * m.out_features)
        token_taps = {n for n in names if not n.endswith(".lif_map")}  # lif_map: per sequence
        return names, token_taps, inputs

    def _rate_counter(self) -> _EncoderRateCounter:
        names, token_taps, inputs = self._recorder_args()
        return _EncoderRateCounter(names, False, token_taps, inputs)

    def _spike_recorder(self, keep_spikes: bool) -> EncoderSpikeRecorder:
        names, token_taps, inputs = self._recorder_args()
        return EncoderSpikeRecorder(names, keep_spikes, token_taps, inputs)

    def _wire_recorders(self) -> None:
        recs = self._recorders
        target: Any = None if not recs else recs[0] if len(recs) == 1 else _EncoderFanOut(recs)
        for m in self._taps():
            m.recorder = target
        self._recorder = target  # the model sets target.valid once per call

    def _measured_rates(self) -> dict[str, float]:
        """The exact per-Linear input rates (what ``workload()`` prefers)."""
        return self.input_firing_rates()

    def input_firing_rates(self) -> dict[str, float]:
        """Measured rate of the spike input of every block Linear (``rec.input_rates()``)."""
        return self._rates.input_rates()

    # ---- not applicable ------------------------------------------------------------------------
    def generate(self, *args: Any, **kwargs: Any) -> list[int]:
        """Not applicable: a spike-driven encoder is a sequence classifier."""
        raise GenerationError("a spike-driven encoder is a sequence classifier: it has no "
                              "next-token head and no recurrent form, it cannot generate "
                              "(use forward / accuracy)")

    def perplexity(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Not applicable: a spike-driven encoder is a sequence classifier."""
        raise ConfigError("perplexity needs a language model; a spike-driven encoder is a "
                          "classifier (use accuracy)")
