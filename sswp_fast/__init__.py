"""sswp-fast: self-supervised, weight-preserving neural architecture search (SSWP-NAS), fast and lean.

Public API:
  - :func:`sample_paths` — vectorized path sampling (spec §5.2);
  - :func:`info_nce` — SimCLR InfoNCE loss (spec §1.3);
  - :class:`SearchConfig`, :class:`SearchEngine`, :class:`Batch` — single weight / arch steps;
  - :func:`run_search` — a whole search run with the reference's artifacts;
  - :class:`SearchNetwork` — the super-network with the reference's ``state_dict`` keys.
"""

from sswp_fast.errors import SSWPError
from sswp_fast.losses.objectives import info_nce
from sswp_fast.search.config import SearchConfig
from sswp_fast.search.engine import Batch, SearchEngine, StepResult
from sswp_fast.search.sampling import sample_paths
from sswp_fast.search.supernet import ExecutionPlan, SearchNetwork

__all__ = [
    "Batch", "ExecutionPlan", "SSWPError", "SearchConfig", "SearchEngine", "SearchNetwork", "StepResult",
    "info_nce", "sample_paths",
]
__version__ = "0.1.0"
