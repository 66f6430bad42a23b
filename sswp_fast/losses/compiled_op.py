"""The compiled ops of ``csrc/`` as PyTorch custom ops: ``sswp_fast._C`` holds the schemas and CPU kernels,
``sswp_fast._C_cuda`` the CUDA kernels; autograd is registered in C++ (``csrc/info_nce_autograd.cpp``) and
the fake (meta) kernels here, so eager code, ``torch.compile`` and ``torch.library.opcheck`` all see one op.

``available(device_type)`` says whether the op has kernels for that device; :func:`sswp_fast.info_nce` uses it
and otherwise falls back to the PyTorch formula of :mod:`sswp_fast.losses.objectives` with a one-time warning.
"""

from __future__ import annotations

import torch

try:
    from sswp_fast import _C  # noqa: F401  (importing the library registers torch.ops.sswp_fast.*)
except ImportError:
    _LOADED = False
else:
    _LOADED = True

if _LOADED:
    try:
        from sswp_fast import _C_cuda  # noqa: F401  (registers the CUDA kernels; loads with or without a GPU)
    except ImportError:
        pass

# device types with kernels, read once at import (a constant for torch.compile to trace through)
_DEVICE_TYPES = frozenset(
    device for device, key in (("cpu", "CPU"), ("cuda", "CUDA"))
    if _LOADED and torch._C._dispatch_has_kernel_for_dispatch_key("sswp_fast::info_nce_forward", key))


def available(device_type: str = "cpu") -> bool:
    """True when the compiled InfoNCE op has kernels for ``device_type`` (``"cpu"`` or ``"cuda"``)."""
    return device_type in _DEVICE_TYPES


if _LOADED:

    @torch.library.register_fake("sswp_fast::info_nce_forward")
    def _info_nce_forward_fake(features: torch.Tensor, temperature: float):
        acc = torch.float64 if features.dtype == torch.float64 else torch.float32
        rows = features.shape[0]
        return (features.new_empty(()), features.new_empty((rows,), dtype=acc),
                features.new_empty((rows,), dtype=torch.long))

    @torch.library.register_fake("sswp_fast::info_nce_backward")
    def _info_nce_backward_fake(grad_loss: torch.Tensor, features: torch.Tensor, lse: torch.Tensor,
                                temperature: float):
        return torch.empty_like(features)


def info_nce_op(features: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean InfoNCE loss and, per row, how many negatives score above the positive (compiled op)."""
    loss, _, rank = torch.ops.sswp_fast.info_nce_forward(features, float(temperature))
    return loss, rank
