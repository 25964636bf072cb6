"""spike_matmul: bit-packed binary spikes · dequant(W)ᵀ, accumulate-only, against the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import (
    check_every_isa_matches_reference,
    check_repeatable,
    check_same_bits_for_any_thread_count,
    GROUP_CHOICES,
    assert_matmul_close,
    check_raises,
    group_size_for,
    make_weights,
    matmul_bound,
    seeds,
    weight_params,
)
from hypothesis import given
from hypothesis import strategies as st

from qslm import _reference as ref
from qslm.errors import BitWidthError, DTypeError, LayoutError, ShapeError

SPIKE_PATTERNS = ("random", "sparse", "all-zero", "all-one")


def make_spikes(rng, m, k, pattern, junk):
    """(bits (M, k) uint8 0/1, packed (M, ceil(k/8))); ``junk`` sets the unused bits past k."""
    if pattern == "random":
        bits = rng.random((m, k)) < 0.5
    elif pattern == "sparse":
        bits = rng.random((m, k)) < 0.05
    elif pattern == "all-zero":
        bits = np.zeros((m, k), bool)
    else:
        bits = np.ones((m, k), bool)
    bits = bits.astype(np.uint8)
    packed = ref.pack_bits(bits, 1)
    if junk and k % 8:
        packed[:, -1] |= np.uint8((0xFF << (k % 8)) & 0xFF)  # every bit past k set
    return bits, packed


def _check_against_reference(kernels, spikes, k, w):
    got = kernels.spike_matmul(spikes, k, *w.args())
    expected = ref.spike_matmul(spikes, k, *w.args())
    s = ref.unpack_bits(spikes, 1, k, signed=False).astype(np.float64)
    assert_matmul_close(got, expected, s @ w.magnitude().T)
    return got, expected


# --- known answers ------------------------------------------------------------------------------


def test_known_answer(known_answer_impl):
    # Codes [1, 2, 3] (4-bit signed), group size 2 → groups {0, 1} (scale 1) and {2} (scale 10).
    # Spikes [1, 0, 1]: 1·(1) + 10·(3) = 31;  spikes [0, 1, 1]: 1·2 + 10·3 = 32.
    packed = ref.pack_bits(np.array([[1, 2, 3]], np.int8), 4)
    scales = np.array([[1.0, 10.0]], np.float32)
    spikes = np.array([[0b101], [0b110]], np.uint8)
    out = known_answer_impl.spike_matmul(spikes, 3, packed, scales, 4, 2)
    assert out.dtype == np.float32 and out.tolist() == [[31.0], [32.0]]


def test_known_answer_zero_points_and_junk(known_answer_impl):
    # Unsigned 2-bit codes [3, 0, 2], one group, scale 0.5, zero 1.5; spikes [1, 1, 0] plus junk
    # bits 3..7 that must be ignored: 0.5·((3 + 0) − 1.5·2) = 0.
    packed = ref.pack_bits(np.array([[3, 0, 2]], np.uint8), 2)
    out = known_answer_impl.spike_matmul(
        np.array([[0b11111011]], np.uint8), 3, packed, np.array([[0.5]], np.float32), 2, 3,
        zero_points=np.array([[1.5]], np.float32),
    )
    assert out.tolist() == [[0.0]]


def test_zero_point_cancellation_within_bound(kernels):
    # The documented accumulate-only algorithm computes scale·(Σq − zero·count): with q − zero ≈
    # 1e-4 the result is tiny while the rounding scales with zero·count. Measured: |err| ≈ 1.8e-7
    # against Σ|s·w| ≈ 3.7e-3, i.e. 5e-5 relative to Σ|x·w| — outside rtol·Σ|x·w| with rtol = 1e-5
    # but well inside the |q| + |zero| bound this suite uses.
    k = 100
    packed = ref.pack_bits(np.ones((1, k), np.uint8), 1)
    scales = np.array([[0.37]], np.float32)
    zeros = np.array([[0.9999]], np.float32)
    spikes = ref.pack_bits(np.ones((2, k), np.uint8), 1)
    got = kernels.spike_matmul(spikes, k, packed, scales, 1, k, zeros)
    bound = matmul_bound("spike_matmul", (spikes, k, packed, scales, 1, k, zeros))
    assert_matmul_close(got, ref.spike_matmul(spikes, k, packed, scales, 1, k, zeros), bound)


# --- properties against the reference ---------------------------------------------------------


@given(
    params=weight_params(),
    m=st.integers(0, 5),
    pattern=st.sampled_from(SPIKE_PATTERNS),
    junk=st.booleans(),
    seed=seeds,
)
def test_matches_reference(kernels, params, m, pattern, junk, seed):
    rng = np.random.default_rng(seed)
    w = make_weights(rng, **params)
    _, spikes = make_spikes(rng, m, params["k"], pattern, junk)
    _check_against_reference(kernels, spikes, params["k"], w)


@given(
    params=weight_params(max_k=200),
    m=st.integers(1, 4),
    pattern=st.sampled_from(SPIKE_PATTERNS),
    seed=seeds,
)
def test_single_group_is_exact(kernels, params, m, pattern, seed):
    # One group and no zero points: the kernel sums integer codes exactly and scales the sum once,
    # so the result is the correctly rounded scale·Σq — exactly what the float64 reference gives
    # (scale·Σq has at most 24 + 16 significant bits, exact in float64). Compared by value: the
    # sign of a zero result (scale < 0, Σq = 0) is not specified.
    params = dict(params, group_size=max(params["k"], 1), asymmetric=False)
    rng = np.random.default_rng(seed)
    w = make_weights(rng, **params)
    _, spikes = make_spikes(rng, m, params["k"], pattern, junk=True)
    got = kernels.spike_matmul(spikes, params["k"], *w.args())
    expected = ref.spike_matmul(spikes, params["k"], *w.args())
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@given(params=weight_params(), m=st.integers(0, 4), seed=seeds)
def test_agrees_with_lowbit_matmul_on_unpacked_spikes(kernels, params, m, seed):
    rng = np.random.default_rng(seed)
    w = make_weights(rng, **params)
    bits, spikes = make_spikes(rng, m, params["k"], "random", junk=False)
    dense = kernels.lowbit_matmul(bits.astype(np.float32), *w.args())
    sparse = kernels.spike_matmul(spikes, params["k"], *w.args())
    bound = bits.astype(np.float64) @ w.magnitude().T
    # Both are within MATMUL_RTOL of the same float64 value, so within twice that of each other.
    assert_matmul_close(sparse, dense.astype(np.float64), 2 * bound)


@pytest.mark.parametrize(
    ("m", "k", "n"),
    [(0, 10, 3), (4, 0, 3), (4, 10, 0), (0, 0, 0), (1, 1, 1), (3, 9, 5), (2, 8, 2), (2, 17, 3)],
    ids=["M0", "K0", "N0", "all0", "1x1x1", "odd", "k8-no-spare-bits", "k17"],
)
@pytest.mark.parametrize("asymmetric", [False, True], ids=["sym", "asym"])
def test_small_and_empty_shapes(kernels, m, k, n, asymmetric):
    rng = np.random.default_rng(m * 100 + k * 10 + n)
    w = make_weights(rng, n, k, 5, 4, asymmetric)
    _, spikes = make_spikes(rng, m, k, "random", junk=True)
    got, _ = _check_against_reference(kernels, spikes, k, w)
    assert got.shape == (m, n)
    if k == 0:
        assert not got.any()


@pytest.mark.parametrize("pattern", ["all-zero", "all-one"])
def test_all_zero_and_all_one(kernels, pattern):
    rng = np.random.default_rng(11)
    k, n = 100, 6
    w = make_weights(rng, n, k, 4, 32, asymmetric=False)
    _, spikes = make_spikes(rng, 3, k, pattern, junk=False)
    got = kernels.spike_matmul(spikes, k, *w.args())
    if pattern == "all-zero":
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, np.zeros((3, n), np.float32))  # ±0 both fine
    else:  # every row sums the whole weight row
        w64 = ref.dequantize_packed(*w.args()[:4], k, w.zero_points)
        assert_matmul_close(got, np.broadcast_to(w64.sum(axis=1), (3, n)), np.broadcast_to(np.abs(w64).sum(axis=1), (3, n)))


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("group", GROUP_CHOICES)
@pytest.mark.parametrize("asymmetric", [False, True], ids=["sym", "asym"])
def test_model_sized(kernels, bits, group, asymmetric):
    rng = np.random.default_rng(bits * 1000 + len(group))
    k, n = 768, 96
    w = make_weights(rng, n, k, bits, group_size_for(group, k), asymmetric)
    _, spikes = make_spikes(rng, 8, k, "sparse" if bits % 2 else "random", junk=False)
    _check_against_reference(kernels, spikes, k, w)


# --- torch, determinism -------------------------------------------------------------------------


@pytest.mark.parametrize("asymmetric", [False, True], ids=["sym", "asym"])
def test_torch_in_torch_out(kernels, asymmetric):
    rng = np.random.default_rng(5)
    w = make_weights(rng, 7, 45, 4, 32, asymmetric)
    _, spikes = make_spikes(rng, 3, 45, "random", junk=True)
    expected = kernels.spike_matmul(spikes, 45, *w.args())
    t = torch.from_numpy
    zp = None if w.zero_points is None else t(w.zero_points)
    got = kernels.spike_matmul(t(spikes), 45, t(w.packed), t(w.scales), w.bits, w.group_size, zp)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32 and got.shape == (3, 7)
    assert got.numpy().tobytes() == expected.tobytes()


NAMES = ('spike_matmul', 'spike_matmul_zp')


def test_deterministic(kernels):
    check_repeatable(kernels, NAMES)


def test_every_instruction_set_matches_reference(outputs_by_isa):
    check_every_isa_matches_reference(outputs_by_isa, NAMES)


def test_same_bits_for_any_thread_count(kernels, outputs_by_thread_count):
    check_same_bits_for_any_thread_count(kernels, outputs_by_thread_count, NAMES)


# --- bad input ------------------------------------------------------------------------------------
# Valid base: k = 10 → spikes (2, 2); 4-bit codes → packed (3, 5); group size 4 → scales (3, 3).

_S = np.zeros((2, 2), np.uint8)
_PK = np.zeros((3, 5), np.uint8)
_SC = np.ones((3, 3), np.float32)
_ZP = np.zeros((3, 3), np.float32)


def _args(**overrides):
    args = dict(spikes=_S, k=10, packed=_PK, scales=_SC, bits=4, group_size=4, zero_points=None)
    args.update(overrides)
    return args


def _strided(a):
    return np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)[..., ::2]


SPIKE_BAD = [
    pytest.param(_args(bits=0), BitWidthError, ["bits"], id="bits-0-rejected"),
    pytest.param(_args(bits=9), BitWidthError, ["bits", "9"], id="bits-9-rejected"),
    pytest.param(_args(group_size=0), ShapeError, ["group_size"], id="group-size-0-rejected"),
    pytest.param(_args(spikes=np.zeros((2, 1), np.uint8)), ShapeError, ["spikes"], id="spikes-truncated-rejected"),
    pytest.param(_args(spikes=np.zeros((2, 3), np.uint8)), ShapeError, ["spikes"], id="spikes-overlong-rejected"),
    pytest.param(_args(spikes=np.zeros(2, np.uint8)), ShapeError, ["spikes"], id="spikes-1d-rejected"),
    pytest.param(_args(spikes=np.zeros((1, 2, 2), np.uint8)), ShapeError, ["spikes"], id="spikes-3d-rejected"),
    pytest.param(_args(spikes=_S.astype(np.int8)), DTypeError, ["spikes", "int8"], id="spikes-int8-rejected"),
    pytest.param(_args(spikes=_S.astype(np.float32)), DTypeError, ["spikes", "float32"], id="spikes-float32-rejected"),
    pytest.param(_args(spikes=_S.astype(np.bool_)), DTypeError, ["spikes", "bool"], id="spikes-bool-rejected"),
    pytest.param(_args(spikes=_strided(_S)), LayoutError, ["spikes"], id="spikes-strided-rejected"),
    pytest.param(_args(spikes=np.zeros((2, 2), np.uint8).T), LayoutError, ["spikes"], id="spikes-transposed-rejected"),
    pytest.param(_args(k=12), ShapeError, ["packed"], id="k-packed-mismatch-rejected"),
    pytest.param(_args(k=17), ShapeError, ["spikes|packed"], id="k-spikes-mismatch-rejected"),
    pytest.param(_args(packed=_PK[:, :4].copy()), ShapeError, ["packed"], id="packed-truncated-rejected"),
    pytest.param(_args(packed=np.zeros((3, 6), np.uint8)), ShapeError, ["packed"], id="packed-overlong-rejected"),
    pytest.param(_args(packed=np.zeros(15, np.uint8)), ShapeError, ["packed"], id="packed-1d-rejected"),
    pytest.param(_args(packed=_PK.astype(np.int8)), DTypeError, ["packed", "int8"], id="packed-int8-rejected"),
    pytest.param(_args(packed=_strided(_PK)), LayoutError, ["packed"], id="packed-strided-rejected"),
    pytest.param(_args(scales=np.ones((3, 2), np.float32)), ShapeError, ["scales"], id="scales-too-few-groups-rejected"),
    pytest.param(_args(scales=np.ones((4, 3), np.float32)), ShapeError, ["scales"], id="scales-wrong-rows-rejected"),
    pytest.param(_args(scales=_SC.astype(np.float64)), DTypeError, ["scales", "float64"], id="scales-float64-rejected"),
    pytest.param(_args(scales=_strided(_SC)), LayoutError, ["scales"], id="scales-strided-rejected"),
    pytest.param(_args(zero_points=np.zeros((3, 4), np.float32)), ShapeError, ["zero_points"], id="zero-points-wrong-shape-rejected"),
    pytest.param(_args(zero_points=_ZP.astype(np.float64)), DTypeError, ["zero_points", "float64"], id="zero-points-float64-rejected"),
    pytest.param(_args(zero_points=_strided(_ZP)), LayoutError, ["zero_points"], id="zero-points-strided-rejected"),
]


@pytest.mark.parametrize(("kwargs", "exc", "patterns"), SPIKE_BAD)
def test_rejects(impl, kwargs, exc, patterns):
    check_raises(impl.spike_matmul, kwargs, exc, patterns)


def test_torch_bad_input_rejected(kernels):
    t = torch.from_numpy
    with pytest.raises(DTypeError, match=r"\bspikes\b"):
        kernels.spike_matmul(t(_S.astype(np.float32)), 10, t(_PK), t(_SC), 4, 4)
    with pytest.raises(LayoutError, match=r"\bspikes\b"):
        kernels.spike_matmul(torch.zeros(2, 2, dtype=torch.uint8).T, 10, t(_PK), t(_SC), 4, 4)
    with pytest.raises(ShapeError, match=r"\bpacked\b"):
        kernels.spike_matmul(t(_S), 10, t(_PK[:, :4].copy()), t(_SC), 4, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensor_in_cuda_tensor_out(kernels):
    rng = np.random.default_rng(6)
    w = make_weights(rng, 5, 40, 4, 16, asymmetric=False)
    _, spikes = make_spikes(rng, 3, 40, "random", junk=True)
    expected = kernels.spike_matmul(spikes, 40, *w.args())
    cuda = [torch.from_numpy(a).cuda() for a in (spikes, w.packed, w.scales)]
    got = kernels.spike_matmul(cuda[0], 40, cuda[1], cuda[2], w.bits, w.group_size)
    assert got.device == cuda[0].device
    assert got.cpu().numpy().tobytes() == expected.tobytes()
