"""qslm.executor: the sensitivity pass and the search on a local process pool and on a real local
Ray cluster (no mocks) give exactly the in-process results (same torch thread count); a worker
killed mid-job (from inside, or with SIGKILL from outside) is replaced and its job retried, a
bounded number of times; finished results are never recomputed, and an interrupted search
resumes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from qslm.errors import SensitivityError
from qslm.fidelity import FidelityTask
from qslm.executor import (
    ExecutorError,
    InProcessExecutor,
    Job,
    LocalPoolExecutor,
    RayExecutor,
    make_executor,
)
from qslm.hierarchy import build_hierarchy
from qslm.models import SpikeGPT, SpikeGPTConfig
from qslm.quant import QuantSpec
from qslm.search.constraints import MemoryBudget, PerformanceFloor
from qslm.search.core import (
    Evaluator,
    Predictor,
    SearchContext,
    SearchSpace,
    ilp_search,
    tiered_search,
)
from qslm.sensitivity import LMCalibrationTask, measure_sensitivity, plan_measurements

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPECS = [QuantSpec(2, False, group_size=32), QuantSpec(4, False, group_size=32)]
BITS = (1, 2, 3, 4, 6, 8)


def _model() -> SpikeGPT:
    torch.manual_seed(0)
    return SpikeGPT(SpikeGPTConfig(vocab_size=200, n_layer=2, n_embd=64, ctx_len=32)).eval()


def _task(seed: int = 1) -> LMCalibrationTask:
    ids = torch.randint(0, 200, (2000,), generator=torch.Generator().manual_seed(seed))
    return LMCalibrationTask.from_token_ids(ids, n_windows=4, window_len=32)


def _jobs(model) -> list[Job]:
    return [Job.of(m.key(), m.plan()) for m in plan_measurements(build_hierarchy(model), SPECS)]


def _in_process(model, task, jobs) -> dict[str, float]:
    return {r.key: r.metric for r in InProcessExecutor().run(model, task, jobs)}


class DiesInWorker(LMCalibrationTask):
    """A task whose worker process exits abruptly (as if killed) at its first evaluation — once
    over all workers (a marker file records it), or every time (``always``). The test process
    (``parent``) never dies. Picklable."""

    def __init__(self, base: LMCalibrationTask, marker: Path, always: bool = False) -> None:
        self.__dict__.update(base.__dict__)
        self.marker, self.always, self.parent = str(marker), always, os.getpid()

    def metric(self, model):
        if os.getpid() != self.parent and (self.always or not os.path.exists(self.marker)):
            Path(self.marker).write_text("died")
            os._exit(1)
        return super().metric(model)


class HangsInWorker(LMCalibrationTask):
    """A task whose first evaluation in a worker writes the worker's pid to ``marker`` and hangs,
    so that the test can kill that process from outside."""

    def __init__(self, base: LMCalibrationTask, marker: Path) -> None:
        self.__dict__.update(base.__dict__)
        self.marker, self.parent = str(marker), os.getpid()

    def metric(self, model):
        if os.getpid() != self.parent and not os.path.exists(self.marker):
            tmp = self.marker + ".tmp"
            Path(tmp).write_text(str(os.getpid()))
            os.replace(tmp, self.marker)
            time.sleep(600)
        return super().metric(model)


class FailsInWorker(LMCalibrationTask):
    """A task that raises (a task error, not a worker failure) in a worker."""

    def __init__(self, base: LMCalibrationTask) -> None:
        self.__dict__.update(base.__dict__)
        self.parent = os.getpid()

    def metric(self, model):
        if os.getpid() != self.parent:
            raise SensitivityError("bad calibration data in the worker")
        return super().metric(model)


def _kill_when_hanging(marker: Path) -> threading.Thread:
    """SIGKILL the process whose pid appears in ``marker`` (in a background thread)."""

    def watch() -> None:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        if marker.exists():
            os.kill(int(marker.read_text()), signal.SIGKILL)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t


# ================================================================================================
# The search, on any executor
# ================================================================================================


class Search:
    """A tiered or ILP search over a tiny model with a real sensitivity table (as cli._run)."""

    def __init__(self) -> None:
        self.model = _model()
        # KL to the fp32 model's predictions: grows with every quantized module (the NLL of a
        # random model does not), so the search has a real frontier to find
        self.calibration = FidelityTask.sampled(self.model, 4, 32, seed=1)
        self.evaluation = FidelityTask.sampled(self.model, 4, 32, seed=2)
        self.hierarchy = build_hierarchy(self.model)
        self.space = SearchSpace.from_hierarchy(self.hierarchy, BITS, symmetric=False,
                                                granularity="group", group_size=32)
        self.specs = [self.space.spec(b) for b in self.space.bits]
        self.cost, self.order = self.space.cost_model(self.model.workload(), "edge-npu")

    def table(self, executor=None):
        return measure_sensitivity(self.model, self.calibration, self.specs, self.hierarchy,
                                   progress=False, executor=executor)

    def run(self, strategy: str, executor=None, log: Path | None = None, table=None):
        table = table if table is not None else self.table()
        ev = Evaluator(self.model, self.evaluation, self.space, log, executor=executor)
        ctx = SearchContext(self.space, Predictor(table, self.space, same_units=True),
                            self.cost, self.order, ev, PerformanceFloor("kl", 0.02),
                            MemoryBudget("none"), max_evals=14)
        result = (tiered_search if strategy == "tiered" else ilp_search)(ctx)
        return ctx, result


def _decisions(ctx: SearchContext, result) -> tuple:
    """Everything the search decided, in order: the plans it asked for and what they gave, and
    the plan it chose."""
    recs = [(r.key, r.metric, r.degradation, r.tier) for r in ctx.evaluator.records.values()]
    return recs, ctx.best().key, result["tiers"]


@pytest.fixture(scope="module")
def search() -> Search:
    return Search()


# ================================================================================================
# Local process pool
# ================================================================================================


def test_pool_sensitivity_equals_in_process():
    model, task = _model(), _task()
    ref = measure_sensitivity(model, task, SPECS, progress=False)
    with LocalPoolExecutor(2) as pool:
        got = measure_sensitivity(model, task, SPECS, progress=False, executor=pool)
        assert pool.n_jobs == got.n_evaluations == ref.n_evaluations > 10
    assert got.baseline == ref.baseline
    assert got.module_metrics == ref.module_metrics  # exactly: same function, same threads
    assert got.block_metrics == ref.block_metrics


def test_pool_search_equals_in_process(search):
    table = search.table()
    ref = _decisions(*search.run("tiered", table=table))
    with LocalPoolExecutor(2) as pool:
        ctx, result = search.run("tiered", pool, table=table)
        assert _decisions(ctx, result) == ref
        assert ctx.evaluator.n_prefetched > 0  # the two workers did evaluate ahead


def test_pool_worker_that_dies_is_replaced_and_its_jobs_retried(tmp_path):
    model = _model()
    marker = tmp_path / "died"
    jobs = _jobs(model)
    with LocalPoolExecutor(2, retries=1) as pool:
        results = list(pool.run(model, DiesInWorker(_task(), marker), jobs))
        assert marker.read_text() == "died" and pool.restarts == 1 and pool.n_retried > 0
    got = {r.key: r.metric for r in results}
    assert len(results) == len(got) == len(jobs)  # every job exactly once
    assert got == _in_process(model, _task(), jobs)


def test_pool_worker_killed_from_outside_is_replaced(tmp_path):
    model = _model()
    marker = tmp_path / "pid"
    jobs = _jobs(model)[:6]
    with LocalPoolExecutor(2, retries=1) as pool:
        watcher = _kill_when_hanging(marker)
        results = list(pool.run(model, HangsInWorker(_task(), marker), jobs))
        watcher.join(timeout=5)
        assert pool.restarts == 1
    assert {r.key: r.metric for r in results} == _in_process(model, _task(), jobs)


def test_pool_gives_up_after_the_retries(tmp_path):
    model = _model()
    with LocalPoolExecutor(1, retries=1) as pool, \
            pytest.raises(ExecutorError, match="died 2 times"):
        list(pool.run(model, DiesInWorker(_task(), tmp_path / "m", always=True), _jobs(model)))


def test_final_measurements_on_the_pool_equal_in_process():
    """A search's final measurement (a picklable callable returning several values) runs as a
    measure job: same values as calling it on the fake-quantized model in-process."""
    from qslm.quant import QuantPlan, apply_fake_quant
    from qslm.search.tasks import FinalPerplexity

    model = _model()
    tokens = torch.randint(0, 200, (700,), generator=torch.Generator().manual_seed(3)).numpy()
    final = FinalPerplexity(tokens, ctx_len=32, n_words=150)
    plans = {"fp": QuantPlan(), "w2": QuantPlan.uniform(SPECS[0]),
             "w4": QuantPlan.uniform(SPECS[1])}
    ref = {}
    for k, plan in plans.items():
        with apply_fake_quant(model, plan):
            ref[k] = final(model)
    with LocalPoolExecutor(2) as pool:
        got = {r.key: r.metric for r in pool.run(model, final, [Job.of(k, p, measure=True)
                                                               for k, p in plans.items()])}
    assert got == ref
    assert len({v["test_token_ppl"] for v in ref.values()}) == 3  # the plans do change it


def test_pool_task_error_is_raised_as_is():
    model = _model()
    with LocalPoolExecutor(1) as pool, pytest.raises(SensitivityError, match="bad calibration"):
        list(pool.run(model, FailsInWorker(_task()), _jobs(model)[:2]))


def test_pool_follows_changed_weights():
    """Weights changed in place between batches are shipped again (not a stale copy)."""
    model, task = _model(), _task()
    jobs = _jobs(model)[:3]
    with LocalPoolExecutor(1) as pool:
        first = {r.key: r.metric for r in pool.run(model, task, jobs)}
        with torch.no_grad():
            model.head.weight.mul_(0.5)
        second = {r.key: r.metric for r in pool.run(model, task, jobs)}
    assert second == _in_process(model, task, jobs) != first


class CountsPickles(LMCalibrationTask):
    """A task that counts how often it is pickled (in this process)."""

    pickled = 0

    def __init__(self, base: LMCalibrationTask) -> None:
        self.__dict__.update(base.__dict__)

    def __getstate__(self):
        type(self).pickled += 1
        return self.__dict__


def test_a_task_is_serialized_once_for_all_batches():
    """A search submits a batch per evaluation: the task (and its data) is pickled once."""
    model, task = _model(), CountsPickles(_task())
    jobs = _jobs(model)
    with LocalPoolExecutor(2) as pool:
        results = [r for i in range(3) for r in pool.run(model, task, jobs[i::3])]
    assert CountsPickles.pickled == 1
    assert {r.key: r.metric for r in results} == _in_process(model, _task(), jobs)


def test_an_unpicklable_task_is_a_clear_error():
    class Local(LMCalibrationTask):  # a class defined in a function cannot be pickled
        pass

    task = Local(_task().windows)
    model = _model()
    with LocalPoolExecutor(1) as pool, pytest.raises(ExecutorError, match="not picklable"):
        list(pool.run(model, task, _jobs(model)[:1]))


@pytest.mark.parametrize("kw", [{"workers": 0}, {"threads_per_worker": 0}, {"retries": -1},
                                {"workers": 1.5}])
def test_bad_pool_settings(kw):
    with pytest.raises(ExecutorError):
        LocalPoolExecutor(**kw)


@pytest.mark.parametrize("kind, kw, match", [
    ("nosuch", {}, "executor must be one of"),
    ("inproc", {"workers": 4}, "--workers needs"),
    ("pool", {"ray_address": "auto"}, "--executor ray only"),
    ("pool", {"gpus_per_worker": 1}, "--executor ray only"),
])
def test_bad_executor_choices(kind, kw, match):
    with pytest.raises(ExecutorError, match=match):
        make_executor(kind, **kw)


def test_duplicate_job_keys_are_refused():
    model = _model()
    job = _jobs(model)[0]
    with pytest.raises(ExecutorError, match="same key twice"):
        list(InProcessExecutor().run(model, _task(), [job, job]))


# ================================================================================================
# A real local Ray cluster (2 CPUs)
# ================================================================================================


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    if ray.is_initialized():  # pragma: no cover - another test module left one running
        ray.shutdown()
    # the workers import this module's task classes (as a user's workers import theirs)
    here = str(Path(__file__).resolve().parent)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": here}})
    yield ray
    ray.shutdown()


def test_ray_sensitivity_equals_in_process(ray_cluster):
    model, task = _model(), _task()
    ref = measure_sensitivity(model, task, SPECS, progress=False)
    ex = RayExecutor(workers=2)
    got = measure_sensitivity(model, task, SPECS, progress=False, executor=ex)
    assert ex.n_jobs == got.n_evaluations == ref.n_evaluations > 10
    assert got.baseline == ref.baseline
    assert got.module_metrics == ref.module_metrics
    assert got.block_metrics == ref.block_metrics
    workers = {r.worker for r in ex.run(model, task, _jobs(model))}
    assert len(workers) == 2  # both workers of the cluster took jobs


@pytest.mark.parametrize("strategy", ["tiered", "ilp"])
def test_ray_search_equals_in_process(ray_cluster, search, strategy):
    table = search.table()
    ref = _decisions(*search.run(strategy, table=table))
    ex = RayExecutor(workers=2)
    assert _decisions(*search.run(strategy, ex, table=search.table(ex))) == ref


def test_ray_task_whose_worker_is_killed_is_retried(ray_cluster, tmp_path):
    model = _model()
    marker = tmp_path / "pid"
    jobs = _jobs(model)[:6]
    ex = RayExecutor(workers=2, retries=1)
    watcher = _kill_when_hanging(marker)
    results = list(ex.run(model, HangsInWorker(_task(), marker), jobs))
    watcher.join(timeout=5)
    killed = int(marker.read_text())
    assert killed != os.getpid()
    got = {r.key: r.metric for r in results}
    assert len(results) == len(got) == len(jobs)
    assert got == _in_process(model, _task(), jobs)
    assert all(not r.worker.endswith(f":{killed}") for r in results)  # rerun elsewhere


def test_ray_gives_up_after_the_retries(ray_cluster, tmp_path):
    model = _model()
    ex = RayExecutor(workers=1, retries=1)
    with pytest.raises(ExecutorError, match="lost job .* after 1 retries"):
        list(ex.run(model, DiesInWorker(_task(), tmp_path / "m", always=True), _jobs(model)))


def test_ray_task_error_is_raised_as_is(ray_cluster):
    model = _model()
    with pytest.raises(SensitivityError, match="bad calibration"):
        list(RayExecutor(workers=1).run(model, FailsInWorker(_task()), _jobs(model)[:2]))


class _StopsAfter:
    """An executor that is interrupted (Ctrl-C) after ``n`` results of the wrapped one."""

    def __init__(self, inner, n: int) -> None:
        self.inner, self.n, self.kind, self.workers = inner, n, inner.kind, inner.workers
        self.n_jobs = 0

    def run(self, model, task, jobs):
        for r in self.inner.run(model, task, jobs):
            if self.n_jobs == self.n:
                raise KeyboardInterrupt
            self.n_jobs += 1
            yield r


def test_an_interrupted_ray_search_resumes_without_recomputing(ray_cluster, search, tmp_path):
    table = search.table()
    ref_ctx, ref_result = search.run("tiered", table=table)
    ref = _decisions(ref_ctx, ref_result)
    log = tmp_path / "evals.jsonl"
    stopped = _StopsAfter(RayExecutor(workers=2), 4)
    with pytest.raises(KeyboardInterrupt):
        search.run("tiered", stopped, log=log, table=table)
    before = log.read_text().splitlines()
    assert len(before) == 4  # every result that arrived was kept

    ex = RayExecutor(workers=2)
    ctx, result = search.run("tiered", ex, log=log, table=table)
    assert _decisions(ctx, result) == ref
    after = log.read_text().splitlines()
    assert after[:4] == before
    keys = [json.loads(line)["key"] for line in after]
    assert len(keys) == len(set(keys))  # no plan evaluated twice
    assert ex.n_jobs == len(after) - 4  # only what was missing ran
    assert ctx.evaluator.n_reused >= 1


@pytest.mark.parametrize("kw, match", [
    ({"workers": 0}, "workers"), ({"num_gpus": -1}, "num_gpus"),
    ({"num_cpus": 0}, "must request some resource"), ({"retries": -2}, "retries"),
    ({"num_gpus": 1}, "cannot run one task: each asks for GPU 1, the cluster has GPU 0"),
    ({"num_cpus": 4}, "asks for CPU 4, the cluster has CPU 2"),
    ({"resources": {"tpu": 1}}, "asks for tpu 1"),
])
def test_bad_ray_settings(ray_cluster, kw, match):
    with pytest.raises(ExecutorError, match=match):
        RayExecutor(**kw)


def test_ray_workers_default_to_the_cluster_cpus(ray_cluster):
    assert RayExecutor().workers == 2
    assert RayExecutor(num_cpus=2).workers == 1


def test_evaluations_of_the_search_are_spread_over_the_workers(ray_cluster, search, tmp_path):
    """With two workers, the search evaluates ahead: plans it then asks for are not evaluated
    again, and every result it ever computed is in evals.jsonl."""
    log = tmp_path / "evals.jsonl"
    ex = RayExecutor(workers=2)
    ctx, _ = search.run("tiered", ex, log=log)
    ev = ctx.evaluator
    lines = log.read_text().splitlines()
    assert ev.n_prefetched > 0
    assert len(lines) == ex.n_jobs == ev.n_new + ev.n_unused
    assert np.isfinite([r.metric for r in ev.records.values()]).all()
