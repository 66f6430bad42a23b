"""Mixed precision (``--amp``), shared by the search and the downstream stages.

``off`` runs in float32; ``bf16`` and ``fp16`` run the network under ``torch.autocast`` with that dtype; ``auto``
(a bare ``--amp``) is fp16 on CUDA and bf16 elsewhere. Losses are computed in float32 outside autocast by the
callers, and fp16 needs loss scaling (:class:`torch.amp.GradScaler`), bf16 does not.
"""

from __future__ import annotations

import contextlib

import torch

AMP_MODES = ("off", "bf16", "fp16", "auto")


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``--amp amp`` on ``device``; None for ``off``."""
    if amp == "off":
        return None
    if amp == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def autocast(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``, or nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def precision_text(dtype: torch.dtype | None) -> str:
    """How a run computes under autocast to ``dtype`` (None: float32), in a plan's words."""
    if dtype is None:
        return "float32"
    scaling = ", with loss scaling" if dtype == torch.float16 else ""
    return f"{str(dtype).removeprefix('torch.')} autocast (losses, BatchNorm statistics and weights float32{scaling})"
