"""The Rust kernels for numpy arrays and torch tensors.

Layouts, semantics and error classes are in ``docs/kernels.md``; in short:

* a packed row of ``n`` codes of ``b`` bits takes ``ceil(n·b/8)`` bytes, element ``j`` in bits
  ``[j·b, (j+1)·b)`` LSB first, every row starting on a byte boundary;
* weights are ``[N, K]`` (``Linear`` layout) with per-group scales ``[N, ceil(K/g)]``; without
  zero points the codes are signed and ``W = s·q``, with zero points unsigned and ``W = s·(q − z)``;
* binary spikes are bit-packed ``[M, ceil(K/8)]`` (``pack_bits(s01.astype(uint8), 1)``).

Every function takes numpy arrays or CPU/GPU torch tensors (computed on the CPU) and returns
the same kind it was given (torch tensors on the device of the first tensor argument). Inputs
are never copied or converted silently: a wrong dtype raises :class:`~qslm.errors.DTypeError`, a
non-contiguous array :class:`~qslm.errors.LayoutError`. The kernels release the GIL, run on a
rayon thread pool (``RAYON_NUM_THREADS``) and are deterministic.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qslm import _kernels
from qslm.errors import BitWidthError, CodeRangeError, DTypeError, ShapeError

__all__ = [
    "row_bytes",
    "pack_bits",
    "unpack_bits",
    "pack_spikes",
    "lowbit_matmul",
    "spike_matmul",
    "lif_scan",
    "simd_isa",
    "num_threads",
]

simd_isa = _kernels.simd_isa
num_threads = _kernels.num_threads


def row_bytes(n: int, bits: int) -> int:
    """Bytes taken by one packed row of ``n`` codes of ``bits`` bits."""
    if not 1 <= bits <= 8:
        raise BitWidthError(f"bits must be an integer from 1 to 8, got {bits}")
    if n < 0:
        raise ShapeError(f"n must be >= 0, got {n}")
    return (n * bits + 7) // 8


def _is_tensor(a: Any) -> bool:
    return type(a).__module__.startswith("torch")


class _Io:
    """Converts torch tensors to numpy views on the way in and back on the way out."""

    def __init__(self) -> None:
        self.device = None

    def np(self, a: Any, name: str) -> Any:
        if a is None or isinstance(a, np.ndarray):
            return a
        if _is_tensor(a):
            if self.device is None:
                self.device = a.device
            # .numpy() keeps the strides, so a non-contiguous tensor is still reported as such.
            return a.detach().cpu().numpy()
        raise DTypeError(f"{name} must be a numpy array or a torch tensor, got {type(a).__name__}")

    def out(self, a: np.ndarray) -> Any:
        if self.device is None:
            return a
        import torch

        return torch.from_numpy(a).to(self.device)


def pack_bits(values: Any, bits: int) -> Any:
    """Pack codes ``(n,)`` or ``(R, n)``: int8 → signed, uint8 → unsigned. Returns uint8 rows."""
    io = _Io()
    return io.out(_kernels.pack_bits(io.np(values, "values"), bits))


def unpack_bits(packed: Any, bits: int, n: int, signed: bool = True) -> Any:
    """Unpack ``n`` codes per row of ``packed`` (uint8 ``(row_bytes,)`` or ``(R, row_bytes)``)."""
    io = _Io()
    return io.out(_kernels.unpack_bits(io.np(packed, "packed"), bits, n, signed))


def pack_spikes(spikes01: Any) -> Any:
    """Bit-pack a 0/1 spike matrix ``(M, K)`` (any integer or bool dtype) to uint8 ``(M, ceil(K/8))``."""
    io = _Io()
    s = np.asarray(io.np(spikes01, "spikes01"))
    if s.dtype != np.bool_:
        if not (np.issubdtype(s.dtype, np.integer) or np.issubdtype(s.dtype, np.floating)):
            raise DTypeError(f"spikes01 must hold 0/1 values (bool, integer or float), got {s.dtype}")
        if not np.all((s == 0) | (s == 1)):
            raise CodeRangeError("spikes01 must contain only 0 and 1")
    s01 = s != 0
    return io.out(_kernels.pack_bits(np.ascontiguousarray(s01, dtype=np.uint8), 1))


def _all_numpy(*arrays: Any) -> bool:
    """True when no argument needs converting (the common, fastest path)."""
    return all(a is None or type(a) is np.ndarray for a in arrays)


def _group(group_size: int | None, k: int) -> int:
    return max(k, 1) if group_size is None else group_size


def lowbit_matmul(
    x: Any, packed: Any, scales: Any, bits: int, group_size: int | None, zero_points: Any = None
) -> Any:
    """``x · dequant(W)ᵀ``: x float32 ``(M, K)`` → float32 ``(M, N)``. ``group_size=None`` is per-row."""
    if group_size is not None and _all_numpy(x, packed, scales, zero_points):
        return _kernels.lowbit_matmul(x, packed, scales, bits, group_size, zero_points)
    io = _Io()
    xa = io.np(x, "x")
    k = xa.shape[-1] if xa.ndim >= 1 else 0
    y = _kernels.lowbit_matmul(
        xa, io.np(packed, "packed"), io.np(scales, "scales"), bits, _group(group_size, k),
        io.np(zero_points, "zero_points"),
    )
    return io.out(y)


def spike_matmul(
    spikes: Any,
    k: int,
    packed: Any,
    scales: Any,
    bits: int,
    group_size: int | None,
    zero_points: Any = None,
) -> Any:
    """Spike accumulation: bit-packed spikes uint8 ``(M, ceil(k/8))`` × packed W → float32 ``(M, N)``."""
    if group_size is not None and _all_numpy(spikes, packed, scales, zero_points):
        return _kernels.spike_matmul(spikes, k, packed, scales, bits, group_size, zero_points)
    io = _Io()
    y = _kernels.spike_matmul(
        io.np(spikes, "spikes"), k, io.np(packed, "packed"), io.np(scales, "scales"), bits,
        _group(group_size, k), io.np(zero_points, "zero_points"),
    )
    return io.out(y)


def lif_scan(
    currents: Any, tau: float = 2.0, v_threshold: float = 1.0, v_reset: float = 0.0, v0: Any = None
) -> tuple[Any, Any, Any]:
    """LIF over time: currents float32 ``(T, N)`` → (spikes uint8 ``(T, ceil(N/8))``,
    v_final float32 ``(N,)``, spike_counts int64 ``(N,)``)."""
    io = _Io()
    s, v, c = _kernels.lif_scan(io.np(currents, "currents"), tau, v_threshold, v_reset, io.np(v0, "v0"))
    return io.out(s), io.out(v), io.out(c)
