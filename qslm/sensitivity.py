"""Sensitivity of every quantizable module (and block) at every candidate spec, cached on disk.

Definitions
-----------
A :class:`Task` scores a model: ``task.metric(model) -> float`` on fixed calibration data, and says
which way is better (``higher_is_better``). The *degradation* of a quantized model is the metric
change normalised so that **positive means worse**, in the metric's own units::

    delta = metric(fp) − metric(quantized)     if higher_is_better   (accuracy: the drop)
    delta = metric(quantized) − metric(fp)     otherwise             (NLL, loss, KL: the increase)

* :class:`LMCalibrationTask` — mean next-token negative log-likelihood (nats per predicted token)
  on fixed ``(N, T)`` token windows; lower is better, so ``delta = NLL(q) − NLL(fp)``
  (``exp(delta)`` is the perplexity ratio).
* :class:`ClassificationTask` — accuracy (higher is better: ``delta`` is the accuracy drop) or,
  with ``metric="loss"``, the mean cross-entropy (lower is better; smoother than accuracy on a
  small calibration set, where one module rarely flips a prediction).
* A fidelity task (KL divergence to the fp model's predictions) fits the same protocol with
  ``higher_is_better = False`` and a baseline of 0.

The **sensitivity of module m at spec s** is the degradation when only ``m`` is quantized with
``s`` (every other module kept); the **block sensitivity** of block B at ``s`` quantizes all of
B's modules with ``s`` at once. A single-leaf pseudo-block (``emb``, ``head``) has the sensitivity
of its module (measured once).

Measurements
------------
Every evaluation is an independent, picklable :class:`Measurement` ``(kind, name, modules,
spec)`` — the baseline, one module, or one block — that :func:`evaluate_measurement` turns into
a metric value given ``(model, task)``: apply that measurement's fake-quant plan, evaluate, restore
(the weights come back bit for bit), under a fixed RNG seed that leaves the caller's RNG state
alone. :func:`measure_sensitivity` hands them, as jobs (key and plan), to an executor
(:mod:`qslm.executor`: in-process, a local process pool or Ray) and needs only their results, in
any order, as they complete.

The cache
---------
``cache_dir/<model fingerprint>/<task fingerprint>.jsonl``: one JSON line per measurement,
appended (and fsynced) as soon as it is measured, so an interrupted run loses nothing and a second
run with the same model, data and specs evaluates nothing. A line::

    {"kind": "module", "name": "blocks.0.att.key", "modules": ["blocks.0.att.key"],
     "spec": {"bits": 4, "symmetric": true, "granularity": "channel", "group_size": null},
     "metric": 5.7123, "seconds": 0.012}

(``kind``: ``"baseline"`` — name ``""``, no modules, spec null —, ``"module"`` or ``"block"``.)
A corrupt or truncated line (a run killed mid-write) is ignored with a
:class:`SensitivityCacheWarning` and the file is rewritten without it; that measurement is simply
taken again. Beside it, ``<task fingerprint>.meta.json`` (created atomically) records the format
version, both fingerprints and the task; a mismatch raises
:class:`~qslm.errors.SensitivityCacheError`. One process writes a cache file at a time.

:func:`model_fingerprint` hashes the state dict (names, dtypes, shapes, bytes) and the model's
config (``model.config.to_dict()`` when it has one: switches such as SpikeGPT's
``binary_embedding`` change the function without changing a weight). :func:`data_fingerprint`
is the task's own ``fingerprint()``: its kind, its options and the bytes of its data.

The additive predictor
----------------------
:meth:`SensitivityTable.predict` estimates the degradation of a mixed-precision plan as the sum of
the module sensitivities of the modules it quantizes — the additive (first-order,
no-interaction) assumption of the QSLM paper's sensitivity-guided search and of HAWQ-style
mixed-precision methods. Block sensitivities measured directly show how far it holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from qslm.errors import PlanError, SensitivityCacheError, SensitivityError
from qslm.hierarchy import Hierarchy, build_hierarchy
from qslm.quant import QuantPlan, QuantSpec, apply_fake_quant, quantizable_modules
from qslm._io import atomic_write_bytes

if TYPE_CHECKING:
    from qslm.executor import Executor

__all__ = [
    "FORMAT_VERSION",
    "ClassificationTask",
    "LMCalibrationTask",
    "Measurement",
    "MeasurementResult",
    "SensitivityCache",
    "SensitivityCacheWarning",
    "SensitivityTable",
    "Task",
    "data_fingerprint",
    "degradation",
    "evaluate_measurement",
    "evaluate_plan",
    "measure_plan",
    "measure_sensitivity",
    "model_fingerprint",
    "plan_measurements",
]

FORMAT_VERSION = 1  # of the cache files and of SensitivityTable.to_dict()
SEED = 0  # torch RNG seed of every evaluation (matters only for a stochastic model or task)
KINDS = ("baseline", "module", "block")


class SensitivityCacheWarning(UserWarning):
    """A sensitivity cache line that was corrupt or truncated and is ignored (re-measured)."""


# ================================================================================================
# Tasks
# ================================================================================================


@runtime_checkable
class Task(Protocol):
    """What a sensitivity measurement evaluates. Implementations must be picklable (executors ship
    them to workers) and deterministic given the model."""

    name: str  # short identifier, e.g. "lm-nll", "classification-accuracy"
    higher_is_better: bool  # the sign convention of degradation() (module docstring)

    def metric(self, model: nn.Module) -> float:
        """The metric of ``model`` on the task's fixed data (eval mode, no grad; the model's
        mode is left as it was)."""
        ...

    def fingerprint(self) -> str:
        """Hex sha256 of everything that determines the metric besides the model: the task kind,
        its options and its data."""
        ...


def degradation(higher_is_better: bool, baseline: float, value: float) -> float:
    """Metric change normalised so that positive means worse (see the module docstring)."""
    return baseline - value if higher_is_better else value - baseline


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _hash_tensor(h: Any, t: Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().data)


def _as_long_2d(x: Any, what: str) -> Tensor:
    t = x.detach().cpu() if isinstance(x, Tensor) else torch.as_tensor(x)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise SensitivityError(f"{what} must hold integers, got dtype {t.dtype}")
    if t.ndim != 2 or t.numel() == 0:
        raise SensitivityError(f"{what} must be a non-empty 2-D (N, T) tensor, got shape "
                               f"{tuple(t.shape)}")
    if int(t.min()) < 0:
        raise SensitivityError(f"{what} holds a negative value ({int(t.min())})")
    return t.to(torch.int64).contiguous()


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SensitivityError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return batch_size


class LMCalibrationTask:
    """Mean next-token NLL (nats per predicted token) of a language model on fixed windows.

    ``token_windows``: integer ``(N, T)``, ``T >= 2``; window ``i`` feeds tokens ``0..T-2`` and
    scores tokens ``1..T-1``, so ``N·(T−1)`` tokens are scored. The model protocol is that of
    :func:`qslm.eval.lm_perplexity`: ``model(idx (B, T−1)) -> logits (B, T−1, V)``, each call
    independent of the previous ones. ``batch_size`` windows per call. Lower is better.
    """

    name = "lm-nll"
    higher_is_better = False

    def __init__(self, token_windows: Tensor | Any, batch_size: int = 8) -> None:
        windows = _as_long_2d(token_windows, "token_windows")
        if windows.shape[1] < 2:
            raise SensitivityError(f"token_windows need T >= 2 tokens to score one, got "
                                   f"shape {tuple(windows.shape)}")
        self.windows = windows  # (N, T) int64, CPU
        self.batch_size = _check_batch_size(batch_size)

    @classmethod
    def from_token_ids(cls, token_ids: Tensor | Any, n_windows: int, window_len: int, *,
                       seed: int = 0, batch_size: int = 8) -> LMCalibrationTask:
        """``n_windows`` windows of ``window_len`` tokens cut at seeded random, distinct start
        positions of a 1-D token stream (the calibration subset); the same seed gives the same
        windows."""
        ids = torch.as_tensor(token_ids).reshape(-1) if not isinstance(token_ids, Tensor) \
            else token_ids.detach().cpu().reshape(-1)
        for what, v, low in (("n_windows", n_windows, 1), ("window_len", window_len, 2)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise SensitivityError(f"{what} must be an integer >= {low}, got {v!r}")
        n_starts = ids.numel() - window_len + 1
        if n_starts < n_windows:
            raise SensitivityError(f"{ids.numel()} tokens hold only {max(n_starts, 0)} windows "
                                   f"of {window_len} tokens, {n_windows} asked for")
        g = torch.Generator().manual_seed(seed)
        starts = torch.randperm(n_starts, generator=g)[:n_windows].sort().values
        windows = torch.stack([ids[s:s + window_len] for s in starts.tolist()])
        return cls(windows, batch_size)

    def metric(self, model: nn.Module) -> float:
        dev = _model_device(model)
        n, t = self.windows.shape
        total = 0.0
        with torch.no_grad(), _eval_mode(model):
            for i in range(0, n, self.batch_size):
                w = self.windows[i:i + self.batch_size].to(dev)  # (B, T)
                logits = model(w[:, :-1])  # (B, T−1, V)
                if not isinstance(logits, Tensor) or logits.ndim != 3 or \
                        logits.shape[:2] != (w.shape[0], t - 1):
                    got = tuple(logits.shape) if isinstance(logits, Tensor) \
                        else type(logits).__name__
                    raise SensitivityError(f"the model must return logits (B, T, V) = "
                                           f"({w.shape[0]}, {t - 1}, V), got {got}")
                vocab = logits.shape[-1]
                if int(w.max()) >= vocab:
                    raise SensitivityError(f"token id {int(w.max())} is outside the model's "
                                           f"{vocab} logits")
                nll = F.cross_entropy(logits.reshape(-1, vocab).float(), w[:, 1:].reshape(-1),
                                      reduction="sum")
                total += float(nll)
        return total / (n * (t - 1))

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"qslm.LMCalibrationTask/1|batch_size={self.batch_size}|".encode())
        _hash_tensor(h, self.windows)
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        n, t = self.windows.shape
        return {"name": self.name, "n_windows": n, "window_len": t, "batch_size": self.batch_size}

    def __repr__(self) -> str:
        n, t = self.windows.shape
        return f"LMCalibrationTask({n} windows × {t} tokens, batch_size={self.batch_size})"


CLASSIFICATION_METRICS = ("accuracy", "loss")


class ClassificationTask:
    """Accuracy (or mean cross-entropy, ``metric="loss"``) of a classifier on fixed batches.

    ``batches``: ``(ids (B, T), attention_mask (B, T), labels (B,))`` triples, e.g. from
    :func:`qslm.eval.classification_batches` (they are kept, so a generator is fine). The model is
    called as ``model(ids, attention_mask=mask) -> logits (B, n_classes)`` (SpikeGPT's classifier
    and Hugging Face models take the mask by that keyword). Accuracy: higher is better; loss
    (nats per example): lower is better.
    """

    higher_is_better: bool

    def __init__(self, batches: Iterable[tuple[Any, Any, Any]], metric: str = "accuracy") -> None:
        if metric not in CLASSIFICATION_METRICS:
            raise SensitivityError(f"metric must be one of {CLASSIFICATION_METRICS}, "
                                   f"got {metric!r}")
        kept: list[tuple[Tensor, Tensor, Tensor]] = []
        for i, batch in enumerate(batches):
            try:
                ids, mask, labels = batch
            except (TypeError, ValueError):
                raise SensitivityError(f"batch {i} is not an (ids, attention_mask, labels) "
                                       "triple") from None
            ids = _as_long_2d(ids, f"batch {i} ids")
            mask = _as_long_2d(mask, f"batch {i} attention_mask")
            labels = torch.as_tensor(labels).detach().cpu().to(torch.int64).reshape(-1)
            if mask.shape != ids.shape or labels.numel() != ids.shape[0]:
                raise SensitivityError(f"batch {i}: ids {tuple(ids.shape)}, attention_mask "
                                       f"{tuple(mask.shape)} and labels {tuple(labels.shape)} "
                                       "do not agree")
            if int(labels.min()) < 0:
                raise SensitivityError(f"batch {i} holds a negative (missing) label")
            kept.append((ids, mask, labels))
        if not kept:
            raise SensitivityError("a ClassificationTask needs at least one batch")
        self.batches = tuple(kept)
        self.kind = metric
        self.name = f"classification-{metric}"
        self.higher_is_better = metric == "accuracy"

    def metric(self, model: nn.Module) -> float:
        dev = _model_device(model)
        n = correct = 0
        loss = 0.0
        with torch.no_grad(), _eval_mode(model):
            for ids, mask, labels in self.batches:
                logits = model(ids.to(dev), attention_mask=mask.to(dev))
                if not isinstance(logits, Tensor) or logits.ndim != 2 or \
                        logits.shape[0] != ids.shape[0]:
                    got = tuple(logits.shape) if isinstance(logits, Tensor) \
                        else type(logits).__name__
                    raise SensitivityError(f"the classifier must return logits (B, n_classes) "
                                           f"= ({ids.shape[0]}, K), got {got}")
                if int(labels.max()) >= logits.shape[1]:
                    raise SensitivityError(f"label {int(labels.max())} is outside the "
                                           f"classifier's {logits.shape[1]} classes")
                y = labels.to(logits.device)
                if self.kind == "accuracy":
                    correct += int((logits.argmax(dim=-1) == y).sum())
                else:
                    loss += float(F.cross_entropy(logits.float(), y, reduction="sum"))
                n += labels.numel()
        return correct / n if self.kind == "accuracy" else loss / n

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"qslm.ClassificationTask/1|metric={self.kind}|"
                           f"n_batches={len(self.batches)}|".encode())
        for batch in self.batches:
            for t in batch:
                _hash_tensor(h, t)
        return h.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "n_batches": len(self.batches),
                "n_examples": sum(int(b[2].numel()) for b in self.batches)}

    def __repr__(self) -> str:
        return f"ClassificationTask({len(self.batches)} batches, metric={self.kind!r})"


# ================================================================================================
# Fingerprints
# ================================================================================================


def model_fingerprint(model: nn.Module) -> str:
    """Hex sha256 of the model's class name, config (``model.config.to_dict()`` if any) and state
    dict (every entry's name, dtype, shape and bytes, in sorted key order). Stable across runs
    and processes; changes with any weight bit or config switch. Take it with no fake-quant
    applied (it hashes the weights as they are)."""
    if not isinstance(model, nn.Module):
        raise SensitivityError(f"model must be a torch nn.Module, got {type(model).__name__}")
    h = hashlib.sha256(f"qslm.model/1|{type(model).__qualname__}|".encode())
    config = getattr(model, "config", None)
    if callable(getattr(config, "to_dict", None)):
        h.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    h.update(b"|")
    for key, t in sorted(model.state_dict().items()):
        h.update(key.encode() + b"\0")
        _hash_tensor(h, t)
    return h.hexdigest()


def data_fingerprint(task: Task) -> str:
    """The task's fingerprint (its kind, options and data; see :class:`Task`)."""
    fp = getattr(task, "fingerprint", None)
    if not callable(fp):
        raise SensitivityError(f"{type(task).__name__} has no fingerprint() method: a task must "
                               "say what identifies its data (see qslm.sensitivity.Task)")
    value = fp()
    if not isinstance(value, str) or not value or not all(c in "0123456789abcdef" for c in value):
        raise SensitivityError(f"{type(task).__name__}.fingerprint() must return a lowercase "
                               f"hex digest, got {value!r}")
    return value


def _task_info(task: Task) -> dict[str, Any]:
    describe = getattr(task, "describe", None)
    info = dict(describe()) if callable(describe) else {}
    info.update(name=str(getattr(task, "name", type(task).__name__)),
                higher_is_better=bool(task.higher_is_better))
    return info


# ================================================================================================
# Measurements: independent, picklable task descriptions, and the one loop over them
# ================================================================================================


@dataclass(frozen=True)
class Measurement:
    """One evaluation: the baseline, one module, or one block, at one spec."""

    kind: str  # "baseline" | "module" | "block"
    name: str = ""  # the module or block name ("" for the baseline)
    modules: tuple[str, ...] = ()  # the modules quantized (the module itself, a block's leaves)
    spec: QuantSpec | None = None  # None only for the baseline

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SensitivityError(f"measurement kind must be one of {KINDS}, got {self.kind!r}")
        object.__setattr__(self, "modules", tuple(self.modules))
        if self.kind == "baseline":
            if self.name or self.modules or self.spec is not None:
                raise SensitivityError("a baseline measurement has no name, modules or spec")
            return
        if not isinstance(self.spec, QuantSpec):
            raise SensitivityError(f"{self.kind} measurement {self.name!r} needs a QuantSpec, "
                                   f"got {self.spec!r}")
        if not self.name or not self.modules:
            raise SensitivityError(f"{self.kind} measurement needs a name and modules")
        if self.kind == "module" and self.modules != (self.name,):
            raise SensitivityError(f"module measurement {self.name!r} must quantize exactly "
                                   f"that module, got {self.modules}")

    @classmethod
    def baseline(cls) -> Measurement:
        return cls("baseline")

    @classmethod
    def module(cls, name: str, spec: QuantSpec) -> Measurement:
        return cls("module", name, (name,), spec)

    @classmethod
    def block(cls, name: str, modules: Sequence[str], spec: QuantSpec) -> Measurement:
        return cls("block", name, tuple(modules), spec)

    def plan(self) -> QuantPlan:
        """The plan that quantizes exactly :attr:`modules` with :attr:`spec` (empty: baseline)."""
        return QuantPlan(dict.fromkeys(self.modules, self.spec))

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "modules": list(self.modules),
                "spec": None if self.spec is None else self.spec.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Measurement:
        spec = d.get("spec")
        try:
            return cls(d["kind"], d["name"], tuple(d["modules"]),
                       None if spec is None else QuantSpec.from_dict(spec))
        except (KeyError, TypeError, PlanError) as exc:
            raise SensitivityError(f"bad measurement record: {exc}") from None

    def key(self) -> str:
        """Canonical JSON of the measurement: the cache key."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class MeasurementResult:
    measurement: Measurement
    metric: float  # the task metric with the measurement's plan applied
    seconds: float = 0.0  # wall time of the evaluation

    def to_record(self) -> dict[str, Any]:
        return {**self.measurement.to_dict(), "metric": self.metric,
                "seconds": round(self.seconds, 6)}

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> MeasurementResult:
        m = Measurement.from_dict(d)
        metric = d.get("metric")
        if isinstance(metric, bool) or not isinstance(metric, (int, float)):
            raise SensitivityError(f"bad metric {metric!r} in a measurement record")
        return cls(m, float(metric), float(d.get("seconds", 0.0)))


@contextlib.contextmanager
def _seeded(model: nn.Module, seed: int) -> Iterator[None]:
    """Fixed torch RNG inside the block; the caller's RNG state (CPU and the model's CUDA
    devices) restored after it."""
    devices = sorted({t.device.index for t in model.parameters()
                      if t.device.type == "cuda" and t.device.index is not None})
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _under_plan(model: nn.Module, plan: QuantPlan, seed: int, fn: Callable[[nn.Module], Any]):
    with _seeded(model, seed):
        if plan.default is None and all(v is None for v in plan.entries.values()):
            return fn(model)
        with apply_fake_quant(model, plan):
            return fn(model)


def evaluate_plan(model: nn.Module, task: Task, plan: QuantPlan, seed: int = SEED) -> float:
    """``task.metric(model)`` with ``plan`` applied as fake-quant (a plan that quantizes
    nothing: the model as it is), under a fixed RNG seed that leaves the caller's RNG state
    alone; the weights are restored bit for bit afterwards, also when the task raises. A pure
    function of ``(model, task, plan)``: what every executor (:mod:`qslm.executor`) runs."""
    return float(_under_plan(model, plan, seed, task.metric))


def measure_plan(model: nn.Module, measure: Callable[[nn.Module], Mapping[str, Any]],
                 plan: QuantPlan, seed: int = SEED) -> dict[str, Any]:
    """Like :func:`evaluate_plan` for a measurement that reports several values
    (``measure(model) -> {name: value}``, e.g. a search's final test-split measurement)."""
    return dict(_under_plan(model, plan, seed, measure))


def evaluate_measurement(model: nn.Module, task: Task, measurement: Measurement,
                         seed: int = SEED) -> float:
    """:func:`evaluate_plan` of ``measurement``'s plan (only its modules quantized; none for
    the baseline)."""
    return evaluate_plan(model, task, measurement.plan(), seed)


def plan_measurements(hierarchy: Hierarchy, specs: Sequence[QuantSpec], *,
                      blocks: bool = True) -> list[Measurement]:
    """Every measurement a sensitivity table needs: the baseline, each module at each spec, and
    (``blocks``) each block of two or more modules at each spec — a single-module block's
    sensitivity is its module's."""
    out = [Measurement.baseline()]
    for name in hierarchy.module_names:
        out += [Measurement.module(name, s) for s in specs]
    if blocks:
        for block in hierarchy.blocks:
            if len(block.leaves) > 1:
                out += [Measurement.block(block.name, block.module_names, s) for s in specs]
    return out


# ================================================================================================
# The cache
# ================================================================================================


class SensitivityCache:
    """Measurement results of one (model, task) pair, in memory and — with a ``cache_dir`` — in
    ``cache_dir/<model_fp>/<task_fp>.jsonl`` (see the module docstring)."""

    def __init__(self, cache_dir: str | os.PathLike[str] | None, model_fp: str, task_fp: str,
                 task_info: Mapping[str, Any] | None = None) -> None:
        self.model_fp, self.task_fp = model_fp, task_fp
        self.task_info = dict(task_info or {})
        self.results: dict[str, MeasurementResult] = {}
        if cache_dir is None:
            self.path = self.meta_path = None
        else:
            d = Path(cache_dir) / model_fp
            self.path = d / f"{task_fp}.jsonl"
            self.meta_path = d / f"{task_fp}.meta.json"

    def load(self) -> dict[str, MeasurementResult]:
        """Create or check the metadata, read every good line; returns key → result."""
        if self.path is None:
            return self.results
        self._check_or_create_meta()
        if not self.path.exists():
            return self.results
        data = self.path.read_bytes()
        bad = 0
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
                if not isinstance(rec, dict):
                    raise SensitivityError("not an object")
                result = MeasurementResult.from_record(rec)
            except (ValueError, SensitivityError):  # JSONDecodeError, UnicodeDecodeError too
                bad += 1
                continue
            self.results[result.measurement.key()] = result
        if bad:
            warnings.warn(f"{self.path}: ignored {bad} corrupt or truncated line(s) (an "
                          "interrupted run?); those measurements are taken again",
                          SensitivityCacheWarning, stacklevel=3)
        if bad or not data.endswith(b"\n"):
            self._rewrite()
        return self.results

    def append(self, result: MeasurementResult) -> None:
        """Record ``result`` (on disk at once: one line, flushed and fsynced)."""
        self.results[result.measurement.key()] = result
        if self.path is None:
            return
        line = json.dumps(result.to_record(), sort_keys=True) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def _rewrite(self) -> None:
        assert self.path is not None
        text = "".join(json.dumps(r.to_record(), sort_keys=True) + "\n"
                       for r in self.results.values())
        atomic_write_bytes(self.path, text.encode("utf-8"))

    def _meta(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "model_fingerprint": self.model_fp,
                "task_fingerprint": self.task_fp, "task": self.task_info,
                "created_utc": datetime.now(UTC).isoformat(timespec="seconds")}

    def _check_or_create_meta(self) -> None:
        assert self.meta_path is not None
        if not self.meta_path.exists():
            atomic_write_bytes(self.meta_path,
                               (json.dumps(self._meta(), indent=2) + "\n").encode("utf-8"))
            return
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SensitivityCacheError(f"{self.meta_path}: unreadable sensitivity cache "
                                        f"metadata ({exc}); delete {self.meta_path.parent} to "
                                        "start over") from None
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            got = meta.get("format_version") if isinstance(meta, dict) else meta
            raise SensitivityCacheError(f"{self.meta_path}: sensitivity cache format_version "
                                        f"{got!r}, this qslm reads {FORMAT_VERSION}; delete "
                                        f"{self.meta_path.parent} to start over")
        for field_, mine in (("model_fingerprint", self.model_fp),
                             ("task_fingerprint", self.task_fp)):
            if meta.get(field_) != mine:
                raise SensitivityCacheError(f"{self.meta_path}: {field_} {meta.get(field_)!r} "
                                            f"does not match {mine!r} (a moved cache file?)")


# ================================================================================================
# The table
# ================================================================================================


@dataclass(frozen=True, eq=False)
class SensitivityTable:
    """Baseline metric, and the metric of every (module, spec) and (block, spec) measured.

    ``delta`` / ``block_delta`` are degradations (positive = worse; :func:`degradation`).
    """

    task_name: str
    higher_is_better: bool
    baseline: float  # metric of the unquantized model
    specs: tuple[QuantSpec, ...]
    blocks: dict[str, tuple[str, ...]]  # block → its modules, in model order
    module_metrics: dict[tuple[str, QuantSpec], float]
    block_metrics: dict[tuple[str, QuantSpec], float] = field(default_factory=dict)
    model_fingerprint: str = ""
    task_fingerprint: str = ""
    n_evaluations: int = 0  # evaluations run to build this table (0: all from the cache)
    n_cached: int = 0  # measurements taken from the cache

    @property
    def modules(self) -> tuple[str, ...]:
        return tuple(m for ms in self.blocks.values() for m in ms)

    def _lookup(self, table: Mapping[tuple[str, QuantSpec], float], what: str, name: str,
                spec: QuantSpec) -> float:
        try:
            return table[(name, spec)]
        except KeyError:
            raise SensitivityError(f"no sensitivity measured for {what} {name!r} at {spec} "
                                   f"({spec.to_dict()}); measured specs: "
                                   f"{', '.join(map(str, self.specs))}") from None

    def metric(self, module: str, spec: QuantSpec) -> float:
        """Task metric with only ``module`` quantized with ``spec``."""
        return self._lookup(self.module_metrics, "module", module, spec)

    def delta(self, module: str, spec: QuantSpec) -> float:
        """Degradation when only ``module`` is quantized with ``spec``."""
        return degradation(self.higher_is_better, self.baseline, self.metric(module, spec))

    def block_metric(self, block: str, spec: QuantSpec) -> float:
        """Task metric with every module of ``block`` quantized with ``spec``."""
        if (block, spec) not in self.block_metrics and len(self.blocks.get(block, ())) == 1:
            return self.metric(self.blocks[block][0], spec)  # a single-module block
        return self._lookup(self.block_metrics, "block", block, spec)

    def block_delta(self, block: str, spec: QuantSpec) -> float:
        """Degradation when every module of ``block`` is quantized with ``spec``."""
        return degradation(self.higher_is_better, self.baseline, self.block_metric(block, spec))

    def deltas(self, spec: QuantSpec) -> dict[str, float]:
        """Module → degradation at ``spec``, in model order."""
        return {m: self.delta(m, spec) for m in self.modules}

    def block_deltas(self, spec: QuantSpec) -> dict[str, float]:
        """Block → degradation at ``spec``, in model order."""
        return {b: self.block_delta(b, spec) for b in self.blocks}

    def predict(self, plan: QuantPlan) -> float:
        """Predicted degradation of ``plan``: the sum of the module sensitivities of the modules
        it quantizes (the additive assumption of the QSLM paper's sensitivity-guided search and
        of HAWQ-style methods: module effects do not interact). 0 for a plan that quantizes
        nothing. Raises :class:`~qslm.errors.SensitivityError` for a (module, spec) that was not
        measured and :class:`~qslm.errors.PlanError` for a plan key that names no module."""
        if not isinstance(plan, QuantPlan):
            raise SensitivityError(f"plan must be a QuantPlan, got {type(plan).__name__}")
        specs = plan.resolve(self.modules, strict=True)
        return math.fsum(self.delta(m, s) for m, s in specs.items() if s is not None)

    def predict_metric(self, plan: QuantPlan) -> float:
        """The task metric :meth:`predict` implies: baseline worsened by the predicted delta."""
        d = self.predict(plan)
        return self.baseline - d if self.higher_is_better else self.baseline + d

    # ---- (de)serialization ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "task": {"name": self.task_name, "higher_is_better": self.higher_is_better},
            "model_fingerprint": self.model_fingerprint,
            "task_fingerprint": self.task_fingerprint,
            "baseline": self.baseline,
            "specs": [s.to_dict() for s in self.specs],
            "blocks": {b: list(ms) for b, ms in self.blocks.items()},
            "modules": [{"name": n, "spec": s.to_dict(), "metric": v}
                        for (n, s), v in self.module_metrics.items()],
            "block_results": [{"name": n, "spec": s.to_dict(), "metric": v}
                              for (n, s), v in self.block_metrics.items()],
            "n_evaluations": self.n_evaluations,
            "n_cached": self.n_cached,
        }

    @classmethod
    def from_dict(cls, d: Any) -> SensitivityTable:
        if not isinstance(d, Mapping) or d.get("format_version") != FORMAT_VERSION:
            got = d.get("format_version") if isinstance(d, Mapping) else type(d).__name__
            raise SensitivityError(f"sensitivity table format_version must be {FORMAT_VERSION}, "
                                   f"got {got!r}")
        try:
            def rows(key: str) -> dict[tuple[str, QuantSpec], float]:
                return {(str(r["name"]), QuantSpec.from_dict(r["spec"])): float(r["metric"])
                        for r in d.get(key, [])}

            return cls(
                task_name=str(d["task"]["name"]),
                higher_is_better=bool(d["task"]["higher_is_better"]),
                baseline=float(d["baseline"]),
                specs=tuple(QuantSpec.from_dict(s) for s in d["specs"]),
                blocks={str(b): tuple(ms) for b, ms in d["blocks"].items()},
                module_metrics=rows("modules"),
                block_metrics=rows("block_results"),
                model_fingerprint=str(d.get("model_fingerprint", "")),
                task_fingerprint=str(d.get("task_fingerprint", "")),
                n_evaluations=int(d.get("n_evaluations", 0)),
                n_cached=int(d.get("n_cached", 0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError, PlanError) as exc:
            raise SensitivityError(f"bad sensitivity table: {exc}") from None

    def __repr__(self) -> str:
        return (f"SensitivityTable({self.task_name}, baseline={self.baseline:.6g}, "
                f"{len(self.module_metrics)} module and {len(self.block_metrics)} block "
                f"measurements, specs {', '.join(map(str, self.specs))})")


# ================================================================================================
# The entry point
# ================================================================================================


def _check_specs(specs: Any) -> tuple[QuantSpec, ...]:
    if isinstance(specs, QuantSpec) or not isinstance(specs, Iterable):
        raise SensitivityError("specs must be a list of QuantSpec")
    out: list[QuantSpec] = []
    for s in specs:
        if not isinstance(s, QuantSpec):
            raise SensitivityError(f"specs must be QuantSpec objects, got {type(s).__name__} "
                                   f"{s!r}")
        if s not in out:
            out.append(s)
    if not out:
        raise SensitivityError("specs is empty: give at least one candidate QuantSpec")
    return tuple(out)


def measure_sensitivity(model: nn.Module, task: Task, specs: Sequence[QuantSpec],
                        hierarchy: Hierarchy | None = None,
                        cache_dir: str | os.PathLike[str] | None = None, *,
                        blocks: bool = True, progress: bool = True,
                        executor: Executor | None = None) -> SensitivityTable:
    """Sensitivity of every module of ``hierarchy`` (default: :func:`build_hierarchy`) at every
    spec of ``specs``, block sensitivities (``blocks``), and the baseline, on ``task``.

    Results come from, and go to, the cache under ``cache_dir`` (None: no disk cache); only the
    missing measurements are evaluated, each appended to the cache as soon as it is known. They
    run on ``executor`` (default: in-process; :mod:`qslm.executor` for worker processes and
    Ray), in any order. The model is left exactly as it was (checked: its fingerprint after the
    run must equal the one before).
    """
    from qslm.executor import Executor, InProcessExecutor, Job

    if not isinstance(model, nn.Module):
        raise SensitivityError(f"model must be a torch nn.Module, got {type(model).__name__}")
    if not isinstance(task, Task):
        raise SensitivityError(f"task must implement qslm.sensitivity.Task (name, "
                               f"higher_is_better, metric(), fingerprint()), got "
                               f"{type(task).__name__}")
    if executor is not None and not isinstance(executor, Executor):
        raise SensitivityError(f"executor must be a qslm.executor.Executor, got "
                               f"{type(executor).__name__}")
    spec_list = _check_specs(specs)
    hierarchy = build_hierarchy(model) if hierarchy is None else hierarchy
    if not isinstance(hierarchy, Hierarchy):
        raise SensitivityError(f"hierarchy must be a Hierarchy, got {type(hierarchy).__name__}")
    known = quantizable_modules(model)
    missing = [m for m in hierarchy.module_names if m not in known]
    if missing:
        raise SensitivityError(f"hierarchy module(s) {', '.join(map(repr, missing[:5]))} are not "
                               "quantizable modules of the model (a hierarchy of another model?)")

    model_fp = model_fingerprint(model)
    task_fp = data_fingerprint(task)
    cache = SensitivityCache(cache_dir, model_fp, task_fp, _task_info(task))
    done = cache.load()
    wanted = plan_measurements(hierarchy, spec_list, blocks=blocks)
    pending = {m.key(): m for m in wanted if m.key() not in done}

    n_eval = 0
    if pending:
        executor = executor if executor is not None else InProcessExecutor()
        jobs = [Job.of(k, m.plan()) for k, m in pending.items()]
        bar = tqdm(total=len(jobs), desc="sensitivity", unit="eval", disable=not progress)
        try:
            for r in executor.run(model, task, jobs):
                m = pending.get(r.key)
                if m is None or m.key() in done:
                    raise SensitivityError(f"the executor returned a result for a measurement "
                                           f"it was not given (or twice): {r.key}")
                cache.append(MeasurementResult(m, r.metric, r.seconds))
                n_eval += 1
                bar.update()
        finally:
            bar.close()
        lost = [m for k, m in pending.items() if k not in done]
        if lost:
            raise SensitivityError(f"the executor returned no result for {len(lost)} "
                                   f"measurement(s), e.g. {lost[0]}")
        if model_fingerprint(model) != model_fp:
            raise SensitivityError("the model's weights changed during the sensitivity "
                                   "measurements (an executor that does not restore them?)")

    base = done[Measurement.baseline().key()].metric
    module_metrics: dict[tuple[str, QuantSpec], float] = {}
    block_metrics: dict[tuple[str, QuantSpec], float] = {}
    for m in wanted:
        if m.kind == "baseline":
            continue
        assert m.spec is not None
        target = module_metrics if m.kind == "module" else block_metrics
        target[(m.name, m.spec)] = done[m.key()].metric
    return SensitivityTable(
        task_name=str(getattr(task, "name", type(task).__name__)),
        higher_is_better=bool(task.higher_is_better),
        baseline=base,
        specs=spec_list,
        blocks={b.name: b.module_names for b in hierarchy.blocks},
        module_metrics=module_metrics,
        block_metrics=block_metrics,
        model_fingerprint=model_fp,
        task_fingerprint=task_fp,
        n_evaluations=n_eval,
        n_cached=len(wanted) - len(pending),
    )
