"""Bundled pre-trained SLMs: ``qslm/zoo/NAME/`` holds ``model.safetensors`` (fp16 matrices, the
config in its metadata), ``tokenizer.json`` and ``card.json`` (recipe, metrics, firing rates).
Training recipes: ``recipes.toml``; model cards: ``docs/models/NAME.md``."""

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
