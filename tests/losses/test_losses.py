"""Objectives (spec §1.3, §12): InfoNCE against the reference's logits construction, accuracies, BYOL."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sswp_fast.losses.objectives import byol_loss, info_nce, info_nce_topk, reference_logits, topk_accuracy


def spec_info_nce_logits(features: torch.Tensor, temperature: float) -> torch.Tensor:
    """§1.3 step by step: labels, indicator, normalise, S, drop the diagonal, positives then negatives."""
    n = features.shape[0] // 2
    labels = torch.cat([torch.arange(n), torch.arange(n)])
    same = (labels[:, None] == labels[None, :]).float()
    z = F.normalize(features, dim=1)
    sim = z @ z.t()
    keep = ~torch.eye(2 * n, dtype=torch.bool)
    same = same[keep].view(2 * n, -1)
    sim = sim[keep].view(2 * n, -1)
    positives = sim[same.bool()].view(2 * n, -1)
    negatives = sim[~same.bool()].view(2 * n, -1)
    return torch.cat([positives, negatives], dim=1) / temperature


@pytest.mark.parametrize("n", [1, 2, 5, 16])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_info_nce_equals_the_reference_construction(n: int, temperature: float) -> None:
    features = torch.randn(2 * n, 7, dtype=torch.float64, requires_grad=True)
    expected_logits = spec_info_nce_logits(features, temperature)
    expected = F.cross_entropy(expected_logits, torch.zeros(2 * n, dtype=torch.long))
    loss = info_nce(features, temperature)
    torch.testing.assert_close(loss, expected)
    (g_ours,) = torch.autograd.grad(loss, features)
    (g_spec,) = torch.autograd.grad(expected, features)
    torch.testing.assert_close(g_ours, g_spec)
    torch.testing.assert_close(reference_logits(features.float(), temperature), expected_logits.float(),
                               rtol=1e-5, atol=1e-5)


def test_instance_discrimination_topk_matches_topk_of_the_reference_logits() -> None:
    features = torch.randn(24, 5)
    logits = reference_logits(features, 0.07)
    expected = topk_accuracy(logits, torch.zeros(24, dtype=torch.long))
    for ours, ref in zip(info_nce_topk(features), expected, strict=True):
        torch.testing.assert_close(ours, ref)


def test_info_nce_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="even number"):
        info_nce(torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"\[2N, D\]"):
        info_nce(torch.randn(4, 3, 2))
    with pytest.raises(ValueError, match="temperature"):
        info_nce(torch.randn(4, 3), temperature=0.0)


def test_byol_loss_is_two_minus_two_cosine() -> None:
    p, z = torch.randn(6, 4), torch.randn(6, 4)
    expected = (2 - 2 * (F.normalize(p, dim=1) * F.normalize(z, dim=1)).sum(1)).mean()
    torch.testing.assert_close(byol_loss(p, z), expected)
    assert byol_loss(p, p).abs() < 1e-6
