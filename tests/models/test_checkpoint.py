"""Checkpoints: the released .pth layout, safetensors with the config, and every rejection."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from qslm.errors import (
    CheckpointError,
    CheckpointShapeError,
    ConfigError,
    MissingKeyError,
    QslmError,
    ShapeError,
    UnexpectedKeyError,
)
from qslm.models import SpikeGPT, SpikeGPTConfig, load_spikegpt, save_safetensors

V, L, C = 30, 3, 16


def random_model(seed: int = 0, **kw) -> SpikeGPT:
    torch.manual_seed(seed)
    return SpikeGPT(SpikeGPTConfig(vocab_size=V, n_layer=L, n_embd=C, **kw)).eval()


@pytest.fixture
def released_pth(tmp_path):
    """A random model written as the released checkpoint is: torch.save(state_dict)."""
    model = random_model()
    path = tmp_path / "SpikeGPT-tiny.pth"
    torch.save(model.state_dict(), path)
    return model, path


IDX = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(0))


def test_loads_the_released_layout_and_infers_the_config(released_pth) -> None:
    model, path = released_pth
    loaded = load_spikegpt(path)
    assert loaded.config == SpikeGPTConfig(vocab_size=V, n_layer=L, n_embd=C)
    assert not loaded.training
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    with torch.no_grad():
        assert torch.equal(loaded(IDX), model(IDX))


def test_switches_reach_the_config(released_pth) -> None:
    _, path = released_pth
    m = load_spikegpt(path, binary_embedding=False, rescale_every=6, ctx_len=256)
    assert (m.config.binary_embedding, m.config.rescale_every, m.config.ctx_len) == (False, 6, 256)
    with pytest.raises(ConfigError, match="n_layer"):
        load_spikegpt(path, n_layer=4)
    with pytest.raises(ConfigError, match="rescale_every"):
        load_spikegpt(path, rescale_every=-6)


def test_language_model_checkpoint_loads_as_a_classifier(released_pth) -> None:
    model, path = released_pth
    cls = load_spikegpt(path, num_classes=2)
    sd = cls.state_dict()
    assert "head.weight" not in sd and sd["classify_head.weight"].shape == (2, C)
    key = "blocks.2.ffn.value.weight"
    assert torch.equal(sd[key], model.state_dict()[key])
    assert cls(IDX).shape == (2, 2)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 0.0), (torch.float16, 1e-3)])
def test_safetensors_round_trip_restores_weights_and_config(tmp_path, dtype, atol) -> None:
    model = random_model(binary_embedding=False, rescale_every=2)
    path = save_safetensors(model, tmp_path / "m.safetensors", dtype=dtype,
                            metadata={"source": "test"})
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left
    loaded = load_spikegpt(path)
    assert loaded.config == model.config  # switches restored from the metadata
    ref = model.state_dict()
    for k, v in loaded.state_dict().items():
        assert v.dtype == torch.float32
        assert (v - ref[k]).abs().max() <= atol * max(1.0, ref[k].abs().max().item()), k
        if v.ndim != 2:
            assert torch.equal(v, ref[k]), k  # vectors are kept in float32
    if dtype == torch.float32:
        with torch.no_grad():
            assert torch.equal(loaded(IDX), model(IDX))
    override = load_spikegpt(path, rescale_every=0)
    assert override.config.rescale_every == 0 and override.config.binary_embedding is False


def test_safetensors_without_metadata_and_classifier(tmp_path) -> None:
    model = random_model(num_classes=3)
    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = load_spikegpt(path)
    assert loaded.config.num_classes == 3 and loaded.config.binary_embedding is True
    with torch.no_grad():
        assert torch.equal(loaded(IDX), model(IDX))


def test_save_overwrites_atomically(tmp_path) -> None:
    path = tmp_path / "m.safetensors"
    save_safetensors(random_model(seed=1), path)
    save_safetensors(random_model(seed=2), path)
    assert torch.equal(load_spikegpt(path).emb.weight,
                       random_model(seed=2).emb.weight.half().float())
    assert len(list(tmp_path.iterdir())) == 1


# ---- rejections: each a specific error whose message names the problem ----------------------

def _state_dict():
    return random_model().state_dict()


def _write_pth(tmp_path, obj, name="bad.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _truncated_pth(tmp_path):
    path = _write_pth(tmp_path, _state_dict())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _truncated_safetensors(tmp_path):
    path = save_safetensors(random_model(), tmp_path / "bad.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    return path


def _text_file(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("this is not a checkpoint\n")
    return path


def _wrong_shape(tmp_path):
    sd = _state_dict()
    sd["blocks.1.att.key.weight"] = torch.zeros(C, C + 1)
    return _write_pth(tmp_path, sd)


def _missing(tmp_path):
    sd = _state_dict()
    del sd["blocks.2.ffn.receptance.weight"]
    return _write_pth(tmp_path, sd)


def _unexpected(tmp_path):
    sd = _state_dict()
    sd["blocks.0.att.head_q.weight"] = torch.zeros(4, C)
    return _write_pth(tmp_path, sd)


def _non_tensor_value(tmp_path):
    sd = dict(_state_dict())
    sd["step"] = 1000
    return _write_pth(tmp_path, sd)


def _pickled_object(tmp_path):
    path = tmp_path / "obj.pth"
    path.write_bytes(pickle.dumps(pytest.param, protocol=2))  # weights_only refuses a global
    return path


def _no_emb(tmp_path):
    sd = _state_dict()
    del sd["emb.weight"]
    return _write_pth(tmp_path, sd)


def _bad_metadata(tmp_path):
    path = tmp_path / "meta.safetensors"
    sd = {k: v.contiguous() for k, v in _state_dict().items()}
    save_file(sd, str(path), metadata={"qslm_config": json.dumps({"n_layer": 3})})
    return path


def _metadata_disagrees(tmp_path):
    path = tmp_path / "meta.safetensors"
    sd = {k: v.contiguous() for k, v in _state_dict().items()}
    cfg = SpikeGPTConfig(vocab_size=V, n_layer=L + 1, n_embd=C).to_dict()
    save_file(sd, str(path), metadata={"qslm_config": json.dumps(cfg)})
    return path


@pytest.mark.parametrize("make, error, match", [
    pytest.param(_truncated_pth, CheckpointError, "truncated or corrupt torch.save zip",
                 id="truncated-pth"),
    pytest.param(_truncated_safetensors, CheckpointError, "not a readable safetensors",
                 id="truncated-safetensors"),
    pytest.param(_text_file, CheckpointError, "not a torch.save file", id="text-file"),
    pytest.param(lambda p: _write_pth(p, [1, 2, 3]), CheckpointError, "got a list",
                 id="pickled-list"),
    pytest.param(_pickled_object, CheckpointError, r"Python object \(_pytest.mark.param\)",
                 id="pickled-object"),
    pytest.param(_non_tensor_value, CheckpointError, "'step' is of type int",
                 id="non-tensor-entry"),
    pytest.param(lambda p: p / "absent.pth", CheckpointError, "no such checkpoint file",
                 id="no-file"),
    pytest.param(_wrong_shape, CheckpointShapeError,
                 r"'blocks\.1\.att\.key\.weight' has shape \(16, 17\), expected \(16, 16\)",
                 id="wrong-shape"),
    pytest.param(_missing, MissingKeyError,
                 r"missing key 'blocks\.2\.ffn\.receptance\.weight' \(shape \(16, 16\)\)",
                 id="missing-key"),
    pytest.param(_unexpected, UnexpectedKeyError, r"unexpected key 'blocks\.0\.att\.head_q",
                 id="unexpected-key"),
    pytest.param(_no_emb, MissingKeyError, "'emb.weight'", id="no-embedding"),
    pytest.param(_bad_metadata, CheckpointError, "qslm_config", id="bad-metadata"),
    pytest.param(_metadata_disagrees, CheckpointError, "n_layer=4 but the tensors give 3",
                 id="metadata-disagrees"),
])
def test_rejects_bad_checkpoints(tmp_path, make, error, match) -> None:
    path = make(tmp_path)
    with pytest.raises(error, match=match) as info:
        load_spikegpt(path)
    assert isinstance(info.value, QslmError)
    assert str(path) in str(info.value)  # the message names the file
    assert info.value.__cause__ is None or isinstance(info.value.__cause__, QslmError)


def test_shape_error_is_also_a_shape_error(tmp_path) -> None:
    with pytest.raises(ShapeError):
        load_spikegpt(_wrong_shape(tmp_path))
