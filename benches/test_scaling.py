"""The sensitivity pass of the bundled LM (the default search's: every module and block at the
seven default widths, WikiText-2 calibration windows) on 1 vs 2 local workers, for the process
pool and for a private local Ray instance. Each round includes starting the workers (and Ray)
and shipping the model: what a search pays. One torch thread per worker.

Run: ``QSLM_DATA_DIR=../shared/data pytest benches/test_scaling.py --benchmark-enable``.
Under ``--benchmark-disable`` (the smoke run) each case measures one width on 4 windows.
"""

from __future__ import annotations

import pytest

from qslm.executor import make_executor
from qslm.hierarchy import build_hierarchy
from qslm.models import load
from qslm.search.cli import DEFAULT_BITS
from qslm.search.core import SearchSpace
from qslm.search.tasks import build_tasks, find_tokenizer
from qslm.sensitivity import measure_sensitivity

MODEL = "spikegpt-mini-wt2"


@pytest.fixture(scope="module")
def lm(request):
    smoke = request.config.getoption("benchmark_disable", False)
    model = load(MODEL).eval()
    tasks = build_tasks(model, "wikitext2", tokenizer_path=find_tokenizer(MODEL, None),
                        data_dir=None, calib_samples=4 if smoke else None, eval_samples=0,
                        seed=0, progress=False)
    hierarchy = build_hierarchy(model)
    bits = [int(b) for b in DEFAULT_BITS.split(",")][:1 if smoke else None]
    space = SearchSpace.from_hierarchy(hierarchy, bits, symmetric=False, granularity="group",
                                       group_size=64, clip="mse")
    return model, tasks.calibration, hierarchy, [space.spec(b) for b in space.bits]


@pytest.mark.parametrize("kind", ["pool", "ray"])
@pytest.mark.parametrize("workers", [1, 2])
def test_sensitivity_pass(benchmark, record, lm, kind, workers):
    model, task, hierarchy, specs = lm
    n_jobs = []

    def run():
        with make_executor(kind, workers=workers) as ex:
            table = measure_sensitivity(model, task, specs, hierarchy, None, progress=False,
                                        executor=ex)
        n_jobs.append(ex.n_jobs)
        return table

    table = benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=0)
    assert n_jobs[-1] == table.n_evaluations == 1 + len(specs) * (
        len(table.module_metrics) // len(specs) + len(table.block_metrics) // len(specs))
    benchmark.extra_info["measurements"] = table.n_evaluations
    record(benchmark, f"sensitivity pass, {kind}, 2 workers vs 1",
           "baseline" if workers == 1 else "qslm")
