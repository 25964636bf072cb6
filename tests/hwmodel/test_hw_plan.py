"""Plans: mappings, regex keys, the JSON file, storage of packed weights and scales."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hwmodel import ModuleSpec, Plan, PlanError, as_plan, read_plan_json, spikegpt_workload
from hwmodel.plan import scale_bytes, weight_bytes


def test_storage_formulas() -> None:
    # (N, K) = (3, 10) at 3 bits: each row 30 bits → 4 bytes (rows start on a byte boundary)
    assert weight_bytes(3, 10, 3) == 12
    assert weight_bytes(3, 10, 0) == weight_bytes(3, 10, 32) == 120  # fp32
    assert scale_bytes(3, 10, 4, None, True) == 3 * 2  # one fp16 scale per row
    assert scale_bytes(3, 10, 4, 4, True) == 3 * 3 * 2  # ceil(10/4) = 3 groups per row
    assert scale_bytes(3, 10, 4, 4, False) == 3 * 3 * 4  # + fp16 zero points
    assert scale_bytes(3, 10, 0, 4, False) == 0


def test_lookup_order_exact_then_regex_then_default() -> None:
    p = Plan.from_bits({"head": None, r"re:blocks\.\d+\.ffn\..*": 2, "blocks.0.ffn.key": 8},
                       default=4)
    assert p.spec_for("head") is None
    assert p.spec_for("blocks.0.ffn.key") == ModuleSpec(8)
    assert p.spec_for("blocks.3.ffn.value") == ModuleSpec(2)
    assert p.spec_for("blocks.3.att.key") == ModuleSpec(4)
    w = spikegpt_workload(1, 4, 6)
    assert p.bits_vector(w).tolist() == [4, 4, 4, 4, 4, 8, 2, 2, 0]


def test_unknown_modules_are_an_error() -> None:
    w = spikegpt_workload(1, 4, 6)
    with pytest.raises(PlanError, match=r"plan names 1 module\(s\) not in workload.*blocks\.9"):
        Plan.from_bits({"blocks.9.att.key": 4}).resolve(w)
    assert Plan.from_bits({"blocks.9.att.key": 4}).bits_vector(w, strict=False).tolist() == [0] * 9


def test_as_plan_accepts_the_simple_forms(tmp_path) -> None:
    w = spikegpt_workload(1, 4, 6)
    assert as_plan(3).bits_vector(w).tolist() == [3] * 9
    assert as_plan(None).bits_vector(w).tolist() == [0] * 9
    assert as_plan({"head": 8}, default=2).bits_vector(w).tolist() == [2] * 8 + [8]
    path = tmp_path / "plan.json"
    plan = Plan({"head": None, "re:blocks.*": ModuleSpec(3, 32, False)}, ModuleSpec(5))
    path.write_text(json.dumps(plan.to_dict()))
    back = as_plan(str(path))
    assert back == plan
    assert back.bits_vector(w).dtype == np.int16


def _write(tmp_path, doc) -> str:
    p = tmp_path / "plan.json"
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(p)


@pytest.mark.parametrize(("doc", "match"), [
    pytest.param({"format_version": 2, "modules": {}}, "format_version must be 1", id="version"),
    pytest.param({"format_version": 1, "modules": {"a": {"bits": 17}}},
                 r"modules\['a'\]: bits must be an integer in 1\.\.16", id="bits-17-rejected"),
    pytest.param({"format_version": 1, "modules": {"a": {"bits": 4, "groups": 2}}},
                 r"modules\['a'\]: unknown key\(s\) groups", id="unknown-spec-key"),
    pytest.param({"format_version": 1, "modules": {"a": {"group_size": 2}}},
                 r"modules\['a'\]: missing 'bits'", id="missing-bits"),
    pytest.param({"format_version": 1, "default": {"bits": 4, "group_size": 0}},
                 r"default: group_size must be a positive integer", id="group-size-0"),
    pytest.param({"format_version": 1, "modules": {"re:(": None}}, "bad regular expression",
                 id="bad-regex"),
    pytest.param({"format_version": 1, "extra": 1}, r"unknown key\(s\) extra", id="extra-key"),
    pytest.param("{not json", "not valid JSON", id="not-json"),
])
def test_bad_plan_files(tmp_path, doc, match: str) -> None:
    with pytest.raises(PlanError, match=match):
        read_plan_json(_write(tmp_path, doc))


def test_missing_plan_file(tmp_path) -> None:
    with pytest.raises(PlanError, match="cannot read plan"):
        read_plan_json(tmp_path / "nope.json")


def test_qslm_plan_files_are_read(tmp_path) -> None:
    """qslm's QuantPlan JSON names the granularity and the range choice; the cost model reads the
    group size and ignores 'clip' (it changes no byte)."""
    doc = {"format_version": 1,
           "default": {"bits": 4, "symmetric": False, "granularity": "group", "group_size": 64,
                       "clip": "mse"},
           "modules": {"emb": {"bits": 1, "symmetric": True, "granularity": "group",
                               "group_size": 64},
                       "head": {"bits": 8, "symmetric": True, "granularity": "channel",
                                "group_size": None},
                       "blocks.0.att.key": None}}
    p = read_plan_json(_write(tmp_path, doc))
    assert p.spec_for("emb") == ModuleSpec(1, 64, True)
    assert p.spec_for("head") == ModuleSpec(8, None, True)
    assert p.spec_for("blocks.1.ffn.key") == ModuleSpec(4, 64, False)
    assert p.spec_for("blocks.0.att.key") is None


@pytest.mark.parametrize(("spec", "match"), [
    ({"bits": 4, "granularity": "rows"}, "granularity must be tensor, channel or group"),
    ({"bits": 4, "granularity": "channel", "group_size": 64}, "only used with granularity"),
    ({"bits": 4, "granularity": "group"}, "needs a group_size"),
])
def test_inconsistent_qslm_granularity_is_rejected(tmp_path, spec, match: str) -> None:
    with pytest.raises(PlanError, match=match):
        read_plan_json(_write(tmp_path, {"format_version": 1, "modules": {"a": spec}}))


def test_symmetric_bits_are_costed_without_zero_points() -> None:
    from hwmodel import CostModel

    wl = spikegpt_workload(2, 64, 256)
    asym = CostModel(wl, "edge-npu", group_size=32, symmetric=False)
    mixed = CostModel(wl, "edge-npu", group_size=32, symmetric=False, symmetric_bits=(1,))
    sym = CostModel(wl, "edge-npu", group_size=32, symmetric=True)
    n = asym.n_modules
    for bits in (1, 4):
        B = np.full((1, n), bits)
        got = mixed.score(B)["scale_bytes"][0]
        want = (sym if bits == 1 else asym).score(B)["scale_bytes"][0]
        assert got == want
    assert asym.score(np.ones((1, n), dtype=int))["scale_bytes"][0] > \
        mixed.score(np.ones((1, n), dtype=int))["scale_bytes"][0]
