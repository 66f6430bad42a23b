"""The device of a run: ``--device`` parsed (a one-line error for a bad name), whether it is present on this
machine (a ``--dry_run`` plans for a device without needing it; a run needs it), how much memory it has free,
and the memory layout a run uses on it.
"""

from __future__ import annotations

import os

import torch

from sswp_fast.errors import ConfigError

GB = 1e9


def pick_device(name: str, local_rank: int | None = None) -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else is parsed as a :class:`torch.device`. With
    ``local_rank`` (a multi-process run) a CUDA device without an index becomes ``cuda:{local_rank}``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: sswp-fast runs on cpu or cuda devices; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and device.index is None and local_rank is not None:
        device = torch.device("cuda", local_rank)
    return device


def present(device: torch.device) -> bool:
    """Whether ``device`` exists on this machine."""
    if device.type != "cuda":
        return True
    return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()


def require_present(device: torch.device) -> None:
    """A one-line error when a run would start on a device this machine does not have."""
    if not present(device):
        found = f"{torch.cuda.device_count()} CUDA devices" if torch.cuda.is_available() else "no CUDA device"
        raise ConfigError(f"--device {device} is not on this machine ({found}); use --device cpu, or add "
                          "--dry_run to plan the run without it")


def free_memory(device: torch.device) -> float | None:
    """Bytes a run on ``device`` can still take: free GPU memory on CUDA, available RAM (``MemAvailable``) on CPU;
    None when unknown (a device that is not here, a system without ``/proc/meminfo``)."""
    if not present(device):
        return None
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024.0
    except OSError:
        pass
    return None


def describe(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3, 79.2 GB free)``, ``cpu (2 cores, 21.0 GB available)`` or
    ``cuda (not on this machine: planned only)``."""
    if not present(device):
        return f"{device} (not on this machine: planned only)"
    free = free_memory(device)
    free_text = "unknown memory free" if free is None else f"{free / GB:.1f} GB free"
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)}, {free_text})"
    return f"{device} ({os.cpu_count()} cores, {free_text})"


def pick_memory_format(name: str, device: torch.device) -> torch.memory_format:
    """``auto`` → channels-last on CPU (oneDNN's depthwise and pooling kernels are about twice as fast in
    that layout, see benchmarks/), the default contiguous layout elsewhere."""
    if name == "auto":
        name = "channels_last" if device.type == "cpu" else "contiguous"
    return torch.channels_last if name == "channels_last" else torch.contiguous_format
