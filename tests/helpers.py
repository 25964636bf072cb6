"""Shared pieces of the kernel tests: weight generation, tolerances, exact comparisons.

Imported by the test modules as ``helpers`` (pytest puts ``tests/`` on ``sys.path``) and by the
single-threaded subprocess of the determinism tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import strategies as st

from qslm import _reference as ref
from qslm.errors import QslmError

# --- Matmul tolerance ---------------------------------------------------------------------------
# The kernels accumulate float32 products in their own order (SIMD lanes, groups, threads); the
# reference evaluates the same formula in float64 and rounds once. For any summation order, the
# float32 error of a sum of K products is at most about (K + 3)·u·Σ|terms| with u = 2⁻²⁴ ≈ 6e-8
# (K additions, the product, the dequantization and the final scale). The property tests keep
# K ≤ MAX_PROPERTY_K = 100, so that worst case stays below 1e-5 · Σ|terms|: MATMUL_RTOL = 1e-5
# can never fail a correct kernel there, yet it is ~5 orders of magnitude tighter than any real
# bug (a wrong code, group or scale moves the result by O(Σ|terms| / K) or more). The fixed
# K = 768 cases rely on the realistic error, ~√K·u ≪ 1e-5.
#
# "Σ|terms|" is |x| @ (|scale|·(|q| + |zero|))ᵀ. Without zero points that is exactly Σ|x·w| of
# docs/kernels.md. With zero points it is larger: the documented spike_matmul subtracts
# zero·count from the integer code sum, and a lowbit kernel may likewise fold the zero point out
# of the sum, so the rounding scales with |q| and |zero| separately, not with |q − zero| (which
# can cancel to almost nothing).
MATMUL_RTOL = 1e-5
# Products of small float32 values can fall in the subnormal range, where relative precision is
# lost; 1e-30 absorbs that and is far below anything a real output holds.
MATMUL_ATOL = 1e-30
MAX_PROPERTY_K = 100

# Group sizes the tests sweep: the common ones, an odd one, per-channel (K) and larger than K.
GROUP_CHOICES = ("1", "7", "32", "64", "128", "K", ">K")


def group_size_for(choice: str, k: int, extra: int = 5) -> int:
    if choice == "K":
        return max(k, 1)
    if choice == ">K":
        return k + 1 + extra
    return int(choice)


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def weight_magnitude(packed, scales, bits, group_size, k, zero_points=None) -> np.ndarray:
    """float64 (N, K): |scale|·(|q| + |zero|) of a packed weight matrix (see MATMUL_RTOL)."""
    cols = np.arange(k) // group_size
    mag = np.abs(ref.unpack_bits(packed, bits, k, signed=zero_points is None).astype(np.float64))
    if zero_points is not None:
        mag = mag + np.abs(zero_points.astype(np.float64))[:, cols]
    return np.abs(scales.astype(np.float64))[:, cols] * mag


def matmul_bound(fn: str, args: tuple) -> np.ndarray:
    """Σ|terms| (M, N) for positional ``lowbit_matmul`` / ``spike_matmul`` arguments."""
    if fn == "lowbit_matmul":
        x, packed, scales, bits, group_size, zero_points = args
        lhs, k = np.abs(x.astype(np.float64)), x.shape[1]
    else:
        spikes, k, packed, scales, bits, group_size, zero_points = args
        lhs = ref.unpack_bits(spikes, 1, k, signed=False).astype(np.float64)
    return lhs @ weight_magnitude(packed, scales, bits, group_size, k, zero_points).T


@dataclass(frozen=True)
class Weights:
    """A quantized [N, K] weight matrix in every form the tests need."""

    bits: int
    group_size: int
    codes: np.ndarray  # int8 (symmetric) or uint8 (asymmetric), (N, K)
    packed: np.ndarray  # uint8 (N, row_bytes(K, bits))
    scales: np.ndarray  # float32 (N, G)
    zero_points: np.ndarray | None  # float32 (N, G) or None

    @property
    def k(self) -> int:
        return self.codes.shape[1]

    def magnitude(self) -> np.ndarray:
        """float64 (N, K): |scale|·(|q| + |zero|), the per-term size the rounding scales with."""
        return weight_magnitude(
            self.packed, self.scales, self.bits, self.group_size, self.k, self.zero_points
        )

    def args(self) -> tuple:
        """(packed, scales, bits, group_size, zero_points) in kernel argument order."""
        return self.packed, self.scales, self.bits, self.group_size, self.zero_points


def make_weights(
    rng: np.random.Generator,
    n: int,
    k: int,
    bits: int,
    group_size: int,
    asymmetric: bool,
    code_mode: str = "uniform",
    integer_zero_points: bool = False,
) -> Weights:
    """Random codes (``code_mode``: uniform / extremes / zero), signed scales, optional zero points."""
    lo, hi = code_range(bits, signed=not asymmetric)
    if code_mode == "uniform":
        codes = rng.integers(lo, hi, size=(n, k), endpoint=True)
    elif code_mode == "extremes":
        codes = np.where(rng.random((n, k)) < 0.5, lo, hi)
    elif code_mode == "zero":
        codes = np.zeros((n, k), dtype=np.int64)
    else:
        raise AssertionError(code_mode)
    codes = codes.astype(np.uint8 if asymmetric else np.int8)
    n_groups = -(-k // group_size)
    scales = rng.uniform(0.01, 1.0, size=(n, n_groups)) * rng.choice([-1.0, 1.0], size=(n, n_groups))
    zero_points = None
    if asymmetric:
        zero_points = rng.uniform(0, hi, size=(n, n_groups))
        if integer_zero_points:
            zero_points = np.round(zero_points)
        zero_points = zero_points.astype(np.float32)
    return Weights(
        bits=bits,
        group_size=group_size,
        codes=codes,
        packed=ref.pack_bits(codes, bits),
        scales=scales.astype(np.float32),
        zero_points=zero_points,
    )


@st.composite
def weight_params(draw, max_k: int = MAX_PROPERTY_K, max_n: int = 9) -> dict:
    """Shape and quantization parameters of a weight matrix (the data comes from ``seed``)."""
    k = draw(st.integers(0, max_k), label="K")
    return dict(
        n=draw(st.integers(0, max_n), label="N"),
        k=k,
        bits=draw(st.integers(1, 8), label="bits"),
        group_size=group_size_for(draw(st.sampled_from(GROUP_CHOICES), label="group"), k),
        asymmetric=draw(st.booleans(), label="zero_points"),
        code_mode=draw(st.sampled_from(["uniform", "extremes", "zero"]), label="codes"),
        integer_zero_points=draw(st.booleans(), label="integer_zero_points"),
    )


seeds = st.integers(0, 2**32 - 1)


def assert_matmul_close(got: np.ndarray, expected: np.ndarray, bound: np.ndarray) -> None:
    """``|got − expected| ≤ MATMUL_RTOL·bound + MATMUL_ATOL`` elementwise, with a useful message."""
    assert got.dtype == np.float32, got.dtype
    assert got.shape == expected.shape, (got.shape, expected.shape)
    assert np.all(np.isfinite(got)), "kernel produced non-finite values"
    err = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    allowed = MATMUL_RTOL * bound + MATMUL_ATOL
    bad = err > allowed
    if bad.any():
        i = tuple(int(v) for v in np.argwhere(bad)[0])
        raise AssertionError(
            f"{int(bad.sum())} of {bad.size} outputs outside tolerance; first at {i}: "
            f"got {got[i]!r}, expected {expected[i]!r}, |err| {err[i]:.3g} > allowed {allowed[i]:.3g} "
            f"(Σ|terms| {bound[i]:.3g})"
        )


def assert_same_bits(got: np.ndarray, expected: np.ndarray) -> None:
    """Same dtype, same shape, same bytes (stricter than ==: tells -0.0 from 0.0)."""
    assert got.dtype == expected.dtype, (got.dtype, expected.dtype)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    as_int = f"u{got.dtype.itemsize}"  # compare bit patterns, element by element
    differ = got.view(as_int) != expected.view(as_int)
    if differ.any():
        i = tuple(int(v) for v in np.argwhere(differ)[0])
        raise AssertionError(
            f"arrays differ at {int(differ.sum())} of {differ.size} positions; "
            f"first {i}: got {got[i]!r}, expected {expected[i]!r}"
        )


# --- Fixed inputs for the determinism checks (also run in a single-threaded subprocess) ----------


def determinism_cases() -> dict[str, tuple[str, tuple, dict]]:
    """name → (kernel function name, args, kwargs); sizes large enough to engage every thread."""
    rng = np.random.default_rng(20240601)
    k, n, m = 768, 96, 33
    w4 = make_weights(rng, n, k, 4, 64, asymmetric=False)
    w3 = make_weights(rng, n, k, 3, 128, asymmetric=True)
    x = rng.standard_normal((m, k)).astype(np.float32)
    spike_bits = (rng.random((m, k)) < 0.3).astype(np.uint8)
    spikes = ref.pack_bits(spike_bits, 1)
    currents = (rng.standard_normal((64, 4099)) * 1.5).astype(np.float32)
    codes = rng.integers(-4, 3, size=(517, 301), endpoint=True).astype(np.int8)
    return {
        "pack_bits": ("pack_bits", (codes, 3), {}),
        "unpack_bits": ("unpack_bits", (ref.pack_bits(codes, 3), 3, 301), {"signed": True}),
        "lowbit_matmul": ("lowbit_matmul", (x, *w4.args()), {}),
        "lowbit_matmul_zp": ("lowbit_matmul", (x, *w3.args()), {}),
        "spike_matmul": ("spike_matmul", (spikes, k, *w4.args()), {}),
        "spike_matmul_zp": ("spike_matmul", (spikes, k, *w3.args()), {}),
        "lif_scan": ("lif_scan", (currents,), {"tau": 2.0, "v_threshold": 1.0, "v_reset": 0.0}),
    }


def run_determinism_cases(module) -> dict[str, np.ndarray]:
    """Run every determinism case through ``module``; flatten tuple outputs to name/0, name/1 …"""
    out = {}
    for name, (fn, args, kwargs) in determinism_cases().items():
        result = getattr(module, fn)(*args, **kwargs)
        if isinstance(result, tuple):
            for i, r in enumerate(result):
                out[f"{name}/{i}"] = np.asarray(r)
        else:
            out[name] = np.asarray(result)
    return out


# --- Bad input ----------------------------------------------------------------------------------


def check_raises(fn, kwargs: dict, exc: type, patterns: list[str]) -> None:
    """``fn(**kwargs)`` raises exactly ``exc`` (a QslmError, hence a ValueError) and its message
    contains every regex in ``patterns`` as a whole word (typically the argument's name)."""
    with pytest.raises(QslmError) as info:
        fn(**kwargs)
    assert type(info.value) is exc, f"raised {type(info.value).__name__}, not {exc.__name__}: {info.value}"
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    for pattern in patterns:
        assert re.search(rf"(?<!\w)(?:{pattern})(?!\w)", message), f"{pattern!r} not in message {message!r}"


# --- determinism checks shared by the matmul test modules ----------------------------------------


def check_repeatable(kernels, names) -> None:
    """The same inputs twice give the same bits."""
    first = run_determinism_cases(kernels)
    second = run_determinism_cases(kernels)
    for name in names:
        assert first[name].tobytes() == second[name].tobytes(), name


def check_every_isa_matches_reference(outputs_by_isa, names) -> None:
    """Bits may differ between instruction sets (different lanes); each must be within tolerance."""
    for name in names:
        fn, args, _ = determinism_cases()[name]
        expected = getattr(ref, fn)(*args)
        for isa, outputs in outputs_by_isa.items():
            try:
                assert_matmul_close(outputs[name], expected, matmul_bound(fn, args))
            except AssertionError as exc:
                raise AssertionError(f"{name} with {isa}: {exc}") from None


def check_same_bits_for_any_thread_count(kernels, outputs_by_thread_count, names) -> None:
    here = run_determinism_cases(kernels)
    for threads, outputs in outputs_by_thread_count.items():
        for name in names:
            assert outputs[name].shape == here[name].shape
            assert outputs[name].tobytes() == here[name].tobytes(), f"{name} differs with {threads} threads"
