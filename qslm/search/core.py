"""The search: candidate plans, fast scoring, full evaluations, the tiered and the ILP strategy.

Vocabulary
----------
A candidate plan is a vector of bit widths, one per quantizable module in hierarchy order
(``0`` = keep the original precision); :class:`SearchSpace` turns it into a
:class:`~qslm.quant.QuantPlan` with one scheme (symmetric or not, granularity) for every quantized
module. The **levels** are the candidate bit widths, highest first, with ``keep`` (0) above them.

Fast scoring (:meth:`SearchContext.score`): the *predicted degradation* of a plan from the
sensitivity table (:class:`Predictor`) and the *exact* memory footprint, fit and energy from the
hardware cost model (``hwmodel.CostModel``). Thousands of plans are scored per second; only
promising ones get a **full evaluation** (:class:`Evaluator`): the plan is applied as fake-quant to
the model and the evaluation task measured. Every full evaluation is appended to ``evals.jsonl``
the moment it is known; a resumed search reads the file and never repeats one.

The trade-off score (DESIGN.md "Sensitivity and search")::

    score = α · P(plan) / P(fp) + (1 − α) · (1 − M(plan) / M(fp))

``P`` is the performance with higher = better (:func:`~qslm.search.constraints.relative_performance`),
``M`` the parameter footprint of the cost model (packed weights + fp16 scales + every other
parameter). A plan is **feasible** when its measured degradation is at most ``D_max`` (the floor)
and its memory meets the budget. The search returns the feasible evaluated plan with the best
score.

The predictor
-------------
Additive over modules, with the block measurements where they apply: a block whose modules all
share one bit width contributes its measured block degradation (which includes the interactions
inside the block); any other block contributes the sum of its module degradations. Degradations
are clipped at 0 and made monotone in the bit width (a lower width is never predicted better than
a higher one) — a noisy measurement must not invite a bad plan. The sensitivity task's units may
differ from the evaluation task's (a classification loss vs an accuracy drop), so predictions are
multiplied by a **gain** fitted on the full evaluations made so far (least squares through the
origin; 1 when the units agree and nothing has been evaluated yet).

Tiered strategy (the QSLM paper's)
----------------------------------
1. **global**: one bit width for every module; the lowest that meets the floor (a walk over the
   levels from the predicted one). It is also the uniform-precision baseline.
2. **block**: from the global plan, a greedy path lowers one block by one level at a time,
   always the block with the least predicted degradation per byte saved; a binary search of full
   evaluations finds the furthest feasible point of the path.
3. **module**: the same at module granularity, and moves may also *raise* a sensitive module by
   one level while lowering another, when that saves memory for less predicted degradation.

ILP strategy (beyond the paper; HAWQ-V3 style)
----------------------------------------------
One binary variable per (module, level); ``scipy.optimize.milp`` maximises the linearised score
subject to one level per module, predicted degradation ``≤ t`` and the memory budget (bytes, or
the device's capacity and neuromorphic core count for ``fit``). The tolerance ``t`` starts at
``D_max`` and is bracketed by full evaluations (raised when the plan passes with room to spare,
lowered when it fails) until the bracket is tight or the evaluation budget is spent.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import zip_longest
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from qslm.errors import QslmError, SensitivityError
from qslm.hierarchy import Hierarchy
from qslm.quant import QuantPlan, QuantSpec
from qslm.search.constraints import MemoryBudget, PerformanceFloor, relative_performance
from qslm.sensitivity import SensitivityTable, degradation

__all__ = [
    "EvalRecord",
    "Evaluator",
    "Predictor",
    "SearchContext",
    "SearchError",
    "SearchSpace",
    "ilp_search",
    "tiered_search",
]

KEEP = 0
EVALS_FORMAT_VERSION = 1
FEAS_EPS = 1e-9  # numerical slack on the floor


class SearchError(QslmError, RuntimeError):
    """The search cannot go on (inconsistent inputs, a corrupt evals.jsonl, ...)."""


# ================================================================================================
# Search space
# ================================================================================================


@dataclass(frozen=True)
class SearchSpace:
    """Modules (hierarchy order), their blocks, the candidate bit widths and the one scheme.

    Every quantized module uses the same scheme (``symmetric``, ``granularity``, ``group_size``)
    except at 1 bit, which is always sign binarization (``W = ±α``): it keeps the sign of every
    weight, so a module read only through a threshold (SpikeGPT's binary embedding, Θ(emb))
    loses nothing at 1 bit — the sensitivity pass measures that like any other width.
    """

    modules: tuple[str, ...]
    blocks: dict[str, tuple[int, ...]]  # block → indices into modules
    bits: tuple[int, ...]  # candidate bit widths, highest first (no keep)
    symmetric: bool = True
    granularity: str = "group"
    group_size: int | None = 64
    clip: str = "minmax"  # QuantSpec.clip of every width >= 2

    @classmethod
    def from_hierarchy(cls, hierarchy: Hierarchy, bits: Iterable[int], *, symmetric: bool = True,
                       granularity: str = "group", group_size: int | None = 64,
                       clip: str = "minmax") -> SearchSpace:
        modules = hierarchy.module_names
        index = {m: i for i, m in enumerate(modules)}
        blocks = {b.name: tuple(index[m] for m in b.module_names) for b in hierarchy.blocks}
        levels = tuple(sorted({int(b) for b in bits}, reverse=True))
        space = cls(modules, blocks, levels, symmetric, granularity, group_size, clip)
        for b in levels:
            space.spec(b)  # validates every width with the scheme
        return space

    @property
    def levels(self) -> tuple[int, ...]:
        """keep (0), then the bit widths from highest to lowest."""
        return (KEEP, *self.bits)

    @property
    def n_modules(self) -> int:
        return len(self.modules)

    def spec(self, bits: int) -> QuantSpec | None:
        if bits == KEEP:
            return None
        # 1 bit is always sign binarization (symmetric): an asymmetric 1-bit code would only
        # pick one of two levels per group and loses the sign of every weight
        return QuantSpec(int(bits), self.symmetric or bits == 1, self.granularity,
                         self.group_size if self.granularity == "group" else None,
                         "minmax" if bits == 1 else self.clip)  # binarization: α is L2-optimal

    def plan(self, bits: Sequence[int] | np.ndarray) -> QuantPlan:
        """The explicit plan (one entry per module) of a bit vector."""
        return QuantPlan({m: self.spec(int(b)) for m, b in zip(self.modules, bits)})

    def uniform(self, bits: int) -> np.ndarray:
        return np.full(self.n_modules, bits, dtype=np.int64)

    def key(self, bits: Sequence[int] | np.ndarray) -> str:
        """Stable identifier of a bit vector under this scheme (evals.jsonl key)."""
        scheme = f"{'s' if self.symmetric else 'a'}|{self.granularity}|{self.group_size}"
        if self.clip != "minmax":
            scheme += f"|{self.clip}"
        body = ",".join(str(int(b)) for b in bits)
        return hashlib.sha256(f"{scheme}|{'|'.join(self.modules)}|{body}".encode()).hexdigest()[:20]

    def bits_dict(self, bits: Sequence[int] | np.ndarray) -> dict[str, int]:
        return {m: int(b) for m, b in zip(self.modules, bits)}

    def cost_model(self, workload: Any, device: Any) -> tuple[Any, np.ndarray]:
        """``(hwmodel.CostModel, order)`` costing this space's scheme on ``device``; ``order[i]``
        is the cost-model column of module ``i``. The workload's modules must be this space's."""
        from hwmodel import CostModel

        if self.granularity == "tensor":
            raise SearchError("the cost model prices scales per channel or per group: a search "
                              "with per-tensor scales cannot be costed exactly (use channel)")
        cost = CostModel(workload, device,
                         group_size=self.group_size if self.granularity == "group" else None,
                         symmetric=self.symmetric, symmetric_bits=(1,))
        names = list(cost.workload.module_names)
        if sorted(names) != sorted(self.modules):
            missing = sorted(set(self.modules) - set(names))
            raise SearchError(f"the workload's modules do not match the model's hierarchy "
                              f"({len(names)} vs {len(self.modules)} modules; e.g. missing "
                              f"{missing[:3]})")
        return cost, np.array([names.index(m) for m in self.modules], dtype=np.int64)

    def scheme(self) -> dict[str, Any]:
        return {"bits": list(self.bits), "symmetric": self.symmetric,
                "granularity": self.granularity, "group_size": self.group_size,
                "clip": self.clip}


# ================================================================================================
# Predictor
# ================================================================================================


class Predictor:
    """Predicted degradation of bit vectors from a :class:`SensitivityTable` (module docstring).

    ``same_units``: the sensitivity task measures the evaluation metric's own degradation (the
    gain then starts at 1); otherwise the gain is unknown until the first full evaluation.
    """

    def __init__(self, table: SensitivityTable, space: SearchSpace, *, same_units: bool) -> None:
        self.space = space
        levels = space.levels
        lvl_index = {b: j for j, b in enumerate(levels)}
        self._col = np.zeros(33, dtype=np.int64)  # bits → column
        for b, j in lvl_index.items():
            self._col[b] = j
        M, L = space.n_modules, len(levels)
        D = np.zeros((M, L))
        for i, m in enumerate(space.modules):
            for j, b in enumerate(levels):
                if b != KEEP:
                    D[i, j] = max(0.0, table.delta(m, space.spec(b)))
        self.D = self._monotone(D)
        self.block_names = tuple(space.blocks)
        nB = len(self.block_names)
        BD = np.full((nB, L), np.nan)
        for k, bname in enumerate(self.block_names):
            members = space.blocks[bname]
            BD[k, 0] = 0.0
            for j, b in enumerate(levels[1:], start=1):
                try:
                    BD[k, j] = max(0.0, table.block_delta(bname, space.spec(b)))
                except SensitivityError:  # block not measured at this width: use the sum
                    BD[k, j] = self.D[list(members), j].sum()
        self.BD = self._monotone(BD)
        self._members = [np.array(space.blocks[b], dtype=np.int64) for b in self.block_names]
        self.same_units = same_units
        self.gain: float | None = 1.0 if same_units else None
        self._pairs: list[tuple[float, float]] = []

    def _monotone(self, D: np.ndarray) -> np.ndarray:
        """A lower width (higher column) is never predicted better than a higher one — except
        1 bit, which is sign binarization, another scheme: its measurement stands alone."""
        out = D.copy()
        levels = self.space.levels
        chain = [j for j, b in enumerate(levels) if b != 1]
        out[:, chain] = np.maximum.accumulate(D[:, chain], axis=1)
        return out

    def raw(self, bits: np.ndarray) -> np.ndarray:
        """Predicted degradation in sensitivity-task units, for a (P, M) or (M,) bit matrix."""
        B = np.atleast_2d(np.asarray(bits, dtype=np.int64))
        cols = self._col[B]  # (P, M)
        per_module = self.D[np.arange(B.shape[1])[None, :], cols]  # (P, M)
        total = np.zeros(B.shape[0])
        for k, idx in enumerate(self._members):
            c = cols[:, idx]
            uniform = (c == c[:, :1]).all(axis=1)
            s = per_module[:, idx].sum(axis=1)
            total += np.where(uniform, self.BD[k, c[:, 0]], s)
        return total

    def predict(self, bits: np.ndarray) -> np.ndarray:
        """Predicted degradation in evaluation-metric units (raw × gain; gain 1 if unknown)."""
        return self.raw(bits) * (self.gain if self.gain is not None else 1.0)

    def observe(self, raw: float, actual: float) -> None:
        """Record a full evaluation; refit the gain (least squares through the origin, over the
        evaluations with a non-negligible prediction)."""
        if raw > 1e-12:
            self._pairs.append((raw, max(actual, 0.0)))
        if self._pairs:
            num = sum(r * a for r, a in self._pairs)
            den = sum(r * r for r, _ in self._pairs)
            g = num / den if den > 0 else None
            if g is not None and g > 0:
                self.gain = g

    def module_degradation(self, module_index: int, bits: int) -> float:
        return float(self.D[module_index, self._col[bits]])


# ================================================================================================
# Full evaluations (evals.jsonl)
# ================================================================================================


@dataclass(frozen=True)
class EvalRecord:
    """One full evaluation of a plan on the evaluation task."""

    key: str
    bits: tuple[int, ...]
    metric: float  # evaluation metric (accuracy, NLL or KL)
    degradation: float  # positive = worse than fp32
    tier: str
    predicted: float | None  # predicted degradation at the time (evaluation units)
    seconds: float
    cached: bool = False  # read from evals.jsonl of an earlier (interrupted) run


class Evaluator:
    """Full evaluations of bit vectors, appended to ``evals.jsonl`` and reused from it.

    ``task`` is the evaluation task (a :class:`~qslm.sensitivity.Task`: its metric, its
    direction); evaluations run on ``executor`` (default in-process; see :mod:`qslm.executor`).
    The fp32 baseline is evaluated (or read) at construction.

    :meth:`evaluate` *commits* a plan to the search (it counts against the budget and feeds the
    predictor, in the order the strategy asks). :meth:`prefetch` evaluates several plans at once
    on the executor's workers — the ones a strategy may ask for next — without committing them:
    each result is logged to ``evals.jsonl`` as it arrives (never computed twice, also across
    an interruption) and committed only if the strategy asks for it. So the search takes the
    same decisions, in the same order, whatever the number of workers.
    """

    def __init__(self, model: nn.Module, task: Any, space: SearchSpace, log_path: Path | None,
                 *, executor: Any = None,
                 on_eval: Callable[[EvalRecord], None] | None = None) -> None:
        from qslm.executor import InProcessExecutor

        if not callable(getattr(task, "metric", None)) or \
                not isinstance(getattr(task, "higher_is_better", None), bool):
            raise SearchError(f"the evaluation task must be a qslm.sensitivity.Task (metric(), "
                              f"higher_is_better), got {type(task).__name__}")
        self.model = model
        self.task = task
        self.higher_is_better = task.higher_is_better
        self.space = space
        self.log_path = log_path
        self.executor = executor if executor is not None else InProcessExecutor()
        self.on_eval = on_eval
        self._done: dict[str, tuple[float, float]] = {}  # key → (metric, seconds), logged
        self._fresh: set[str] = set()  # keys of _done evaluated by this run (not read back)
        self.records: dict[str, EvalRecord] = {}  # this run's, in order of first use
        self.n_new = 0
        self.n_reused = 0
        self.n_prefetched = 0  # evaluated ahead of being asked for (parallel executors)
        self.seconds = 0.0
        if log_path is not None and log_path.exists():
            self._load()
        self.n_available = len(self._done)  # earlier evaluations read from evals.jsonl
        fp = self.evaluate(space.uniform(KEEP), "baseline", None)
        self.baseline = fp.metric

    def _load(self) -> None:
        """Read earlier evaluations. Only a last line without its newline (a write cut by an
        interruption) is dropped; any other unreadable or foreign line is an error."""
        assert self.log_path is not None
        data = self.log_path.read_bytes()
        lines = data.split(b"\n")
        cut = lines[-1] if lines[-1].strip() else None  # no trailing newline: maybe cut short
        complete = lines[:-1]
        good: list[bytes] = []
        for n, line in enumerate(complete, start=1):
            if not line.strip():
                continue
            self._read_record(line, n)
            good.append(line)
        if cut is not None:
            try:
                self._read_record(cut, len(lines))
                good.append(cut)
            except SearchError:
                pass  # a record cut by an interruption: dropped, evaluated again
        if cut is not None:
            from qslm._io import atomic_write_bytes

            atomic_write_bytes(self.log_path, b"".join(ln + b"\n" for ln in good))

    def _read_record(self, line: bytes, n: int) -> None:
        assert self.log_path is not None
        where = f"{self.log_path}:{n}"
        try:
            rec = json.loads(line)
            version = rec.get("format_version")
        except (ValueError, AttributeError):
            raise SearchError(f"{where}: unreadable evaluation record (a damaged file? delete it "
                              "to start the search over)") from None
        if version != EVALS_FORMAT_VERSION:
            raise SearchError(f"{where}: evals format_version {version!r}, this qslm writes "
                              f"{EVALS_FORMAT_VERSION}")
        try:
            names = rec["bits"]
            if not isinstance(names, dict) or set(names) != set(self.space.modules):
                raise SearchError(f"{where}: the record's modules are not this model's (an "
                                  "evals.jsonl of another search?)")
            bits = [int(names[m]) for m in self.space.modules]
            key = self.space.key(bits)
            if key != rec["key"]:
                raise SearchError(f"{where}: the plan does not match its key (an evals.jsonl "
                                  "of a search with another scheme?)")
            self._done[key] = (float(rec["metric"]), float(rec.get("seconds", 0.0)))
        except SearchError:
            raise
        except (KeyError, TypeError, ValueError):
            raise SearchError(f"{where}: incomplete evaluation record (a damaged file? delete "
                              "it to start the search over)") from None

    def degradation(self, metric: float) -> float:
        return degradation(self.higher_is_better, self.baseline, metric)

    def known(self, bits: np.ndarray) -> float | None:
        """The metric of ``bits`` if it is already evaluated (committed, prefetched or read
        from evals.jsonl), else None."""
        key = self.space.key(bits)
        if key in self.records:
            return self.records[key].metric
        done = self._done.get(key)
        return None if done is None else done[0]

    def prefetch(self, candidates: Sequence[np.ndarray], tier: str,
                 predicted: Sequence[float | None] | None = None) -> int:
        """Evaluate the candidates not known yet, all at once on the executor; each result is
        appended to evals.jsonl as it arrives, and committed later by :meth:`evaluate` if the
        strategy asks for it. Returns how many were evaluated."""
        from qslm.executor import Job

        predicted = list(predicted) if predicted is not None else [None] * len(candidates)
        todo: dict[str, tuple[np.ndarray, float | None]] = {}
        for bits, pred in zip(candidates, predicted):
            bits = np.asarray(bits, dtype=np.int64)
            key = self.space.key(bits)
            if key not in self.records and key not in self._done and key not in todo:
                todo[key] = (bits, pred)
        if not todo:
            return 0
        jobs = [Job.of(k, self.space.plan(b)) for k, (b, _) in todo.items()]
        for r in self.executor.run(self.model, self.task, jobs):
            bits, pred = todo[r.key]
            self._done[r.key] = (r.metric, r.seconds)
            self._fresh.add(r.key)
            if self.log_path is not None:
                self._append({"format_version": EVALS_FORMAT_VERSION, "key": r.key,
                              "bits": self.space.bits_dict(bits), "metric": r.metric,
                              "tier": tier, "predicted": pred, "seconds": round(r.seconds, 4)})
        return len(todo)

    def evaluate(self, bits: np.ndarray, tier: str, predicted: float | None) -> EvalRecord:
        bits = np.asarray(bits, dtype=np.int64)
        key = self.space.key(bits)
        if key in self.records:
            return self.records[key]
        if key not in self._done:
            self.prefetch([bits], tier, [predicted])
        else:
            self.n_prefetched += key in self._fresh
        metric, secs = self._done[key]
        cached = key not in self._fresh
        if cached:
            self.n_reused += 1
        else:
            self.n_new += 1
            self.seconds += secs
        if not math.isfinite(metric):
            raise SearchError(f"the evaluation of plan {key} gave a non-finite metric ({metric})")
        base = getattr(self, "baseline", metric)
        rec = EvalRecord(key, tuple(int(b) for b in bits), metric,
                         degradation(self.higher_is_better, base, metric), tier, predicted, secs,
                         cached)
        self.records[key] = rec
        if self.on_eval is not None:
            self.on_eval(rec)
        return rec

    @property
    def n_unused(self) -> int:
        """Plans prefetched by this run that the search never asked for (they stay in
        evals.jsonl)."""
        return len(self._fresh - set(self.records))

    def _append(self, record: dict[str, Any]) -> None:
        assert self.log_path is not None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    @property
    def n_evaluations(self) -> int:
        """Distinct plans fully evaluated in this search (new or reused), fp32 included."""
        return len(self.records)


# ================================================================================================
# Scoring and feasibility
# ================================================================================================


@dataclass
class SearchContext:
    """Everything the strategies share: space, predictor, cost model, evaluator, constraints."""

    space: SearchSpace
    predictor: Predictor
    cost: Any  # hwmodel.CostModel over the same modules
    cost_order: np.ndarray  # space module i → cost-model column
    evaluator: Evaluator
    floor: PerformanceFloor
    budget: MemoryBudget
    alpha: float = 0.5
    margin: float = 0.5  # predicted-feasibility margin (fraction of D_max) for path lengths
    max_evals: int = 40
    progress: Any = None  # callable(str) for status lines, or None
    n_scored: int = 0
    trace: list[dict[str, Any]] = field(default_factory=list)  # scored points kept for plots

    def __post_init__(self) -> None:
        self.baseline = self.evaluator.baseline
        self.dmax = self.floor.allowed_degradation(self.baseline)
        self.fp32_bytes = float(self.cost.fp32_param_bytes)
        self.metric_kind = self.floor.metric
        self._cost_cache: dict[bytes, dict[str, float]] = {}

    # ---- fast scoring ----------------------------------------------------------------------------
    def _cost_bits(self, B: np.ndarray) -> np.ndarray:
        C = np.zeros((B.shape[0], self.cost.n_modules), dtype=np.int64)
        C[:, self.cost_order] = B
        return C

    def score(self, bits: np.ndarray, *, record: str | None = None) -> dict[str, np.ndarray]:
        """Predicted degradation, exact memory/fit/energy, predicted score of a (P, M) matrix."""
        B = np.atleast_2d(np.asarray(bits, dtype=np.int64))
        c = self.cost.score(self._cost_bits(B))
        raw = self.predictor.raw(B)
        pred = raw * (self.predictor.gain if self.predictor.gain is not None else 1.0)
        perf = relative_performance(self.metric_kind, pred, self.baseline)
        mem = c["param_bytes"]
        out = {"pred": pred, "raw": raw, "memory": mem,
               "fits": c["fits"], "energy": c["energy_j"], "power": c["power_w"],
               "latency": c["latency_s"], "mem_ok": self.memory_ok(mem, c["fits"]),
               "score": self.alpha * perf + (1 - self.alpha) * (1 - mem / self.fp32_bytes)}
        self.n_scored += B.shape[0]
        if record is not None:
            for i in range(B.shape[0]):
                self.trace.append({"tier": record, "memory_bytes": float(mem[i]),
                                   "predicted_degradation": float(pred[i]), "evaluated": False})
        return out

    def memory_ok(self, mem: np.ndarray, fits: np.ndarray) -> np.ndarray:
        if self.budget.kind == "bytes":
            assert self.budget.bytes is not None
            return mem <= self.budget.bytes
        if self.budget.kind == "fit":
            return np.asarray(fits, dtype=bool)
        return np.ones_like(mem, dtype=bool)

    def plan_cost(self, bits: np.ndarray) -> dict[str, float]:
        k = np.asarray(bits, dtype=np.int64).tobytes()
        if k not in self._cost_cache:
            c = self.cost.score(self._cost_bits(np.atleast_2d(bits)))
            self._cost_cache[k] = {n: float(c[n][0]) for n in
                                   ("param_bytes", "energy_j", "power_w", "latency_s")} | {
                "fits": bool(c["fits"][0])}
        return self._cost_cache[k]

    # ---- evaluation --------------------------------------------------------------------------------
    def evaluate(self, bits: np.ndarray, tier: str) -> EvalRecord:
        """Full evaluation (or reuse), the predictor's gain refitted on the outcome."""
        raw = float(self.predictor.raw(bits)[0])
        pred = raw * self.predictor.gain if self.predictor.gain is not None else None
        n_before = len(self.evaluator.records)
        rec = self.evaluator.evaluate(bits, tier, pred)
        if len(self.evaluator.records) > n_before and not (np.asarray(bits) == KEEP).all():
            self.predictor.observe(raw, rec.degradation)
        return rec

    @property
    def parallel(self) -> int:
        """Evaluations the executor runs at once."""
        return max(1, int(getattr(self.evaluator.executor, "workers", 1)))

    def prefetch(self, candidates: Sequence[np.ndarray], tier: str) -> None:
        """With a parallel executor, evaluate the first candidates not known yet (at most
        :attr:`parallel`, and no more than the budget could still commit) together; the
        strategy then commits those it asks for with :meth:`evaluate`. A no-op in-process."""
        if self.parallel <= 1:
            return
        room = min(self.parallel, self.budget_left())
        fresh, seen = [], set()
        for bits in candidates:
            key = self.space.key(bits)
            if key in seen or self.evaluator.known(bits) is not None:
                continue
            seen.add(key)
            fresh.append(np.asarray(bits, dtype=np.int64))
            if len(fresh) >= room:
                break
        if len(fresh) < 2:
            return  # one plan: evaluate() runs it when asked
        g = self.predictor.gain
        preds = [float(self.predictor.raw(b)[0]) * g if g is not None else None for b in fresh]
        self.evaluator.prefetch(fresh, tier, preds)

    def predicted(self, bits: np.ndarray) -> float:
        """The predicted degradation of one plan (evaluation units; not counted as scored)."""
        g = self.predictor.gain
        return float(self.predictor.raw(np.atleast_2d(bits))[0]) * (1.0 if g is None else g)

    def outcome(self, bits: np.ndarray) -> bool | None:
        """Whether ``bits`` meets the floor, if already evaluated (else None)."""
        metric = self.evaluator.known(bits)
        if metric is None:
            return None
        return degradation(self.evaluator.higher_is_better, self.baseline, metric) <= \
            self.dmax + FEAS_EPS

    def perf_ok(self, rec: EvalRecord) -> bool:
        return rec.degradation <= self.dmax + FEAS_EPS

    def feasible(self, rec: EvalRecord) -> bool:
        c = self.plan_cost(np.array(rec.bits))
        return self.perf_ok(rec) and bool(self.memory_ok(np.array([c["param_bytes"]]),
                                                         np.array([c["fits"]]))[0])

    def actual_score(self, rec: EvalRecord) -> float:
        c = self.plan_cost(np.array(rec.bits))
        perf = relative_performance(self.metric_kind, rec.degradation, self.baseline)
        return self.alpha * perf + (1 - self.alpha) * (1 - c["param_bytes"] / self.fp32_bytes)

    def budget_left(self) -> int:
        return self.max_evals - self.evaluator.n_evaluations

    def say(self, msg: str) -> None:
        if self.progress is not None:
            self.progress(msg)

    def best(self, records: Iterable[EvalRecord] | None = None) -> EvalRecord | None:
        """The feasible evaluated plan with the best score (None if none is feasible)."""
        recs = list(self.evaluator.records.values() if records is None else records)
        ok = [r for r in recs if self.feasible(r)]
        if not ok:
            return None
        return max(ok, key=lambda r: (self.actual_score(r), -self.plan_cost(np.array(r.bits))
                                      ["param_bytes"]))

    def closest(self) -> EvalRecord:
        """For an infeasible search: the smallest plan that meets the performance floor, else
        the best-performing plan."""
        recs = list(self.evaluator.records.values())
        perf = [r for r in recs if self.perf_ok(r)]
        if perf:
            return min(perf, key=lambda r: self.plan_cost(np.array(r.bits))["param_bytes"])
        return min(recs, key=lambda r: r.degradation)


