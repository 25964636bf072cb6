"""The packed-model runtime: ``model.qslm.safetensors`` executed on the Rust kernels.

>>> from qslm.runtime import load_runtime, Sampling
>>> rt = load_runtime("out/model.qslm.safetensors")        # doctest: +SKIP
>>> rt.generate(prompt_ids, 32)                              # greedy   # doctest: +SKIP
>>> rt.generate(prompt_ids, 32, Sampling.run_py(seed=0))     # spec §6  # doctest: +SKIP
>>> rt.perplexity(token_ids)["token_ppl"]                    # doctest: +SKIP
>>> rt.cost("edge-npu")                                      # measured firing rates  # doctest: +SKIP

* :mod:`qslm.runtime.model` — :func:`load_runtime` / :class:`RuntimeModel` (a SpikeGPT whose
  quantized leaves are packed; validation of the file against config and plan);
* :mod:`qslm.runtime.packed` — :class:`PackedLinear` (``lowbit_matmul``; ``spike_matmul`` for
  spike inputs), :class:`PackedEmbedding` (decodes only the looked-up rows), :class:`KernelLIF`
  (``lif_scan``);
* :mod:`qslm.runtime.sampling` — greedy and run.py sampling (:class:`Sampling`);
* :mod:`qslm.runtime.parity` — the tolerances against the fake-quant model and their checks.

CLI: ``python -m qslm.generate --model out/model.qslm.safetensors --prompt "..."``.
"""

from qslm.runtime.model import RuntimeModel, build_runtime, load_runtime
from qslm.runtime.packed import KernelLIF, PackedEmbedding, PackedLinear, packed_nbytes
from qslm.runtime.parity import (
    LOGIT_RTOL,
    METRIC_RTOL,
    SPIKE_AGREEMENT_MIN,
    parity_report,
    relative_logit_error,
    spike_agreement,
)
from qslm.runtime.sampling import GREEDY, Sampling, next_token

__all__ = [
    "GREEDY",
    "KernelLIF",
    "LOGIT_RTOL",
    "METRIC_RTOL",
    "PackedEmbedding",
    "PackedLinear",
    "RuntimeModel",
    "SPIKE_AGREEMENT_MIN",
    "Sampling",
    "build_runtime",
    "load_runtime",
    "next_token",
    "packed_nbytes",
    "parity_report",
    "relative_logit_error",
    "spike_agreement",
]
