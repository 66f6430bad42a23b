"""Which executor a search runs, and why: the one place that chooses between the device executor (the sampled
path kept on the device, :mod:`sswp_fast.search.executors.device`, with the Triton kernels of ``sswp_fast.kernels``)
and the PyTorch executor (the path read on the host once a step, PyTorch ops), from ``--kernels``, ``--compile`` and
the ``SSWP_FAST_KERNELS`` environment variable.

``auto`` never refuses: it takes the device executor on CUDA devices when triton is installed, and the PyTorch
executor otherwise, and says why. ``--compile`` runs the device executor's steps under ``torch.compile``; with a
feature those compiled steps lack (:data:`COMPILED_STEP_LIMITS`) it is a one-line error.
``SSWP_FAST_KERNELS`` stands in for ``--kernels auto`` only: an explicit flag wins. Triton on CPU tensors runs only
under the Triton interpreter (``TRITON_INTERPRET=1``, read when a kernel launches): far too slow for real runs,
it is how CI checks the kernels.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from sswp_fast.errors import ConfigError

if TYPE_CHECKING:
    from sswp_fast.search.config import SearchConfig

KERNEL_CHOICES = ("auto", "triton", "torch")
KERNELS_ENV = "SSWP_FAST_KERNELS"


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreter_on() -> bool:
    """True when Triton kernels would run on CPU tensors, in the interpreter: ``TRITON_INTERPRET`` as Triton reads
    it now (its ``knobs.runtime.interpret``, as the kernels' launchers do)."""
    if not triton_installed():
        return False
    import triton

    return bool(triton.knobs.runtime.interpret)


@dataclass(frozen=True)
class Limit:
    """A feature the compiled steps lack: the flag that asks for it, a test on (config, processes), why, and how
    to do without it."""

    flag: str
    asked: Callable[[SearchConfig, int], bool]
    why: str
    instead: str


COMPILED_STEP_LIMITS: tuple[Limit, ...] = (
    Limit("--amp", lambda c, n: c.amp != "off", "its compiled steps are float32 only (not yet built or tested "
          "under autocast)", "pass --amp off"),
    Limit("torchrun (several processes)", lambda c, n: n > 1,
          "its compiled steps do not synchronise BatchNorm across processes yet", "run in a single process"),
)
"""What ``--compile`` (the device executor's steps under ``torch.compile``) cannot run."""


@dataclass(frozen=True)
class Executor:
    """The executor of a run: ``kernels`` (``"triton"`` or ``"torch"``), whether the path stays on the device
    (``dispatch``: with the Triton kernels, and under ``--compile``), and the reason for the choice."""

    kernels: str
    dispatch: bool
    reason: str

    @property
    def name(self) -> str:
        return "device" if self.dispatch else "torch"

    def describe(self) -> str:
        """``executor: torch (cpu device: the Triton kernels run on CUDA)``-style text for logs and plans."""
        return f"{self.name} ({self.reason})"


def _requested_kernels(choice: str) -> tuple[str, str]:
    """(choice, where it came from): ``SSWP_FAST_KERNELS`` replaces ``auto`` only."""
    source = "--kernels"
    if choice == "auto" and os.environ.get(KERNELS_ENV):
        choice, source = os.environ[KERNELS_ENV], f"${KERNELS_ENV}"
        if choice not in KERNEL_CHOICES:  # the flag itself is checked with the configuration
            raise ConfigError(f"{source} must be one of {', '.join(KERNEL_CHOICES)}, got {choice!r}")
    return choice, source


def _check_triton_runs(device: torch.device, source: str) -> None:
    if not triton_installed():
        raise ConfigError(f"{source} triton needs the triton package: pip install triton, or use --kernels torch")
    if device.type != "cuda" and not interpreter_on():
        raise ConfigError(f"{source} triton runs on {device.type} tensors only under the Triton interpreter: "
                          "export TRITON_INTERPRET=1 (slow, for tests) or use --kernels torch")


def resolve_kernels(choice: str, device: torch.device | str) -> str:
    """``"triton"`` or ``"torch"`` for kernels on ``device``, features aside (:func:`choose_executor` weighs
    those): ``auto`` (or ``SSWP_FAST_KERNELS`` in its place) is Triton on CUDA when triton is installed."""
    choice, source = _requested_kernels(choice)
    device = torch.device(device)
    if choice == "auto":
        return "triton" if device.type == "cuda" and triton_installed() else "torch"
    if choice == "triton":
        _check_triton_runs(device, source)
    return choice


def choose_executor(config: SearchConfig, device: torch.device | str, processes: int = 1) -> Executor:
    """The executor of a search ``config`` on ``device`` with ``processes`` processes (see the module docstring);
    a one-line :class:`ConfigError` only when ``--compile`` cannot run the requested features."""
    device = torch.device(device)
    choice, source = _requested_kernels(config.kernels)
    if config.compile != "off":
        for limit in COMPILED_STEP_LIMITS:
            if limit.asked(config, processes):
                raise ConfigError(f"--compile {config.compile} runs the device executor's compiled steps, which lack "
                                  f"{limit.flag} ({limit.why}); drop --compile or {limit.instead}")
        kernels = resolve_kernels(config.kernels, device)
        return Executor(kernels, True, f"--compile {config.compile} runs the device executor"
                        + (" with the Triton kernels" if kernels == "triton" else " with PyTorch kernels"))
    if choice == "torch":
        return Executor("torch", False, f"{source} torch")
    if choice == "triton":
        _check_triton_runs(device, source)
        return Executor("triton", True, f"{source} triton")
    if device.type != "cuda":
        return Executor("torch", False, f"{device.type} device: the Triton kernels run on CUDA")
    if not triton_installed():
        return Executor("torch", False, "triton is not installed")
    return Executor("triton", True, "CUDA device with Triton: the sampled path stays on the device")


@dataclass(frozen=True)
class GraphChoice:
    """Whether a run's steps are captured as CUDA graphs (:mod:`sswp_fast.search.executors.cuda_graphs`), whether a
    failed capture stops the run (``strict``: ``--cuda_graphs on``), and why."""

    enabled: bool
    strict: bool
    reason: str

    def describe(self) -> str:
        return f"{'on' if self.enabled else 'off'} ({self.reason})"


def _graphs_blocker(config: SearchConfig, device: torch.device, executor: Executor, processes: int) -> str | None:
    """Why the steps of this run cannot be captured, or None."""
    if device.type != "cuda":
        return f"{device.type} device: CUDA graphs need CUDA"
    if not executor.dispatch:
        return "the PyTorch executor reads the sampled path on the host every step"
    if processes > 1:
        return "torchrun: the collectives of a step are not captured"
    if config.amp == "fp16":
        return "--amp fp16 reads the loss scaler's overflow flag on the host"
    return None


def choose_graphs(config: SearchConfig, device: torch.device | str, executor: Executor,
                  processes: int = 1) -> GraphChoice:
    """``--cuda_graphs``: ``auto`` captures wherever the run allows it (a CUDA device, the device executor, one
    process, no fp16 loss scaling) and says why not elsewhere; ``on`` where it cannot is a one-line error."""
    if config.cuda_graphs == "off":
        return GraphChoice(False, False, "--cuda_graphs off")
    blocker = _graphs_blocker(config, torch.device(device), executor, processes)
    if blocker is None:
        return GraphChoice(True, config.cuda_graphs == "on", f"--cuda_graphs {config.cuda_graphs}: each step kind "
                           "captured once per learning rate and frozen prefix, then replayed")
    if config.cuda_graphs == "on":
        raise ConfigError(f"--cuda_graphs on cannot capture this run's steps ({blocker}); "
                          "use --cuda_graphs auto, which runs them eagerly")
    return GraphChoice(False, False, f"auto: {blocker}")