# ================================================================================================
# Tiered strategy
# ================================================================================================


class _BudgetSpent(Exception):
    """The --max-evals budget is spent (caught inside the strategies)."""


def global_tier(ctx: SearchContext) -> tuple[EvalRecord | None, EvalRecord]:
    """Uniform precision: the lowest width that meets the floor (None if none does), and the
    anchor for the next tiers (that plan, or keep-everything when no width meets the floor)."""
    space = ctx.space
    levels = space.bits
    U = np.stack([space.uniform(b) for b in levels])
    s = ctx.score(U, record="global")
    if ctx.predictor.gain is not None:
        ok = np.nonzero(s["pred"] <= ctx.dmax * (1 + ctx.margin))[0]
        start = int(ok.max()) if ok.size else 0
    else:
        start = len(levels) // 2
    results: dict[int, EvalRecord] = {}

    def ev(i: int, ahead: Sequence[int] = ()) -> EvalRecord:
        """Level ``i``'s evaluation; ``ahead``: the levels the walk may need next (evaluated
        with it by a parallel executor)."""
        if i not in results:
            if ctx.budget_left() <= 0:
                raise _BudgetSpent
            ctx.prefetch([U[j] for j in (i, *ahead) if 0 <= j < len(levels)], "global")
            results[i] = ctx.evaluate(U[i], "global")
            r = results[i]
            ctx.say(f"global  w{levels[i]}: degradation {r.degradation:.4g} "
                    f"({'meets' if ctx.perf_ok(r) else 'misses'} the floor)")
        return results[i]

    i = start
    lowest: int | None = None
    n = len(levels)
    up = lambda j: range(j + 1, n)  # noqa: E731 - lower widths (the walk when a level passes)
    down = lambda j: range(j - 1, -1, -1)  # noqa: E731 - higher widths (when it fails)
    try:
        likely = bool(s["pred"][i] <= ctx.dmax)
        first = [x for pair in zip_longest(up(i), down(i))
                 for x in (pair if likely else pair[::-1]) if x is not None]
        if ctx.perf_ok(ev(i, first)):
            lowest = i
            while i + 1 < n and ctx.perf_ok(ev(i + 1, up(i + 1))):
                i += 1
                lowest = i
        else:
            while i - 1 >= 0 and not ctx.perf_ok(ev(i - 1, down(i - 1))):
                i -= 1
            lowest = i - 1 if i - 1 >= 0 and ctx.perf_ok(ev(i - 1)) else None
    except _BudgetSpent:
        ctx.say("global  tier: evaluation budget spent")
    if lowest is None:
        anchor = ctx.evaluator.records[space.key(space.uniform(KEEP))]
        return None, anchor
    return results[lowest], results[lowest]


