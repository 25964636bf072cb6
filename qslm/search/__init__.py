"""The tiered mixed-precision search (``core``), its constraints, tasks, reports and CLI.

``python -m qslm.search --hw edge-npu`` runs it; :mod:`qslm.search.core` holds the strategies.
"""

from qslm.search.constraints import MemoryBudget, PerformanceFloor, SearchInputError
from qslm.search.core import (
    EvalRecord,
    Evaluator,
    Predictor,
    SearchContext,
    SearchError,
    SearchSpace,
    ilp_search,
    tiered_search,
)

__all__ = [
    "EvalRecord",
    "Evaluator",
    "MemoryBudget",
    "PerformanceFloor",
    "Predictor",
    "SearchContext",
    "SearchError",
    "SearchInputError",
    "SearchSpace",
    "ilp_search",
    "tiered_search",
]
