"""qslm.quant.apply and qslm.quant.export on a tiny SpikeGPT: exact restore, the packed file
round trip, and the Rust kernels on the exported weights against x @ fake_quant(W)ᵀ."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from qslm import kernels
from qslm.errors import (
    CheckpointError,
    FormatVersionError,
    PackedModelError,
    PlanError,
    QuantizationError,
)
from qslm.models import SpikeGPT, SpikeGPTConfig, save_safetensors
from qslm.quant import (
    QuantPlan,
    QuantSpec,
    apply_fake_quant,
    export_packed,
    fake_quantize,
    load_packed,
    quantizable_modules,
    quantize_model,
)
from qslm.quant.export import METADATA_KEY

# lowbit_matmul accumulates in float32 in its own order:
# |y − x·Wᵀ| ≤ MATMUL_RTOL · Σ|x|·|s|·(|q|+|z|)  (docs/kernels.md; the budget of tests/helpers.py).
MATMUL_RTOL = 1e-5
MATMUL_ATOL = 1e-30

# Every scheme once: signed/unsigned, 1–8 bits, per tensor/channel/group (partial last group:
# K = 32 or 128 with g = 12), and sign binarization; head kept in fp32.
MIXED_PLAN = QuantPlan({
    "_default": QuantSpec(4, group_size=16),
    "emb": QuantSpec(3, symmetric=False, group_size=12),
    "blocks.0.att.key": QuantSpec(1),
    "blocks.0.att.value": QuantSpec(1, symmetric=False),
    "blocks.0.att.receptance": QuantSpec(2, granularity="tensor"),
    "blocks.0.att.output": QuantSpec(5, symmetric=False, granularity="tensor"),
    "blocks.0.ffn.key": QuantSpec(6),
    "blocks.0.ffn.receptance": QuantSpec(7, symmetric=False),
    "blocks.0.ffn.value": QuantSpec(8, group_size=12),
    r"re:blocks\.1\.ffn\..*": QuantSpec(2, symmetric=False, group_size=32),
    "head": None,
})


def tiny_model(seed: int = 0) -> SpikeGPT:
    torch.manual_seed(seed)
    return SpikeGPT(SpikeGPTConfig(vocab_size=300, n_layer=2, n_embd=32)).eval()


def bits_of(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(model: nn.Module, snap: dict[str, torch.Tensor]) -> None:
    now = model.state_dict()
    assert list(now) == list(snap)
    for k, v in snap.items():
        assert torch.equal(bits_of(now[k]), bits_of(v)), k


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def idx():
    return torch.randint(0, 300, (2, 8), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    path = export_packed(model, MIXED_PLAN, tmp_path_factory.mktemp("packed"))
    return path, load_packed(path)


# ------------------------------------------------------------------------------------------------
# apply_fake_quant
# ------------------------------------------------------------------------------------------------


def test_apply_and_restore_exactly(model, idx):
    before = snapshot(model)
    logits = model(idx)
    params = {n: p for n, p in model.named_parameters()}
    handle = apply_fake_quant(model, MIXED_PLAN)
    try:
        assert handle.active and set(handle.specs) == set(quantizable_modules(model)) - {"head"}
        leaves = quantizable_modules(model)
        for name, module in leaves.items():
            spec = MIXED_PLAN.spec_for(name)
            w0 = before[f"{name}.weight"]
            if spec is None:
                assert torch.equal(module.weight, w0)
            else:
                assert torch.equal(module.weight, fake_quantize(w0, spec)), name
                assert not torch.equal(module.weight, w0)
        # only the planned weights changed; Parameter objects are the same
        assert all(p is params[n] for n, p in model.named_parameters())
        for k, v in model.state_dict().items():
            if not (k.endswith(".weight") and k[:-7] in handle.specs):
                assert torch.equal(v, before[k]), k
        assert not torch.equal(model(idx), logits)
    finally:
        handle.restore()
    assert not handle.active
    assert_same_state(model, before)
    assert torch.equal(model(idx), logits)
    handle.restore()  # idempotent
    assert_same_state(model, before)


def test_context_manager_restores_on_error(model):
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"), apply_fake_quant(model, MIXED_PLAN):
        raise RuntimeError("boom")
    assert_same_state(model, before)


def test_double_apply_is_refused(model):
    before = snapshot(model)
    with apply_fake_quant(model, QuantPlan.uniform(QuantSpec(8))):
        with pytest.raises(QuantizationError, match="already applied"):
            apply_fake_quant(model, MIXED_PLAN)
    assert_same_state(model, before)
    with apply_fake_quant(model, MIXED_PLAN):  # allowed again after restore
        pass
    assert_same_state(model, before)


def test_bad_plan_leaves_model_untouched(model):
    before = snapshot(model)
    with pytest.raises(PlanError, match="'blocks.9.att.key'"):
        apply_fake_quant(model, QuantPlan({"blocks.9.att.key": QuantSpec(4)}))
    assert_same_state(model, before)
    with apply_fake_quant(model, QuantPlan({"blocks.9.att.key": QuantSpec(4)}), strict=False) as h:
        assert h.specs == {}
    assert_same_state(model, before)


def test_embedding_is_quantized_per_token_row(model):
    qw = quantize_model(model, QuantPlan({"emb": QuantSpec(4)}))["emb"]
    assert qw.shape == (300, 32) and qw.scales.shape == (300, 1)  # one scale per token
    w = model.emb.weight.detach()
    assert torch.allclose(qw.scales[:, 0], w.abs().amax(1) / 7, rtol=2**-10)


def test_model_without_hierarchy_uses_linear_and_embedding_leaves():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Embedding(11, 6), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 4))
    assert list(quantizable_modules(model)) == ["0", "1", "3"]
    before = snapshot(model)
    with apply_fake_quant(model, QuantPlan({"_default": QuantSpec(2), "3": None})) as h:
        assert sorted(h.specs) == ["0", "1"]
        assert torch.equal(model[3].weight, before["3.weight"])
        assert torch.equal(model[1].bias, before["1.bias"])
        assert not torch.equal(model[1].weight, before["1.weight"])
    assert_same_state(model, before)


# ------------------------------------------------------------------------------------------------
# export_packed / load_packed
# ------------------------------------------------------------------------------------------------


def test_export_layout_and_metadata(model, exported):
    path, packed = exported
    assert path.name == "model.qslm.safetensors"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # atomic: no temporary left
    assert packed.plan == MIXED_PLAN and packed.config == model.config.to_dict()
    assert set(packed.weights) == set(quantizable_modules(model)) - {"head"}
    emb = packed.weights["emb"]
    assert emb.kind == "embedding" and packed.weights["blocks.0.ffn.key"].kind == "linear"
    assert emb.packed.dtype == torch.uint8 and emb.packed.shape == (300, kernels.row_bytes(32, 3))
    assert emb.scales.dtype == torch.float16 and emb.scales.shape == (300, 3)  # ceil(32/12)
    assert emb.zero_points is not None and emb.zero_points.dtype == torch.float16
    assert packed.weights["blocks.0.att.key"].zero_points is None  # binarization: z implied
    assert packed.weights["blocks.0.att.output"].scales.shape == (1, 1)  # per tensor
    kept = set(model.state_dict()) - {f"{n}.weight" for n in packed.weights}
    assert set(packed.tensors) == kept and "head.weight" in kept
    assert all(t.dtype == torch.float32 for t in packed.tensors.values())
    with safe_open(str(path), framework="pt") as f:
        doc = json.loads(f.metadata()[METADATA_KEY])
    assert doc["format_version"] == 1 and doc["kept_dtype"] == "float32"


def test_load_gives_identical_codes_and_scales(model, exported):
    path, packed = exported
    qws = quantize_model(model, MIXED_PLAN)
    again = load_packed(path)
    for name, qw in qws.items():
        pw = packed.weights[name]
        assert torch.equal(pw.codes(), qw.codes), name
        assert torch.equal(again.weights[name].codes(), qw.codes), name
        assert torch.equal(pw.scales.float(), qw.scales)
        if qw.spec.stores_zero_points:
            assert torch.equal(pw.zero_points.float(), qw.zero_points)
        assert torch.equal(bits_of(pw.dequantize()), bits_of(qw.dequantize())), name


def test_rebuilt_model_equals_fake_quant_model(model, exported, idx):
    _, packed = exported
    rebuilt = packed.build_model()
    with apply_fake_quant(model, MIXED_PLAN):
        fq_state = snapshot(model)
        logits = model(idx)
    assert_same_state(rebuilt, fq_state)
    assert torch.equal(rebuilt(idx), logits)


def test_lowbit_matmul_on_exported_weights_equals_fake_quant(model, exported):
    """The real proof that export and fake-quant agree: the kernels, fed the packed file, compute
    x @ fake_quant(W)ᵀ within the kernels' float32 accumulation budget."""
    _, packed = exported
    rng = np.random.default_rng(7)
    leaves = quantizable_modules(model)
    for name, pw in packed.weights.items():
        w = leaves[name].weight.detach()
        fq = fake_quantize(w, pw.spec).double()
        x = rng.standard_normal((5, w.shape[1])).astype(np.float32)
        packed_codes, scales, bits, g, zp = pw.kernel_args()
        y = kernels.lowbit_matmul(x, packed_codes, scales, bits, g, zp)
        expected = torch.from_numpy(x).double() @ fq.T
        qw = pw.quantized()
        z = 0 if zp is None else torch.from_numpy(zp).double()
        cols = torch.arange(w.shape[1]) // g
        mag = torch.from_numpy(scales).double()[:, cols].abs() * (
            qw.codes.double().abs() + (z[:, cols].abs() if zp is not None else 0))
        bound = torch.from_numpy(np.abs(x)).double() @ mag.T
        err = (torch.from_numpy(y).double() - expected).abs()
        assert torch.all(err <= MATMUL_RTOL * bound + MATMUL_ATOL), (name, float(err.max()))


