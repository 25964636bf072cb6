"""Task metrics: language-model perplexity (token and word level) and classification accuracy.

The metrics need only a minimal model protocol, so any ``torch.nn.Module`` or callable fits:

- language model: ``model(idx)`` with ``idx`` a LongTensor ``(B, T)`` returns logits ``(B, T, V)``,
  where ``logits[b, t]`` predicts token ``t + 1`` from tokens ``0..t`` of its row;
- classifier: ``model(idx, attention_mask=mask)`` with both ``(B, T)`` returns logits ``(B, n_classes)``.

Each call must be independent of the previous ones: a model with recurrent or membrane state
(SpikeGPT's LIF neurons) resets it at the start of its forward. Evaluation runs under
``torch.no_grad`` with the model in eval mode (its previous mode is restored afterwards), batched,
with a tqdm progress bar that ``progress=False`` turns off.

Perplexity, precisely
---------------------
Write the evaluated token sequence as ``t_0 .. t_{N-1}``. Token ``t_j`` (``j >= 1``) is *scored*
with ``-log p(t_j | context)``; ``t_0`` has no context and is not scored, so
``n_tokens_scored = N - 1``. Pass ``bos_id=EOT_ID`` to prepend ``<|endoftext|>`` as context so that
every token of the text is scored (GPT-2 style); it is then not counted in ``n_tokens_scored``.

- Chunked (``stride=None``, the default): non-overlapping windows of ``ctx_len`` input tokens,
  ``t_{k·c} .. t_{k·c+c-1}`` predicting ``t_{k·c+1} .. t_{k·c+c}``. Each token is scored exactly
  once, given the tokens of its window before it (between 1 and ``ctx_len`` of them).
- Sliding (``stride=s``, ``1 <= s <= ctx_len``): windows of ``ctx_len`` input tokens start every
  ``s`` tokens; each token is scored once, in the first window that predicts it, so after the
  first window every token has at least ``ctx_len - s + 1`` tokens of context (up to ``ctx_len``).
  ``stride == ctx_len`` is the chunked evaluation. The last window may be shorter.

``token_ppl = exp(nll_sum / n_tokens_scored)``, ``nll_sum`` being the total negative log-likelihood
in nats.

``word_ppl = exp(nll_sum / n_words)`` with ``n_words`` the number of whitespace-separated words of
the evaluated text (:func:`count_words`; 241,211 for the WikiText-2 test split). The total NLL of a
text does not depend on how it was cut into tokens (it is ``-log p(text)``), so the word-level
figure is comparable between tokenizers and with word-level models on the same text — the
literature's word-level WikiText-2 perplexity. One caveat on the normalizer: word-level models
trained on the ``.tokens`` release also predict an end-of-line token per line and divide by
words + lines (245,569 on the test split); pass ``n_words=count_words(text, lines_as_words=True)``
for that convention. Also, ``t_0`` is not scored unless ``bos_id`` is given (negligible on a long
text).

With ``max_tokens`` only the first ``max_tokens`` tokens are evaluated; ``n_words`` must then count
the words of the text those tokens cover: :func:`count_words_in_tokens` decodes them and counts
(a word cut by the boundary counts as one). If ``n_words`` is None, ``word_ppl`` is None.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from qslm.data.tokenizer import PAD_ID
from qslm.errors import DTypeError, QslmError, ShapeError

__all__ = [
    "classification_accuracy",
    "classification_batches",
    "count_words",
    "count_words_in_tokens",
    "lm_perplexity",
    "pad_batch",
    "sliding_windows",
]


# --- words ------------------------------------------------------------------------------------


def count_words(text: str, *, lines_as_words: bool = False) -> int:
    """Number of whitespace-separated words of ``text`` (``len(text.split())``).

    ``lines_as_words=True`` adds one per line (``text.count("\\n")``): the end-of-line token that
    word-level models predict, as in the 245,569 "tokens" of the WikiText-2 test split.
    """
    n = len(text.split())
    return n + text.count("\n") if lines_as_words else n


def count_words_in_tokens(tokenizer: Any, token_ids: Sequence[int] | torch.Tensor | np.ndarray) -> int:
    """Words of the text that ``token_ids`` encode: ``count_words(tokenizer.decode(ids))``.

    ``tokenizer`` is anything with ``decode(ids, skip_special_tokens=...)`` (a ``tokenizers``
    Tokenizer, a transformers tokenizer). Special tokens are skipped. Use it with a prefix,
    ``token_ids[:max_tokens]``, to get the ``n_words`` of a ``max_tokens`` evaluation.
    """
    ids = [int(i) for i in _as_1d_long(token_ids, "token_ids").tolist()]
    return count_words(tokenizer.decode(ids, skip_special_tokens=True))


# --- language modelling -----------------------------------------------------------------------


def _as_1d_long(x: Any, what: str) -> torch.Tensor:
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise DTypeError(f"{what} must hold integer token ids, got dtype {t.dtype}")
    if t.dim() != 1:
        raise ShapeError(f"{what} must be 1-D, got shape {tuple(t.shape)}")
    return t.long()


def sliding_windows(n_tokens: int, ctx_len: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """The evaluation windows of :func:`lm_perplexity` over ``n_tokens`` tokens.

    Returns ``(begin, length, n_scored)`` triples: the window's inputs are tokens
    ``begin .. begin+length-1``, it predicts ``begin+1 .. begin+length`` and scores the last
    ``n_scored`` of those. The ``n_scored`` add up to ``n_tokens - 1``.
    """
    stride = ctx_len if stride is None else stride
    if ctx_len < 1:
        raise QslmError(f"ctx_len must be >= 1, got {ctx_len}")
    if not 1 <= stride <= ctx_len:
        raise QslmError(f"stride must be between 1 and ctx_len={ctx_len}, got {stride}")
    if n_tokens < 2:
        raise ShapeError(f"need at least 2 tokens to score one, got {n_tokens}")
    windows = []
    scored_until = 0  # targets 1..scored_until are done
    begin = 0
    while scored_until < n_tokens - 1:
        end = min(begin + ctx_len, n_tokens - 1)  # last target position of this window
        windows.append((begin, end - begin, end - scored_until))
        scored_until = end
        begin += stride
    return windows


def _model_device(model: Any, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
    return torch.device("cpu")


class _EvalMode:
    """``model.eval()`` inside the block, the previous mode restored after it."""

    def __init__(self, model: Any) -> None:
        self.model = model if isinstance(model, torch.nn.Module) else None

    def __enter__(self) -> None:
        if self.model is not None:
            self.was_training = self.model.training
            self.model.eval()

    def __exit__(self, *exc: object) -> None:
        if self.model is not None:
            self.model.train(self.was_training)


def _safe_exp(x: float) -> float:
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def lm_perplexity(
    model: Callable[[torch.Tensor], torch.Tensor],
    token_ids: Sequence[int] | torch.Tensor | np.ndarray,
    ctx_len: int,
    batch_size: int,
    stride: int | None = None,
    n_words: int | None = None,
    max_tokens: int | None = None,
    *,
    bos_id: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Perplexity of ``model`` on ``token_ids`` (see the module docstring for the exact definition).

    Args:
        model: ``model(idx (B, T)) -> logits (B, T, V)``.
        token_ids: 1-D integer ids of the whole evaluated text.
        ctx_len: tokens per window (the model's context length).
        batch_size: windows per model call.
        stride: None for chunked evaluation, else the sliding-window step (1..ctx_len).
        n_words: words of the evaluated text, for ``word_ppl`` (:func:`count_words`).
        max_tokens: evaluate only the first ``max_tokens`` ids (then ``n_words`` must count the
            words they cover: :func:`count_words_in_tokens`).
        bos_id: if given, prepended as unscored context so that the first token is scored too.
        device: where the inputs go; by default the device of the model's first parameter (CPU
            for a model without parameters).
        progress: show a tqdm bar.

    Returns:
        ``{"token_ppl", "word_ppl" (None without n_words), "nll_sum" (nats), "n_tokens_scored",
        "n_words"}``.
    """
    ids = _as_1d_long(token_ids, "token_ids")
    if batch_size < 1:
        raise QslmError(f"batch_size must be >= 1, got {batch_size}")
    if max_tokens is not None:
        if max_tokens < 1:
            raise QslmError(f"max_tokens must be >= 1, got {max_tokens}")
        ids = ids[:max_tokens]
    if bos_id is not None:
        ids = torch.cat([torch.tensor([bos_id], dtype=torch.long), ids])
    if n_words is not None and n_words < 1:
        raise QslmError(f"n_words must be >= 1, got {n_words}")
    if ids.numel() and int(ids.min()) < 0:
        raise QslmError(f"token ids must be >= 0, got {int(ids.min())}")
    windows = sliding_windows(ids.numel(), ctx_len, stride)

    # Batches of consecutive windows of equal length (only the last window can be shorter).
    batches: list[list[tuple[int, int, int]]] = []
    for w in windows:
        if batches and len(batches[-1]) < batch_size and batches[-1][0][1] == w[1]:
            batches[-1].append(w)
        else:
            batches.append([w])

    dev = _model_device(model, device)
    nll_sum = 0.0
    n_scored = 0
    with torch.no_grad(), _EvalMode(model):
        for batch in tqdm(batches, desc="perplexity", unit="batch", disable=not progress):
            length = batch[0][1]
            x = torch.stack([ids[b : b + length] for b, _, _ in batch])  # (B, L)
            y = torch.stack([ids[b + 1 : b + length + 1] for b, _, _ in batch])  # (B, L)
            logits = model(x.to(dev))
            if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[:2] != x.shape:
                got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise ShapeError(
                    f"the model must return logits of shape (B, T, V) = ({x.shape[0]}, {length}, V), got {got}"
                )
            vocab = logits.shape[2]
            if int(y.max()) >= vocab:
                raise ShapeError(f"token id {int(y.max())} is outside the model's vocabulary of {vocab} logits")
            k = max(n for _, _, n in batch)  # only the last k positions can be scored
            lg = logits[:, length - k :, :]  # (B, k, V), at least float32 for the softmax
            lg = lg if lg.dtype == torch.float64 else lg.float()
            tg = y[:, length - k :].to(lg.device)  # (B, k)
            nll = F.cross_entropy(lg.reshape(-1, vocab), tg.reshape(-1), reduction="none").view(len(batch), k)
            n_new = torch.tensor([n for _, _, n in batch], device=lg.device)
            keep = torch.arange(k, device=lg.device)[None, :] >= (k - n_new)[:, None]  # (B, k)
            nll_sum += float(nll.double()[keep].sum())
            n_scored += int(keep.sum())
    assert n_scored == ids.numel() - 1
    return {
        "token_ppl": _safe_exp(nll_sum / n_scored),
        "word_ppl": None if n_words is None else _safe_exp(nll_sum / n_words),
        "nll_sum": nll_sum,
        "n_tokens_scored": n_scored,
        "n_words": n_words,
    }


