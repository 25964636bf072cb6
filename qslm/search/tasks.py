"""The data side of a search: calibration task (sensitivity), evaluation task (full evaluations)
and the final measurement, for ``wikitext2``, ``sst2`` and the data-free ``fidelity`` task.

============  ==========================  ==================================  =====================
task          calibration (sensitivity)   evaluation (search constraint)      final (report)
============  ==========================  ==================================  =====================
wikitext2     NLL on windows of train     NLL on windows of valid             test word/token PPL
sst2          cross-entropy on train      accuracy on dev                     accuracy on dev
fidelity      KL on sampled text (seed)   KL on other sampled text (seed+1)   KL and top-1
============  ==========================  ==================================  =====================

Calibration and evaluation data are disjoint (train vs valid/dev, or two sampled sets), so the
constraint is checked on data the sensitivities were not measured on. SST-2's test labels are not
public: dev is both the constraint set and the reported set (as in the QSLM paper); the LM's
reported perplexity is on the test split, which the search never sees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from qslm.errors import QslmError
from qslm.sensitivity import ClassificationTask, LMCalibrationTask

__all__ = ["TASKS", "FinalAccuracy", "FinalFidelity", "FinalPerplexity", "SearchTasks",
           "build_tasks", "default_task", "find_tokenizer"]

TASKS = ("wikitext2", "sst2", "fidelity")
DEFAULT_CALIB = {"wikitext2": 16, "sst2": 128, "fidelity": 16}
DEFAULT_EVAL = {"wikitext2": 64, "sst2": 0, "fidelity": 32}  # 0 = the whole split


class TaskDataError(QslmError, ValueError):
    """Task data that cannot be used with this model (or is missing)."""


@dataclass
class SearchTasks:
    """What the search measures: see the module docstring."""

    name: str  # wikitext2 | sst2 | fidelity
    calibration: Any  # a qslm.sensitivity.Task
    evaluation: Any  # a qslm.sensitivity.Task whose metric the floor is stated in
    metric: str  # the evaluation metric: "nll" | "accuracy" | "kl"
    same_units: bool  # calibration degradation is in the evaluation metric's units
    seq_len: int  # tokens per sequence (classifier workloads are per sequence)
    describe: dict[str, Any] = field(default_factory=dict)
    final: Any = None  # picklable callable(model) -> dict of reported metrics, or None
    notice: str | None = None


@dataclass
class FinalPerplexity:
    """The LM's final measurement: word and token perplexity on the test split (picklable, so
    an executor can run it in a worker)."""

    tokens: np.ndarray  # the test split's token ids
    ctx_len: int
    n_words: int
    progress: bool = False

    def __call__(self, model: nn.Module) -> dict[str, Any]:
        from qslm.eval import lm_perplexity

        r = lm_perplexity(model, self.tokens, ctx_len=self.ctx_len, batch_size=32,
                          n_words=self.n_words, bos_id=0, progress=self.progress)
        return {"test_word_ppl": r["word_ppl"], "test_token_ppl": r["token_ppl"],
                "test_tokens": r["n_tokens_scored"]}


@dataclass
class FinalAccuracy:
    """The classifier's final measurement: accuracy on the evaluation (dev) split."""

    task: ClassificationTask
    n_sentences: int
    progress: bool = False  # (nothing to show: kept for a uniform interface)

    def __call__(self, model: nn.Module) -> dict[str, Any]:
        return {"dev_accuracy": self.task.metric(model), "dev_sentences": self.n_sentences}


@dataclass
class FinalFidelity:
    """The fidelity task's final measurement: KL and top-1 agreement on the evaluation text."""

    task: Any  # qslm.fidelity.FidelityTask
    progress: bool = False

    def __call__(self, model: nn.Module) -> dict[str, Any]:
        return {f"fidelity_{k}": v for k, v in self.task.both(model).items()}


def default_task(model: nn.Module) -> str:
    """sst2 for a classifier, wikitext2 for a language model."""
    return "sst2" if getattr(getattr(model, "config", None), "is_classifier", False) \
        else "wikitext2"


def find_tokenizer(model_ref: str, tokenizer: str | None) -> Path | None:
    """``--tokenizer``, else ``tokenizer.json`` beside the checkpoint or in the bundle."""
    if tokenizer is not None:
        p = Path(tokenizer)
        if not p.is_file():
            raise TaskDataError(f"tokenizer file {tokenizer} does not exist")
        return p
    from qslm.zoo import bundled_dir

    candidates = []
    if os.sep not in model_ref:
        candidates.append(bundled_dir(model_ref) / "tokenizer.json")
    candidates.append(Path(model_ref).parent / "tokenizer.json")
    for c in candidates:
        if c.is_file():
            return c
    return None


