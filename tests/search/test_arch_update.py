"""Alpha gradients, Adam and rescale against the reference's per-edge procedure (spec §5.5-§5.6)."""

from __future__ import annotations

import math

import torch

from sswp_fast.search.arch_update import ArchAdam, ArchAdamConfig, alpha_grad_full, alpha_grad_two, rescale_pair


def loop_grad_two(alpha: torch.Tensor, g: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """The spec's double sum: grad[idx_i] += G[idx_j]·p_j·(δ_ij − p_i) over the pair (a, b)."""
    idx = [a, b]
    p = torch.softmax(torch.stack([alpha[a], alpha[b]]), 0)
    grad = torch.zeros(7, dtype=alpha.dtype)
    for i in range(2):
        for j in range(2):
            grad[idx[i]] += g[idx[j]] * p[j] * (float(i == j) - p[i])
    return grad


def test_two_mode_closed_form_equals_double_sum() -> None:
    alpha = torch.randn(50, 7, dtype=torch.float64)
    g = torch.randn(50, 7, dtype=torch.float64)
    a = torch.randint(0, 7, (50,))
    b = (a + torch.randint(1, 7, (50,))) % 7
    grad = alpha_grad_two(alpha, g, a, b)
    for n in range(50):
        torch.testing.assert_close(grad[n], loop_grad_two(alpha[n], g[n], int(a[n]), int(b[n])))


def test_full_mode_formula() -> None:
    alpha = torch.randn(10, 7, dtype=torch.float64)
    g = torch.randn(10, 7, dtype=torch.float64)
    p = torch.softmax(alpha, -1)
    expected = torch.zeros_like(alpha)
    for i in range(7):
        for j in range(7):
            expected[:, i] += g[:, j] * p[:, j] * (float(i == j) - p[:, i])
    torch.testing.assert_close(alpha_grad_full(alpha, g), expected)


def test_arch_adam_equals_torch_adam_per_edge_with_frozen_rows() -> None:
    cfg = ArchAdamConfig(lr=1e-2, beta1=0.0, beta2=0.999, weight_decay=0.01)
    n = 6
    alpha = torch.randn(n, 7)
    params = [torch.nn.Parameter(alpha[i].clone()) for i in range(n)]
    torch_opts = [torch.optim.Adam([p], lr=cfg.lr, betas=(0.0, 0.999), weight_decay=cfg.weight_decay) for p in params]
    ours = ArchAdam(n, "cpu", cfg)
    mask = torch.ones(n, dtype=torch.bool)
    for step in range(5):
        if step == 3:
            mask[2] = False  # frozen: dropped from the optimizer
        grad = torch.randn(n, 7)
        grad[:, :3] = 0
        alpha = ours.step(alpha, grad, mask)
        for i in range(n):
            if mask[i]:
                params[i].grad = grad[i].clone()
                torch_opts[i].step()
    for i in range(n):
        torch.testing.assert_close(alpha[i], params[i].detach(), rtol=1e-5, atol=1e-6)
    assert ours.steps.tolist() == [5, 5, 3, 5, 5, 5]


def test_beta1_zero_leaves_zero_gradient_entries_in_place() -> None:
    ours = ArchAdam(1, "cpu", ArchAdamConfig())
    alpha = torch.randn(1, 7)
    grad = torch.zeros(1, 7)
    grad[0, 3], grad[0, 5] = 0.5, -0.5
    new = ours.step(alpha, grad, torch.ones(1, dtype=torch.bool))
    moved = (new != alpha)[0].nonzero().flatten().tolist()
    assert moved == [3, 5]


def test_rescale_preserves_pair_mass_and_other_entries() -> None:
    old = torch.randn(8, 7, dtype=torch.float64)
    new = old + torch.randn(8, 7, dtype=torch.float64) * 0.1
    a = torch.randint(0, 7, (8,))
    b = (a + 3) % 7
    out = rescale_pair(old, new, a, b)
    for n in range(8):
        ia, ib = int(a[n]), int(b[n])
        before = math.exp(old[n, ia]) + math.exp(old[n, ib])
        after = math.exp(out[n, ia]) + math.exp(out[n, ib])
        assert abs(before - after) < 1e-9
        assert abs((out[n, ia] - out[n, ib]) - (new[n, ia] - new[n, ib])) < 1e-12
        others = [k for k in range(7) if k not in (ia, ib)]
        assert torch.equal(out[n, others], new[n, others])
