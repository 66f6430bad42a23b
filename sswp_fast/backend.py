"""Which kernels a run uses: the one place that chooses between the Triton kernels (``sswp_fast.kernels``) and
the PyTorch path, from ``--kernels`` and the ``SSWP_FAST_KERNELS`` environment variable.

``auto`` is Triton on CUDA devices (when triton is installed) and PyTorch elsewhere. Triton on CPU tensors is
possible only under the Triton interpreter (``TRITON_INTERPRET=1``, exported before the process starts): far
too slow for real runs, it is how CI checks the kernels against the PyTorch path.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from .errors import ConfigError

KERNEL_CHOICES = ("auto", "triton", "torch")
KERNELS_ENV = "SSWP_FAST_KERNELS"


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_on() -> bool:
    """True when Triton kernels run in the interpreter (on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def resolve_kernels(choice: str, device: torch.device | str) -> str:
    """``"triton"`` or ``"torch"`` for a run on ``device``; ``SSWP_FAST_KERNELS`` overrides ``choice``."""
    choice = os.environ.get(KERNELS_ENV) or choice
    if choice not in KERNEL_CHOICES:
        raise ConfigError(f"kernels must be one of {', '.join(KERNEL_CHOICES)}, got {choice!r} "
                          f"(from --kernels or ${KERNELS_ENV})")
    device = torch.device(device)
    if choice == "auto":
        return "triton" if device.type == "cuda" and triton_installed() else "torch"
    if choice == "triton":
        if not triton_installed():
            raise ConfigError("--kernels triton needs the triton package: pip install triton, or use --kernels torch")
        if device.type != "cuda" and not interpreter_on():
            raise ConfigError(f"--kernels triton runs on {device.type} tensors only under the Triton interpreter: "
                              "export TRITON_INTERPRET=1 (slow, for tests) or use --kernels torch")
    return choice
