"""The learning-rate schedules: the closed-form warm-up + cosine against the reference's two stepped PyTorch
schedulers, the per-epoch cosine of the search and NASiam, and ``set_lr`` with NASiam's fixed groups."""

from __future__ import annotations

import math

import pytest
import torch

from sswp_fast.runtime.lr_schedule import cosine_lr, set_lr, warmup_cosine_lr


def _reference_sequence(lr: float, lr_min: float, warmup_epochs: int, train_epochs: int, iters: int) -> list[float]:
    """The LR each iteration runs at, with the reference's construction and stepping order (spec §11.3)."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=lr)
    warmup = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: it / (warmup_epochs * iters))
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=train_epochs * iters, eta_min=lr_min)
    seen = []
    for epoch in range(warmup_epochs + train_epochs):
        scheduler = warmup if epoch < warmup_epochs else cosine
        for _ in range(iters):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()
            scheduler.step()
    return seen


@pytest.mark.parametrize("warmup_epochs,train_epochs,iters,lr_min", [(2, 5, 7, 0.0), (3, 4, 5, 1e-5)])
def test_matches_the_reference_schedulers(warmup_epochs, train_epochs, iters, lr_min):
    expected = _reference_sequence(0.025, lr_min, warmup_epochs, train_epochs, iters)
    ours = [warmup_cosine_lr(i, 0.025, lr_min, warmup_epochs * iters, train_epochs * iters)
            for i in range(len(expected))]
    assert ours[0] == 0.0
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_without_warmup_the_cosine_starts_at_the_peak_and_ends_at_the_floor():
    n = 10
    values = [warmup_cosine_lr(i, 0.1, 0.001, 0, n) for i in range(n + 1)]
    assert values[0] == 0.1
    assert values[n] == pytest.approx(0.001)
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    assert values[n // 2] == pytest.approx(0.001 + 0.099 * (1 + math.cos(math.pi / 2)) / 2)


@pytest.mark.parametrize("base,epochs", [(0.025, 300), (0.05 * 512 / 256, 800), (30.0, 100), (0.1, 7)])
def test_the_epoch_cosine_is_bit_for_bit_both_drivers_former_formula(base, epochs):
    """The search wrote ``lr·(1 + cos)/2`` and NASiam ``lr·0.5·(1 + cos)``: the same floats (halving is exact)."""
    for epoch in range(epochs + 1):
        c = math.cos(math.pi * epoch / epochs)
        assert cosine_lr(base, epoch, epochs) == base * (1 + c) / 2 == base * 0.5 * (1 + c)
    assert cosine_lr(base, 0, epochs) == base and cosine_lr(base, epochs, epochs) == 0.0


def test_set_lr_keeps_the_fixed_groups_at_their_fixed_rate():
    encoder, predictor = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [encoder], "fix_lr": False}, {"params": [predictor], "fix_lr": True}],
                                lr=1.0)
    set_lr(optimizer, 0.25, fixed=1.0)
    assert [g["lr"] for g in optimizer.param_groups] == [0.25, 1.0]
    set_lr(optimizer, 0.5)  # no fixed rate given: every group
    assert [g["lr"] for g in optimizer.param_groups] == [0.5, 0.5]
