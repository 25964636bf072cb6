"""qslm.eval: perplexity on fake models with known answers, window bookkeeping, accuracy, padding."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qslm.data.tokenizer import EOT_ID, PAD_ID, encode, train_bpe
from qslm.errors import DTypeError, QslmError, ShapeError
from qslm.eval import (
    classification_accuracy,
    classification_batches,
    count_words,
    count_words_in_tokens,
    lm_perplexity,
    pad_batch,
    sliding_windows,
)

REAL_DATA_DIR = os.environ.get("QSLM_DATA_DIR")
V = 11  # vocabulary of the fake models


class UniformLM(torch.nn.Module):
    """Equal logits everywhere: every token has probability 1/V, so perplexity is exactly V."""

    def __init__(self, vocab: int = V):
        super().__init__()
        self.vocab = vocab
        self.calls = 0

    def forward(self, idx):
        self.calls += 1
        return torch.zeros(*idx.shape, self.vocab)


def next_token_logits(idx: torch.Tensor, p: torch.Tensor, vocab: int = V) -> torch.Tensor:
    """Logits giving token (x + 1) % V probability p (broadcast over positions), the rest equal shares."""
    p = p.expand(idx.shape).double()
    logits = torch.log((1 - p) / (vocab - 1))[..., None].repeat(1, 1, vocab)  # (B, T, V)
    logits.scatter_(2, ((idx + 1) % vocab)[..., None], torch.log(p)[..., None])
    return logits  # float64: the known answers hold to ~1e-12


class NextTokenLM(torch.nn.Module):
    """Predicts (x + 1) % V with probability p whatever the context: no context dependence."""

    def __init__(self, p: float):
        super().__init__()
        self.p = torch.tensor(p)

    def forward(self, idx):
        return next_token_logits(idx, self.p)


class ContextLM(torch.nn.Module):
    """Predicts (x + 1) % V with probability q(c) that grows with the context length c = t + 1."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))  # so the model has a device and a mode

    @staticmethod
    def q(c):
        return 1.0 - 0.8 / (c + 1.0)

    def forward(self, idx):
        c = torch.arange(1, idx.shape[1] + 1, dtype=torch.float64)[None, :]
        return next_token_logits(idx, self.q(c))


def counting_ids(n: int) -> torch.Tensor:
    return torch.arange(n) % V  # (x + 1) % V is always the next token


def oracle_context_lengths(n: int, ctx_len: int, stride: int) -> dict[int, int]:
    """Target position → number of tokens it is predicted from, each target in the first window
    that predicts it (the documented scheme, written independently of qslm.eval)."""
    ctx: dict[int, int] = {}
    begin = 0
    while len(ctx) < n - 1:
        for t in range(min(ctx_len, n - 1 - begin)):
            ctx.setdefault(begin + t + 1, t + 1)
        begin += stride
    return ctx


# --- known answers ----------------------------------------------------------------------------