def _last_feasible_on_path(ctx: SearchContext, path: list[np.ndarray], tier: str) -> int:
    """Index of the furthest point of ``path`` meeting the floor (path[0] is known to), by
    binary search of full evaluations, assuming degradation grows along the path."""
    lo, hi = 0, len(path)  # lo meets the floor; hi: first index known (or assumed) to miss
    while hi - lo > 1 and ctx.budget_left() > 0:
        mid = (lo + hi) // 2
        if ctx.parallel > 1:
            ctx.prefetch([path[j] for j in _search_frontier(ctx, path, lo, hi)], tier)
        r = ctx.evaluate(path[mid], tier)
        c = ctx.plan_cost(path[mid])
        ctx.say(f"{tier:7s} step {mid}/{len(path) - 1}: degradation {r.degradation:.4g}, "
                f"{c['param_bytes'] / 2**20:.3f} MiB "
                f"({'meets' if ctx.perf_ok(r) else 'misses'} the floor)")
        if ctx.perf_ok(r):
            lo = mid
        else:
            hi = mid
    return lo


def _search_frontier(ctx: SearchContext, path: list[np.ndarray], lo: int, hi: int) -> list[int]:
    """The points the binary search of ``path[lo:hi]`` evaluates next, breadth first: its
    midpoint, then the midpoints of both halves it may continue in (the predicted outcome's
    half first; only the real one when the outcome is already known), and so on, until
    :attr:`SearchContext.parallel` not yet evaluated points are found."""
    out: list[int] = []
    queue = [(lo, hi)]
    while queue and len(out) < ctx.parallel:
        a, b = queue.pop(0)
        if b - a <= 1:
            continue
        mid = (a + b) // 2
        known = ctx.outcome(path[mid])
        if known is not None:
            queue.append((mid, b) if known else (a, mid))
            continue
        out.append(mid)
        likely = ctx.predicted(path[mid]) <= ctx.dmax
        queue += [(mid, b), (a, mid)] if likely else [(a, mid), (mid, b)]
    return out


