"""qslm.fidelity on tiny random SpikeGPT models: sampling (shape, range, determinism, the global
RNG left alone, recurrent = parallel), the fidelity metrics (0 / 1 for the reference, worse with
fewer bits, the model left untouched), fingerprints, pickling, input validation, and the task in
measure_sensitivity."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qslm.errors import SensitivityError
from qslm.fidelity import FidelityTask, sample_calibration
from qslm.models import SpikeGPT, SpikeGPTConfig
from qslm.quant import QuantPlan, QuantSpec, apply_fake_quant
from qslm.sensitivity import Task, measure_sensitivity

V = 300
N, T = 6, 20


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_lm(seed: int = 0, **overrides) -> SpikeGPT:
    torch.manual_seed(seed)
    return SpikeGPT(SpikeGPTConfig(vocab_size=V, n_layer=2, n_embd=32, **overrides)).eval()


@pytest.fixture(scope="module")
def lm() -> SpikeGPT:
    return tiny_lm(0)


@pytest.fixture(scope="module")
def task(lm: SpikeGPT) -> FidelityTask:
    return FidelityTask.sampled(lm, N, T, seed=0, batch_size=4)


class ParallelOnly(nn.Module):
    """The model without its recurrent form (sampling falls back to the parallel form)."""

    def __init__(self, model: SpikeGPT) -> None:
        super().__init__()
        self.model = model
        self.config = model.config
        self.train(model.training)  # sampling restores the wrapper's mode onto the model

    def forward(self, idx: Tensor) -> Tensor:
        return self.model(idx)


class PooledLogits(nn.Module):
    """A config-less classifier: (B, T) → (B, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, 2)

    def forward(self, idx: Tensor) -> Tensor:
        return self.emb(idx).mean(dim=1)


def quantized_both(model: nn.Module, task: FidelityTask, bits: int) -> dict[str, float]:
    with apply_fake_quant(model, QuantPlan.uniform(QuantSpec(bits))):
        return task.both(model)


# ---- sampling ----------------------------------------------------------------------------------


def test_sample_shape_range_and_bos(lm: SpikeGPT) -> None:
    w = sample_calibration(lm, 5, 12, seed=3, bos_id=7, batch_size=2)
    assert w.shape == (5, 12) and w.dtype == torch.int64 and w.device.type == "cpu"
    assert bool((w[:, 0] == 7).all())
    assert int(w.min()) >= 0 and int(w.max()) < V
    assert len({tuple(r) for r in w[:, 1:].tolist()}) == 5  # distinct samples
    assert sample_calibration(lm, 2, 1).tolist() == [[0], [0]]  # bos only: nothing sampled


def test_sampling_is_deterministic_and_leaves_the_global_rng(lm: SpikeGPT) -> None:
    torch.manual_seed(1234)
    rng = torch.get_rng_state()
    a = sample_calibration(lm, 4, 16, seed=5)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(a, sample_calibration(lm, 4, 16, seed=5))
    assert torch.equal(a, sample_calibration(lm, 4, 16, seed=5, batch_size=3))  # batch-free
    assert not torch.equal(a, sample_calibration(lm, 4, 16, seed=6))
    assert torch.equal(torch.get_rng_state(), rng)


def test_recurrent_sampling_matches_the_parallel_form(lm: SpikeGPT) -> None:
    a = sample_calibration(lm, 3, 14, seed=2, top_k=20, temperature=0.8)
    b = sample_calibration(ParallelOnly(lm), 3, 14, seed=2, top_k=20, temperature=0.8)
    assert torch.equal(a, b)


def test_top_k_one_is_greedy(lm: SpikeGPT) -> None:
    w = sample_calibration(lm, 2, 10, seed=0, top_k=1)
    assert torch.equal(w[0], w[1])
    with torch.no_grad():
        greedy = lm(w[:1, :-1]).argmax(dim=-1)
    assert torch.equal(greedy[0], w[0, 1:])


def test_sampling_restores_training_mode() -> None:
    model = tiny_lm(1).train()
    sample_calibration(model, 2, 6)
    assert model.training


# ---- the metric --------------------------------------------------------------------------------


