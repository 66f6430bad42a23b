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

Nothing here changes the process's settings for good. Inductor has no option for its cache folder: it reads
``$TORCHINDUCTOR_CACHE_DIR`` whenever it needs the folder (in the many modules that import its reader by name, in its
compile workers, and already in ``torch.compile``), so that variable is set for a while and restored after, as
inductor's own ``torch._inductor.utils.fresh_cache`` does. ``torch.compile`` compiles lazily: a graph at the first
call that needs it, its backward pass at the first backward through it. So a :class:`CompiledStep` is run, forward
and backward, inside :meth:`CompiledStep.settings`, which sets the cache folder and dynamo's recompile limit for that
while only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Generic, TypeVar

import torch

COMPILE_MODES = ("off", "default", "max-autotune")
DEFAULT_BACKEND = "inductor"
"""The ``torch.compile`` backend of compiled steps (tests pass ``aot_eager``: no code generation, faster)."""

_USER_CACHE_DIR = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
"""The variable as the user set it (torch writes its own default into it wherever it finds it unset: importing
``torch._dynamo``, any ``torch.compile`` outside :func:`compile_step`)."""

_CACHE_VARIABLES = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")
"""What a compilation inside :meth:`CompiledStep.settings` may set in the environment: inductor's folder, and
Triton's, which inductor sets below it at its first Triton kernel unless the user did."""

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


@contextmanager
def _cache_environment(cache: Path) -> Iterator[None]:
    """``$TORCHINDUCTOR_CACHE_DIR`` set to ``cache`` for the ``with`` block; :data:`_CACHE_VARIABLES` as they were
    before it afterwards."""
    saved = {name: os.environ.get(name) for name in _CACHE_VARIABLES}
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class CompiledStep(Generic[F]):
    """A step function under ``torch.compile`` (:attr:`fn`), to be called and differentiated inside
    :meth:`settings`."""

    def __init__(self, fn: F, cache: Path):
        self.fn = fn
        self.cache = cache
        """The folder of its compiled code (:func:`cache_dir`)."""

    @contextmanager
    def settings(self) -> Iterator[None]:
        """The settings :attr:`fn` compiles under, for this ``with`` block only: dynamo's recompile limit raised to
        :data:`RECOMPILE_LIMIT`, ``$TORCHINDUCTOR_CACHE_DIR`` set to :attr:`cache`."""
        limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        with _cache_environment(self.cache), torch._dynamo.config.patch(recompile_limit=limit):
            yield


def compile_step(fn: F, mode: str, cache: str | None = None, backend: str = DEFAULT_BACKEND) -> CompiledStep[F]:
    """``fn`` compiled by ``backend`` with ``mode`` (``default`` or ``max-autotune``; backends other than inductor
    have no modes), its code cached in :func:`cache_dir` (made here). ``torch.compile`` itself already reads the
    cache folder, so it too runs under the folder's variable."""
    if mode not in COMPILE_MODES[1:]:
        raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES[1:])}, got {mode!r}")
    path = cache_dir(cache)
    path.mkdir(parents=True, exist_ok=True)
    with _cache_environment(path):
        if backend == "inductor":
            compiled = torch.compile(fn, mode=None if mode == "default" else mode, dynamic=False)
        else:
            compiled = torch.compile(fn, backend=backend, dynamic=False)
    return CompiledStep(compiled, path)


def compiled_graphs() -> int:
    """Graphs compiled in this process so far (every compiled function, every recompilation)."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])
