"""``python -m qslm.search`` (qslm.search.cli.main) end to end on a tiny random SpikeGPT saved to a
checkpoint, with the data-free fidelity task: bad inputs (exit 2, one line on stderr, nothing
written), a full run and its outputs, a resumed run that evaluates nothing, a run killed with
SIGKILL and resumed, and infeasible constraints."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hwmodel.device import list_presets
from qslm.models import SpikeGPT, SpikeGPTConfig, save_safetensors
from qslm.quant import QuantPlan, load_packed
from qslm.search.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
PNGS = ("pareto.png", "bits.png", "memory.png", "cost.png")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The machine runs other work: one torch thread is much faster for these tiny models."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def restore_threads():
    """main(--threads N) sets torch's thread count for the process: put it back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = SpikeGPT(SpikeGPTConfig(vocab_size=64, n_layer=2, n_embd=32, ctx_len=16)).eval()
    return save_safetensors(model, tmp_path_factory.mktemp("model") / "m.safetensors")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """One sensitivity cache for the module (keyed by model and data fingerprints)."""
    return tmp_path_factory.mktemp("sensitivity-cache")


def run_args(model: Path, cache: Path, *extra: str) -> list[str]:
    return ["--hw", "edge-npu", "--model", str(model), "--task", "fidelity", "--max-kl", "0.5",
            "--calib-samples", "2", "--eval-samples", "2", "--bits", "2,4,8", "--no-progress",
            "--cache-dir", str(cache), "--threads", "1", *extra]


def read_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text("utf-8"))


# ================================================================================================
# Bad input: exit 2, one line on stderr, no output folder
# ================================================================================================

BAD_INPUTS = {
    "unknown-device": (["--hw", "nosuch"], "unknown device 'nosuch'"),
    "unknown-size-unit": (["--mem-budget", "2XB"], "unknown size unit 'XB'"),
    "negative-budget": (["--mem-budget=-1MB"], "-1MB"),
    "contradictory-floors": (["--max-acc-drop", "1", "--max-ppl-increase", "5%"],
                             "contradictory constraints"),
    "floor-of-another-task": (["--max-acc-drop", "1"], "does not apply to the wikitext2 task"),
    "missing-model": (["--model", "/nonexistent.safetensors"], "/nonexistent.safetensors"),
    "alpha-out-of-range": (["--alpha", "2"], "--alpha"),
    "bits-out-of-range": (["--bits", "0,9"], "--bits"),
    "bad-granularity": (["--granularity", "group:x"], "--granularity"),
    "bad-ppl-increase": (["--max-ppl-increase", "x%"], "--max-ppl-increase"),
    "zero-max-evals": (["--max-evals", "0"], "--max-evals"),
    "workers-in-process": (["--workers", "2"], "--workers needs --executor pool or ray"),
    "zero-workers": (["--executor", "pool", "--workers", "0"], "--workers must be >= 1"),
    "ray-address-without-ray": (["--ray-address", "auto"], "need --executor ray"),
    "gpus-without-ray": (["--executor", "pool", "--gpus-per-worker", "1"],
                         "need --executor ray"),
}


def check_bad_input(capsys, argv: list[str], expect: str) -> str:
    rc = main(argv)
    cap = capsys.readouterr()
    assert rc == 2, (rc, cap.err)
    err = cap.err
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    assert err.startswith("qslm.search: error: "), err
    assert expect in err, err
    return err


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(capsys, tmp_path, name):
    extra, expect = BAD_INPUTS[name]
    hw = [] if "--hw" in extra else ["--hw", "edge-npu"]
    out = tmp_path / "o"
    err = check_bad_input(capsys, [*hw, *extra, "--out", str(out), "--no-progress"], expect)
    assert not out.exists()
    if name == "unknown-device":  # the message lists the presets
        for preset in list_presets():
            assert preset in err


