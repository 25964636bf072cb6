"""``python -m qslm.search.results DIR ...``: one Markdown table from search report.json files.

Used by ``scripts/results.sh`` to build the tables of docs/results.md; every number comes from
the reports (nothing is typed by hand).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

MIB = 2.0**20


def _perf(r: dict[str, Any], entry: dict[str, Any] | None) -> str:
    if not entry:
        return "-"
    f = entry.get("final") or {}
    if "test_word_ppl" in f:
        return f"{f['test_word_ppl']:.1f} / {f['test_token_ppl']:.2f}"
    if "dev_accuracy" in f:
        return f"{100 * f['dev_accuracy']:.2f} %"
    m = entry["metric"]
    return {"nll": f"PPL {math.exp(m):.2f}", "accuracy": f"{100 * m:.2f} %"}.get(
        r["task"]["metric"], f"KL {m:.4f}")


def _search_perf(r: dict[str, Any], entry: dict[str, Any] | None) -> str:
    if not entry:
        return "-"
    m = entry["metric"]
    if r["task"]["metric"] == "nll":
        return f"{math.exp(m):.2f} (+{100 * (math.exp(entry['degradation']) - 1):.2f} %)"
    if r["task"]["metric"] == "accuracy":
        drop = 100 * entry["degradation"]  # accuracy points lost; negative: gained
        return f"{100 * m:.2f} % ({'−' if drop >= 0 else '+'}{abs(drop):.2f})"
    return f"{m:.4f}"


def _uj(j: float) -> str:
    return f"{j * 1e6:,.1f}"


def table(paths: list[Path]) -> str:
    rows = ["| model | device | strategy | plan | search metric (Δ) | final metric | memory "
            "(MiB) | reduction | energy µJ (fp32 → plan) | power mW (fp32 → plan) | plans "
            "scored | full evals | sensitivity s | search s | feasible |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in paths:
        r = json.loads((p / "report.json").read_text("utf-8"))
        fp, uni, ch, s = r["fp32"], r["uniform"], r["chosen"], r["search"]
        for label, e in (("uniform", uni), (r["strategy"], ch)):
            if label == "uniform" and r["strategy"] == "ilp":
                continue  # the same uniform baseline is listed on the tiered row
            if e is None:
                rows.append(f"| {r['model']['name']} | {r['device']} | {label} | no width meets "
                            "the floor | | | | | | | | | | | |")
                continue
            cost = "" if label == "uniform" else f"{s['plans_scored']:,}"
            evals = "" if label == "uniform" else str(s["full_evaluations"])
            rows.append(
                f"| {r['model']['name']} | {r['device']} | {label} | {e['bits_label']} | "
                f"{_search_perf(r, e)} | {_perf(r, e)} | {e['memory_bytes'] / MIB:.3f} | "
                f"{100 * e['memory_reduction']:.2f} % | {_uj(fp['energy_j'])} → "
                f"{_uj(e['energy_j'])} | {1e3 * fp['power_w']:.0f} → {1e3 * e['power_w']:.0f} | "
                f"{cost} | {evals} | {'' if label == 'uniform' else round(s['sensitivity_s'])} | "
                f"{'' if label == 'uniform' else round(s['search_s'])} | "
                f"{'yes' if e['feasible'] else 'no'} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    paths = [Path(a) for a in args]
    bad = [str(p) for p in paths if not (p / "report.json").is_file()]
    if not paths or bad:
        print(f"qslm.search.results: error: no report.json in {', '.join(bad) or '(no folder given)'}",
              file=sys.stderr)
        return 2
    sys.stdout.write(table(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
