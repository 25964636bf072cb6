"""lowbit_matmul: x · dequant(W)ᵀ against the float64 reference, within MATMUL_RTOL."""

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


def _check_against_reference(kernels, x, w):
    got = kernels.lowbit_matmul(x, *w.args())
    expected = ref.lowbit_matmul(x, *w.args())
    bound = np.abs(x.astype(np.float64)) @ w.magnitude().T  # (M, N)
    assert_matmul_close(got, expected, bound)


# --- known answers ------------------------------------------------------------------------------


def test_known_answer_symmetric(known_answer_impl):
    # W = [[0.5·1, 0.5·(−1)], [2·2, 2·3]] (4-bit signed, one group per row); x = [1, 2].
    packed = ref.pack_bits(np.array([[1, -1], [2, 3]], np.int8), 4)
    scales = np.array([[0.5], [2.0]], np.float32)
    out = known_answer_impl.lowbit_matmul(np.array([[1.0, 2.0]], np.float32), packed, scales, 4, 2)
    assert out.dtype == np.float32 and out.tolist() == [[-0.5, 16.0]]


def test_known_answer_groups_and_zero_points(known_answer_impl):
    # 3-bit unsigned codes [3, 1, 7] with group size 2: groups {0, 1} and {2}.
    # W = [0.5·(3−1), 0.5·(1−1), 4·(7−6.5)] = [1, 0, 2];  x·Wᵀ = 1·1 + 5·0 + 0.25·2 = 1.5.
    packed = ref.pack_bits(np.array([[3, 1, 7]], np.uint8), 3)
    scales = np.array([[0.5, 4.0]], np.float32)
    zeros = np.array([[1.0, 6.5]], np.float32)
    x = np.array([[1.0, 5.0, 0.25], [0.0, 0.0, 0.0]], np.float32)
    out = known_answer_impl.lowbit_matmul(x, packed, scales, 3, 2, zero_points=zeros)
    assert out.tolist() == [[1.5], [0.0]]


def test_zero_point_cancellation_within_bound(kernels):
    # q − zero ≈ 1e-4 for every weight: Σ|x·w| is tiny, but a kernel that folds the zero point out
    # of the sum rounds on the scale of |q| and |zero|; the tolerance is relative to those.
    k = 100
    packed = ref.pack_bits(np.ones((1, k), np.uint8), 1)
    scales = np.array([[0.37]], np.float32)
    zeros = np.array([[0.9999]], np.float32)
    x = np.ones((2, k), np.float32)
    got = kernels.lowbit_matmul(x, packed, scales, 1, k, zeros)
    bound = matmul_bound("lowbit_matmul", (x, packed, scales, 1, k, zeros))
    assert_matmul_close(got, ref.lowbit_matmul(x, packed, scales, 1, k, zeros), bound)


# --- properties against the reference ---------------------------------------------------------


@given(params=weight_params(), m=st.integers(0, 5), x_scale=st.sampled_from([1.0, 1e-3, 1e3]), seed=seeds)
def test_matches_reference(kernels, params, m, x_scale, seed):
    rng = np.random.default_rng(seed)
    w = make_weights(rng, **params)
    x = (rng.standard_normal((m, params["k"])) * x_scale).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = 0.0
    _check_against_reference(kernels, x, w)


@pytest.mark.parametrize(
    ("m", "k", "n"),
    [(0, 10, 3), (4, 0, 3), (4, 10, 0), (0, 0, 0), (1, 1, 1), (3, 9, 5)],
    ids=["M0", "K0", "N0", "all0", "1x1x1", "odd"],
)
@pytest.mark.parametrize("asymmetric", [False, True], ids=["sym", "asym"])
def test_small_and_empty_shapes(kernels, m, k, n, asymmetric):
    rng = np.random.default_rng(m * 100 + k * 10 + n)
    w = make_weights(rng, n, k, 3, 4, asymmetric)
    x = rng.standard_normal((m, k)).astype(np.float32)
    got = kernels.lowbit_matmul(x, *w.args())
    assert got.shape == (m, n) and got.dtype == np.float32
    if k == 0:
        assert not got.any()  # an empty sum is zero
    _check_against_reference(kernels, x, w)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("group", GROUP_CHOICES)