@pytest.mark.parametrize("n, ctx_len, batch_size", [(100, 16, 4), (17, 16, 1), (2, 8, 3), (1000, 64, 5)])
def test_uniform_model_has_perplexity_vocab_size(n, ctx_len, batch_size):
    out = lm_perplexity(UniformLM(), counting_ids(n), ctx_len, batch_size, n_words=n // 2 + 1, progress=False)
    assert out["token_ppl"] == pytest.approx(V, rel=1e-6)
    assert out["n_tokens_scored"] == n - 1
    assert out["nll_sum"] == pytest.approx((n - 1) * math.log(V), rel=1e-6)
    assert out["word_ppl"] == pytest.approx(math.exp((n - 1) * math.log(V) / (n // 2 + 1)), rel=1e-6)
    assert out["n_words"] == n // 2 + 1


@pytest.mark.parametrize("p", [0.9, 0.5, 0.05])
def test_known_next_token_probability(p):
    out = lm_perplexity(NextTokenLM(p), counting_ids(300), 32, 4, progress=False)
    assert out["token_ppl"] == pytest.approx(1 / p, rel=1e-5)
    assert out["word_ppl"] is None and out["n_words"] is None


@pytest.mark.parametrize("stride", [1, 3, 8, 15, 16])
@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_chunked_and_sliding_agree_without_context_dependence(stride, batch_size):
    ids = counting_ids(203)
    chunked = lm_perplexity(NextTokenLM(0.7), ids, 16, 7, progress=False)
    sliding = lm_perplexity(NextTokenLM(0.7), ids, 16, batch_size, stride=stride, progress=False)
    assert sliding["n_tokens_scored"] == chunked["n_tokens_scored"] == 202
    assert sliding["nll_sum"] == pytest.approx(chunked["nll_sum"], rel=1e-6)


@pytest.mark.parametrize("n, ctx_len, stride", [(200, 16, None), (200, 16, 4), (200, 16, 1), (37, 8, 5), (9, 8, 3)])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_context_lengths_match_the_documented_windows(n, ctx_len, stride, batch_size):
    ctx = oracle_context_lengths(n, ctx_len, stride or ctx_len)
    expected = sum(-math.log(ContextLM.q(c)) for c in ctx.values())
    out = lm_perplexity(ContextLM(), counting_ids(n), ctx_len, batch_size, stride=stride, progress=False)
    assert out["n_tokens_scored"] == n - 1
    assert out["nll_sum"] == pytest.approx(expected, rel=1e-6)


def test_sliding_gives_more_context_than_chunks():
    ids = counting_ids(500)
    chunked = lm_perplexity(ContextLM(), ids, 32, 8, progress=False)
    sliding = lm_perplexity(ContextLM(), ids, 32, 8, stride=8, progress=False)
    assert sliding["token_ppl"] < chunked["token_ppl"]


@given(n=st.integers(2, 300), ctx_len=st.integers(1, 40), data=st.data())
def test_sliding_windows_score_each_token_once(n, ctx_len, data):
    stride = data.draw(st.integers(1, ctx_len))
    windows = sliding_windows(n, ctx_len, stride)
    scored = []
    for begin, length, n_scored in windows:
        assert 1 <= length <= ctx_len and 1 <= n_scored <= length and begin + length <= n - 1
        scored += [(begin + length - k, length - k) for k in range(n_scored)]  # (target, context)
    assert sorted(t for t, _ in scored) == list(range(1, n))
    assert all(c >= min(t, ctx_len - stride + 1) for t, c in scored)
    assert dict(scored) == oracle_context_lengths(n, ctx_len, stride)


def test_bos_scores_the_first_token():
    ids = counting_ids(50) + 1  # (x + 1) % V still the next token; EOT_ID = 0 then predicts 1
    out = lm_perplexity(NextTokenLM(0.5), ids % V, 16, 2, bos_id=EOT_ID, progress=False)
    assert out["n_tokens_scored"] == 50


def test_max_tokens_evaluates_a_prefix():
    ids = counting_ids(100)
    model = UniformLM()
    out = lm_perplexity(model, ids, 8, 2, max_tokens=20, progress=False)
    assert out["n_tokens_scored"] == 19
    assert model.calls == 2  # windows of 8, 8 and 3 → one batch of two full windows, one short


def test_accepts_lists_numpy_and_tensors():
    results = [
        lm_perplexity(NextTokenLM(0.6), ids, 8, 2, progress=False)["nll_sum"]
        for ids in ([i % V for i in range(30)], np.arange(30, dtype=np.int32) % V, torch.arange(30, dtype=torch.int16) % V)
    ]
    assert results[0] == pytest.approx(results[1]) == pytest.approx(results[2])


def test_model_mode_is_restored():
    model = ContextLM().train()
    lm_perplexity(model, counting_ids(20), 8, 2, progress=False)
    assert model.training
    model.eval()
    lm_perplexity(model, counting_ids(20), 8, 2, progress=False)
    assert not model.training


def test_plain_callable_model():
    out = lm_perplexity(lambda idx: torch.zeros(*idx.shape, 5), [0, 1, 2, 3, 4], 4, 2, progress=False)
    assert out["token_ppl"] == pytest.approx(5)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        pytest.param(dict(ctx_len=8, stride=0), QslmError, "stride must be between 1 and ctx_len=8", id="stride-0"),
        pytest.param(dict(ctx_len=8, stride=9), QslmError, "stride must be between", id="stride-gt-ctx"),
        pytest.param(dict(ctx_len=0), QslmError, "ctx_len must be >= 1", id="ctx-0"),
        pytest.param(dict(batch_size=0), QslmError, "batch_size must be >= 1", id="batch-0"),
        pytest.param(dict(token_ids=torch.zeros(2, 5, dtype=torch.long)), ShapeError, "1-D", id="2d-ids"),
        pytest.param(dict(token_ids=torch.zeros(5)), DTypeError, "integer token ids", id="float-ids"),
        pytest.param(dict(token_ids=[3]), ShapeError, "at least 2 tokens", id="one-token"),
        pytest.param(dict(token_ids=[3, -1, 2]), QslmError, "must be >= 0", id="negative-id"),
        pytest.param(dict(token_ids=[3, 11, 2]), ShapeError, "outside the model's vocabulary of 11", id="id-ge-vocab"),
        pytest.param(dict(model=lambda idx: torch.zeros(idx.shape[0], V)), ShapeError, r"\(B, T, V\)", id="bad-output"),
        pytest.param(dict(n_words=0), QslmError, "n_words must be >= 1", id="n-words-0"),
    ],
)
def test_lm_perplexity_errors(kwargs, error, match):
    args = dict(model=UniformLM(), token_ids=counting_ids(20), ctx_len=8, batch_size=2, progress=False)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        lm_perplexity(**args)


# --- words ------------------------------------------------------------------------------------


def test_count_words():
    text = " = Robert Boulter = \n \n Robert Boulter is an actor . \n"
    assert count_words(text) == 10
    assert count_words(text, lines_as_words=True) == 13
    assert count_words("") == 0 and count_words(" \n\t ") == 0


def test_count_words_in_token_prefix():
    text = "the movie is charming and the game is charming too . \n" * 3
    tok = train_bpe([text] * 5, vocab_size=300)
    ids = encode(tok, text)
    assert count_words_in_tokens(tok, ids) == count_words(text) == 33
    assert count_words_in_tokens(tok, torch.tensor(ids)) == 33
    counts = [count_words_in_tokens(tok, ids[:n]) for n in range(1, len(ids) + 1)]
    assert counts == sorted(counts) and counts[0] == 1  # grows with the prefix
    # word-level PPL of a max_tokens evaluation uses the words of the prefix.
    out = lm_perplexity(UniformLM(tok.get_vocab_size()), ids, 8, 2, max_tokens=10,
                        n_words=count_words_in_tokens(tok, ids[:10]), progress=False)
    assert out["n_words"] == counts[9]


# --- classification ---------------------------------------------------------------------------


def test_pad_batch_right_pads_and_truncates():
    ids, mask = pad_batch([[5, 6, 7], [8], [9, 10]])
    assert ids.tolist() == [[5, 6, 7], [8, PAD_ID, PAD_ID], [9, 10, PAD_ID]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert ids.dtype == mask.dtype == torch.long
    ids, mask = pad_batch([[5, 6, 7, 8], [9]], pad_id=0, max_len=2)  # keeps the first max_len tokens
    assert ids.tolist() == [[5, 6], [9, 0]] and mask.tolist() == [[1, 1], [1, 0]]
    ids, _ = pad_batch([[5], [6]], max_len=10)  # max_len only caps
    assert ids.shape == (2, 1)
    ids, _ = pad_batch([np.array([1, 2]), torch.tensor([3])])
    assert ids.tolist() == [[1, 2], [3, PAD_ID]]


@pytest.mark.parametrize(
    "seqs, kwargs, match",
    [
        pytest.param([], {}, "at least one sequence", id="no-sequences"),
        pytest.param([[1], []], {}, "sequence 1 is empty", id="empty-sequence"),
        pytest.param([[1]], dict(max_len=0), "max_len must be >= 1", id="max-len-0"),
    ],
)
def test_pad_batch_errors(seqs, kwargs, match):
    with pytest.raises(QslmError, match=match):
        pad_batch(seqs, **kwargs)


class LastTokenClassifier(torch.nn.Module):
    """Class = parity of the last real token: right only if the attention mask is honoured."""

    def forward(self, idx, attention_mask):
        last = attention_mask.sum(dim=1) - 1  # (B,)
        tok = idx[torch.arange(idx.shape[0]), last]  # (B,)
        return torch.nn.functional.one_hot(tok % 2, 2).float()  # (B, 2)


def test_classification_accuracy():
    rng = np.random.default_rng(0)
    examples = []
    for i in range(50):
        seq = rng.integers(2, 100, size=rng.integers(1, 12)).tolist()
        label = seq[-1] % 2 if i % 5 else 1 - seq[-1] % 2  # every fifth label is wrong
        examples.append((seq, label))
    for batch_size in (1, 7, 64):
        out = classification_accuracy(LastTokenClassifier(), classification_batches(examples, batch_size),
                                      progress=False)
        assert out == {"accuracy": 0.8, "n": 50, "n_correct": 40}


def test_classification_batches_truncate():
    batches = list(classification_batches([([1, 2, 3], 0), ([4], 1), ([5, 6], 1)], batch_size=2, max_len=2))
    assert [b[0].tolist() for b in batches] == [[[1, 2], [4, PAD_ID]], [[5, 6]]]
    assert [b[2].tolist() for b in batches] == [[0, 1], [1]]


def test_classification_errors():
    model = LastTokenClassifier()
    with pytest.raises(QslmError, match="unlabeled"):
        classification_accuracy(model, classification_batches([([3], -1)], 4), progress=False)
    with pytest.raises(QslmError, match="no examples"):
        classification_accuracy(model, [], progress=False)
    with pytest.raises(ShapeError, match=r"\(B, n_classes\)"):
        classification_accuracy(lambda i, attention_mask: torch.zeros(i.shape[0], i.shape[1], 2),
                                classification_batches([([3], 1)], 4), progress=False)


# --- the real data (QSLM_DATA_DIR) --------------------------------------------------------------


@pytest.mark.skipif(not REAL_DATA_DIR, reason="set QSLM_DATA_DIR to the shared data folder")
def test_real_wikitext2_word_counts():
    from qslm.data import load_wikitext2

    counts = {s: count_words(load_wikitext2(s, REAL_DATA_DIR, download=False)) for s in ("train", "valid", "test")}
    assert counts == {"train": 2_051_910, "valid": 213_886, "test": 241_211}
    test = load_wikitext2("test", REAL_DATA_DIR, download=False)
    assert count_words(test, lines_as_words=True) == 245_569  # the word-level literature's count
