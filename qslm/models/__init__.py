"""Models: SpikeGPT (spiking RWKV-4), the spike-driven encoder classifier, and their checkpoints.

``SpikeGPT`` / ``SpikeGPTConfig`` (``qslm.models.spikegpt``) and ``SpikeDrivenEncoder`` /
``SDTConfig`` (``qslm.models.sdt``) are the two families. ``load`` takes a bundled name or a
checkpoint path and returns the model of the family the checkpoint holds
(``qslm.models.checkpoint.load_checkpoint``: the ``family`` of the config stored in a
safetensors file; no family, as in every SpikeGPT file, means SpikeGPT). ``load_spikegpt``,
``load_sdt`` and ``save_safetensors`` read and write checkpoints of one family.

Spike-driven encoders are bundled (``qslm.zoo``) with their norms **folded**
(``SpikeDrivenEncoder.fold_norms``: every block Linear is "spikes × weights + bias", no
BatchNorm), the deployed form that the search, quantization and runtime work on; ``load`` returns
them in that form (``config.norms_folded`` is True).
"""

from __future__ import annotations

from qslm.models.checkpoint import load_checkpoint, load_sdt, load_spikegpt, save_safetensors
from qslm.models.sdt import SDTConfig, SpikeDrivenEncoder
from qslm.models.spikegpt import SpikeGPT, SpikeGPTConfig, SpikeGPTState

__all__ = ["SDTConfig", "SpikeDrivenEncoder", "SpikeGPT", "SpikeGPTConfig", "SpikeGPTState",
           "load", "load_checkpoint", "load_sdt", "load_spikegpt", "save_safetensors"]


def load(name_or_path: str, **switches) -> SpikeGPT | SpikeDrivenEncoder:
    """A bundled model by name (``qslm.zoo``, offline) or a checkpoint file by path.

    Bundled names: see ``qslm.zoo.bundled_names()`` (e.g. ``"spikegpt-mini-wt2"``,
    ``"sdt-mini-sst2"``). The file goes to :func:`load_checkpoint` with ``switches``, which
    returns a :class:`SpikeGPT` or a :class:`SpikeDrivenEncoder` according to the family stored
    in the checkpoint (switches as :func:`load_spikegpt` or :func:`load_sdt`).
    """
    import os

    from qslm.errors import CheckpointError
    from qslm.zoo import bundled_dir, bundled_names

    name_or_path = os.fspath(name_or_path)
    bundle = bundled_dir(name_or_path) / "model.safetensors"
    if os.sep not in name_or_path and bundle.exists():
        return load_checkpoint(bundle, **switches)
    if os.path.exists(name_or_path):
        return load_checkpoint(name_or_path, **switches)
    names = ", ".join(bundled_names()) or "none bundled yet"
    raise CheckpointError(f"{name_or_path!r} is neither a bundled model ({names}) nor a checkpoint file")
