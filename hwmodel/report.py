"""``python -m hwmodel.report``: the cost of a plan on a device, as JSON, Markdown and plots.

    python -m hwmodel.report --hw edge-npu --plan runs/x/plan.json            # SpikeGPT-216M
    python -m hwmodel.report --hw cmos45 --bits 4 --model spikegpt:12,512,50277 \\
        --spike-inputs idealized --firing-rate 0.15 --out out/cmos45

Writes ``report.json`` (SI units: bytes, J, s, W), ``report.md`` and three plots
(``memory.png``, ``energy_blocks.png``, ``fp32_vs_plan.png``) into ``--out`` (default: a
``hwmodel-<device>`` folder next to the plan file, or ``out/hwmodel-<device>`` with ``--bits``).

``--model`` takes ``spikegpt-216m``, ``spikegpt:L,C,V``, or any model qslm can load (a bundled
name such as ``spikegpt-mini-wt2``, or a checkpoint path): its workload then comes from the
model's own ``workload()`` (the workload protocol).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hwmodel._io import atomic_write_bytes, atomic_write_text
from hwmodel.cost import CostModel, CostReport
from hwmodel.device import Device, list_presets, load_device, preset_path
from hwmodel.errors import HwModelError
from hwmodel.plan import Plan, read_plan_json
from hwmodel.workload import MODEL_PRESETS, Workload, as_workload

__all__ = ["FORMAT_VERSION", "build_report", "format_energy", "format_mib", "format_time", "main",
           "render_markdown", "write_report"]

FORMAT_VERSION = 1
MIB = 2.0**20


def build_report(workload: Workload, plan: Plan, device: Device) -> tuple[CostReport, CostReport]:
    """(plan report, fp32 baseline report) for the same workload and device."""
    specs = plan.resolve(workload)
    model = CostModel(workload, device,
                      group_size=[None if s is None else s.group_size for s in specs],
                      symmetric=[True if s is None else s.symmetric for s in specs])
    bits = plan.bits_vector(workload)
    return model.report(bits), model.report(bits * 0)


def format_energy(j: float) -> str:
    """Joules with a unit from J to pJ, 4 significant digits."""
    for f, unit in ((1.0, "J"), (1e-3, "mJ"), (1e-6, "µJ"), (1e-9, "nJ")):
        if abs(j) >= f:
            return f"{j / f:.4g} {unit}"
    return f"{j / 1e-12:.4g} pJ"


def format_time(s: float) -> str:
    """Seconds with a unit from s to ns, 4 significant digits."""
    for f, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if abs(s) >= f:
            return f"{s / f:.4g} {unit}"
    return f"{s / 1e-9:.4g} ns"


def format_mib(n: float) -> str:
    """Bytes in MiB, 4 significant digits."""
    return f"{n / MIB:.4g} MiB"


def _origin(device: Device) -> str | None:
    """'preset NAME' for a bundled preset, else the path of the user TOML."""
    src = device.source_path
    if src and device.name in list_presets() and \
            Path(src).resolve() == preset_path(device.name).resolve():
        return f"preset {device.name}"
    return src


def render_markdown(plan: CostReport, fp32: CostReport, device: Device) -> str:
    """A Markdown summary: totals fp32 vs plan, memory levels, per-block energy."""
    per = plan.per
    rows = [
        ("parameters (weights + scales + other)", format_mib(fp32.param_bytes), format_mib(plan.param_bytes)),
        ("  weights", format_mib(fp32.weight_bytes), format_mib(plan.weight_bytes)),
        ("  scales / zero points", format_mib(fp32.scale_bytes), format_mib(plan.scale_bytes)),
        ("  other parameters", format_mib(fp32.other_param_bytes), format_mib(plan.other_param_bytes)),
        ("recurrent state", format_mib(fp32.state_bytes), format_mib(plan.state_bytes)),
        ("memory reduction vs fp32", "0 %", f"{100 * plan.memory_reduction:.1f} %"),
        ("fits the device", str(fp32.fits), str(plan.fits)),
        ("fits on chip", str(fp32.fits_on_chip), str(plan.fits_on_chip)),
        ("all formats supported", str(fp32.supported), str(plan.supported)),
        (f"energy per {per}", format_energy(fp32.energy_j), format_energy(plan.energy_j)),
        ("  compute", format_energy(fp32.compute_energy_j), format_energy(plan.compute_energy_j)),
        ("  on-chip memory", format_energy(fp32.onchip_memory_energy_j), format_energy(plan.onchip_memory_energy_j)),
        ("  off-chip memory", format_energy(fp32.offchip_memory_energy_j), format_energy(plan.offchip_memory_energy_j)),
        ("  static", format_energy(fp32.static_energy_j), format_energy(plan.static_energy_j)),
        (f"latency per {per}", format_time(fp32.latency_s), format_time(plan.latency_s)),
        ("average power", f"{fp32.power_w:.4g} W", f"{plan.power_w:.4g} W"),
    ]
    if device.is_neuromorphic:
        rows.append(("neuromorphic cores needed", f"{fp32.cores_needed:.0f}",
                     f"{plan.cores_needed:.0f}"))
    lines = [
        f"# Hardware cost: {plan.workload} on {device.name}",
        "",
        f"Device: {device.description} (`{_origin(device) or device.name}`).",
        f"Energy and latency are per {per}. Units: MiB = 2^20 bytes.",
        "",
        "| quantity | fp32 | plan |",
        "|---|---:|---:|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        "## Memory levels (plan)",
        "",
        "| level | on chip | capacity | state | parameters | whole model fits alone |",
        "|---|---|---:|---:|---:|---|",
        *[f"| {lv.name} | {lv.on_chip} | {format_mib(lv.capacity_bytes)} | {format_mib(lv.state_bytes)} | "
          f"{format_mib(lv.param_bytes)} | {lv.whole_model_fits} |" for lv in plan.levels],
        "",
        "## Energy per block (plan)",
        "",
        "| block | compute | memory | static | total | latency |",
        "|---|---:|---:|---:|---:|---:|",
        *[f"| {b.block} | {format_energy(b.compute_energy_j)} | {format_energy(b.memory_energy_j)} | "
          f"{format_energy(b.static_energy_j)} | {format_energy(b.energy_j)} | {format_time(b.latency_s)} |"
          for b in plan.blocks],
        "",
    ]
    bits_hist: dict[int, int] = {}
    for m in plan.modules:
        bits_hist[m.bits] = bits_hist.get(m.bits, 0) + 1
    hist = ", ".join(f"{'fp32' if b == 0 else f'{b} bit'}: {n}"
                     for b, n in sorted(bits_hist.items()))
    lines += [f"Modules by bit width: {hist}.", ""]
    return "\n".join(lines)


def write_report(out_dir: str | Path, workload: Workload, plan: Plan, device: Device, *,
                 plots: bool = True) -> dict[str, Path]:
    """Write report.json, report.md and (optionally) the plots; returns the paths written."""
    out = Path(out_dir)
    plan_r, fp32_r = build_report(workload, plan, device)
    doc: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "device": device.name,
        "device_source": _origin(device),
        "workload": workload.to_dict(),
        "plan": plan.to_dict(),
        "units": {"bytes": "B", "energy": "J", "time": "s", "power": "W", "per": workload.per},
        "report": plan_r.to_dict(),
        "fp32": fp32_r.to_dict(),
        "ratios": {
            "memory": plan_r.param_bytes / fp32_r.param_bytes,
            "energy": plan_r.energy_j / fp32_r.energy_j if fp32_r.energy_j else None,
            "latency": plan_r.latency_s / fp32_r.latency_s if fp32_r.latency_s else None,
            "power": plan_r.power_w / fp32_r.power_w if fp32_r.power_w else None,
        },
    }
    paths = {
        "json": atomic_write_text(out / "report.json", json.dumps(doc, indent=1) + "\n"),
        "md": atomic_write_text(out / "report.md", render_markdown(plan_r, fp32_r, device)),
    }
    if plots:
        import io

        from hwmodel.plots import plot_energy_blocks, plot_fp32_vs_plan, plot_memory

        for name, fig in (("memory", plot_memory(plan_r, fp32_r)),
                          ("energy_blocks", plot_energy_blocks(plan_r)),
                          ("fp32_vs_plan", plot_fp32_vs_plan(plan_r, fp32_r))):
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=120)
            paths[name] = atomic_write_bytes(out / f"{name}.png", buf.getvalue())
    return paths


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hwmodel.report",
        description="Memory, energy, latency and power of a quantization plan on a device.")
    p.add_argument("--hw", required=True, metavar="NAME_OR_TOML",
                   help="device preset name (python -m hwmodel --list) or a TOML file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--plan", metavar="PLAN_JSON",
                     help='plan file {"format_version": 1, "default": ..., "modules": {...}}')
    src.add_argument("--bits", type=int, metavar="B",
                     help="uniform plan: every module at B bits (0 = keep fp32)")
    p.add_argument("--group-size", type=int, default=None,
                   help="with --bits: scale group size (default: one scale per output row)")
    p.add_argument("--model", default="spikegpt-216m",
                   help="spikegpt-216m (default), spikegpt:L,C,V, or a qslm model (bundled name "
                        "or checkpoint path)")
    p.add_argument("--spike-inputs", choices=("released", "idealized"), default="released",
                   help="released: every Linear takes real values (the checkpoint's arithmetic); "
                        "idealized: R/K/V and FFN take spikes (the SpikeGPT paper's accounting)")
    p.add_argument("--firing-rate", type=float, default=None,
                   help="firing rate R̂ of spike inputs (idealized only; default: a placeholder)")
    p.add_argument("--per", choices=("token", "sequence"), default="token",
                   help="cost per generated token (default) or per classified sequence")
    p.add_argument("--seq-len", type=int, default=1, help="tokens per sequence (--per sequence)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classification head size (--per sequence)")
    p.add_argument("--out", default=None, help="output folder")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p


def _workload(args: argparse.Namespace) -> Workload:
    """From a model string, or from a model qslm loads (through its ``workload()``)."""
    spec = args.model.strip().lower()
    if spec in MODEL_PRESETS or spec.startswith("spikegpt:"):
        return as_workload(args.model, firing_rates=args.firing_rate, spike_inputs=args.spike_inputs,
                           per=args.per, seq_len=args.seq_len, num_classes=args.num_classes)
    try:
        from qslm.models import load
    except ImportError as exc:
        raise HwModelError(f"--model {args.model}: not a model string, and qslm is not importable ({exc})")
    try:
        model = load(args.model)
        seq_len = args.seq_len if args.per == "sequence" else None
        return as_workload(model.workload(args.firing_rate, args.per, spike_inputs=args.spike_inputs,
                                          seq_len=seq_len))
    except ValueError as exc:  # qslm's errors are ValueErrors with a specific message
        raise HwModelError(f"unknown model {args.model!r}: not a model string ({', '.join(MODEL_PRESETS)}, "
                           f"spikegpt:L,C,V) and qslm cannot load it: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        device = load_device(args.hw)
        workload = _workload(args)
        if args.plan is not None:
            plan = read_plan_json(args.plan)
            default_out = Path(args.plan).parent / f"hwmodel-{device.name}"
        else:
            plan = Plan.uniform(None if args.bits in (0, 32) else args.bits,
                                group_size=args.group_size)
            default_out = Path("out") / f"hwmodel-{device.name}"
        plan.resolve(workload)  # name mismatches → a clear error before any work
        out = Path(args.out) if args.out else default_out
        paths = write_report(out, workload, plan, device, plots=not args.no_plots)
    except HwModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for kind, path in paths.items():
        print(f"{kind:14s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
