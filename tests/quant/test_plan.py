"""qslm.quant.plan: QuantSpec validation and cost, QuantPlan precedence, JSON round trip,
hwmodel compatibility, and the memory footprint (computed by hand for a tiny model)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from hwmodel import plan as hw_plan
from qslm.errors import FormatVersionError, PlanError
from qslm.models import SpikeGPT, SpikeGPTConfig
from qslm.quant import QuantPlan, QuantSpec, footprint, quantizable_modules

A = QuantSpec(4, group_size=32)
B = QuantSpec(8)
C = QuantSpec(3, symmetric=False)
D = QuantSpec(2, granularity="tensor")


@pytest.fixture(scope="module")
def spikegpt():
    torch.manual_seed(0)
    return SpikeGPT(SpikeGPTConfig(vocab_size=300, n_layer=2, n_embd=32))


# ------------------------------------------------------------------------------------------------
# QuantSpec
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, words", [
    pytest.param(dict(bits=0), "bits", id="bits-0-rejected"),
    pytest.param(dict(bits=9), "bits", id="bits-9-rejected"),
    pytest.param(dict(bits=True), "bits", id="bits-bool-rejected"),
    pytest.param(dict(bits=4.0), "bits", id="bits-float-rejected"),
    pytest.param(dict(bits=4, symmetric=1), "symmetric", id="symmetric-int-rejected"),
    pytest.param(dict(bits=4, granularity="row"), "granularity", id="bad-granularity"),
    pytest.param(dict(bits=4, granularity="group"), "group_size", id="group-needs-size"),
    pytest.param(dict(bits=4, group_size=0), "group_size", id="group-size-0"),
    pytest.param(dict(bits=4, granularity="channel", group_size=64), "group_size",
                 id="size-only-with-group"),
])
def test_spec_validation(kwargs, words):
    with pytest.raises(PlanError, match=words):
        QuantSpec(**kwargs)


def test_spec_defaults_and_cost():
    assert QuantSpec(4).granularity == "channel"
    assert QuantSpec(4, group_size=64).granularity == "group"
    assert QuantSpec(4, group_size=64).effective_bits() == 4.25
    assert QuantSpec(4, False, group_size=64).effective_bits() == 4.5  # + fp16 zero points
    assert QuantSpec(1, group_size=64).effective_bits() == 1.25  # binarization: z implied
    assert QuantSpec(4).effective_bits(in_features=128) == 4.125
    assert QuantSpec(4, granularity="tensor").effective_bits(8, 2) == 5.0
    with pytest.raises(PlanError, match="in_features"):
        QuantSpec(4).effective_bits()
    # (packed, scales, zero points) bytes of a (3, 10) weight
    assert QuantSpec(4, group_size=4).storage_bytes(3, 10) == (15, 18, 0)
    assert QuantSpec(3, False).storage_bytes(7, 5) == (14, 14, 14)
    assert QuantSpec(1).storage_bytes(7, 5) == (7, 14, 0)
    assert QuantSpec(2, False, "tensor").storage_bytes(7, 5) == (14, 2, 2)


@given(bits=st.integers(1, 8), sym=st.booleans(), g=st.sampled_from([8, 16, 32, 64, 128]),
       n=st.integers(1, 5), groups=st.integers(1, 4))
def test_effective_bits_matches_storage(bits, sym, g, n, groups):
    """For K a multiple of g (and of 8), bytes·8 / weights = b + 16/g (+ 16/g)."""
    spec = QuantSpec(bits, sym, group_size=g)
    k = g * groups
    assert 8 * sum(spec.storage_bytes(n, k)) / (n * k) == spec.effective_bits()
    assert QuantSpec.from_dict(spec.to_dict()) == spec


def test_spec_from_dict_names_the_problem():
    with pytest.raises(PlanError, match=r"where: unknown field\(s\) 'bitz'"):
        QuantSpec.from_dict({"bits": 4, "bitz": 2}, "where")
    with pytest.raises(PlanError, match="missing field 'bits'"):
        QuantSpec.from_dict({"symmetric": True})


# ------------------------------------------------------------------------------------------------
# QuantPlan lookup
# ------------------------------------------------------------------------------------------------


def test_precedence_exact_then_first_regex_then_default():
    plan = QuantPlan({
        "_default": A,
        r"re:blocks\.\d+\.att\..*": B,
        r"re:blocks\.0\..*": C,
        "blocks.0.att.key": D,
        "head": None,
    })
    assert plan.default == A and "_default" not in plan.entries
    assert plan.spec_for("blocks.0.att.key") == D  # exact beats every regex
    assert plan.spec_for("blocks.0.att.value") == B  # first matching regex, in insertion order
    assert plan.spec_for("blocks.0.ffn.key") == C
    assert plan.spec_for("blocks.1.ffn.key") == A  # default
    assert plan.spec_for("head") is None  # keep
    assert plan.spec_for("emb") == A
    reordered = QuantPlan({"_default": A, r"re:blocks\.0\..*": C, r"re:blocks\.\d+\.att\..*": B})
    assert reordered.spec_for("blocks.0.att.value") == C
    assert reordered != QuantPlan({"_default": A, r"re:blocks\.\d+\.att\..*": B,
                                   r"re:blocks\.0\..*": C})


def test_regex_is_a_full_match_and_no_default_keeps():
    plan = QuantPlan({"re:blocks": B, r"re:.*\.key": C})
    assert plan.spec_for("blocks.0.att.value") is None
    assert plan.spec_for("blocks.0.att.key") == C
    assert QuantPlan().spec_for("anything") is None
    assert QuantPlan.uniform(B).spec_for("x") == B


def test_resolve_and_strictness(spikegpt):
    names = list(quantizable_modules(spikegpt))
    assert names[0] == "emb" and names[-1] == "head" and len(names) == 1 + 2 * 7 + 1
    plan = QuantPlan({"_default": A, "head": None, r"re:.*\.ffn\..*": B})
    specs = plan.resolve(names)
    assert list(specs) == names
    assert specs["head"] is None and specs["blocks.1.ffn.value"] == B and specs["emb"] == A
    bad = QuantPlan({"blocks.0.att.kye": B})
    with pytest.raises(PlanError, match="'blocks.0.att.kye'"):
        bad.resolve(names)
    assert all(s is None for s in bad.resolve(names, strict=False).values())


@pytest.mark.parametrize("entries, words", [
    pytest.param({"re:blocks.(": B}, r"'re:blocks\.\(': bad regular expression", id="bad-regex"),
    pytest.param({"emb": 4}, "'emb'", id="int-value-rejected"),
    pytest.param({"": B}, "non-empty", id="empty-key"),
    pytest.param({"_default": B, "emb": {"bits": 4}}, "'emb'", id="dict-value-rejected"),
])
def test_plan_validation_names_the_key(entries, words):
    with pytest.raises(PlanError, match=words):
        QuantPlan(entries)


def test_plan_pickles():
    import pickle

    plan = QuantPlan({"_default": A, r"re:.*\.ffn\..*": C, "head": None})
    again = pickle.loads(pickle.dumps(plan))
    assert again == plan and again.spec_for("blocks.0.ffn.key") == C


def test_updated_keeps_order_and_overrides():
    plan = QuantPlan({"_default": A, "emb": B, "re:.*": C})
    new = plan.updated({"emb": None, "head": D})
    assert list(new.entries) == ["emb", "re:.*", "head"]
    assert new.spec_for("emb") is None and new.spec_for("head") == D and new.default == A
    assert plan.spec_for("emb") == B  # unchanged: plans are immutable


# ------------------------------------------------------------------------------------------------
# JSON
# ------------------------------------------------------------------------------------------------


def test_json_round_trip(tmp_path):
    plan = QuantPlan({"_default": A, r"re:blocks\.\d+\.ffn\..*": C, "emb": D, "head": None,
                      r"re:.*": B})
    path = plan.save(tmp_path / "plan.json")
    doc = json.loads(path.read_text())
    assert doc["format_version"] == 1 and doc["default"]["group_size"] == 32
    assert list(doc["modules"]) == [r"re:blocks\.\d+\.ffn\..*", "emb", "head", "re:.*"]
    again = QuantPlan.load(path)
    assert again == plan and hash(again) == hash(plan)
    assert list(again.entries) == list(plan.entries)
    plan.save(path)  # overwrite in place, atomically: no temporary files left behind
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]
    assert QuantPlan.load(path) == plan


@pytest.mark.parametrize("doc, exc, words", [
    pytest.param({"format_version": 2, "modules": {}}, FormatVersionError, "format_version",
                 id="version-2"),
    pytest.param({"modules": {}}, FormatVersionError, "format_version", id="no-version"),
    pytest.param({"format_version": 1, "modules": {"blocks.0.att.key": {"bits": 9}}}, PlanError,
                 r"plan key 'blocks\.0\.att\.key': bits", id="bad-bits-names-key"),
    pytest.param({"format_version": 1, "modules": {"emb": {"bits": 4, "group": 3}}}, PlanError,
                 r"'emb'.*'group'", id="unknown-field-names-key"),
    pytest.param({"format_version": 1, "default": {"bits": 0}}, PlanError, "'default'",
                 id="bad-default"),
    pytest.param({"format_version": 1, "modules": {"re:(": None}}, PlanError, r"'re:\('",
                 id="bad-regex"),
    pytest.param({"format_version": 1, "extra": 1}, PlanError, "'extra'", id="unknown-key"),
    pytest.param([1, 2], PlanError, "JSON object", id="not-an-object"),
])
def test_bad_json(tmp_path, doc, exc, words):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(exc, match=words):
        QuantPlan.load(path)


def test_unreadable_json(tmp_path):
    (tmp_path / "p.json").write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        QuantPlan.load(tmp_path / "p.json")
    with pytest.raises(PlanError, match="cannot read"):
        QuantPlan.load(tmp_path / "missing.json")


def test_hwmodel_reads_what_we_write(tmp_path, spikegpt):
    plan = QuantPlan({"_default": A, r"re:blocks\.\d+\.ffn\..*": C, "blocks.0.att.key": D,
                      "head": None, "emb": QuantSpec(1, group_size=16)})
    hw = hw_plan.read_plan_json(plan.save_hwmodel(tmp_path / "hw.json"))
    workload = spikegpt.workload()
    names = list(quantizable_modules(spikegpt))
    assert list(workload.module_names) == names
    for name, spec in plan.resolve(names).items():
        got = hw.spec_for(name)
        if spec is None:
            assert got is None
        else:
            assert (got.bits, got.group_size, got.symmetric) == (
                spec.bits, spec.group_size, spec.symmetric), name
    hw.resolve(workload)  # strict: every exact key names a workload module
    # The bytes hwmodel charges agree with ours (per-tensor aside: hwmodel has no such scale).
    fp = footprint(spikegpt, plan)
    for name, mf in fp.modules.items():
        spec = mf.spec
        if spec is None or spec.granularity == "tensor":
            continue
        n, k = mf.shape
        assert hw_plan.weight_bytes(n, k, spec.bits) == mf.packed_bytes
        assert hw_plan.scale_bytes(n, k, spec.bits, spec.to_hwmodel_dict()["group_size"],
                                   spec.symmetric) == mf.scale_bytes + mf.zero_point_bytes


# ------------------------------------------------------------------------------------------------
# Footprint
# ------------------------------------------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 5)  # 35 weights
        self.proj = nn.Linear(10, 3)  # 30 weights + 3 bias
        self.norm = nn.LayerNorm(5)  # 10
        self.half = nn.Linear(4, 2, bias=False).half()  # 8 weights stored in fp16


def test_footprint_by_hand():
    model = Tiny()
    plan = QuantPlan({"proj": QuantSpec(4, group_size=4), "emb": QuantSpec(3, symmetric=False)})
    fp = footprint(model, plan)
    # proj: 3 rows × ceil(10·4/8) = 15 B codes; 3 × ceil(10/4) = 9 fp16 scales = 18 B
    # emb: 7 rows × ceil(5·3/8) = 14 B codes; 7 scales + 7 zero points (fp16) = 14 + 14 B
    assert (fp.packed_weight_bytes, fp.scale_bytes, fp.zero_point_bytes) == (15 + 14, 18 + 14, 14)
    # kept: proj.bias 3·4 + norm 10·4 + half.weight 8·2 (its stored precision)
    assert fp.kept_bytes == 12 + 40 + 16
    assert fp.fp32_bytes == (35 + 30 + 3 + 10 + 8) * 4 == 344
    assert fp.total_bytes == 143
    assert fp.memory_reduction == pytest.approx(1 - 143 / 344)
    assert fp.modules["half"].spec is None and fp.modules["half"].packed_bytes == 16
    d = fp.to_dict()
    assert d["total_bytes"] == 143 and d["modules"]["proj"]["scale_bytes"] == 18
    # nothing quantized: the footprint is the stored model (fp16 part included)
    keep = footprint(model, QuantPlan())
    assert keep.total_bytes == 344 - 8 * 2 and keep.packed_weight_bytes == 0


def test_footprint_spikegpt_uniform(spikegpt):
    V, L, C = 300, 2, 32
    fp = footprint(spikegpt, QuantPlan.uniform(QuantSpec(4, group_size=32)))
    # per block: 5 matrices C×C, ffn.key 4C×C, ffn.value C×4C; plus emb V×C and head V×C
    shapes = [(V, C), (V, C)] + L * ([(C, C)] * 5 + [(4 * C, C), (C, 4 * C)])
    packed = sum(n * math.ceil(k * 4 / 8) for n, k in shapes)
    scales = sum(2 * n * math.ceil(k / 32) for n, k in shapes)
    n_params = SpikeGPTConfig(vocab_size=V, n_layer=L, n_embd=C).n_params()
    quantized = sum(n * k for n, k in shapes)
    assert (fp.packed_weight_bytes, fp.scale_bytes, fp.zero_point_bytes) == (packed, scales, 0)
    assert fp.kept_bytes == 4 * (n_params - quantized)
    assert fp.fp32_bytes == 4 * n_params
    assert 0.8 < fp.memory_reduction < 1 - 4.5 / 32  # 4.5 effective bits on most weights


def test_clip_round_trips_and_is_written_only_when_not_the_default():
    mse = QuantSpec(4, False, group_size=64, clip="mse")
    assert mse.to_dict()["clip"] == "mse" and "clip" not in QuantSpec(4).to_dict()
    assert QuantSpec.from_dict(mse.to_dict()) == mse
    assert QuantSpec.from_dict(QuantSpec(4).to_dict()).clip == "minmax"
    plan = QuantPlan({"emb": QuantSpec(1)}, mse)
    assert QuantPlan.from_json(plan.to_json()) == plan
    assert str(mse) == "w4ag64m"