# --- classification ---------------------------------------------------------------------------


def pad_batch(
    seqs: Sequence[Sequence[int]], pad_id: int = PAD_ID, max_len: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into ``ids (B, T)`` and ``attention_mask (B, T)`` (LongTensors).

    ``T`` is the longest sequence's length, or ``max_len`` if that is smaller: longer sequences
    are truncated to their first ``max_len`` tokens. ``attention_mask`` is 1 on real tokens and 0
    on padding (as Hugging Face's). Empty sequences are rejected (a classifier pooling on the last
    real token would have none).
    """
    if len(seqs) == 0:
        raise ShapeError("pad_batch needs at least one sequence")
    if max_len is not None and max_len < 1:
        raise QslmError(f"max_len must be >= 1, got {max_len}")
    lengths = [len(s) for s in seqs]
    for i, n in enumerate(lengths):
        if n == 0:
            raise ShapeError(f"sequence {i} is empty")
    T = max(lengths) if max_len is None else min(max(lengths), max_len)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        row = _as_1d_long(s, f"sequence {i}")[:T]
        ids[i, : row.numel()] = row
        mask[i, : row.numel()] = 1
    return ids, mask


def classification_batches(
    examples: Sequence[tuple[Sequence[int], int]],
    batch_size: int,
    pad_id: int = PAD_ID,
    max_len: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(ids, attention_mask, labels)`` batches of ``(token_ids, label)`` examples, in order.

    Each batch is padded to its own longest sequence (dynamic padding, as SpikeGPT's NLU scripts),
    truncated to ``max_len``; see :func:`pad_batch`.
    """
    if batch_size < 1:
        raise QslmError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        ids, mask = pad_batch([e[0] for e in chunk], pad_id, max_len)
        yield ids, mask, torch.tensor([int(e[1]) for e in chunk], dtype=torch.long)


def classification_accuracy(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, Sequence[int] | torch.Tensor]],
    *,
    device: torch.device | str | None = None,
    progress: bool = True,
    total: int | None = None,
) -> dict[str, Any]:
    """Accuracy (argmax of the logits vs the label) of ``model`` over ``batches``.

    ``batches`` yields ``(ids (B, T), attention_mask (B, T), labels (B,))``, e.g.
    :func:`classification_batches`; ``total`` (number of batches) sizes the progress bar.
    Labels must be >= 0 (the SST-2 test split, labelled -1, cannot be scored).

    Returns ``{"accuracy", "n", "n_correct"}``.
    """
    dev = _model_device(model, device)
    n = 0
    n_correct = 0
    with torch.no_grad(), _EvalMode(model):
        for ids, mask, labels in tqdm(batches, desc="accuracy", unit="batch", total=total, disable=not progress):
            labels = _as_1d_long(labels, "labels")
            if ids.dim() != 2 or mask.shape != ids.shape or labels.numel() != ids.shape[0]:
                raise ShapeError(
                    f"a batch must be ids (B, T), attention_mask (B, T), labels (B,); got {tuple(ids.shape)}, "
                    f"{tuple(mask.shape)}, {tuple(labels.shape)}"
                )
            if labels.numel() and int(labels.min()) < 0:
                raise QslmError("a label is negative: unlabeled examples (e.g. SST-2 test) cannot be scored")
            logits = model(ids.to(dev), attention_mask=mask.to(dev))
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != ids.shape[0]:
                got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise ShapeError(
                    f"the classifier must return logits of shape (B, n_classes) = ({ids.shape[0]}, C), got {got}"
                )
            n_correct += int((logits.argmax(dim=-1).cpu() == labels).sum())
            n += labels.numel()
    if n == 0:
        raise QslmError("no examples to score")
    return {"accuracy": n_correct / n, "n": n, "n_correct": n_correct}
