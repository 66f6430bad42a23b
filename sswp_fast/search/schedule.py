"""The phase schedule (spec §1.1, §6, §7.2) as a pure function of the epoch.

warm-up → bilevel search → forward (or backward) progressive pruning → stabilize. The trainer asks
:meth:`Schedule.plan` what an epoch does and has no phase logic of its own.

By default the reference's schedule bugs are fixed; ``reference_quirks=True`` reproduces them:
  * §16.7 off-by-one warm-up: warm-up lasts ``warmup + 1`` epochs (``epoch <= warmup``);
  * §16.10 the last prune epoch equals ``epochs`` and is never reached (one cell stays unfrozen, and no
    validation or stamp save ever happens with the default ratios);
  * §16.11 colliding prune epochs freeze only one cell.
Fixed: prune epochs spread over ``[start, finish-1]``, every cell is frozen by the last epoch, and
validation / stamp saves start at the epoch in which the last cell freezes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sswp_fast.errors import ConfigError


@dataclass(frozen=True)
class PhaseLengths:
    warmup: int
    search: int
    prune: int
    stabilize: int


def parse_epoch_ratios(text: str) -> tuple[float, float, float, float]:
    """Parse ``--epoch_ratios``: 4 comma-separated non-negative numbers summing to at most 1."""
    try:
        ratios = tuple(float(r) for r in text.split(","))
    except ValueError:
        raise ConfigError(f"--epoch_ratios {text!r} is not a comma-separated list of numbers; "
                          "give 4 fractions such as 0.2,0.4,0.4,0.0") from None
    if len(ratios) != 4 or any(not np.isfinite(r) or r < 0 for r in ratios) or sum(ratios) > 1 + 1e-9:
        raise ConfigError(f"--epoch_ratios {text!r} must be 4 non-negative fractions "
                          "(warm-up, search, prune, stabilize) summing to at most 1, e.g. 0.2,0.4,0.4,0.0")
    return ratios  # type: ignore[return-value]


def phase_lengths(epochs: int, epoch_ratios: str, min_warmup: int) -> PhaseLengths:
    """Epochs per phase: ``int(ratio * epochs)`` each, then warm-up raised to ``min_warmup`` at the
    expense of search (spec §1.1; search is clamped at 0 here, where the reference lets it go negative)."""
    warmup, search, prune, stabilize = (int(r * epochs) for r in parse_epoch_ratios(epoch_ratios))
    if warmup < min_warmup:
        gap = min_warmup - warmup
        warmup += gap
        search = max(0, search - gap)
    return PhaseLengths(warmup, search, prune, stabilize)


@dataclass(frozen=True)
class EpochPlan:
    """What one epoch does."""

    epoch: int
    phase: str
    warmup_sampling: bool
    """Weight steps sample uniformly-initialised paths without skip/pool dropping."""
    arch_steps: bool
    freeze_cells: tuple[int, ...]
    """Cells frozen at the start of this epoch (in pruning order)."""
    zero_weight_drop: bool
    """``--compatible_mode``: the weight-step drop probabilities are 0 from here on."""
    validate: bool
    save_stamp: bool
    log_arch: bool


class Schedule:
    """Epoch → :class:`EpochPlan` for one run configuration."""

    def __init__(self, epochs: int, lengths: PhaseLengths, layers: int, prune_direct: str = "forward",
                 valid_freq: int = 5, reference_quirks: bool = False, compatible_mode: bool = False):
        if prune_direct not in ("forward", "backward"):
            raise ConfigError(f"--prune_direct {prune_direct!r} is not valid; use forward or backward")
        if valid_freq < 1:
            raise ConfigError(f"--valid_freq must be at least 1, got {valid_freq}")
        self.epochs = epochs
        self.lengths = lengths
        self.quirks = reference_quirks
        self.compatible_mode = compatible_mode
        order = list(range(layers)) if prune_direct == "forward" else list(range(layers - 1, -1, -1))
        start = lengths.warmup + lengths.search
        finish = start + lengths.prune
        self.search_start = start
        if reference_quirks:
            epochs_list = np.linspace(start, finish, layers).astype(int).tolist()
            self._freeze_at: dict[int, list[int]] = {}
            for epoch in sorted(set(epochs_list)):
                self._freeze_at[epoch] = [order[len(self._freeze_at)]]
            stamp_base = finish
        else:
            last = min(max(start, finish - 1), epochs - 1)
            first = min(start, last)
            epochs_list = np.linspace(first, last, layers).astype(int).tolist()
            self._freeze_at = {}
            for cell, epoch in zip(order, epochs_list, strict=True):
                self._freeze_at.setdefault(epoch, []).append(cell)
            stamp_base = max(epochs_list)
        stab = lengths.stabilize
        self.save_stamps = {stamp_base, stamp_base + stab // 3, stamp_base + 2 * stab // 3, stamp_base + stab}
        self.valid_stamps = set(range(stamp_base, epochs, valid_freq)) | self.save_stamps
        reached = [e for e, cells in self._freeze_at.items() for _ in cells if e < epochs]
        self.all_frozen_epoch: int | None = max(reached) if len(reached) == layers else None
        """The epoch whose start freezes the last cell (None: some cell never freezes, §16.10-11)."""

    def is_warmup(self, epoch: int) -> bool:
        return epoch <= self.lengths.warmup if self.quirks else epoch < self.lengths.warmup

    def plan(self, epoch: int) -> EpochPlan:
        warm = self.is_warmup(epoch)
        if warm:
            phase = "warmup"
        elif epoch < self.search_start:
            phase = "search"
        elif self.all_frozen_epoch is not None and epoch > self.all_frozen_epoch:
            phase = "stabilize"
        else:
            phase = "prune"
        return EpochPlan(
            epoch=epoch,
            phase=phase,
            warmup_sampling=warm,
            arch_steps=not warm,
            freeze_cells=tuple(self._freeze_at.get(epoch, ())),
            zero_weight_drop=self.compatible_mode and epoch >= self.search_start - 1,
            validate=epoch in self.valid_stamps,
            save_stamp=epoch in self.save_stamps or epoch == self.epochs - 1,
            log_arch=not warm,
        )