def test_reference_scores_zero_kl_and_full_agreement(lm: SpikeGPT, task: FidelityTask) -> None:
    both = task.both(lm)
    assert abs(both["kl"]) <= 1e-6 and both["top1"] == 1.0
    assert task.metric(lm) == both["kl"]
    top1 = FidelityTask(lm, task.windows, metric="top1", batch_size=5)
    assert top1.metric(lm) == 1.0
    assert task.ref_log_probs.shape == (N, T, V) and task.ref_log_probs.dtype == torch.float32


def test_kl_matches_a_direct_computation(lm: SpikeGPT, task: FidelityTask) -> None:
    with apply_fake_quant(lm, QuantPlan.uniform(QuantSpec(3))):
        got = task.both(lm)
        with torch.no_grad():
            log_q = F.log_softmax(lm(task.windows).float(), dim=-1)
    log_p = task.ref_log_probs
    want = F.kl_div(log_q, log_p, log_target=True, reduction="sum").item() / (N * T)
    agree = (log_q.argmax(-1) == log_p.argmax(-1)).float().mean().item()
    assert got["kl"] == pytest.approx(want, rel=1e-5)
    assert got["top1"] == pytest.approx(agree)


def test_quantization_moves_the_predictions(lm: SpikeGPT, task: FidelityTask) -> None:
    res = {bits: quantized_both(lm, task, bits) for bits in (8, 4, 2)}
    assert 0 < res[8]["kl"] < res[4]["kl"] < res[2]["kl"]
    assert res[2]["top1"] < res[8]["top1"] < 1.0


def test_metric_leaves_the_model_untouched() -> None:
    model = tiny_lm(2).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = FidelityTask.sampled(model, 2, 8)
    assert model.training
    quantized_both(model, t, 2)
    t.metric(model)
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_names_directions_and_protocol(task: FidelityTask, lm: SpikeGPT) -> None:
    assert isinstance(task, Task)
    assert (task.name, task.higher_is_better) == ("fidelity-kl", False)
    top1 = FidelityTask.sampled(lm, 2, 8, metric="top1")
    assert isinstance(top1, Task)
    assert (top1.name, top1.higher_is_better) == ("fidelity-top1", True)
    d = task.describe()
    assert (d["name"], d["n_sequences"], d["seq_len"], d["metric"]) == ("fidelity-kl", N, T, "kl")
    assert d["sampling"]["seed"] == 0 and "FidelityTask" in repr(task)


# ---- fingerprints and pickling -----------------------------------------------------------------


def test_fingerprint(lm: SpikeGPT, task: FidelityTask) -> None:
    fp = task.fingerprint()
    assert len(fp) == 64 and all(c in "0123456789abcdef" for c in fp)
    assert FidelityTask.sampled(lm, N, T, seed=0, batch_size=4).fingerprint() == fp
    assert FidelityTask.sampled(lm, N, T, seed=1, batch_size=4).fingerprint() != fp
    assert FidelityTask(lm, task.windows, metric="top1", batch_size=4).fingerprint() != fp
    assert FidelityTask(tiny_lm(3), task.windows, batch_size=4).fingerprint() != fp


def test_pickle_round_trip(lm: SpikeGPT, task: FidelityTask) -> None:
    clone = pickle.loads(pickle.dumps(task))
    assert clone.fingerprint() == task.fingerprint()
    with apply_fake_quant(lm, QuantPlan.uniform(QuantSpec(2))):
        assert clone.both(lm) == task.both(lm)


