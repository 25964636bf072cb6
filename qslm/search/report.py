"""What a search writes: plan.json, report.json, report.md, plots and the packed model.

All files are first written into a staging folder inside ``--out`` and moved into place at the
end (``os.replace``), so an interruption never leaves a half-written report next to a finished
one. The final measurements (fp32, uniform baseline, chosen plan on the final data) are kept in
``final.json`` so a resumed search does not repeat them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hwmodel.report import format_energy, format_time
from qslm._io import atomic_write_text
from qslm.search.constraints import relative_performance

__all__ = ["FORMAT_VERSION", "SearchOutcome", "write_outputs"]

FORMAT_VERSION = 1
MIB = 2.0**20


@dataclass
class SearchOutcome:
    """Everything the outputs are made from (cli._run fills it)."""

    args: dict[str, Any]
    config: dict[str, Any]
    model: Any
    model_name: str
    device: Any
    tasks: Any
    floor: Any
    budget: Any
    space: Any
    table: Any
    ctx: Any
    result: dict[str, Any]
    chosen: Any  # EvalRecord
    feasible: bool
    notice: str | None
    timings: dict[str, float]
    t_start: float
    report: dict[str, Any] | None = None
    tokenizer_path: Path | None = None  # copied beside the packed model (qslm.generate finds it)

    # ---- presentation helpers ----------------------------------------------------------------
    def show_metric(self, value: float) -> str:
        kind = self.tasks.metric
        if kind == "nll":
            return f"PPL {math.exp(value):.2f}"
        if kind == "accuracy":
            return f"acc {100 * value:.2f} %"
        return f"KL {value:.4f}"

    def summary_table(self) -> str:
        r = self.report or {}
        rows = [("", "fp32", "uniform", "chosen")]
        fp, uni, ch = (r.get("fp32", {}), r.get("uniform") or {}, r.get("chosen", {}))

        def cell(d: dict[str, Any], key: str, fmt: Callable[[Any], str]) -> str:
            return fmt(d[key]) if d and d.get(key) is not None else "-"

        rows.append(("bits", "32", cell(uni, "bits_label", str), cell(ch, "bits_label", str)))
        rows.append(("search metric", cell(fp, "metric_text", str), cell(uni, "metric_text", str),
                     cell(ch, "metric_text", str)))
        for k in (r.get("final_keys") or []):
            rows.append((k, cell(fp.get("final", {}), k, _fmt_num),
                         cell(uni.get("final", {}), k, _fmt_num),
                         cell(ch.get("final", {}), k, _fmt_num)))
        rows.append(("memory", cell(fp, "memory_bytes", _fmt_mib),
                     cell(uni, "memory_bytes", _fmt_mib), cell(ch, "memory_bytes", _fmt_mib)))
        rows.append(("memory reduction", "0 %", cell(uni, "memory_reduction", _fmt_pct),
                     cell(ch, "memory_reduction", _fmt_pct)))
        rows.append((f"energy/{r.get('per', 'unit')}", cell(fp, "energy_j", format_energy),
                     cell(uni, "energy_j", format_energy), cell(ch, "energy_j", format_energy)))
        rows.append(("latency", cell(fp, "latency_s", format_time), cell(uni, "latency_s", format_time),
                     cell(ch, "latency_s", format_time)))
        rows.append(("power", cell(fp, "power_w", _fmt_w), cell(uni, "power_w", _fmt_w),
                     cell(ch, "power_w", _fmt_w)))
        widths = [max(len(str(row[i])) for row in rows) for i in range(4)]
        lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        s = r.get("search", {})
        lines.append("")
        lines.append(f"{'feasible' if self.feasible else 'INFEASIBLE'} · plans scored "
                     f"{s.get('plans_scored', 0):,} · full evaluations "
                     f"{s.get('full_evaluations', 0)} ({s.get('new_evaluations', 0)} new) · "
                     f"wall {s.get('wall_s', 0):.0f} s · {r.get('out', '')}")
        return "\n".join(lines)

    def infeasible_message(self) -> str:
        c = self.ctx.plan_cost(np.array(self.chosen.bits))
        return (f"no evaluated plan meets both constraints ({self.floor.describe()}; "
                f"{self.budget.describe()}); closest plan found: degradation "
                f"{self.chosen.degradation:.4g} (allowed {self.ctx.dmax:.4g}), "
                f"{c['param_bytes'] / MIB:.3f} MiB — reported in {self.report.get('out') if self.report else '?'}"
                " and marked infeasible")


def _fmt_num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def _fmt_mib(v: float) -> str:
    return f"{v / MIB:.3f} MiB"


def _fmt_pct(v: float) -> str:
    return f"{100 * v:.2f} %"


def _fmt_w(v: float) -> str:
    return f"{v:.3g} W" if v >= 1 else f"{v * 1e3:.3g} mW"


def _bits_label(bits: tuple[int, ...]) -> str:
    vals = sorted(set(bits))
    if len(vals) == 1:
        return "fp32" if vals[0] == 0 else f"w{vals[0]}"
    avg = float(np.mean([32 if b == 0 else b for b in bits]))
    return "mixed " + "/".join("fp" if b == 0 else str(b) for b in sorted(vals, reverse=True)) + \
        f" (mean {avg:.2f})"


# ------------------------------------------------------------------------------------------------
def _final_metrics(o: SearchOutcome, out: Path, records: dict[str, Any], run: bool,
                   say: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Final-data metrics of the given records (key → EvalRecord), cached in final.json."""
    path = out / "final.json"
    cache: dict[str, Any] = {}
    if path.is_file():
        try:
            cache = json.loads(path.read_text("utf-8"))
        except ValueError:
            cache = {}
    if not run or o.tasks.final is None:
        return {k: cache.get(k, {}) for k in records}
    from dataclasses import replace

    from qslm.executor import Job

    todo = {k: r for k, r in records.items() if k not in cache}
    if todo:
        executor = o.ctx.evaluator.executor
        final = o.tasks.final
        if executor.kind != "inproc" and getattr(final, "progress", False):
            final = replace(final, progress=False)  # no progress bars from the workers
        for key, rec in todo.items():
            say(f"final measurement of {_bits_label(rec.bits)} plan {key} ...")
        jobs = [Job.of(k, o.space.plan(r.bits), measure=True) for k, r in todo.items()]
        for res in executor.run(o.model, final, jobs):
            cache[res.key] = {**res.metric, "seconds": round(res.seconds, 2)}
            atomic_write_text(path, json.dumps(cache, indent=1) + "\n")
    return {k: cache.get(k, {}) for k in records}


