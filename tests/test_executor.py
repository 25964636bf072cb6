"""ProcessPoolRunner (qslm.executor): sensitivity measurements in local worker processes give
exactly the in-process results (same thread count), and a worker killed mid-run is replaced and
its measurements retried, without recomputing finished ones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from qslm.errors import QslmError
from qslm.executor import ProcessPoolRunner
from qslm.models import SpikeGPT, SpikeGPTConfig
from qslm.quant import QuantSpec
from qslm.hierarchy import build_hierarchy
from qslm.sensitivity import (
    LMCalibrationTask,
    measure_sensitivity,
    plan_measurements,
    run_measurements,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPECS = [QuantSpec(2, False, group_size=32), QuantSpec(4, False, group_size=32)]


def _model() -> SpikeGPT:
    torch.manual_seed(0)
    return SpikeGPT(SpikeGPTConfig(vocab_size=200, n_layer=2, n_embd=64, ctx_len=32)).eval()


def _task() -> LMCalibrationTask:
    ids = torch.randint(0, 200, (2000,), generator=torch.Generator().manual_seed(1))
    return LMCalibrationTask.from_token_ids(ids, n_windows=4, window_len=32)


class DiesInWorker(LMCalibrationTask):
    """A task whose worker process exits abruptly (as if killed) at its first evaluation —
    once over all workers (a marker file records it), or every time (``always``). The parent
    process (``parent`` pid) never dies. Picklable."""

    def __init__(self, base: LMCalibrationTask, marker: Path, always: bool = False) -> None:
        self.__dict__.update(base.__dict__)
        self.marker, self.always, self.parent = str(marker), always, os.getpid()

    def metric(self, model):
        if os.getpid() != self.parent and (self.always or not os.path.exists(self.marker)):
            Path(self.marker).write_text("died")
            os._exit(1)
        return super().metric(model)


def test_pool_equals_in_process():
    model, task = _model(), _task()
    ref = measure_sensitivity(model, task, SPECS, progress=False)
    got = measure_sensitivity(model, task, SPECS, runner=ProcessPoolRunner(2))
    assert got.n_evaluations == ref.n_evaluations > 10
    assert got.baseline == ref.baseline
    assert got.module_metrics == ref.module_metrics  # exactly: same function, same threads
    assert got.block_metrics == ref.block_metrics


def test_killed_worker_is_retried(tmp_path):
    model = _model()
    marker = tmp_path / "died"
    runner = ProcessPoolRunner(2, retries=1)
    measurements = plan_measurements(build_hierarchy(model), SPECS)
    results = [r for r in runner(model, DiesInWorker(_task(), marker), measurements)]
    assert marker.read_text() == "died" and runner.restarts == 1
    got = {r.measurement.key(): r.metric for r in results}
    assert len(results) == len(got) == len(measurements)  # every measurement exactly once
    ref = {r.measurement.key(): r.metric
           for r in run_measurements(model, _task(), measurements, progress=False)}
    assert got == ref


def test_gives_up_after_the_retries(tmp_path):
    model = _model()
    runner = ProcessPoolRunner(1, retries=1)
    with pytest.raises(QslmError, match="died 2 times"):
        list(runner(model, DiesInWorker(_task(), tmp_path / "m", always=True),
                    plan_measurements(build_hierarchy(model), SPECS)))


@pytest.mark.parametrize("kw", [{"workers": 0}, {"threads_per_worker": 0}, {"retries": -1},
                                {"workers": 1.5}])
def test_bad_settings(kw):
    with pytest.raises(QslmError):
        ProcessPoolRunner(**kw)