def test_export_fp16_kept_tensors(model, tmp_path):
    path = export_packed(model, QuantPlan({"emb": QuantSpec(8)}), tmp_path / "m.qslm.safetensors",
                         kept_dtype=torch.float16)
    packed = load_packed(path)
    assert packed.tensors["head.weight"].dtype == torch.float16
    assert list(packed.weights) == ["emb"]
    rebuilt = packed.build_model()
    assert torch.equal(rebuilt.head.weight, model.head.weight.half().float())
    with pytest.raises(QuantizationError, match="kept_dtype"):
        export_packed(model, QuantPlan(), tmp_path / "x.safetensors", kept_dtype=torch.int8)


def test_export_without_config_needs_a_factory(tmp_path):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(9, 4), nn.Linear(4, 2))
    path = export_packed(model, QuantPlan.uniform(QuantSpec(3, symmetric=False, group_size=4)),
                         tmp_path / "seq.qslm.safetensors")
    packed = load_packed(path)
    assert packed.config is None
    with pytest.raises(PackedModelError, match="factory"):
        packed.build_model()
    rebuilt = packed.build_model(lambda cfg: nn.Sequential(nn.Linear(9, 4), nn.Linear(4, 2)))
    with apply_fake_quant(model, packed.plan):
        for a, b in zip(model.state_dict().values(), rebuilt.state_dict().values()):
            assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------
