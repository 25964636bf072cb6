"""The packed-model runtime: ``model.qslm.safetensors`` executed on the Rust kernels.

>>> from qslm.runtime import load_runtime, Sampling
>>> rt = load_runtime("out/model.qslm.safetensors")        # doctest: +SKIP
>>> rt.generate(prompt_ids, 32)                              # greedy   # doctest: +SKIP
>>> rt.generate(prompt_ids, 32, Sampling.run_py(seed=0))     # spec §6  # doctest: +SKIP
>>> rt.perplexity(token_ids)["token_ppl"]                    # doctest: +SKIP
>>> rt.cost("edge-npu")                                      # measured firing rates  # doctest: +SKIP
>>> clf = load_runtime("out-sdt/model.qslm.safetensors")     # an SDTRuntime  # doctest: +SKIP
>>> clf.accuracy(batches); clf.cost("neuromorphic", seq_len=20)  # doctest: +SKIP

* :mod:`qslm.runtime.model` — :func:`load_runtime` (dispatch on the stored config's model
  family) / :class:`RuntimeModel` (a SpikeGPT whose quantized leaves are packed); validation of
  the file against config and plan, shared by every family (:class:`PackedRuntime`,
  :func:`build_packed_runtime`);
* :mod:`qslm.runtime.sdt` — :class:`SDTRuntime`, the spike-driven encoder classifier (every
  block Linear on ``spike_matmul``, norms folded into weights and bias);
* :mod:`qslm.runtime.packed` — :class:`PackedLinear` (``lowbit_matmul``; ``spike_matmul`` for
  spike inputs), :class:`PackedEmbedding` (decodes only the looked-up rows), :class:`KernelLIF`
  (``lif_scan``);
* :mod:`qslm.runtime.sampling` — greedy and run.py sampling (:class:`Sampling`);
* :mod:`qslm.runtime.parity` — the tolerances against the fake-quant model and their checks.

CLI: ``python -m qslm.generate --model out/model.qslm.safetensors --prompt "..."``.
"""

from qslm.runtime.model import (
    PackedRuntime,
    RuntimeModel,
    build_packed_runtime,
    build_runtime,
    load_runtime,
)
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
from qslm.runtime.sdt import SDTRuntime

__all__ = [
    "GREEDY",
    "KernelLIF",
    "LOGIT_RTOL",
    "METRIC_RTOL",
    "PackedEmbedding",
    "PackedLinear",
    "PackedRuntime",
    "RuntimeModel",
    "SDTRuntime",
    "SPIKE_AGREEMENT_MIN",
    "Sampling",
    "build_packed_runtime",
    "build_runtime",
    "load_runtime",
    "next_token",
    "packed_nbytes",
    "parity_report",
    "relative_logit_error",
    "spike_agreement",
]
