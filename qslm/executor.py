"""Runners of independent sensitivity measurements beyond the in-process loop.

:func:`qslm.sensitivity.measure_sensitivity` takes a ``runner`` (``(model, task, measurements) →
results``, in any order, as each completes); :func:`qslm.sensitivity.run_measurements` is the
in-process one. :class:`ProcessPoolRunner` spreads the measurements over local worker processes
(``concurrent.futures`` with the ``spawn`` start method, so no forked torch thread pools):

* what a worker receives, once, when it starts: the model (``torch.save`` bytes of the module,
  weights included: a private copy) and the task (tasks are picklable by the :class:`~qslm.sensitivity.Task`
  contract); then one :class:`~qslm.sensitivity.Measurement` per call;
* each worker runs torch on ``threads_per_worker`` threads (default 1); a measurement is the
  same pure function :func:`~qslm.sensitivity.evaluate_measurement` as in-process, so with the
  same thread count the results are identical;
* a worker that dies (killed, out of memory) breaks the pool: the pool is restarted and the
  measurements without a result are submitted again, at most ``retries`` times, after which a
  :class:`~qslm.errors.QslmError` names what was lost. Results already yielded are never
  recomputed (and ``measure_sensitivity`` has appended them to its cache).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from torch import nn

from qslm.errors import QslmError

__all__ = ["ProcessPoolRunner"]

_WORKER: dict = {}


def _model_bytes(model: nn.Module) -> bytes:
    """The model serialized to bytes. Not the tensors themselves: torch's multiprocessing
    pickler would move their storage into shared memory, and every worker's in-place
    fake-quant would then write into the parent's (and each other's) weights."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(model, buf)
    return buf.getvalue()


def _init_worker(model_bytes: bytes, task, threads: int) -> None:
    import io

    import torch

    torch.set_num_threads(threads)
    model = torch.load(io.BytesIO(model_bytes), weights_only=False, map_location="cpu")
    _WORKER["model"], _WORKER["task"] = model.eval(), task


def _run_one(measurement):
    from qslm.sensitivity import MeasurementResult, evaluate_measurement

    t0 = time.perf_counter()
    value = evaluate_measurement(_WORKER["model"], _WORKER["task"], measurement)
    return MeasurementResult(measurement, value, time.perf_counter() - t0)


class ProcessPoolRunner:
    """A sensitivity runner over ``workers`` local processes (see the module docstring)."""

    def __init__(self, workers: int = 2, *, threads_per_worker: int = 1, retries: int = 2) -> None:
        for name, v, low in (("workers", workers, 1), ("threads_per_worker", threads_per_worker, 1),
                             ("retries", retries, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise QslmError(f"{name} must be an integer >= {low}, got {v!r}")
        self.workers, self.threads, self.retries = workers, threads_per_worker, retries
        self.restarts = 0  # pools restarted after a worker died (over this runner's life)

    def __call__(self, model: nn.Module, task, measurements: Sequence) -> Iterator:
        left = {m.key(): m for m in measurements}
        attempt = 0
        while left:
            try:
                yield from self._run_pool(model, task, left)
            except BrokenProcessPool:
                attempt += 1
                self.restarts += 1
                if attempt > self.retries:
                    first = next(iter(left.values()))
                    raise QslmError(f"sensitivity workers died {attempt} times; {len(left)} "
                                    f"measurement(s) without a result, e.g. {first}") from None

    def _run_pool(self, model, task, left: dict) -> Iterator:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(_model_bytes(model), task, self.threads)) as pool:
            futures = {pool.submit(_run_one, m): k for k, m in left.items()}
            while futures:
                done, _ = wait(futures, return_when=FIRST_COMPLETED)
                for f in done:
                    key = futures.pop(f)
                    result = f.result()  # raises BrokenProcessPool if a worker died
                    del left[key]
                    yield result