def _plan_entry(o: SearchOutcome, rec: Any, final: dict[str, Any], cost_report: Any) -> dict[str, Any]:
    ctx = o.ctx
    c = ctx.plan_cost(np.array(rec.bits))
    return {
        "key": rec.key, "bits": o.space.bits_dict(rec.bits), "bits_label": _bits_label(rec.bits),
        "metric": rec.metric, "metric_text": o.show_metric(rec.metric),
        "degradation": rec.degradation,
        "relative_performance": relative_performance(ctx.metric_kind, rec.degradation,
                                                     ctx.baseline),
        "meets_floor": ctx.perf_ok(rec), "feasible": ctx.feasible(rec),
        "score": ctx.actual_score(rec), "memory_bytes": c["param_bytes"],
        "memory_reduction": 1 - c["param_bytes"] / ctx.fp32_bytes,
        "energy_j": cost_report.energy_j, "latency_s": cost_report.latency_s,
        "power_w": cost_report.power_w, "fits": cost_report.fits,
        "fits_on_chip": cost_report.fits_on_chip, "final": final,
    }


def _cost_report(o: SearchOutcome, bits: tuple[int, ...]) -> Any:
    ctx = o.ctx
    B = np.zeros(ctx.cost.n_modules, dtype=np.int64)
    B[ctx.cost_order] = np.array(bits)
    return ctx.cost.report(B)


