"""python -m qslm.train for the spike-driven encoder (recipe family "sdt"): a tiny recipe trains,
resumes bit for bit, exports its folded fp16 bundle, and loads back by path; bad recipes fail
with a clear message. Training runs on synthetic sentences (no data needed); exporting needs
QSLM_DATA_DIR (it evaluates on SST-2 dev and records the data checksums)."""

from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path

import pytest
import torch

from qslm import train as T
from qslm import zoo
from qslm.errors import CheckpointError, QslmError
from qslm.models import (SDTConfig, SpikeDrivenEncoder, SpikeGPT, load, load_checkpoint,
                         load_spikegpt, save_safetensors)
from qslm.models.sdt import MaskedBatchNorm

needs_data = pytest.mark.skipif(not os.environ.get("QSLM_DATA_DIR"), reason="needs QSLM_DATA_DIR (CI sets it)")

LM = "spikegpt-mini-wt2"  # the bundled LM whose tokenizer (and embedding) the recipes use
TINY = dict(task="sst2", family="sdt", init=LM, emb_init="pca", seed=3, n_layer=1, n_embd=16,
            mlp_ratio=2, t_sim=2, ctx_len=24, batch_size=8, lr=5e-3, min_lr=1e-4, warmup_steps=2,
            max_steps=12, weight_decay=0.01, grad_clip=1.0, dropout=0.0, label_smoothing=0.1,
            token_dropout=0.1, bucket_batches=4, eval_every=6, eval_tokens=0, ckpt_every=3)
POS, NEG = range(100, 120), range(200, 220)  # sentiment tokens of the synthetic task


def tiny(**kw) -> T.Recipe:
    return T.Recipe(name="tiny-sdt", **{**TINY, **kw})


def synthetic(n: int, seed: int) -> list[tuple[list[int], int]]:
    """Sentences of 2…20 filler tokens with one sentiment token; label = its polarity."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.randrange(2)
        words = [rng.randrange(300, 4000) for _ in range(rng.randrange(2, 21))]
        words.insert(rng.randrange(len(words) + 1), rng.choice(POS if label else NEG))
        out.append((words, label))
    return out


SYNTH = {"train": synthetic(200, 0), "dev": synthetic(40, 1)}


@pytest.fixture
def synthetic_data(monkeypatch):
    monkeypatch.setattr(T, "sst2_examples", lambda tok, data_dir: SYNTH)


def _history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in open(run_dir / "metrics.jsonl")]


def _ckpt(run_dir: Path) -> dict:
    return torch.load(run_dir / "ckpt.pt", map_location="cpu", weights_only=False)


# ---- training ----------------------------------------------------------------------------------

def test_tiny_recipe_trains_and_resumes_bit_for_bit(synthetic_data, tmp_path):
    r = tiny()
    straight = tmp_path / "straight"
    T.train(r, straight, None, fresh=False, max_steps=None, progress=False)
    stopped = tmp_path / "stopped"
    T.train(r, stopped, None, fresh=False, max_steps=5, progress=False)  # "killed" after step 5
    assert _ckpt(stopped)["step"] == 5
    T.train(r, stopped, None, fresh=False, max_steps=None, progress=False)  # resumes at step 5
    a, b = _ckpt(straight), _ckpt(stopped)
    assert a["step"] == b["step"] == 12
    assert a["model_config"]["family"] == "spike-driven-encoder"
    assert not a["model_config"]["norms_folded"]  # trained with BatchNorms; folded at export
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    h = _history(straight)
    assert [row["step"] for row in h if "dev_accuracy" in row] == [6, 12]
    assert all(0.0 <= row["dev_accuracy"] <= 1.0 for row in h if "dev_accuracy" in row)
    # The same losses and dev accuracies (the stopped run also evaluated where it stopped).
    hb = {row["step"]: row for row in _history(stopped)}
    for row in h:
        assert hb[row["step"]]["loss"] == row["loss"], row["step"]
        assert hb[row["step"]].get("dev_accuracy") == row.get("dev_accuracy"), row["step"]
    assert (straight / "tokenizer.json").read_bytes() == \
        (zoo.bundled_dir(LM) / "tokenizer.json").read_bytes()


def test_model_is_built_from_the_recipe_with_the_lm_embedding(tmp_path):
    r = tiny()
    init = T.resolve_init(LM)
    model = T.build_sdt(r, 4096, init["weights"])
    c = model.config
    assert isinstance(model, SpikeDrivenEncoder) and model.training
    assert (c.vocab_size, c.n_layer, c.n_embd, c.mlp_ratio, c.t_sim, c.ctx_len, c.num_classes, c.pad_id) == \
        (4096, 1, 16, 2, 2, 24, 2, 1)
    want = T.pca_embedding(T.lm_embedding(init["weights"]), 16)
    assert torch.equal(model.emb.weight.detach(), want)
    # Same seed, same model; emb_init "" keeps the N(0, 1) initialisation.
    again = T.build_sdt(r, 4096, init["weights"])
    assert all(torch.equal(x, y) for x, y in zip(model.state_dict().values(), again.state_dict().values()))
    plain = T.build_sdt(dataclasses.replace(r, emb_init=""), 4096, init["weights"])
    assert not torch.equal(plain.emb.weight, model.emb.weight)


def test_zero_init_residual_starts_as_a_bag_of_embeddings():
    """With the branches' last γ at 0 the untrained encoder is emb + pos, pooled, then the head."""
    r = tiny(zero_init_residual=True, n_layer=2)
    model = T.build_sdt(r, 4096, T.resolve_init(LM)["weights"]).eval()
    for block in model.blocks:
        assert not block.attn.o_norm.weight.any() and not block.mlp.fc2_norm.weight.any()
    ids = torch.randint(2, 4096, (3, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        x = model.emb(ids) + model.pos((mask.cumsum(1) - 1).clamp(min=0))
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        want = model.head(model.head_norm(pooled))
        assert torch.allclose(model(ids, attention_mask=mask), want, atol=1e-5)
    plain = T.build_sdt(dataclasses.replace(r, zero_init_residual=False), 4096,
                        T.resolve_init(LM)["weights"])
    assert all(bool((b.attn.o_norm.weight == 1).all()) for b in plain.blocks)


def test_pca_embedding_is_the_principal_subspace_at_unit_rms():
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 10, generator=g, dtype=torch.float64)
    emb = torch.randn(50, 3, generator=g, dtype=torch.float64) @ basis  # rank 3, width 10
    z = T.pca_embedding(emb, 3)
    assert z.shape == (50, 3) and z.dtype == torch.float32
    assert z.pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-5)
    # A rank-3 matrix loses nothing: pairwise distances are kept up to the global scale.
    d_emb, d_z = torch.cdist(emb, emb), torch.cdist(z.double(), z.double())
    scale = d_z.sum() / d_emb.sum()
    assert torch.allclose(d_z, scale * d_emb, atol=1e-4)
    assert torch.equal(T.pca_embedding(emb, 3), z)  # deterministic, signs fixed
    assert torch.equal(T.pca_embedding(-emb, 3), z)  # sign convention, not the data's
    with pytest.raises(QslmError, match="n_embd"):
        T.pca_embedding(emb, 11)


