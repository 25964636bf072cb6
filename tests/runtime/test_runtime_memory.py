"""Memory: loading a packed model grows the process by about the packed bytes, not by the fp32
size (no float32 copy of a quantized weight is ever made, not even while loading).

Measured in a fresh subprocess with /proc/self/status (VmRSS, VmHWM), after a warm-up load of a
tiny model so that lazy initialisation (torch, kernels, allocator arenas) is not counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from runtime_helpers import tiny_model

from qslm.quant import QuantPlan, QuantSpec, export_packed

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import gc, json, sys
import torch
torch.set_num_threads(1)

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise SystemExit(f"no {key} in /proc/self/status")

from qslm.models import SpikeGPT, SpikeGPTConfig
from qslm.runtime import load_runtime

warm = load_runtime(sys.argv[1])
warm.generate([1, 2], 2)
del warm
gc.collect()
r0 = status("VmRSS")
rt = load_runtime(sys.argv[2])
r1 = status("VmRSS")
peak = status("VmHWM")
rt.generate([1, 2, 3], 3)
r2 = status("VmRSS")
mem = rt.memory()
config = rt.config
del rt
gc.collect()
r3 = status("VmRSS")
with torch.device("meta"):
    ref = SpikeGPT(config)
ref = ref.to_empty(device="cpu")  # the fp32 model, allocated and touched
for p in ref.parameters():
    p.data.zero_()
r4 = status("VmRSS")
fp32 = sum(p.numel() * 4 for p in ref.parameters())
print(json.dumps({"load_growth": r1 - r0, "peak_growth": peak - r0, "after_generate": r2 - r0,
                  "fp32_growth": r4 - r3, "fp32_bytes": fp32, "held": mem}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc (Linux)")
def test_rss_growth_when_loading_is_the_packed_size(tmp_path):
    plan = QuantPlan({}, QuantSpec(4, False, group_size=64))
    small = export_packed(tiny_model(seed=0), plan, tmp_path / "small.qslm.safetensors")
    big = export_packed(tiny_model(seed=1, vocab_size=8192, n_layer=4, n_embd=256), plan,
                        tmp_path / "big.qslm.safetensors")
    env = dict(os.environ, RAYON_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(small), str(big)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    fp32 = r["fp32_bytes"]  # 7.6 M parameters: 30.4 MB
    held = r["held"]["total"]  # 4-bit codes + f32 scales and zero points per 64: ~4.9 MB
    print(r)
    assert held < fp32 / 6
    # the process grows by about what the model holds, far below the fp32 size ...
    assert r["load_growth"] < fp32 / 4
    assert r["load_growth"] < held + 4 * 2**20
    # ... also at its peak while loading (the file's fp16 scales are held briefly) and running
    assert r["peak_growth"] < fp32 / 3
    assert r["after_generate"] < fp32 / 3
    # the fp32 model of the same config really takes its size (the measurement works)
    assert r["fp32_growth"] > 0.75 * fp32  # (it may reuse the pages the runtime freed)
