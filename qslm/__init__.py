"""qslm: performance- and memory-aware quantization of spike-driven language models."""

from qslm.errors import QslmError

__version__ = "0.1.0"
__all__ = ["QslmError", "__version__"]
