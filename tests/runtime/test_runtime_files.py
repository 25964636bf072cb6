"""Bad packed files: every defect gives a specific qslm error naming what is wrong, never a
crash or a silently wrong model."""

from __future__ import annotations

import pytest
import torch
from runtime_helpers import one_thread, read_file, rewrite, tiny_model

from qslm.errors import (
    ArchitectureError,
    FormatVersionError,
    PackedCodeError,
    PackedModelError,
    QslmError,
)
from qslm.quant import QuantPlan, QuantSpec, export_packed
from qslm.runtime import load_runtime

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# n_embd = 36 with 3-bit codes: 108 bits per row of att.* → 14 bytes, 4 padding bits per row.
PLAN = QuantPlan({"_default": QuantSpec(3, False, group_size=12),
                  "blocks.0.att.key": QuantSpec(1), "head": None})


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    with one_thread():
        model = tiny_model(seed=11, n_embd=36)
        return export_packed(model, PLAN,
                             tmp_path_factory.mktemp("good") / "model.qslm.safetensors")


def _bad(tmp_path, good, doc=None, tensors=None):
    return rewrite(good, tmp_path / "bad.qslm.safetensors", doc, tensors)


def test_good_file_loads_from_file_or_folder(good):
    rt = load_runtime(good)
    assert rt.source == good and rt.plan == PLAN
    assert rt.module_specs["blocks.0.att.key"] == QuantSpec(1) and "head" not in rt.module_specs
    assert load_runtime(good.parent).config == rt.config
    rt.generate([1, 2], 3)


def test_wrong_format_version(tmp_path, good):
    bad = _bad(tmp_path, good, doc=lambda d: d.update(format_version=2))
    with pytest.raises(FormatVersionError, match="format_version must be 1, got 2"):
        load_runtime(bad)


def test_wrong_config_format_version(tmp_path, good):
    bad = _bad(tmp_path, good, doc=lambda d: d["config"].update(format_version=7))
    with pytest.raises(FormatVersionError, match="config has format_version 7"):
        load_runtime(bad)


def test_truncated_file(tmp_path, good):
    data = good.read_bytes()
    bad = tmp_path / "cut.qslm.safetensors"
    bad.write_bytes(data[: len(data) - 1000])
    with pytest.raises(PackedModelError, match="truncated or corrupt"):
        load_runtime(bad)


def test_missing_file(tmp_path):
    with pytest.raises(PackedModelError, match="no such packed model file"):
        load_runtime(tmp_path / "nothing.qslm.safetensors")


def test_truncated_packed_array(tmp_path, good):
    key = "blocks.1.ffn.key.weight.packed"
    bad = _bad(tmp_path, good, tensors=lambda t: t.update({key: t[key][:, :-3].clone()}))
    with pytest.raises(PackedModelError, match=f"{key}.*expected torch.uint8"):
        load_runtime(bad)
    bad = _bad(tmp_path, good, tensors=lambda t: t.update({key: t[key][:-1].clone()}))
    with pytest.raises(PackedModelError, match=key):
        load_runtime(bad)


def test_missing_scales(tmp_path, good):
    key = "blocks.0.att.value.weight.scales"
    bad = _bad(tmp_path, good, tensors=lambda t: t.pop(key))
    with pytest.raises(PackedModelError, match=f"missing tensor '{key}'"):
        load_runtime(bad)


def test_plan_bits_disagree_with_packed_codes(tmp_path, good):
    # the plan says 2 bits, the codes were packed with 3 bits (row bytes of 3-bit codes)
    def plan_2bit(d):
        d["plan"]["default"]["bits"] = 2
    bad = _bad(tmp_path, good, doc=plan_2bit)
    with pytest.raises(PackedCodeError, match=r"packed as w3ag12 \(3 bits\) but the plan gives "
                                              r"it w2ag12 \(2 bits\)"):
        load_runtime(bad)

    # the module metadata claims 2 bits: the packed rows have the byte count of 3 bits
    def module_2bit(d):
        d["plan"]["default"]["bits"] = 2
        d["modules"]["blocks.0.att.value"]["spec"]["bits"] = 2
    bad = _bad(tmp_path, good, doc=module_2bit)
    with pytest.raises(PackedModelError, match=r"blocks.0.att.value.weight.packed.*\(36, 14\).*"
                                               r"expected torch.uint8 \(36, 9\)"):
        load_runtime(bad)


def test_codes_past_the_row_end(tmp_path, good):
    key = "blocks.0.att.output.weight.packed"

    def set_padding(t):
        p = t[key].clone()
        p[3, -1] |= 0xF0  # the 4 bits after the 36th 3-bit code
        t[key] = p
    with pytest.raises(PackedCodeError, match="'blocks.0.att.output'.*bits set past the last "
                                              "3-bit code"):
        load_runtime(_bad(tmp_path, good, tensors=set_padding))


@pytest.mark.parametrize("value, match", [(8.0, "zero point 8.0 is not an integer code of 3 "
                                                 r"bits \(0..7\)"),
                                          (2.5, "zero point 2.5"), (-1.0, "zero point -1.0")])
