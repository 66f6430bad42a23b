"""Search configurations sized for the 2-core CI machine."""

from __future__ import annotations

from sswp_fast.search.config import SearchConfig


def tiny_config(**overrides) -> SearchConfig:
    """A 3-cell, C=4 search configuration (reductions at cells 1 and 2)."""
    values = dict(layers=3, init_channels=4, batch_size=4, dataset="digits", min_warmup=0)
    values.update(overrides)
    return SearchConfig(**values).resolved()
