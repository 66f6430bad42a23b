"""What an exact resume restores besides the model and its optimizer, shared by the search, the downstream
stages and NASiam: the process's random-number generators (the CPU one and, where present, every CUDA
device's), kept as a plain dict inside the run's checkpoint; and the endless pass over a loader that the search
drivers draw their architecture batches from."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch


def rng_state() -> dict[str, Any]:
    """The CPU generator's state and, on a CUDA machine, every device's (what :func:`restore_rng_state` takes)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any] | torch.Tensor) -> None:
    """Restore :func:`rng_state`. The CUDA states are restored where this machine has CUDA; a bare tensor (the
    CPU state alone, as NASiam checkpoints held it before they held the CUDA states too) restores the CPU
    generator."""
    if isinstance(state, torch.Tensor):
        torch.set_rng_state(state)
        return
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def cycle(loader: Iterable) -> Iterator:
    """The items of ``loader``, pass after pass (a fresh iteration each time, so a shuffling loader reshuffles);
    nothing, rather than a spin, when a pass yields none."""
    while True:
        yielded = False
        for item in loader:
            yielded = True
            yield item
        if not yielded:
            return
