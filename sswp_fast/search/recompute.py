"""Activation recomputation of the search network (``--recompute``): memory for time, same gradients.

Autograd keeps, for the backward pass, every intermediate tensor of every op that ran. In the super-network that
is, per edge, the activations inside its sampled op (a separable convolution keeps eight maps of the node's
size), far more than the node states the edges share. The modes:

* ``none`` — keep everything (the fastest step);
* ``edge`` — keep the node states (inputs and outputs of the edges) and recompute each edge's op in the
  backward pass; on the device-side dispatch executor this is its slot-group recompute;
* ``cell`` — keep only the cell inputs and recompute the whole cell in the backward pass, itself edge by edge
  as in ``edge``, so that only one cell's node states and one op's activations are alive at a time (the least
  memory; every op runs forward three times);
* ``auto`` — ``none`` on the PyTorch executor, ``edge`` on the dispatch executor (what each did before the flag).

A recomputed forward uses the same batch statistics as the first one, so the gradients are exactly those of
``none``; it does not update the BatchNorm running statistics a second time (:func:`kept_running_stats`). The
network has no random ops (paths and drops are sampled before the forward pass), so no RNG state is replayed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

RECOMPUTE_MODES = ("auto", "none", "edge", "cell")


def resolve_recompute(mode: str, dispatch: bool) -> str:
    """The concrete mode of ``--recompute mode`` (``auto`` depends on the executor)."""
    if mode == "auto":
        return "edge" if dispatch else "none"
    return mode


@contextlib.contextmanager
def kept_running_stats(module: nn.Module) -> Iterator[None]:
    """Run a block that may update the BatchNorm buffers under ``module`` and put them back afterwards."""
    buffers = [b for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
               for b in m.buffers()]
    saved = [b.clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            torch._foreach_copy_(buffers, saved)


def recomputed(fn: Callable[..., torch.Tensor], module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """``fn(*inputs)`` whose intermediate activations are rebuilt in the backward pass instead of stored.

    ``module`` holds every BatchNorm ``fn`` runs: the rebuild leaves their running statistics as the first
    evaluation left them. Outside autograd this is just ``fn(*inputs)``."""
    if not torch.is_grad_enabled():
        return fn(*inputs)
    calls = 0

    def evaluate(*args: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 1:
            return fn(*args)
        with kept_running_stats(module):
            return fn(*args)

    return checkpoint(evaluate, *inputs, use_reentrant=False, preserve_rng_state=False)
