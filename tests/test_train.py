"""python -m qslm.train: a short run lowers the loss, and a stopped run resumes bit for bit."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from qslm import train as T

needs_data = pytest.mark.skipif(not os.environ.get("QSLM_DATA_DIR"), reason="needs QSLM_DATA_DIR (CI sets it)")

TINY = dict(task="lm", seed=7, vocab_size=320, n_layer=1, n_embd=32, ctx_len=32, batch_size=8, lr=3e-3,
            min_lr=1e-4, warmup_steps=5, max_steps=40, weight_decay=0.01, grad_clip=1.0, dropout=0.03,
            eval_every=20, eval_tokens=2048, ckpt_every=10)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A run directory with the tokenizer and token caches already built (trained once)."""
    d = tmp_path_factory.mktemp("prepared")
    T.lm_tokens(d, T.Recipe(name="tiny", **TINY), None)
    return d


def _copy_prep(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        shutil.copy(f, dst / f.name)
    return dst


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in open(run_dir / "metrics.jsonl")]


@needs_data
def test_short_run_lowers_the_loss(prepared, tmp_path):
    r = T.Recipe(name="tiny", **dict(TINY, max_steps=60, lr=1e-2))
    d = _copy_prep(prepared, tmp_path / "run")
    T.train(r, d, None, fresh=False, max_steps=None, progress=False)
    h = _history(d)
    assert [row["step"] for row in h][-1] == 60
    # An untrained model scores about ln(V) nats; 60 steps must get well below that.
    assert h[-1]["loss"] < math.log(TINY["vocab_size"]) - 0.5, h
    evals = [row["val_loss"] for row in h if "val_loss" in row]
    assert len(evals) == 3 and evals[2] < evals[0]


@needs_data
def test_resumed_run_equals_uninterrupted_run(prepared, tmp_path):
    r = T.Recipe(name="tiny", **dict(TINY, max_steps=20))
    straight = _copy_prep(prepared, tmp_path / "straight")
    T.train(r, straight, None, fresh=False, max_steps=None, progress=False)
    stopped = _copy_prep(prepared, tmp_path / "stopped")
    T.train(r, stopped, None, fresh=False, max_steps=10, progress=False)  # "killed" after step 10
    assert torch.load(stopped / "ckpt.pt", weights_only=False)["step"] == 10
    T.train(r, stopped, None, fresh=False, max_steps=None, progress=False)  # resumes at step 10
    a = torch.load(straight / "ckpt.pt", weights_only=False)
    b = torch.load(stopped / "ckpt.pt", weights_only=False)
    assert a["step"] == b["step"] == 20
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


@needs_data
def test_checkpoint_of_another_recipe_is_refused(prepared, tmp_path):
    d = _copy_prep(prepared, tmp_path / "run")
    T.train(T.Recipe(name="tiny", **dict(TINY, max_steps=5)), d, None, fresh=False, max_steps=None, progress=False)
    other = T.Recipe(name="tiny", **dict(TINY, max_steps=5, lr=1e-3))
    with pytest.raises(T.QslmError, match="another recipe"):
        T.train(other, d, None, fresh=False, max_steps=None, progress=False)


def test_bundled_recipes_are_valid():
    recipes = T.load_recipes()
    assert {"spikegpt-mini-wt2", "spikegpt-mini-sst2"} <= set(recipes)
    assert recipes["spikegpt-mini-sst2"].init == "spikegpt-mini-wt2"


def test_lr_schedule_warms_up_then_decays():
    r = T.Recipe(name="tiny", **TINY)
    lrs = [T.lr_at(s, r) for s in range(r.max_steps + 1)]
    assert lrs[0] == pytest.approx(r.lr / r.warmup_steps)
    assert max(lrs) == pytest.approx(r.lr)
    assert lrs[-1] == pytest.approx(r.min_lr)
    assert all(a >= b for a, b in zip(lrs[r.warmup_steps:], lrs[r.warmup_steps + 1:]))


@pytest.mark.parametrize(
    "argv,msg",
    [
        pytest.param(["run", "no-such-recipe"], "unknown recipe", id="unknown-recipe"),
        pytest.param(["run", "spikegpt-mini-wt2", "--max-steps", "0"], "--max-steps", id="zero-steps"),
    ],
)
def test_cli_bad_input_exits_2(argv, msg, capsys):
    assert T.main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1


def test_sst2_accuracy_runs_on_a_spikegpt_classifier():
    from qslm.models import SpikeGPT, SpikeGPTConfig

    torch.manual_seed(0)
    model = SpikeGPT(SpikeGPTConfig(vocab_size=50, n_layer=1, n_embd=16, num_classes=2))
    examples = [([3, 4, 5], 1), ([6, 7], 0), ([8], 1)]
    r = T.Recipe(name="c", **dict(TINY, task="sst2", init="x"))
    acc = T.sst2_accuracy(model, examples, r)
    assert 0.0 <= acc <= 1.0


@needs_data
def test_export_bundles_a_finished_run(prepared, tmp_path):
    import json as _json

    from qslm.models import load_spikegpt
    from qslm.zoo.export import export_run

    r = T.Recipe(name="tiny", **dict(TINY, max_steps=5))
    d = _copy_prep(prepared, tmp_path / "run")
    T.train(r, d, None, fresh=False, max_steps=None, progress=False)
    card_md = export_run(r, d, None, tmp_path / "zoo" / "tiny", progress=False, docs_dir=tmp_path / "docs",
                         max_eval_tokens=4096)
    card = _json.loads((tmp_path / "zoo" / "tiny" / "card.json").read_text())
    assert card["steps"] == 5 and card["metrics"]["test"]["word_ppl"] > 1
    assert set(card["firing_rates"]) == {"blocks.0.lif1", "blocks.0.lif2"}
    assert "word-level" in card_md.read_text()
    model = load_spikegpt(tmp_path / "zoo" / "tiny" / "model.safetensors")
    assert model.config.n_layer == 1


@needs_data
def test_export_refuses_an_unfinished_run(prepared, tmp_path):
    from qslm.zoo.export import export_run

    r = T.Recipe(name="tiny", **dict(TINY, max_steps=5))
    d = _copy_prep(prepared, tmp_path / "run")
    T.train(r, d, None, fresh=False, max_steps=3, progress=False)
    with pytest.raises(T.QslmError, match="stopped at step 3"):
        export_run(r, d, None, tmp_path / "zoo" / "tiny", progress=False, docs_dir=tmp_path / "docs")
