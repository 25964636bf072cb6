"""Plain-numpy reference implementations of the kernels in ``qslm._kernels``.

This module is the test oracle and the benchmark baseline: every function has the name and the
signature of its kernel in ``docs/kernels.md`` and is written for clarity, not speed.

Layout (docs/kernels.md): element ``j`` of a row of ``b``-bit codes occupies bits
``[j*b, (j+1)*b)``, least significant bit first, bit ``i`` being bit ``i % 8`` of byte ``i // 8``;
every row starts on a byte boundary and takes ``row_bytes(n, b) = ceil(n*b / 8)`` bytes; unused
bits at the end of a row are zero. Effective storage per weight is ``b + 16/g`` bits with fp16
scales for group size ``g``.

Numerics:

- ``pack_bits``, ``unpack_bits`` and ``lif_scan`` are exact; the kernels must match them bit for bit
  (``lif_scan`` does its float32 operations in the documented order, see there).
- ``lowbit_matmul`` and ``spike_matmul`` dequantize the weights to float64, compute the product in
  float64 and round the result to float32 once. The kernels accumulate in float32 in their own
  order, so they agree with these only within a tolerance (``MATMUL_RTOL`` in the tests).

Like the kernels, the functions validate their inputs and raise the classes of
:mod:`qslm.errors` (every one a ``ValueError``).
"""

from __future__ import annotations

import math

import numpy as np

from qslm.errors import BitWidthError, CodeRangeError, DTypeError, LayoutError, QslmError, ShapeError

__all__ = [
    "row_bytes",
    "pack_bits",
    "unpack_bits",
    "dequantize_packed",
    "lowbit_matmul",
    "spike_matmul",
    "lif_scan",
]


# ---------------------------------------------------------------------------------------------
# Validation helpers (kept light: bit width, dtype, contiguity, number of dimensions, shape)
# ---------------------------------------------------------------------------------------------


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 8:
        raise BitWidthError(f"bits must be an integer from 1 to 8, got {bits}")


def _check_group_size(group_size: int) -> None:
    if group_size < 1:
        raise ShapeError(f"group_size must be >= 1, got {group_size}")


def _check_array(name: str, a: np.ndarray, dtypes: tuple[type, ...], ndims: tuple[int, ...]) -> None:
    """Dtype first (the most specific complaint), then number of dimensions, then contiguity."""
    if not isinstance(a, np.ndarray):
        raise DTypeError(f"{name}: expected a numpy array, got {type(a).__name__}")
    if a.dtype.type not in dtypes:
        expected = " or ".join(np.dtype(d).name for d in dtypes)
        raise DTypeError(f"{name}: expected dtype {expected}, got {a.dtype.name}")
    if a.ndim not in ndims:
        expected = " or ".join(f"{d}-D" for d in ndims)
        raise ShapeError(f"{name}: expected a {expected} array, got {a.ndim}-D with shape {a.shape}")
    if not a.flags.c_contiguous:
        raise LayoutError(f"{name}: array must be C-contiguous (got strides {a.strides})")


def _check_shape(name: str, a: np.ndarray, expected: tuple[int, ...]) -> None:
    if a.shape != expected:
        raise ShapeError(f"{name}: expected shape {expected}, got {a.shape}")


def row_bytes(n: int, bits: int) -> int:
    """Bytes taken by one packed row of ``n`` codes of ``bits`` bits: ``ceil(n * bits / 8)``."""
    _check_bits(bits)
    if n < 0:
        raise ShapeError(f"n must be >= 0, got {n}")
    return (n * bits + 7) // 8


