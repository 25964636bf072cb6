"""The runtime's modules: packed Linear and Embedding layers and the LIF neuron on the Rust kernels.

Each module holds what the kernels read and nothing more — a packed weight is its uint8 codes
``(N, ceil(K·b/8))``, float32 scales ``(N, G)`` (and zero points), never a float32 ``(N, K)``
matrix:

* :class:`PackedLinear` — ``y = x · dequant(W)ᵀ (+ bias)`` with ``qslm.kernels.lowbit_matmul`` for
  real-valued inputs, or ``spike_matmul`` (accumulate only) when the module is declared a
  spike-input module and its input is exactly 0/1;
* :class:`PackedEmbedding` — decodes only the rows looked up (``unpack_bits`` on the selected
  packed rows × scales, minus zero points), bit for bit the fake-quant rows;
* :class:`KernelLIF` — the LIF neuron (multi-step and single-step) on ``qslm.kernels.lif_scan``,
  bit-identical to :func:`qslm.models.spikegpt.lif_multistep` / ``lif_step`` in float32.

Every packed buffer is registered as a non-persistent buffer, so ``state_dict()`` holds only the
non-quantized tensors, and ``module.buffers()`` accounts for the packed bytes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from qslm import kernels
from qslm.errors import ShapeError
from qslm.models.spikegpt import LIFNode
from qslm.quant.export import PackedWeight
from qslm.quant.plan import QuantSpec

__all__ = ["KernelLIF", "PackedEmbedding", "PackedLinear", "packed_nbytes"]


def _kernel_buffers(pw: PackedWeight) -> tuple[Tensor, Tensor, Tensor | None]:
    """(packed uint8 (N, row_bytes), scales f32 (N, G), zero points f32 (N, G) or None) as
    contiguous CPU tensors of their own: the packed codes are copied out of the file's memory
    map, so the model neither keeps the file mapped (its fp16 scales resident) nor depends on
    the file staying unchanged."""
    packed, scales, _bits, _g, zp = pw.kernel_args()
    return (torch.from_numpy(np.array(packed, dtype=np.uint8, order="C", copy=True)),
            torch.from_numpy(np.array(scales, dtype=np.float32, order="C", copy=True)),
            None if zp is None else torch.from_numpy(np.array(zp, dtype=np.float32, order="C",
                                                              copy=True)))


class _PackedBase(nn.Module):
    """Shared storage of a packed weight (the kernels' arguments)."""

    def _init_packed(self, pw: PackedWeight) -> None:
        self.spec: QuantSpec = pw.spec
        self.bits = int(pw.spec.bits)
        self.group_size = int(pw.group_size)
        self.signed = bool(pw.signed)
        packed, scales, zp = _kernel_buffers(pw)
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("scales", scales, persistent=False)
        self.register_buffer("zero_points", zp, persistent=False)

    def _args(self) -> tuple[np.ndarray, np.ndarray, int, int, np.ndarray | None]:
        zp = self.zero_points
        return (self.packed.numpy(), self.scales.numpy(), self.bits, self.group_size,
                None if zp is None else zp.numpy())

    def packed_nbytes(self) -> int:
        """Bytes of the packed codes, scales and zero points held by this module."""
        return sum(b.numel() * b.element_size() for b in (self.packed, self.scales,
                                                          self.zero_points) if b is not None)


class PackedLinear(_PackedBase):
    """``nn.Linear`` on packed weights: input ``(..., K)`` → ``(..., N)`` float32.

    ``spike_input``: the module's input is binary spikes (the model's ``spike_input_modules()``);
    then an input that is exactly 0/1 goes through ``spike_matmul`` (bit-packed spikes,
    accumulate only), anything else through ``lowbit_matmul``.
    """

    def __init__(self, pw: PackedWeight, bias: bool = False, spike_input: bool = False) -> None:
        super().__init__()
        self.out_features, self.in_features = (int(v) for v in pw.shape)
        self.spike_input = bool(spike_input)
        self._init_packed(pw)
        # Filled by load_state_dict(assign=True) with the stored bias.
        self.bias = nn.Parameter(torch.empty(self.out_features, device="meta"),
                                 requires_grad=False) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        K, N = self.in_features, self.out_features
        if x.shape[-1] != K:
            raise ShapeError(f"input has {x.shape[-1]} features, the packed weight takes {K}")
        lead = x.shape[:-1]
        x2 = x.detach().reshape(-1, K)
        if x2.dtype != torch.float32:
            x2 = x2.to(torch.float32)
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        packed, scales, bits, g, zp = self._args()
        if self.spike_input and bool(((x2 == 0) | (x2 == 1)).all()):
            spikes = kernels.pack_bits(x2.to(torch.uint8).numpy(), 1)
            y = kernels.spike_matmul(spikes, K, packed, scales, bits, g, zp)
        else:
            y = kernels.lowbit_matmul(x2.numpy(), packed, scales, bits, g, zp)
        out = torch.from_numpy(y)
        if self.bias is not None:
            out += self.bias
        return out.view(*lead, N)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"spec={self.spec}, bias={self.bias is not None}, spike_input={self.spike_input}")


