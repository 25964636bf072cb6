"""pack_bits / unpack_bits: the layout of docs/kernels.md, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_same_bits, check_raises, code_range, run_determinism_cases
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from qslm import _reference as ref
from qslm.errors import BitWidthError, CodeRangeError, DTypeError, LayoutError, ShapeError

# --- known answers ------------------------------------------------------------------------------

KNOWN_LAYOUTS = [
    # 4-bit signed: 1 → 0001, -1 → 1111, 7 → 0111, -8 → 1000; element 0 in the low nibble.
    pytest.param(np.array([1, -1, 7, -8], np.int8), 4, [0xF1, 0x87], id="4bit-signed"),
    # 3-bit unsigned, codes straddle bytes: stream 100 010 110 001 101 011 111 000 (LSB first).
    pytest.param(np.array([1, 2, 3, 4, 5, 6, 7, 0], np.uint8), 3, [0xD1, 0x58, 0x1F], id="3bit-unsigned-straddle"),
    # 1-bit: spike k is bit k % 8 of byte k // 8; the 9th element starts a second byte.
    pytest.param(np.array([1, 0, 1, 1, 0, 0, 0, 0, 1], np.uint8), 1, [0x0D, 0x01], id="1bit-9-elements"),
    # 1-bit signed: codes are -1 / 0.
    pytest.param(np.array([-1, 0, 0, -1], np.int8), 1, [0x09], id="1bit-signed"),
    # 8-bit signed is the plain two's complement byte.
    pytest.param(np.array([-1, -128, 127, 0], np.int8), 8, [0xFF, 0x80, 0x7F, 0x00], id="8bit-signed"),
    # 2-D: every row starts on a byte boundary; unused bits at the end of a row are zero.
    pytest.param(np.array([[1, 1, 1], [2, 2, 2]], np.uint8), 2, [[0x15], [0x2A]], id="2bit-rows-byte-aligned"),
    pytest.param(np.array([[-3, 2], [1, -1]], np.int8), 3, [[0x15], [0x39]], id="3bit-signed-rows"),
    pytest.param(np.zeros((0,), np.int8), 5, np.zeros((0,), np.uint8), id="n0-1d"),
    pytest.param(np.zeros((3, 0), np.int8), 5, np.zeros((3, 0), np.uint8), id="n0-2d"),
    pytest.param(np.zeros((0, 5), np.uint8), 3, np.zeros((0, 2), np.uint8), id="r0-2d"),
]


@pytest.mark.parametrize(("values", "bits", "expected"), KNOWN_LAYOUTS)
def test_pack_known_layout(known_answer_impl, values, bits, expected):
    expected = np.array(expected, dtype=np.uint8).reshape(np.shape(expected))
    packed = known_answer_impl.pack_bits(values, bits)
    assert_same_bits(packed, expected)
    signed = values.dtype == np.int8
    assert_same_bits(known_answer_impl.unpack_bits(packed, bits, values.shape[-1], signed=signed), values)


@pytest.mark.parametrize(
    ("n", "bits", "expected"),
    [(0, 1, 0), (1, 1, 1), (8, 1, 1), (9, 1, 2), (5, 3, 2), (8, 3, 3), (3, 8, 3), (768, 4, 384), (7, 7, 7)],
)
def test_row_bytes(kernels, n, bits, expected):
    assert ref.row_bytes(n, bits) == expected
    assert kernels.row_bytes(n, bits) == expected


def test_unpack_sign_extends(known_answer_impl):
    # 0x0F holds two 4-bit codes 15 and 0: signed → -1, 0; unsigned → 15, 0.
    packed = np.array([0x0F], np.uint8)
    assert known_answer_impl.unpack_bits(packed, 4, 2, signed=True).tolist() == [-1, 0]
    assert known_answer_impl.unpack_bits(packed, 4, 2, signed=False).tolist() == [15, 0]
    assert known_answer_impl.unpack_bits(packed, 4, 2).dtype == np.int8  # signed is the default


# --- properties against the reference ---------------------------------------------------------


@st.composite
def code_arrays(draw):
    """(values, bits): int8 or uint8 codes in range for ``bits``, 1-D or 2-D, small odd sizes."""
    bits = draw(st.integers(1, 8), label="bits")
    signed = draw(st.booleans(), label="signed")
    lo, hi = code_range(bits, signed)
    if draw(st.booleans(), label="2-D"):
        shape = (draw(st.integers(0, 6), label="R"), draw(st.integers(0, 40), label="n"))
    else:
        shape = (draw(st.integers(0, 70), label="n"),)
    # Elements from the range ends or anywhere in it.
    elements = st.one_of(st.sampled_from([lo, hi]), st.integers(lo, hi))
    values = draw(hnp.arrays(np.int8 if signed else np.uint8, shape, elements=elements), label="values")
    return values, bits


@given(code_arrays())
def test_reference_round_trip(case):
    values, bits = case
    packed = ref.pack_bits(values, bits)
    assert packed.shape == values.shape[:-1] + (ref.row_bytes(values.shape[-1], bits),)
    assert_same_bits(ref.unpack_bits(packed, bits, values.shape[-1], signed=values.dtype == np.int8), values)


def _scalar_pack_row(codes, bits):
    """The layout rule applied one bit at a time (an independent check of the reference)."""
    out = [0] * ref.row_bytes(len(codes), bits)
    for j, code in enumerate(int(c) for c in codes):
        for b in range(bits):
            i = j * bits + b
            out[i // 8] |= ((code >> b) & 1) << (i % 8)
    return out


@given(code_arrays())
def test_reference_matches_bit_by_bit_rule(case):
    values, bits = case
    rows = values if values.ndim == 2 else values[None, :]
    packed = ref.pack_bits(values, bits)
    packed_rows = packed if packed.ndim == 2 else packed[None, :]
    for row, prow in zip(rows, packed_rows):
        assert prow.tolist() == _scalar_pack_row(row, bits)


@given(code_arrays())
def test_pack_matches_reference(kernels, case):
    values, bits = case
    packed = kernels.pack_bits(values, bits)
    assert_same_bits(packed, ref.pack_bits(values, bits))


@given(code_arrays())
def test_kernel_round_trip(kernels, case):
    values, bits = case
    signed = values.dtype == np.int8
    packed = kernels.pack_bits(values, bits)
    assert_same_bits(kernels.unpack_bits(packed, bits, values.shape[-1], signed=signed), values)


@st.composite
def packed_buffers(draw):
    """Arbitrary bytes (including junk in the unused bits of a row's last byte) for unpack_bits."""
    bits = draw(st.integers(1, 8), label="bits")
    n = draw(st.integers(0, 50), label="n")
    rb = ref.row_bytes(n, bits)
    shape = (draw(st.integers(0, 6), label="R"), rb) if draw(st.booleans(), label="2-D") else (rb,)
    packed = draw(hnp.arrays(np.uint8, shape), label="packed")
    return packed, bits, n, draw(st.booleans(), label="signed")


@given(packed_buffers())
def test_unpack_matches_reference(kernels, case):
    packed, bits, n, signed = case
    expected = ref.unpack_bits(packed, bits, n, signed=signed)
    assert_same_bits(kernels.unpack_bits(packed, bits, n, signed=signed), expected)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_large_round_trip(kernels, bits, signed):
    rng = np.random.default_rng(bits)
    lo, hi = code_range(bits, signed)
    values = rng.integers(lo, hi, size=(96, 769), endpoint=True).astype(np.int8 if signed else np.uint8)
    packed = kernels.pack_bits(values, bits)
    assert_same_bits(packed, ref.pack_bits(values, bits))
    assert_same_bits(kernels.unpack_bits(packed, bits, 769, signed=signed), values)


# --- torch, determinism -------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 3, 4, 8])
def test_torch_in_torch_out(kernels, bits):
    rng = np.random.default_rng(7)
    lo, hi = code_range(bits, True)
    values = rng.integers(lo, hi, size=(5, 13), endpoint=True).astype(np.int8)
    packed = kernels.pack_bits(torch.from_numpy(values), bits)
    assert isinstance(packed, torch.Tensor) and packed.dtype == torch.uint8
    assert_same_bits(packed.numpy(), ref.pack_bits(values, bits))
    unpacked = kernels.unpack_bits(packed, bits, 13, signed=True)
    assert isinstance(unpacked, torch.Tensor) and unpacked.dtype == torch.int8
    assert_same_bits(unpacked.numpy(), values)
    unsigned = kernels.unpack_bits(packed, bits, 13, signed=False)
    assert unsigned.dtype == torch.uint8


def test_deterministic(kernels):
    first = run_determinism_cases(kernels)
    second = run_determinism_cases(kernels)
    for name in ("pack_bits", "unpack_bits"):
        assert_same_bits(second[name], first[name])


def test_same_bits_for_any_thread_count_and_instruction_set(kernels, outputs_by_config):
    here = run_determinism_cases(kernels)
    for config, outputs in outputs_by_config.items():
        for name in ("pack_bits", "unpack_bits"):
            assert outputs[name].dtype == here[name].dtype and outputs[name].shape == here[name].shape
            assert outputs[name].tobytes() == here[name].tobytes(), f"{name} differs with {config}"


# --- bad input ------------------------------------------------------------------------------------

_V = np.arange(-7, 8, dtype=np.int8)[:15].reshape(3, 5)  # valid 4-bit signed codes
_P = np.zeros((3, 3), np.uint8)  # a valid 3×(5 codes of 4 bits) buffer


def _noncontig(shape, dtype):
    return np.zeros((shape[0], 2 * shape[1]), dtype)[:, ::2]


PACK_BAD = [
    pytest.param(dict(values=_V, bits=0), BitWidthError, ["bits", "0"], id="bits-0-rejected"),
    pytest.param(dict(values=_V, bits=9), BitWidthError, ["bits", "9"], id="bits-9-rejected"),
    pytest.param(dict(values=np.zeros((2, 3, 4), np.int8), bits=4), ShapeError, ["values"], id="values-3d-rejected"),
    pytest.param(dict(values=np.array(1, np.int8), bits=4), ShapeError, ["values"], id="values-0d-rejected"),
    pytest.param(dict(values=_V.astype(np.int16), bits=4), DTypeError, ["values", "int16"], id="values-int16-rejected"),
    pytest.param(dict(values=_V.astype(np.float32), bits=4), DTypeError, ["values", "float32"], id="values-float32-rejected"),
    pytest.param(dict(values=_V.astype(np.int64), bits=4), DTypeError, ["values", "int64"], id="values-int64-rejected"),
    pytest.param(dict(values=_noncontig((3, 5), np.int8), bits=4), LayoutError, ["values"], id="values-strided-rejected"),
    pytest.param(dict(values=np.zeros((5, 3), np.int8).T, bits=4), LayoutError, ["values"], id="values-transposed-rejected"),
    pytest.param(dict(values=np.array([0, 8], np.int8), bits=4), CodeRangeError, ["values", "8"], id="signed-above-range-rejected"),
    pytest.param(dict(values=np.array([[0, 1], [-9, 0]], np.int8), bits=4), CodeRangeError, ["values", "-9"], id="signed-below-range-rejected"),
    pytest.param(dict(values=np.array([16], np.uint8), bits=4), CodeRangeError, ["values", "16"], id="unsigned-above-range-rejected"),
    pytest.param(dict(values=np.array([0, 1], np.int8), bits=1), CodeRangeError, ["values"], id="signed-1bit-one-rejected"),
    pytest.param(dict(values=np.array([2], np.uint8), bits=1), CodeRangeError, ["values"], id="unsigned-1bit-two-rejected"),
    pytest.param(dict(values=np.array([-65], np.int8), bits=7), CodeRangeError, ["values"], id="signed-7bit-below-rejected"),
]

UNPACK_BAD = [
    pytest.param(dict(packed=_P, bits=0, n=5), BitWidthError, ["bits"], id="bits-0-rejected"),
    pytest.param(dict(packed=_P, bits=9, n=5), BitWidthError, ["bits"], id="bits-9-rejected"),
    pytest.param(dict(packed=_P[:, :2].copy(), bits=4, n=5), ShapeError, ["packed"], id="packed-truncated-rejected"),
    pytest.param(dict(packed=np.zeros((3, 4), np.uint8), bits=4, n=5), ShapeError, ["packed"], id="packed-overlong-rejected"),
    pytest.param(dict(packed=np.zeros(2, np.uint8), bits=4, n=5), ShapeError, ["packed"], id="packed-1d-truncated-rejected"),
    pytest.param(dict(packed=np.zeros(4, np.uint8), bits=4, n=5), ShapeError, ["packed"], id="packed-1d-overlong-rejected"),
    pytest.param(dict(packed=np.zeros((3, 0), np.uint8), bits=4, n=5), ShapeError, ["packed"], id="packed-empty-rows-rejected"),
    pytest.param(dict(packed=np.zeros((3, 1), np.uint8), bits=1, n=0), ShapeError, ["packed"], id="packed-overlong-for-n0-rejected"),
    pytest.param(dict(packed=np.zeros((2, 3, 3), np.uint8), bits=4, n=5), ShapeError, ["packed"], id="packed-3d-rejected"),
    pytest.param(dict(packed=_P.astype(np.int8), bits=4, n=5), DTypeError, ["packed", "int8"], id="packed-int8-rejected"),
    pytest.param(dict(packed=_P.astype(np.float32), bits=4, n=5), DTypeError, ["packed", "float32"], id="packed-float32-rejected"),
    pytest.param(dict(packed=_noncontig((3, 3), np.uint8), bits=4, n=5), LayoutError, ["packed"], id="packed-strided-rejected"),
    pytest.param(dict(packed=np.zeros((3, 2), np.uint8).T, bits=4, n=3), LayoutError, ["packed"], id="packed-transposed-rejected"),
]


@pytest.mark.parametrize(("kwargs", "exc", "patterns"), PACK_BAD)
def test_pack_bits_rejects(impl, kwargs, exc, patterns):
    check_raises(impl.pack_bits, kwargs, exc, patterns)


@pytest.mark.parametrize(("kwargs", "exc", "patterns"), UNPACK_BAD)
def test_unpack_bits_rejects(impl, kwargs, exc, patterns):
    check_raises(impl.unpack_bits, kwargs, exc, patterns)


def test_torch_bad_input_rejected(kernels):
    with pytest.raises(DTypeError, match=r"\bvalues\b"):
        kernels.pack_bits(torch.zeros(3, 5, dtype=torch.int16), 4)
    with pytest.raises(DTypeError, match=r"\bpacked\b"):
        kernels.unpack_bits(torch.zeros(3, 3, dtype=torch.int8), 4, 5)
    with pytest.raises(LayoutError, match=r"\bvalues\b"):
        kernels.pack_bits(torch.zeros(5, 3, dtype=torch.int8).T, 4)
    with pytest.raises(CodeRangeError, match=r"\bvalues\b"):
        kernels.pack_bits(torch.tensor([0, 8], dtype=torch.int8), 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensor_in_cuda_tensor_out(kernels):
    values = torch.tensor([[1, -1, 7, -8]], dtype=torch.int8, device="cuda")
    packed = kernels.pack_bits(values, 4)
    assert packed.device == values.device and packed.cpu().tolist() == [[0xF1, 0x87]]
    assert kernels.unpack_bits(packed, 4, 4).cpu().tolist() == [[1, -1, 7, -8]]
