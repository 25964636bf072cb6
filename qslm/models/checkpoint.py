"""Checkpoints of both model families: SpikeGPT (the released layout, spec §3–§4, and
safetensors) and the spike-driven encoder (safetensors written by :func:`save_safetensors`).

:func:`load_checkpoint` dispatches on the family named in the stored config (``qslm_config``
metadata, key ``"family"``): ``"spike-driven-encoder"`` → :func:`load_sdt`; absent (every
SpikeGPT file: the released ``.pth``, plain safetensors, and those :func:`save_safetensors`
writes for a SpikeGPT, whose config has no family) or ``"spikegpt"`` → :func:`load_spikegpt`,
exactly as before.

Formats, chosen by the file suffix:

- ``.safetensors`` — tensors by state-dict key; the files written by :func:`save_safetensors`
  also carry the model config as JSON in the metadata (``qslm_config``).
- anything else (``.pth``, ``.pt``, ...) — a plain ``torch.save(model.state_dict())`` pickle, as
  the released ``SpikeGPT-216M.pth``; read with ``torch.load(weights_only=True)``, so no code in
  the file runs.

SpikeGPT: the config is inferred from the tensor shapes (V, C from ``emb.weight``; L from the
highest ``blocks.{l}`` index; a classifier from ``classify_head.weight``), then every key is
checked: a missing, unexpected or mis-shaped tensor is an error naming the key and both shapes.

Spike-driven encoder: the config must be in the metadata (the shapes alone cannot tell
``mlp_ratio``, ``pos_emb``, ``norms_folded``…); the tensors are then checked the same strict way.
Its ``norms_folded`` field says which form the file holds: the bundled model is stored folded
(the deployed form, "spikes × weights + bias", :meth:`SpikeDrivenEncoder.fold_norms`), so the
search, quantization and runtime see the Linears with their biases and no BatchNorm;
a training checkpoint saved unfolded reloads unfolded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import zipfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from qslm._io import atomic_path
from qslm.errors import (
    CheckpointError,
    CheckpointShapeError,
    ConfigError,
    MissingKeyError,
    UnexpectedKeyError,
)
from qslm.models.sdt import FAMILY as SDT_FAMILY
from qslm.models.sdt import SDTConfig, SpikeDrivenEncoder
from qslm.models.spikegpt import SpikeGPT, SpikeGPTConfig

__all__ = ["SDT_SWITCHES", "SWITCHES", "checkpoint_family", "load_checkpoint", "load_sdt",
           "load_spikegpt", "read_state_dict", "save_safetensors"]

# Config fields a caller may set when loading: they do not change any tensor shape.
# (num_classes is handled apart: it turns a language-model checkpoint into a classifier.)
SWITCHES = ("ctx_len", "binary_embedding", "rescale_every", "pooling", "pad_id", "tau",
            "v_threshold", "v_reset", "dropout")
# The same for a spike-driven encoder (ctx_len is a shape field when pos_emb: the table's rows).
SDT_SWITCHES = ("t_sim", "pad_id", "tau", "v_threshold", "v_reset")
SPIKEGPT_FAMILY = "spikegpt"  # a config without "family" is a SpikeGPT one
CONFIG_METADATA_KEY = "qslm_config"
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")
_LIST_AT_MOST = 5  # keys named in an error message before "... and N more"


def read_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a checkpoint file → (state dict on the CPU, safetensors metadata or {}).

    Raises :class:`CheckpointError` for a missing, truncated, corrupt or non-checkpoint file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        sd, meta = _read_safetensors(path)
    else:
        sd, meta = _read_torch(path), {}
    return sd, meta


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
    except Exception as exc:  # safetensors raises its own SafetensorError and others
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): "
                              f"{_one_line(exc)}") from None
    return sd, meta


def _read_torch(path: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip / pickle / weights-only errors: one clear message
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: "
                              f"{_diagnose_torch_file(path, exc)}") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (mapping of key → tensor), got a "
                              f"{type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        k = bad[0]
        raise CheckpointError(f"{path}: expected a state dict of tensors; entry {k!r} is of type "
                              f"{type(obj[k]).__name__}")
    return dict(obj)


def _diagnose_torch_file(path: Path, exc: BaseException) -> str:
    """Why torch.load failed, in one line (torch's own messages are long or cryptic)."""
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    if refused:
        return (f"it pickles a Python object ({refused.group(1)}) that weights-only loading "
                "refuses to import; a checkpoint must be a plain state dict of tensors")
    with path.open("rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            return "truncated or corrupt torch.save zip archive (its end of archive is missing)"
        return f"corrupt torch.save zip archive ({_one_line(exc)})"
    if head[:1] == b"\x80":
        return f"truncated or corrupt pickle ({_one_line(exc)})"
    return f"not a torch.save file (it starts with {head!r})"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}{'…' if len(text) > 200 else ''}"


def infer_config(sd: Mapping[str, Tensor], base: Mapping[str, Any] | None = None,
                 where: str = "checkpoint") -> SpikeGPTConfig:
    """The config whose shapes are those of ``sd``; other fields from ``base`` (a config dict)."""
    emb = sd.get("emb.weight")
    if emb is None:
        raise MissingKeyError(f"{where}: missing key 'emb.weight' (shape (V, C)): cannot infer "
                              "vocab_size and n_embd — is this a SpikeGPT checkpoint?")
    if emb.ndim != 2:
        raise CheckpointShapeError(f"{where}: key 'emb.weight' has shape {tuple(emb.shape)}, "
                                   "expected (V, C)")
    blocks = [int(m.group(1)) for k in sd if (m := _BLOCK_RE.match(k))]
    if not blocks:
        raise MissingKeyError(f"{where}: no 'blocks.{{l}}.*' keys: a SpikeGPT needs at least one "
                              "block")
    fields = dict(base or {})
    fields.update(vocab_size=int(emb.shape[0]), n_embd=int(emb.shape[1]),
                  n_layer=max(blocks) + 1, num_classes=0)
    cls = sd.get("classify_head.weight")
    if cls is not None:
        if cls.ndim != 2:
            raise CheckpointShapeError(f"{where}: key 'classify_head.weight' has shape "
                                       f"{tuple(cls.shape)}, expected (num_classes, C)")
        fields["num_classes"] = int(cls.shape[0])
    fields.setdefault("format_version", 1)
    try:
        return SpikeGPTConfig.from_dict(fields)
    except ConfigError as exc:
        raise CheckpointError(f"{where}: {exc}") from None


def check_state_dict(sd: Mapping[str, Tensor], expected: Mapping[str, torch.Size],
                     where: str = "checkpoint", integer_keys: Collection[str] = ()) -> None:
    """Strict key and shape check: raise the first kind of problem found, naming the keys.
    Every tensor must be floating-point, except those of ``integer_keys`` (integer buffers such
    as BatchNorm's ``num_batches_tracked``), which must be integers."""
    missing = [k for k in expected if k not in sd]
    if missing:
        raise MissingKeyError(f"{where}: missing key{'s' if len(missing) > 1 else ''} "
                              + _name_keys(missing, expected))
    unexpected = [k for k in sd if k not in expected]
    if unexpected:
        raise UnexpectedKeyError(f"{where}: unexpected key{'s' if len(unexpected) > 1 else ''} "
                                 + _name_keys(unexpected, {k: sd[k].shape for k in unexpected}))
    for k, shape in expected.items():
        if sd[k].shape != shape:
            raise CheckpointShapeError(f"{where}: key {k!r} has shape {tuple(sd[k].shape)}, "
                                       f"expected {tuple(shape)}")
        if k in integer_keys:
            if sd[k].is_floating_point() or sd[k].dtype == torch.bool:
                raise CheckpointError(f"{where}: key {k!r} has dtype {sd[k].dtype}, expected "
                                      "an integer tensor")
        elif not sd[k].is_floating_point():
            raise CheckpointError(f"{where}: key {k!r} has dtype {sd[k].dtype}, expected a "
                                  "floating-point tensor")


def _name_keys(keys: list[str], shapes: Mapping[str, Any]) -> str:
    named = ", ".join(f"{k!r} (shape {tuple(shapes[k])})" for k in keys[:_LIST_AT_MOST])
    more = len(keys) - _LIST_AT_MOST
    return named + (f" and {more} more" if more > 0 else "")


def load_spikegpt(path: str | os.PathLike[str], *, num_classes: int | None = None,
                  device: str | torch.device = "cpu", **switches: Any) -> SpikeGPT:
    """Load a SpikeGPT checkpoint (released ``.pth`` layout, or ``.safetensors``).

    ``switches``: any of :data:`SWITCHES` (e.g. ``binary_embedding=False, rescale_every=6`` for
    ``run.py`` semantics, spec §7); defaults are the config defaults, or the config stored in a
    safetensors file by :func:`save_safetensors`. ``num_classes``: load a language-model
    checkpoint as a classifier — the trunk is loaded, ``head.weight`` is dropped and a fresh
    ``classify_head`` is initialised (for fine-tuning, spec §10). Parameters are float32.
    The model is returned in eval mode.
    """
    unknown = sorted(set(switches) - set(SWITCHES))
    if unknown:
        raise ConfigError(f"unknown load switch(es): {', '.join(unknown)}; the shape fields "
                          "(vocab_size, n_layer, n_embd, num_classes) come from the checkpoint; "
                          f"settable: {', '.join(SWITCHES)}")
    sd, meta = read_state_dict(path)
    where = str(path)
    if _family(meta, where) == SDT_FAMILY:
        raise CheckpointError(f"{where} is a {SDT_FAMILY} checkpoint, not a SpikeGPT one: load "
                              "it with load_sdt, load_checkpoint or qslm.models.load")
    base = _config_from_metadata(meta, where)
    config = infer_config(sd, base, where)
    if base is not None:
        for f in ("vocab_size", "n_layer", "n_embd", "num_classes"):
            if f in base and base[f] != getattr(config, f):
                raise CheckpointError(f"{where}: metadata config says {f}={base[f]!r} but the "
                                      f"tensors give {getattr(config, f)!r}")
    try:
        config = dataclasses.replace(config, **switches)
    except ConfigError as exc:
        raise ConfigError(f"load switch: {exc}") from None

    with torch.device("meta"):
        expected = {k: v.shape for k, v in SpikeGPT(config).state_dict().items()}
    check_state_dict(sd, expected, where)

    fresh_head = num_classes is not None and num_classes != config.num_classes
    if fresh_head:
        if config.is_classifier:
            raise ConfigError(f"{where} is a classifier with num_classes={config.num_classes}; "
                              f"cannot load it with num_classes={num_classes}")
        sd = {k: v for k, v in sd.items() if k != "head.weight"}
        config = dataclasses.replace(config, num_classes=num_classes)
    model = SpikeGPT(config) if fresh_head else _model_on_meta(config)
    sd = {k: v.to(torch.float32) for k, v in sd.items()}
    model.load_state_dict(sd, strict=not fresh_head, assign=not fresh_head)
    return model.to(device).eval()


def _model_on_meta(config: SpikeGPTConfig) -> SpikeGPT:
    """A model whose parameters are placeholders (no memory, no init): filled by assign."""
    with torch.device("meta"):
        return SpikeGPT(config)


def _family(meta: Mapping[str, str], where: str) -> str:
    """The model family named by the stored config: SPIKEGPT_FAMILY when there is no config, or
    it names no family (every SpikeGPT file), else its "family" (e.g. SDT_FAMILY)."""
    text = meta.get(CONFIG_METADATA_KEY)
    if text is None:
        return SPIKEGPT_FAMILY
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{where}: metadata {CONFIG_METADATA_KEY!r} is not valid JSON: "
                              f"{exc}") from None
    family = d.get("family", SPIKEGPT_FAMILY) if isinstance(d, dict) else SPIKEGPT_FAMILY
    if family not in (SPIKEGPT_FAMILY, SDT_FAMILY):
        raise CheckpointError(f"{where}: metadata config names an unknown model family "
                              f"{family!r}; known: {SPIKEGPT_FAMILY}, {SDT_FAMILY}")
    return family