class PackedEmbedding(_PackedBase):
    """``nn.Embedding`` on a packed ``(V, C)`` table: only the rows looked up are decoded.

    A row is ``s·q`` (signed codes) or ``s·(q − z)`` (with zero points; ``z = 1/2`` for sign
    binarization), computed in float32 exactly as :func:`qslm.quant.primitives.dequantize`.
    """

    def __init__(self, pw: PackedWeight) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = (int(v) for v in pw.shape)
        self._init_packed(pw)

    def forward(self, idx: Tensor) -> Tensor:
        flat = idx.detach().reshape(-1).to(torch.int64)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_embeddings):
            raise ShapeError(f"token ids must be in [0, {self.num_embeddings}), got values in "
                             f"[{int(flat.min())}, {int(flat.max())}]")
        C = self.embedding_dim
        rows = self.packed.numpy()[flat.numpy()]  # (n, row_bytes), a copy of the rows only
        q = torch.from_numpy(kernels.unpack_bits(rows, self.bits, C, signed=self.signed))
        s = self.scales[flat]  # (n, G)
        G = s.shape[1]
        if G == 1:
            s = s.expand(-1, C)
        else:
            s = s.repeat_interleave(self.group_size, dim=1)[:, :C]
        qf = q.to(torch.float32)
        if self.zero_points is None:
            e = s * qf
        else:
            z = self.zero_points[flat]
            z = z.expand(-1, C) if G == 1 else z.repeat_interleave(self.group_size, dim=1)[:, :C]
            e = s * (qf - z)
        return e.view(*idx.shape, C)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, spec={self.spec}"


class KernelLIF(LIFNode):
    """The LIF neuron layer on ``qslm.kernels.lif_scan`` (same parameters, taps and recorder as
    :class:`~qslm.models.spikegpt.LIFNode`; spikes and membranes bit-identical in float32)."""

    def _v0(self, n: int) -> np.ndarray | None:
        return None if self.v_reset == 0.0 else np.full(n, self.v_reset, dtype=np.float32)

    def forward(self, x: Tensor) -> Tensor:  # (B, T, C) current → (B, T, C) spikes
        B, T, C = x.shape
        n = B * C
        cur = x.detach().to(torch.float32).transpose(0, 1).reshape(T, n)
        if not cur.is_contiguous():
            cur = cur.contiguous()
        packed, _v, _counts = kernels.lif_scan(cur.numpy(), self.tau, self.v_threshold,
                                               self.v_reset, self._v0(n))
        s01 = torch.from_numpy(kernels.unpack_bits(packed, 1, n, signed=False))  # (T, B·C)
        s = s01.view(T, B, C).transpose(0, 1).to(x.dtype)
        if self.recorder is not None:
            self.recorder.add(self.tap_name, s)
        return s

    def step(self, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:  # (B, C), (B, C) fp32
        B, C = x.shape
        n = B * C
        cur = x.detach().to(torch.float32).reshape(1, n)
        if not cur.is_contiguous():
            cur = cur.contiguous()
        v0 = v.detach().to(torch.float32).reshape(n)
        if not v0.is_contiguous():
            v0 = v0.contiguous()
        packed, v_new, _counts = kernels.lif_scan(cur.numpy(), self.tau, self.v_threshold,
                                                  self.v_reset, v0.numpy())
        s = torch.from_numpy(kernels.unpack_bits(packed, 1, n, signed=False)).view(B, C)
        s = s.to(torch.float32)
        if self.recorder is not None:
            self.recorder.add(self.tap_name, s[:, None])
        return s.to(x.dtype), torch.from_numpy(v_new).view(B, C)


def packed_nbytes(module: nn.Module) -> int:
    """Bytes of packed weights (codes, scales, zero points) held by ``module`` and its children."""
    return sum(m.packed_nbytes() for m in module.modules() if isinstance(m, _PackedBase))
