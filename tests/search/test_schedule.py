"""The phase schedule (spec §1.1, §6, §7.2), default fixes and ``reference_quirks``."""

from __future__ import annotations

import pytest

from sswp_fast.errors import ConfigError
from sswp_fast.search.schedule import PhaseLengths, Schedule, parse_epoch_ratios, phase_lengths


def test_default_phase_lengths() -> None:
    assert phase_lengths(300, "0.2,0.4,0.4,0.0", 40) == PhaseLengths(60, 120, 120, 0)
    assert phase_lengths(100, "0.2,0.4,0.4,0.0", 40) == PhaseLengths(40, 20, 40, 0)
    assert phase_lengths(10, "0.2,0.4,0.4,0.0", 40) == PhaseLengths(40, 0, 4, 0)


@pytest.mark.parametrize("text", ["0.2,0.4,0.4", "0.5,0.5,0.5,0", "a,b,c,d", "-0.1,0.5,0.5,0", "0.2,0.4,0.4,0,0"])
def test_bad_epoch_ratios(text: str) -> None:
    with pytest.raises(ConfigError, match="epoch_ratios"):
        parse_epoch_ratios(text)


def test_reference_quirks_reproduce_the_reference_schedule() -> None:
    s = Schedule(300, phase_lengths(300, "0.2,0.4,0.4,0.0", 40), 20, reference_quirks=True)
    freezes = {e: s.plan(e).freeze_cells for e in range(300) if s.plan(e).freeze_cells}
    assert list(freezes) == [180, 186, 192, 198, 205, 211, 217, 224, 230, 236, 243, 249, 255, 262, 268, 274, 281,
                             287, 293]
    assert [c for cells in freezes.values() for c in cells] == list(range(19))  # cell 19 never frozen (§16.10)
    assert s.plan(60).warmup_sampling and not s.plan(60).arch_steps  # off-by-one warm-up (§16.7)
    assert s.plan(61).arch_steps
    assert not any(s.plan(e).validate for e in range(300))
    assert [e for e in range(300) if s.plan(e).save_stamp] == [299]


def test_fixed_schedule_freezes_every_cell_and_validates() -> None:
    s = Schedule(300, phase_lengths(300, "0.2,0.4,0.4,0.0", 40), 20)
    plans = [s.plan(e) for e in range(300)]
    frozen = [c for p in plans for c in p.freeze_cells]
    assert frozen == list(range(20))
    assert plans[59].warmup_sampling and not plans[60].warmup_sampling and plans[60].arch_steps
    assert plans[180].freeze_cells == (0,) and plans[299].freeze_cells == (19,)
    assert [p.epoch for p in plans if p.validate] == [299]
    assert [p.epoch for p in plans if p.save_stamp] == [299]
    assert [p.phase for p in plans[58:62]] == ["warmup", "warmup", "search", "search"]


def test_backward_order_and_colliding_prune_epochs() -> None:
    lengths = PhaseLengths(2, 2, 3, 3)
    fixed = Schedule(10, lengths, 8, prune_direct="backward")
    frozen = [c for e in range(10) for c in fixed.plan(e).freeze_cells]
    assert frozen == list(range(7, -1, -1))  # all 8 cells, although prune < layers
    quirky = Schedule(10, lengths, 8, prune_direct="backward", reference_quirks=True)
    frozen_q = [c for e in range(10) for c in quirky.plan(e).freeze_cells]
    assert frozen_q == [7, 6, 5, 4]  # duplicates collapse (§16.11)


def test_stabilize_phase_and_stamps() -> None:
    s = Schedule(20, PhaseLengths(4, 4, 6, 6), 3, valid_freq=2)
    assert s.all_frozen_epoch == 13
    assert s.plan(14).phase == "stabilize"
    assert sorted(e for e in range(20) if s.plan(e).validate) == [13, 15, 17, 19]
    assert sorted(e for e in range(20) if s.plan(e).save_stamp) == [13, 15, 17, 19]


def test_compatible_mode_zeroes_drops_from_search_end_minus_one() -> None:
    s = Schedule(300, phase_lengths(300, "0.2,0.4,0.4,0.0", 40), 20, compatible_mode=True)
    assert not s.plan(178).zero_weight_drop and s.plan(179).zero_weight_drop and s.plan(250).zero_weight_drop


def test_no_prune_phase_still_freezes_everything_within_the_run() -> None:
    s = Schedule(5, phase_lengths(5, "0.4,0.6,0.0,0.0", 0), 4)
    assert [c for e in range(5) for c in s.plan(e).freeze_cells] == [0, 1, 2, 3]
    assert s.plan(4).freeze_cells == (0, 1, 2, 3)
