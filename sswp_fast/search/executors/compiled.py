"""``torch.compile`` of the search steps (``--compile``): the modes, where compiled code is cached, and how many
graphs a run has compiled.

A compiled step runs on the device-side dispatch executor (:mod:`sswp_fast.search.executors.device`): which op each
edge runs is a tensor there, so a new sampled path is new data for the same graph, not a new graph. What the compiler
sees as structure is only the phase-dependent part of a plan: whether the step probes gate gradients, and
below which cell autograd starts (the frozen prefix of the arch step). A run therefore compiles one graph for
the weight step and one arch-step graph per frozen prefix (at most ``layers + 1``), whatever its length.
The forward pass and loss are compiled; autograd compiles their backward pass with them.

Compiled code is cached on disk, so a configuration is compiled once per machine: in ``--compile_cache``,
else ``$TORCHINDUCTOR_CACHE_DIR``, else ``~/.cache/sswp-fast/inductor`` (``$XDG_CACHE_HOME`` respected).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

COMPILE_MODES = ("off", "default", "max-autotune")
BACKEND = "inductor"
"""The ``torch.compile`` backend of compiled steps (tests swap in ``aot_eager``, which compiles in seconds)."""

_USER_CACHE_DIR = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
"""The variable as the user set it (inductor writes its own default into it once it has run)."""

RECOMPILE_LIMIT = 64
"""Graphs per compiled function before dynamo gives up compiling it: above ``layers + 2`` for any search."""

F = TypeVar("F", bound=Callable)


def cache_dir(choice: str | None = None) -> Path:
    """Where compiled code is kept: ``choice``, ``$TORCHINDUCTOR_CACHE_DIR``, or the per-user default."""
    if choice:
        return Path(choice).expanduser()
    if _USER_CACHE_DIR:
        return Path(_USER_CACHE_DIR)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sswp-fast" / "inductor"


def compile_step(fn: F, mode: str, cache: str | None = None) -> F:
    """``fn`` compiled with ``mode`` (``default`` or ``max-autotune``), its code cached in :func:`cache_dir`."""
    if mode not in COMPILE_MODES[1:]:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES[1:])}, got {mode!r}")
    path = cache_dir(cache)
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    if BACKEND == "inductor":
        return torch.compile(fn, mode=None if mode == "default" else mode, dynamic=False)
    return torch.compile(fn, backend=BACKEND, dynamic=False)


def compiled_graphs() -> int:
    """Graphs compiled in this process so far (every compiled function, every recompilation)."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
