"""Triton helpers shared by the kernel modules: the fp32 → output-dtype cast, with bf16 rounded to nearest even
where the interpreter would truncate."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def cast_out(y, ptr, ROUND_BF16: tl.constexpr):
    """fp32 ``y`` cast to ``ptr``'s element type. ``ROUND_BF16`` first rounds ``y`` to the nearest bf16 value, ties
    to even, by bit arithmetic: the interpreter's own fp32→bf16 cast truncates (even with
    ``fp_downcast_rounding="rtne"``), a GPU's rounds to nearest. The result is exact in bf16, so the cast that
    follows cannot round it again. NaNs pass through unchanged."""
    if ROUND_BF16:
        bits = y.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        y = tl.where(y == y, bits.to(tl.float32, bitcast=True), y)
    return y.to(ptr.dtype.element_ty)
