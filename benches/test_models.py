"""SpikeGPT on the CPU: parallel-form evaluation tokens/s and recurrent generation tokens/s, for the
bundled models and a random model in the SpikeGPT-216M shape (18 × 768, V = 50277)."""

from __future__ import annotations

import pytest
import torch

from qslm.models import SpikeGPT, SpikeGPTConfig, load
from qslm.zoo import bundled_names

T_EVAL = 128
GEN_TOKENS = 16


def _model(which: str) -> SpikeGPT:
    if which == "random-216m":
        torch.manual_seed(0)
        return SpikeGPT(SpikeGPTConfig(vocab_size=50277, n_layer=18, n_embd=768)).eval()
    return load(which).eval()


MODELS = ["random-216m"] + [n for n in bundled_names() if "sst2" not in n]


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    torch.set_num_threads(2)
    return request.param, _model(request.param)


def test_parallel_eval(benchmark, model):
    name, m = model
    batch = 1 if name == "random-216m" else 8
    idx = torch.randint(0, m.config.vocab_size, (batch, T_EVAL))
    benchmark.group = "SpikeGPT parallel-form evaluation"

    def run():
        with torch.no_grad():
            return m(idx)

    res = benchmark.pedantic(run, rounds=3, warmup_rounds=1) if not benchmark.disabled else benchmark(run)
    assert res.shape == (batch, T_EVAL, m.config.vocab_size)
    if getattr(benchmark, "stats", None):
        benchmark.extra_info["tokens_per_s"] = batch * T_EVAL / benchmark.stats.stats.median


def test_recurrent_generation(benchmark, model):
    name, m = model
    benchmark.group = "SpikeGPT recurrent generation (batch 1)"

    def run():
        state = m.init_state(1)
        tok = torch.zeros(1, dtype=torch.long)
        with torch.no_grad():
            for _ in range(GEN_TOKENS):
                logits, state = m.step(tok, state)
                tok = logits.argmax(-1)
        return tok

    benchmark.pedantic(run, rounds=3, warmup_rounds=1) if not benchmark.disabled else benchmark(run)
    if getattr(benchmark, "stats", None):
        benchmark.extra_info["tokens_per_s"] = GEN_TOKENS / benchmark.stats.stats.median