def test_bucketed_batches_cover_each_example_once_per_epoch_and_drop_tokens():
    train = synthetic(64, 2)  # 64 = 2 chunks of 4 batches of 8: one epoch
    r = tiny(ctx_len=64)
    seen = []
    for step in range(8):
        ids, mask, labels = T.sst2_batch(step, train, dataclasses.replace(r, token_dropout=0.0))
        for row, m in zip(ids.tolist(), mask.tolist()):
            seen.append(tuple(t for t, k in zip(row, m) if k))
    assert sorted(seen) == sorted(tuple(e[0]) for e in train)
    # A pure function of (seed, step); token dropout keeps at least one token per sentence.
    a, b = T.sst2_batch(5, train, r), T.sst2_batch(5, train, r)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert int(a[1].sum()) < int(T.sst2_batch(5, train, dataclasses.replace(r, token_dropout=0.0))[1].sum())
    heavy = T.sst2_batch(5, train, dataclasses.replace(r, token_dropout=0.99))
    assert bool((heavy[1].sum(dim=1) >= 1).all())
    # Bucketing: far less padding than plain shuffled batches.
    pad = sum(int((1 - T.sst2_batch(s, train, r)[1]).sum()) for s in range(8))
    plain = dataclasses.replace(r, bucket_batches=0, token_dropout=0.0)
    assert pad < sum(int((1 - T.sst2_batch(s, train, plain)[1]).sum()) for s in range(8)) / 2


# ---- export, folding, loading ------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_slice() -> dict:
    from qslm.data.tokenizer import load_tokenizer

    if not os.environ.get("QSLM_DATA_DIR"):
        pytest.skip("needs QSLM_DATA_DIR (CI sets it)")
    ex = T.sst2_examples(load_tokenizer(zoo.bundled_dir(LM) / "tokenizer.json"), None)
    return {"train": ex["train"][:400], "dev": ex["dev"][:96]}


