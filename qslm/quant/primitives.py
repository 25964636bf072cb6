"""Quantization primitives on tensors: ``choose_qparams``, ``quantize``, ``dequantize``.

Nothing here knows about modules; :mod:`qslm.quant.apply` and :mod:`qslm.quant.export` call
these functions on weight matrices. The semantics are those of the kernels (docs/kernels.md):

* weights are ``(N, K)`` (out × in; an embedding's ``(V, C)`` is a row per token);
* scales (and zero points) are ``(1, 1)`` per tensor, ``(N, 1)`` per channel, or ``(N, G)`` per
  group, ``G = ceil(K/g)``, group ``gi`` covering columns ``[gi·g, min((gi+1)·g, K))`` — the last
  group may be partial;
* **symmetric** → signed codes (int8) in ``[−2^(b−1), 2^(b−1) − 1]``, ``W = s·q``;
* **asymmetric** → unsigned codes (uint8) in ``[0, 2^b − 1]`` and zero points, ``W = s·(q − z)``.

Scale rules (computed in float32, then rounded *up* to the next fp16 value, so that the range
still covers every weight; the rounded value is used for everything afterwards, so fake-quant,
the packed export and the kernels agree bit for bit on codes and scales):

* symmetric, ``b ≥ 2``: ``s = max|w| / (2^(b−1) − 1)`` — the range is ±max|w| and the most
  negative code ``−2^(b−1)`` is left unused, so positive and negative weights get the same
  resolution (the usual "restricted range" of int8 symmetric schemes);
* symmetric, ``b = 1``: **sign binarization** (XNOR-Net / BinaryConnect): ``W = α·sign(w)`` with
  ``α = mean|w|`` over the group (the L2-optimal α for sign codes). Signed 1-bit codes are
  ``{−1, 0}``, which cannot express ``±α``; so binarization uses unsigned codes ``{0, 1}`` with the
  constant zero point ``z = 1/2`` and scale ``s = 2α``: ``W = s·(q − 1/2) = ±α``, exactly what the
  kernels compute when called with zero points of 0.5. The zero point is implied by the spec
  and never stored. Code 1 for ``w > 0``, code 0 for ``w < 0`` and for ``w = 0`` (the nearest
  level; the tie at 0 goes to ``−α`` by round-half-to-even);
* asymmetric: ``lo = min(min w, 0)``, ``hi = max(max w, 0)``, ``s = (hi − lo) / (2^b − 1)``,
  ``z = round(−lo / s)`` (integer-valued, clamped to the code range, stored as float like the
  kernels' f32 zero points); 0 is always exactly representable;
* every scale is at least :data:`SCALE_MIN` (the smallest positive fp16), so all-zero rows or
  groups give ``s = SCALE_MIN`` and codes 0 (or ``z``) — never NaN or inf.

Codes: ``q = clamp(round(w·(1/s)) + z, qmin, qmax)`` with round-half-to-even and ``1/s`` in
float32 — exactly the arithmetic of ``torch.fake_quantize_per_{tensor,channel}_affine`` for an
integer ``z``. For the half-integer ``z`` of binarization the rule is
``round(w·(1/s) + frac(z)) + floor(z)``: the nearest level (the same as above for integer ``z``).

Error budget: every weight lies inside the representable range, so ``|w − fake_quant(w)| ≤ s/2``
(up to float32 rounding of ``w·(1/s)`` and of the product); for binarization the range is
``[−s, s]`` and the bound holds there.

**MSE clipping** (``clip="mse"``, b ≥ 2): the range above is multiplied by each factor of
:data:`CLIP_GRID` (1 down to 0.5) — ``max|w|`` for symmetric, ``lo`` and ``hi`` for asymmetric —
the scale (and zero point) derived by the same rules, and each row or group keeps the factor with
the smallest ``Σ (w − fake_quant(w))²`` (ties: the widest range). Outliers are then clipped to
the range ends, trading their error for finer steps everywhere else; the bound ``s/2`` holds for
the weights inside the range. Factor 1 is in the grid, so the error is never above min/max's.
Binarization's α is already the L2-optimal scale and ignores ``clip``.
"""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np
import torch
from torch import Tensor

from qslm.errors import BitWidthError, DTypeError, QuantizationError, ShapeError
from qslm.quant.plan import GRANULARITIES, MAX_BITS, MIN_BITS, QuantSpec

__all__ = [
    "BINARY_ZERO_POINT",
    "CLIP_GRID",
    "FP16_MAX",
    "SCALE_MIN",
    "QuantizedWeight",
    "choose_qparams",
    "code_range",
    "dequantize",
    "expand_qparams",
    "fake_quantize",
    "quantize",
    "quantize_weight",
]