# ---------------------------------------------------------------------------------------------
# Bit packing
# ---------------------------------------------------------------------------------------------


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack ``b``-bit codes, row by row, LSB first.

    ``values`` is int8 (signed codes, two's complement, range ``[-2^(b-1), 2^(b-1) - 1]``) or
    uint8 (unsigned codes, range ``[0, 2^b - 1]``), shape ``(n,)`` or ``(R, n)``.
    Returns uint8 of shape ``(row_bytes,)`` or ``(R, row_bytes)``.
    """
    _check_bits(bits)
    _check_array("values", values, (np.int8, np.uint8), (1, 2))
    if values.dtype == np.int8:
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    else:
        lo, hi = 0, (1 << bits) - 1
    wide = values.astype(np.int16)
    bad = (wide < lo) | (wide > hi)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise CodeRangeError(
            f"values{list(first)} = {int(wide[first])} does not fit in {bits} bits "
            f"({values.dtype.name} codes must lie in [{lo}, {hi}])"
        )

    rows = wide if wide.ndim == 2 else wide[None, :]  # (R, n); a 1-D input is one row
    codes = (rows & ((1 << bits) - 1)).astype(np.uint8)  # two's complement, low `bits` bits
    # Bit matrix: bit i of code j of a row goes to stream position j*bits + i.
    bit_matrix = (codes[:, :, None] >> np.arange(bits, dtype=np.uint8)) & 1  # (R, n, bits)
    stream = bit_matrix.reshape(rows.shape[0], rows.shape[1] * bits)  # (R, n*bits)
    packed = np.packbits(stream, axis=1, bitorder="little")  # zero-pads the last byte of a row
    return packed[0] if values.ndim == 1 else packed


def unpack_bits(packed: np.ndarray, bits: int, n: int, signed: bool = True) -> np.ndarray:
    """Inverse of :func:`pack_bits`.

    ``packed`` is uint8 ``(row_bytes,)`` or ``(R, row_bytes)`` with ``row_bytes == ceil(n*bits/8)``
    exactly. Returns int8 (``signed``, sign-extended from ``bits``) or uint8, shape ``(n,)`` or
    ``(R, n)``. Bits past ``n*bits`` in the last byte of a row are ignored.
    """
    _check_bits(bits)
    if n < 0:
        raise ShapeError(f"n must be >= 0, got {n}")
    _check_array("packed", packed, (np.uint8,), (1, 2))
    rb = row_bytes(n, bits)
    if packed.shape[-1] != rb:
        raise ShapeError(
            f"packed: a row of {n} codes of {bits} bits takes {rb} bytes, got {packed.shape[-1]}"
        )

    rows = packed if packed.ndim == 2 else packed[None, :]  # (R, rb)
    stream = np.unpackbits(rows, axis=1, count=n * bits, bitorder="little")  # (R, n*bits)
    bit_matrix = stream.reshape(rows.shape[0], n, bits).astype(np.int16)  # (R, n, bits)
    codes = (bit_matrix << np.arange(bits, dtype=np.int16)).sum(axis=2, dtype=np.int16)  # (R, n)
    if signed:
        codes = np.where(codes >= (1 << (bits - 1)), codes - (1 << bits), codes)
    out = codes.astype(np.int8 if signed else np.uint8)
    return out.reshape(n) if packed.ndim == 1 else out


# ---------------------------------------------------------------------------------------------
# Quantized matrix products
# ---------------------------------------------------------------------------------------------


def _check_weights(
    packed: np.ndarray,
    scales: np.ndarray,
    bits: int,
    group_size: int,
    k: int,
    zero_points: np.ndarray | None,
) -> int:
    """Validate a packed ``[N, K]`` weight matrix and its quantization parameters; return N."""
    _check_bits(bits)
    _check_group_size(group_size)
    _check_array("packed", packed, (np.uint8,), (2,))
    _check_array("scales", scales, (np.float32,), (2,))
    if zero_points is not None:
        _check_array("zero_points", zero_points, (np.float32,), (2,))
    n_out = packed.shape[0]
    rb = row_bytes(k, bits)
    if packed.shape[1] != rb:
        raise ShapeError(
            f"packed: a row of K={k} codes of {bits} bits takes {rb} bytes, got {packed.shape[1]}"
        )
    n_groups = -(-k // group_size)  # ceil(K / g)
    _check_shape("scales", scales, (n_out, n_groups))
    if zero_points is not None:
        _check_shape("zero_points", zero_points, (n_out, n_groups))
    return n_out


def dequantize_packed(
    packed: np.ndarray,
    scales: np.ndarray,
    bits: int,
    group_size: int,
    k: int,
    zero_points: np.ndarray | None = None,
) -> np.ndarray:
    """The float64 ``[N, K]`` weight matrix that ``packed`` encodes.

    Symmetric (no zero points): signed codes, ``W[n, k] = scale[n, k // g] * q[n, k]``.
    Asymmetric: unsigned codes, ``W[n, k] = scale[n, k // g] * (q[n, k] - zero[n, k // g])``.
    """
    _check_weights(packed, scales, bits, group_size, k, zero_points)
    q = unpack_bits(packed, bits, k, signed=zero_points is None).astype(np.float64)  # (N, K)
    group_of_column = np.arange(k) // group_size  # (K,)
    scale = scales.astype(np.float64)[:, group_of_column]  # (N, K)
    if zero_points is None:
        return scale * q
    zero = zero_points.astype(np.float64)[:, group_of_column]  # (N, K)
    return scale * (q - zero)


def lowbit_matmul(
    x: np.ndarray,
    packed: np.ndarray,
    scales: np.ndarray,
    bits: int,
    group_size: int,
    zero_points: np.ndarray | None = None,
) -> np.ndarray:
    """``x @ dequant(W).T``: x float32 ``(M, K)``, W packed ``(N, ceil(K*bits/8))`` → float32 ``(M, N)``.

    Computed in float64 and rounded to float32 once.
    """
    _check_array("x", x, (np.float32,), (2,))
    _check_weights(packed, scales, bits, group_size, x.shape[1], zero_points)
    w = dequantize_packed(packed, scales, bits, group_size, x.shape[1], zero_points)  # (N, K)
    return (x.astype(np.float64) @ w.T).astype(np.float32)  # (M, N)


def spike_matmul(
    spikes: np.ndarray,
    k: int,
    packed: np.ndarray,
    scales: np.ndarray,
    bits: int,
    group_size: int,
    zero_points: np.ndarray | None = None,
) -> np.ndarray:
    """``S @ dequant(W).T`` for bit-packed binary spikes ``S`` uint8 ``(M, ceil(k/8))`` → float32 ``(M, N)``.

    Spike ``j`` of a row is bit ``j % 8`` of byte ``j // 8``; bits past ``k`` are ignored.
    Computed in float64 and rounded to float32 once (the kernel instead sums integer codes
    per group and scales each group sum once).
    """
    if k < 0:
        raise ShapeError(f"k must be >= 0, got {k}")
    _check_array("spikes", spikes, (np.uint8,), (2,))
    if spikes.shape[1] != row_bytes(k, 1):
        raise ShapeError(
            f"spikes: a row of k={k} spikes takes {row_bytes(k, 1)} bytes, got {spikes.shape[1]}"
        )
    _check_weights(packed, scales, bits, group_size, k, zero_points)
    s = unpack_bits(spikes, 1, k, signed=False).astype(np.float64)  # (M, K), junk bits dropped
    w = dequantize_packed(packed, scales, bits, group_size, k, zero_points)  # (N, K)
    return (s @ w.T).astype(np.float32)  # (M, N)


# ---------------------------------------------------------------------------------------------
# LIF neuron
# ---------------------------------------------------------------------------------------------


def lif_scan(
    currents: np.ndarray,
    tau: float = 2.0,
    v_threshold: float = 1.0,
    v_reset: float = 0.0,
    v0: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the SpikeGPT LIF neuron (decay_input, hard reset) over ``T`` steps of ``N`` neurons.

    ``currents`` float32 ``(T, N)``; ``v0`` float32 ``(N,)`` or None (zeros). Per neuron, in
    float32 and in exactly this order::

        H = V + (X[t] - (V - v_reset)) / tau
        S = H >= v_threshold
        V = v_reset if S else H

    Returns ``(spikes uint8 (T, ceil(N/8)) bit-packed, v_final float32 (N,), spike_counts int64 (N,))``.
    """
    if not (math.isfinite(tau) and tau > 0):
        raise QslmError(f"tau must be finite and > 0, got {tau}")
    if not math.isfinite(v_threshold):
        raise QslmError(f"v_threshold must be finite, got {v_threshold}")
    if not math.isfinite(v_reset):
        raise QslmError(f"v_reset must be finite, got {v_reset}")
    _check_array("currents", currents, (np.float32,), (2,))
    n_steps, n_neurons = currents.shape
    if v0 is None:
        v = np.zeros(n_neurons, dtype=np.float32)
    else:
        _check_array("v0", v0, (np.float32,), (1,))
        _check_shape("v0", v0, (n_neurons,))
        v = v0.copy()

    tau32 = np.float32(tau)
    thr32 = np.float32(v_threshold)
    reset32 = np.float32(v_reset)
    spikes = np.zeros((n_steps, n_neurons), dtype=np.uint8)  # (T, N), one byte per spike here
    for t in range(n_steps):
        leak = v - reset32  # each line is one float32 operation, rounded
        drive = currents[t] - leak
        h = v + drive / tau32
        fired = h >= thr32
        spikes[t] = fired
        v = np.where(fired, reset32, h).astype(np.float32)
    counts = spikes.sum(axis=0, dtype=np.int64)  # (N,)
    return pack_bits(spikes, 1), v, counts