@pytest.mark.parametrize("asymmetric", [False, True], ids=["sym", "asym"])
def test_model_sized(kernels, bits, group, asymmetric):
    # A SpikeGPT-sized layer: K = 768 input features, N = 96 outputs, 8 tokens.
    rng = np.random.default_rng(bits * 1000 + len(group))
    k, n = 768, 96
    w = make_weights(rng, n, k, bits, group_size_for(group, k), asymmetric)
    x = rng.standard_normal((8, k)).astype(np.float32)
    _check_against_reference(kernels, x, w)


# --- torch, determinism -------------------------------------------------------------------------


@pytest.mark.parametrize("asymmetric", [False, True], ids=["sym", "asym"])
def test_torch_in_torch_out(kernels, asymmetric):
    rng = np.random.default_rng(3)
    w = make_weights(rng, 7, 45, 4, 32, asymmetric)
    x = rng.standard_normal((3, 45)).astype(np.float32)
    expected = kernels.lowbit_matmul(x, *w.args())
    t = torch.from_numpy
    zp = None if w.zero_points is None else t(w.zero_points)
    got = kernels.lowbit_matmul(t(x), t(w.packed), t(w.scales), w.bits, w.group_size, zp)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32 and got.shape == (3, 7)
    assert got.numpy().tobytes() == expected.tobytes()


NAMES = ('lowbit_matmul', 'lowbit_matmul_zp')


def test_deterministic(kernels):
    check_repeatable(kernels, NAMES)


def test_every_instruction_set_matches_reference(outputs_by_isa):
    check_every_isa_matches_reference(outputs_by_isa, NAMES)


def test_same_bits_for_any_thread_count(kernels, outputs_by_thread_count):
    check_same_bits_for_any_thread_count(kernels, outputs_by_thread_count, NAMES)


# --- bad input ------------------------------------------------------------------------------------
# Valid base: x (2, 10), 4-bit codes → packed (3, 5), group size 4 → scales (3, 3).

_X = np.ones((2, 10), np.float32)
_PK = np.zeros((3, 5), np.uint8)
_SC = np.ones((3, 3), np.float32)
_ZP = np.zeros((3, 3), np.float32)


def _args(**overrides):
    args = dict(x=_X, packed=_PK, scales=_SC, bits=4, group_size=4, zero_points=None)
    args.update(overrides)
    return args


def _strided(a):
    """A non-contiguous view with the same shape and dtype as ``a``."""
    wide = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    return wide[..., ::2]


