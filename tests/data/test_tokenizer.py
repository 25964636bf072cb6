"""qslm.data.tokenizer: GPT-NeoX-style byte-level BPE, save/load, encode/decode."""

from __future__ import annotations

import json
import os
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qslm.data.tokenizer import (
    EOT_ID,
    EOT_TOKEN,
    PAD_ID,
    PAD_TOKEN,
    decode,
    encode,
    encode_batch,
    load_tokenizer,
    save_tokenizer,
    train_bpe,
)
from qslm.errors import QslmError, TokenizerError

REAL_DATA_DIR = os.environ.get("QSLM_DATA_DIR")

CORPUS = [
    " = Valkyria Chronicles III = \n",
    " Senjō no Valkyria 3 : Unrecorded Chronicles ( Japanese : 戦場のヴァルキュリア3 , lit . Valkyria of the Battlefield 3 ) \n",
    " The game began development in 2010 , carrying over a large portion of the work done on Valkyria Chronicles II . \n",
    "it 's a charming and often affecting journey . \n",
    "the movie is a charming , funny and affecting journey , and the game is a charming one . \n",
] * 20

ROUND_TRIP_TEXTS = [
    "",
    " ",
    "hello world",
    "  two leading spaces and trailing  ",
    "tabs\tand\nnewlines\n\n\nand  runs   of    spaces",
    " = Robert Boulter = \n \n Robert Boulter is an English film and television actor . \n",
    "Ünïcödé: naïve café, 戦場のヴァルキュリア, emoji 🙂👍🏽, Ελληνικά, עברית",
    "control \x00\x01\x7f characters and \u200b zero width",
    f"documents{EOT_TOKEN}joined by end of text {PAD_TOKEN} and padding",
]


@pytest.fixture(scope="module")
def tok():
    return train_bpe(CORPUS, vocab_size=400)


def test_special_token_ids(tok):
    assert (EOT_ID, PAD_ID) == (0, 1)
    assert tok.token_to_id(EOT_TOKEN) == EOT_ID and tok.id_to_token(EOT_ID) == EOT_TOKEN
    assert tok.token_to_id(PAD_TOKEN) == PAD_ID and tok.id_to_token(PAD_ID) == PAD_TOKEN
    assert encode(tok, f"a{EOT_TOKEN}b").count(EOT_ID) == 1
    assert 258 < tok.get_vocab_size() <= 400


def test_pipeline_is_gpt_neox_like(tok):
    spec = json.loads(tok.to_str())
    assert spec["normalizer"]["type"] == "NFC"
    assert spec["pre_tokenizer"] == {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                     "use_regex": True}
    assert spec["decoder"]["type"] == "ByteLevel"
    assert spec["model"]["type"] == "BPE" and spec["model"]["unk_token"] is None
    added = {t["id"]: (t["content"], t["special"]) for t in spec["added_tokens"]}
    assert added == {0: (EOT_TOKEN, True), 1: (PAD_TOKEN, True)}
    # No prefix space: " a" and "a" differ.
    assert encode(tok, "a") != encode(tok, " a")


def test_merges_are_learned(tok):
    ids = encode(tok, " Valkyria Chronicles")
    assert len(ids) < len(" Valkyria Chronicles".encode())


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_round_trip(tok, text):
    assert decode(tok, encode(tok, text)) == text


@given(text=st.text(max_size=200))
def test_round_trip_any_text_up_to_nfc(tok, text):
    assert decode(tok, encode(tok, text)) == unicodedata.normalize("NFC", text)


def test_decode_can_skip_special_tokens(tok):
    ids = encode(tok, f"one{EOT_TOKEN}two")
    assert decode(tok, ids, skip_special_tokens=True) == "onetwo"


def test_encode_batch_matches_encode(tok):
    assert encode_batch(tok, ROUND_TRIP_TEXTS) == [encode(tok, t) for t in ROUND_TRIP_TEXTS]


def test_training_is_deterministic(tok):
    again = train_bpe(iter(CORPUS), vocab_size=400)  # an iterator works as well as a list
    assert again.to_str() == tok.to_str()


def test_custom_special_tokens():
    t = train_bpe(CORPUS, vocab_size=300, special_tokens=("<pad>", "<eos>", "<unk>"))
    assert [t.token_to_id(s) for s in ("<pad>", "<eos>", "<unk>")] == [0, 1, 2]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param(dict(vocab_size=100), "at least 258", id="vocab-too-small"),
        pytest.param(dict(vocab_size=300, special_tokens=("<a>", "<a>")), "distinct", id="duplicate-specials"),
    ],
)
def test_train_errors(kwargs, match):
    with pytest.raises(QslmError, match=match):
        train_bpe(CORPUS, **kwargs)


def test_save_load_round_trip(tok, tmp_path):
    path = save_tokenizer(tok, tmp_path / "sub" / "tok.json")
    assert path == tmp_path / "sub" / "tok.json"
    assert os.listdir(tmp_path / "sub") == ["tok.json"]  # no temporary file left
    loaded = load_tokenizer(path)
    assert loaded.to_str() == tok.to_str()
    for text in ROUND_TRIP_TEXTS:
        assert encode(loaded, text) == encode(tok, text)
        assert decode(loaded, encode(loaded, text)) == text
    # Saving again replaces the file.
    save_tokenizer(train_bpe(CORPUS, vocab_size=300), path)
    assert load_tokenizer(path).get_vocab_size() <= 300
    # A Hugging Face model folder with tokenizer.json.
    save_tokenizer(tok, tmp_path / "hf" / "tokenizer.json")
    assert load_tokenizer(tmp_path / "hf").to_str() == tok.to_str()


def test_load_errors(tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer file not found: .*missing.json"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match="not valid JSON"):
        load_tokenizer(bad)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"vocab": {"a": 0}}))
    with pytest.raises(TokenizerError, match="not a valid tokenizers JSON file"):
        load_tokenizer(other)
    assert issubclass(TokenizerError, QslmError)


@pytest.mark.skipif(not REAL_DATA_DIR, reason="set QSLM_DATA_DIR to the shared data folder")
def test_real_wikitext_round_trip():
    from qslm.data import load_wikitext2

    valid = load_wikitext2("valid", REAL_DATA_DIR, download=False)
    tok = train_bpe(valid.splitlines(keepends=True), vocab_size=1000)
    test = load_wikitext2("test", REAL_DATA_DIR, download=False)
    ids = encode(tok, test)
    assert decode(tok, ids) == test
    assert len(ids) < len(test.encode()) / 2  # the merges compress
