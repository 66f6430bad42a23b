"""The resume state every driver shares (``sswp_fast.runtime.run_state``): the random-number generators and the endless
loader pass."""

from __future__ import annotations

import torch

from sswp_fast.runtime.run_state import cycle, restore_rng_state, rng_state


def test_restoring_the_rng_state_repeats_the_draws():
    state = rng_state()
    first = torch.rand(5)
    torch.rand(3)
    restore_rng_state(state)
    torch.testing.assert_close(torch.rand(5), first, rtol=0, atol=0)
    assert ("cuda" in state) == torch.cuda.is_available()


def test_a_bare_cpu_state_from_an_older_checkpoint_restores_the_cpu_generator():
    state = torch.get_rng_state()
    first = torch.rand(4)
    restore_rng_state(state)
    torch.testing.assert_close(torch.rand(4), first, rtol=0, atol=0)


def test_cycle_repeats_fresh_passes_and_ends_on_an_empty_loader():
    class Passes:
        def __init__(self):
            self.count = 0

        def __iter__(self):
            self.count += 1
            return iter([self.count, self.count])

    items = cycle(Passes())
    assert [next(items) for _ in range(5)] == [1, 1, 2, 2, 3]
    assert list(cycle([])) == []