# Broken files
# ------------------------------------------------------------------------------------------------


def _rewrite(src, dst, *, meta_update=None, drop=None):
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    if meta_update:
        meta.update(meta_update(meta))
    if drop:
        tensors.pop(drop)
    save_file(tensors, str(dst), metadata=meta)
    return dst


@pytest.mark.parametrize("keep", [8, 0.5, 0.99], ids=["header-only", "half", "last-bytes-cut"])
def test_truncated_file(exported, tmp_path, keep):
    data = exported[0].read_bytes()
    cut = tmp_path / "cut.qslm.safetensors"
    cut.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    with pytest.raises(PackedModelError, match="truncated or corrupt"):
        load_packed(cut)


def test_wrong_format_version(exported, tmp_path):
    def bump(meta):
        doc = json.loads(meta[METADATA_KEY])
        doc["format_version"] = 2
        return {METADATA_KEY: json.dumps(doc)}

    bad = _rewrite(exported[0], tmp_path / "v2.qslm.safetensors", meta_update=bump)
    with pytest.raises(FormatVersionError, match="format_version must be 1, got 2"):
        load_packed(bad)


def test_missing_tensor_names_the_key(exported, tmp_path):
    bad = _rewrite(exported[0], tmp_path / "m.qslm.safetensors", drop="emb.weight.zero_points")
    with pytest.raises(PackedModelError, match="'emb.weight.zero_points'"):
        load_packed(bad)


def test_not_a_packed_model(model, tmp_path):
    plain = save_safetensors(model, tmp_path / "model.safetensors")
    with pytest.raises(PackedModelError, match="not a qslm packed model"):
        load_packed(plain)
    with pytest.raises(PackedModelError, match="no such"):
        load_packed(tmp_path / "nothing.safetensors")
    assert issubclass(PackedModelError, CheckpointError)
