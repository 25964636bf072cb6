"""Tokenizers: load the GPT-NeoX ``20B_tokenizer.json`` (or any ``tokenizers`` JSON), or train a
small byte-level BPE of the same kind.

Everything goes through the Hugging Face ``tokenizers`` library. A tokenizer trained here has the
GPT-NeoX-20B pipeline (``/work/shared/spec/spikegpt.md`` §9): NFC normalizer, ByteLevel
pre-tokenizer with ``add_prefix_space=False``, byte-level BPE without an unknown token (every
byte is in the alphabet, so any text encodes), ByteLevel decoder, and the special tokens
``<|endoftext|>`` = id 0 (:data:`EOT_ID`) and ``<|padding|>`` = id 1 (:data:`PAD_ID`).

Round trip: ``decode(tok, encode(tok, text)) == unicodedata.normalize("NFC", text)`` — equal to
``text`` itself for NFC text (WikiText-2 and SST-2 are). A literal ``<|endoftext|>`` in the text
encodes to id 0 and decodes back to the same string.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from qslm._io import atomic_write_text
from qslm.errors import QslmError, TokenizerError

__all__ = [
    "EOT_ID",
    "EOT_TOKEN",
    "PAD_ID",
    "PAD_TOKEN",
    "decode",
    "encode",
    "encode_batch",
    "load_tokenizer",
    "save_tokenizer",
    "train_bpe",
]

EOT_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"
EOT_ID = 0  # id of <|endoftext|> in the GPT-NeoX-20B tokenizer and in train_bpe's
PAD_ID = 1  # id of <|padding|>


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] = (EOT_TOKEN, PAD_TOKEN),
    *,
    min_frequency: int = 2,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a GPT-NeoX-style byte-level BPE tokenizer on ``texts``.

    ``special_tokens`` take ids 0, 1, ... in order (by default ``<|endoftext|>`` = 0 and
    ``<|padding|>`` = 1); then come the 256 byte symbols, then the merges, up to ``vocab_size``
    entries in all (fewer if the text runs out of pairs seen ``min_frequency`` times).

    Training is deterministic: the same texts in the same order give the same tokenizer, byte for
    byte (the trainer has no randomness and breaks ties between equally frequent pairs by a fixed
    order, so no seed is needed). Pass the text as many pieces (lines, documents) rather than one huge string:
    the trainer counts words per piece, in parallel.
    """
    n_min = len(special_tokens) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size < n_min:
        raise QslmError(
            f"vocab_size must be at least {n_min} (the {len(special_tokens)} special tokens and 256 bytes), "
            f"got {vocab_size}"
        )
    if len(set(special_tokens)) != len(special_tokens):
        raise QslmError(f"special_tokens must be distinct, got {list(special_tokens)}")
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Load a ``tokenizers`` JSON file, e.g. GPT-NeoX's ``20B_tokenizer.json``.

    ``path`` may also be a directory holding ``tokenizer.json`` (a Hugging Face model folder).
    Raises TokenizerError for a missing, unreadable or invalid file.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise TokenizerError(f"tokenizer file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerError(f"cannot read tokenizer file {p}: {e}") from e
    try:
        json.loads(text)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{p} is not a tokenizer: not valid JSON ({e})") from e
    try:
        return Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises plain Exception subclasses from Rust
        raise TokenizerError(f"{p} is not a valid tokenizers JSON file: {e}") from e


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike[str]) -> Path:
    """Write ``tok`` as JSON to ``path`` atomically (temporary file in the same folder, then rename)."""
    p = Path(path).expanduser()
    return atomic_write_text(p, tok.to_str(pretty=True))


def encode(tok: Tokenizer, text: str) -> list[int]:
    """Token ids of ``text``. No special token is added (as SpikeGPT's ``run.py``: no BOS)."""
    return tok.encode(text, add_special_tokens=False).ids


def encode_batch(tok: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text (encoded in parallel); no special token is added."""
    return [e.ids for e in tok.encode_batch(list(texts), add_special_tokens=False)]


def decode(tok: Tokenizer, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
    """Text of token ids. Special tokens are kept by default, so that decode inverts encode."""
    return tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
