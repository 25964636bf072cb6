"""qslm.search.core on a tiny random SpikeGPT language model (2 layers, C = 32, V = 64, ctx 16):
the search space, the predictor (block measurements, clipping, monotonicity, the fitted gain),
the evaluator and its evals.jsonl (one line per new plan, reuse, a truncated last line, another
search's file, weights restored), both strategies (feasibility checked by an independent
evaluation, the evaluation budget, memory budgets, an impossible budget, a zero floor), the ILP
solution against its own constraints (local optimality) and the cost model's footprint against
qslm.quant.footprint.

Everything is built the way ``qslm.search.cli._run`` builds it, with an LMCalibrationTask on random
token windows as both the calibration and the evaluation task.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from qslm.errors import QslmError
from qslm.hierarchy import build_hierarchy
from qslm.models import SpikeGPT, SpikeGPTConfig
from qslm.quant import QuantSpec, apply_fake_quant, footprint
from qslm.search.constraints import MemoryBudget, PerformanceFloor
from qslm.search.core import (
    FEAS_EPS,
    KEEP,
    EvalRecord,
    Evaluator,
    Predictor,
    SearchContext,
    SearchError,
    SearchSpace,
    _ilp_solve,
    _ilp_tables,
    ilp_search,
    tiered_search,
)
from qslm.sensitivity import LMCalibrationTask, SensitivityTable, measure_sensitivity

VOCAB, N_LAYER, N_EMBD, CTX = 64, 2, 32, 16
BITS = (1, 2, 4, 8)
N_MODULES = 2 + 7 * N_LAYER  # emb, 7 per block, head


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The machine runs other work: one torch thread is much faster for these tiny models (module
    scope: set before the module's fixtures build the model and measure it)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_lm(seed: int = 0, n_layer: int = N_LAYER) -> SpikeGPT:
    torch.manual_seed(seed)
    return SpikeGPT(SpikeGPTConfig(vocab_size=VOCAB, n_layer=n_layer, n_embd=N_EMBD,
                                   ctx_len=CTX)).eval()


def lm_task(seed: int = 1) -> LMCalibrationTask:
    g = torch.Generator().manual_seed(seed)
    return LMCalibrationTask(torch.randint(0, VOCAB, (4, CTX + 1), generator=g), batch_size=4)


class Setup:
    """model, task, hierarchy, space, sensitivity table, cost model, cost order (like cli._run)."""

    def __init__(self, *, symmetric: bool = True, granularity: str = "group",
                 group_size: int | None = 64, bits: tuple[int, ...] = BITS,
                 table: SensitivityTable | None = None) -> None:
        self.model = tiny_lm()
        self.task = lm_task()
        self.hierarchy = build_hierarchy(self.model)
        self.space = SearchSpace.from_hierarchy(self.hierarchy, bits, symmetric=symmetric,
                                                granularity=granularity, group_size=group_size)
        self.table = table if table is not None else measure_sensitivity(
            self.model, self.task, [self.space.spec(b) for b in self.space.bits],
            self.hierarchy, None, progress=False)
        workload = self.model.workload()
        self.cost, self.cost_order = self.space.cost_model(workload, "edge-npu")

    def evaluator(self, log_path: Path | None = None, task=None, executor=None) -> Evaluator:
        return Evaluator(self.model, task or self.task, self.space, log_path, executor=executor)

    def ctx(self, floor: PerformanceFloor, budget: MemoryBudget, *, max_evals: int = 12,
            log_path: Path | None = None, alpha: float = 0.5) -> SearchContext:
        predictor = Predictor(self.table, self.space, same_units=True)
        return SearchContext(self.space, predictor, self.cost, self.cost_order,
                             self.evaluator(log_path), floor, budget, alpha=alpha,
                             max_evals=max_evals)


@pytest.fixture(scope="module")
def setup() -> Setup:
    return Setup()


def block_bits(space: SearchSpace, per_block: dict[str, int | list[int]]) -> np.ndarray:
    """A bit vector from one width (or one per module) per block."""
    bits = np.zeros(space.n_modules, dtype=np.int64)
    for b, idx in space.blocks.items():
        v = per_block[b]
        bits[list(idx)] = v if isinstance(v, int) else np.asarray(v)
    return bits


def clipped_monotone(delta, width: int, bits: tuple[int, ...]) -> float:
    """What the predictor should use for ``delta(width)``: clipped at 0, and never below the
    value of a higher width (except 1 bit, which is measured on its own)."""
    if width == KEEP:
        return 0.0
    if width == 1:
        return max(0.0, delta(1))
    return max(0.0, *(delta(w) for w in bits if w != 1 and w >= width))


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k].reshape(-1).view(torch.uint8), b[k].reshape(-1).view(torch.uint8)), k


def lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text("utf-8").split("\n") if ln.strip()]


# ================================================================================================
# SearchSpace
# ================================================================================================


def test_space_levels_and_modules(setup):
    space = setup.space
    assert space.modules == setup.hierarchy.module_names and space.n_modules == N_MODULES
    assert space.bits == (8, 4, 2, 1) and space.levels == (KEEP, 8, 4, 2, 1)
    assert set(space.blocks) == {"emb", "blocks.0", "blocks.1", "head"}
    assert space.blocks["emb"] == (0,) and space.blocks["head"] == (N_MODULES - 1,)
    assert sorted(i for ix in space.blocks.values() for i in ix) == list(range(N_MODULES))
    # duplicates and order do not matter
    again = SearchSpace.from_hierarchy(setup.hierarchy, [2, 8, 2, 4, 1])
    assert again.bits == (8, 4, 2, 1)


def test_space_rejects_a_width_the_scheme_cannot_use(setup):
    with pytest.raises(QslmError):
        SearchSpace.from_hierarchy(setup.hierarchy, [4, 9])


def test_plan_resolves_every_module_to_its_spec(setup):
    space = setup.space
    rng = np.random.default_rng(3)
    bits = rng.choice(space.levels, size=space.n_modules)
    bits[:5] = [KEEP, 1, 2, 4, 8]
    resolved = space.plan(bits).resolve(space.modules, strict=True)
    assert list(resolved) == list(space.modules)
    for m, b in zip(space.modules, bits):
        if b == KEEP:
            assert resolved[m] is None
        else:
            assert resolved[m] == QuantSpec(int(b), True, "group", 64)
    assert space.plan(space.uniform(KEEP)).resolve(space.modules) == dict.fromkeys(space.modules)


def test_one_bit_is_always_symmetric_even_with_an_asymmetric_scheme(setup):
    for gran, gs in (("group", 32), ("channel", None), ("tensor", None)):
        space = SearchSpace.from_hierarchy(setup.hierarchy, BITS, symmetric=False,
                                           granularity=gran, group_size=gs)
        assert space.spec(1) == QuantSpec(1, True, gran, gs)
        assert space.spec(1).is_binary and not space.spec(1).stores_zero_points
        assert space.spec(2) == QuantSpec(2, False, gran, gs)
        assert space.spec(8).stores_zero_points
        assert space.spec(KEEP) is None
        resolved = space.plan(space.uniform(1)).resolve(space.modules)
        assert all(s == QuantSpec(1, True, gran, gs) for s in resolved.values())


def test_space_spec_drops_group_size_without_groups(setup):
    space = SearchSpace.from_hierarchy(setup.hierarchy, BITS, granularity="channel",
                                       group_size=64)
    assert space.spec(4) == QuantSpec(4, True, "channel", None)


def test_key_is_stable_and_distinguishes_plans_and_schemes(setup):
    space = setup.space
    a = space.uniform(4)
    b = a.copy()
    b[3] = 2
    ka = space.key(a)
    assert ka == space.key(a) == space.key(list(a)) == space.key(tuple(int(x) for x in a))
    assert len(ka) == 20 and all(c in "0123456789abcdef" for c in ka)
    # the same space built again gives the same key (evals.jsonl keys survive a restart)
    assert SearchSpace.from_hierarchy(setup.hierarchy, BITS).key(a) == ka
    # the documented on-disk key: sha256 of scheme | modules | bit vector, 20 hex digits
    body = ",".join(str(int(x)) for x in a)
    expected = hashlib.sha256(f"s|group|64|{'|'.join(space.modules)}|{body}".encode())
    assert ka == expected.hexdigest()[:20]
    keys = {ka, space.key(b), space.key(space.uniform(KEEP)), space.key(space.uniform(8))}
    assert len(keys) == 4
    h = setup.hierarchy
    other_schemes = [
        SearchSpace.from_hierarchy(h, BITS, symmetric=False),
        SearchSpace.from_hierarchy(h, BITS, group_size=32),
        SearchSpace.from_hierarchy(h, BITS, granularity="channel", group_size=None),
        SearchSpace.from_hierarchy(h, BITS, granularity="tensor", group_size=None),
    ]
    scheme_keys = {ka} | {s.key(a) for s in other_schemes}
    assert len(scheme_keys) == 1 + len(other_schemes)
    # the candidate widths are not part of the key: the same plan is the same evaluation
    assert SearchSpace.from_hierarchy(h, (4, 8)).key(a) == ka


# ================================================================================================
# Predictor
# ================================================================================================


def test_predict_of_keep_everything_is_zero(setup):
    p = Predictor(setup.table, setup.space, same_units=True)
    keep = setup.space.uniform(KEEP)
    assert p.raw(keep).tolist() == [0.0]
    assert p.predict(keep).tolist() == [0.0]
    assert p.predict(np.stack([keep, keep])).tolist() == [0.0, 0.0]


def test_block_uniform_plan_uses_the_measured_block_delta(setup):
    space, table = setup.space, setup.table
    p = Predictor(table, space, same_units=True)
    spec = space.spec

    def bd(block):
        return lambda w: table.block_delta(block, spec(w))

    for per_block in ({"emb": 8, "blocks.0": 4, "blocks.1": 2, "head": KEEP},
                      {"emb": 1, "blocks.0": 1, "blocks.1": 8, "head": 2},
                      {"emb": KEEP, "blocks.0": 2, "blocks.1": 4, "head": 8}):
        bits = block_bits(space, per_block)
        expected = sum(clipped_monotone(bd(b), w, BITS) for b, w in per_block.items())
        assert p.raw(bits)[0] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    # a single block quantized alone at one width, where the measurement is used as measured
    for block in ("blocks.0", "blocks.1"):
        for w in BITS:
            per_block = {"emb": KEEP, "blocks.0": KEEP, "blocks.1": KEEP, "head": KEEP, block: w}
            got = p.raw(block_bits(space, per_block))[0]
            assert got == pytest.approx(clipped_monotone(bd(block), w, BITS), abs=1e-15)
            assert got >= max(0.0, table.block_delta(block, spec(w))) - 1e-15
            # the block measurement, not the sum of its module deltas
            assert got == pytest.approx(p.BD[p.block_names.index(block), space.levels.index(w)])


def test_block_uniform_plan_uses_the_block_delta_on_a_hand_made_table(setup):
    """Exact numbers: a table whose block measurement is far from the sum of its modules."""
    space = setup.space
    specs = tuple(space.spec(b) for b in space.bits)
    base = 2.0
    module_delta = {8: 0.001, 4: 0.01, 2: 0.1, 1: 0.05}
    module_metrics = {(m, space.spec(w)): base + module_delta[w]
                      for m in space.modules for w in space.bits}
    block_delta = {8: 0.002, 4: 0.5, 2: 0.3, 1: -0.2}  # 2 bits below 4 bits: made monotone
    block_metrics = {(b, space.spec(w)): base + block_delta[w]
                     for b in ("blocks.0", "blocks.1") for w in space.bits}
    table = SensitivityTable("lm-nll", False, base, specs,
                             {b.name: b.module_names for b in setup.hierarchy.blocks},
                             module_metrics, block_metrics)
    p = Predictor(table, space, same_units=True)
    keep = {"emb": KEEP, "blocks.0": KEEP, "blocks.1": KEEP, "head": KEEP}
    assert p.raw(block_bits(space, keep | {"blocks.0": 8}))[0] == pytest.approx(0.002)
    assert p.raw(block_bits(space, keep | {"blocks.0": 4}))[0] == pytest.approx(0.5)
    assert p.raw(block_bits(space, keep | {"blocks.0": 2}))[0] == pytest.approx(0.5)  # monotone
    assert p.raw(block_bits(space, keep | {"blocks.0": 1}))[0] == 0.0  # clipped, stands alone
    # emb and head are single-module blocks: their module delta
    assert p.raw(block_bits(space, keep | {"emb": 2, "head": 4}))[0] == pytest.approx(0.11)
    # a mixed block: the sum of its module deltas (7 modules)
    mixed = keep | {"blocks.1": [8, 8, 4, 4, 2, 2, 1]}
    assert p.raw(block_bits(space, mixed))[0] == pytest.approx(2 * 0.001 + 2 * 0.01 + 2 * 0.1
                                                               + 0.05)
    both = keep | {"blocks.0": 4, "blocks.1": [8, 8, 4, 4, 2, 2, 1], "emb": 8}
    assert p.raw(block_bits(space, both))[0] == pytest.approx(0.5 + 0.272 + 0.001)


def test_mixed_block_uses_the_sum_of_module_deltas(setup):
    space, table = setup.space, setup.table
    p = Predictor(table, space, same_units=True)
    widths0 = [8, 4, 4, 2, 2, 2, 1]
    widths1 = [KEEP, 8, 8, 8, 8, 8, 8]
    bits = block_bits(space, {"emb": KEEP, "blocks.0": widths0, "blocks.1": widths1,
                              "head": KEEP})
    expected = 0.0
    for i in (*space.blocks["blocks.0"], *space.blocks["blocks.1"]):
        m = space.modules[i]
        expected += clipped_monotone(lambda w, m=m: table.delta(m, space.spec(w)), int(bits[i]),
                                     BITS)
    assert p.raw(bits)[0] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert p.raw(bits)[0] == pytest.approx(
        sum(p.module_degradation(i, int(bits[i])) for i in range(space.n_modules)), rel=1e-12)


def test_module_degradations_are_clipped_and_monotone(setup):
    space, table = setup.space, setup.table
    p = Predictor(table, space, same_units=True)
    assert (p.D >= 0).all() and (p.BD >= 0).all()
    chain = [w for w in space.bits if w >= 2]  # highest first; 1 bit stands alone
    for i, m in enumerate(space.modules):
        assert p.module_degradation(i, KEEP) == 0.0
        ds = [p.module_degradation(i, w) for w in chain]
        assert all(a <= b for a, b in zip(ds, ds[1:])), (m, ds)
        for w in space.bits:
            measured = table.delta(m, space.spec(w))
            assert p.module_degradation(i, w) >= max(0.0, measured) - 1e-15
            assert p.module_degradation(i, w) == pytest.approx(
                clipped_monotone(lambda v: table.delta(m, space.spec(v)), w, BITS), abs=1e-15)
    cols = [space.levels.index(w) for w in chain]
    assert (np.diff(p.BD[:, cols], axis=1) >= 0).all()
    # lowering every module one level at a time never lowers the prediction (widths >= 2)
    for w_hi, w_lo in zip(chain, chain[1:]):
        assert p.raw(space.uniform(w_lo))[0] >= p.raw(space.uniform(w_hi))[0]


def test_observe_fits_the_gain_by_least_squares_through_the_origin(setup):
    p = Predictor(setup.table, setup.space, same_units=False)
    assert p.gain is None
    bits = setup.space.uniform(2)
    assert p.predict(bits)[0] == pytest.approx(p.raw(bits)[0])  # gain 1 while unknown
    p.observe(0.0, 3.0)  # a negligible prediction carries no information on the gain
    assert p.gain is None
    p.observe(1.0, 2.0)
    assert p.gain == pytest.approx(2.0)
    assert p.predict(bits)[0] == pytest.approx(2.0 * p.raw(bits)[0])
    p.observe(2.0, 2.0)  # g = Σ r·a / Σ r² = (1·2 + 2·2) / (1 + 4)
    assert p.gain == pytest.approx(6 / 5)
    p.observe(1.0, -5.0)  # a negative measured degradation counts as 0: (6 + 0) / (5 + 1)
    assert p.gain == pytest.approx(1.0)
    p.observe(3.0, 1.5)  # (6 + 4.5) / (6 + 9)
    assert p.gain == pytest.approx(10.5 / 15)


def test_observe_keeps_the_gain_when_the_fit_is_not_positive(setup):
    p = Predictor(setup.table, setup.space, same_units=True)
    assert p.gain == 1.0
    p.observe(1.0, -1.0)  # least squares gives 0: not a usable gain
    assert p.gain == 1.0
    q = Predictor(setup.table, setup.space, same_units=False)
    q.observe(0.5, 0.0)
    assert q.gain is None


# ================================================================================================
# Evaluator and evals.jsonl
# ================================================================================================


class CountingMetric(LMCalibrationTask):
    """The evaluation task, counting the calls of its metric (the task itself, not a
    stand-in)."""

    def __init__(self, task: LMCalibrationTask) -> None:
        self.__dict__.update(task.__dict__)
        self.calls = 0

    def metric(self, model) -> float:
        self.calls += 1
        return super().metric(model)


def test_evaluate_appends_one_line_per_new_plan(setup, tmp_path):
    log = tmp_path / "evals.jsonl"
    metric = CountingMetric(setup.task)
    ev = setup.evaluator(log, metric)
    assert metric.calls == 1 and ev.n_new == 1  # the fp32 baseline
    assert len(lines(log)) == 1
    base = json.loads(lines(log)[0])
    assert base["bits"] == setup.space.bits_dict(setup.space.uniform(KEEP))
    assert base["tier"] == "baseline" and base["metric"] == ev.baseline
    space = setup.space
    a, b = space.uniform(4), space.uniform(2)
    b[0] = 8
    ra = ev.evaluate(a, "global", 0.1)
    assert len(lines(log)) == 2
    rec = json.loads(lines(log)[1])
    assert rec == {"format_version": 1, "key": space.key(a), "bits": space.bits_dict(a),
                   "metric": ra.metric, "tier": "global", "predicted": 0.1,
                   "seconds": round(ra.seconds, 4)}
    assert ra.degradation == pytest.approx(ra.metric - ev.baseline)  # NLL: higher is worse
    assert not ra.cached and ra.bits == tuple(int(x) for x in a)
    ev.evaluate(b, "block", None)
    assert len(lines(log)) == 3 and metric.calls == 3 and ev.n_new == 3
    assert log.read_text("utf-8").endswith("\n")
    # the same plan twice: the same record, no evaluation, no line
    again = ev.evaluate(a.copy(), "module", 0.5)
    assert again is ra
    assert len(lines(log)) == 3 and metric.calls == 3 and ev.n_new == 3
    assert ev.n_evaluations == 3
    assert [json.loads(ln)["key"] for ln in lines(log)] == list(ev.records)


def test_a_new_evaluator_reuses_every_earlier_evaluation(setup, tmp_path):
    log = tmp_path / "evals.jsonl"
    space = setup.space
    plans = [space.uniform(8), space.uniform(2), block_bits(space, {"emb": 1, "blocks.0": 4,
                                                                     "blocks.1": 2, "head": 8})]
    first = setup.evaluator(log)
    recs = [first.evaluate(p, "global", None) for p in plans]
    before = log.read_bytes()
    metric = CountingMetric(setup.task)
    second = setup.evaluator(log, metric)
    assert metric.calls == 0 and second.n_new == 0 and second.n_reused == 1
    assert second.baseline == first.baseline
    again = [second.evaluate(p, "module", None) for p in plans]
    assert metric.calls == 0 and second.n_new == 0 and second.n_reused == 4
    for r, s in zip(recs, again):
        assert s.cached and not r.cached
        assert s.key == r.key and s.bits == r.bits
        assert s.metric == r.metric and s.degradation == r.degradation
    assert log.read_bytes() == before  # nothing appended, nothing rewritten
    new = second.evaluate(space.uniform(4), "module", None)
    assert metric.calls == 1 and second.n_new == 1 and not new.cached
    assert len(lines(log)) == 5


def test_a_truncated_last_line_is_dropped_and_evaluated_again(setup, tmp_path):
    log = tmp_path / "evals.jsonl"
    space = setup.space
    a, b = space.uniform(8), space.uniform(2)
    first = setup.evaluator(log)
    ra = first.evaluate(a, "global", None)
    rb = first.evaluate(b, "global", None)
    text = log.read_text("utf-8")
    good, last = text[:text.rindex("\n", 0, len(text) - 1) + 1], lines(log)[-1]
    log.write_text(good + last[:len(last) // 2], encoding="utf-8")  # killed mid-write
    metric = CountingMetric(setup.task)
    second = setup.evaluator(log, metric)
    assert metric.calls == 0  # baseline still there
    assert log.read_text("utf-8") == good  # the cut line is gone, the rest untouched
    assert second.evaluate(a, "global", None).cached
    r = second.evaluate(b, "global", None)
    assert not r.cached and metric.calls == 1 and second.n_new == 1
    assert r.metric == rb.metric  # deterministic evaluation
    recs = [json.loads(ln) for ln in lines(log)]
    assert [x["key"] for x in recs] == [space.key(space.uniform(KEEP)), ra.key, rb.key]


def test_a_damaged_line_before_the_end_raises(setup, tmp_path):
    log = tmp_path / "evals.jsonl"
    ev = setup.evaluator(log)
    ev.evaluate(setup.space.uniform(4), "global", None)
    ls = lines(log)
    log.write_text(ls[0][:30] + "\n" + ls[1] + "\n", encoding="utf-8")
    with pytest.raises(SearchError, match=":1:"):
        setup.evaluator(log)


def test_a_line_whose_key_does_not_match_its_plan_raises(setup, tmp_path):
    log = tmp_path / "evals.jsonl"
    ev = setup.evaluator(log)
    ev.evaluate(setup.space.uniform(4), "global", None)
    recs = [json.loads(ln) for ln in lines(log)]
    recs[1]["bits"][setup.space.modules[0]] = 2  # edited plan, old key
    log.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    with pytest.raises(SearchError, match="does not match its key"):
        setup.evaluator(log)


def test_a_line_of_another_format_version_raises(setup, tmp_path):
    log = tmp_path / "evals.jsonl"
    setup.evaluator(log)
    rec = json.loads(lines(log)[0])
    rec["format_version"] = 99
    log.write_text(json.dumps(rec) + "\n", encoding="utf-8")
    with pytest.raises(SearchError, match="format_version"):
        setup.evaluator(log)


def _foreign_log(tmp_path: Path, n_plans: int) -> Path:
    """evals.jsonl of a search over a 1-layer model (another module list)."""
    other = tiny_lm(n_layer=1)
    space = SearchSpace.from_hierarchy(build_hierarchy(other), BITS)
    log = tmp_path / "evals.jsonl"
    ev = Evaluator(other, lm_task(), space, log)
    for w in space.bits[:n_plans - 1]:
        ev.evaluate(space.uniform(w), "global", None)
    assert len(lines(log)) == n_plans
    return log


def test_a_file_of_another_module_list_raises(setup, tmp_path):
    log = _foreign_log(tmp_path, 3)
    before = log.read_bytes()
    with pytest.raises(SearchError):
        setup.evaluator(log)
    assert log.read_bytes() == before  # left alone


def test_a_single_complete_record_of_another_module_list_raises(setup, tmp_path):
    log = _foreign_log(tmp_path, 1)
    before = log.read_bytes()
    try:
        with pytest.raises(SearchError):
            setup.evaluator(log)
    finally:
        assert log.read_bytes() == before


def test_evaluations_leave_the_weights_bit_identical(tmp_path):
    s = Setup(symmetric=False)  # asymmetric codes, 1-bit binarization, every width
    before = state(s.model)
    ev = s.evaluator(tmp_path / "evals.jsonl")
    rng = np.random.default_rng(0)
    for w in s.space.bits:
        ev.evaluate(s.space.uniform(w), "global", None)
    for _ in range(3):
        ev.evaluate(rng.choice(s.space.levels, size=s.space.n_modules), "module", None)
    assert ev.n_new == 1 + len(s.space.bits) + 3
    assert_bit_identical(before, state(s.model))
    # and the model still scores its baseline
    assert s.task.metric(s.model) == ev.baseline


# ================================================================================================
# The strategies
# ================================================================================================

STRATEGIES = {"tiered": tiered_search, "ilp": ilp_search}


def independent_degradation(s: Setup, bits) -> float:
    """Degradation of a plan measured here, without the Evaluator."""
    base = s.task.metric(s.model)
    if all(b == KEEP for b in bits):
        return 0.0
    with apply_fake_quant(s.model, s.space.plan(np.asarray(bits))):
        q = s.task.metric(s.model)
    return q - base


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("ppl_increase", [0.5, 0.02])
def test_search_returns_a_feasible_smaller_plan(setup, strategy, ppl_increase):
    max_evals = 12
    ctx = setup.ctx(PerformanceFloor("ppl-increase", ppl_increase), MemoryBudget("none"),
                    max_evals=max_evals)
    before = state(setup.model)
    result = STRATEGIES[strategy](ctx)
    assert_bit_identical(before, state(setup.model))
    best = ctx.best()
    assert best is not None
    assert isinstance(best, EvalRecord) and best.key in ctx.evaluator.records
    assert ctx.dmax == pytest.approx(math.log1p(ppl_increase))
    # feasible by a fresh, independent measurement
    d = independent_degradation(setup, best.bits)
    assert d == pytest.approx(best.degradation, rel=1e-6, abs=1e-7)
    assert d <= ctx.dmax + 1e-6
    assert ctx.feasible(best) and ctx.perf_ok(best)
    # smaller than fp32, by the cost model and by qslm's own footprint
    assert ctx.plan_cost(np.array(best.bits))["param_bytes"] < ctx.fp32_bytes
    fp = footprint(setup.model, setup.space.plan(best.bits))
    assert fp.total_bytes < fp.fp32_bytes
    # within the evaluation budget (fp32 baseline included)
    assert ctx.evaluator.n_evaluations <= max_evals
    # best() is the best-scoring feasible evaluation
    scores = [ctx.actual_score(r) for r in ctx.evaluator.records.values() if ctx.feasible(r)]
    assert ctx.actual_score(best) == pytest.approx(max(scores))
    assert "global" in result["tiers"] and "uniform" in result


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_search_respects_a_small_evaluation_budget(setup, strategy):
    ctx = setup.ctx(PerformanceFloor("ppl-increase", 0.0), MemoryBudget("none"), max_evals=2)
    STRATEGIES[strategy](ctx)
    assert ctx.evaluator.n_evaluations <= 2


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_search_meets_a_memory_budget_in_bytes(setup, strategy):
    fp32 = float(setup.cost.fp32_param_bytes)
    w2 = footprint(setup.model, setup.space.plan(setup.space.uniform(2))).total_bytes
    budget = int(w2 + 0.05 * (fp32 - w2))  # w2 fits, w4 and w8 do not
    assert footprint(setup.model, setup.space.plan(setup.space.uniform(4))).total_bytes > budget
    ctx = setup.ctx(PerformanceFloor("ppl-increase", 0.5), MemoryBudget("bytes", budget))
    STRATEGIES[strategy](ctx)
    best = ctx.best()
    assert best is not None
    assert ctx.plan_cost(np.array(best.bits))["param_bytes"] <= budget
    assert footprint(setup.model, setup.space.plan(best.bits)).total_bytes <= budget
    assert independent_degradation(setup, best.bits) <= ctx.dmax + 1e-6
    for r in ctx.evaluator.records.values():  # feasible ⇔ both constraints
        mem_ok = ctx.plan_cost(np.array(r.bits))["param_bytes"] <= budget
        assert ctx.feasible(r) == (mem_ok and r.degradation <= ctx.dmax + FEAS_EPS)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_an_impossible_budget_has_no_best_but_a_closest_plan(setup, strategy):
    ctx = setup.ctx(PerformanceFloor("ppl-increase", 0.5), MemoryBudget("bytes", 1))
    STRATEGIES[strategy](ctx)
    assert ctx.best() is None
    close = ctx.closest()
    assert isinstance(close, EvalRecord) and close.key in ctx.evaluator.records
    # the smallest evaluated plan that meets the floor
    assert ctx.perf_ok(close)
    mem = ctx.plan_cost(np.array(close.bits))["param_bytes"]
    assert all(mem <= ctx.plan_cost(np.array(r.bits))["param_bytes"]
               for r in ctx.evaluator.records.values() if ctx.perf_ok(r))
    assert mem < ctx.fp32_bytes


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_a_zero_floor_keeps_fp32_or_a_plan_that_loses_nothing(setup, strategy):
    ctx = setup.ctx(PerformanceFloor("ppl-increase", 0.0), MemoryBudget("none"))
    assert ctx.dmax == 0.0
    STRATEGIES[strategy](ctx)
    best = ctx.best()
    assert best is not None
    if any(b != KEEP for b in best.bits):
        assert best.degradation <= FEAS_EPS
        assert independent_degradation(setup, best.bits) <= 1e-6


def test_the_search_resumes_from_its_evals_file(setup, tmp_path):
    log = tmp_path / "evals.jsonl"
    floor, budget = PerformanceFloor("ppl-increase", 0.02), MemoryBudget("none")
    first = setup.ctx(floor, budget, log_path=log)
    tiered_search(first)
    n = len(lines(log))
    again = setup.ctx(floor, budget, log_path=log)
    tiered_search(again)
    assert again.evaluator.n_new == 0 and again.evaluator.n_reused == n
    assert len(lines(log)) == n
    assert again.best().key == first.best().key


# ================================================================================================
# The ILP against its own constraints
# ================================================================================================


def _ilp_objective(ctx: SearchContext, tables, cols: np.ndarray) -> float:
    g = ctx.predictor.gain if ctx.predictor.gain is not None else 1.0
    D, mem = ctx.predictor.D, tables["bytes"]
    rows = np.arange(len(cols))
    return float((ctx.alpha * g * D[rows, cols]).sum()
                 + ((1 - ctx.alpha) * mem[rows, cols] / ctx.fp32_bytes).sum())


@pytest.mark.parametrize("budget", ["none", "bytes"])
def test_ilp_solution_meets_its_constraints_and_is_locally_optimal(setup, budget):
    space = setup.space
    fp32 = float(setup.cost.fp32_param_bytes)
    w2 = footprint(setup.model, space.plan(space.uniform(2))).total_bytes
    mb = MemoryBudget("none") if budget == "none" else \
        MemoryBudget("bytes", int(w2 + 0.05 * (fp32 - w2)))
    ctx = setup.ctx(PerformanceFloor("ppl-increase", 0.05), mb)
    tables = _ilp_tables(ctx)
    D, mem = ctx.predictor.D, tables["bytes"]
    cap = tables.get("capacity", math.inf)
    M, L = D.shape
    col = {b: j for j, b in enumerate(space.levels)}
    top = float(D.max(axis=1).sum())
    n_checked = 0
    for t in (0.02, 0.1, 0.3, 1.0):
        t = t * top
        x = _ilp_solve(ctx, t, tables)
        assert x is not None, t
        assert x.shape == (M,) and set(x.tolist()) <= set(space.levels)
        cols = np.array([col[int(b)] for b in x])
        raw = float(D[np.arange(M), cols].sum())
        nbytes = float(mem[np.arange(M), cols].sum())
        assert raw <= t * (1 + 1e-9) + 1e-12
        assert nbytes <= cap + 1e-6
        if mb.kind == "bytes":
            assert ctx.plan_cost(x)["param_bytes"] <= mb.bytes
        obj = _ilp_objective(ctx, tables, cols)
        tol = 1e-4 * max(1.0, abs(obj)) + 1e-9  # the MILP's relative gap
        for m in range(M):
            for j in range(L):
                if j == cols[m]:
                    continue
                c2 = cols.copy()
                c2[m] = j
                raw2 = raw - D[m, cols[m]] + D[m, j]
                bytes2 = nbytes - mem[m, cols[m]] + mem[m, j]
                if raw2 <= t and bytes2 <= cap:
                    n_checked += 1
                    assert _ilp_objective(ctx, tables, c2) >= obj - tol, (t, m, space.levels[j])
    assert n_checked > 0


def test_ilp_reports_an_infeasible_program_as_none(setup):
    ctx = setup.ctx(PerformanceFloor("ppl-increase", 0.05), MemoryBudget("bytes", 1))
    assert _ilp_solve(ctx, 10.0, _ilp_tables(ctx)) is None
    ctx = setup.ctx(PerformanceFloor("ppl-increase", 0.05), MemoryBudget("none"))
    assert _ilp_solve(ctx, -1.0, _ilp_tables(ctx)) is None
    # tolerance 0 with no budget: nothing may degrade, keep-everything is a solution
    x = _ilp_solve(ctx, 0.0, _ilp_tables(ctx))
    assert x is not None
    assert float(ctx.predictor.D[np.arange(len(x)), [ctx.space.levels.index(int(b))
                                                    for b in x]].sum()) <= 1e-12


# ================================================================================================
# The cost model's footprint against qslm.quant.footprint
# ================================================================================================


def _check_footprints(s: Setup, seed: int, force_one_bit: bool) -> None:
    ctx = s.ctx(PerformanceFloor("ppl-increase", 0.05), MemoryBudget("none"))
    rng = np.random.default_rng(seed)
    vectors = [s.space.uniform(KEEP)] + [s.space.uniform(w) for w in s.space.bits]
    vectors += [rng.choice(s.space.levels, size=s.space.n_modules) for _ in range(4)]
    if force_one_bit and 1 in s.space.bits:
        vectors[-1][0] = 1
    mismatches = []
    for bits in vectors:
        got = ctx.plan_cost(bits)["param_bytes"]
        want = footprint(s.model, s.space.plan(bits)).total_bytes
        if got != want:
            mismatches.append((bits.tolist(), got, want))
    assert ctx.fp32_bytes == footprint(s.model, s.space.plan(s.space.uniform(KEEP))).fp32_bytes
    assert not mismatches, f"cost model vs footprint (bits, cost, footprint): {mismatches}"


@pytest.mark.parametrize("scheme", [
    dict(symmetric=True, granularity="group", group_size=64, bits=BITS),
    dict(symmetric=True, granularity="group", group_size=16, bits=BITS),
    dict(symmetric=True, granularity="channel", group_size=None, bits=BITS),
    dict(symmetric=False, granularity="group", group_size=64, bits=(2, 3, 4, 8)),
    dict(symmetric=False, granularity="channel", group_size=None, bits=(2, 4, 8)),
], ids=["sym-g64", "sym-g16", "sym-channel", "asym-g64-no1bit", "asym-channel-no1bit"])
def test_plan_cost_equals_the_quantized_footprint(setup, scheme):
    s = Setup(**scheme, table=None if scheme["bits"] != BITS or not scheme["symmetric"]
              or scheme["granularity"] != "group" or scheme["group_size"] != 64 else setup.table)
    _check_footprints(s, seed=1, force_one_bit=True)


def test_plan_cost_equals_the_footprint_asymmetric_with_one_bit(setup):
    _check_footprints(Setup(symmetric=False, bits=BITS), seed=1, force_one_bit=True)


def test_per_tensor_scales_cannot_be_costed_and_are_refused(setup):
    space = SearchSpace.from_hierarchy(setup.hierarchy, BITS, granularity="tensor",
                                       group_size=None)
    with pytest.raises(SearchError, match="per-tensor"):
        space.cost_model(setup.model.workload(), "edge-npu")
