"""Models: SpikeGPT (spiking RWKV-4) and its checkpoints.

``SpikeGPT`` / ``SpikeGPTConfig`` are the model (``qslm.models.spikegpt``); ``load_spikegpt`` and
``save_safetensors`` read and write checkpoints (``qslm.models.checkpoint``).
"""

from qslm.models.checkpoint import load_spikegpt, save_safetensors
from qslm.models.spikegpt import SpikeGPT, SpikeGPTConfig, SpikeGPTState

__all__ = ["SpikeGPT", "SpikeGPTConfig", "SpikeGPTState", "load", "load_spikegpt", "save_safetensors"]


def load(name_or_path: str, **switches) -> SpikeGPT:
    """A bundled model by name (``qslm.zoo``, offline) or a checkpoint file by path.

    Bundled names: see ``qslm.zoo.bundled_names()`` (e.g. ``"spikegpt-mini-wt2"``). A path goes to
    :func:`load_spikegpt` with ``switches``.
    """
    import os

    from qslm.errors import CheckpointError
    from qslm.zoo import bundled_dir, bundled_names

    bundle = bundled_dir(name_or_path) / "model.safetensors"
    if os.sep not in name_or_path and bundle.exists():
        return load_spikegpt(bundle, **switches)
    if os.path.exists(name_or_path):
        return load_spikegpt(name_or_path, **switches)
    names = ", ".join(bundled_names()) or "none bundled yet"
    raise CheckpointError(f"{name_or_path!r} is neither a bundled model ({names}) nor a checkpoint file")