def test_zero_points_out_of_the_code_range(tmp_path, good, value, match):
    key = "blocks.1.att.key.weight.zero_points"

    def set_zp(t):
        z = t[key].clone()
        z[0, 1] = value
        t[key] = z
    with pytest.raises(PackedCodeError, match=match):
        load_runtime(_bad(tmp_path, good, tensors=set_zp))


@pytest.mark.parametrize("value", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_scales(tmp_path, good, value):
    key = "emb.weight.scales"

    def set_scale(t):
        s = t[key].clone()
        s[7, 0] = value
        t[key] = s
    with pytest.raises(PackedCodeError, match="'emb': scales must be finite and > 0"):
        load_runtime(_bad(tmp_path, good, tensors=set_scale))


def test_config_of_another_architecture(tmp_path, good):
    def encoder(d):
        d["config"] = {"format_version": 1, "arch": "spike-driven-encoder", "depth": 4,
                       "dim": 36}
    with pytest.raises(ArchitectureError, match="'spike-driven-encoder' model"):
        load_runtime(_bad(tmp_path, good, doc=encoder))

    def unknown_fields(d):
        d["config"]["num_heads"] = 4
    with pytest.raises(ArchitectureError, match="not a SpikeGPT config: unknown SpikeGPT config "
                                                "field.*num_heads"):
        load_runtime(_bad(tmp_path, good, doc=unknown_fields))

    with pytest.raises(ArchitectureError, match="stores no model config"):
        load_runtime(_bad(tmp_path, good, doc=lambda d: d.update(config=None)))


def test_config_with_another_shape(tmp_path, good):
    with pytest.raises(ArchitectureError, match=r"'emb' is packed with shape \[300, 36\], the "
                                                r"model's is \[300, 48\]"):
        load_runtime(_bad(tmp_path, good, doc=lambda d: d["config"].update(n_embd=48)))
    with pytest.raises(ArchitectureError, match=r"'blocks.2.att.key'"):
        load_runtime(_bad(tmp_path, good, doc=lambda d: d["config"].update(n_layer=3)))


def test_plan_of_another_architecture(tmp_path, good):
    def encoder_plan(d):
        d["plan"]["modules"] = {"encoder.layers.0.fc1": {"bits": 4, "symmetric": True,
                                                         "granularity": "channel",
                                                         "group_size": None}}
    with pytest.raises(ArchitectureError, match="plan is not for this SpikeGPT.*"
                                                "encoder.layers.0.fc1"):
        load_runtime(_bad(tmp_path, good, doc=encoder_plan))


def test_packed_module_the_model_lacks(tmp_path, good):
    def extra(d):
        d["modules"]["encoder.fc"] = d["modules"]["blocks.0.att.key"]
    def extra_t(t):
        for part in ("packed", "scales"):
            t[f"encoder.fc.weight.{part}"] = t[f"blocks.0.att.key.weight.{part}"].clone()
    with pytest.raises(ArchitectureError, match="'encoder.fc' are not quantizable modules"):
        load_runtime(_bad(tmp_path, good, doc=extra, tensors=extra_t))


def test_kind_mismatch(tmp_path, good):
    with pytest.raises(ArchitectureError, match="'emb' is packed as 'linear'"):
        load_runtime(_bad(tmp_path, good,
                          doc=lambda d: d["modules"]["emb"].update(kind="linear")))


def test_plan_keeps_a_packed_module(tmp_path, good):
    def keep(d):
        d["plan"]["modules"]["blocks.1.ffn.value"] = None
    with pytest.raises(PackedCodeError, match="keeps 'blocks.1.ffn.value' at full precision"):
        load_runtime(_bad(tmp_path, good, doc=keep))


def test_plan_quantizes_a_module_not_packed(tmp_path, good):
    def quantize_head(d):
        d["plan"]["modules"]["head"] = {"bits": 4, "symmetric": True, "granularity": "channel",
                                        "group_size": None}
    with pytest.raises(PackedModelError, match="quantizes 'head'.*no packed weight"):
        load_runtime(_bad(tmp_path, good, doc=quantize_head))


def test_missing_and_unexpected_plain_tensors(tmp_path, good):
    with pytest.raises(PackedModelError, match="missing tensor 'blocks.0.ln1.weight'"):
        load_runtime(_bad(tmp_path, good, tensors=lambda t: t.pop("blocks.0.ln1.weight")))
    with pytest.raises(PackedModelError, match="unexpected tensor.*'blocks.0.att.key.weight'"):
        load_runtime(_bad(tmp_path, good, tensors=lambda t: t.update(
            {"blocks.0.att.key.weight": torch.zeros(36, 36)})))
    with pytest.raises(PackedModelError, match=r"'ln_out.bias' has shape \[35\]"):
        load_runtime(_bad(tmp_path, good, tensors=lambda t: t.update(
            {"ln_out.bias": torch.zeros(35)})))


def test_every_error_is_a_qslm_value_error(tmp_path, good):
    _, doc = read_file(good)
    assert doc["format_version"] == 1
    for exc in (ArchitectureError, PackedCodeError, PackedModelError, FormatVersionError):
        assert issubclass(exc, QslmError) and issubclass(exc, ValueError)
    garbage = tmp_path / "garbage.qslm.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(PackedModelError):
        load_runtime(garbage)
