"""qslm.sensitivity on tiny random models: the tasks and their sign conventions, fingerprints,
the measurements (exact restore, determinism), the on-disk cache (a second run evaluates nothing,
an interrupted run resumes, a truncated line is re-measured), and the table's additive
predictor."""

from __future__ import annotations

import json
import math
import pickle

import pytest
import torch
from torch import nn

from qslm.errors import PlanError, SensitivityCacheError, SensitivityError
from qslm.executor import InProcessExecutor
from qslm.hierarchy import Hierarchy, build_hierarchy
from qslm.models import SpikeGPT, SpikeGPTConfig
from qslm.quant import QuantPlan, QuantSpec, apply_fake_quant
from qslm.sensitivity import (
    ClassificationTask,
    LMCalibrationTask,
    Measurement,
    MeasurementResult,
    SensitivityCacheWarning,
    SensitivityTable,
    Task,
    data_fingerprint,
    degradation,
    evaluate_measurement,
    measure_sensitivity,
    model_fingerprint,
    plan_measurements,
)

W2 = QuantSpec(2)
W8 = QuantSpec(8)
W4G = QuantSpec(4, group_size=16)
SPECS = [W2, W8]
N_MODULES = 16  # tiny SpikeGPT: emb, 2 × 7, head
N_MULTI_BLOCKS = 2  # blocks.0, blocks.1 (emb and head are single-module blocks)
N_WANTED = 1 + N_MODULES * len(SPECS) + N_MULTI_BLOCKS * len(SPECS)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_lm(seed: int = 0) -> SpikeGPT:
    torch.manual_seed(seed)
    return SpikeGPT(SpikeGPTConfig(vocab_size=300, n_layer=2, n_embd=32)).eval()


def lm_task(seed: int = 1) -> LMCalibrationTask:
    g = torch.Generator().manual_seed(seed)
    return LMCalibrationTask.from_token_ids(torch.randint(0, 300, (200,), generator=g),
                                            n_windows=4, window_len=13, seed=seed, batch_size=4)


class CountingTask:
    """Delegates to ``inner`` and counts metric calls (same fingerprint: same cache)."""

    def __init__(self, inner: Task) -> None:
        self.inner = inner
        self.name = inner.name
        self.higher_is_better = inner.higher_is_better
        self.calls = 0

    def metric(self, model: nn.Module) -> float:
        self.calls += 1
        return self.inner.metric(model)

    def fingerprint(self) -> str:
        return self.inner.fingerprint()


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k].view(-1).view(torch.uint8),
                                                         b[k].view(-1).view(torch.uint8)), k


# --- tasks --------------------------------------------------------------------------------------


def test_lm_task_is_the_mean_next_token_nll():
    model, task = tiny_lm(), lm_task()
    w = task.windows
    assert w.shape == (4, 13)
    with torch.no_grad():
        logits = model(w[:, :-1])
        expected = nn.functional.cross_entropy(logits.reshape(-1, 300), w[:, 1:].reshape(-1))
    assert task.metric(model) == pytest.approx(float(expected), rel=1e-6)
    assert task.higher_is_better is False
    model.train()
    task.metric(model)
    assert model.training  # mode restored
    again = lm_task()
    assert torch.equal(again.windows, w)  # seeded windows
    assert not torch.equal(lm_task(seed=2).windows, w)


def test_degradation_sign_convention():
    assert degradation(False, 5.0, 5.5) == pytest.approx(0.5)  # NLL up: worse
    assert degradation(True, 0.9, 0.8) == pytest.approx(0.1)  # accuracy down: worse
    assert degradation(True, 0.9, 0.95) < 0


@pytest.mark.parametrize("bad, match", [
    pytest.param(torch.zeros(3, 1, dtype=torch.long), "T >= 2", id="window-too-short"),
    pytest.param(torch.zeros(3, 4), "integers", id="float-windows"),
    pytest.param(torch.zeros(4, dtype=torch.long), "2-D", id="1-d-windows"),
    pytest.param(-torch.ones(2, 4, dtype=torch.long), "negative", id="negative-ids"),
])
def test_lm_task_rejects_bad_windows(bad, match):
    with pytest.raises(SensitivityError, match=match):
        LMCalibrationTask(bad)