def _greedy_path(ctx: SearchContext, start: np.ndarray, groups: list[np.ndarray], tier: str,
                 *, exchanges: bool) -> list[np.ndarray]:
    """Greedy descent: each step applies the move with the least predicted degradation per byte
    saved. A move lowers one group (all its modules together) to any lower level; with
    ``exchanges`` it may also raise another group by one level. Stops when the prediction passes
    ``D_max·(1 + 2·margin)`` (the binary search then finds the true edge) or nothing saves memory.
    """
    space = ctx.space
    levels = space.levels
    col = {b: j for j, b in enumerate(levels)}
    limit = ctx.dmax * (1 + 2 * ctx.margin)
    cur = start.copy()
    path = [cur.copy()]
    G = len(groups)

    def shifted(bits: np.ndarray, g: int, step: int) -> np.ndarray | None:
        idx = groups[g]
        cols = np.array([col[int(b)] for b in bits[idx]])
        new = cols + step
        if new.min() < 0 or new.max() >= len(levels):
            return None
        out = bits.copy()
        out[idx] = [levels[j] for j in new]
        return out

    def lowered(bits: np.ndarray, g: int) -> list[np.ndarray]:
        """The group set to each lower level (not only the next one: 1-bit binarization may
        cost less than 2 bits, so the path must be able to jump there)."""
        idx = groups[g]
        top = max(col[int(b)] for b in bits[idx])
        outs = []
        for j in range(top + 1, len(levels)):
            out = bits.copy()
            out[idx] = levels[j]
            outs.append(out)
        return outs

    base = ctx.score(cur)
    for _ in range(len(levels) * max(G, 1) * 2):
        cands = []
        for g in range(G):
            for down in lowered(cur, g):
                cands.append(down)
                if exchanges:
                    for h in range(G):
                        if h != g:
                            both = shifted(down, h, -1)
                            if both is not None:
                                cands.append(both)
        if not cands:
            break
        C = np.stack(cands)
        s = ctx.score(C, record=tier)
        saved = base["memory"][0] - s["memory"]
        dpred = s["pred"] - base["pred"][0]
        useful = saved > 0
        if not useful.any():
            break
        eff = np.where(useful, dpred / np.where(useful, saved, 1.0), np.inf)
        j = int(np.argmin(eff))
        if s["pred"][j] > limit:
            break
        cur = C[j]
        base = {k: v[j:j + 1] for k, v in s.items()}
        path.append(cur.copy())
    return path


