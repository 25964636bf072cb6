"""Plots of a search: the Pareto front (memory vs performance) and the bits per module.

Each function returns a matplotlib Figure (Agg backend, imported lazily); the caller saves it.
The memory and power breakdowns come from :mod:`hwmodel.plots`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["plot_bits_heatmap", "plot_pareto", "pareto_front"]

MIB = 2.0**20
TIER_COLORS = {"baseline": "#000000", "global": "#8c8c8c", "block": "#dd8452",
               "module": "#4c72b0", "ilp": "#55a868"}


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure


def pareto_front(memory: Sequence[float], performance: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both (less memory, more performance),
    sorted by memory."""
    mem = np.asarray(memory, dtype=float)
    perf = np.asarray(performance, dtype=float)
    order = np.lexsort((-perf, mem))
    front, best = [], -np.inf
    for i in order:
        if perf[i] > best:
            front.append(int(i))
            best = perf[i]
    return front


def plot_pareto(points: Sequence[Mapping[str, Any]], *, metric_label: str,
                chosen: Mapping[str, Any] | None, floor: float | None = None,
                budget_bytes: float | None = None, title: str = "") -> Figure:
    """Evaluated plans as memory (MiB) vs performance, coloured by tier, the Pareto front as a
    line, the chosen plan circled, the performance floor and memory budget as dashed lines.

    ``points``: dicts with ``memory_bytes``, ``performance`` (higher is better: the caller
    converts, e.g. perplexity to relative performance in %), ``tier`` and ``feasible``.
    """
    Figure = _figure()
    fig = Figure(figsize=(7.0, 4.6), layout="constrained")
    ax = fig.add_subplot()
    if points:
        mem = [p["memory_bytes"] / MIB for p in points]
        perf = [p["performance"] for p in points]
        for tier in dict.fromkeys(p["tier"] for p in points):
            sel = [i for i, p in enumerate(points) if p["tier"] == tier]
            feas = [i for i in sel if points[i]["feasible"]]
            infeas = [i for i in sel if not points[i]["feasible"]]
            color = TIER_COLORS.get(tier, "#937860")
            if feas:
                ax.scatter([mem[i] for i in feas], [perf[i] for i in feas], s=28, color=color,
                           label=f"{tier}", zorder=3)
            if infeas:
                ax.scatter([mem[i] for i in infeas], [perf[i] for i in infeas], s=28,
                           facecolors="none", edgecolors=color,
                           label=f"{tier} (infeasible)", zorder=3)
        front = pareto_front(mem, perf)
        ax.plot([mem[i] for i in front], [perf[i] for i in front], color="0.5", lw=1,
                zorder=2, label="Pareto front")
    if chosen is not None:
        ax.scatter([chosen["memory_bytes"] / MIB], [chosen["performance"]], s=160,
                   facecolors="none", edgecolors="#c44e52", linewidths=2, zorder=4,
                   label="chosen")
    if floor is not None:
        ax.axhline(floor, ls="--", lw=1, color="#c44e52")
        ax.text(ax.get_xlim()[1], floor, " floor", va="bottom", ha="right", fontsize=8,
                color="#c44e52")
    if budget_bytes is not None:
        ax.axvline(budget_bytes / MIB, ls="--", lw=1, color="#8172b3")
    ax.set_xscale("log")
    ax.set_xlabel("parameter memory (MiB, log scale)")
    ax.set_ylabel(metric_label)
    ax.set_title(title or "evaluated plans")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def plot_bits_heatmap(blocks: Mapping[str, Sequence[str]], bits: Mapping[str, int],
                      title: str = "bits per module") -> Figure:
    """Blocks as rows, module roles (the name inside the block) as columns, bit width as colour
    and number ("fp" for kept modules). Single-module blocks (emb, head) get one cell."""
    Figure = _figure()
    roles: list[str] = []
    rows: list[dict[str, int]] = []
    for bname, mods in blocks.items():
        row = {}
        for m in mods:
            role = m[len(bname) + 1:] if m.startswith(bname + ".") else m
            if role not in roles:
                roles.append(role)
            row[role] = int(bits[m])
        rows.append(row)
    grid = np.full((len(rows), len(roles)), np.nan)
    for r, row in enumerate(rows):
        for role, b in row.items():
            grid[r, roles.index(role)] = 9 if b == 0 else b
    fig = Figure(figsize=(1.2 + 0.9 * len(roles), 1.0 + 0.42 * len(rows)), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=1, vmax=9, aspect="auto")
    for r in range(grid.shape[0]):
        for c in range(grid.shape[1]):
            if not np.isnan(grid[r, c]):
                v = int(grid[r, c])
                ax.text(c, r, "fp" if v == 9 else str(v), ha="center", va="center", fontsize=9,
                        color="white" if v < 6 else "black")
    ax.set_xticks(range(len(roles)), roles, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), list(blocks), fontsize=8)
    cb = fig.colorbar(im, ax=ax, ticks=[1, 2, 3, 4, 5, 6, 7, 8, 9])
    cb.ax.set_yticklabels(["1", "2", "3", "4", "5", "6", "7", "8", "fp"], fontsize=7)
    cb.set_label("bits")
    ax.set_title(title)
    return fig
