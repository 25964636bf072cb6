"""Data sets (WikiText-2 raw, SST-2, Tiny Shakespeare) and tokenizers.

- :mod:`qslm.data.datasets`: find (``--data-dir`` → ``$QSLM_DATA_DIR`` → ``~/.cache/qslm/data`` →
  download), checksum and read the data sets.
- :mod:`qslm.data.tokenizer`: load the GPT-NeoX ``20B_tokenizer.json`` or train a small byte-level
  BPE of the same kind (``<|endoftext|>`` = 0, ``<|padding|>`` = 1).
"""

from qslm.data.datasets import (
    DATA_DIR_ENV,
    DATASETS,
    DataFile,
    Dataset,
    Source,
    data_file,
    default_cache_dir,
    get_dataset,
    load_sst2,
    load_text,
    load_wikitext2,
    read_sst2_tsv,
    resolve,
)
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

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "DataFile",
    "Dataset",
    "EOT_ID",
    "EOT_TOKEN",
    "PAD_ID",
    "PAD_TOKEN",
    "Source",
    "data_file",
    "decode",
    "default_cache_dir",
    "encode",
    "encode_batch",
    "get_dataset",
    "load_sst2",
    "load_text",
    "load_tokenizer",
    "load_wikitext2",
    "read_sst2_tsv",
    "resolve",
    "save_tokenizer",
    "train_bpe",
]
