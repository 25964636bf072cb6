"""The bundled pre-trained models through the packed runtime: identical greedy generations and
the task metric within 0.1 % of the fake-quant model of the same plan.

The evaluation text is WikiText-2 test / SST-2 dev when the data is found (``QSLM_DATA_DIR``, the
user cache; never downloaded here), else a fixed paragraph / a few fixed sentences.
"""

from __future__ import annotations

import copy

import pytest
import torch

from qslm.data.tokenizer import encode, load_tokenizer
from qslm.errors import DataNotFoundError
from qslm.eval import classification_accuracy, classification_batches, lm_perplexity
from qslm.models import load
from qslm.quant import QuantPlan, QuantSpec, apply_fake_quant, export_packed
from qslm.runtime import (
    LOGIT_RTOL,
    METRIC_RTOL,
    SPIKE_AGREEMENT_MIN,
    load_runtime,
    parity_report,
)
from qslm.zoo import bundled_dir, bundled_names

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Sign-binarized embedding (only Θ(e) of it is used), 4-bit asymmetric groups of 64 elsewhere.
PLAN = QuantPlan({"emb": QuantSpec(1, True, group_size=64)}, QuantSpec(4, False, group_size=64))
N_TOKENS = 513  # 4 windows of 128 tokens

FALLBACK_TEXT = (
    " The game 's battle system , the BliTZ system , is carried over directly from Valkyria "
    "Chronicles . During missions , players select each unit using a top @-@ down perspective "
    "of the battlefield map : once a character is selected , the player moves the character "
    "around the battlefield in third @-@ person . A character can only act once per @-@ turn , "
    "but characters can be granted multiple turns at the expense of other characters ' turns . "
    "Each character has a field and distance of movement limited by their Action Gauge . Up to "
    "nine characters can be assigned to a single mission . During gameplay , characters will "
    "call out if something happens to them , such as their health points ( HP ) getting low or "
    "being knocked out by enemy attacks . Each character has specific \" Potentials \" , skills "
    "unique to each character . They are divided into \" Personal Potential \" , which are "
    "innate skills that remain unaltered unless otherwise dictated by the story and can either "
    "help or impede a character , and \" Battle Potentials \" , which are grown throughout the "
    "game and always grant boons to a character . To learn Battle Potentials , each character "
    "has a unique \" Masters Table \" , a grid @-@ based skill table that can be used to acquire "
    "and link different skills . Characters also have Special Abilities that grant them "
    "temporary boosts on the battlefield . ") * 3

FALLBACK_SENTENCES = [
    ("a gorgeous , witty , seductive movie .", 1), ("the acting is amateurish and dull .", 0),
    ("one of the best films of the year", 1), ("a tedious , joyless mess .", 0),
    ("it 's a charming and often affecting journey .", 1),
    ("unflinchingly bleak and desperate", 0), ("the plot is nothing but boilerplate clichés", 0),
    ("a warm , funny , engaging film .", 1),
]


def _pair(tmp_path, name, plan):
    model = load(name).eval()
    path = export_packed(model, plan, tmp_path / "model.qslm.safetensors")
    fq = copy.deepcopy(model)
    apply_fake_quant(fq, plan)
    return load_runtime(path), fq, load_tokenizer(bundled_dir(name) / "tokenizer.json")


@pytest.mark.skipif("spikegpt-mini-wt2" not in bundled_names(), reason="bundle missing")
def test_bundled_lm_generations_and_perplexity(tmp_path):
    rt, fq, tok = _pair(tmp_path, "spikegpt-mini-wt2", PLAN)
    try:
        from qslm.data.datasets import load_wikitext2

        text = load_wikitext2("test", download=False)[:20000]
    except DataNotFoundError:
        text = FALLBACK_TEXT
    ids = torch.tensor(encode(tok, text)[:N_TOKENS])
    assert len(ids) == N_TOKENS
    # logits, spikes and greedy generation of 32 tokens from two prompts
    for start in (0, 200):
        r = parity_report(rt, fq, ids[None, start:start + 48], gen_tokens=32)
        assert r["greedy_identical"], r["greedy"]
        assert r["parallel_rel_err"] <= LOGIT_RTOL and r["recurrent_rel_err"] <= LOGIT_RTOL, r
        assert r["spike_agreement"] >= SPIKE_AGREEMENT_MIN, r
    a = rt.perplexity(ids, batch_size=4)
    b = lm_perplexity(fq, ids, fq.config.ctx_len, 4, progress=False)
    assert a["n_tokens_scored"] == b["n_tokens_scored"] == N_TOKENS - 1
    assert abs(a["token_ppl"] / b["token_ppl"] - 1) <= METRIC_RTOL, (a, b)
    assert a["token_ppl"] < 1000  # a trained model, not noise
    assert 0 < min(rt.firing_rates().values())


def _classifier_accuracy_parity(tmp_path, name, plan):
    """Runtime vs fake-quant accuracy on SST-2 dev (first 96 sentences, else a fixed set);
    returns (runtime, fake-quant model, first batch ids, its mask)."""
    rt, fq, tok = _pair(tmp_path, name, plan)
    try:
        from qslm.data.datasets import load_sst2

        rows = load_sst2("dev", download=False)[:96]
    except DataNotFoundError:
        rows = FALLBACK_SENTENCES
    examples = [(encode(tok, s) or [0], y) for s, y in rows]
    ctx = rt.config.ctx_len
    a = rt.accuracy(classification_batches(examples, 32, max_len=ctx))
    b = classification_accuracy(fq, classification_batches(examples, 32, max_len=ctx),
                                progress=False)
    assert a["n"] == b["n"] == len(rows)
    assert abs(a["accuracy"] - b["accuracy"]) <= METRIC_RTOL * max(b["accuracy"], 1e-9)
    ids, mask, _ = next(classification_batches(examples, 32, max_len=ctx))
    return rt, fq, ids, mask


@pytest.mark.skipif("spikegpt-mini-sst2" not in bundled_names(), reason="bundle missing")
def test_bundled_classifier_accuracy(tmp_path):
    rt, fq, ids, mask = _classifier_accuracy_parity(
        tmp_path, "spikegpt-mini-sst2", QuantPlan({}, QuantSpec(4, False, group_size=64)))
    with torch.no_grad():
        la, lb = rt(ids, attention_mask=mask), fq(ids, attention_mask=mask)
    assert torch.equal(la.argmax(-1), lb.argmax(-1))
    assert float((la - lb).abs().max() / lb.abs().max()) <= LOGIT_RTOL


@pytest.mark.skipif("sdt-mini-sst2" not in bundled_names(), reason="bundle missing")
def test_bundled_spike_driven_encoder_accuracy(tmp_path):
    """The spike-driven encoder at its searched plan (benches/plans): every block linear on
    spike_matmul, accuracy identical to fake-quant, logits within the parity tolerance."""
    from pathlib import Path

    from qslm.runtime import SDTRuntime

    plan = QuantPlan.load(Path(__file__).resolve().parents[2] / "benches" / "plans"
                          / "sdt-mini-sst2.edge-npu.plan.json")
    rt, fq, ids, mask = _classifier_accuracy_parity(tmp_path, "sdt-mini-sst2", plan)
    assert isinstance(rt, SDTRuntime)
    r = parity_report(rt, fq, ids, attention_mask=mask)
    assert r["parallel_rel_err"] <= LOGIT_RTOL, r
    assert r["spike_agreement"] >= SPIKE_AGREEMENT_MIN, r
    assert 0 < min(rt.firing_rates().values())
