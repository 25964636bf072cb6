"""qslm.quant.primitives: scale rules, code ranges, error budgets, agreement with torch's
fake_quantize and with the packed form (pack → unpack → dequantize)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qslm import kernels
from qslm.errors import BitWidthError, DTypeError, QuantizationError, ShapeError
from qslm.quant import QuantSpec, choose_qparams, dequantize, fake_quantize, quantize
from qslm.quant.primitives import (
    BINARY_ZERO_POINT,
    SCALE_MIN,
    code_range,
    expand_qparams,
    quantize_weight,
)

# Error budget of a round trip: |w − fake_quant(w)| ≤ s/2 inside the range, plus float32 rounding
# of t = w·(1/s) (two roundings: ≤ 2⁻²³·|t| code units) and of the product s·(q − z) (2⁻²⁴·|fq|).
ROUND_TRIP_REL_SLACK = 4e-7

GROUPS = ("tensor", "channel", "1", "3", "7", "16", "K", ">K")


def spec_for(bits: int, symmetric: bool, group: str, k: int) -> QuantSpec:
    if group in ("tensor", "channel"):
        return QuantSpec(bits, symmetric, group)
    g = {"K": k, ">K": k + 5}.get(group) or int(group)
    return QuantSpec(bits, symmetric, "group", g)


def make_weight(seed: int, n: int, k: int, kind: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen)
    if kind == "zero_rows":
        w[::2] = 0.0
    elif kind == "zero_cols":  # zero groups, including a zero partial last group
        w[:, k // 2:] = 0.0
    elif kind == "tiny":
        w = w * 1e-9
    elif kind == "outlier":
        w[0, 0] = 1e3
    elif kind == "positive":
        w = w.abs() + 0.5
    elif kind == "negative":
        w = -w.abs()
    elif kind == "all_zero":
        w.zero_()
    return w


weights = st.fixed_dictionaries(dict(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 6),
    k=st.integers(1, 40),
    kind=st.sampled_from(["normal", "zero_rows", "zero_cols", "tiny", "outlier", "positive",
                          "negative", "all_zero"]),
))
schemes = st.fixed_dictionaries(dict(
    bits=st.integers(1, 8), symmetric=st.booleans(), group=st.sampled_from(GROUPS)))


def expanded(qw, t):
    return expand_qparams(t, qw.shape, qw.spec.group_size)


# ------------------------------------------------------------------------------------------------
# Parameters and codes
# ------------------------------------------------------------------------------------------------


@given(w=weights, s=schemes)
def test_qparams_and_codes_are_valid(w, s):
    x = make_weight(w["seed"], w["n"], w["k"], w["kind"])
    spec = spec_for(s["bits"], s["symmetric"], s["group"], w["k"])
    qw = quantize_weight(x, spec)
    n, k = x.shape
    expected_shape = {"tensor": (1, 1), "channel": (n, 1)}.get(
        spec.granularity, (n, -(-k // (spec.group_size or 1))))
    assert tuple(qw.scales.shape) == expected_shape
    assert qw.scales.dtype == torch.float32
    assert torch.isfinite(qw.scales).all() and (qw.scales >= SCALE_MIN).all()
    # fp16-representable: the scales written to disk are exactly the ones used here
    assert torch.equal(qw.scales.half().float(), qw.scales)
    signed = spec.symmetric and spec.bits > 1
    lo, hi = code_range(spec.bits, signed)
    assert qw.codes.dtype == (torch.int8 if signed else torch.uint8)
    assert qw.codes.shape == x.shape
    assert int(qw.codes.min()) >= lo and int(qw.codes.max()) <= hi
    if signed:
        assert qw.zero_points is None
    elif spec.symmetric:  # 1-bit sign binarization
        assert torch.all(qw.zero_points == BINARY_ZERO_POINT)
    else:
        z = qw.zero_points
        assert z.shape == qw.scales.shape
        assert torch.equal(z, torch.round(z)) and (z >= 0).all() and (z <= hi).all()
    fq = qw.dequantize()
    assert torch.isfinite(fq).all()


@given(w=weights, s=schemes)
def test_round_trip_error_at_most_half_a_step(w, s):
    x = make_weight(w["seed"], w["n"], w["k"], w["kind"])
    spec = spec_for(s["bits"], s["symmetric"], s["group"], w["k"])
    qw = quantize_weight(x, spec)
    fq = qw.dequantize()
    step = expanded(qw, qw.scales)
    err = (x - fq).abs()
    allowed = step / 2 + ROUND_TRIP_REL_SLACK * (x.abs() + fq.abs())
    if spec.is_binary:
        # W = ±s/2: inside [−s, s] the error is at most s/2; every value is a level
        inside = x.abs() <= step
        assert torch.all(err[inside] <= allowed[inside])
        assert torch.equal(fq.abs(), step / 2)
        clear = x.abs() > 1e-6 * step  # sign of w (w = 0 goes to −s/2)
        assert torch.equal(torch.sign(fq[clear]), torch.sign(x[clear]))
    else:  # the scale rules put every weight inside the range
        assert torch.all(err <= allowed), float((err - allowed).max())


@given(w=weights, bits=st.integers(2, 8))
def test_symmetric_scale_rule(w, bits):
    """s = max|w| / (2^(b−1) − 1), rounded up to fp16 (floored at SCALE_MIN); the extreme
    weight gets the extreme positive or negative code."""
    x = make_weight(w["seed"], w["n"], w["k"], w["kind"])
    scales, zp = choose_qparams(x, bits, True, "channel")
    assert zp is None
    qmax = 2 ** (bits - 1) - 1
    exact = torch.clamp(x.abs().amax(1, keepdim=True) / qmax, min=SCALE_MIN)
    assert torch.all(scales >= exact)
    # ... and the *smallest* fp16 value that is: the fp16 value below it is below the exact scale
    below = (scales.half().view(torch.int16) - 1).view(torch.float16).float()
    assert torch.all(below < exact)
    codes = quantize(x, scales, None, bits)
    unfloored = exact[:, 0] > SCALE_MIN
    assert torch.all(codes.abs().amax(1)[unfloored] == qmax)


def test_known_answers():
    w = torch.tensor([[-1.0, 0.5, 0.25, 1.0]])
    # symmetric 2 bits: s = 1/1; 0.5 is a tie → round half to even → 0
    s, z = choose_qparams(w, 2, True, "channel")
    assert s.item() == 1.0 and z is None
    assert quantize(w, s, None, 2).tolist() == [[-1, 0, 0, 1]]
    # asymmetric 2 bits: s = 2/3 rounded *up* to fp16 = 1366/2048, z = round(1/s) = 1
    s, z = choose_qparams(w, 2, False, "channel")
    assert s.item() == 1366 / 2048 and z.item() == 1.0
    assert quantize(w, s, z, 2).tolist() == [[0, 2, 1, 2]]
    # 1-bit symmetric: α = mean|w| = 0.6875, s = 2α, W = ±α
    qw = quantize_weight(w, QuantSpec(1))
    assert qw.scales.item() == 1.375 and qw.codes.tolist() == [[0, 1, 1, 1]]
    assert qw.dequantize().tolist() == [[-0.6875, 0.6875, 0.6875, 0.6875]]
    # groups of 2 over K = 5: the last group holds one column
    w5 = torch.tensor([[1.0, -2.0, 3.0, 0.5, -7.0]])
    s, _ = choose_qparams(w5, 4, True, "group", 2)
    assert s.shape == (1, 3) and s[0, 2].item() == 1.0  # 7 / 7 from the single last column
    assert torch.allclose(s, torch.tensor([[2 / 7, 3 / 7, 1.0]]), rtol=2**-10)


def test_all_zero_and_tiny_groups_are_safe():
    for bits in range(1, 9):
        for sym in (True, False):
            for spec in (QuantSpec(bits, sym), QuantSpec(bits, sym, "tensor"),
                         QuantSpec(bits, sym, group_size=3)):
                for w in (torch.zeros(3, 7), torch.full((3, 7), 1e-30),
                          torch.cat([torch.zeros(3, 6), torch.ones(3, 1)], 1)):
                    qw = quantize_weight(w, spec)
                    assert torch.isfinite(qw.scales).all() and (qw.scales > 0).all()
                    fq = qw.dequantize()
                    assert torch.isfinite(fq).all()
                    if not spec.is_binary:  # 0 is a level of every non-binary scheme
                        assert torch.all(fq[w == 0] == 0)
                    else:
                        assert torch.all(fq[w == 0].abs() <= qw.scales.max())


# ------------------------------------------------------------------------------------------------
# Agreement with torch.fake_quantize_* where the schemes coincide
# ------------------------------------------------------------------------------------------------


@given(w=weights, bits=st.integers(1, 8), symmetric=st.booleans())
def test_per_channel_matches_torch(w, bits, symmetric):
    if symmetric and bits == 1:
        bits = 2  # binarization has a half-integer zero point: no torch equivalent
    x = make_weight(w["seed"], w["n"], w["k"], w["kind"])
    ours = fake_quantize(x, QuantSpec(bits, symmetric, "channel"))
    s, z = choose_qparams(x, bits, symmetric, "channel")
    qmin, qmax = code_range(bits, signed=symmetric)
    zp = torch.zeros(x.shape[0], dtype=torch.int32) if z is None else z[:, 0].to(torch.int32)
    theirs = torch.fake_quantize_per_channel_affine(x, s[:, 0].contiguous(), zp, 0, qmin, qmax)
    assert torch.equal(ours, theirs)


@given(w=weights, bits=st.integers(1, 8), symmetric=st.booleans())
def test_per_tensor_matches_torch(w, bits, symmetric):
    if symmetric and bits == 1:
        bits = 2
    x = make_weight(w["seed"], w["n"], w["k"], w["kind"])
    ours = fake_quantize(x, QuantSpec(bits, symmetric, "tensor"))
    s, z = choose_qparams(x, bits, symmetric, "tensor")
    qmin, qmax = code_range(bits, signed=symmetric)
    theirs = torch.fake_quantize_per_tensor_affine(x, s.item(), 0 if z is None else int(z.item()),
                                                   qmin, qmax)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("bits, symmetric", [
    pytest.param(b, sym, id=f"{'signed' if sym else 'unsigned'}-{b}bit")
    for sym in (True, False) for b in range(1 if not sym else 2, 9)  # signed 1-bit: binarization
])
def test_ties_and_clamping_match_torch(bits, symmetric):
    """Weights exactly halfway between levels (power-of-two scales make the ties exact), and
    weights beyond the range: round-half-to-even and the clamp as torch does them."""
    qmin, qmax = code_range(bits, signed=symmetric)
    n, k = 4, 2 * (qmax - qmin + 6)
    scales = torch.tensor([[0.125], [0.5], [2.0], [2.0**-10]])
    t = torch.arange(k, dtype=torch.float32) / 2 + (qmin - 3)  # ..., −0.5, 0, 0.5, 1, 1.5, ...
    w = t.expand(n, k) * scales
    zp = None if symmetric else torch.tensor([[0.0], [1.0], [float(qmax // 2)], [float(qmax)]])
    codes = quantize(w, scales, zp, bits)
    z_int = torch.zeros(n, dtype=torch.int32) if zp is None else zp[:, 0].to(torch.int32)
    theirs = torch.fake_quantize_per_channel_affine(w, scales[:, 0].contiguous(), z_int, 0,
                                                    qmin, qmax)
    assert torch.equal(dequantize(codes, scales, zp), theirs)


# ------------------------------------------------------------------------------------------------
# fp16 scales and the packed form
# ------------------------------------------------------------------------------------------------


@settings(max_examples=60)
@given(w=weights, s=schemes)
def test_fake_quant_equals_packed_round_trip(w, s):
    """fake_quant(w) == dequantize(unpack(pack(codes)), fp16 scales, fp16 zero points), bit for
    bit — what the packed export stores is exactly what evaluation used."""
    x = make_weight(w["seed"], w["n"], w["k"], w["kind"])
    spec = spec_for(s["bits"], s["symmetric"], s["group"], w["k"])
    qw = quantize_weight(x, spec)
    signed = qw.codes.dtype == torch.int8
    packed = kernels.pack_bits(qw.codes.numpy(), spec.bits)
    assert packed.shape == (x.shape[0], kernels.row_bytes(x.shape[1], spec.bits))
    codes = torch.from_numpy(kernels.unpack_bits(packed, spec.bits, x.shape[1], signed=signed))
    assert torch.equal(codes, qw.codes)
    s16 = qw.scales.to(torch.float16).to(torch.float32)
    z16 = None if qw.zero_points is None else qw.zero_points.half().float()
    again = dequantize(codes, s16, z16, spec.group_size)
    got = fake_quantize(x, spec)
    assert got.view(torch.int32).equal(again.view(torch.int32))


def test_fake_quantize_keeps_dtype_and_is_idempotent():
    x = torch.randn(5, 12, dtype=torch.float64)
    spec = QuantSpec(4, group_size=4)
    y = fake_quantize(x, spec)
    assert y.dtype == torch.float64
    y32 = fake_quantize(x.float(), spec)
    assert torch.equal(fake_quantize(y32, spec), y32)  # levels map to themselves


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call, exc, words", [
    pytest.param(lambda: choose_qparams(torch.ones(2, 2), 0), BitWidthError, "bits",
                 id="bits-0-rejected"),
    pytest.param(lambda: choose_qparams(torch.ones(2, 2), 9), BitWidthError, "bits",
                 id="bits-9-rejected"),
    pytest.param(lambda: choose_qparams(torch.ones(2, 2), 4, True, "row"), QuantizationError,
                 "granularity", id="bad-granularity"),
    pytest.param(lambda: choose_qparams(torch.ones(2, 2), 4, True, "group"), QuantizationError,
                 "group_size", id="group-without-size"),
    pytest.param(lambda: choose_qparams(torch.ones(2, 2), 4, True, "channel", 4),
                 QuantizationError, "group_size", id="size-without-group"),
    pytest.param(lambda: choose_qparams(torch.tensor([[1.0, float("nan")]]), 4),
                 QuantizationError, "non-finite", id="nan-weight"),
    pytest.param(lambda: choose_qparams(torch.ones(4), 4), ShapeError, "2-D", id="1-d-weight"),
    pytest.param(lambda: choose_qparams(torch.ones(0, 3), 4), ShapeError, "non-empty",
                 id="empty-weight"),
    pytest.param(lambda: choose_qparams(torch.ones(2, 2, dtype=torch.int32), 4), DTypeError,
                 "floating", id="integer-weight"),
    pytest.param(lambda: choose_qparams(torch.full((1, 1), 1e9), 2), QuantizationError,
                 "fp16", id="scale-beyond-fp16"),
    pytest.param(lambda: quantize(torch.ones(2, 6), torch.ones(2, 3), None, 4), ShapeError,
                 "group_size", id="groups-need-group-size"),
    pytest.param(lambda: quantize(torch.ones(2, 6), torch.ones(2, 4), None, 4, 2), ShapeError,
                 "groups", id="wrong-group-count"),
    pytest.param(lambda: quantize(torch.ones(2, 6), torch.zeros(2, 1), None, 4),
                 QuantizationError, "scales", id="zero-scale"),
    pytest.param(lambda: dequantize(torch.ones(2, 2, dtype=torch.uint8), torch.ones(2, 1)),
                 DTypeError, "codes", id="unsigned-codes-without-zero-points"),
])
def test_bad_input(call, exc, words):
    with pytest.raises(exc, match=words):
        call()
    assert issubclass(exc, ValueError)


def test_codes_roundtrip_dtype_numpy_interop():
    qw = quantize_weight(torch.randn(3, 9), QuantSpec(3, False, group_size=4))
    kargs = (qw.kernel_scales().numpy(), qw.kernel_zero_points().numpy())
    assert kargs[0].shape == (3, 3) and kargs[0].dtype == np.float32
    assert kargs[1].shape == (3, 3)


# ---- MSE clipping ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity, group_size", [("channel", None), ("group", 16),
                                                     ("group", 7), ("tensor", None)])
def test_mse_clipping_never_increases_the_error_of_any_group(bits, symmetric, granularity,
                                                             group_size):
    g = torch.Generator().manual_seed(bits * 10 + symmetric)
    w = torch.randn(12, 40, generator=g) * torch.rand(12, 1, generator=g)
    w[3, 5] = 9.0  # an outlier: clipping it pays off
    errs = {}
    for clip in ("minmax", "mse"):
        spec = QuantSpec(bits, symmetric, granularity, group_size, clip)
        errs[clip] = (w - fake_quantize(w, spec)) ** 2
    n, k = w.shape
    gs = {"channel": k, "tensor": n * k}.get(granularity, group_size)
    flat = lambda e: e.reshape(-1) if granularity == "tensor" else e  # noqa: E731
    if granularity == "tensor":
        assert flat(errs["mse"]).sum() <= flat(errs["minmax"]).sum() * (1 + 1e-6)
    else:
        for start in range(0, k, gs):
            a = errs["mse"][:, start:start + gs].sum(1)
            b = errs["minmax"][:, start:start + gs].sum(1)
            assert torch.all(a <= b * (1 + 1e-6) + 1e-12)
    if bits in (3, 4) and granularity != "tensor":
        # with an outlier the clipped range is strictly better overall (2 bits, or one range for
        # the whole matrix, can need a factor below the grid's 0.5 to gain anything)
        assert errs["mse"].sum() < errs["minmax"].sum()


def test_mse_clipping_keeps_fp16_scales_and_the_packed_layout():
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
    spec = QuantSpec(3, False, group_size=32, clip="mse")
    qw = quantize_weight(w, spec)
    assert torch.equal(qw.scales, qw.scales.to(torch.float16).to(torch.float32))
    assert qw.codes.dtype == torch.uint8 and int(qw.codes.max()) <= 7
    assert torch.equal(qw.dequantize(), fake_quantize(w, spec))


def test_binarization_ignores_clip():
    w = torch.randn(4, 32, generator=torch.Generator().manual_seed(2))
    assert torch.equal(fake_quantize(w, QuantSpec(1, True, clip="mse")),
                       fake_quantize(w, QuantSpec(1, True)))


def test_unknown_clip_is_rejected():
    from qslm.errors import PlanError, QuantizationError
    from qslm.quant.primitives import choose_qparams

    with pytest.raises(PlanError, match="clip"):
        QuantSpec(4, clip="percentile")
    with pytest.raises(QuantizationError, match="clip"):
        choose_qparams(torch.ones(2, 2), 4, clip="percentile")
