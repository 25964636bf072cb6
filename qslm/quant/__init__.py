"""Quantization: specs and plans, tensor primitives, fake-quant for evaluation, packed export.

* :mod:`qslm.quant.plan` — :class:`QuantSpec`, :class:`QuantPlan` (JSON, hwmodel format),
  :func:`footprint` (bytes by component, memory reduction vs fp32);
* :mod:`qslm.quant.primitives` — ``choose_qparams`` / ``quantize`` / ``dequantize`` /
  ``fake_quantize`` on tensors (the scale rules and the 1-bit scheme are documented there);
* :mod:`qslm.quant.apply` — :func:`apply_fake_quant` (in place, reversible);
* :mod:`qslm.quant.export` — :func:`export_packed` / :func:`load_packed`
  (``model.qslm.safetensors``: packed codes for the Rust kernels, fp16 scales, plan + config).
"""

from qslm.quant.apply import FakeQuantHandle, apply_fake_quant, quantize_model
from qslm.quant.export import PackedModel, PackedWeight, export_packed, load_packed
from qslm.quant.plan import Footprint, QuantPlan, QuantSpec, footprint, quantizable_modules
from qslm.quant.primitives import (
    QuantizedWeight,
    choose_qparams,
    dequantize,
    fake_quantize,
    quantize,
    quantize_weight,
)

__all__ = [
    "FakeQuantHandle",
    "Footprint",
    "PackedModel",
    "PackedWeight",
    "QuantPlan",
    "QuantSpec",
    "QuantizedWeight",
    "apply_fake_quant",
    "choose_qparams",
    "dequantize",
    "export_packed",
    "fake_quantize",
    "footprint",
    "load_packed",
    "quantizable_modules",
    "quantize",
    "quantize_model",
    "quantize_weight",
]
