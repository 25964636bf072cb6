"""Apply a :class:`QuantPlan` to a torch model as fake-quant, reversibly.

Fake-quant replaces each quantized module's weight values by ``dequantize(quantize(w))`` — the
model keeps its modules, dtypes and Parameter objects, so it evaluates exactly as the packed
model would (the same primitives produce the packed export, :mod:`qslm.quant.export`)::

    with apply_fake_quant(model, plan):      # or: handle = apply_fake_quant(...); handle.restore()
        metric = evaluate(model)
    # the original weights are back, bit for bit

Quantizable modules are the model's ``hierarchy()`` leaves (SpikeGPT) or else every
``nn.Linear`` and ``nn.Embedding`` (:func:`qslm.quant.plan.quantizable_modules`). A Linear weight
``(out, in)`` is quantized with scales per output row / groups along ``in``; an Embedding weight
``(V, C)`` per token row / groups along ``C``. Biases and every other parameter are untouched.
"""

from __future__ import annotations

import weakref
from types import TracebackType

import torch
from torch import Tensor, nn

from qslm.errors import QuantizationError
from qslm.quant.plan import QuantPlan, QuantSpec, quantizable_modules
from qslm.quant.primitives import QuantizedWeight, quantize_weight

__all__ = ["FakeQuantHandle", "apply_fake_quant", "planned_modules", "quantize_model"]

# model → its active handle: a second application before restore() would make the restore order
# matter, so it is refused.
_ACTIVE: weakref.WeakKeyDictionary[nn.Module, FakeQuantHandle] = weakref.WeakKeyDictionary()


def planned_modules(model: nn.Module, plan: QuantPlan, strict: bool = True
                    ) -> tuple[dict[str, nn.Module], dict[str, QuantSpec]]:
    """(every quantizable module by name, spec of each module the plan quantizes)."""
    if not isinstance(plan, QuantPlan):
        raise QuantizationError(f"plan must be a QuantPlan, got {type(plan).__name__}")
    leaves = quantizable_modules(model)
    specs = {n: s for n, s in plan.resolve(leaves, strict=strict).items() if s is not None}
    seen: dict[int, str] = {}
    for name in specs:
        w = leaves[name].weight
        if id(w) in seen:
            raise QuantizationError(f"modules {seen[id(w)]!r} and {name!r} share one weight; "
                                    "quantizing it twice is ambiguous")
        seen[id(w)] = name
    return leaves, specs


@torch.no_grad()
def quantize_model(model: nn.Module, plan: QuantPlan, *,
                   strict: bool = True) -> dict[str, QuantizedWeight]:
    """Quantized weight of every module the plan quantizes (kept modules are absent), computed
    in float32 on the weight's device. The model is not modified."""
    leaves, specs = planned_modules(model, plan, strict)
    return {name: quantize_weight(leaves[name].weight, spec) for name, spec in specs.items()}


class FakeQuantHandle:
    """The fake-quant state of one model: :meth:`restore` (or leaving the ``with`` block) puts
    the original weights back bit for bit. ``specs`` holds the spec of every quantized module."""

    def __init__(self, model: nn.Module, specs: dict[str, QuantSpec],
                 originals: dict[str, tuple[nn.Parameter, Tensor]]) -> None:
        self.model = model
        self.specs = specs
        self._originals = originals
        self._active = True

    @property
    def active(self) -> bool:
        """True until :meth:`restore`."""
        return self._active

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the original weights back (idempotent)."""
        for param, original in self._originals.values():
            param.copy_(original)
        self._originals = {}
        self._active = False
        if _ACTIVE.get(self.model) is self:
            del _ACTIVE[self.model]

    def __enter__(self) -> FakeQuantHandle:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.restore()

    def __repr__(self) -> str:
        state = "active" if self.active else "restored"
        return f"FakeQuantHandle({len(self.specs)} modules quantized, {state})"


@torch.no_grad()
def apply_fake_quant(model: nn.Module, plan: QuantPlan, *, strict: bool = True) -> FakeQuantHandle:
    """Replace the weight values of every module ``plan`` quantizes by their fake-quantized
    values, in place (same Parameter objects, dtype and device). Returns the handle that
    restores them; also a context manager.

    ``strict``: exact plan keys that name no quantizable module are an error
    (:class:`~qslm.errors.PlanError`). Applying to a model that already has active fake-quant
    raises :class:`~qslm.errors.QuantizationError` (restore first).
    """
    if model in _ACTIVE:
        raise QuantizationError("fake-quant is already applied to this model; call restore() on "
                                "the active handle first")
    leaves, specs = planned_modules(model, plan, strict)
    fq: dict[str, Tensor] = {}
    for name, spec in specs.items():  # compute everything first: an error leaves the model intact
        w = leaves[name].weight
        fq[name] = quantize_weight(w, spec).dequantize().to(w.dtype)
    originals: dict[str, tuple[nn.Parameter, Tensor]] = {}
    for name, value in fq.items():
        param = leaves[name].weight
        originals[name] = (param, param.detach().clone())
        param.copy_(value)
    handle = FakeQuantHandle(model, dict(specs), originals)
    _ACTIVE[model] = handle
    return handle
