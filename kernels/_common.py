"""What the kernel modules share: the fp32 → output-dtype cast (bf16 rounded to nearest even where the
interpreter would truncate), whether the kernels are interpreted, the device checks of their launchers, and the
weight-gradient buffer their backward launchers add into."""

from __future__ import annotations

import torch
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


INTERPRETED = type(cast_out).__name__ == "InterpretedFunction"
"""Whether the kernels were decorated under ``TRITON_INTERPRET=1`` (decided once, when the package loaded)."""


def runs_on_triton(x: torch.Tensor) -> bool:
    """Whether the kernels can run on ``x``: CUDA tensors, and CPU tensors under the interpreter (meta tensors,
    which the memory model runs, take the PyTorch path)."""
    return x.is_cuda or (INTERPRETED and x.device.type == "cpu")


def check_device(*tensors: torch.Tensor | None) -> None:
    """One-line error for CPU tensors when the kernels were compiled for a GPU rather than interpreted."""
    for t in tensors:
        if t is not None and not t.is_cuda and not INTERPRETED:
            raise RuntimeError("sswp_fast Triton kernels got CPU tensors but TRITON_INTERPRET=1 was not set when "
                               "sswp_fast.kernels was imported: export it before starting Python, or use CUDA tensors")


def weight_gradient_buffer(grad_out: torch.Tensor | None, size: int, device: torch.device) -> torch.Tensor:
    """The flat fp32 tensor a backward launcher's kernels add ``size`` weight-gradient elements into (with
    atomics): ``grad_out`` when given (a caller's zero buffer, shared by several ops: no fill here), after
    checking it, else a fresh zero one (one fill)."""
    if grad_out is None:
        return torch.zeros(size, device=device, dtype=torch.float32)
    if grad_out.numel() != size or grad_out.dtype != torch.float32 or not grad_out.is_contiguous():
        raise ValueError(f"grad_out must be a contiguous fp32 tensor of {size} elements, got "
                         f"{tuple(grad_out.shape)} {grad_out.dtype}")
    return grad_out
