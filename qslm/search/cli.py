"""``python -m qslm.search``: find a mixed-precision quantization plan of an SLM for a device.

    python -m qslm.search --hw edge-npu                       # bundled LM, PPL +5 %, fits
    python -m qslm.search --hw mcu --model spikegpt-mini-sst2 --max-acc-drop 1 --strategy ilp
    python -m qslm.search --hw edge-npu --resume runs/spikegpt-mini-wt2-edge-npu-tiered

Steps: load the model and device, build the calibration / evaluation tasks (``tasks.py``),
measure per-module and per-block sensitivities (cached on disk), run the strategy (``core.py``),
measure the fp32 model and the chosen plan on the final data, then write ``plan.json``,
``report.json``, ``report.md``, the plots and ``model.qslm.safetensors`` into ``--out``.

Exit codes: 0 a feasible plan was found; 2 bad input (one line on stderr, nothing written) or
infeasible constraints (the best plan found is still reported, marked infeasible).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from qslm.errors import QslmError
from qslm.search.constraints import (
    FLOOR_METRIC,
    MemoryBudget,
    PerformanceFloor,
    SearchInputError,
    parse_fraction,
)

__all__ = ["build_parser", "main"]

DEFAULT_MODEL = "spikegpt-mini-wt2"
DEFAULT_BITS = "1,2,3,4,5,6,8"
DEFAULT_FLOORS = {"wikitext2": ("ppl-increase", 0.05), "sst2": ("acc-drop", 1.0),
                  "fidelity": ("kl", 0.05)}
CONFIG_VERSION = 1
METRIC_TASK = {"accuracy": "sst2", "nll": "wikitext2", "kl": "fidelity"}  # a floor's task


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m qslm.search",
        description="Find a mixed-precision quantization plan of a spike-driven language model "
                    "that meets a performance floor and a memory budget on a device.")
    p.add_argument("--hw", required=True, metavar="NAME|FILE.toml",
                   help="device preset (edge-npu, mcu, neuromorphic, edge-gpu, cmos45) or TOML")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME|PATH",
                   help=f"bundled model name or checkpoint (default {DEFAULT_MODEL})")
    p.add_argument("--tokenizer", metavar="FILE", help="tokenizer.json (default: beside the "
                   "checkpoint, or the bundle's)")
    p.add_argument("--task", choices=("wikitext2", "sst2", "fidelity"),
                   help="default: sst2 for a classifier, wikitext2 for an LM (fidelity when "
                        "no data is found)")
    p.add_argument("--data-dir", metavar="DIR", help="data sets (default: $QSLM_DATA_DIR, the "
                   "user cache, then download)")
    g = p.add_argument_group("constraints (one performance floor)")
    g.add_argument("--max-acc-drop", metavar="POINTS", help="accuracy drop in points (sst2; "
                   "default 1)")
    g.add_argument("--min-acc", metavar="ACC", help="absolute accuracy floor, e.g. 0.75")
    g.add_argument("--max-ppl-increase", metavar="PCT", help="perplexity increase, e.g. 5%% "
                   "(wikitext2; default 5%%)")
    g.add_argument("--max-ppl", metavar="PPL", help="absolute perplexity ceiling")
    g.add_argument("--max-kl", metavar="NATS", help="KL to the fp32 model per token "
                   "(fidelity; default 0.05)")
    g.add_argument("--mem-budget", default="fit", metavar="SIZE|fit|none",
                   help="parameter memory budget, e.g. 2MiB, 1.5MB; 'fit' (default): fits the "
                        "device's memories; 'none'")
    s = p.add_argument_group("search")
    s.add_argument("--bits", default=DEFAULT_BITS, metavar="LIST",
                   help=f"candidate bit widths (default {DEFAULT_BITS})")
    s.add_argument("--granularity", default="group:64", metavar="G",
                   help="scale granularity: channel or group:N (default group:64)")
    s.add_argument("--symmetric", action=argparse.BooleanOptionalAction, default=False,
                   help="symmetric codes (default: asymmetric, with zero points)")
    s.add_argument("--clip", choices=("mse", "minmax"), default="mse",
                   help="range of each scale: 'mse' (default) shrinks it to the smallest squared "
                        "error per group; 'minmax' covers every weight")
    s.add_argument("--alpha", type=float, default=0.25,
                   help="weight of performance vs memory in the trade-off score (default 0.25: the floor already bounds the loss, so memory counts more inside it)")
    s.add_argument("--strategy", choices=("tiered", "ilp"), default="tiered")
    s.add_argument("--calib-samples", type=int, metavar="N", help="calibration windows/"
                   "sentences for the sensitivities (default 16 windows, 128 sentences)")
    s.add_argument("--eval-samples", type=int, metavar="N", help="evaluation windows/sentences "
                   "for full evaluations (default 64 windows; all of SST-2 dev)")
    s.add_argument("--max-evals", type=int, default=40, metavar="N",
                   help="budget of full evaluations (default 40)")
    s.add_argument("--seed", type=int, default=0)
    x = p.add_argument_group("execution (where the sensitivity measurements and the plan "
                             "evaluations run; docs/scaling.md)")
    x.add_argument("--executor", choices=("inproc", "pool", "ray"), default="inproc",
                   help="inproc: in this process (default); pool: local worker processes; ray: "
                   "tasks on a Ray cluster (pip install -e '.[ray]')")
    x.add_argument("--workers", type=int, metavar="N", help="evaluations at once (pool: "
                   "default 2; ray: default the cluster's CPUs, or GPUs with --gpus-per-worker)")
    x.add_argument("--ray-address", metavar="auto|HOST:PORT", help="an existing Ray cluster "
                   "(default: start a private local one with --workers CPUs)")
    x.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="G",
                   help="GPUs each Ray task requests (its worker evaluates on CUDA)")
    x.add_argument("--worker-threads", type=int, default=1, metavar="N",
                   help="torch threads per worker (default 1)")
    o = p.add_argument_group("output")
    o.add_argument("--out", metavar="DIR", help="output folder (default runs/<model>-<hw>-"
                   "<strategy>; an existing search of the same configuration is resumed)")
    o.add_argument("--resume", metavar="DIR", help="continue the stopped search in DIR")
    o.add_argument("--cache-dir", metavar="DIR", help="sensitivity cache (default "
                   "~/.cache/qslm/sensitivity)")
    o.add_argument("--no-final-eval", action="store_true", help="skip the final test-split "
                   "measurement of fp32 and the plan")
    o.add_argument("--no-export", action="store_true", help="do not write the packed model")
    o.add_argument("--no-plots", action="store_true")
    o.add_argument("--no-progress", action="store_true", help="no progress bars")
    o.add_argument("--threads", type=int, metavar="N", help="torch threads")
    return p


# ------------------------------------------------------------------------------------------------
def _parse_bits(text: str) -> tuple[int, ...]:
    try:
        bits = sorted({int(x) for x in str(text).replace(" ", "").split(",") if x}, reverse=True)
    except ValueError:
        raise SearchInputError(f"--bits: cannot read {text!r}: use e.g. 2,3,4,8") from None
    if not bits or any(not 1 <= b <= 8 for b in bits):
        raise SearchInputError(f"--bits: widths must be 1..8, got {text!r}")
    return tuple(bits)


def _parse_granularity(text: str) -> tuple[str, int | None]:
    t = str(text).strip().lower()
    if t == "channel":
        return t, None
    if t == "tensor":
        raise SearchInputError("--granularity tensor is not offered by the search (one scale "
                               "per matrix loses too much below 8 bits, and the cost model "
                               "prices scales per channel or group): use channel or group:N")
    for prefix in ("group:", "group", "g"):
        if t.startswith(prefix):
            try:
                n = int(t[len(prefix):])
            except ValueError:
                break
            if n < 1:
                break
            return "group", n
    raise SearchInputError(f"--granularity: use channel or group:N (e.g. group:64), "
                           f"got {text!r}")


def _floor(args: argparse.Namespace, task: str) -> PerformanceFloor:
    given = [(flag, kind, v) for flag, kind, v in (
        ("--max-acc-drop", "acc-drop", args.max_acc_drop), ("--min-acc", "min-acc", args.min_acc),
        ("--max-ppl-increase", "ppl-increase", args.max_ppl_increase),
        ("--max-ppl", "max-ppl", args.max_ppl), ("--max-kl", "kl", args.max_kl)) if v is not None]
    if len(given) > 1:
        raise SearchInputError(f"contradictory constraints: {' and '.join(g[0] for g in given)} "
                               "— give one performance floor")
    if not given:
        kind, value = DEFAULT_FLOORS[task]
        return PerformanceFloor(kind, value)
    flag, kind, text = given[0]
    needs = METRIC_TASK[FLOOR_METRIC[kind]]
    if needs != task:
        raise SearchInputError(f"{flag} does not apply to the {task} task (it is a {needs} "
                               "floor)")
    if kind == "ppl-increase":
        value = parse_fraction(text, flag)
    else:
        try:
            value = float(str(text).strip())
        except ValueError:
            raise SearchInputError(f"{flag}: cannot read {text!r} as a number") from None
        if kind == "acc-drop" and str(text).strip().endswith("%"):
            raise SearchInputError(f"{flag} is in accuracy points (e.g. 1), without %")
    return PerformanceFloor(kind, value)


def _check_args(args: argparse.Namespace) -> None:
    for name in ("calib_samples", "eval_samples", "max_evals", "threads", "workers",
                 "worker_threads"):
        v = getattr(args, name)
        low = 0 if name == "eval_samples" else 1
        if v is not None and v < low:
            raise SearchInputError(f"--{name.replace('_', '-')} must be >= {low}, got {v}")
    if not 0.0 <= args.alpha <= 1.0 or math.isnan(args.alpha):
        raise SearchInputError(f"--alpha must be in [0, 1], got {args.alpha}")
    from qslm.executor import check_executor_options

    check_executor_options(args.executor, workers=args.workers, ray_address=args.ray_address,
                           gpus_per_worker=args.gpus_per_worker)
    if args.resume and args.out and Path(args.out).resolve() != Path(args.resume).resolve():
        raise SearchInputError("--out and --resume name different folders: --resume DIR "
                               "continues the search in DIR")
    if args.resume and not (Path(args.resume) / "search.json").is_file():
        raise SearchInputError(f"--resume {args.resume}: no search.json there (not a search "
                               "folder, or it never started)")


def _fail(msg: str) -> int:
    print(f"qslm.search: error: {msg}", file=sys.stderr)
    return 2


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (QslmError, ValueError, OSError) as exc:
        # every qslm/hwmodel input error is a ValueError subclass; OSError: unreadable files
        return _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except KeyboardInterrupt:
        _say("qslm.search: interrupted; evaluations so far are in evals.jsonl — rerun with "
             "--resume to continue")
        return 130


def _run(args: argparse.Namespace) -> int:
    import torch

    from hwmodel.device import load_device

    t_start = time.perf_counter()
    _check_args(args)
    bits = _parse_bits(args.bits)
    granularity, group_size = _parse_granularity(args.granularity)
    budget = MemoryBudget.parse(args.mem_budget)
    if args.threads:
        torch.set_num_threads(args.threads)
    progress = not args.no_progress

    resumed_cfg: dict[str, Any] | None = None
    if args.resume:
        resumed_cfg = json.loads((Path(args.resume) / "search.json").read_text("utf-8"))

    device = load_device(args.hw)
    from qslm.models import load

    model = load(args.model)
    model.eval()

    from qslm.search.tasks import build_tasks, default_task, find_tokenizer

    task = args.task or default_task(model)
    notice = None
    tok_path = find_tokenizer(args.model, args.tokenizer) if task != "fidelity" else None
    floor_task = task
    try:
        if task != "fidelity":
            _floor(args, task)  # flag/task mismatches before any data work
        tasks = build_tasks(model, task, tokenizer_path=tok_path, data_dir=args.data_dir,
                            calib_samples=args.calib_samples, eval_samples=args.eval_samples,
                            seed=args.seed, progress=progress)
    except QslmError as exc:
        from qslm.errors import DataNotFoundError

        missing = isinstance(exc, DataNotFoundError) or "needs the model's tokenizer" in str(exc)
        if args.task is None and missing and task == "wikitext2":
            what = "tokenizer" if "tokenizer" in str(exc) else "data"
            notice = (f"no {task} {what} found (looked in --data-dir, $QSLM_DATA_DIR, "
                      "~/.cache/qslm/data, then tried to download); using the data-free "
                      "fidelity task (text sampled from the model, KL to fp32)")
            _say(f"notice: {notice}")
            task = floor_task = "fidelity"
            tasks = build_tasks(model, task, tokenizer_path=None, data_dir=args.data_dir,
                                calib_samples=args.calib_samples,
                                eval_samples=args.eval_samples, seed=args.seed,
                                progress=progress)
        else:
            raise
    floor = _floor(args, floor_task)

    from qslm.hierarchy import build_hierarchy
    from qslm.search.core import SearchSpace
    from qslm.sensitivity import data_fingerprint, model_fingerprint

    hierarchy = build_hierarchy(model)
    space = SearchSpace.from_hierarchy(hierarchy, bits, symmetric=args.symmetric,
                                       granularity=granularity, group_size=group_size,
                                       clip=args.clip)
    model_fp = model_fingerprint(model)
    config = {
        "format_version": CONFIG_VERSION, "model": args.model, "model_fingerprint": model_fp,
        "device": device.name, "task": task,
        "calibration_fingerprint": data_fingerprint(tasks.calibration),
        "evaluation_fingerprint": data_fingerprint(tasks.evaluation),
        "floor": floor.to_dict(), "budget": budget.to_dict(), "scheme": space.scheme(),
        "alpha": args.alpha, "strategy": args.strategy, "max_evals": args.max_evals,
        "seed": args.seed,
    }
    name = Path(args.model).stem if os.sep in args.model else args.model
    out = Path(args.resume or args.out or Path("runs") / f"{name}-{device.name}-{args.strategy}")
    cfg_path = out / "search.json"
    if resumed_cfg is not None and resumed_cfg != config:
        diff = sorted(k for k in set(config) | set(resumed_cfg)
                      if config.get(k) != resumed_cfg.get(k))
        raise SearchInputError(f"--resume {out}: that search had other settings "
                               f"({', '.join(diff)}); rerun with the same options or start a "
                               "new --out")
    if resumed_cfg is None and cfg_path.is_file():
        old = json.loads(cfg_path.read_text("utf-8"))
        if old != config:
            raise SearchInputError(f"{out} holds a search with other settings; pass another "
                                   "--out (or the same options to resume it)")
        _say(f"resuming the search in {out}")
    elif resumed_cfg is None and out.exists() and any(out.iterdir()):
        raise SearchInputError(f"{out} exists and is not a search folder: choose another --out")

    # The cost model's workload at the fp32 model's firing rates, measured on the calibration
    # data (they set the events of layers whose inputs are spikes).
    with torch.no_grad(), model.record_spikes() as rec:
        tasks.calibration.metric(model)
    rates = rec.block_rates()
    workload = (model.workload(rates, per="sequence", seq_len=tasks.seq_len)
                if getattr(model.config, "is_classifier", False) else model.workload(rates))
    cost, cost_order = space.cost_model(workload, device)

    from qslm.executor import make_executor  # before any output: a bad --ray-address writes nothing
    from qslm.search.core import Evaluator, Predictor, SearchContext, ilp_search, tiered_search
    from qslm.sensitivity import measure_sensitivity

    executor = make_executor(args.executor, workers=args.workers, ray_address=args.ray_address,
                             threads_per_worker=args.worker_threads,
                             gpus_per_worker=args.gpus_per_worker)
    try:
        # ---- from here on, work is kept in `out` ----------------------------------------------
        from qslm._io import atomic_write_text

        out.mkdir(parents=True, exist_ok=True)
        if not cfg_path.is_file():
            atomic_write_text(cfg_path, json.dumps(config, indent=1) + "\n")

        cache_dir = Path(args.cache_dir) if args.cache_dir else Path(
            os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qslm" / "sensitivity"
        _say(f"model {args.model}: {sum(p.numel() for p in model.parameters()):,} parameters, "
             f"{space.n_modules} quantizable modules in {len(space.blocks)} blocks; device "
             f"{device.name}; task {task}; floor: {floor.describe()}; budget: "
             f"{budget.describe()}")
        if executor.kind != "inproc":
            _say(f"executor {executor.kind}: {executor.workers} worker(s)")
        t0 = time.perf_counter()
        specs = [space.spec(b) for b in space.bits]
        table = measure_sensitivity(model, tasks.calibration, specs, hierarchy, cache_dir,
                                    progress=progress, executor=executor)
        t_sens = time.perf_counter() - t0
        _say(f"sensitivity: {len(table.module_metrics)} module and {len(table.block_metrics)} "
             f"block measurements ({table.n_evaluations} evaluated, {table.n_cached} from the "
             f"cache) in {t_sens:.1f} s")

        t0 = time.perf_counter()
        predictor = Predictor(table, space, same_units=tasks.same_units)
        evaluator = Evaluator(model, tasks.evaluation, space, out / "evals.jsonl",
                              executor=executor)
        if evaluator.n_available:
            _say(f"evals.jsonl: {evaluator.n_available} earlier evaluations available")
        ctx = SearchContext(space, predictor, cost, cost_order, evaluator, floor, budget,
                            alpha=args.alpha, max_evals=args.max_evals,
                            progress=_say)
        result = (tiered_search if args.strategy == "tiered" else ilp_search)(ctx)
        t_search = time.perf_counter() - t0
        chosen = ctx.best()
        feasible = chosen is not None
        if chosen is None:
            chosen = ctx.closest()

        from qslm.search.report import SearchOutcome, write_outputs

        outcome = SearchOutcome(
            args=vars(args), config=config, model=model, model_name=args.model, device=device,
            tasks=tasks, floor=floor, budget=budget, space=space, table=table, ctx=ctx,
            result=result, chosen=chosen, feasible=feasible, notice=notice,
            timings={"sensitivity_s": t_sens, "search_s": t_search}, t_start=t_start,
            tokenizer_path=tok_path if task != "fidelity" else None)
        write_outputs(outcome, out, final_eval=not args.no_final_eval,
                      export=not args.no_export, plots=not args.no_plots, say=_say)
        print(outcome.summary_table())
        if not feasible:
            return _fail(outcome.infeasible_message())
        return 0
    finally:
        executor.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
