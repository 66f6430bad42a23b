"""Inputs of the slotted dwpw kernels: the first and second halves of the DARTS convolutions as variants, and
random inputs with one bank pair (depthwise, pointwise) per variant."""

from __future__ import annotations

import torch

from sswp_fast.kernels.sampled_dwpw import Variant

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FIRST_HALVES = (Variant(3, 1, 1), Variant(5, 2, 1), Variant(3, 2, 2), Variant(5, 4, 2))  # sep3 sep5 dil3 dil5
SECOND_HALVES = (Variant(3, 1, 1), Variant(5, 2, 1))  # the stride-1 halves of sep3 and sep5


def make(variants, slots: int, c: int, h: int, w: int, dtype=torch.float32, n: int = 2):
    x = torch.randn(n, slots * c, h, w, device=DEVICE, dtype=dtype)
    banks = []
    for v in variants:
        banks += [torch.randn(slots, c, 1, v.kernel, v.kernel, device=DEVICE, dtype=dtype) / v.kernel,
                  torch.randn(slots, c, c, 1, 1, device=DEVICE, dtype=dtype) / c**0.5]
    return x, banks
