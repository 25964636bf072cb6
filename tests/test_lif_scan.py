"""lif_scan: the SpikeGPT LIF neuron, bit-identical to the float32 reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import assert_same_bits, check_raises, run_determinism_cases, seeds
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qslm import _reference as ref
from qslm.errors import DTypeError, LayoutError, QslmError, ShapeError

f32 = np.float32


def _assert_same_scan(got, expected):
    """Spikes, v_final and spike counts all bit for bit."""
    assert isinstance(got, tuple) and len(got) == 3
    for g, e in zip(got, expected):
        assert_same_bits(np.asarray(g), e)


# --- known answers ------------------------------------------------------------------------------


def test_known_answer_constant_current(known_answer_impl):
    # tau = 2, threshold 1, reset 0. Neuron 0: X = 1.5 → H = 0.75, then 0.75 + (1.5 − 0.75)/2 =
    # 1.125 → spike, V = 0, and again. Neuron 1: X = 0 → never. Neuron 2: X = 3 → H = 1.5 every step.
    currents = np.tile(np.array([1.5, 0.0, 3.0], f32), (5, 1))  # (T=5, N=3)
    spikes, v_final, counts = known_answer_impl.lif_scan(currents)
    assert spikes.dtype == np.uint8 and spikes.shape == (5, 1)
    assert spikes[:, 0].tolist() == [0b100, 0b101, 0b100, 0b101, 0b100]  # neuron j is bit j
    assert v_final.dtype == np.float32 and v_final.tolist() == [0.75, 0.0, 0.0]
    assert counts.dtype == np.int64 and counts.tolist() == [2, 0, 5]


def test_known_answer_threshold_is_inclusive_and_reset_is_hard(known_answer_impl):
    # reset −1: H = 0 + (3 − (0 − (−1)))/2 = 1.0 ≥ 1 → spike, V = −1; H = −1 + (3 − 0)/2 = 0.5;
    # H = 0.5 + (3 − 1.5)/2 = 1.25 → spike, V = −1.
    spikes, v_final, counts = known_answer_impl.lif_scan(np.full((3, 1), 3.0, f32), 2.0, 1.0, -1.0)
    assert spikes[:, 0].tolist() == [1, 0, 1]
    assert v_final.tolist() == [-1.0] and counts.tolist() == [2]


def test_known_answer_v0_decay(known_answer_impl):
    # No input: V halves every step (tau 2) from v0.
    spikes, v_final, counts = known_answer_impl.lif_scan(np.zeros((2, 2), f32), v0=np.array([1.0, 0.5], f32))
    assert not spikes.any() and v_final.tolist() == [0.25, 0.125] and counts.tolist() == [0, 0]


def test_known_answer_divides_by_tau(known_answer_impl):
    # X / 3 = 0.3333334 but X · (1/3) = 0.33333343: with the threshold at the latter, dividing
    # (the documented order) does not spike, multiplying by the reciprocal would.
    x = np.array([[f32("1.0000002")]], f32)
    spikes, v_final, _ = known_answer_impl.lif_scan(x, tau=3.0, v_threshold=float(f32("0.33333343")))
    assert spikes.tolist() == [[0]]
    assert_same_bits(v_final, np.array([f32("0.3333334")]))


def test_known_answer_operation_order(known_answer_impl):
    # V + (X − (V − v_reset)) / tau = 0.64512545 here; (X − V + v_reset) gives 0.6451254 and
    # ½V + ½(X + v_reset) gives 0.6451255 — the float32 order is part of the contract.
    x = np.array([[f32("1.3769794")]], f32)
    v0 = np.array([f32("0.21327156")], f32)
    _, v_final, _ = known_answer_impl.lif_scan(x, tau=2.0, v_threshold=100.0, v_reset=-0.3, v0=v0)
    assert_same_bits(v_final, np.array([f32("0.64512545")]))


@pytest.mark.parametrize(("t", "n"), [(0, 5), (0, 0), (4, 0), (0, 9)])
def test_empty(known_answer_impl, t, n):
    v0 = np.linspace(-1, 1, n).astype(f32)
    spikes, v_final, counts = known_answer_impl.lif_scan(np.zeros((t, n), f32), v0=v0)
    assert spikes.shape == (t, (n + 7) // 8) and spikes.dtype == np.uint8
    assert_same_bits(v_final, v0 if t == 0 else ref.lif_scan(np.zeros((t, n), f32), v0=v0)[1])
    assert_same_bits(counts, np.zeros(n, np.int64))


# --- the reference against a scalar loop --------------------------------------------------------


def _scalar_lif(currents, tau, v_threshold, v_reset, v0):
    """One neuron at a time with numpy float32 scalars (independent of the vectorized reference)."""
    t_steps, n = currents.shape
    spikes = np.zeros((t_steps, n), np.uint8)
    v_final = np.zeros(n, f32)
    for j in range(n):
        v = f32(0) if v0 is None else v0[j]
        for t in range(t_steps):
            h = v + (currents[t, j] - (v - f32(v_reset))) / f32(tau)
            spikes[t, j] = h >= f32(v_threshold)
            v = f32(v_reset) if spikes[t, j] else h
        v_final[j] = v
    return ref.pack_bits(spikes, 1), v_final, spikes.sum(axis=0, dtype=np.int64)


# --- properties against the reference ---------------------------------------------------------


@st.composite
def lif_cases(draw, max_t=20, max_n=40):
    t = draw(st.integers(0, max_t), label="T")
    n = draw(st.integers(0, max_n), label="N")
    taus = st.one_of(st.sampled_from([2.0, 1.0, 3.0, 1.3, 0.5, 10.0]), st.floats(0.25, 20.0))
    tau = draw(taus, label="tau")
    v_threshold = draw(st.one_of(st.sampled_from([1.0, 0.5]), st.floats(-2.0, 3.0)), label="v_threshold")
    v_reset = draw(st.one_of(st.sampled_from([0.0, -1.0]), st.floats(-1.0, 1.0)), label="v_reset")
    rng = np.random.default_rng(draw(seeds, label="seed"))
    # Currents: continuous values (every rounding matters) or a coarse grid (exact arithmetic,
    # many H exactly on the threshold, so ">=" versus ">" shows).
    if draw(st.booleans(), label="grid"):
        currents = (rng.integers(-16, 16, size=(t, n), endpoint=True) * 0.25).astype(f32)
    else:
        currents = (rng.standard_normal((t, n)) * draw(st.sampled_from([1.0, 3.0, 1e-3]))).astype(f32)
    v0 = None
    if draw(st.booleans(), label="v0"):
        v0 = draw(hnp.arrays(f32, n, elements=st.floats(-2.0, 2.0, width=32)), label="v0")
    return currents, tau, v_threshold, v_reset, v0


@given(lif_cases(max_t=8, max_n=10))
def test_reference_matches_scalar_loop(case):
    currents, tau, v_threshold, v_reset, v0 = case
    _assert_same_scan(ref.lif_scan(currents, tau, v_threshold, v_reset, v0), _scalar_lif(*case))


@given(lif_cases())
def test_matches_reference(kernels, case):
    currents, tau, v_threshold, v_reset, v0 = case
    got = kernels.lif_scan(currents, tau=tau, v_threshold=v_threshold, v_reset=v_reset, v0=v0)
    _assert_same_scan(got, ref.lif_scan(currents, tau, v_threshold, v_reset, v0))


@pytest.mark.parametrize(
    ("tau", "v_threshold", "v_reset"),
    [(2.0, 1.0, 0.0), (1.3, 0.7, -0.2), (4.0, 0.25, 0.1), (1.0, 1.0, 0.0)],
)
def test_large(kernels, tau, v_threshold, v_reset):
    rng = np.random.default_rng(int(tau * 10))
    currents = (rng.standard_normal((64, 4099)) * 1.5).astype(f32)  # odd N, many lanes/threads
    v0 = rng.uniform(-1, 1, 4099).astype(f32)
    got = kernels.lif_scan(currents, tau, v_threshold, v_reset, v0)
    _assert_same_scan(got, ref.lif_scan(currents, tau, v_threshold, v_reset, v0))


# --- torch, determinism -------------------------------------------------------------------------


def test_torch_in_torch_out(kernels):
    rng = np.random.default_rng(2)
    currents = (rng.standard_normal((6, 13)) * 2).astype(f32)
    v0 = rng.uniform(-1, 1, 13).astype(f32)
    expected = kernels.lif_scan(currents, 2.0, 1.0, 0.0, v0)
    got = kernels.lif_scan(torch.from_numpy(currents), 2.0, 1.0, 0.0, torch.from_numpy(v0))
    assert all(isinstance(g, torch.Tensor) for g in got)
    assert [g.dtype for g in got] == [torch.uint8, torch.float32, torch.int64]
    _assert_same_scan(tuple(g.numpy() for g in got), expected)
    got_no_v0 = kernels.lif_scan(torch.from_numpy(currents))
    _assert_same_scan(tuple(g.numpy() for g in got_no_v0), kernels.lif_scan(currents))


def test_deterministic(kernels):
    first = run_determinism_cases(kernels)
    second = run_determinism_cases(kernels)
    for i in range(3):
        assert first[f"lif_scan/{i}"].tobytes() == second[f"lif_scan/{i}"].tobytes()


def test_same_bits_for_any_thread_count_and_instruction_set(kernels, outputs_by_config):
    # lif_scan is exact: every instruction set must give the reference's bits, not just each its own.
    here = run_determinism_cases(kernels)
    for config, outputs in outputs_by_config.items():
        for i in range(3):
            name = f"lif_scan/{i}"
            assert outputs[name].shape == here[name].shape
            assert outputs[name].tobytes() == here[name].tobytes(), f"{name} differs with {config}"


def test_does_not_modify_inputs(kernels):
    currents = np.full((3, 4), 1.5, f32)
    v0 = np.full(4, 0.5, f32)
    kernels.lif_scan(currents, v0=v0)
    assert (currents == 1.5).all() and (v0 == 0.5).all()


# --- bad input ------------------------------------------------------------------------------------

_C = np.zeros((4, 10), f32)


def _args(**overrides):
    args = dict(currents=_C, tau=2.0, v_threshold=1.0, v_reset=0.0, v0=None)
    args.update(overrides)
    return args


LIF_BAD = [
    pytest.param(_args(tau=0.0), QslmError, ["tau"], id="tau-0-rejected"),
    pytest.param(_args(tau=-1.0), QslmError, ["tau"], id="tau-negative-rejected"),
    pytest.param(_args(tau=math.nan), QslmError, ["tau"], id="tau-nan-rejected"),
    pytest.param(_args(tau=math.inf), QslmError, ["tau"], id="tau-inf-rejected"),
    pytest.param(_args(v_threshold=math.nan), QslmError, ["v_threshold"], id="threshold-nan-rejected"),
    pytest.param(_args(v_threshold=math.inf), QslmError, ["v_threshold"], id="threshold-inf-rejected"),
    pytest.param(_args(v_reset=math.nan), QslmError, ["v_reset"], id="reset-nan-rejected"),
    pytest.param(_args(v_reset=-math.inf), QslmError, ["v_reset"], id="reset-inf-rejected"),
    pytest.param(_args(currents=_C.astype(np.float64)), DTypeError, ["currents", "float32", "float64"], id="currents-float64-rejected"),
    pytest.param(_args(currents=_C.astype(np.int32)), DTypeError, ["currents", "int32"], id="currents-int32-rejected"),
    pytest.param(_args(currents=np.zeros(10, f32)), ShapeError, ["currents"], id="currents-1d-rejected"),
    pytest.param(_args(currents=np.zeros((4, 2, 5), f32)), ShapeError, ["currents"], id="currents-3d-rejected"),
    pytest.param(_args(currents=np.zeros((4, 20), f32)[:, ::2]), LayoutError, ["currents"], id="currents-strided-rejected"),
    pytest.param(_args(currents=np.zeros((10, 4), f32).T), LayoutError, ["currents"], id="currents-transposed-rejected"),
    pytest.param(_args(v0=np.zeros(9, f32)), ShapeError, ["v0"], id="v0-too-short-rejected"),
    pytest.param(_args(v0=np.zeros(11, f32)), ShapeError, ["v0"], id="v0-too-long-rejected"),
    pytest.param(_args(v0=np.zeros((1, 10), f32)), ShapeError, ["v0"], id="v0-2d-rejected"),
    pytest.param(_args(v0=np.zeros(10, np.float64)), DTypeError, ["v0", "float64"], id="v0-float64-rejected"),
    pytest.param(_args(v0=np.zeros(20, f32)[::2]), LayoutError, ["v0"], id="v0-strided-rejected"),
]


@pytest.mark.parametrize(("kwargs", "exc", "patterns"), LIF_BAD)
def test_rejects(impl, kwargs, exc, patterns):
    check_raises(impl.lif_scan, kwargs, exc, patterns)


def test_torch_bad_input_rejected(kernels):
    with pytest.raises(DTypeError, match=r"\bcurrents\b"):
        kernels.lif_scan(torch.zeros(4, 10, dtype=torch.float64))
    with pytest.raises(ShapeError, match=r"\bv0\b"):
        kernels.lif_scan(torch.zeros(4, 10), v0=torch.zeros(9))
    with pytest.raises(LayoutError, match=r"\bcurrents\b"):
        kernels.lif_scan(torch.zeros(10, 4).T)
    with pytest.raises(QslmError, match=r"\btau\b"):
        kernels.lif_scan(torch.zeros(4, 10), tau=0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensor_in_cuda_tensor_out(kernels):
    currents = torch.full((5, 3), 1.5, device="cuda")
    spikes, v_final, counts = kernels.lif_scan(currents)
    assert spikes.device == v_final.device == counts.device == currents.device
    assert spikes.cpu()[:, 0].tolist() == [0, 7, 0, 7, 0] and counts.cpu().tolist() == [2, 2, 2]
