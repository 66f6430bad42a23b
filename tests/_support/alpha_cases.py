"""Random [14, 7] architecture logits of the shapes that stress genotype export: generic, tied, skip- or
pool-heavy, saturated and constant rows (shared by the export tests and the reference comparison)."""

from __future__ import annotations

import torch

ALPHA_KINDS = 8


def random_cell_alpha(g: torch.Generator, kind: int) -> torch.Tensor:
    """Logits of shape ``kind`` (0 .. ALPHA_KINDS-1)."""
    if kind == 0:  # generic
        return torch.randn(14, 7, generator=g) * float(torch.rand(1, generator=g) * 3 + 0.01)
    if kind == 1:  # small integer logits: exact ties inside rows and between rows
        return torch.randint(0, 3, (14, 7), generator=g).float()
    if kind == 2:  # rows drawn from a pool of 3: identical rows, ties between edges
        pool = torch.randint(0, 4, (3, 7), generator=g).float()
        return pool[torch.randint(0, 3, (14,), generator=g)]
    if kind == 3:  # skip-heavy
        a = torch.randn(14, 7, generator=g)
        a[:, 0] += 1 + 3 * torch.rand(14, generator=g)
        return a
    if kind == 4:  # pool-heavy
        a = torch.randn(14, 7, generator=g)
        a[:, 1:3] += 2 * torch.rand(14, 2, generator=g)
        return a
    if kind == 5:  # one non-parametric op strongly boosted per edge
        a = torch.randn(14, 7, generator=g)
        a[torch.arange(14), torch.randint(0, 3, (14,), generator=g)] += 4
        return a
    if kind == 6:  # extreme logits: probabilities underflow to exactly 0 and 1
        a = torch.zeros(14, 7)
        a[torch.arange(14), torch.randint(0, 7, (14,), generator=g)] = 200.0
        a[:, 0] += (torch.rand(14, generator=g) < 0.5).float() * 250
        return a
    return torch.zeros(14, 7) + torch.randint(0, 2, (14, 1), generator=g).float()  # constant rows
