"""Fixtures of the kernel tests: the implementations under test and the hypothesis profiles."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# Small examples, many of them: the suite must stay fast (well under a minute on 2 cores).
# `pytest --hypothesis-profile thorough` sweeps much harder.
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("qslm", max_examples=100, **_common)
settings.register_profile("thorough", max_examples=2000, **_common)
settings.load_profile("qslm")

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent


@pytest.fixture(scope="session")
def reference():
    return importlib.import_module("qslm._reference")


@pytest.fixture(scope="session")
def kernels():
    """The public wrapper ``qslm.kernels`` (numpy arrays and torch tensors)."""
    return importlib.import_module("qslm.kernels")


@pytest.fixture(scope="session")
def raw():
    """The compiled extension ``qslm._kernels`` itself, called without the wrapper."""
    return importlib.import_module("qslm._kernels")


@pytest.fixture(params=["reference", "kernels", "raw"])
def impl(request):
    """Every implementation that must validate its inputs and raise the qslm.errors classes."""
    return request.getfixturevalue(request.param)


@pytest.fixture(params=["reference", "kernels"])
def known_answer_impl(request):
    """Implementations checked against hand-computed answers (reference and public wrapper)."""
    return request.getfixturevalue(request.param)


_SUBPROCESS_SCRIPT = """
import sys
import numpy as np
sys.path.insert(0, {tests!r})
import helpers
import qslm.kernels
np.savez({out!r}, simd_isa=np.array(qslm.kernels.simd_isa()), **helpers.run_determinism_cases(qslm.kernels))
"""


# Environments the determinism cases are re-run in: other rayon pool sizes, and the narrower
# instruction sets the kernels fall back to (QSLM_SIMD lowers the detected one; on a CPU without
# AVX-512 two of these coincide, which is harmless).
SUBPROCESS_CONFIGS = {
    "threads=1": {"RAYON_NUM_THREADS": "1"},
    "threads=5": {"RAYON_NUM_THREADS": "5"},
    "simd=avx2": {"QSLM_SIMD": "avx2"},
    "simd=scalar": {"QSLM_SIMD": "scalar"},
}


@pytest.fixture(scope="session")
def outputs_by_config(kernels, tmp_path_factory):
    """config name → outputs of ``helpers.determinism_cases`` computed in a fresh process.

    Rayon reads RAYON_NUM_THREADS and the kernels read QSLM_SIMD once per process, so other
    settings need a subprocess.
    """
    results = {}
    for name, overrides in SUBPROCESS_CONFIGS.items():
        out = tmp_path_factory.mktemp(name.replace("=", "-")) / "out.npz"
        env = dict(os.environ, **overrides)
        script = _SUBPROCESS_SCRIPT.format(tests=str(TESTS_DIR), out=str(out))
        proc = subprocess.run(
            [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        with np.load(out) as data:
            results[name] = {key: data[key] for key in data.files}
        if "QSLM_SIMD" in overrides and overrides["QSLM_SIMD"] == "scalar":
            assert str(results[name]["simd_isa"]) == "scalar", "QSLM_SIMD=scalar was not honoured"
    return results


@pytest.fixture(scope="session")
def outputs_by_thread_count(outputs_by_config):
    """thread-count configs only (same instruction set as this process)."""
    return {name: out for name, out in outputs_by_config.items() if name.startswith("threads=")}


@pytest.fixture(scope="session")
def outputs_by_isa(outputs_by_config):
    """instruction-set configs only."""
    return {name: out for name, out in outputs_by_config.items() if name.startswith("simd=")}


@pytest.fixture
def one_torch_thread():
    """One torch thread for the duration of a test: much faster for tiny models when the
    machine runs other work (use with ``pytestmark = pytest.mark.usefixtures(...)``)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