def build_tasks(model: nn.Module, task: str, *, tokenizer_path: Path | None,
                data_dir: str | None, calib_samples: int | None, eval_samples: int | None,
                seed: int, progress: bool = True) -> SearchTasks:
    """Build the three measurements of ``task`` (module docstring). Raises
    :class:`TaskDataError` (or a data-set error) when the data or tokenizer is missing."""
    cfg = getattr(model, "config", None)
    is_clf = bool(getattr(cfg, "is_classifier", False))
    ctx = int(getattr(cfg, "ctx_len", 128))
    n_cal = calib_samples or DEFAULT_CALIB[task]
    n_eval = DEFAULT_EVAL[task] if eval_samples is None else eval_samples
    if task == "fidelity":
        from qslm.fidelity import FidelityTask

        if is_clf:
            raise TaskDataError("the fidelity task compares next-token predictions: it needs a "
                                "language model, and this model is a classifier")
        seq = min(64, ctx)
        cal = FidelityTask.sampled(model, n_cal, seq, seed=seed, metric="kl")
        ev = FidelityTask.sampled(model, n_eval or DEFAULT_EVAL["fidelity"], seq, seed=seed + 1,
                                  metric="kl")
        return SearchTasks("fidelity", cal, ev, "kl", True, seq,
                           {"calibration": cal.describe(), "evaluation": ev.describe()},
                           FinalFidelity(ev))

    if tokenizer_path is None:
        raise TaskDataError(f"the {task} task needs the model's tokenizer: pass --tokenizer "
                            "tokenizer.json (or put it beside the checkpoint)")
    from qslm.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_path)
    if task == "wikitext2":
        if is_clf:
            raise TaskDataError("wikitext2 is a language-modelling task and this model is a "
                                "classifier: use --task sst2")
        from qslm.data.datasets import load_wikitext2
        from qslm.eval import count_words

        train = np.asarray(tok.encode(load_wikitext2("train", data_dir)).ids, dtype=np.int64)
        valid = np.asarray(tok.encode(load_wikitext2("valid", data_dir)).ids, dtype=np.int64)
        vocab = int(getattr(cfg, "vocab_size", 0) or 0)
        if vocab and max(int(train.max()), int(valid.max())) >= vocab:
            raise TaskDataError(f"the tokenizer {tokenizer_path} produces ids up to "
                                f"{int(train.max())} but the model has {vocab} tokens: not "
                                "this model's tokenizer")
        cal = LMCalibrationTask.from_token_ids(train, n_cal, ctx + 1, seed=seed, batch_size=8)
        n_eval = n_eval or max(1, (len(valid) - 1) // ctx)
        ev = LMCalibrationTask.from_token_ids(valid, n_eval, ctx + 1, seed=seed + 1,
                                              batch_size=16)
        test_text = load_wikitext2("test", data_dir)
        test = np.asarray(tok.encode(test_text).ids, dtype=np.int64)
        n_words = count_words(test_text)

        return SearchTasks("wikitext2", cal, ev, "nll", True, 1,
                           {"calibration": {"split": "train", **cal.describe()},
                            "evaluation": {"split": "valid", **ev.describe()},
                            "final": {"split": "test", "tokens": int(len(test)),
                                      "words": n_words}},
                           FinalPerplexity(test, ctx, n_words, progress))

    if task == "sst2":
        if not is_clf:
            raise TaskDataError("sst2 is a classification task and this model is a language "
                                "model: use --task wikitext2 or fidelity")
        from qslm.data.datasets import load_sst2
        from qslm.eval import classification_batches

        def encode(rows: list[tuple[str, int]]) -> list[tuple[list[int], int]]:
            enc = tok.encode_batch([s for s, _ in rows])
            return [(e.ids if e.ids else [0], y) for e, (_, y) in zip(enc, rows)]

        train = encode(load_sst2("train", data_dir))
        dev = encode(load_sst2("dev", data_dir))
        rng = np.random.default_rng(seed)
        pick = sorted(rng.choice(len(train), size=min(n_cal, len(train)), replace=False).tolist())
        cal_rows = [train[i] for i in pick]
        dev_rows = dev if not n_eval else dev[:n_eval]
        cal = ClassificationTask(classification_batches(cal_rows, 64, max_len=ctx), "loss")
        ev = ClassificationTask(classification_batches(dev_rows, 64, max_len=ctx), "accuracy")
        seq_len = int(round(float(np.mean([min(len(x), ctx) for x, _ in dev_rows]))))

        return SearchTasks("sst2", cal, ev, "accuracy", False, seq_len,
                           {"calibration": {"split": "train", "metric": "cross-entropy",
                                            "sentences": len(cal_rows)},
                            "evaluation": {"split": "dev", "metric": "accuracy",
                                           "sentences": len(dev_rows)}},
                           FinalAccuracy(ev, len(dev_rows)))
    raise TaskDataError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
