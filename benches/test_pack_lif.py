"""unpack_bits against the vectorized numpy reference, lif_scan against a torch loop over time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _timing import run
from qslm import _reference, kernels


@pytest.mark.parametrize("role", ["baseline", "qslm"])
def test_unpack_bits_4bit(benchmark, record, role):
    group = "unpack_bits 4-bit 4096x4096 (baseline: numpy reference)"
    benchmark.group = group
    codes = np.random.default_rng(0).integers(-8, 8, size=(4096, 4096)).astype(np.int8)
    packed = kernels.pack_bits(codes, 4)
    fn = _reference.unpack_bits if role == "baseline" else kernels.unpack_bits
    out = run(benchmark, fn, packed, 4, 4096, True)
    np.testing.assert_array_equal(out, codes)
    record(benchmark, group, role, 3.0)


def _numpy_unpack4(packed: np.ndarray, n: int) -> np.ndarray:
    """The fastest plain-numpy 4-bit unpack we know: split the nibbles, interleave, sign-extend."""
    out = np.empty((packed.shape[0], packed.shape[1] * 2), dtype=np.uint8)
    out[:, 0::2] = packed & 0x0F
    out[:, 1::2] = packed >> 4
    return ((out[:, :n] ^ 8).view(np.int8) - 8).astype(np.int8)


@pytest.mark.parametrize("role", ["baseline", "qslm"])
def test_unpack_bits_4bit_vs_nibble_numpy(benchmark, record, role):
    group = "unpack_bits 4-bit 4096x4096 (baseline: numpy nibble split)"
    benchmark.group = group
    codes = np.random.default_rng(0).integers(-8, 8, size=(4096, 4096)).astype(np.int8)
    packed = kernels.pack_bits(codes, 4)
    if role == "baseline":
        out = run(benchmark, _numpy_unpack4, packed, 4096)
    else:
        out = run(benchmark, kernels.unpack_bits, packed, 4, 4096, True)
    np.testing.assert_array_equal(out, codes)
    record(benchmark, group, role)


def _torch_lif(currents: torch.Tensor, tau: float = 2.0, v_th: float = 1.0, v_reset: float = 0.0):
    """The LIF neuron of spec §5 as a torch loop over T (how a torch model steps it)."""
    v = torch.zeros(currents.shape[1])
    spikes = torch.empty_like(currents)
    for t in range(currents.shape[0]):
        h = v + (currents[t] - (v - v_reset)) / tau
        s = (h >= v_th).to(currents.dtype)
        spikes[t] = s
        v = torch.where(s.bool(), torch.full_like(h, v_reset), h)
    return spikes, v


@pytest.mark.parametrize("role", ["baseline", "qslm"])
def test_lif_scan(benchmark, record, role):
    group = "lif_scan T=1024 N=3072 (baseline: torch loop over T)"
    benchmark.group = group
    cur = (np.random.default_rng(0).standard_normal((1024, 3072), dtype=np.float32) + 0.8).astype(np.float32)
    if role == "baseline":
        s, v = run(benchmark, _torch_lif, torch.from_numpy(cur))
    else:
        packed, v, counts = run(benchmark, kernels.lif_scan, cur)
        s_ref, v_ref = _torch_lif(torch.from_numpy(cur))
        np.testing.assert_array_equal(kernels.unpack_bits(packed, 1, 3072, signed=False), s_ref.numpy().astype(np.uint8))
        np.testing.assert_array_equal(v, v_ref.numpy())
    record(benchmark, group, role, 10.0)
