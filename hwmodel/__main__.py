"""``python -m hwmodel``: list, show and validate device presets.

    python -m hwmodel --list                 # bundled presets
    python -m hwmodel --show edge-npu        # parsed summary (SI units) + the TOML with its sources
    python -m hwmodel --show my-board.toml   # a user preset works the same way (validated)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hwmodel.device import list_presets, load_device
from hwmodel.errors import HwModelError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hwmodel",
        description="Device presets of the hwmodel hardware cost model.",
        epilog="A preset is a TOML file; units are part of the key names (clock_hz, "
               "capacity_bytes, read_pj_per_byte, static_w). See docs/hwmodel.md.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--list", action="store_true", help="list the bundled presets")
    g.add_argument("--show", metavar="NAME_OR_TOML",
                   help="validate a preset (bundled name or TOML path) and print it")
    p.add_argument("--no-source", action="store_true",
                   help="with --show: print only the parsed summary, not the TOML text")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for name in list_presets():
            dev = load_device(name)
            print(f"{name:14s} {dev.kind:13s} {dev.description}")
        return 0
    try:
        dev = load_device(args.show)
    except HwModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(dev.summary())
    if not args.no_source and dev.source_path:
        print(f"\n# --- {dev.source_path} ---")
        print(Path(dev.source_path).read_text(encoding="utf-8"), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
