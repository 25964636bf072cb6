"""Plots of cost reports. Each function takes reports and returns a matplotlib Figure.

matplotlib is imported lazily (Agg backend) so that ``import hwmodel`` stays fast; the caller
saves the figure (``fig.savefig(path)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hwmodel.cost import CostReport

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["plot_energy_blocks", "plot_fp32_vs_plan", "plot_memory"]

MIB = 2.0**20


def _mpl() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure


def _energy_scale(joules: float) -> tuple[float, str]:
    for f, unit in ((1.0, "J"), (1e-3, "mJ"), (1e-6, "µJ"), (1e-9, "nJ")):
        if joules >= f:
            return f, unit
    return 1e-12, "pJ"


def plot_memory(plan: CostReport, fp32: CostReport | None = None) -> Figure:
    """Stacked bars of the footprint (weights, scales, other parameters, state) in MiB, fp32 vs
    plan, with the capacity of each memory level as a dashed line."""
    Figure = _mpl()
    fig = Figure(figsize=(6.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    reports = ([("fp32", fp32)] if fp32 is not None else []) + [("plan", plan)]
    parts = (("weights", "weight_bytes", "#4c72b0"), ("scales", "scale_bytes", "#dd8452"),
             ("other params", "other_param_bytes", "#55a868"), ("state", "state_bytes", "#c44e52"))
    x = list(range(len(reports)))
    bottom = [0.0] * len(reports)
    for label, attr, color in parts:
        vals = [getattr(r, attr) / MIB for _, r in reports]
        ax.bar(x, vals, bottom=bottom, label=label, color=color, width=0.6)
        bottom = [b + v for b, v in zip(bottom, vals)]
    top = max(bottom) if bottom else 1.0
    for lev in plan.levels:
        cap = lev.capacity_bytes / MIB
        if cap <= 1.5 * top:
            ax.axhline(cap, ls="--", lw=1, color="0.4")
            ax.text(-0.45, cap, f"{lev.name} {cap:.3g} MiB", va="bottom", ha="left",
                    fontsize=8, color="0.3")
    for xi, (name, r) in zip(x, reports):
        status = "fits" if r.fits else "does not fit"
        if r.fits and r.fits_on_chip:
            status += " on chip"
        ax.text(xi, bottom[xi], f"{bottom[xi]:.3g} MiB\n{status}", ha="center", va="bottom",
                fontsize=8)
    ax.set_xticks(x, [n for n, _ in reports])
    ax.set_ylabel("memory (MiB)")
    ax.set_ylim(0, top * 1.25)
    ax.set_title(f"Memory footprint on {plan.device}")
    ax.legend(fontsize=8, loc="upper right")
    return fig


def plot_energy_blocks(report: CostReport) -> Figure:
    """Energy per unit of work by block (compute, memory, static), stacked; the right axis reads
    the same bars as contributions to the average power (energy / latency of the unit)."""
    Figure = _mpl()
    blocks = [b for b in report.blocks if b.energy_j > 0]
    fig = Figure(figsize=(max(6.0, 0.28 * len(blocks) + 2.5), 4.5), layout="constrained")
    ax = fig.add_subplot()
    scale, unit = _energy_scale(max((b.energy_j for b in blocks), default=1.0))
    x = list(range(len(blocks)))
    bottom = [0.0] * len(blocks)
    for label, attr, color in (("compute", "compute_energy_j", "#4c72b0"),
                               ("memory", "memory_energy_j", "#dd8452"),
                               ("static", "static_energy_j", "#8c8c8c")):
        vals = [getattr(b, attr) / scale for b in blocks]
        ax.bar(x, vals, bottom=bottom, label=label, color=color, width=0.8)
        bottom = [bt + v for bt, v in zip(bottom, vals)]
    ax.set_xticks(x, [b.block for b in blocks], rotation=90, fontsize=7)
    ax.set_ylabel(f"energy per {report.per} ({unit})")
    if report.latency_s > 0:
        k = scale / report.latency_s  # bar value (unit) → watts
        sec = ax.secondary_yaxis("right", functions=(lambda v: v * k, lambda w: w / k))
        sec.set_ylabel("average power contribution (W)")
    ax.set_title(f"Energy per block on {report.device} "
                 f"(total {report.energy_j / scale:.3g} {unit}, {report.power_w:.3g} W)")
    ax.legend(fontsize=8)
    return fig


def plot_fp32_vs_plan(plan: CostReport, fp32: CostReport) -> Figure:
    """Memory, energy, latency and power of the plan relative to fp32 (= 1), with the energy of
    each split into compute / on-chip memory / off-chip memory / static."""
    Figure = _mpl()
    fig = Figure(figsize=(9.0, 4.2), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2, width_ratios=(1.3, 1.0))
    metrics = (("memory", "param_bytes"), ("energy", "energy_j"), ("latency", "latency_s"),
               ("power", "power_w"))
    ratios = [getattr(plan, a) / getattr(fp32, a) if getattr(fp32, a) else 0.0
              for _, a in metrics]
    x = list(range(len(metrics)))
    ax1.bar(x, [1.0] * len(x), width=0.38, label="fp32", color="#8c8c8c",
            align="edge", tick_label=None)
    ax1.bar([xi + 0.38 for xi in x], ratios, width=0.38, label="plan", color="#4c72b0",
            align="edge")
    for xi, r in zip(x, ratios):
        ax1.text(xi + 0.57, r, f"{r:.2f}", ha="center", va="bottom", fontsize=8)
    ax1.set_xticks([xi + 0.38 for xi in x], [m for m, _ in metrics])
    ax1.set_ylabel("relative to fp32")
    ax1.set_ylim(0, max([1.0, *ratios]) * 1.2)
    ax1.set_title("plan / fp32")
    ax1.legend(fontsize=8, loc="upper right", ncols=2)

    comps = (("compute", "compute_energy_j", "#4c72b0"),
             ("on-chip memory", "onchip_memory_energy_j", "#dd8452"),
             ("off-chip memory", "offchip_memory_energy_j", "#c44e52"),
             ("static", "static_energy_j", "#8c8c8c"))
    scale, unit = _energy_scale(max(fp32.energy_j, plan.energy_j))
    bottom = [0.0, 0.0]
    for label, attr, color in comps:
        vals = [getattr(fp32, attr) / scale, getattr(plan, attr) / scale]
        ax2.bar([0, 1], vals, bottom=bottom, label=label, color=color, width=0.6)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax2.set_xticks([0, 1], ["fp32", "plan"])
    ax2.set_ylabel(f"energy per {plan.per} ({unit})")
    ax2.set_title(f"energy breakdown on {plan.device}")
    ax2.legend(fontsize=8)
    return fig
