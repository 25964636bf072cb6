"""How the benchmarks time a call (shared by every benchmark module)."""

from __future__ import annotations

import time


def run(benchmark, fn, *args):
    """Time ``fn(*args)`` with rounds of back-to-back calls lasting about a millisecond each, so
    that both the torch baseline and the kernels run with warm worker threads, as they do inside
    a model's forward pass (a lone call per round also times the wake-up of sleeping threads).
    Under ``--benchmark-disable`` the call runs once."""
    if getattr(benchmark, "disabled", False):
        return benchmark(fn, *args)
    t0 = time.perf_counter()
    fn(*args)
    once = max(time.perf_counter() - t0, 1e-7)
    iterations = max(1, int(1e-3 / once))
    rounds = max(5, min(200, int(1.0 / (once * iterations))))
    return benchmark.pedantic(fn, args=args, iterations=iterations, rounds=rounds, warmup_rounds=1)
