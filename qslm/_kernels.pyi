"""Type stub of the Rust extension ``qslm._kernels`` (see docs/kernels.md)."""

import numpy as np
import numpy.typing as npt

def pack_bits(values: npt.NDArray[np.int8] | npt.NDArray[np.uint8], bits: int) -> npt.NDArray[np.uint8]:
    """Pack codes ``(n,)`` or ``(R, n)``; int8 → signed two's complement, uint8 → unsigned."""

def unpack_bits(
    packed: npt.NDArray[np.uint8], bits: int, n: int, signed: bool = True
) -> npt.NDArray[np.int8] | npt.NDArray[np.uint8]:
    """Unpack ``n`` codes per row; int8 if ``signed`` else uint8."""

def lowbit_matmul(
    x: npt.NDArray[np.float32],
    packed: npt.NDArray[np.uint8],
    scales: npt.NDArray[np.float32],
    bits: int,
    group_size: int,
    zero_points: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.float32]:
    """``x (M, K) · dequant(W (N, K))ᵀ → (M, N)``."""

def spike_matmul(
    spikes: npt.NDArray[np.uint8],
    k: int,
    packed: npt.NDArray[np.uint8],
    scales: npt.NDArray[np.float32],
    bits: int,
    group_size: int,
    zero_points: npt.NDArray[np.float32] | None = None,
) -> npt.NDArray[np.float32]:
    """Bit-packed spikes ``(M, ceil(k/8))`` × packed ``W (N, k)`` → ``(M, N)``, accumulate only."""

def lif_scan(
    currents: npt.NDArray[np.float32],
    tau: float = 2.0,
    v_threshold: float = 1.0,
    v_reset: float = 0.0,
    v0: npt.NDArray[np.float32] | None = None,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """``(T, N)`` currents → (spikes ``(T, ceil(N/8))``, v_final ``(N,)``, spike_counts ``(N,)``)."""

def simd_isa() -> str:
    """The instruction set in use: "avx512", "avx2" or "scalar"."""

def num_threads() -> int:
    """Threads of the kernels' rayon pool."""