def build_report(o: SearchOutcome, out: Path, final: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ctx, ev = o.ctx, o.ctx.evaluator
    fp_key = o.space.key(o.space.uniform(0))
    fp_rec = ev.records[fp_key]
    uni = o.result.get("uniform")
    fp_cost = _cost_report(o, fp_rec.bits)
    ch_cost = _cost_report(o, o.chosen.bits)
    final_keys = sorted({k for d in final.values() for k in d if k != "seconds"})
    evals = []
    for r in ev.records.values():
        c = ctx.plan_cost(np.array(r.bits))
        evals.append({"key": r.key, "tier": r.tier, "bits_label": _bits_label(r.bits),
                      "metric": r.metric, "degradation": r.degradation,
                      "predicted_degradation": r.predicted, "memory_bytes": c["param_bytes"],
                      "meets_floor": ctx.perf_ok(r), "feasible": ctx.feasible(r),
                      "seconds": r.seconds, "reused": r.cached})
    wall = time.perf_counter() - o.t_start
    report = {
        "format_version": FORMAT_VERSION,
        "command": "python -m qslm.search " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in o.args.items()
            if v not in (None, False) and k not in ("no_progress",) and v is not True),
        "out": str(out),
        "model": {"name": o.model_name, "fingerprint": o.config["model_fingerprint"],
                  "parameters": int(sum(p.numel() for p in o.model.parameters())),
                  "quantizable_modules": o.space.n_modules},
        "device": o.device.name, "per": fp_cost.per,
        "task": {"name": o.tasks.name, "metric": o.tasks.metric, **o.tasks.describe},
        "notice": o.notice,
        "constraints": {"floor": o.floor.to_dict(), "allowed_degradation": ctx.dmax,
                        "budget": o.budget.to_dict()},
        "scheme": o.space.scheme(), "alpha": ctx.alpha, "strategy": o.config["strategy"],
        "feasible": o.feasible,
        "fp32": _plan_entry(o, fp_rec, final.get(fp_key, {}), fp_cost),
        "uniform": (_plan_entry(o, uni, final.get(uni.key, {}), _cost_report(o, uni.bits))
                    if uni is not None else None),
        "chosen": _plan_entry(o, o.chosen, final.get(o.chosen.key, {}), ch_cost),
        "final_keys": final_keys,
        "tiers": o.result.get("tiers"),
        "ilp_rounds": o.result.get("ilp_rounds"),
        "predictor": {"gain": ctx.predictor.gain, "same_units": ctx.predictor.same_units},
        "sensitivity": {"task": o.table.task_name, "baseline": o.table.baseline,
                        "module_measurements": len(o.table.module_metrics),
                        "block_measurements": len(o.table.block_metrics),
                        "evaluated": o.table.n_evaluations, "from_cache": o.table.n_cached,
                        "deltas": {str(s): o.table.deltas(s) for s in o.table.specs}},
        "search": {"plans_scored": ctx.n_scored, "full_evaluations": ev.n_evaluations,
                   "new_evaluations": ev.n_new, "reused_evaluations": ev.n_reused,
                   "evaluation_s": ev.seconds, **o.timings, "wall_s": wall,
                   "prefetched_used": ev.n_prefetched, "prefetched_unused": ev.n_unused,
                   "executor": ev.executor.describe()},
        "evaluations": evals,
        "cost": {"fp32": fp_cost.to_dict(), "chosen": ch_cost.to_dict()},
    }
    o.report = report
    return report


