"""hwmodel: a hardware cost model of embedded accelerators for quantized spiking LMs.

Device presets are TOML data files (``hwmodel/devices``); a :class:`Workload` describes what one
token (or sequence) of a model asks of the hardware; :func:`cost` gives the memory, energy,
latency and power of one quantization plan, and :class:`CostModel` scores many plans at once.

>>> from hwmodel import cost, spikegpt_workload
>>> r = cost(spikegpt_workload(18, 768, 50277), 4, "edge-npu")   # every module at 4 bits
>>> r.fits, round(r.memory_reduction, 3) > 0.8
(True, True)

``python -m hwmodel --list`` lists the presets; ``python -m hwmodel.report`` writes a report.
"""

from hwmodel.cost import SCORE_KEYS, CostModel, CostReport, cost
from hwmodel.device import Device, MemoryLevel, device_from_toml, list_presets, load_device
from hwmodel.errors import HwModelError, PlanError, PresetError, WorkloadError
from hwmodel.plan import KEEP, ModuleSpec, Plan, as_plan, read_plan_json
from hwmodel.workload import (
    DEFAULT_FIRING_RATE,
    ModuleWork,
    Workload,
    WorkloadSource,
    as_workload,
    parse_model_spec,
    spikegpt_workload,
)

__all__ = [
    "DEFAULT_FIRING_RATE",
    "KEEP",
    "SCORE_KEYS",
    "CostModel",
    "CostReport",
    "Device",
    "HwModelError",
    "MemoryLevel",
    "ModuleSpec",
    "ModuleWork",
    "Plan",
    "PlanError",
    "PresetError",
    "Workload",
    "WorkloadError",
    "WorkloadSource",
    "as_plan",
    "as_workload",
    "cost",
    "device_from_toml",
    "list_presets",
    "load_device",
    "parse_model_spec",
    "read_plan_json",
    "spikegpt_workload",
]