def test_lm_task_rejects_bad_arguments():
    with pytest.raises(SensitivityError, match="batch_size"):
        LMCalibrationTask(torch.zeros(2, 4, dtype=torch.long), batch_size=0)
    with pytest.raises(SensitivityError, match="hold only"):
        LMCalibrationTask.from_token_ids(torch.arange(10), n_windows=5, window_len=8)
    with pytest.raises(SensitivityError, match="outside"):
        LMCalibrationTask(torch.full((1, 4), 999)).metric(nn.Embedding(1000, 10))  # 10 logits
    with pytest.raises(SensitivityError, match="logits"):
        LMCalibrationTask(torch.full((1, 4), 1)).metric(nn.Sequential(nn.Embedding(10, 4),
                                                                      nn.Flatten()))


def test_fingerprints_are_stable_and_sensitive():
    a, b = tiny_lm(), tiny_lm()
    assert model_fingerprint(a) == model_fingerprint(b)
    assert len(model_fingerprint(a)) == 64
    with torch.no_grad():
        b.blocks[1].ffn.value.weight.view(-1)[7] += 1e-6
    assert model_fingerprint(a) != model_fingerprint(b)
    c = tiny_lm().set_switches(binary_embedding=False)  # same weights, another function
    assert model_fingerprint(c) != model_fingerprint(a)

    t = lm_task()
    assert data_fingerprint(t) == data_fingerprint(lm_task())
    assert data_fingerprint(t) != data_fingerprint(lm_task(seed=2))
    assert data_fingerprint(t) != data_fingerprint(LMCalibrationTask(t.windows, batch_size=2))
    assert pickle.loads(pickle.dumps(t)).fingerprint() == t.fingerprint()
    with pytest.raises(SensitivityError, match="fingerprint"):
        data_fingerprint(object())


# --- measurements -------------------------------------------------------------------------------


def test_measurements_are_picklable_and_keyed_canonically():
    m = Measurement.module("blocks.0.att.key", W4G)
    assert pickle.loads(pickle.dumps(m)) == m
    assert Measurement.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    assert m.key() == Measurement.module("blocks.0.att.key", QuantSpec(4, group_size=16)).key()
    assert m.key() != Measurement.module("blocks.0.att.key", W2).key()
    assert m.plan() == QuantPlan({"blocks.0.att.key": W4G})
    assert Measurement.baseline().plan() == QuantPlan()
    r = MeasurementResult(m, 1.25, 0.5)
    assert MeasurementResult.from_record(r.to_record()) == r
    with pytest.raises(SensitivityError):
        Measurement("module", "a", ("b",), W2)
    with pytest.raises(SensitivityError):
        Measurement("baseline", spec=W2)
    with pytest.raises(SensitivityError):
        Measurement("module", "a", ("a",), None)

    h = build_hierarchy(tiny_lm())
    ms = plan_measurements(h, SPECS)
    assert len(ms) == N_WANTED and ms[0] == Measurement.baseline()
    assert len({x.key() for x in ms}) == len(ms)
    assert {x.name for x in ms if x.kind == "block"} == {"blocks.0", "blocks.1"}
    assert len(plan_measurements(h, SPECS, blocks=False)) == 1 + N_MODULES * len(SPECS)


def test_evaluate_restores_weights_and_rng():
    model, task = tiny_lm(), lm_task()
    before = state(model)
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    for m in (Measurement.module("blocks.0.ffn.key", W2),
              Measurement.block("blocks.1", build_hierarchy(model).block("blocks.1").module_names,
                                W2)):
        value = evaluate_measurement(model, task, m)
        assert_bit_identical(before, state(model))
        assert torch.equal(torch.get_rng_state(), rng)
        with apply_fake_quant(model, m.plan()):
            assert value == task.metric(model)  # the metric of the quantized model

    class Failing(CountingTask):
        def metric(self, model: nn.Module) -> float:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        evaluate_measurement(model, Failing(task), Measurement.module("head", W2))
    assert_bit_identical(before, state(model))


# --- measure_sensitivity and the cache ----------------------------------------------------------


