"""`python -m qslm.search`: find a mixed-precision quantization plan for a device."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m qslm.search",
        description="Find a mixed-precision quantization plan of a spike-driven language model for a device.",
    )
    p.add_argument("--hw", required=True, help="device preset name (e.g. edge-npu) or a device TOML file")
    return p


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print(
        "qslm.search: not implemented yet — the tiered search lands with the quantization core; "
        "the kernels (qslm.kernels) are available now.",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
