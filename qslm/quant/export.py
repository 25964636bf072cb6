"""The packed model file ``model.qslm.safetensors``: write, read, rebuild.

One safetensors file holds, for every module the plan quantizes (``name`` = module name):

* ``{name}.weight.packed`` — uint8 ``(N, ceil(K·b/8))``: the codes packed by
  ``qslm.kernels.pack_bits`` (docs/kernels.md: LSB first, rows byte-aligned, two's complement
  when the codes are signed);
* ``{name}.weight.scales`` — fp16 ``(1, 1)`` / ``(N, 1)`` / ``(N, ceil(K/g))``: per tensor /
  channel / group scales;
* ``{name}.weight.zero_points`` — fp16, shaped as the scales: asymmetric specs only
  (integer-valued);

and every other state-dict entry (biases, kept weights, LayerNorms, time parameters) under its own
key, in float32 (or the ``kept_dtype`` asked for). The metadata entry ``qslm_packed`` is JSON::

    {"format_version": 1, "plan": QuantPlan.to_dict(), "config": model config dict or null,
     "kept_dtype": "float32",
     "modules": {name: {"kind": "linear"|"embedding", "shape": [N, K], "spec": QuantSpec dict}}}

1-bit symmetric (sign binarization) stores unsigned codes and no zero points: its zero point is
the constant 1/2 (:data:`qslm.quant.primitives.BINARY_ZERO_POINT`). Scales are the fp16 values the
primitives chose, so ``load_packed(...).weights[name].dequantize()`` equals the fake-quant weight
bit for bit, and ``lowbit_matmul(x, *kernel_args())`` computes ``x @ fake_quant(W).T``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from qslm import kernels
from qslm._io import atomic_path
from qslm.errors import (
    ArchitectureError,
    FormatVersionError,
    PackedModelError,
    PlanError,
    QuantizationError,
)
from qslm.quant.apply import planned_modules
from qslm.quant.plan import QuantPlan, QuantSpec
from qslm.quant.primitives import (
    BINARY_ZERO_POINT,
    QuantizedWeight,
    dequantize,
    quantize_weight,
)

__all__ = [
    "METADATA_KEY",
    "PACKED_FILENAME",
    "PACKED_FORMAT_VERSION",
    "SPIKEGPT_FAMILY",
    "PackedModel",
    "PackedWeight",
    "config_family",
    "export_packed",
    "load_packed",
    "model_from_config",
]

PACKED_FORMAT_VERSION = 1
PACKED_FILENAME = "model.qslm.safetensors"
METADATA_KEY = "qslm_packed"
_SUFFIXES = ("packed", "scales", "zero_points")
SPIKEGPT_FAMILY = "spikegpt"  # the family of a stored config without a "family" key
_KEPT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _tensor_key(name: str, part: str) -> str:
    return f"{name}.weight.{part}"


def _scale_shape(spec: QuantSpec, n: int, k: int) -> tuple[int, int]:
    if spec.granularity == "tensor":
        return (1, 1)
    if spec.granularity == "channel":
        return (n, 1)
    return (n, -(-k // spec.group_size))


# ================================================================================================
# Reading: PackedWeight, PackedModel
# ================================================================================================


@dataclass(frozen=True)
class PackedWeight:
    """One quantized weight as stored: packed codes, fp16 scales (and zero points)."""

    name: str  # module name
    kind: str  # "linear" or "embedding"
    shape: tuple[int, int]  # (N, K)
    spec: QuantSpec
    packed: Tensor  # uint8 (N, ceil(K·b/8))
    scales: Tensor  # float16, (1,1) | (N,1) | (N,G)
    zero_points: Tensor | None  # float16 like scales (asymmetric only)

    @property
    def signed(self) -> bool:
        """Signed (two's complement) codes: symmetric with ``b ≥ 2``."""
        return self.spec.symmetric and not self.spec.is_binary

    @property
    def group_size(self) -> int:
        """The kernels' group size (``K`` per tensor and per channel)."""
        return self.spec.kernel_group_size(self.shape[1])

    def codes(self) -> Tensor:
        """Unpacked integer codes ``(N, K)``: int8 when signed, else uint8."""
        return torch.from_numpy(kernels.unpack_bits(self.packed.numpy(), self.spec.bits,
                                                    self.shape[1], signed=self.signed))

    def zero_points_f32(self) -> Tensor | None:
        """float32 zero points as the primitives take them (binarization: all 1/2)."""
        if self.spec.is_binary:
            return torch.full(self.scales.shape, BINARY_ZERO_POINT, dtype=torch.float32)
        return None if self.zero_points is None else self.zero_points.to(torch.float32)

    def quantized(self) -> QuantizedWeight:
        return QuantizedWeight(self.codes(), self.scales.to(torch.float32), self.zero_points_f32(),
                               self.spec)

    def dequantize(self) -> Tensor:
        """float32 ``(N, K)``: equal, bit for bit, to the fake-quant weight."""
        return dequantize(self.codes(), self.scales.to(torch.float32), self.zero_points_f32(),
                          self.spec.group_size)

    def kernel_args(self) -> tuple[np.ndarray, np.ndarray, int, int, np.ndarray | None]:
        """``(packed, scales, bits, group_size, zero_points)`` for ``qslm.kernels.lowbit_matmul``
        / ``spike_matmul``: uint8 ``(N, row_bytes)``, float32 ``(N, G)``, …, float32 or None."""
        n = self.shape[0]
        s = self.scales.to(torch.float32).expand(n, self.scales.shape[1])
        z = self.zero_points_f32()
        return (self.packed.numpy(), np.ascontiguousarray(s.numpy()), self.spec.bits,
                self.group_size,
                None if z is None else np.ascontiguousarray(z.expand(n, z.shape[1]).numpy()))


@dataclass(frozen=True)
class PackedModel:
    """What :func:`load_packed` returns."""

    plan: QuantPlan
    config: Mapping[str, Any] | None  # the model config as exported (config.to_dict())
    weights: Mapping[str, PackedWeight]  # module name → packed weight
    tensors: Mapping[str, Tensor]  # every other state-dict entry, as stored
    format_version: int = PACKED_FORMAT_VERSION

    def state_dict(self) -> dict[str, Tensor]:
        """The fake-quant state dict: dequantized weights and the other tensors, floating
        tensors in float32."""
        sd = {k: v.to(torch.float32) if v.is_floating_point() else v
              for k, v in self.tensors.items()}
        for name, pw in self.weights.items():
            sd[f"{name}.weight"] = pw.dequantize()
        return sd

    @property
    def family(self) -> str | None:
        """The model family of the stored config (:func:`config_family`; None without one)."""
        return None if self.config is None else config_family(self.config)

    def build_model(self, factory: Callable[[Mapping[str, Any] | None], nn.Module] | None = None
                    ) -> nn.Module:
        """The fake-quant model in eval mode: ``factory(config)`` (default: the model of the
        stored config's family — a SpikeGPT or a spike-driven encoder, :func:`model_from_config`)
        with :meth:`state_dict` loaded strictly."""
        if factory is None:
            if self.config is None:
                raise PackedModelError("the packed model stores no config: pass a factory that "
                                       "builds the model")
            model: nn.Module = model_from_config(self.config)
        else:
            model = factory(self.config)
        model.load_state_dict(self.state_dict(), strict=True)
        return model.eval()


def config_family(config: Mapping[str, Any]) -> str:
    """The model family a stored config names, as :mod:`qslm.models.checkpoint` reads it:
    :data:`SPIKEGPT_FAMILY` when it names none (every SpikeGPT config) or ``"spikegpt"``,
    ``"spike-driven-encoder"`` (:data:`qslm.models.sdt.FAMILY`) for an encoder; any other family
    is an :class:`~qslm.errors.ArchitectureError`."""
    from qslm.models.sdt import FAMILY as SDT_FAMILY

    family = config.get("family", SPIKEGPT_FAMILY)
    if family not in (SPIKEGPT_FAMILY, SDT_FAMILY):
        raise ArchitectureError(f"the stored config names an unknown model family {family!r}; "
                                f"known: {SPIKEGPT_FAMILY}, {SDT_FAMILY}")
    return family


def model_from_config(config: Mapping[str, Any]) -> nn.Module:
    """A freshly initialised model of the stored config's family (:func:`config_family`): a
    :class:`~qslm.models.SpikeDrivenEncoder` or a :class:`~qslm.models.SpikeGPT`."""
    from qslm.models import SDTConfig, SpikeDrivenEncoder, SpikeGPT, SpikeGPTConfig

    if config_family(config) == SPIKEGPT_FAMILY:
        return SpikeGPT(SpikeGPTConfig.from_dict({k: v for k, v in config.items()
                                                  if k != "family"}))
    return SpikeDrivenEncoder(SDTConfig.from_dict(config))


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (no iteration)
    except Exception as exc:  # safetensors raises SafetensorError and others
        text = " ".join(str(exc).split())[:200]
        raise PackedModelError(f"{path}: not a readable safetensors file (truncated or "
                               f"corrupt?): {type(exc).__name__}: {text}") from None
    return tensors, meta


def _take(tensors: dict[str, Tensor], key: str, dtype: torch.dtype, shape: tuple[int, int],
          where: str) -> Tensor:
    t = tensors.pop(key, None)
    if t is None:
        raise PackedModelError(f"{where}: missing tensor {key!r} (dtype {dtype}, shape {shape})")
    if t.dtype != dtype or tuple(t.shape) != tuple(shape):
        raise PackedModelError(f"{where}: tensor {key!r} is {t.dtype} {tuple(t.shape)}, expected "
                               f"{dtype} {tuple(shape)}")
    return t


def load_packed(path: str | os.PathLike[str]) -> PackedModel:
    """Read a file written by :func:`export_packed`.

    Raises :class:`~qslm.errors.PackedModelError` for a missing, truncated or corrupt file, one
    that is not a qslm packed model, or tensors that disagree with the stored plan (the message
    names the key), and :class:`~qslm.errors.FormatVersionError` for another format version.
    """
    path = Path(path)
    if path.is_dir():
        path = path / PACKED_FILENAME
    if not path.is_file():
        raise PackedModelError(f"{path}: no such packed model file")
    where = str(path)
    tensors, meta = _read_safetensors(path)
    text = meta.get(METADATA_KEY)
    if text is None:
        raise PackedModelError(f"{where}: not a qslm packed model (no {METADATA_KEY!r} metadata)")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PackedModelError(f"{where}: metadata {METADATA_KEY!r} is not valid JSON: "
                               f"{exc}") from None
    if not isinstance(doc, dict):
        raise PackedModelError(f"{where}: metadata {METADATA_KEY!r} must be a JSON object")
    version = doc.get("format_version")
    if version != PACKED_FORMAT_VERSION:
        raise FormatVersionError(f"{where}: packed model format_version must be "
                                 f"{PACKED_FORMAT_VERSION}, got {version!r}")
    missing = [k for k in ("plan", "config", "modules") if k not in doc]
    if missing:
        raise PackedModelError(f"{where}: metadata {METADATA_KEY!r} lacks {', '.join(missing)}")
    try:
        plan = QuantPlan.from_dict(doc["plan"], f"{where}: plan")
    except PlanError as exc:
        raise PackedModelError(str(exc)) from None
    mods = doc["modules"]
    if not isinstance(mods, dict):
        raise PackedModelError(f"{where}: metadata 'modules' must be an object")
    weights: dict[str, PackedWeight] = {}
    for name, info in mods.items():
        try:
            kind, shape = info["kind"], info["shape"]
            spec = QuantSpec.from_dict(info["spec"], f"modules[{name!r}].spec")
            n, k = (int(v) for v in shape)
        except (KeyError, TypeError, ValueError) as exc:  # PlanError is a ValueError
            raise PackedModelError(f"{where}: bad metadata for module {name!r}: {exc}") from None
        sshape = _scale_shape(spec, n, k)
        packed = _take(tensors, _tensor_key(name, "packed"), torch.uint8,
                       (n, kernels.row_bytes(k, spec.bits)), where)
        scales = _take(tensors, _tensor_key(name, "scales"), torch.float16, sshape, where)
        zero_points = None
        if spec.stores_zero_points:
            zero_points = _take(tensors, _tensor_key(name, "zero_points"), torch.float16, sshape,
                                where)
        weights[name] = PackedWeight(name, kind, (n, k), spec, packed, scales, zero_points)
    config = doc["config"]
    return PackedModel(plan, None if config is None else MappingProxyType(dict(config)),
                       MappingProxyType(weights), MappingProxyType(tensors), version)


# ================================================================================================
# Writing
# ================================================================================================


def _config_dict(model: nn.Module, config: Any) -> dict[str, Any] | None:
    if config is None:
        config = getattr(model, "config", None)
        if config is None:
            return None
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise QuantizationError(f"config must be a mapping or have to_dict(), got "
                                f"{type(config).__name__}")
    return dict(config)


def export_packed(model: nn.Module, plan: QuantPlan, path: str | os.PathLike[str], *,
                  config: Any = None, kept_dtype: torch.dtype = torch.float32,
                  strict: bool = True) -> Path:
    """Write the packed model (see the module docstring) atomically; returns the file path.

    ``path``: a file, or an existing directory (then ``PACKED_FILENAME`` inside it).
    ``config``: stored as JSON (default ``model.config.to_dict()`` when the model has one).
    ``kept_dtype``: float32, float16 or bfloat16 for the non-quantized floating tensors.
    """
    from safetensors.torch import save_file

    dtype_name = next((k for k, v in _KEPT_DTYPES.items() if v == kept_dtype), None)
    if dtype_name is None:
        raise QuantizationError(f"kept_dtype must be one of {', '.join(_KEPT_DTYPES)}, "
                                f"got {kept_dtype}")
    cfg = _config_dict(model, config)
    leaves, specs = planned_modules(model, plan, strict)
    tensors: dict[str, Tensor] = {}
    modules_meta: dict[str, Any] = {}
    quantized_keys: set[str] = set()
    with torch.no_grad():
        for name, spec in specs.items():
            module = leaves[name]
            qw = quantize_weight(module.weight, spec)
            codes = qw.codes.cpu().contiguous().numpy()
            tensors[_tensor_key(name, "packed")] = torch.from_numpy(kernels.pack_bits(codes,
                                                                                      spec.bits))
            tensors[_tensor_key(name, "scales")] = qw.scales.to("cpu", torch.float16).contiguous()
            if spec.stores_zero_points:
                tensors[_tensor_key(name, "zero_points")] = \
                    qw.zero_points.to("cpu", torch.float16).contiguous()
            modules_meta[name] = {"kind": "embedding" if isinstance(module, nn.Embedding)
                                  else "linear", "shape": list(qw.shape), "spec": spec.to_dict()}
            quantized_keys.add(f"{name}.weight")
    for key, value in model.state_dict().items():
        if key in quantized_keys:
            continue
        if key in tensors:
            raise QuantizationError(f"state-dict key {key!r} collides with a packed tensor name")
        v = value.detach().to("cpu")
        if v.is_floating_point():
            v = v.to(kept_dtype)
        tensors[key] = v.contiguous().clone()  # clone: safetensors refuses shared storage
    doc = {"format_version": PACKED_FORMAT_VERSION, "plan": plan.to_dict(), "config": cfg,
           "kept_dtype": dtype_name, "modules": modules_meta}
    metadata = {"format": "pt", METADATA_KEY: json.dumps(doc)}

    path = Path(path)
    if path.is_dir():
        path = path / PACKED_FILENAME
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return path
