"""Bundled pre-trained SLMs: ``qslm/zoo/NAME/`` holds ``model.safetensors`` (fp16 matrices, the
config in its metadata), ``tokenizer.json`` and ``card.json`` (recipe, metrics, firing rates).
Training recipes: ``recipes.toml``; model cards: ``docs/models/NAME.md``.

Two families: SpikeGPT (``spikegpt-mini-*``) and the spike-driven encoder classifier
(``sdt-mini-sst2``), bundled with its norms folded into its Linears (the deployed form);
``qslm.models.load(NAME)`` returns the right class from the family stored in the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ZOO_DIR = Path(__file__).resolve().parent


def bundled_dir(name: str) -> Path:
    return ZOO_DIR / name


def bundled_names() -> list[str]:
    return sorted(p.parent.name for p in ZOO_DIR.glob("*/model.safetensors"))


def card(name: str) -> dict[str, Any]:
    with open(bundled_dir(name) / "card.json", encoding="utf-8") as f:
        return json.load(f)