def tiered_search(ctx: SearchContext) -> dict[str, Any]:
    """The tiered strategy (module docstring). Returns what the report needs."""
    space = ctx.space
    uniform, anchor = global_tier(ctx)
    start = np.array(anchor.bits)
    tiers: dict[str, Any] = {"global": _rec_info(ctx, uniform)}
    # block tier
    blocks = [np.array(ix, dtype=np.int64) for ix in space.blocks.values()]
    path = _greedy_path(ctx, start, blocks, "block", exchanges=False)
    ctx.say(f"block   tier: greedy path of {len(path) - 1} steps")
    i = _last_feasible_on_path(ctx, path, "block")
    block_rec = ctx.evaluate(path[i], "block") if i > 0 else anchor
    tiers["block"] = _rec_info(ctx, block_rec)
    # module tier
    singles = [np.array([m], dtype=np.int64) for m in range(space.n_modules)]
    path = _greedy_path(ctx, np.array(block_rec.bits), singles, "module", exchanges=True)
    ctx.say(f"module  tier: greedy path of {len(path) - 1} steps")
    i = _last_feasible_on_path(ctx, path, "module")
    module_rec = ctx.evaluate(path[i], "module") if i > 0 else block_rec
    tiers["module"] = _rec_info(ctx, module_rec)
    return {"uniform": uniform, "tiers": tiers}


