"""Throughput of the hardware cost model: plans scored per second on a 216M-shaped workload.

    pytest benches/test_hwmodel.py --benchmark-enable

The vectorized scorer (CostModel.score on a 10,000 × 128 matrix of bit widths) and the
one-plan-at-a-time detailed path (CostModel.report) share a group; each records ``plans_per_s``
in ``extra_info``. Target (issue 4): ≥ 10,000 plans/s for the vectorized scorer.
"""

from __future__ import annotations

import numpy as np
import pytest

from hwmodel import CostModel, list_presets, spikegpt_workload

N_PLANS = 10_000
N_REFERENCE = 100
BITS = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8], dtype=np.int16)  # 0 = keep fp32


@pytest.fixture(scope="module")
def workload_216m():
    return spikegpt_workload(18, 768, 50277, firing_rates=0.2, spike_inputs="idealized")


def _record(benchmark, n_plans: int) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None and stats.stats.mean > 0:  # None under --benchmark-disable
        benchmark.extra_info["plans_per_s"] = n_plans / stats.stats.mean
        benchmark.extra_info["n_plans"] = n_plans


@pytest.mark.benchmark(group="hwmodel-score-216m")
@pytest.mark.parametrize("device", list_presets())
def test_score_vectorized(benchmark, workload_216m, device: str) -> None:
    model = CostModel(workload_216m, device)
    bits = np.random.default_rng(0).choice(BITS, size=(N_PLANS, model.n_modules))
    out = benchmark(model.score, bits)
    _record(benchmark, N_PLANS)
    assert out["energy_j"].shape == (N_PLANS,) and np.all(out["energy_j"] > 0)


@pytest.mark.benchmark(group="hwmodel-score-216m")
def test_report_one_plan_at_a_time(benchmark, workload_216m) -> None:
    model = CostModel(workload_216m, "edge-npu")
    bits = np.random.default_rng(0).choice(BITS, size=(N_REFERENCE, model.n_modules))

    def run() -> list:
        return [model.report(row) for row in bits]

    out = benchmark(run)
    _record(benchmark, N_REFERENCE)
    assert len(out) == N_REFERENCE
