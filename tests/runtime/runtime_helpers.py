"""Shared pieces of the runtime tests: small random SpikeGPTs, plans, packed-file surgery."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from qslm.models import SpikeGPT, SpikeGPTConfig
from qslm.quant import QuantPlan, QuantSpec
from qslm.quant.export import METADATA_KEY

# The plans of the parity tests: every scheme the packed format has.
PLANS = {
    # the main case: 4-bit, groups of 64, asymmetric, every module
    "w4a-g64": QuantPlan({}, QuantSpec(4, False, group_size=64)),
    # mixed widths: sign binarization, 2-bit asymmetric, 8-bit, 3/5-bit, kept modules
    "mixed": QuantPlan({
        "_default": QuantSpec(4, group_size=32),
        "emb": QuantSpec(1, group_size=64),
        "blocks.0.att.key": QuantSpec(1),
        "blocks.0.att.value": QuantSpec(2, False, group_size=32),
        "blocks.0.att.receptance": QuantSpec(8),
        "blocks.0.ffn.key": QuantSpec(3, False, group_size=16),
        "blocks.0.ffn.value": QuantSpec(5, group_size=64),
        "blocks.1.att.output": None,
        "head": None,
    }),
    # per output channel and per tensor
    "channel": QuantPlan({
        "_default": QuantSpec(4, granularity="channel"),
        "emb": QuantSpec(8, False, granularity="channel"),
        r"re:blocks\.1\.ffn\..*": QuantSpec(6, False, granularity="tensor"),
        "head": QuantSpec(8, granularity="tensor"),
    }),
    # MSE-clipped ranges, symmetric and asymmetric
    "mse": QuantPlan({
        "_default": QuantSpec(4, group_size=64, clip="mse"),
        r"re:.*\.ffn\..*": QuantSpec(3, False, group_size=32, clip="mse"),
    }),
}


def tiny_model(seed: int = 0, **config: Any) -> SpikeGPT:
    cfg = dict(vocab_size=300, n_layer=2, n_embd=64, ctx_len=64)
    cfg.update(config)
    torch.manual_seed(seed)
    return SpikeGPT(SpikeGPTConfig(**cfg)).eval()


def read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, parsed qslm metadata) of a packed file."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return tensors, json.loads(meta[METADATA_KEY])


def rewrite(src: Path, dst: Path, doc: Callable[[dict], None] | None = None,
            tensors: Callable[[dict], None] | None = None) -> Path:
    """Copy a packed file with its metadata document and/or tensors changed in place by the
    callbacks."""
    t, d = read_file(src)
    if doc is not None:
        doc(d)
    if tensors is not None:
        tensors(t)
    save_file({k: v.contiguous() for k, v in t.items()}, str(dst),
              metadata={"format": "pt", METADATA_KEY: json.dumps(d)})
    return dst


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread (for module-scoped fixtures; the tests use ``one_torch_thread``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
