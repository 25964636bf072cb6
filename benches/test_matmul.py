"""lowbit_matmul and spike_matmul against torch.nn.functional.linear in fp32, same shapes, same
thread count. Shapes: the SpikeGPT-216M linears (K×N = 768×768, 768×3072, 3072×768) and 4096×4096."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from _timing import run
from qslm import kernels

SHAPES_216M = [(768, 768), (768, 3072), (3072, 768)]
SHAPES = SHAPES_216M + [(4096, 4096)]
GROUP = 64


def _weights(k: int, n: int, bits: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    codes = rng.integers(lo, hi + 1, size=(n, k)).astype(np.int8)
    packed = kernels.pack_bits(codes, bits)
    scales = (rng.random((n, k // GROUP), dtype=np.float32) * 0.01 + 1e-3).astype(np.float32)
    w_fp32 = torch.from_numpy(codes.astype(np.float32) * np.repeat(scales, GROUP, axis=1))
    return packed, scales, w_fp32


def _lowbit_target(k: int, n: int, bits: int, m: int) -> float | None:
    if m != 1:
        return 0.5 if (k, n) == (4096, 4096) else None
    if (k, n) == (4096, 4096):
        return 4.0 if bits == 4 else 2.0
    return 1.5 if bits == 4 else None


LOWBIT_CASES = [(k, n, 4, m) for (k, n) in SHAPES for m in (1, 128)] + [(4096, 4096, 8, m) for m in (1, 128)]


@pytest.mark.parametrize("role", ["baseline", "qslm"])
@pytest.mark.parametrize("k,n,bits,m", LOWBIT_CASES, ids=[f"{k}x{n}-b{b}-m{m}" for k, n, b, m in LOWBIT_CASES])
def test_lowbit_matmul(benchmark, record, k, n, bits, m, role):
    group = f"lowbit {k}x{n} {bits}-bit g{GROUP} batch {m}"
    benchmark.group = group
    packed, scales, w = _weights(k, n, bits)
    x = np.random.default_rng(1).standard_normal((m, k), dtype=np.float32)
    if role == "baseline":
        xt = torch.from_numpy(x)
        out = run(benchmark, F.linear, xt, w)
        ref = out.numpy()
    else:
        out = run(benchmark, kernels.lowbit_matmul, x, packed, scales, bits, GROUP)
        ref = (torch.from_numpy(x) @ w.T).numpy()
        np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
    record(benchmark, group, role, _lowbit_target(k, n, bits, m))


SPIKE_RATE = 0.15
SPIKE_CASES = [(k, n, m) for (k, n) in SHAPES for m in (1, 128)]


def _spikes(m: int, k: int, rate: float, seed: int = 2):
    s01 = (np.random.default_rng(seed).random((m, k)) < rate).astype(np.uint8)
    return s01, kernels.pack_spikes(s01)


@pytest.mark.parametrize("role", ["baseline", "qslm"])
@pytest.mark.parametrize("k,n,m", SPIKE_CASES, ids=[f"{k}x{n}-m{m}" for k, n, m in SPIKE_CASES])
def test_spike_matmul(benchmark, record, k, n, m, role):
    group = f"spike {k}x{n} 4-bit rate {SPIKE_RATE:.2f} batch {m}"
    benchmark.group = group
    packed, scales, w = _weights(k, n, 4)
    s01, sp = _spikes(m, k, SPIKE_RATE)
    st = torch.from_numpy(s01.astype(np.float32))
    if role == "baseline":
        run(benchmark, F.linear, st, w)
    else:
        out = run(benchmark, kernels.spike_matmul, sp, k, packed, scales, 4, GROUP)
        ref = F.linear(st, w).numpy()
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    target = None
    if (k, n) == (4096, 4096):
        target = 3.0 if m == 1 else 1.0
    record(benchmark, group, role, target)


# Crossover sweep: where does the dense fp32 product of the same 0/1 matrix catch up?
RATES = [0.05, 0.15, 0.3, 0.5, 0.75, 1.0]
SWEEP = [(768, 3072, m, r) for m in (1, 128) for r in RATES]


@pytest.mark.parametrize("role", ["baseline", "qslm"])
@pytest.mark.parametrize("k,n,m,rate", SWEEP, ids=[f"{k}x{n}-m{m}-r{r}" for k, n, m, r in SWEEP])
def test_spike_rate_sweep(benchmark, record, k, n, m, rate, role):
    group = f"spike sweep {k}x{n} batch {m} rate {rate:.2f}"
    benchmark.group = group
    packed, scales, w = _weights(k, n, 4)
    s01, sp = _spikes(m, k, rate)
    if role == "baseline":
        run(benchmark, F.linear, torch.from_numpy(s01.astype(np.float32)), w)
    else:
        run(benchmark, kernels.spike_matmul, sp, k, packed, scales, 4, GROUP)
    record(benchmark, group, role)