def test_second_run_evaluates_nothing_and_model_is_untouched(tmp_path):
    model = tiny_lm()
    model.train()  # mode must come back too
    before = state(model)
    task = CountingTask(lm_task())
    t1 = measure_sensitivity(model, task, SPECS, cache_dir=tmp_path, progress=False)
    assert task.calls == t1.n_evaluations == N_WANTED and t1.n_cached == 0
    assert_bit_identical(before, state(model))
    assert model.training

    files = sorted(p.name for p in (tmp_path / model_fingerprint(model)).iterdir())
    fp = data_fingerprint(task)
    assert files == [f"{fp}.jsonl", f"{fp}.meta.json"]
    meta = json.loads((tmp_path / model_fingerprint(model) / f"{fp}.meta.json").read_text())
    assert meta["format_version"] == 1 and meta["task"]["name"] == "lm-nll"
    lines = (tmp_path / model_fingerprint(model) / f"{fp}.jsonl").read_text().splitlines()
    assert len(lines) == N_WANTED

    task2 = CountingTask(lm_task())
    t2 = measure_sensitivity(model, task2, SPECS, cache_dir=tmp_path, progress=False)
    assert task2.calls == 0 and t2.n_evaluations == 0 and t2.n_cached == N_WANTED
    d1, d2 = t1.to_dict(), t2.to_dict()
    for d in (d1, d2):
        del d["n_evaluations"], d["n_cached"]
    assert d1 == d2

    task3 = CountingTask(lm_task())  # a subset of the specs: also fully cached
    measure_sensitivity(model, task3, [W8], cache_dir=tmp_path, progress=False)
    assert task3.calls == 0
    measure_sensitivity(model, task3, [W8, W4G], cache_dir=tmp_path, progress=False)
    assert task3.calls == N_MODULES + N_MULTI_BLOCKS  # only the new spec


def test_table_values_deltas_and_determinism(tmp_path):
    model, task = tiny_lm(), lm_task()
    h = build_hierarchy(model)
    t = measure_sensitivity(model, task, SPECS, h, tmp_path, progress=False)
    assert t.baseline == task.metric(model)
    m = "blocks.0.att.output"
    with apply_fake_quant(model, QuantPlan({m: W2})):
        q = task.metric(model)
    assert t.metric(m, W2) == q and t.delta(m, W2) == q - t.baseline
    with apply_fake_quant(model, QuantPlan(dict.fromkeys(h.block("blocks.1").module_names, W2))):
        assert t.block_metric("blocks.1", W2) == task.metric(model)
    assert t.block_delta("emb", W8) == t.delta("emb", W8)  # single-module block
    assert set(t.block_deltas(W2)) == set(h.block_names)
    assert list(t.deltas(W2)) == list(h.module_names)
    # 8 bits changes the model far less than 2 bits
    assert sum(map(abs, t.deltas(W8).values())) < sum(map(abs, t.deltas(W2).values()))

    # deterministic: measured again from scratch (no cache), the same numbers
    sub = Hierarchy(h.model_name, (h.block("blocks.0"), h.block("head")), h.total_params)
    fresh = measure_sensitivity(model, task, [W2], sub, None, progress=False)
    assert fresh.baseline == t.baseline
    for name in sub.module_names:
        assert fresh.metric(name, W2) == t.metric(name, W2)
    assert fresh.block_metric("blocks.0", W2) == t.block_metric("blocks.0", W2)


def test_predict_is_the_sum_of_module_deltas(tmp_path):
    model, task = tiny_lm(), lm_task()
    t = measure_sensitivity(model, task, SPECS, cache_dir=None, blocks=False, progress=False)
    assert t.predict(QuantPlan()) == 0.0
    assert t.predict_metric(QuantPlan()) == t.baseline
    plan = QuantPlan({"re:blocks\\.0\\..*": W2, "head": W8, "emb": None}, default=W8)
    expected = sum(t.delta(m, W2) for m in t.modules if m.startswith("blocks.0.")) + \
        sum(t.delta(m, W8) for m in t.modules if not m.startswith("blocks.0.") and m != "emb")
    assert t.predict(plan) == pytest.approx(expected, abs=1e-12)
    assert t.predict_metric(plan) == pytest.approx(t.baseline + expected, abs=1e-12)
    assert t.predict(QuantPlan.uniform(W2)) == pytest.approx(sum(t.deltas(W2).values()))
    with pytest.raises(SensitivityError, match="not.*measured|no sensitivity"):
        t.predict(QuantPlan.uniform(W4G))
    with pytest.raises(PlanError, match="nope"):
        t.predict(QuantPlan({"nope": W2}))
    with pytest.raises(SensitivityError, match="no sensitivity measured for block"):
        t.block_delta("blocks.0", W2)  # blocks=False

    back = SensitivityTable.from_dict(json.loads(json.dumps(t.to_dict())))
    assert back.to_dict() == t.to_dict()
    assert back.predict(plan) == t.predict(plan)
    assert pickle.loads(pickle.dumps(t)).to_dict() == t.to_dict()
    with pytest.raises(SensitivityError, match="format_version"):
        SensitivityTable.from_dict({**t.to_dict(), "format_version": 7})