def _rec_info(ctx: SearchContext, rec: EvalRecord | None) -> dict[str, Any] | None:
    if rec is None:
        return None
    c = ctx.plan_cost(np.array(rec.bits))
    return {"key": rec.key, "degradation": rec.degradation, "metric": rec.metric,
            "memory_bytes": c["param_bytes"], "feasible": ctx.feasible(rec),
            "meets_floor": ctx.perf_ok(rec), "score": ctx.actual_score(rec)}


# ================================================================================================
# ILP strategy
# ================================================================================================


def _ilp_solve(ctx: SearchContext, t_raw: float, tables: dict[str, np.ndarray]) -> np.ndarray | None:
    """Bit vector maximising the linearised score with raw predicted degradation ≤ ``t_raw``
    under the memory budget; None if the program is infeasible."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    space = ctx.space
    M, L = space.n_modules, len(space.levels)
    D = ctx.predictor.D  # (M, L) module degradations, raw units
    mem = tables["bytes"]  # (M, L) stored bytes per module and level
    g = ctx.predictor.gain if ctx.predictor.gain is not None else 1.0
    dperf = (1.0 / ctx.baseline) if ctx.metric_kind == "accuracy" and ctx.baseline > 0 else 1.0
    c = (ctx.alpha * dperf * g * D + (1 - ctx.alpha) * mem / ctx.fp32_bytes).ravel()
    rows, lo, hi = [], [], []
    one = np.zeros((M, M * L))
    for m in range(M):
        one[m, m * L:(m + 1) * L] = 1.0
    rows.append(one)
    lo += [1.0] * M
    hi += [1.0] * M
    rows.append(D.ravel()[None, :])
    lo.append(-np.inf)
    hi.append(t_raw)
    cap = tables.get("capacity")
    if cap is not None:
        rows.append(mem.ravel()[None, :])
        lo.append(-np.inf)
        hi.append(cap)
    cores = tables.get("cores")
    if cores is not None:
        rows.append(cores[0].ravel()[None, :])
        lo.append(-np.inf)
        hi.append(cores[1])
    A = np.vstack(rows)
    res = milp(c, constraints=LinearConstraint(A, lo, hi), integrality=np.ones(M * L),
               bounds=Bounds(0, 1), options={"time_limit": 30.0})
    if res.x is None:
        return None
    x = np.round(res.x).reshape(M, L)
    return np.array([space.levels[int(np.argmax(x[m]))] for m in range(M)], dtype=np.int64)


def _ilp_tables(ctx: SearchContext) -> dict[str, Any]:
    """Per-(module, level) stored bytes, and the budget right-hand sides."""
    space = ctx.space
    L = len(space.levels)
    M = space.n_modules
    mem = np.zeros((M, L))
    cores = np.zeros((M, L))
    per_module = ctx.cost.module_bytes_table()  # (M_cost, 33)
    per_core = ctx.cost.module_cores_table()
    for j, b in enumerate(space.levels):
        col = 32 if b == KEEP else b
        mem[:, j] = per_module[ctx.cost_order, col]
        cores[:, j] = per_core[ctx.cost_order, col]
    out: dict[str, Any] = {"bytes": mem}
    other = ctx.cost.other_param_bytes
    if ctx.budget.kind == "bytes":
        assert ctx.budget.bytes is not None
        out["capacity"] = ctx.budget.bytes - other
    elif ctx.budget.kind == "fit":
        out["capacity"] = ctx.cost.param_capacity_bytes - other
        if ctx.cost.device.neuromorphic is not None:
            out["cores"] = (cores, ctx.cost.device.neuromorphic.cores - ctx.cost.const_cores)
    return out


def ilp_search(ctx: SearchContext, *, rounds: int = 10, tol: float = 0.05) -> dict[str, Any]:
    """The ILP strategy (module docstring). The uniform baseline (global tier) runs first: it is
    reported beside the plan and its evaluations calibrate the predictor's gain."""
    uniform, _ = global_tier(ctx)
    tables = _ilp_tables(ctx)
    g = ctx.predictor.gain or 1.0
    t = ctx.dmax / g
    lo_t, hi_t = 0.0, math.inf  # raw tolerances known to give a feasible / infeasible plan
    best: EvalRecord | None = None
    history = []
    for k in range(rounds):
        if ctx.budget_left() <= 0:
            break
        x = _ilp_solve(ctx, t, tables)
        ctx.n_scored += 1
        if x is None:
            ctx.say(f"ilp     round {k}: no plan within tolerance {t:.4g} and the memory budget")
            history.append({"t_raw": t, "plan": None})
            lo_t = t
            if math.isinf(hi_t):
                t *= 2.0
            else:
                t = (lo_t + hi_t) / 2
            if t > 1e6:
                break
            continue
        r = ctx.evaluate(x, "ilp")
        c = ctx.plan_cost(x)
        ok = ctx.perf_ok(r)
        ctx.say(f"ilp     round {k}: tolerance {t:.4g} → degradation {r.degradation:.4g}, "
                f"{c['param_bytes'] / 2**20:.3f} MiB ({'meets' if ok else 'misses'} the floor)")
        history.append({"t_raw": t, "key": r.key, "degradation": r.degradation, "meets": ok})
        if ok:
            lo_t = max(lo_t, t)
            if best is None or ctx.actual_score(r) > ctx.actual_score(best):
                best = r
        else:
            hi_t = min(hi_t, t)
        if not math.isinf(hi_t) and hi_t - lo_t <= tol * max(hi_t, 1e-12):
            break
        # next tolerance: rescale by how far the measured degradation is from the floor
        ratio = ctx.dmax / max(r.degradation, 1e-12)
        proposal = t * min(max(ratio, 0.5), 2.0) if r.degradation > 0 else t * 2.0
        if not lo_t < proposal < hi_t:
            proposal = (lo_t + hi_t) / 2 if not math.isinf(hi_t) else t * 2.0
        if abs(proposal - t) <= 1e-12 * max(t, 1.0):
            break
        t = proposal
    return {"uniform": uniform, "tiers": {"global": _rec_info(ctx, uniform),
                                          "ilp": _rec_info(ctx, best)},
            "ilp_rounds": history}