SCALE_MIN = 2.0**-24  # smallest positive fp16 (subnormal): the floor of every scale
CLIP_GRID = tuple(1.0 - 0.025 * i for i in range(21))  # range factors tried by clip="mse"
FP16_MAX = 65504.0  # largest finite fp16: a larger scale is an error
BINARY_ZERO_POINT = 0.5  # implicit zero point of 1-bit symmetric (sign) quantization


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or \
            not MIN_BITS <= bits <= MAX_BITS:
        raise BitWidthError(f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}")


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    """(qmin, qmax): ``[−2^(b−1), 2^(b−1) − 1]`` signed, ``[0, 2^b − 1]`` unsigned."""
    _check_bits(bits)
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _check_weight(w: Tensor, name: str = "w") -> Tensor:
    """2-D, non-empty, finite floating tensor → its float32 value (a view when already fp32)."""
    if not isinstance(w, Tensor):
        raise DTypeError(f"{name} must be a torch tensor, got {type(w).__name__}")
    if not w.is_floating_point():
        raise DTypeError(f"{name} must be a floating-point tensor, got {w.dtype}")
    if w.ndim != 2:
        raise ShapeError(f"{name} must be 2-D (out, in), got shape {tuple(w.shape)}")
    if w.shape[0] == 0 or w.shape[1] == 0:
        raise ShapeError(f"{name} must be non-empty, got shape {tuple(w.shape)}")
    wf = w.detach().to(torch.float32)
    if not torch.isfinite(wf).all():
        raise QuantizationError(f"{name} holds {int((~torch.isfinite(wf)).sum())} non-finite "
                                "value(s); cannot quantize NaN or inf")
    return wf


def _check_granularity(granularity: str, group_size: int | None) -> None:
    if granularity not in GRANULARITIES:
        raise QuantizationError(f"granularity must be one of {', '.join(GRANULARITIES)}, "
                                f"got {granularity!r}")
    if granularity == "group":
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise QuantizationError(f"group_size must be an integer >= 1 with granularity "
                                    f"'group', got {group_size!r}")
    elif group_size is not None:
        raise QuantizationError(f"group_size is only used with granularity 'group', got "
                                f"group_size={group_size!r} with granularity {granularity!r}")


def _round_up_fp16(s: Tensor) -> Tensor:
    """Positive float32 scales → the smallest fp16 value ≥ each, as float32."""
    too_big = s > FP16_MAX
    if too_big.any():
        raise QuantizationError(f"a scale of {float(s.max()):.6g} exceeds the fp16 range "
                                f"({FP16_MAX}): the weights are too large for fp16 scales")
    h = s.to(torch.float16)  # round to nearest
    below = h.to(torch.float32) < s
    if below.any():  # positive fp16: the next value up is the next bit pattern
        h = torch.where(below, (h.view(torch.int16) + 1).view(torch.float16), h)
        if torch.isinf(h).any():
            raise QuantizationError(f"a scale of {float(s.max()):.6g} rounds up past the fp16 "
                                    f"range ({FP16_MAX})")
    return h.to(torch.float32)