LOWBIT_BAD = [
    pytest.param(_args(bits=0), BitWidthError, ["bits"], id="bits-0-rejected"),
    pytest.param(_args(bits=9), BitWidthError, ["bits", "9"], id="bits-9-rejected"),
    pytest.param(_args(group_size=0), ShapeError, ["group_size"], id="group-size-0-rejected"),
    pytest.param(_args(x=np.ones(10, np.float32)), ShapeError, ["x"], id="x-1d-rejected"),
    pytest.param(_args(x=np.ones((1, 2, 10), np.float32)), ShapeError, ["x"], id="x-3d-rejected"),
    pytest.param(_args(x=_X.astype(np.float64)), DTypeError, ["x", "float32", "float64"], id="x-float64-rejected"),
    pytest.param(_args(x=_X.astype(np.float16)), DTypeError, ["x", "float16"], id="x-float16-rejected"),
    pytest.param(_args(x=_strided(_X)), LayoutError, ["x"], id="x-strided-rejected"),
    pytest.param(_args(x=np.ones((10, 2), np.float32).T), LayoutError, ["x"], id="x-transposed-rejected"),
    pytest.param(_args(x=np.ones((2, 12), np.float32)), ShapeError, ["x|packed"], id="x-k-mismatch-rejected"),
    pytest.param(_args(packed=_PK[:, :4].copy()), ShapeError, ["packed"], id="packed-truncated-rejected"),
    pytest.param(_args(packed=np.zeros((3, 6), np.uint8)), ShapeError, ["packed"], id="packed-overlong-rejected"),
    pytest.param(_args(bits=3), ShapeError, ["packed"], id="packed-bits-mismatch-rejected"),
    pytest.param(_args(packed=np.zeros(15, np.uint8)), ShapeError, ["packed"], id="packed-1d-rejected"),
    pytest.param(_args(packed=_PK.astype(np.int8)), DTypeError, ["packed", "int8"], id="packed-int8-rejected"),
    pytest.param(_args(packed=_strided(_PK)), LayoutError, ["packed"], id="packed-strided-rejected"),
    pytest.param(_args(scales=np.ones((3, 2), np.float32)), ShapeError, ["scales"], id="scales-too-few-groups-rejected"),
    pytest.param(_args(scales=np.ones((3, 4), np.float32)), ShapeError, ["scales"], id="scales-too-many-groups-rejected"),
    pytest.param(_args(scales=np.ones((2, 3), np.float32)), ShapeError, ["scales"], id="scales-wrong-rows-rejected"),
    pytest.param(_args(scales=np.ones(3, np.float32)), ShapeError, ["scales"], id="scales-1d-rejected"),
    pytest.param(_args(group_size=5), ShapeError, ["scales"], id="scales-group-size-mismatch-rejected"),
    pytest.param(_args(scales=_SC.astype(np.float64)), DTypeError, ["scales", "float64"], id="scales-float64-rejected"),
    pytest.param(_args(scales=_strided(_SC)), LayoutError, ["scales"], id="scales-strided-rejected"),
    pytest.param(_args(zero_points=np.zeros((3, 2), np.float32)), ShapeError, ["zero_points"], id="zero-points-wrong-shape-rejected"),
    pytest.param(_args(zero_points=_ZP.astype(np.float64)), DTypeError, ["zero_points", "float64"], id="zero-points-float64-rejected"),
    pytest.param(_args(zero_points=_strided(_ZP)), LayoutError, ["zero_points"], id="zero-points-strided-rejected"),
]


@pytest.mark.parametrize(("kwargs", "exc", "patterns"), LOWBIT_BAD)
def test_rejects(impl, kwargs, exc, patterns):
    check_raises(impl.lowbit_matmul, kwargs, exc, patterns)


def test_torch_bad_input_rejected(kernels):
    t = torch.from_numpy
    with pytest.raises(DTypeError, match=r"\bx\b"):
        kernels.lowbit_matmul(t(_X.astype(np.float64)), t(_PK), t(_SC), 4, 4)
    with pytest.raises(ShapeError, match=r"\bscales\b"):
        kernels.lowbit_matmul(t(_X), t(_PK), t(_SC[:, :2].copy()), 4, 4)
    with pytest.raises(LayoutError, match=r"\bx\b"):
        kernels.lowbit_matmul(torch.ones(10, 2).T, t(_PK), t(_SC), 4, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensor_in_cuda_tensor_out(kernels):
    rng = np.random.default_rng(4)
    w = make_weights(rng, 5, 40, 4, 16, asymmetric=True)
    x = rng.standard_normal((3, 40)).astype(np.float32)
    expected = kernels.lowbit_matmul(x, *w.args())
    cuda = [torch.from_numpy(a).cuda() for a in (x, w.packed, w.scales, w.zero_points)]
    got = kernels.lowbit_matmul(cuda[0], cuda[1], cuda[2], w.bits, w.group_size, cuda[3])
    assert got.device == cuda[0].device
    assert got.cpu().numpy().tobytes() == expected.tobytes()
