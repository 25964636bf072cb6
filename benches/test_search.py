"""Search costs: predictor + cost-model scoring throughput, one full evaluation of each bundled
model, and a sensitivity pass.

    QSLM_DATA_DIR=../shared/data pytest benches/test_search.py --benchmark-enable

* ``test_score_plans``: :meth:`SearchContext.score` (additive predictor with block terms + exact
  hwmodel cost) on 10,000 random plans of the bundled LM's 37 modules; ``plans_per_s`` in
  ``extra_info``. The sensitivity values are random here: scoring cost does not depend on them.
* ``test_full_evaluation``: one full evaluation as the search runs it (fake-quant a 4-bit plan
  with the default scheme — asymmetric, group 64, MSE-clipped ranges —,
  measure the evaluation task, restore): the LM on 64 windows of WikiText-2 valid, the
  classifier on all 872 SST-2 dev sentences.
* ``test_sensitivity_pass``: the per-module and per-block pass of each bundled model at one width
  (37 + 5 measurements + baseline) on the default calibration data (16 windows of 129 tokens; 128
  SST-2 train sentences), no cache. A default search measures 7 widths: about 7× this.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qslm.hierarchy import build_hierarchy
from qslm.models import load
from qslm.quant import QuantSpec, apply_fake_quant
from qslm.search.constraints import MemoryBudget, PerformanceFloor
from qslm.search.core import Evaluator, Predictor, SearchContext, SearchSpace
from qslm.search.tasks import build_tasks, find_tokenizer
from qslm.sensitivity import SensitivityTable, measure_sensitivity

N_PLANS = 10_000
BITS = (1, 2, 3, 4, 5, 6, 8)


def _random_table(space: SearchSpace, seed: int = 0) -> SensitivityTable:
    rng = np.random.default_rng(seed)
    specs = tuple(space.spec(b) for b in space.bits)
    mods = {(m, s): float(rng.uniform(0, 0.05)) for m in space.modules for s in specs}
    blocks = {b: tuple(space.modules[i] for i in ix) for b, ix in space.blocks.items()}
    bl = {(b, s): float(rng.uniform(0, 0.1)) for b in blocks for s in specs}
    return SensitivityTable("lm-nll", False, 4.0, specs, blocks, mods, bl)


class _ConstantTask:
    """An evaluation task of constant metric: scoring plans never evaluates one."""

    name, higher_is_better = "constant", False

    def metric(self, model) -> float:
        return 4.0


def test_score_plans(benchmark) -> None:
    model = load("spikegpt-mini-wt2").eval()
    space = SearchSpace.from_hierarchy(build_hierarchy(model), BITS, symmetric=False)
    cost, order = space.cost_model(model.workload(), "edge-npu")
    evaluator = Evaluator(model, _ConstantTask(), space, None)  # scoring never evaluates
    ctx = SearchContext(space, Predictor(_random_table(space), space, same_units=True), cost,
                        order, evaluator, PerformanceFloor("ppl-increase", 0.05),
                        MemoryBudget("fit"))
    plans = np.random.default_rng(0).choice(space.levels, size=(N_PLANS, space.n_modules))
    out = benchmark(ctx.score, plans)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and stats.stats.mean > 0:
        benchmark.extra_info["plans_per_s"] = N_PLANS / stats.stats.mean
    assert out["memory"].shape == (N_PLANS,) and np.all(out["pred"] >= 0)


@pytest.fixture(scope="module", params=["spikegpt-mini-wt2", "spikegpt-mini-sst2"])
def bundled(request):
    torch.set_num_threads(2)
    model = load(request.param).eval()
    task = "sst2" if model.config.is_classifier else "wikitext2"
    tasks = build_tasks(model, task, tokenizer_path=find_tokenizer(request.param, None),
                        data_dir=None, calib_samples=None, eval_samples=None, seed=0,
                        progress=False)
    return request.param, model, tasks


def test_full_evaluation(benchmark, bundled) -> None:
    name, model, tasks = bundled
    space = SearchSpace.from_hierarchy(build_hierarchy(model), BITS, symmetric=False,
                                       clip="mse")  # the search's default scheme
    plan = space.plan(space.uniform(4))
    benchmark.group = "search: one full evaluation"
    benchmark.extra_info["model"] = name

    def run() -> float:
        with apply_fake_quant(model, plan):
            return tasks.evaluation.metric(model)

    value = benchmark.pedantic(run, rounds=3, iterations=1)
    assert np.isfinite(value)


def test_sensitivity_pass(benchmark, bundled) -> None:
    name, model, tasks = bundled
    spec = QuantSpec(4, False, group_size=64, clip="mse")
    benchmark.group = "search: sensitivity pass at one width"
    benchmark.extra_info["model"] = name

    def run() -> SensitivityTable:
        return measure_sensitivity(model, tasks.calibration, [spec], cache_dir=None,
                                   progress=False)

    table = benchmark.pedantic(run, rounds=1, iterations=1)
    assert table.n_evaluations == 1 + 37 + 5