@needs_data
def test_export_folds_and_loads_back_by_path(real_slice, monkeypatch, tmp_path):
    from qslm.zoo.export import deployed_model, export_run

    monkeypatch.setattr(T, "sst2_examples", lambda tok, data_dir: real_slice)
    r = tiny(max_steps=6)
    run = tmp_path / "run"
    T.train(r, run, None, fresh=False, max_steps=None, progress=False)
    md = export_run(r, run, None, tmp_path / "zoo" / "tiny-sdt", progress=False, docs_dir=tmp_path / "docs")
    bundle_dir = tmp_path / "zoo" / "tiny-sdt"
    card = json.loads((bundle_dir / "card.json").read_text())
    path = bundle_dir / "model.safetensors"

    model = load(str(path))
    assert isinstance(model, SpikeDrivenEncoder) and model.config.norms_folded
    assert isinstance(load_checkpoint(path), SpikeDrivenEncoder)
    assert model.config.to_dict() == card["config"]
    assert sum(p.numel() for p in model.parameters()) == card["parameters"]
    # The deployed form: every block Linear has a bias, no norm left but the gate's map_norm.
    for name in model.spike_input_modules():
        assert model.get_submodule(name).bias is not None, name
    norms = [n for n, m in model.named_modules() if isinstance(m, MaskedBatchNorm)]
    assert norms and all(n.endswith("attn.map_norm") for n in norms)
    # Stored as saved: fp16 matrices, float32 vectors, of the checkpoint folded in float64.
    folded = deployed_model(_ckpt(run)).state_dict()
    for k, v in model.state_dict().items():
        want = folded[k]
        if want.is_floating_point():
            want = want.to(torch.float16 if want.ndim == 2 else torch.float32).float()
        assert torch.equal(v, want), k

    with pytest.raises(CheckpointError, match="spike-driven-encoder checkpoint"):
        load_spikegpt(path)
    assert card["recipe"] == r.to_dict() and card["recipe"]["family"] == "sdt"
    assert card["steps"] == 6 and card["metrics"]["dev"]["n"] == 96
    assert 0.0 <= card["metrics"]["dev"]["accuracy"] <= 1.0
    assert {"sst2/dev.tsv", "sst2/train.tsv"} <= set(card["data_sha256"])
    assert set(card["firing_rates"]) == set(model.tap_names())
    assert set(card["input_rates"]) == set(model.spike_input_modules())
    assert card["init"]["recipe"] == LM and len(card["init"]["weights_sha256"]) == 64
    text = md.read_text()
    assert "spike-driven encoder" in text and "norms folded" in text and "SST-2 dev accuracy" in text


@needs_data
def test_folded_model_gives_the_trained_logits(real_slice, monkeypatch, tmp_path):
    """Folding changes nothing but rounding: float64 logits of the folded and unfolded models."""
    from qslm.eval import pad_batch
    from qslm.zoo.export import deployed_model

    monkeypatch.setattr(T, "sst2_examples", lambda tok, data_dir: real_slice)
    run = tmp_path / "run"
    T.train(tiny(max_steps=6), run, None, fresh=False, max_steps=None, progress=False)
    state = _ckpt(run)
    trained = SpikeDrivenEncoder(SDTConfig.from_dict(state["model_config"]))
    trained.load_state_dict(state["model"])
    trained = trained.double().eval()
    folded = deployed_model(state)
    assert folded.config.norms_folded and not trained.config.norms_folded
    ids, mask = pad_batch([e[0] for e in real_slice["dev"]], max_len=24)
    with torch.no_grad():
        want, got = trained(ids, attention_mask=mask), folded(ids, attention_mask=mask)
    assert (want - got).abs().max().item() < 1e-9
    assert torch.equal(want.argmax(dim=1), got.argmax(dim=1))


def test_checkpoint_round_trip_dispatches_on_family(tmp_path):
    torch.manual_seed(0)
    model = SpikeDrivenEncoder(SDTConfig(vocab_size=64, n_layer=1, n_embd=8, ctx_len=16))
    with torch.no_grad():
        model.train()(torch.randint(2, 64, (4, 10)))  # non-trivial running statistics
    model.eval()
    path = save_safetensors(model, tmp_path / "sdt.safetensors", dtype=torch.float32)
    back = load_checkpoint(path)
    assert isinstance(back, SpikeDrivenEncoder) and not back.config.norms_folded
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v) and back.state_dict()[k].dtype == v.dtype, k
    idx = torch.randint(2, 64, (3, 9))
    with torch.no_grad():
        assert torch.equal(back(idx), model(idx))
    assert isinstance(load(LM), SpikeGPT)  # SpikeGPT files load as before
    with pytest.raises(QslmError, match="unknown load switch"):
        load_checkpoint(path, binary_embedding=False)


