"""The fused recurrent step: a :class:`~qslm.runtime.RuntimeModel`'s tensors handed to the Rust
``RwkvEngine`` (``rust/src/rwkv.rs``), which runs one whole token per call.

The engine reads the model's own arrays — packed codes, scales, zero points, LayerNorms, time
parameters, weights kept at full precision — without copying them (numpy views of the torch
tensors, kept alive by the engine). :func:`engine_for` builds it once per model and rebuilds it
when any of those tensors was replaced or changed in place (torch's version counter), so it
always computes what the model's parameters say.

Used by :meth:`RuntimeModel.generate` (batch 1, the recurrent form) unless spikes are being kept
by a ``record_spikes(keep_spikes=True)`` block; the spikes it fires are counted per LIF and added
to the model's firing-rate recorders.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from qslm import _kernels
from qslm.runtime.packed import PackedEmbedding, PackedLinear

if TYPE_CHECKING:
    from qslm.runtime.model import RuntimeModel

__all__ = ["engine_for"]

_BLOCK_VECTORS = ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias", "att.time_mix_k",
                  "att.time_mix_v", "att.time_mix_r", "att.time_first", "ffn.time_mix_k",
                  "ffn.time_mix_r")
_BLOCK_MODULES = ("att.key", "att.value", "att.receptance", "att.output", "ffn.key",
                  "ffn.receptance", "ffn.value")


def _f32(t: Tensor) -> np.ndarray:
    """A float32 C-contiguous numpy view of t (a copy only if it is not already one)."""
    t = t.detach()
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    return t.contiguous().reshape(t.shape if t.ndim == 2 else (-1,)).numpy()


def _inputs(model: RuntimeModel) -> tuple[dict, dict, dict, list[Tensor]]:
    """(config, tensors, packed, source tensors) for ``_kernels.RwkvEngine``."""
    cfg = model.config
    config = {"n_embd": cfg.n_embd, "vocab_size": cfg.vocab_size, "n_layer": cfg.n_layer,
              "rescale_every": cfg.rescale_every, "binary_embedding": cfg.binary_embedding,
              "tau": float(cfg.tau), "v_threshold": float(cfg.v_threshold),
              "v_reset": float(cfg.v_reset)}
    mods = dict(model.named_modules())
    params = dict(model.named_parameters())
    tensors: dict[str, np.ndarray] = {}
    packed: dict[str, tuple] = {}
    sources: list[Tensor] = []

    def vec(name: str, t: Tensor | None = None) -> None:
        src = params[name] if t is None else t
        tensors[name] = _f32(src)
        sources.append(params.get(name, src))

    def module(name: str) -> None:
        m = mods[name]
        if isinstance(m, (PackedLinear, PackedEmbedding)):
            if isinstance(m, PackedLinear) and m.bias is not None:
                raise NotImplementedError(f"{name}: biased packed linears are not in SpikeGPT")
            packed[name] = (m.packed.numpy(), m.scales.numpy(),
                            None if m.zero_points is None else m.zero_points.numpy(), m.bits,
                            m.group_size)
            sources.extend(b for b in (m.packed, m.scales, m.zero_points) if b is not None)
        else:
            if getattr(m, "bias", None) is not None:
                raise NotImplementedError(f"{name}: biased linears are not in SpikeGPT")
            vec(f"{name}.weight")

    for name in ("blocks.0.ln0.weight", "blocks.0.ln0.bias", "ln_out.weight", "ln_out.bias"):
        vec(name)
    module("emb")
    module("head")
    for layer in range(cfg.n_layer):
        p = f"blocks.{layer}."
        for v in _BLOCK_VECTORS:
            vec(p + v)
        decay = params[p + "att.time_decay"]
        tensors[p + "att.decay"] = (-torch.exp(decay.detach().float())).contiguous().numpy()
        sources.append(decay)
        for m in _BLOCK_MODULES:
            module(p + m)
    return config, tensors, packed, sources


def _key(sources: list[Tensor]) -> tuple:
    return tuple((t.data_ptr(), t._version) for t in sources)


def engine_for(model: RuntimeModel) -> _kernels.RwkvEngine:
    """The model's Rust step engine, built on first use and rebuilt when a tensor changed."""
    cached = getattr(model, "_engine_cache", None)
    if cached is not None and _key(cached[1]) == cached[2]:
        return cached[0]
    config, tensors, packed, sources = _inputs(model)
    engine = _kernels.RwkvEngine(config, tensors, packed)
    # The engine holds the numpy arrays; keep the tensors they came from and their versions.
    object.__setattr__(model, "_engine_cache", (engine, sources, _key(sources)))
    return engine