# ---- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize("windows, match", [
    (torch.zeros(2, 4), "windows must hold integers"),
    (torch.zeros(8, dtype=torch.int64), r"non-empty 2-D \(N, T\)"),
    (torch.full((2, 4), V), f"token id {V} is outside the model's vocabulary of {V}"),
    (torch.zeros(2, 17, dtype=torch.int64), "seq_len 17 exceeds the model's ctx_len=16"),
])
def test_bad_windows(windows: Tensor, match: str) -> None:
    with pytest.raises(SensitivityError, match=match):
        FidelityTask(tiny_lm(0, ctx_len=16), windows)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_sequences=0), "n_sequences must be an integer >= 1, got 0"),
    (dict(seq_len=0), "seq_len must be an integer >= 1, got 0"),
    (dict(seq_len=17), "seq_len 17 exceeds the model's ctx_len=16"),
    (dict(batch_size=True), "batch_size must be an integer >= 1"),
    (dict(temperature=0.0), "temperature must be a finite number > 0"),
    (dict(top_k=0), "top_k must be an integer >= 1"),
    (dict(bos_id=V), f"bos_id {V} is outside the model's vocabulary of {V}"),
    (dict(seed=1.5), "seed must be an integer"),
])
def test_bad_sampling_arguments(kwargs: dict, match: str) -> None:
    args = dict(n_sequences=2, seq_len=4) | kwargs
    with pytest.raises(SensitivityError, match=match):
        sample_calibration(tiny_lm(0, ctx_len=16), **args)


def test_bad_task_options(lm: SpikeGPT, task: FidelityTask) -> None:
    bad_metric = r"metric must be one of \('kl', 'top1'\), got 'foo'"
    with pytest.raises(SensitivityError, match=bad_metric):
        FidelityTask(lm, task.windows, metric="foo")
    with pytest.raises(SensitivityError, match=r"metric must be one of .*'foo'"):
        FidelityTask.sampled(lm, 2, 4, metric="foo")
    with pytest.raises(SensitivityError, match="batch_size must be an integer >= 1, got 0"):
        FidelityTask(lm, task.windows, batch_size=0)
    with pytest.raises(SensitivityError, match="model must be a torch nn.Module"):
        FidelityTask("model", task.windows)  # type: ignore[arg-type]
    with pytest.raises(SensitivityError, match=f"the model has {V + 1} logits, the reference "
                                               f"model {V}"):
        task.metric(SpikeGPT(SpikeGPTConfig(vocab_size=V + 1, n_layer=1, n_embd=16)))


def test_classifiers_are_rejected() -> None:
    torch.manual_seed(0)
    clf = SpikeGPT(SpikeGPTConfig(vocab_size=V, n_layer=1, n_embd=16, num_classes=2))
    windows = torch.ones(2, 4, dtype=torch.int64)
    for call in (lambda m: sample_calibration(m, 2, 4), lambda m: FidelityTask(m, windows)):
        with pytest.raises(SensitivityError, match=r"language models, got a classifier "
                                                   r"\(num_classes=2\)"):
            call(clf)
        with pytest.raises(SensitivityError, match=r"logits \(B, T, V\).* got \(2, 2\) \(the "
                                                   r"fidelity task is for language models\)"):
            call(PooledLogits())


# ---- in the sensitivity measurement ------------------------------------------------------------


@pytest.mark.parametrize("metric", ["kl", "top1"])
def test_measure_sensitivity(metric: str, tmp_path) -> None:
    model = tiny_lm(4)
    t = FidelityTask.sampled(model, 4, 12, metric=metric)
    specs = [QuantSpec(4), QuantSpec(2)]
    table = measure_sensitivity(model, t, specs, cache_dir=None, progress=False)
    assert table.task_name == f"fidelity-{metric}"
    assert table.baseline == pytest.approx(0.0 if metric == "kl" else 1.0, abs=1e-6)
    for spec in specs:
        deltas = list(table.deltas(spec).values()) + list(table.block_deltas(spec).values())
        assert all(math.isfinite(d) and d >= -1e-6 for d in deltas)
    if metric == "kl":  # fewer bits, larger KL
        assert table.block_delta("blocks.0", QuantSpec(2)) > table.block_delta("blocks.0",
                                                                                QuantSpec(4))
    # the disk cache keys on the task's fingerprint: a second run evaluates nothing
    first = measure_sensitivity(model, t, specs, cache_dir=tmp_path, progress=False, blocks=False)
    again = measure_sensitivity(model, pickle.loads(pickle.dumps(t)), specs, cache_dir=tmp_path,
                                progress=False, blocks=False)
    assert first.n_evaluations > 0 and again.n_evaluations == 0
    assert again.module_metrics == first.module_metrics