def test_interrupted_run_resumes_with_nothing_lost(tmp_path):
    model, task = tiny_lm(), CountingTask(lm_task())
    before = state(model)

    class StopsAfter5(InProcessExecutor):
        def run(self, mdl, tsk, jobs):
            for i, result in enumerate(super().run(mdl, tsk, jobs)):
                if i == 5:
                    raise KeyboardInterrupt
                yield result

    with pytest.raises(KeyboardInterrupt):
        measure_sensitivity(model, task, SPECS, cache_dir=tmp_path, executor=StopsAfter5(),
                            progress=False)
    assert task.calls == 6  # the sixth was measured but not delivered
    assert_bit_identical(before, state(model))

    task.calls = 0
    t = measure_sensitivity(model, task, SPECS, cache_dir=tmp_path, progress=False)
    assert task.calls == t.n_evaluations == N_WANTED - 5 and t.n_cached == 5


def test_truncated_last_line_is_remeasured(tmp_path):
    model = tiny_lm()
    measure_sensitivity(model, lm_task(), SPECS, cache_dir=tmp_path, progress=False)
    path = tmp_path / model_fingerprint(model) / f"{lm_task().fingerprint()}.jsonl"
    text = path.read_text()
    path.write_text(text[: len(text) - 25])  # killed while writing the last line

    task = CountingTask(lm_task())
    with pytest.warns(SensitivityCacheWarning, match="1 corrupt or truncated"):
        measure_sensitivity(model, task, SPECS, cache_dir=tmp_path, progress=False)
    assert task.calls == 1
    assert path.read_text() .count("\n") == N_WANTED
    assert all(json.loads(line) for line in path.read_text().splitlines())  # file repaired

    with path.open("a") as fh:  # garbage in the middle of the file is skipped as well
        fh.write("not json\n")
    task.calls = 0
    with pytest.warns(SensitivityCacheWarning):
        measure_sensitivity(model, task, SPECS, cache_dir=tmp_path, progress=False)
    assert task.calls == 0


def test_cache_is_keyed_by_model_and_data(tmp_path):
    task = CountingTask(lm_task())
    measure_sensitivity(tiny_lm(0), task, [W8], cache_dir=tmp_path, blocks=False, progress=False)
    task.calls = 0
    measure_sensitivity(tiny_lm(1), task, [W8], cache_dir=tmp_path, blocks=False, progress=False)
    assert task.calls == 1 + N_MODULES  # another model: nothing reused
    other = CountingTask(lm_task(seed=3))
    measure_sensitivity(tiny_lm(0), other, [W8], cache_dir=tmp_path, blocks=False,
                        progress=False)
    assert other.calls == 1 + N_MODULES  # other data: nothing reused
    assert len(list(tmp_path.iterdir())) == 2


def test_metadata_of_another_format_is_refused(tmp_path):
    model, task = tiny_lm(), lm_task()
    measure_sensitivity(model, task, [W8], cache_dir=tmp_path, blocks=False, progress=False)
    meta = tmp_path / model_fingerprint(model) / f"{task.fingerprint()}.meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "format_version": 99}))
    with pytest.raises(SensitivityCacheError, match="format_version 99"):
        measure_sensitivity(model, task, [W8], cache_dir=tmp_path, progress=False)
    meta.write_text("{trunc")
    with pytest.raises(SensitivityCacheError, match="unreadable"):
        measure_sensitivity(model, task, [W8], cache_dir=tmp_path, progress=False)


