"""Path sampling against the exact probabilities of the reference's procedure (spec §5.2)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sswp_fast import sample_paths
from sswp_fast.search.sampling import mean_edge_entropy

POOLS = {1, 2}


def pair_probs(p: torch.Tensor) -> dict[frozenset, float]:
    """Unordered pair probabilities of two draws without replacement ∝ p."""
    out = {}
    for i, j in itertools.combinations(range(len(p)), 2):
        if p[i] > 0 and p[j] > 0:
            out[frozenset((i, j))] = float(p[i] * p[j] / (1 - p[i]) + p[j] * p[i] / (1 - p[j]))
    return out


def exact_two(alpha: torch.Tensor, skip: float, pool: float, warmup: bool) -> torch.Tensor:
    """P(active=a, inactive=b) as a 7×7 matrix, derived from the spec's procedure."""
    p = torch.softmax(alpha.double(), 0)
    first = pair_probs(p)
    final = dict(first)
    if not warmup:
        q = p.clone()
        q[:3] = 0
        q /= q.sum()
        restricted = pair_probs(q)
        redraw_mass = 0.0
        for pair, prob in first.items():
            has_pool = bool(pair & POOLS)
            r = pool * has_pool + (1 - pool * has_pool) * skip * (0 in pair)
            final[pair] = prob * (1 - r)
            redraw_mass += prob * r
        for pair, prob in restricted.items():
            final[pair] = final.get(pair, 0.0) + redraw_mass * prob
    joint = torch.zeros(7, 7, dtype=torch.float64)
    for pair, prob in final.items():
        a, b = tuple(pair)
        joint[a, b] = prob * p[a] / (p[a] + p[b])
        joint[b, a] = prob * p[b] / (p[a] + p[b])
    return joint


def exact_full(alpha: torch.Tensor, skip: float, pool: float, warmup: bool) -> torch.Tensor:
    p = torch.softmax(alpha.double(), 0)
    if warmup:
        return p
    q = p.clone()
    q[:3] = 0
    q /= q.sum()
    r = torch.zeros(7, dtype=torch.float64)
    r[0], r[1], r[2] = skip, pool, pool
    return p * (1 - r) + (p * r).sum() * q


def empirical(active: torch.Tensor, inactive: torch.Tensor | None) -> torch.Tensor:
    if inactive is None:
        return torch.bincount(active, minlength=7).double() / active.numel()
    return torch.bincount(active * 7 + inactive, minlength=49).double().view(7, 7) / active.numel()


ALPHAS = [torch.zeros(7), torch.tensor([1.5, 0.3, -0.2, 0.0, 0.8, -1.0, 0.4]),
          torch.tensor([2.0, 2.0, 1.0, -1.0, 0.0, 0.5, -0.5])]


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize(("skip", "pool", "warmup"), [(0.0, 0.0, False), (0.2, 0.0, False), (0.5, 0.7, False),
                                                      (0.9, 0.9, True)])
def test_two_mode_joint_distribution_matches_spec(alpha, skip, pool, warmup) -> None:
    n = 200_000
    gen = torch.Generator().manual_seed(1)
    active, inactive = sample_paths(alpha.expand(n, 7), mode="two", skip_drop_prob=skip, pool_drop_prob=pool,
                                    warmup=warmup, generator=gen)
    assert active.shape == (n,) and inactive.shape == (n,) and active.dtype == torch.long
    assert bool((active != inactive).all())
    expected = exact_two(alpha, skip, pool, warmup)
    assert abs(expected.sum().item() - 1) < 1e-9
    observed = empirical(active, inactive)
    # 5 standard errors of a binomial proportion, per cell
    tolerance = 5 * (expected * (1 - expected) / n).sqrt() + 1e-6
    assert bool(((observed - expected).abs() <= tolerance).all()), (observed - expected).abs().max()


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize(("skip", "pool", "warmup"), [(0.0, 0.0, False), (0.3, 0.6, False), (1.0, 1.0, True)])
def test_full_v2_distribution_matches_spec(alpha, skip, pool, warmup) -> None:
    n = 200_000
    gen = torch.Generator().manual_seed(2)
    active, inactive = sample_paths(alpha.expand(n, 7), mode="full_v2", skip_drop_prob=skip, pool_drop_prob=pool,
                                    warmup=warmup, generator=gen)
    assert inactive is None
    expected = exact_full(alpha, skip, pool, warmup)
    observed = empirical(active, None)
    tolerance = 5 * (expected * (1 - expected) / n).sqrt() + 1e-6
    assert bool(((observed - expected).abs() <= tolerance).all())


def test_certain_drop_never_yields_skip_or_pool() -> None:
    alpha = torch.randn(3, 14, 7)
    active, inactive = sample_paths(alpha, skip_drop_prob=1.0, pool_drop_prob=1.0,
                                    generator=torch.Generator().manual_seed(0))
    assert active.shape == (3, 14)
    assert bool((active >= 3).all() and (inactive >= 3).all())


def test_same_generator_state_gives_same_paths_and_bad_input_is_rejected() -> None:
    alpha = torch.randn(20, 14, 7)
    a1 = sample_paths(alpha, generator=torch.Generator().manual_seed(5))
    a2 = sample_paths(alpha, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a1[0], a2[0]) and torch.equal(a1[1], a2[1])
    with pytest.raises(ValueError):
        sample_paths(torch.zeros(3, 6))
    with pytest.raises(ValueError):
        sample_paths(torch.zeros(3, 7), mode="three")


def test_mean_edge_entropy_is_ln7_while_uniform_and_falls_as_edges_decide():
    assert mean_edge_entropy(torch.zeros(3, 14, 7)) == pytest.approx(math.log(7))
    decided = torch.zeros(2, 14, 7)
    decided[..., 4] = 50.0
    assert mean_edge_entropy(decided) == pytest.approx(0.0, abs=1e-12)
    half = torch.zeros(2, 14, 7)
    half[0, :, 4] = 50.0  # one cell decided, one uniform: the mean over the edges
    assert mean_edge_entropy(half) == pytest.approx(math.log(7) / 2)