def render_markdown(r: dict[str, Any], o: SearchOutcome) -> str:
    fp, uni, ch = r["fp32"], r["uniform"], r["chosen"]
    L = [f"# qslm search: {r['model']['name']} on {r['device']}", ""]
    if r["notice"]:
        L += [f"> **Notice:** {r['notice']}", ""]
    status = "a feasible plan was found" if r["feasible"] else \
        "**INFEASIBLE**: no evaluated plan meets both constraints; the closest one is shown"
    L += [f"- Task: {r['task']['name']} (search metric: {r['task']['metric']}); "
          f"floor: {r['constraints']['floor']['text']}; budget: "
          f"{r['constraints']['budget']['text']}",
          f"- Strategy: {r['strategy']}; scheme: {'symmetric' if r['scheme']['symmetric'] else 'asymmetric'}, "
          f"{r['scheme']['granularity']}"
          f"{'' if r['scheme']['group_size'] is None else ' ' + str(r['scheme']['group_size'])}, "
          f"{' MSE-clipped' if r['scheme'].get('clip') == 'mse' else ''}, "
          f"bits {r['scheme']['bits']}; α = {r['alpha']}",
          f"- Result: {status}.", f"- Command: `{r['command']}`", ""]
    cols = [("fp32", fp)] + ([("uniform", uni)] if uni else []) + [("chosen", ch)]
    L.append("| | " + " | ".join(c for c, _ in cols) + " |")
    L.append("|---|" + "---|" * len(cols))

    def row(label: str, f: Callable[[dict[str, Any]], str]) -> None:
        L.append(f"| {label} | " + " | ".join(f(d) for _, d in cols) + " |")

    row("bits", lambda d: d["bits_label"])
    row("search metric", lambda d: d["metric_text"])
    for k in r["final_keys"]:
        row(k, lambda d, k=k: _fmt_num(d["final"].get(k, "-")))
    row("parameter memory", lambda d: _fmt_mib(d["memory_bytes"]))
    row("memory reduction", lambda d: _fmt_pct(d["memory_reduction"]))
    row(f"energy per {r['per']}", lambda d: format_energy(d["energy_j"]))
    row("latency", lambda d: format_time(d["latency_s"]))
    row("power", lambda d: _fmt_w(d["power_w"]))
    row("fits / on chip", lambda d: f"{'yes' if d['fits'] else 'no'} / "
                                    f"{'yes' if d['fits_on_chip'] else 'no'}")
    s = r["search"]
    rt = r.get("runtime")
    if rt:
        rates = rt["firing_rates_plan"]
        mean_rate = sum(rates.values()) / max(len(rates), 1)
        fp_rates = rt["firing_rates_fp32"]
        fp_mean = sum(fp_rates.values()) / max(len(fp_rates), 1)
        L += ["", "## Packed model on the runtime", "",
              f"- `model.qslm.safetensors` run by `qslm.runtime` (Rust kernels) on the evaluation "
              f"data: {o.show_metric(rt['packed_metric'])} vs {o.show_metric(rt['fake_quant_metric'])}"
              f" with fake-quant (relative difference {rt['relative_difference']:.2e}; tolerance "
              f"{rt['tolerance']:g}: {'ok' if rt['within_tolerance'] else 'EXCEEDED'})",
              f"- mean firing rate of the spike taps (LIF layers; an encoder's attention gates): "
              f"{mean_rate:.4f} quantized vs {fp_mean:.4f} fp32 (per tap in report.json)",
              f"- energy with the paper's idealized spike accounting at these measured rates: "
              f"{format_energy(rt['idealized_spike_energy']['plan_energy_j'])} vs "
              f"{format_energy(rt['idealized_spike_energy']['fp32_energy_j'])} fp32 per {r['per']}"]
    L += ["", "## Search cost", "",
          f"- plans scored (predictor + cost model): {s['plans_scored']:,}",
          f"- full evaluations: {s['full_evaluations']} ({s['new_evaluations']} run now, "
          f"{s['reused_evaluations']} reused from evals.jsonl), {s['evaluation_s']:.1f} s",
          f"- sensitivity: {r['sensitivity']['module_measurements']} module + "
          f"{r['sensitivity']['block_measurements']} block measurements "
          f"({r['sensitivity']['evaluated']} evaluated, {r['sensitivity']['from_cache']} from "
          f"the cache), {s['sensitivity_s']:.1f} s",
          f"- wall time: {s['wall_s']:.1f} s (search {s['search_s']:.1f} s)",
          f"- predictor gain (evaluation / sensitivity units): "
          f"{r['predictor']['gain'] if r['predictor']['gain'] is None else round(r['predictor']['gain'], 4)}",
          "", "## Full evaluations", "",
          "| # | tier | plan | metric | degradation | predicted | memory | feasible |",
          "|---|---|---|---|---|---|---|---|"]
    for i, e in enumerate(r["evaluations"]):
        pred = "-" if e["predicted_degradation"] is None else f"{e['predicted_degradation']:.4g}"
        L.append(f"| {i} | {e['tier']} | {e['bits_label']} | {o.show_metric(e['metric'])} | "
                 f"{e['degradation']:.4g} | {pred} | {_fmt_mib(e['memory_bytes'])} | "
                 f"{'yes' if e['feasible'] else 'no'} |")
    L += ["", "## Chosen plan: bits per module", "", "| module | bits |", "|---|---|"]
    for m, b in ch["bits"].items():
        L.append(f"| {m} | {'fp32' if b == 0 else b} |")
    L += ["", "Plots: `pareto.png` (evaluated plans, memory vs performance), `bits.png` (bits per "
          "module), `memory.png` (footprint vs the device's memories), `cost.png` (memory, "
          "energy, latency, power vs fp32, energy breakdown).", ""]
    return "\n".join(L)


def _plots(o: SearchOutcome, r: dict[str, Any], staging: Path) -> list[str]:
    from hwmodel.plots import plot_fp32_vs_plan, plot_memory
    from qslm.search.plots import plot_bits_heatmap, plot_pareto

    ctx = o.ctx
    pts = [{"memory_bytes": e["memory_bytes"], "tier": e["tier"], "feasible": e["feasible"],
            "performance": 100 * relative_performance(ctx.metric_kind, e["degradation"],
                                                      ctx.baseline)}
           for e in r["evaluations"]]
    ch = r["chosen"]
    floor = 100 * relative_performance(ctx.metric_kind, ctx.dmax, ctx.baseline)
    fig = plot_pareto(pts, metric_label="performance relative to fp32 (%)",
                      chosen={"memory_bytes": ch["memory_bytes"],
                              "performance": 100 * ch["relative_performance"]},
                      floor=floor, budget_bytes=o.budget.bytes,
                      title=f"{r['model']['name']} on {r['device']}: evaluated plans")
    fig.savefig(staging / "pareto.png", dpi=120)
    blocks = {b: [o.space.modules[i] for i in ix] for b, ix in o.space.blocks.items()}
    fig = plot_bits_heatmap(blocks, ch["bits"], title=f"chosen plan ({ch['bits_label']})")
    fig.savefig(staging / "bits.png", dpi=120)
    fp_cost = _cost_report(o, tuple(0 for _ in o.space.modules))
    ch_cost = _cost_report(o, o.chosen.bits)
    plot_memory(ch_cost, fp_cost).savefig(staging / "memory.png", dpi=120)
    plot_fp32_vs_plan(ch_cost, fp_cost).savefig(staging / "cost.png", dpi=120)
    return ["pareto.png", "bits.png", "memory.png", "cost.png"]


