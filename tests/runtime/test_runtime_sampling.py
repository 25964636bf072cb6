"""Next-token choice (greedy, run.py's sampling of spec §6) and the generation API's arguments."""

from __future__ import annotations

import math

import pytest
import torch
from runtime_helpers import PLANS, one_thread, tiny_model

from qslm.errors import GenerationError
from qslm.quant import export_packed
from qslm.runtime import GREEDY, Sampling, load_runtime, next_token

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _logits(probs):
    return torch.log(torch.tensor(probs, dtype=torch.float32))


def _freq(logits, sampling, n=4000):
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(logits.numel())
    for _ in range(n):
        counts[next_token(logits, sampling, g)] += 1
    return counts / n


def test_greedy_is_argmax_and_honours_bans():
    x = torch.tensor([0.1, 3.0, 2.0, -1.0])
    assert next_token(x) == 1 and next_token(x, GREEDY) == 1
    assert next_token(x, Sampling(ban_tokens=(1,))) == 2
    assert Sampling().greedy and not Sampling.run_py().greedy


def test_run_py_settings():
    s = Sampling.run_py(seed=3)
    assert (s.temperature, s.top_p, s.top_k, s.seed, s.ban_tokens) == (1.5, 0.7, None, 3, (0,))
    x = torch.tensor([10.0, 1.0, 0.5, 0.0])  # token 0 would win: it is banned
    assert _freq(x, s, 300)[0] == 0


def test_nucleus_cut_as_run_py():
    # sorted cumulative 0.5, 0.8, ... first above 0.7 is 0.3: tokens below 0.3 are dropped
    f = _freq(_logits([0.5, 0.3, 0.15, 0.05]), Sampling(temperature=1.0, top_p=0.7))
    assert f[2] == f[3] == 0
    assert f[0] == pytest.approx(0.5 / 0.8, abs=0.03)


def test_temperature_powers_the_probabilities():
    # probs ** (1/T) with T = 0.5: 0.75², 0.25² → 0.9, 0.1
    f = _freq(_logits([0.75, 0.25]), Sampling(temperature=0.5))
    assert f[0] == pytest.approx(0.9, abs=0.02)
    f = _freq(_logits([0.75, 0.25]), Sampling(temperature=1.0))
    assert f[0] == pytest.approx(0.75, abs=0.025)


def test_top_k_and_tiny_top_p_reduce_to_argmax():
    x = torch.randn(50, generator=torch.Generator().manual_seed(1))
    best = int(x.argmax())
    for s in (Sampling(temperature=2.0, top_k=1), Sampling(temperature=1.0, top_p=1e-6)):
        assert set(_freq(x, s, 200).nonzero().flatten().tolist()) == {best}
    f = _freq(x, Sampling(temperature=1.0, top_k=3), 500)
    assert set(f.nonzero().flatten().tolist()) <= set(torch.topk(x, 3).indices.tolist())


def test_tiny_temperature_does_not_fail():
    x = torch.tensor([0.0, -50.0, -60.0])
    assert next_token(x, Sampling(temperature=1e-6, seed=0)) == 0


@pytest.mark.parametrize("kwargs", [dict(temperature=-1.0), dict(temperature=math.inf),
                                    dict(top_p=0.0), dict(top_p=1.5), dict(top_k=0),
                                    dict(top_k=2.5), dict(seed="x"), dict(ban_tokens=(-1,)),
                                    dict(ban_tokens="ab")])
def test_bad_sampling_options(kwargs):
    with pytest.raises(GenerationError):
        Sampling(**kwargs)


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    with one_thread():
        path = export_packed(tiny_model(seed=2), PLANS["w4a-g64"],
                             tmp_path_factory.mktemp("s") / "model.qslm.safetensors")
        return load_runtime(path)


def test_seeded_generation_is_reproducible(rt):
    s = Sampling(temperature=1.0, top_p=0.9, seed=42)
    a = rt.generate([3, 4, 5], 12, s)
    assert a == rt.generate([3, 4, 5], 12, s)
    others = {tuple(rt.generate([3, 4, 5], 12, Sampling(temperature=1.0, seed=k)))
              for k in range(4)}
    assert len(others) > 1


def test_stop_tokens_and_streaming(rt):
    greedy = rt.generate(torch.tensor([7, 8]), 10)
    assert len(greedy) == 10
    assert rt.generate([7, 8], 10, stop_tokens=[greedy[2]])[-1] == greedy[2]
    seen = []
    assert rt.generate([7, 8], 5, on_token=seen.append) == seen == greedy[:5]


@pytest.mark.parametrize("prompt, n, match", [
    ([], 4, "prompt is empty"), ([1, 300], 4, "token id 300 is outside"),
    ([1.5], 4, "integer"), (torch.tensor([[1, 2]]), 4, "1-D"), ("ab", 4, "token ids"),
    ([1], -1, "max_new_tokens"), ([1], 2.0, "max_new_tokens")])
def test_bad_generation_arguments(rt, prompt, n, match):
    with pytest.raises(GenerationError, match=match):
        rt.generate(prompt, n)