def checkpoint_family(path: str | os.PathLike[str]) -> str:
    """The model family of a checkpoint file: "spikegpt" or "spike-driven-encoder" (reads only
    the safetensors header; any non-safetensors file is a SpikeGPT one)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return SPIKEGPT_FAMILY
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): "
                              f"{_one_line(exc)}") from None
    return _family(meta, str(path))


def load_checkpoint(path: str | os.PathLike[str], **kwargs: Any) -> SpikeGPT | SpikeDrivenEncoder:
    """Load a checkpoint of either family (dispatch on its stored config's family, module
    docstring): a SpikeGPT → :func:`load_spikegpt` (``kwargs`` as there), a spike-driven
    encoder → :func:`load_sdt`."""
    if checkpoint_family(path) == SDT_FAMILY:
        return load_sdt(path, **kwargs)
    return load_spikegpt(path, **kwargs)


def load_sdt(path: str | os.PathLike[str], *, device: str | torch.device = "cpu",
             **switches: Any) -> SpikeDrivenEncoder:
    """Load a spike-driven encoder written by :func:`save_safetensors`, in the form stored
    (folded norms if ``config.norms_folded``). ``switches``: any of :data:`SDT_SWITCHES`.
    Floating tensors are loaded as float32; the model is returned in eval mode."""
    unknown = sorted(set(switches) - set(SDT_SWITCHES))
    if unknown:
        raise ConfigError(f"unknown load switch(es) for a {SDT_FAMILY}: {', '.join(unknown)}; "
                          f"settable: {', '.join(SDT_SWITCHES)}")
    sd, meta = read_state_dict(path)
    where = str(path)
    if _family(meta, where) != SDT_FAMILY:
        raise CheckpointError(f"{where}: not a {SDT_FAMILY} checkpoint (its metadata has no "
                              f"{CONFIG_METADATA_KEY!r} config with family {SDT_FAMILY!r})")
    try:
        config = SDTConfig.from_dict(json.loads(meta[CONFIG_METADATA_KEY]))
    except ConfigError as exc:
        raise CheckpointError(f"{where}: metadata {CONFIG_METADATA_KEY!r} is not a valid "
                              f"{SDT_FAMILY} config: {exc}") from None
    try:
        config = dataclasses.replace(config, **switches)
    except ConfigError as exc:
        raise ConfigError(f"load switch: {exc}") from None
    with torch.device("meta"):
        model = SpikeDrivenEncoder(config)
    ref = model.state_dict()
    integer_keys = {k for k, v in ref.items() if not v.is_floating_point()}
    check_state_dict(sd, {k: v.shape for k, v in ref.items()}, where, integer_keys)
    sd = {k: v.to(torch.float32) if v.is_floating_point() else v.to(ref[k].dtype)
          for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    return model.to(device).eval()


def _config_from_metadata(meta: Mapping[str, str], where: str) -> dict[str, Any] | None:
    text = meta.get(CONFIG_METADATA_KEY)
    if text is None:
        return None
    try:
        d = json.loads(text)
        if isinstance(d, dict) and d.get("family") == SPIKEGPT_FAMILY:
            d = {k: v for k, v in d.items() if k != "family"}
        SpikeGPTConfig.from_dict(d)  # validate
    except (json.JSONDecodeError, ConfigError) as exc:
        raise CheckpointError(f"{where}: metadata {CONFIG_METADATA_KEY!r} is not a valid "
                              f"SpikeGPT config: {exc}") from None
    return d


def save_safetensors(model: SpikeGPT | SpikeDrivenEncoder, path: str | os.PathLike[str],
                     dtype: torch.dtype = torch.float16,
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write the model's state dict to ``path`` (safetensors) atomically; returns the path.

    Matrices (``emb``, every Linear; for a spike-driven encoder also ``pos``) are stored in
    ``dtype``; the small vectors (LayerNorms, ``time_*``: 11C per block; an encoder's Linear
    biases and norms) stay float32 — ``time_decay`` enters exp(), and it is 0.1 % of the 216M
    parameters — and integer buffers (BatchNorm's ``num_batches_tracked``) stay integers. The
    config goes into the metadata as JSON (``qslm_config``; an encoder's names its family), so
    :func:`load_checkpoint` restores the model and its switches; ``metadata`` adds more string
    entries. A spike-driven encoder is saved in the form it is in: fold its norms first
    (:meth:`SpikeDrivenEncoder.fold_norms`) to store the deployed form.
    """
    from safetensors.torch import save_file

    if not isinstance(model, (SpikeGPT, SpikeDrivenEncoder)):
        raise ConfigError(f"save_safetensors needs a SpikeGPT or a SpikeDrivenEncoder, got "
                          f"{type(model).__name__}")
    if not dtype.is_floating_point:
        raise ConfigError(f"dtype must be a floating-point dtype, got {dtype}")
    tensors = {k: (v if not v.is_floating_point() else v.to(dtype) if v.ndim == 2 else v.float())
               .detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update({"format": "pt", CONFIG_METADATA_KEY: json.dumps(model.config.to_dict())})
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=meta)
    return path