@pytest.mark.parametrize("specs, match", [
    pytest.param([], "empty", id="no-specs"),
    pytest.param([4], "QuantSpec", id="int-spec"),
    pytest.param(W2, "list", id="bare-spec"),
])
def test_bad_specs_are_rejected(specs, match):
    with pytest.raises(SensitivityError, match=match):
        measure_sensitivity(tiny_lm(), lm_task(), specs, progress=False)


def test_foreign_hierarchy_and_bad_task_are_rejected():
    model = tiny_lm()
    other = build_hierarchy(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)))
    with pytest.raises(SensitivityError, match="not quantizable modules"):
        measure_sensitivity(model, lm_task(), [W2], other, progress=False)
    with pytest.raises(SensitivityError, match="Task"):
        measure_sensitivity(model, object(), [W2], progress=False)


# --- classification, on a generic model ---------------------------------------------------------


class ToyClassifier(nn.Module):
    """Embedding, a ModuleList of residual MLP blocks, mean pooling, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(20, 8)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
                                    for _ in range(2))
        self.head = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids)
        for block in self.blocks:
            x = x + block(x)
        m = attention_mask[..., None].float()
        return self.head((x * m).sum(1) / m.sum(1))


def classification_batches():
    g = torch.Generator().manual_seed(5)
    for _ in range(2):
        ids = torch.randint(0, 20, (8, 6), generator=g)
        mask = torch.ones_like(ids)
        mask[:, 4:] = 0
        yield ids, mask, torch.randint(0, 3, (8,), generator=g)


def test_classification_task_and_sensitivity(tmp_path):
    model = ToyClassifier()
    acc = ClassificationTask(classification_batches())
    loss = ClassificationTask(classification_batches(), metric="loss")
    assert acc.higher_is_better and not loss.higher_is_better
    assert acc.fingerprint() != loss.fingerprint()
    with torch.no_grad():
        batches = list(classification_batches())
        logits = [model(i, m) for i, m, _ in batches]
        labels = torch.cat([y for _, _, y in batches])
        preds = torch.cat([lg.argmax(-1) for lg in logits])
        ce = nn.functional.cross_entropy(torch.cat(logits), labels)
    assert acc.metric(model) == float((preds == labels).float().mean())
    assert loss.metric(model) == pytest.approx(float(ce), rel=1e-6)

    t = measure_sensitivity(model, acc, [W2], cache_dir=tmp_path, progress=False)
    assert t.task_name == "classification-accuracy" and t.higher_is_better
    assert list(t.blocks) == ["emb", "blocks.0", "blocks.1", "head"]
    for mod in t.modules:
        assert t.delta(mod, W2) == pytest.approx(t.baseline - t.metric(mod, W2))
    tl = measure_sensitivity(model, loss, [W2], cache_dir=tmp_path, progress=False)
    assert tl.delta("head", W2) == pytest.approx(tl.metric("head", W2) - tl.baseline)
    assert tl.n_evaluations == 1 + 6 + 2  # separate cache file from the accuracy task

    with pytest.raises(SensitivityError, match="metric must be"):
        ClassificationTask(classification_batches(), metric="f1")
    with pytest.raises(SensitivityError, match="at least one batch"):
        ClassificationTask([])
    with pytest.raises(SensitivityError, match="do not agree"):
        ClassificationTask([(torch.zeros(2, 3, dtype=torch.long),
                             torch.ones(2, 3, dtype=torch.long), torch.zeros(3))])


def test_spikegpt_classifier_task():
    torch.manual_seed(0)
    model = SpikeGPT(SpikeGPTConfig(vocab_size=300, n_layer=1, n_embd=32, num_classes=3))
    task = ClassificationTask(classification_batches())
    assert 0.0 <= task.metric(model) <= 1.0
    assert math.isfinite(ClassificationTask(classification_batches(), "loss").metric(model))
    with pytest.raises(SensitivityError, match="label 2"):
        ClassificationTask(classification_batches()).metric(
            SpikeGPT(SpikeGPTConfig(vocab_size=300, n_layer=1, n_embd=32, num_classes=2)))
