"""The learning-rate schedules of every driver, and the one way they are set on an optimizer.

:func:`cosine_lr` is the per-epoch cosine of the search (spec §7.2) and of NASiam (NASiam spec §3):
``base·(1 + cos(π·e/E))/2``. :func:`warmup_cosine_lr` is the per-iteration schedule of the compact-network stages
(spec §11.3): a linear warm-up from 0 over ``warmup_iters`` iterations, then a cosine from the peak down to
``lr_min`` over ``cosine_iters``.

The reference builds the latter from two PyTorch schedulers stepped once per iteration (``LambdaLR`` during warm-up,
then ``CosineAnnealingLR``); :func:`warmup_cosine_lr` is the same sequence in closed form, so a resumed run
needs only the iteration count. Iteration 0 runs at LR 0 when there is a warm-up, as in the reference; a
warm-up of 0 iterations (a ``ZeroDivisionError`` in the reference) starts the cosine at once.
"""

from __future__ import annotations

import math

import torch


def cosine_lr(base: float, epoch: int, epochs: int) -> float:
    """The learning rate of (0-based) ``epoch`` of ``epochs``: ``base`` at epoch 0, down to 0 at ``epochs``."""
    return base * (1 + math.cos(math.pi * epoch / epochs)) / 2


def warmup_cosine_lr(iteration: int, lr: float, lr_min: float, warmup_iters: int, cosine_iters: int) -> float:
    """The learning rate of (0-based) ``iteration``."""
    if iteration < warmup_iters:
        return lr * iteration / warmup_iters
    t = min(iteration - warmup_iters, cosine_iters)
    return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * t / cosine_iters)) / 2 if cosine_iters else lr


def set_lr(optimizer: torch.optim.Optimizer, value: float, fixed: float | None = None) -> None:
    """Every parameter group of ``optimizer`` at learning rate ``value``, but those marked ``fix_lr`` (NASiam's
    SimSiam predictor with ``--fix-pred-lr``, NASiam spec §3.1) at ``fixed``."""
    for group in optimizer.param_groups:
        group["lr"] = fixed if fixed is not None and group.get("fix_lr") else value
