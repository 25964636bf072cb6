"""The bundled models: load offline by name, fit the size budget, and reproduce the metric their
model card recorded on a fixed subset of the evaluation data."""

from __future__ import annotations

import os

import numpy as np
import pytest

from qslm import zoo
from qslm.models import load

BUNDLED = zoo.bundled_names()
needs_data = pytest.mark.skipif(not os.environ.get("QSLM_DATA_DIR"), reason="needs QSLM_DATA_DIR (CI sets it)")


def test_bundle_size_budget():
    total = sum(zoo.card(n)["bundle_bytes"] for n in BUNDLED)
    assert total <= 16 * 2**20
    for n in BUNDLED:
        on_disk = sum(f.stat().st_size for f in zoo.bundled_dir(n).iterdir() if f.name != "card.json")
        assert on_disk == zoo.card(n)["bundle_bytes"]


@pytest.mark.parametrize("name", BUNDLED)
def test_loads_offline_by_name(name):
    model = load(name)
    card = zoo.card(name)
    assert sum(p.numel() for p in model.parameters()) == card["parameters"]
    assert model.config.to_dict() == card["config"]


@needs_data
@pytest.mark.parametrize("name", BUNDLED)
def test_reproduces_recorded_subset_metric(name):
    from qslm.data.tokenizer import load_tokenizer
    from qslm.zoo.export import lm_subset_nll, sst2_subset_accuracy

    card = zoo.card(name)
    model = load(name)
    tok = load_tokenizer(zoo.bundled_dir(name) / "tokenizer.json")
    ctx = card["recipe"]["ctx_len"]
    if card["recipe"]["task"] == "lm":
        from qslm.data.datasets import load_wikitext2

        ids = np.asarray(tok.encode(load_wikitext2("test")).ids, dtype=np.int32)
        got = lm_subset_nll(model, ids, ctx)
        assert got == pytest.approx(card["metrics"]["subset"]["value"], rel=1e-4)
    else:
        from qslm.train import sst2_examples

        got = sst2_subset_accuracy(model, sst2_examples(tok, None)["dev"], ctx)
        assert got == pytest.approx(card["metrics"]["subset"]["value"], abs=1e-9)
