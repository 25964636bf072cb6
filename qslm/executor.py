"""Executors: where the independent evaluations of the sensitivity pass and the search run.

Both the sensitivity pass (:func:`qslm.sensitivity.measure_sensitivity`) and the search's full
evaluations (:class:`qslm.search.core.Evaluator`) reduce their work to **jobs**: "the task's
metric on the model with this quantization plan applied as fake-quant". A job is a pure function
of ``(model, task, plan)`` (:func:`run_job`: plan applied, task evaluated under the fixed seed
:data:`qslm.sensitivity.SEED`, weights restored bit for bit), so *where* it runs cannot change its
result. An :class:`Executor` runs a batch of jobs and yields each :class:`JobResult` as soon as it
is known, in any order:

* :class:`InProcessExecutor` (``--executor inproc``, the default): one after the other, on the
  caller's model, in the caller's torch thread pool.
* :class:`LocalPoolExecutor` (``--executor pool``): ``workers`` local processes (``spawn``,
  so no forked torch thread pools), kept alive across batches.
* :class:`RayExecutor` (``--executor ray``): tasks on a Ray cluster — a local one it starts, or
  an existing one (``--ray-address auto|HOST:PORT``); CPU and GPU workers through Ray resource
  requests. Needs the ``ray`` extra (``pip install -e '.[ray]'``).

What is sent to a worker
------------------------
* the **model**, once per worker process: ``torch.save`` bytes of the module (architecture and
  weights; a private copy — pickling the tensors themselves would put their storage in shared
  memory, and the workers' in-place fake-quant would then write into the caller's weights). The
  pool writes the bytes to a private temporary file; Ray puts them in its object store
  (``ray.put``, once per executor and model state). Each job carries only the reference and a
  digest; a worker loads the model on its first job and keeps it (a small per-process cache
  keyed by the digest). Changing the caller's weights (a new ``_version``) ships them again.
* the **task** (its options and data: calibration windows or sentences; tasks are picklable by
  the :class:`~qslm.sensitivity.Task` contract), shipped the same way, keyed by the sha256 of its
  pickle;
* per job: the **plan** as JSON (:meth:`~qslm.quant.QuantPlan.to_dict`), its key, and the torch
  thread count. Back comes ``(key, metric, seconds, worker)``.

Results are identical to the in-process run at the same torch thread count (a float reduction
may be ordered differently with another thread count). The workers run ``threads_per_worker``
torch threads (default 1); compare against an in-process run with ``torch.set_num_threads(1)``.

Failures
--------
A worker process that dies (killed, out of memory, its node lost) takes its running jobs with
it. The pool restarts itself and resubmits only the jobs without a result; Ray resubmits the
lost task itself (``max_retries``). Either way at most ``retries`` times, after which a
:class:`~qslm.errors.QslmError` names a job that was lost. Results yielded before the failure
are never recomputed: the sensitivity cache and ``evals.jsonl`` record each one as it arrives,
and a rerun (``--resume``) reads them back. An exception raised *by the task* (bad data, a bug)
is not a worker failure: it is re-raised in the caller as is, without retries.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import pickle
import shutil
import socket
import tempfile
import time
import weakref
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, wait
from concurrent.futures import ProcessPoolExecutor as _Pool
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from torch import nn

from qslm.errors import QslmError

__all__ = [
    "EXECUTORS",
    "Executor",
    "ExecutorError",
    "InProcessExecutor",
    "Job",
    "JobResult",
    "LocalPoolExecutor",
    "RayExecutor",
    "check_executor_options",
    "make_executor",
    "run_job",
]

EXECUTORS = ("inproc", "pool", "ray")


class ExecutorError(QslmError, RuntimeError):
    """Work could not be run: workers lost beyond the retries, Ray missing or unreachable."""


# ================================================================================================
# Jobs
# ================================================================================================


@dataclass(frozen=True)
class Job:
    """One evaluation: ``key`` (the caller's identifier, unique in a batch) and ``plan``, a
    :class:`~qslm.quant.QuantPlan` in its JSON form (a plan that quantizes nothing: the model as
    it is). ``measure``: the "task" is a callable ``model -> {name: value}`` (a search's final
    measurement) rather than a :class:`~qslm.sensitivity.Task`."""

    key: str
    plan: Mapping[str, Any]
    measure: bool = False

    @classmethod
    def of(cls, key: str, plan: Any, *, measure: bool = False) -> Job:
        return cls(key, plan.to_dict(), measure)


@dataclass(frozen=True)
class JobResult:
    key: str
    metric: Any  # the task's metric (a float) with the job's plan applied; a dict for measure
    seconds: float  # wall time of the evaluation in the worker
    worker: str = ""  # "host:pid" of the process that ran it


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_job(model: nn.Module, task: Any, job: Job) -> JobResult:
    """Evaluate one job on ``model`` (what every executor runs, wherever it runs)."""
    from qslm.quant import QuantPlan
    from qslm.sensitivity import evaluate_plan, measure_plan

    t0 = time.perf_counter()
    plan = QuantPlan.from_dict(job.plan, where=f"job {job.key}")
    value = (measure_plan if job.measure else evaluate_plan)(model, task, plan)
    return JobResult(job.key, value, time.perf_counter() - t0, _worker_id())


def _check_jobs(jobs: Sequence[Job]) -> list[Job]:
    jobs = list(jobs)
    keys = [j.key for j in jobs]
    if len(set(keys)) != len(keys):
        raise ExecutorError("a batch of jobs holds the same key twice")
    return jobs


def _model_state_token(model: nn.Module) -> tuple:
    """Cheap identity of the model's current weights: the object, and every tensor's storage
    and in-place version counter (fake-quant and any ``copy_`` bump it)."""
    return (id(model),) + tuple((t.data_ptr(), t._version) for t in model.state_dict().values())


def _model_bytes(model: nn.Module) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(model, buf)
    return buf.getvalue()


def _load_model(data: bytes, device: str = "cpu") -> nn.Module:
    import torch

    model = torch.load(io.BytesIO(data), weights_only=False, map_location="cpu")
    return model.to(device).eval()


# Per-process cache of the worker side: digest → model or task (a few entries: a search holds
# one model and two tasks; older ones are dropped).
_CACHE: OrderedDict[str, Any] = OrderedDict()
_CACHE_SIZE = 4


def _cached(digest: str, load) -> Any:
    if digest in _CACHE:
        _CACHE.move_to_end(digest)
        return _CACHE[digest]
    value = load()
    _CACHE[digest] = value
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return value


class _Shipper:
    """Serializes the model (once per model state) and tasks (once per task object: tasks do not
    change, by the :class:`~qslm.sensitivity.Task` contract) and hands out ``(digest, reference)``
    pairs; ``put(data) -> reference`` is the backend's way of storing bytes where its workers
    can read them. A search calls :meth:`task` for every batch of evaluations: the task (its
    data, possibly large) is pickled and hashed only the first time."""

    def __init__(self, put) -> None:
        self._put = put
        self._model: tuple[tuple, str, Any] | None = None
        self._tasks: dict[int, tuple[Any, str, Any]] = {}  # id → (task kept alive, digest, ref)

    def model(self, model: nn.Module) -> tuple[str, Any]:
        token = _model_state_token(model)
        if self._model is None or self._model[0] != token:
            data = _model_bytes(model)
            digest = "model-" + hashlib.sha256(data).hexdigest()[:32]
            self._model = (token, digest, self._put(digest, data))
        return self._model[1], self._model[2]

    def task(self, task: Any) -> tuple[str, Any]:
        known = self._tasks.get(id(task))
        if known is None:
            try:
                data = pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:  # noqa: BLE001 - any pickling failure means the same thing
                raise ExecutorError(f"the task {type(task).__name__} cannot be sent to workers: "
                                    f"it is not picklable ({exc})") from None
            digest = "task-" + hashlib.sha256(data).hexdigest()[:32]
            known = self._tasks[id(task)] = (task, digest, self._put(digest, data))
        return known[1], known[2]


# ================================================================================================
# Executors
# ================================================================================================


class Executor(ABC):
    """Runs batches of jobs; see the module docstring. Use as a context manager (or call
    :meth:`close`) to release workers."""

    kind: str = ""
    workers: int = 1  # jobs that run at the same time

    def __init__(self) -> None:
        self.n_jobs = 0  # jobs whose result was delivered
        self.n_retried = 0  # jobs resubmitted after their worker died (pool: counted here)

    @abstractmethod
    def run(self, model: nn.Module, task: Any, jobs: Sequence[Job]) -> Iterator[JobResult]:
        """Evaluate every job; yield each result once, as it completes (any order)."""

    def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release the workers (idempotent)."""

    def describe(self) -> dict[str, Any]:
        return {"executor": self.kind, "workers": self.workers}

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class InProcessExecutor(Executor):
    """Jobs one after the other on the caller's model (the default)."""

    kind = "inproc"

    def run(self, model: nn.Module, task: Any, jobs: Sequence[Job]) -> Iterator[JobResult]:
        for job in _check_jobs(jobs):
            result = run_job(model, task, job)
            self.n_jobs += 1
            yield result


def _check_int(name: str, v: Any, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ExecutorError(f"{name} must be an integer >= {low}, got {v!r}")
    return v


# ---- local process pool ------------------------------------------------------------------------


def _pool_job(model_ref: tuple[str, str], task_ref: tuple[str, str], job: Job,
              threads: int) -> JobResult:
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    (m_digest, m_path), (t_digest, t_path) = model_ref, task_ref
    model = _cached(m_digest, lambda: _load_model(_read(m_path)))
    task = _cached(t_digest, lambda: pickle.loads(_read(t_path)))
    return run_job(model, task, job)


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


class LocalPoolExecutor(Executor):
    """``workers`` local worker processes, each on ``threads_per_worker`` torch threads."""

    kind = "pool"

    def __init__(self, workers: int = 2, *, threads_per_worker: int = 1,
                 retries: int = 2) -> None:
        super().__init__()
        self.workers = _check_int("workers", workers, 1)
        self.threads = _check_int("threads_per_worker", threads_per_worker, 1)
        self.retries = _check_int("retries", retries, 0)
        self.restarts = 0  # pools restarted after a worker died
        self._interrupted = False
        self._dir: str | None = None
        self._pool: _Pool | None = None
        self._shipper = _Shipper(self._write)

    def _write(self, digest: str, data: bytes) -> str:
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="qslm-pool-")
            # removed by close(), or when the executor is collected / at exit if never closed
            weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
        path = os.path.join(self._dir, digest)
        if not os.path.exists(path):
            tmp = path + ".tmp"
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        return path

    def _get_pool(self) -> _Pool:
        if self._pool is None:
            self._pool = _Pool(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def run(self, model: nn.Module, task: Any, jobs: Sequence[Job]) -> Iterator[JobResult]:
        left = {j.key: j for j in _check_jobs(jobs)}
        model_ref = self._shipper.model(model)
        task_ref = self._shipper.task(task)
        failures = 0
        while left:
            pool = self._get_pool()
            futures = {pool.submit(_pool_job, model_ref, task_ref, j, self.threads): k
                       for k, j in left.items()}
            try:
                while futures:
                    done, _ = wait(futures, return_when=FIRST_COMPLETED)
                    for f in done:
                        key = futures.pop(f)
                        result = f.result()  # BrokenProcessPool if a worker died
                        del left[key]
                        self.n_jobs += 1
                        yield result
            except BrokenProcessPool:
                failures += 1
                self.restarts += 1
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
                if failures > self.retries:
                    raise ExecutorError(f"pool workers died {failures} times; {len(left)} "
                                        f"job(s) without a result, e.g. {next(iter(left))}") \
                        from None
                self.n_retried += len(left)
            except BaseException:
                for f in futures:
                    f.cancel()
                self._interrupted = True  # jobs may still run: close() stops the workers
                raise

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            if not self._interrupted:
                pool.shutdown(wait=True, cancel_futures=True)
            else:
                # after an interruption (Ctrl-C, an error in the caller) do not wait for a
                # graceful shutdown: it can hang on a half-fed call queue. Stop the workers.
                procs = list((getattr(pool, "_processes", None) or {}).values())
                pool.shutdown(wait=False, cancel_futures=True)
                for p in procs:
                    if p.is_alive():
                        p.terminate()
                for p in procs:
                    p.join(timeout=10)
                    if p.is_alive():
                        p.kill()
                        p.join()
            self._interrupted = False
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._shipper = _Shipper(self._write)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "threads_per_worker": self.threads,
                "retries": self.retries}


# ---- Ray ---------------------------------------------------------------------------------------


def _ray_job(model_ref: tuple[str, list], task_ref: tuple[str, list], job: Job, threads: int,
             use_gpu: bool) -> JobResult:
    """A Ray task. The model and task references come wrapped in lists so that Ray does not
    fetch them for every call: a worker process fetches each once (:func:`_cached`)."""
    import ray
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    (m_digest, [m_obj]), (t_digest, [t_obj]) = model_ref, task_ref
    if use_gpu and not torch.cuda.is_available():
        raise ExecutorError(f"the task asked for a GPU but torch sees no CUDA device on worker "
                            f"{_worker_id()} (a CPU-only torch build there?)")
    device = "cuda" if use_gpu else "cpu"
    model = _cached(f"{m_digest}@{device}", lambda: _load_model(ray.get(m_obj), device))
    task = _cached(t_digest, lambda: pickle.loads(ray.get(t_obj)))
    return run_job(model, task, job)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a HOST:PORT (or ray://HOST:PORT) nobody listens at: Ray itself keeps
    retrying for minutes."""
    if address == "auto":
        return  # Ray finds the local cluster's address, or says at once there is none
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ExecutorError(f"--ray-address must be auto, HOST:PORT or ray://HOST:PORT, got "
                            f"{address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ExecutorError(f"no Ray cluster answers at {address} ({exc.strerror or exc})") \
            from None


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ExecutorError("--executor ray needs Ray: pip install -e '.[ray]' (or "
                            "pip install 'ray>=2.9')") from None
    return ray


class RayExecutor(Executor):
    """Jobs as Ray tasks.

    ``address``: ``None`` starts a private local Ray instance with ``workers`` CPUs (shut down by
    :meth:`close`); ``"auto"`` joins the cluster this machine belongs to (``ray start``), or give
    ``"HOST:PORT"`` of its head (GCS) node; ``ray://HOST:10001`` uses Ray Client. When Ray is
    already initialised in this process, that connection is used as is.

    ``workers``: jobs in flight at once (default: the cluster's CPUs / ``num_cpus``, or its GPUs
    / ``num_gpus`` with GPUs). Each task requests ``num_cpus`` CPUs, ``num_gpus`` GPUs and the
    custom ``resources``; with ``num_gpus > 0`` the worker moves its copy of the model to CUDA.
    ``retries``: resubmissions of a task whose worker died (Ray's ``max_retries``).
    """

    kind = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, *,
                 num_cpus: float = 1, num_gpus: float = 0,
                 resources: Mapping[str, float] | None = None, threads_per_worker: int = 1,
                 retries: int = 2) -> None:
        super().__init__()
        if workers is not None:
            _check_int("workers", workers, 1)
        self.threads = _check_int("threads_per_worker", threads_per_worker, 1)
        self.retries = _check_int("retries", retries, 0)
        for name, v in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise ExecutorError(f"{name} must be a number >= 0, got {v!r}")
        if num_cpus == 0 and num_gpus == 0 and not resources:
            raise ExecutorError("a Ray task must request some resource (num_cpus, num_gpus or "
                                "resources)")
        ray = _import_ray()
        if address is not None and not ray.is_initialized():
            _check_reachable(address)
        self._started = False
        if not ray.is_initialized():
            try:
                if address is None:
                    ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False,
                             log_to_driver=False)
                else:
                    ray.init(address=address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                where = address or "a local instance"
                raise ExecutorError(f"cannot start or reach Ray ({where}): {first}") from None
            self._started = True
        self.address = address
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.resources = dict(resources or {})
        total = ray.cluster_resources()
        asked = {"CPU": num_cpus, "GPU": num_gpus, **self.resources}
        short = {k: v for k, v in asked.items() if v and total.get(k, 0) < v}
        if short:
            if self._started:
                ray.shutdown()
            have = ", ".join(f"{k} {total.get(k, 0):g}" for k in short)
            raise ExecutorError(f"the Ray cluster cannot run one task: each asks for "
                                f"{', '.join(f'{k} {v:g}' for k, v in short.items())}, the "
                                f"cluster has {have} (an autoscaling cluster needs one such "
                                "node up when the search starts)")
        if workers is None:
            per = [total.get("CPU", 0) / num_cpus if num_cpus else float("inf"),
                   total.get("GPU", 0) / num_gpus if num_gpus else float("inf")]
            per += [total.get(k, 0) / v for k, v in self.resources.items() if v]
            workers = max(1, int(min(per))) if min(per) != float("inf") else 1
        self.workers = workers
        self._remote = ray.remote(_ray_job).options(
            num_cpus=num_cpus, num_gpus=num_gpus, resources=self.resources or None,
            max_retries=self.retries, retry_exceptions=False)
        self._shipper = _Shipper(lambda digest, data: [ray.put(data)])

    def run(self, model: nn.Module, task: Any, jobs: Sequence[Job]) -> Iterator[JobResult]:
        import ray
        from ray.exceptions import RayTaskError

        queue = list(reversed(_check_jobs(jobs)))
        model_ref = self._shipper.model(model)
        task_ref = self._shipper.task(task)
        use_gpu = self.num_gpus > 0
        running: dict[Any, str] = {}
        try:
            while queue or running:
                while queue and len(running) < self.workers:
                    job = queue.pop()
                    ref = self._remote.remote(model_ref, task_ref, job, self.threads, use_gpu)
                    running[ref] = job.key
                done, _ = ray.wait(list(running), num_returns=1)
                for ref in done:
                    key = running.pop(ref)
                    try:
                        result = ray.get(ref)
                    except RayTaskError as exc:  # the task itself raised: not a worker failure
                        raise exc.as_instanceof_cause() from None
                    except ray.exceptions.RayError as exc:
                        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                        raise ExecutorError(f"Ray lost job {key} after {self.retries} "
                                            f"retries: {first}") from None
                    self.n_jobs += 1
                    yield result
        finally:
            for ref in running:
                ray.cancel(ref, force=False)

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()
            self._started = False

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "address": self.address, "num_cpus": self.num_cpus,
                "num_gpus": self.num_gpus, "resources": self.resources,
                "threads_per_worker": self.threads, "retries": self.retries}


def check_executor_options(kind: str, *, workers: int | None = None,
                           ray_address: str | None = None, gpus_per_worker: float = 0) -> None:
    """Options that do not go together (before anything starts; the CLI checks them first)."""
    if kind not in EXECUTORS:
        raise ExecutorError(f"executor must be one of {', '.join(EXECUTORS)}, got {kind!r}")
    if isinstance(gpus_per_worker, bool) or not isinstance(gpus_per_worker, (int, float)) \
            or not gpus_per_worker >= 0:
        raise ExecutorError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker}")
    if kind != "ray" and (ray_address is not None or gpus_per_worker):
        raise ExecutorError("--ray-address and --gpus-per-worker need --executor ray (they are "
                            "for --executor ray only)")
    if kind == "inproc" and workers not in (None, 1):
        raise ExecutorError("--workers needs --executor pool or ray (the in-process executor "
                            "runs one evaluation at a time)")


def make_executor(kind: str = "inproc", *, workers: int | None = None,
                  ray_address: str | None = None, threads_per_worker: int = 1,
                  gpus_per_worker: float = 0, retries: int = 2) -> Executor:
    """The executor the CLI's ``--executor``, ``--workers``, ``--ray-address`` and
    ``--gpus-per-worker`` describe."""
    check_executor_options(kind, workers=workers, ray_address=ray_address,
                           gpus_per_worker=gpus_per_worker)
    if kind == "inproc":
        return InProcessExecutor()
    if kind == "pool":
        return LocalPoolExecutor(2 if workers is None else workers,
                                 threads_per_worker=threads_per_worker, retries=retries)
    return RayExecutor(ray_address, workers, num_gpus=gpus_per_worker,
                       threads_per_worker=threads_per_worker, retries=retries)
