"""The architecture update (spec §5.5-§5.6) as pure tensor functions over all edges at once.

gate gradients ``G`` → alpha gradients (closed form) → Adam with per-edge step counters → pair rescale.
Every function takes ``[N, 7]`` tensors (``N`` = edges, any leading shape flattened by the caller) and masks
out frozen edges, which the reference removes from the optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def alpha_grad_two(alpha: torch.Tensor, gate_grad: torch.Tensor, active: torch.Tensor,
                   inactive: torch.Tensor) -> torch.Tensor:
    """Mode ``two``: ``∂α_a = p_a·p_b·(G_a − G_b)``, ``∂α_b = −∂α_a``, 0 elsewhere, with
    ``p = softmax(α_a, α_b)`` (the reference's 2×2 double sum in closed form)."""
    idx = torch.stack([active, inactive], dim=-1)
    p = torch.softmax(alpha.gather(-1, idx), dim=-1)
    g = gate_grad.gather(-1, idx)
    d = p[..., 0] * p[..., 1] * (g[..., 0] - g[..., 1])
    grad = torch.zeros_like(alpha)
    grad.scatter_(-1, idx, torch.stack([d, -d], dim=-1))
    return grad


def alpha_grad_full(alpha: torch.Tensor, gate_grad: torch.Tensor) -> torch.Tensor:
    """Mode ``full_v2``: ``∂α_i = p_i·(G_i − Σ_j p_j·G_j)`` with ``p = softmax(α)`` over all 7 ops."""
    p = torch.softmax(alpha, dim=-1)
    return p * (gate_grad - (p * gate_grad).sum(-1, keepdim=True))


def rescale_pair(old_alpha: torch.Tensor, new_alpha: torch.Tensor, active: torch.Tensor,
                 inactive: torch.Tensor) -> torch.Tensor:
    """Shift the updated pair ``{a, b}`` so its exp-mass ``e^α_a + e^α_b`` is what it was before the step:
    the pair keeps its share of the 7-way softmax and only the split inside it changes."""
    idx = torch.stack([active, inactive], dim=-1)
    offset = (torch.logsumexp(new_alpha.gather(-1, idx), dim=-1)
              - torch.logsumexp(old_alpha.gather(-1, idx), dim=-1))
    out = new_alpha.clone()
    out.scatter_(-1, idx, new_alpha.gather(-1, idx) - offset.unsqueeze(-1))
    return out


@dataclass
class ArchAdamConfig:
    lr: float = 1e-3
    beta1: float = 0.0
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0


class ArchAdam:
    """Adam over ``[N, 7]`` logits with one step counter per edge (one Adam state per edge tensor in the
    reference); rows with ``mask`` False are skipped entirely, like the frozen edges the reference drops."""

    def __init__(self, num_edges: int, device: torch.device | str, config: ArchAdamConfig):
        self.config = config
        self.exp_avg = torch.zeros(num_edges, 7, device=device)
        self.exp_avg_sq = torch.zeros(num_edges, 7, device=device)
        self.steps = torch.zeros(num_edges, device=device)

    @torch.no_grad()
    def step(self, alpha: torch.Tensor, grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Return the updated logits (``alpha`` unchanged where ``mask`` is False)."""
        cfg = self.config
        m = mask.unsqueeze(-1)
        if cfg.weight_decay:
            grad = grad + cfg.weight_decay * alpha
        self.steps.copy_(torch.where(mask, self.steps + 1, self.steps))  # in place: the state of a CUDA graph
        self.exp_avg.copy_(torch.where(m, cfg.beta1 * self.exp_avg + (1 - cfg.beta1) * grad, self.exp_avg))
        self.exp_avg_sq.copy_(torch.where(m, cfg.beta2 * self.exp_avg_sq + (1 - cfg.beta2) * grad * grad,
                                          self.exp_avg_sq))
        t = self.steps.clamp_min(1).unsqueeze(-1)
        bias1 = 1 - cfg.beta1 ** t
        bias2 = 1 - cfg.beta2 ** t
        denom = self.exp_avg_sq.sqrt() / bias2.sqrt() + cfg.eps
        return torch.where(m, alpha - (cfg.lr / bias1) * self.exp_avg / denom, alpha)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"exp_avg": self.exp_avg.clone(), "exp_avg_sq": self.exp_avg_sq.clone(), "steps": self.steps.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in ("exp_avg", "exp_avg_sq", "steps"):
            value = state[name]
            current = getattr(self, name)
            if value.shape != current.shape:
                raise ValueError(f"arch optimizer state {name} has shape {tuple(value.shape)}, "
                                 f"expected {tuple(current.shape)}")
            current.copy_(value)