def _grouped(wf: Tensor, granularity: str, group_size: int | None) -> tuple[Tensor, Tensor]:
    """(values (R, G, g) zero-padded, count (R, G) of real values) for the scale statistics."""
    n, k = wf.shape
    if granularity == "tensor":
        return wf.reshape(1, 1, n * k), torch.full((1, 1), float(n * k), device=wf.device)
    if granularity == "channel":
        return wf.reshape(n, 1, k), torch.full((n, 1), float(k), device=wf.device)
    g = group_size
    n_groups = -(-k // g)
    pad = n_groups * g - k
    x = torch.nn.functional.pad(wf, (0, pad)) if pad else wf
    count = torch.full((n, n_groups), float(g), device=wf.device)
    count[:, -1] = float(k - (n_groups - 1) * g)
    return x.reshape(n, n_groups, g), count


def _range_qparams(lo: Tensor, hi: Tensor, amax: Tensor, bits: int, symmetric: bool
                   ) -> tuple[Tensor, Tensor | None]:
    """Scale (and zero point) covering ``[lo, hi]`` (asymmetric) or ``±amax`` (symmetric)."""
    if symmetric:
        _, qmax = code_range(bits, signed=True)
        return _round_up_fp16(torch.clamp(amax / qmax, min=SCALE_MIN)), None
    _, qmax = code_range(bits, signed=False)
    s = _round_up_fp16(torch.clamp((hi - lo) / qmax, min=SCALE_MIN))
    return s, torch.clamp(torch.round(-lo / s), 0, qmax)


def _group_sq_error(x: Tensor, s: Tensor, z: Tensor | None, bits: int) -> Tensor:
    """Σ over each group of (x − fake_quant(x))² for per-group ``s``/``z`` (R, G); the zero
    padding of a partial group is exactly representable, so it adds nothing."""
    inv = 1.0 / s[..., None]
    if z is None:
        qmin, qmax = code_range(bits, signed=True)
        deq = torch.clamp(torch.round(x * inv), qmin, qmax) * s[..., None]
    else:
        qmin, qmax = code_range(bits, signed=False)
        zz = z[..., None]
        deq = (torch.clamp(torch.round(x * inv) + zz, qmin, qmax) - zz) * s[..., None]
    return ((x - deq) ** 2).sum(-1)


def choose_qparams(w: Tensor, bits: int, symmetric: bool = True, granularity: str = "channel",
                   group_size: int | None = None, clip: str = "minmax"
                   ) -> tuple[Tensor, Tensor | None]:
    """Scales (and zero points) for a ``(N, K)`` weight; see the module docstring for the rules.

    Returns ``(scales, zero_points)``, float32 tensors on ``w``'s device of shape ``(1, 1)``
    (tensor), ``(N, 1)`` (channel) or ``(N, ceil(K/g))`` (group); every scale is an fp16 value.
    ``zero_points`` is None for symmetric ``b ≥ 2``, integer-valued for asymmetric, and all
    :data:`BINARY_ZERO_POINT` for 1-bit symmetric.
    """
    _check_bits(bits)
    if not isinstance(symmetric, bool):
        raise QuantizationError(f"symmetric must be True or False, got {symmetric!r}")
    _check_granularity(granularity, group_size)
    if clip not in ("minmax", "mse"):
        raise QuantizationError(f"clip must be 'minmax' or 'mse', got {clip!r}")
    wf = _check_weight(w)
    x, count = _grouped(wf, granularity, group_size)  # (R, G, g), (R, G)
    if symmetric and bits == 1:
        alpha = x.abs().sum(-1) / count  # zero padding adds nothing to the sum
        s = _round_up_fp16(torch.clamp(2.0 * alpha, min=SCALE_MIN))
        return s, torch.full_like(s, BINARY_ZERO_POINT)
    amax = x.abs().amax(-1)
    lo = torch.clamp(x.amin(-1), max=0.0)  # zero padding cannot move lo or hi: 0 is included
    hi = torch.clamp(x.amax(-1), min=0.0)
    s, z = _range_qparams(lo, hi, amax, bits, symmetric)
    if clip == "minmax":
        return s, z
    best = _group_sq_error(x, s, z, bits)
    for f in CLIP_GRID[1:]:
        s_f, z_f = _range_qparams(lo * f, hi * f, amax * f, bits, symmetric)
        err = _group_sq_error(x, s_f, z_f, bits)
        better = err < best
        best = torch.where(better, err, best)
        s = torch.where(better, s_f, s)
        if z is not None:
            assert z_f is not None
            z = torch.where(better, z_f, z)
    return s, z


def expand_qparams(p: Tensor, shape: tuple[int, int], group_size: int | None = None,
                   name: str = "scales") -> Tensor:
    """Broadcast ``(1, 1)``, ``(N, 1)`` or ``(N, G)`` parameters to the ``(N, K)`` weight."""
    n, k = shape
    if p.ndim != 2:
        raise ShapeError(f"{name} must be 2-D (1, 1), (N, 1) or (N, G), got shape {tuple(p.shape)}")
    rows, groups = p.shape
    if rows not in (1, n):
        raise ShapeError(f"{name} has {rows} rows, expected 1 or N={n}")
    if groups == 1:
        return p.expand(n, k)
    if group_size is None:
        raise ShapeError(f"{name} has {groups} groups per row: group_size is needed to map them "
                         "onto the columns")
    if groups != -(-k // group_size):
        raise ShapeError(f"{name} has {groups} groups per row, expected ceil(K/g) = "
                         f"ceil({k}/{group_size}) = {-(-k // group_size)}")
    return p.expand(n, groups).repeat_interleave(group_size, dim=1)[:, :k]


def _check_qparams(scales: Tensor, zero_points: Tensor | None) -> None:
    for name, t in (("scales", scales), ("zero_points", zero_points)):
        if t is not None and (not isinstance(t, Tensor) or not t.is_floating_point()):
            raise DTypeError(f"{name} must be a floating-point torch tensor")
    if not (torch.isfinite(scales).all() and (scales > 0).all()):
        raise QuantizationError("scales must be finite and > 0")
    if zero_points is not None and zero_points.shape != scales.shape:
        raise ShapeError(f"zero_points shape {tuple(zero_points.shape)} differs from scales shape "
                         f"{tuple(scales.shape)}")


def quantize(w: Tensor, scales: Tensor, zero_points: Tensor | None, bits: int,
             group_size: int | None = None) -> Tensor:
    """Integer codes of ``w`` ``(N, K)``: int8 (signed, no zero points) or uint8 (with them).

    ``q = clamp(round(w·(1/s)) + z, qmin, qmax)`` in float32 with round-half-to-even (for a
    non-integer ``z``: ``round(w·(1/s) + frac(z)) + floor(z)``). ``group_size`` is needed when the
    parameters have more than one group per row.
    """
    _check_bits(bits)
    wf = _check_weight(w)
    _check_qparams(scales, zero_points)
    shape = tuple(wf.shape)
    inv = 1.0 / expand_qparams(scales.to(torch.float32), shape, group_size)
    if zero_points is None:
        qmin, qmax = code_range(bits, signed=True)
        return torch.clamp(torch.round(wf * inv), qmin, qmax).to(torch.int8)
    qmin, qmax = code_range(bits, signed=False)
    z = expand_qparams(zero_points.to(torch.float32), shape, group_size, "zero_points")
    zi = torch.floor(z)
    q = torch.round(wf * inv + (z - zi)) + zi
    return torch.clamp(q, qmin, qmax).to(torch.uint8)


def dequantize(codes: Tensor, scales: Tensor, zero_points: Tensor | None = None,
               group_size: int | None = None) -> Tensor:
    """float32 ``(N, K)``: ``s·q`` (int8 codes) or ``s·(q − z)`` (uint8 codes with zero points)."""
    if not isinstance(codes, Tensor) or codes.ndim != 2:
        raise ShapeError("codes must be a 2-D torch tensor (N, K)")
    expected = torch.int8 if zero_points is None else torch.uint8
    if codes.dtype != expected:
        raise DTypeError(f"codes must be {expected} {'without' if zero_points is None else 'with'}"
                         f" zero points (signed codes are symmetric), got {codes.dtype}")
    _check_qparams(scales, zero_points)
    shape = tuple(codes.shape)
    s = expand_qparams(scales.to(torch.float32), shape, group_size)
    q = codes.to(torch.float32)
    if zero_points is None:
        return s * q
    z = expand_qparams(zero_points.to(torch.float32), shape, group_size, "zero_points")
    return s * (q - z)


@dataclass(frozen=True)
class QuantizedWeight:
    """A weight quantized by a :class:`QuantSpec`: codes plus the parameters that decode them."""

    codes: Tensor  # (N, K) int8 (symmetric b ≥ 2) or uint8 (asymmetric, binary)
    scales: Tensor  # float32 fp16-valued (1, 1) | (N, 1) | (N, G)
    zero_points: Tensor | None  # same shape as scales; None for symmetric b ≥ 2
    spec: QuantSpec

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.codes.shape[0]), int(self.codes.shape[1])

    @property
    def group_size(self) -> int:
        """The kernels' group size (``K`` for per-tensor and per-channel)."""
        return self.spec.kernel_group_size(self.shape[1])

    @property
    def signed(self) -> bool:
        return self.zero_points is None

    def dequantize(self) -> Tensor:
        return dequantize(self.codes, self.scales, self.zero_points, self.spec.group_size)

    def kernel_scales(self) -> Tensor:
        """float32 ``(N, G)`` scales as the kernels take them (per tensor: repeated per row)."""
        return self.scales.expand(self.shape[0], self.scales.shape[1]).contiguous()

    def kernel_zero_points(self) -> Tensor | None:
        if self.zero_points is None:
            return None
        return self.zero_points.expand(self.shape[0], self.zero_points.shape[1]).contiguous()


def quantize_weight(w: Tensor, spec: QuantSpec) -> QuantizedWeight:
    """Choose parameters and quantize ``w`` ``(N, K)`` as ``spec`` says."""
    if not isinstance(spec, QuantSpec):
        raise QuantizationError(f"spec must be a QuantSpec, got {type(spec).__name__}")
    scales, zero_points = choose_qparams(w, spec.bits, spec.symmetric, spec.granularity,
                                         spec.group_size, spec.clip)
    codes = quantize(w, scales, zero_points, spec.bits, spec.group_size)
    return QuantizedWeight(codes, scales, zero_points, spec)


def fake_quantize(w: Tensor, spec: QuantSpec) -> Tensor:
    """``dequantize(quantize(w))`` with ``spec``'s parameters, in ``w``'s dtype and device."""
    return quantize_weight(w, spec).dequantize().to(w.dtype)
