"""The report CLI (python -m hwmodel.report) and the plot functions."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hwmodel import cost, spikegpt_workload
from hwmodel.plots import plot_energy_blocks, plot_fp32_vs_plan, plot_memory
from hwmodel.report import main as report_main

MODEL = "spikegpt:2,32,100"


def _plan(tmp_path, modules: dict, default=None) -> str:
    p = tmp_path / "plan.json"
    p.write_text(json.dumps({"format_version": 1, "default": default, "modules": modules}))
    return str(p)


def test_report_writes_json_markdown_and_plots(tmp_path, capsys) -> None:
    plan = _plan(tmp_path, {"head": None, "re:blocks\\.1\\..*": {"bits": 2, "group_size": 16}},
                 default={"bits": 4, "group_size": None, "symmetric": True})
    rc = report_main(["--hw", "edge-npu", "--plan", plan, "--model", MODEL,
                      "--spike-inputs", "idealized", "--firing-rate", "0.25"])
    assert rc == 0
    out = tmp_path / "hwmodel-edge-npu"  # default: next to the plan
    names = sorted(p.name for p in out.iterdir())
    assert names == ["energy_blocks.png", "fp32_vs_plan.png", "memory.png", "report.json",
                     "report.md"]
    doc = json.loads((out / "report.json").read_text())
    assert doc["format_version"] == 1 and doc["device"] == "edge-npu"
    assert doc["units"]["energy"] == "J" and doc["units"]["per"] == "token"
    rep, fp32 = doc["report"], doc["fp32"]
    assert rep["energy_j"] == pytest.approx(rep["compute_energy_j"] + rep["onchip_memory_energy_j"]
                                            + rep["offchip_memory_energy_j"]
                                            + rep["static_energy_j"])
    assert rep["param_bytes"] < fp32["param_bytes"]
    assert doc["ratios"]["memory"] == pytest.approx(rep["param_bytes"] / fp32["param_bytes"])
    bits = {m["name"]: m["bits"] for m in rep["modules"]}
    assert bits["head"] == 0 and bits["blocks.1.ffn.key"] == 2 and bits["blocks.0.att.key"] == 4
    # the same numbers as the library
    w = spikegpt_workload(2, 32, 100, firing_rates=0.25, spike_inputs="idealized")
    from hwmodel import read_plan_json
    assert cost(w, read_plan_json(plan), "edge-npu").energy_j == pytest.approx(rep["energy_j"])
    md = (out / "report.md").read_text()
    assert "| energy per token |" in md and "## Memory levels" in md
    assert (out / "memory.png").read_bytes()[:4] == b"\x89PNG"


def test_uniform_bits_per_sequence(tmp_path) -> None:
    out = tmp_path / "r"
    rc = report_main(["--hw", "neuromorphic", "--bits", "3", "--model", MODEL, "--per",
                      "sequence", "--seq-len", "8", "--num-classes", "2", "--out", str(out),
                      "--no-plots"])
    assert rc == 0
    doc = json.loads((out / "report.json").read_text())
    assert doc["units"]["per"] == "sequence"
    assert doc["report"]["supported"] is True and doc["fp32"]["supported"] is False
    assert not (out / "memory.png").exists()


@pytest.mark.parametrize(("args", "message"), [
    pytest.param(["--hw", "tpu", "--bits", "4"], "unknown device 'tpu'", id="bad-device"),
    pytest.param(["--hw", "mcu", "--bits", "4", "--model", "gpt2"], "unknown model 'gpt2'",
                 id="bad-model"),
    pytest.param(["--hw", "mcu", "--bits", "20"], "bits must be an integer in 1..16",
                 id="bits-20-rejected"),
    pytest.param(["--hw", "mcu", "--plan", "PLAN"], "plan names 1 module(s) not in workload",
                 id="plan-for-another-model"),
    pytest.param(["--hw", "mcu", "--plan", "MISSING"], "cannot read plan", id="missing-plan"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, message) -> None:
    plan = _plan(tmp_path, {"blocks.99.att.key": {"bits": 4}})
    args = [plan if a == "PLAN" else str(tmp_path / "none.json") if a == "MISSING" else a
            for a in args]
    assert report_main([*args, "--model", MODEL, "--out", str(tmp_path / "o")]
                       if "--model" not in args else [*args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err


def test_argparse_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as exc:
        report_main(["--hw", "mcu"])  # neither --plan nor --bits
    assert exc.value.code == 2


def test_plot_functions_return_figures() -> None:
    from matplotlib.figure import Figure

    w = spikegpt_workload(2, 32, 100)
    plan, fp32 = cost(w, 4, "mcu"), cost(w, None, "mcu")
    for fig in (plot_memory(plan, fp32), plot_memory(plan), plot_energy_blocks(plan),
                plot_fp32_vs_plan(plan, fp32)):
        assert isinstance(fig, Figure) and fig.axes


def test_import_is_light() -> None:
    """import hwmodel pulls in neither matplotlib nor torch nor qslm."""
    code = ("import sys, hwmodel, hwmodel.report; "
            "bad = [m for m in ('matplotlib', 'torch', 'qslm') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
