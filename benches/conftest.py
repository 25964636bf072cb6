"""Shared setup of the benchmarks: same thread count for torch and the kernels, and a table of
speed-up ratios (baseline median / qslm median, measured in the same run) printed at the end.

Run: ``pytest benches --benchmark-enable`` (add ``--benchmark-json out.json`` to keep the raw
figures). Under ``--benchmark-disable`` each benchmark body runs once as a smoke test.
"""

from __future__ import annotations

import platform

import pytest
import torch

from qslm import kernels

# Targets of the kernels issue: group → minimum speed-up over its baseline.
_RESULTS: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="session", autouse=True)
def _same_threads():
    torch.set_num_threads(kernels.num_threads())


@pytest.fixture
def record():
    """``record(benchmark, group, role)`` with role "baseline" or "qslm": keeps the median."""

    def _record(benchmark, group: str, role: str, target: float | None = None) -> None:
        """``role`` "baseline", "qslm", or "qslm:VARIANT" (another qslm configuration, reported
        on its own row against the same baseline)."""
        stats = getattr(benchmark, "stats", None)
        if stats is None:  # --benchmark-disable
            return
        entry = _RESULTS.setdefault(group, {})
        entry[role] = stats.stats.median
        if target is not None and role == "qslm":
            entry["target"] = target
        if "baseline" in entry and role != "baseline" and role in entry:
            benchmark.extra_info["speedup"] = entry["baseline"] / entry[role]

    return _record


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = [(g if role == "qslm" else f"{g} [{role[5:]}]",
             {"baseline": r["baseline"], "qslm": r[role],
              **({"target": r["target"]} if role == "qslm" and "target" in r else {})})
            for g, r in _RESULTS.items() if "baseline" in r
            for role in r if role.startswith("qslm")]
    if not rows:
        return
    tr = terminalreporter
    tr.section("qslm speed-up vs baseline (median / median, same run)")
    tr.write_line(
        f"cpu: {platform.processor() or platform.machine()}, kernels isa {kernels.simd_isa()}, "
        f"threads {kernels.num_threads()} (torch {torch.get_num_threads()})"
    )
    tr.write_line(f"| {'group':<44} | baseline ms | qslm ms | speed-up | target |")
    tr.write_line(f"|{'-' * 46}|-------------|---------|----------|--------|")
    for g, r in rows:
        ratio = r["baseline"] / r["qslm"]
        tgt = r.get("target")
        verdict = "" if tgt is None else (f"≥{tgt:g} met" if ratio >= tgt else f"≥{tgt:g} MISSED")
        tr.write_line(
            f"| {g:<44} | {r['baseline'] * 1e3:11.3f} | {r['qslm'] * 1e3:7.3f} | {ratio:7.2f}× | {verdict} |"
        )
