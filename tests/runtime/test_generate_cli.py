"""``python -m qslm.generate``: text from a packed file, tokenizer discovery, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from runtime_helpers import one_thread, tiny_model

from qslm import generate
from qslm.data.tokenizer import decode, encode, load_tokenizer
from qslm.models import load
from qslm.quant import QuantPlan, QuantSpec, export_packed
from qslm.runtime import Sampling, load_runtime
from qslm.zoo import bundled_dir, bundled_names

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif("spikegpt-mini-wt2" not in bundled_names(),
                                 reason="bundle missing")]

REPO = Path(__file__).resolve().parents[2]
TOKENIZER = bundled_dir("spikegpt-mini-wt2") / "tokenizer.json"
PLAN = QuantPlan({"emb": QuantSpec(1, True, group_size=64)}, QuantSpec(4, False, group_size=64))


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """A packed export of the bundled LM, alone in its folder (no tokenizer beside it)."""
    with one_thread():
        return export_packed(load("spikegpt-mini-wt2"), PLAN,
                             tmp_path_factory.mktemp("wt2") / "model.qslm.safetensors")


def _run(capsys, *argv):
    rc = generate.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_greedy_text_with_tokenizer(capsys, packed):
    prompt = "The game 's battle system"
    rc, out, err = _run(capsys, "--model", packed, "--prompt", prompt, "--max-new-tokens", 12,
                        "--tokenizer", TOKENIZER)
    assert rc == 0, err
    tok = load_tokenizer(TOKENIZER)
    new = load_runtime(packed).generate(encode(tok, prompt), 12)
    assert out == prompt + decode(tok, new) + "\n"


def test_json_and_stats(capsys, packed):
    rc, out, err = _run(capsys, "--model", packed.parent, "--prompt", "In 1998 ,",
                        "--max-new-tokens", 6, "--tokenizer", TOKENIZER, "--json", "--stats")
    assert rc == 0, err
    doc = json.loads(out)
    assert len(doc["tokens"]) == 6 and doc["tokens_per_s"] > 0
    assert set(doc["firing_rates"]) == {f"blocks.{i}.lif{j}" for i in range(5) for j in (1, 2)}
    assert "tokens/s" in err and len(err.strip().splitlines()) == 1


def test_sampling_options(capsys, packed):
    args = ["--model", packed, "--prompt", "The", "--max-new-tokens", 8, "--tokenizer",
            TOKENIZER, "--json"]
    tok = load_tokenizer(TOKENIZER)
    rt = load_runtime(packed)
    rc, out, _ = _run(capsys, *args, "--sample", "--seed", 5)
    assert rc == 0
    assert json.loads(out)["tokens"] == rt.generate(encode(tok, "The"), 8, Sampling.run_py(5))
    rc, out, _ = _run(capsys, *args, "--temperature", 0.8, "--top-k", 20, "--seed", 1)
    assert rc == 0
    assert json.loads(out)["tokens"] == rt.generate(
        encode(tok, "The"), 8, Sampling(temperature=0.8, top_p=0.7, top_k=20, seed=1))
    rc, out, _ = _run(capsys, *args, "--temperature", 0, "--ban-eos")
    assert rc == 0 and 0 not in json.loads(out)["tokens"]


def test_tokenizer_found_beside_the_file_or_through_search_json(capsys, packed, tmp_path):
    beside = tmp_path / "beside"
    beside.mkdir()
    shutil.copy(packed, beside / "model.qslm.safetensors")
    shutil.copy(TOKENIZER, beside / "tokenizer.json")
    rc, out, err = _run(capsys, "--model", beside, "--prompt", "A", "--max-new-tokens", 2)
    assert rc == 0, err
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(packed, run / "model.qslm.safetensors")
    (run / "search.json").write_text(json.dumps({"format_version": 1,
                                                 "model": "spikegpt-mini-wt2"}))
    rc, out2, err = _run(capsys, "--model", run / "model.qslm.safetensors", "--prompt", "A",
                         "--max-new-tokens", 2)
    assert rc == 0, err
    assert out2 == out


def _one_line_error(rc, out, err, match):
    assert rc == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("qslm.generate: error: ")
    assert match in lines[0], lines[0]


def test_bad_input_exits_2_with_one_line(capsys, packed, tmp_path):
    tk = ["--tokenizer", TOKENIZER]
    _one_line_error(*_run(capsys, "--model", tmp_path / "none.safetensors", *tk),
                    "no such file")
    _one_line_error(*_run(capsys, "--model", packed), "pass --tokenizer")
    _one_line_error(*_run(capsys, "--model", packed, "--tokenizer", tmp_path / "t.json"),
                    "no such file")
    garbage = tmp_path / "garbage.qslm.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    _one_line_error(*_run(capsys, "--model", garbage, *tk), "truncated or corrupt")
    _one_line_error(*_run(capsys, "--model", packed, *tk, "--top-p", 2), "top_p must be")
    _one_line_error(*_run(capsys, "--model", packed, *tk, "--max-new-tokens", "x"),
                    "invalid int value")
    _one_line_error(*_run(capsys, "--model", packed, *tk, "--max-new-tokens", -3),
                    "--max-new-tokens must be >= 0")
    _one_line_error(*_run(capsys, "--prompt", "x"), "--model")
    # a model whose vocabulary the tokenizer overflows
    small = export_packed(tiny_model(seed=0), PLAN, tmp_path / "small.qslm.safetensors")
    _one_line_error(*_run(capsys, "--model", small, *tk, "--prompt", "zebra crossing"),
                    "wrong tokenizer?")


def test_module_entry_point(tmp_path, packed):
    env = dict(os.environ, RAYON_NUM_THREADS="1", OMP_NUM_THREADS="1")
    bad = tmp_path / "bad.qslm.safetensors"
    bad.write_bytes(b"\x00" * 100)
    proc = subprocess.run([sys.executable, "-m", "qslm.generate", "--model", str(bad),
                           "--tokenizer", str(TOKENIZER)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "qslm.generate: error:" in proc.stderr