def test_resume_of_a_folder_without_search_json(capsys, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    check_bad_input(capsys, ["--hw", "edge-npu", "--resume", str(d), "--no-progress"],
                    "no search.json")
    assert list(d.iterdir()) == []
    out = tmp_path / "o"
    check_bad_input(capsys, ["--hw", "edge-npu", "--resume", str(out), "--out", str(out),
                             "--no-progress"], "no search.json")
    assert not out.exists()


def test_resume_and_out_naming_different_folders(capsys, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    check_bad_input(capsys, ["--hw", "edge-npu", "--resume", str(d), "--out",
                             str(tmp_path / "o"), "--no-progress"], "different folders")
    assert not (tmp_path / "o").exists()


def test_a_negative_budget_as_a_separate_argument_is_an_argparse_error(capsys, tmp_path):
    """``--mem-budget -1MB`` (with a space) looks like an option to argparse: it exits 2 with its
    usage text before qslm sees the value (``--mem-budget=-1MB`` reaches parse_bytes)."""
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as info:
        main(["--hw", "edge-npu", "--mem-budget", "-1MB", "--out", str(out)])
    assert info.value.code == 2
    assert "--mem-budget" in capsys.readouterr().err
    assert not out.exists()


def test_a_folder_that_is_not_a_search_is_refused(capsys, tmp_path, tiny_checkpoint, cache_dir):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    rc = main(run_args(tiny_checkpoint, cache_dir, "--out", str(out)))
    err = capsys.readouterr().err
    assert rc == 2 and "is not a search folder" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# ================================================================================================
# A full run, and a second run that resumes it
# ================================================================================================


def test_end_to_end_run_writes_every_output_and_a_rerun_evaluates_nothing(
        capsys, tmp_path, tiny_checkpoint, cache_dir):
    out = tmp_path / "out"
    argv = run_args(tiny_checkpoint, cache_dir, "--out", str(out))
    rc = main(argv)
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "feasible" in cap.out
    for name in ("plan.json", "report.json", "report.md", "evals.jsonl", "search.json",
                 "model.qslm.safetensors", *PNGS):
        assert (out / name).is_file(), name
    assert not [p for p in out.iterdir() if p.name.startswith(".staging-")]
    for png in PNGS:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png

    report = read_report(out)
    assert report["feasible"] is True
    chosen, fp32 = report["chosen"], report["fp32"]
    assert chosen["memory_bytes"] < fp32["memory_bytes"]
    assert chosen["feasible"] and chosen["meets_floor"]
    assert chosen["degradation"] <= report["constraints"]["allowed_degradation"]
    assert report["constraints"]["floor"]["kind"] == "kl"
    assert report["constraints"]["allowed_degradation"] == 0.5
    assert report["task"]["name"] == "fidelity"
    assert report["search"]["new_evaluations"] == report["search"]["full_evaluations"] >= 2
    assert report["search"]["reused_evaluations"] == 0
    # the exported packed model, run by qslm.runtime on the evaluation data, gives the metric of
    # the fake-quant evaluation, and its firing rates are reported
    rt = report["runtime"]
    assert rt["within_tolerance"] and rt["relative_difference"] <= rt["tolerance"]
    assert rt["fake_quant_metric"] == chosen["metric"]
    assert set(rt["firing_rates_plan"]) == set(rt["firing_rates_fp32"]) != set()
    assert all(0.0 <= v <= 1.0 for v in rt["firing_rates_plan"].values())
    assert rt["memory_bytes"]["total"] < fp32["memory_bytes"]
    # the plan file is the chosen plan
    plan = QuantPlan.load(out / "plan.json")
    modules = list(chosen["bits"])
    resolved = plan.resolve(modules, strict=True)
    for m, b in chosen["bits"].items():
        assert (resolved[m] is None) if b == 0 else (resolved[m].bits == b), m
    # the packed model holds that plan
    packed = load_packed(out / "model.qslm.safetensors")
    assert packed.plan.resolve(modules, strict=True) == resolved
    # evals.jsonl: one line per full evaluation, every reported evaluation in it
    evals = [json.loads(ln) for ln in (out / "evals.jsonl").read_text("utf-8").splitlines()]
    assert len(evals) == report["search"]["full_evaluations"]
    assert {e["key"] for e in evals} == {e["key"] for e in report["evaluations"]}
    md = (out / "report.md").read_text("utf-8")
    assert md.startswith("# qslm search:") and "a feasible plan was found" in md

    before = (out / "evals.jsonl").read_bytes()
    rc = main(argv)
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "resuming the search" in cap.err
    again = read_report(out)
    assert again["search"]["new_evaluations"] == 0
    assert again["search"]["reused_evaluations"] == again["search"]["full_evaluations"]
    assert again["chosen"]["key"] == chosen["key"]
    assert (out / "evals.jsonl").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.startswith(".staging-")]


def test_a_rerun_with_other_settings_is_refused(capsys, tmp_path, tiny_checkpoint, cache_dir):
    out = tmp_path / "out"
    extra = ("--no-plots", "--no-export", "--no-final-eval", "--out", str(out))
    assert main(run_args(tiny_checkpoint, cache_dir, *extra)) == 0
    capsys.readouterr()
    before = sorted(p.name for p in out.iterdir())
    rc = main(run_args(tiny_checkpoint, cache_dir, "--alpha", "0.9", *extra))
    err = capsys.readouterr().err
    assert rc == 2 and "other settings" in err and err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == before


def test_infeasible_constraints_exit_2_and_report_the_closest_plan(
        capsys, tmp_path, tiny_checkpoint, cache_dir):
    out = tmp_path / "out"
    rc = main(run_args(tiny_checkpoint, cache_dir, "--mem-budget", "1KiB", "--no-plots",
                       "--no-export", "--out", str(out)))
    cap = capsys.readouterr()
    assert rc == 2
    last = cap.err.strip().splitlines()[-1]
    assert last.startswith("qslm.search: error: ")
    assert "no evaluated plan meets both constraints" in last
    report = read_report(out)
    assert report["feasible"] is False
    assert report["chosen"]["feasible"] is False
    assert report["constraints"]["budget"] == {"kind": "bytes", "bytes": 1024,
                                              "text": report["constraints"]["budget"]["text"]}
    assert report["chosen"]["memory_bytes"] > 1024
    assert (out / "plan.json").is_file()
    assert "INFEASIBLE" in (out / "report.md").read_text("utf-8")


# ================================================================================================
# A search killed with SIGKILL, then resumed
# ================================================================================================


def _complete_lines(path: Path) -> list[bytes]:
    if not path.exists():
        return []
    data = path.read_bytes()
    return data[:data.rfind(b"\n") + 1].splitlines(keepends=True) if b"\n" in data else []


def _slow_search_args(model: Path, cache: Path, *extra: str) -> list[str]:
    """A tight floor and many widths: many full evaluations, each slow enough to interrupt."""
    return ["--hw", "edge-npu", "--model", str(model), "--task", "fidelity",
            "--max-kl", "0.01", "--calib-samples", "2", "--eval-samples", "512",
            "--bits", "1,2,3,4,5,6,8", "--max-evals", "30", "--no-progress", "--cache-dir",
            str(cache), "--threads", "1", "--no-plots", "--no-export", "--no-final-eval",
            *extra]


def _wait_for_evaluations(proc: subprocess.Popen, evals: Path, log: Path, n: int = 3) -> None:
    """Until the search in ``proc`` has written ``n`` complete lines of evals.jsonl."""
    deadline = time.monotonic() + 120
    while len(_complete_lines(evals)) < n:
        if proc.poll() is not None:
            pytest.fail("the search finished (or failed) before it could be interrupted: "
                        f"rc {proc.returncode}; " + log.read_text(errors="replace")[-2000:])
        assert time.monotonic() < deadline, "no evaluations after 120 s"
        time.sleep(0.01)


def _session_pids(sid: int, *, leader: bool = False) -> list[int]:
    """The processes of session ``sid`` (with ``leader``: its leader, pid ``sid``, included)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getsid(int(d.name)) == sid and (leader or int(d.name) != sid):
                    pids.append(int(d.name))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


def test_a_killed_search_resumes_without_losing_or_repeating_evaluations(
        capsys, tmp_path, tiny_checkpoint, cache_dir):
    out = tmp_path / "out"
    args = _slow_search_args(tiny_checkpoint, cache_dir)
    evals = out / "evals.jsonl"
    log = (tmp_path / "child.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "qslm.search", *args, "--out", str(out)],
                            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_evaluations(proc, evals, tmp_path / "child.log")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "report.json").exists()  # it was stopped mid-search
    pre = _complete_lines(evals)
    assert len(pre) >= 3
    pre_keys = [json.loads(ln)["key"] for ln in pre]

    rc = main([*args, "--resume", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "earlier evaluations available" in cap.err
    post = _complete_lines(evals)
    assert post[:len(pre)] == pre  # nothing lost, nothing rewritten
    post_keys = [json.loads(ln)["key"] for ln in post]
    assert len(post_keys) == len(set(post_keys))  # no plan evaluated twice
    report = read_report(out)
    s = report["search"]
    assert s["reused_evaluations"] >= len(pre)
    assert s["new_evaluations"] == len(post) - len(pre)
    assert s["full_evaluations"] == s["new_evaluations"] + s["reused_evaluations"]
    by_key = {e["key"]: e for e in report["evaluations"]}
    for k in pre_keys:
        assert k not in by_key or by_key[k]["reused"] is True, k
    assert report["feasible"] is True


@pytest.mark.parametrize("target", ["group", "parent", "parent-twice"])
def test_ctrl_c_stops_a_pool_search_at_once_and_it_resumes(capsys, tmp_path, tiny_checkpoint,
                                                           target):
    """SIGINT while worker processes run — to the whole process group, as a terminal's Ctrl-C,
    or to the search process alone (`kill -INT`, once or twice in a row: an impatient user),
    its workers still busy: exit 130 at once, no worker left behind, nothing finished lost;
    --resume completes."""
    out = tmp_path / "out"
    args = _slow_search_args(tiny_checkpoint, tmp_path / "cache", "--executor", "pool",
                             "--workers", "2")
    evals = out / "evals.jsonl"
    launch = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
              "os.execvp(sys.executable, [sys.executable, '-m', 'qslm.search', *sys.argv[1:]])")
    log = (tmp_path / "child.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-c", launch, *args, "--out", str(out)],
                            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # SIGINT not ignored, its own group
    try:
        _wait_for_evaluations(proc, evals, tmp_path / "child.log")
        (os.killpg if target == "group" else os.kill)(proc.pid, signal.SIGINT)
        if target == "parent-twice":
            time.sleep(0.05)
            os.kill(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=30)  # a hang here is the bug this test guards against
        deadline = time.monotonic() + 10
        while _session_pids(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _session_pids(proc.pid) == []  # the pool's workers are gone
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    text = (tmp_path / "child.log").read_text(errors="replace")
    # 130 from the handler; the second SIGINT may land after it, during the interpreter's exit,
    # which then ends by that signal (as Python does for an uncaught KeyboardInterrupt)
    assert rc == 130 or (target == "parent-twice" and rc == -signal.SIGINT), text[-2000:]
    assert "interrupted; evaluations so far are in evals.jsonl" in text
    pre = _complete_lines(evals)
    assert len(pre) >= 3

    rc = main([*args, "--resume", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    post = _complete_lines(evals)
    assert post[:len(pre)] == pre
    keys = [json.loads(ln)["key"] for ln in post]
    assert len(keys) == len(set(keys))
    assert read_report(out)["feasible"] is True


def test_without_task_data_the_lm_search_falls_back_to_fidelity_with_a_notice(
        capsys, tmp_path, tiny_checkpoint, cache_dir):
    # no --task: a language model defaults to wikitext2, whose tokenizer is missing here
    out = tmp_path / "o"
    rc = main(["--hw", "edge-npu", "--model", str(tiny_checkpoint), "--calib-samples", "2",
               "--eval-samples", "2", "--bits", "2,8", "--max-evals", "6", "--no-progress",
               "--no-final-eval", "--no-plots", "--no-export", "--cache-dir", str(cache_dir),
               "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "notice: no wikitext2 tokenizer found" in err and "fidelity" in err
    report = json.loads((out / "report.json").read_text("utf-8"))
    assert report["task"]["name"] == "fidelity" and report["notice"]
    assert report["constraints"]["floor"]["kind"] == "kl"


def test_an_explicit_task_without_data_is_an_error_not_a_fallback(
        capsys, tmp_path, tiny_checkpoint, cache_dir):
    out = tmp_path / "o"
    rc = main(["--hw", "edge-npu", "--model", str(tiny_checkpoint), "--task", "wikitext2",
               "--no-progress", "--cache-dir", str(cache_dir), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "tokenizer" in err[0]
    assert not out.exists()


# ================================================================================================
# Executors: a local process pool, and a Ray cluster started with `ray start --head`
# ================================================================================================


def _decisions(report: dict) -> tuple:
    evals = [(e["key"], e["metric"], e["tier"]) for e in report["evaluations"]]
    return report["chosen"]["key"], report["chosen"]["metric"], evals


def _final(entry: dict) -> dict:
    return {k: v for k, v in entry["final"].items() if k != "seconds"}


def test_the_pool_executor_finds_the_in_process_plan(capsys, tmp_path, tiny_checkpoint,
                                                      cache_dir):
    common = ["--no-plots", "--no-export"]
    rc = main(run_args(tiny_checkpoint, cache_dir, *common, "--out", str(tmp_path / "a")))
    assert rc == 0, capsys.readouterr().err
    # a fresh sensitivity cache: the pool measures it too
    rc = main(run_args(tiny_checkpoint, tmp_path / "cache", *common, "--out",
                       str(tmp_path / "b"), "--executor", "pool", "--workers", "2"))
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "executor pool: 2 worker(s)" in cap.err
    ref, got = read_report(tmp_path / "a"), read_report(tmp_path / "b")
    assert _decisions(got) == _decisions(ref)
    assert got["sensitivity"]["deltas"] == ref["sensitivity"]["deltas"]
    assert got["search"]["executor"]["executor"] == "pool"
    # the final measurements ran on the workers too, with the same values
    for entry in ("fp32", "uniform", "chosen"):
        assert _final(got[entry]) == _final(ref[entry]) != {}


def test_an_unreachable_ray_cluster_exits_2_and_writes_nothing(capsys, tmp_path,
                                                               tiny_checkpoint, cache_dir):
    with socket.socket() as s:  # a port nobody listens at
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "o"
    check_bad_input(capsys, run_args(tiny_checkpoint, cache_dir, "--executor", "ray",
                                     "--ray-address", f"127.0.0.1:{port}", "--out", str(out)),
                    "no Ray cluster answers")
    assert not out.exists()


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (the `ray start` process and what it started)."""
    for pid in _session_pids(sid, leader=True):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def ray_head(tmp_path_factory):
    """A one-node Ray cluster started with `ray start --head` on 127.0.0.1 (2 CPUs), in its own
    session; yields (address, env for clients); killed afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    log_path = tmp / "head.log"
    with open(log_path, "wb") as log:
        head = subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={port}",
             "--node-ip-address=127.0.0.1", "--num-cpus=2", "--include-dashboard=false",
             "--disable-usage-stats", f"--temp-dir={tmp}", "--block"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while b"--block" not in log_path.read_bytes():
            assert head.poll() is None, log_path.read_text(errors="replace")[-2000:]
            assert time.monotonic() < deadline, "ray start did not come up in 120 s"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", env
    finally:
        _kill_session(head.pid)
        head.wait(timeout=30)


def test_a_search_on_a_ray_cluster_finds_the_in_process_plan(capsys, tmp_path, tiny_checkpoint,
                                                              cache_dir, ray_head):
    address, env = ray_head
    common = ["--no-plots", "--no-export", "--no-final-eval"]
    rc = main(run_args(tiny_checkpoint, cache_dir, *common, "--out", str(tmp_path / "a")))
    assert rc == 0, capsys.readouterr().err
    out = tmp_path / "b"
    argv = run_args(tiny_checkpoint, tmp_path / "cache", *common, "--out", str(out),
                    "--executor", "ray", "--ray-address", address, "--workers", "2")
    proc = subprocess.run([sys.executable, "-m", "qslm.search", *argv], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "executor ray: 2 worker(s)" in proc.stderr
    ref, got = read_report(tmp_path / "a"), read_report(out)
    assert _decisions(got) == _decisions(ref)
    assert got["sensitivity"]["deltas"] == ref["sensitivity"]["deltas"]
    assert got["search"]["executor"]["address"] == address
