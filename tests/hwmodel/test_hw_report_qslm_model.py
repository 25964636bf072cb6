"""hwmodel.report --model accepts a model qslm loads, and takes its workload from the model."""

from __future__ import annotations

import json

import torch

from hwmodel.report import main
from qslm.models import SpikeGPT, SpikeGPTConfig, save_safetensors


def test_report_from_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = SpikeGPT(SpikeGPTConfig(vocab_size=300, n_layer=2, n_embd=32))
    ckpt = save_safetensors(model, tmp_path / "tiny.safetensors")
    out = tmp_path / "out"
    rc = main(["--hw", "edge-npu", "--bits", "4", "--model", str(ckpt), "--out", str(out), "--no-plots"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    text = json.dumps(report)
    # The workload is the model's: its own module names and its parameter count.
    for name in model.hierarchy()["blocks.1"]:
        assert name in text
    fp32 = 4 * sum(p.numel() for p in model.parameters())
    assert str(fp32) in text or any(abs(v - fp32) < 1 for v in _numbers(report))


def test_unknown_model_is_a_one_line_error(tmp_path, capsys):
    rc = main(["--hw", "edge-npu", "--bits", "4", "--model", str(tmp_path / "missing.pth")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "missing.pth" in err and err.count("\n") == 1


def _numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, (int, float)):
        yield obj