# ---- recipes -----------------------------------------------------------------------------------

def test_bundled_sdt_recipe_is_valid_and_fits_the_bundle_budget(tmp_path):
    recipes = T.load_recipes()
    r = recipes["sdt-mini-sst2"]
    assert (r.task, r.family, r.init) == ("sst2", "sdt", LM)
    # SpikeGPT recipes keep the dict their checkpoints and cards recorded.
    for name in ("spikegpt-mini-wt2", "spikegpt-mini-sst2"):
        assert recipes[name].to_dict() == zoo.card(name)["recipe"]
    # The folded fp16 bundle of this recipe, plus the other bundles, within 16 MiB.
    model = T.build_sdt(r, 4096, T.resolve_init(LM)["weights"]).eval().fold_norms()
    size = save_safetensors(model, tmp_path / "m.safetensors").stat().st_size
    size += (zoo.bundled_dir(LM) / "tokenizer.json").stat().st_size
    others = sum(zoo.card(n)["bundle_bytes"] for n in zoo.bundled_names() if n != r.name)
    assert others + size <= 16 * 2**20, (others, size)


@pytest.mark.parametrize("change, msg", [
    pytest.param(dict(task="lm", vocab_size=320), "must be \"sst2\"", id="sdt-lm"),
    pytest.param(dict(family="bert"), "family must be one of", id="unknown-family"),
    pytest.param(dict(dropout=0.1), "no dropout layer", id="dropout"),
    pytest.param(dict(n_embd=0), "n_embd >= 1", id="no-width"),
    pytest.param(dict(t_sim=0), "t_sim >= 1", id="no-sim-steps"),
    pytest.param(dict(emb_init="svd"), "emb_init must be one of", id="emb-init"),
    pytest.param(dict(vocab_size=4096), "vocab_size comes from the tokenizer", id="vocab"),
    pytest.param(dict(token_dropout=1.0), r"token_dropout must be in \[0, 1\)", id="token-dropout"),
    pytest.param(dict(label_smoothing=-0.1), "label_smoothing", id="smoothing"),
    pytest.param(dict(bucket_batches=-1), "bucket_batches", id="buckets"),
    pytest.param(dict(family="spikegpt"), "are for family = \"sdt\"", id="sdt-keys-on-spikegpt"),
    pytest.param(dict(family="spikegpt", mlp_ratio=0, t_sim=0, emb_init="", zero_init_residual=True),
                 "are for family = \"sdt\"", id="zero-init-on-spikegpt"),
    pytest.param(dict(init=""), "needs init", id="no-init"),
])
def test_bad_recipe_is_refused_clearly(change, msg):
    with pytest.raises(QslmError, match=msg) as info:
        tiny(**change)
    assert "tiny-sdt" in str(info.value)


@pytest.mark.parametrize("text, msg", [
    pytest.param('[x]\ntask = "sst2"\nfamily = "sdt"\nn_layers = 2\n', "unknown key", id="typo"),
    pytest.param('[x]\ntask = "sst2"\nfamily = "sdt"\n', "missing key", id="missing"),
    pytest.param('[x]\n' + "\n".join(f"{k} = {json.dumps(v)}" for k, v in {**TINY, "n_embd": "96"}.items()),
                 "n_embd must be of type int", id="wrong-type"),
    pytest.param('[x]\n' + "\n".join(f"{k} = {json.dumps(v)}" for k, v in {**TINY, "zero_init_residual": 1}.items()),
                 "zero_init_residual must be of type bool", id="int-for-bool"),
])
def test_bad_recipe_file_is_refused_clearly(tmp_path, text, msg):
    path = tmp_path / "recipes.toml"
    path.write_text(text)
    with pytest.raises(QslmError, match=msg):
        T.load_recipes(path)


def test_too_wide_for_the_pca_embedding_fails_before_training(synthetic_data, tmp_path):
    with pytest.raises(QslmError, match="n_embd <= the LM's width 192"):
        T.train(tiny(n_embd=256), tmp_path / "run", None, fresh=False, max_steps=None, progress=False)