def _runtime_check(o: SearchOutcome, path: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """Run the exported packed model on the Rust kernels (``qslm.runtime``) over the evaluation
    data: its metric must match the fake-quant one, and its firing rates — the quantized
    model's, not the fp32 one's — go to the cost model."""
    import hwmodel
    from qslm.runtime import METRIC_RTOL, load_runtime

    say("checking the packed model on the runtime ...")
    t0 = time.perf_counter()
    rt = load_runtime(path)
    rt.reset_firing_rates()
    metric = float(o.tasks.evaluation.metric(rt))
    rates = rt.firing_rates()
    with o.model.record_spikes() as rec:
        o.tasks.evaluation.metric(o.model)  # fp32 rates on the same data
    fp32_rates = rec.rates()
    ref = o.chosen.metric
    rel = abs(metric - ref) / max(abs(ref), 1e-12)
    per = "sequence" if getattr(rt.config, "is_classifier", False) else None
    seq = o.tasks.seq_len if per == "sequence" else None
    wl = rt.workload(None, per, spike_inputs="idealized", seq_len=seq)
    wl_fp = o.model.workload(rec.block_rates(), per, spike_inputs="idealized", seq_len=seq)
    idealized = {"plan_energy_j": hwmodel.cost(wl, rt.hw_plan(), o.device).energy_j,
                 "fp32_energy_j": hwmodel.cost(wl_fp, None, o.device).energy_j}
    return {"packed_metric": metric, "fake_quant_metric": ref, "relative_difference": rel,
            "within_tolerance": rel <= METRIC_RTOL, "tolerance": METRIC_RTOL,
            "firing_rates_plan": rates, "firing_rates_fp32": fp32_rates,
            "idealized_spike_energy": idealized, "memory_bytes": rt.memory(),
            "seconds": round(time.perf_counter() - t0, 2)}


def write_outputs(o: SearchOutcome, out: Path, *, final_eval: bool, export: bool, plots: bool,
                  say: Callable[[str], None]) -> dict[str, Path]:
    """Final measurements, then every output file, staged and moved into ``out``."""
    ev = o.ctx.evaluator
    fp_key = o.space.key(o.space.uniform(0))
    wanted = {fp_key: ev.records[fp_key], o.chosen.key: o.chosen}
    if o.result.get("uniform") is not None:
        wanted[o.result["uniform"].key] = o.result["uniform"]
    final = _final_metrics(o, out, wanted, final_eval, say)
    report = build_report(o, out, final)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    written: dict[str, Path] = {}
    try:
        plan = o.space.plan(o.chosen.bits)
        (staging / "plan.json").write_text(plan.to_json() + "\n", encoding="utf-8")
        names = ["plan.json", "report.json", "report.md"]
        if export:
            from qslm.quant import export_packed

            export_packed(o.model, plan, staging / "model.qslm.safetensors")
            names.append("model.qslm.safetensors")
            report["runtime"] = _runtime_check(o, staging / "model.qslm.safetensors", say)
            if o.tokenizer_path is not None:
                shutil.copyfile(o.tokenizer_path, staging / "tokenizer.json")
                names.append("tokenizer.json")
        if plots:
            names += _plots(o, report, staging)
        report["search"]["wall_s"] = time.perf_counter() - o.t_start
        (staging / "report.json").write_text(json.dumps(report, indent=1, default=float) + "\n",
                                             encoding="utf-8")
        (staging / "report.md").write_text(render_markdown(report, o), encoding="utf-8")
        for n in names:
            with open(staging / n, "rb") as fh:
                os.fsync(fh.fileno())
        for n in names:
            os.replace(staging / n, out / n)
            written[n] = out / n
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written
