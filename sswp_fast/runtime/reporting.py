"""What a run tells people: ``log.txt`` (the reference's bare-message log), ``metrics.jsonl``, the alpha
history for ``sswp-fast plot``, an optional TensorBoard writer, and a progress bar with ETA on terminals."""

from __future__ import annotations

import io
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sswp_fast.runtime.checkpoint import atomic_write_bytes

ALPHA_HISTORY = "alpha_history.npz"
METRICS = "metrics.jsonl"


def open_log(run_dir: Path, name: str = "sswp_fast.run") -> logging.Logger:
    """A logger writing bare messages to stdout and ``run_dir/log.txt`` (appending); handlers from an
    earlier run in the same process are removed first (reference quirk §16.25 fixed)."""
    logger = logging.getLogger(name)
    close_log(logger)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    fmt = logging.Formatter("%(message)s")
    for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(run_dir / "log.txt")):
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger


def quiet_log(name: str = "sswp_fast.run.quiet") -> logging.Logger:
    """A logger that drops every message: the log of the ranks other than 0 in a multi-process run."""
    logger = logging.getLogger(name)
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return logger


class Silent:
    """Stands in for any reporter below (metrics, alpha history, TensorBoard, progress) on the ranks other than 0
    of a multi-process run: every method call does nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def close_log(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)


class MetricsFile:
    """``metrics.jsonl``: one JSON object per epoch; on resume, lines of epochs not yet re-run are dropped."""

    def __init__(self, run_dir: Path, resume_epoch: int):
        self.path = run_dir / METRICS
        kept: list[str] = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip() and json.loads(line).get("epoch", 0) < resume_epoch:
                    kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class AlphaHistory:
    """Softmax-free alpha logits after every epoch, ``alpha_history.npz`` (``epochs`` [E], ``alpha`` [E,L,14,7])."""

    def __init__(self, run_dir: Path, resume_epoch: int):
        self.path = run_dir / ALPHA_HISTORY
        self.epochs: list[int] = []
        self.alphas: list[np.ndarray] = []
        if self.path.exists() and resume_epoch > 0:
            with np.load(self.path, allow_pickle=False) as data:
                for epoch, alpha in zip(data["epochs"].tolist(), data["alpha"], strict=True):
                    if epoch < resume_epoch:
                        self.epochs.append(epoch)
                        self.alphas.append(alpha)

    def append(self, epoch: int, alpha: np.ndarray) -> None:
        self.epochs.append(epoch)
        self.alphas.append(alpha.astype(np.float32))
        buffer = io.BytesIO()
        np.savez(buffer, epochs=np.asarray(self.epochs, dtype=np.int64), alpha=np.stack(self.alphas))
        atomic_write_bytes(buffer.getvalue(), self.path)


class TensorBoard:
    """Scalars to TensorBoard when the ``tensorboard`` package is installed; otherwise does nothing."""

    def __init__(self, run_dir: Path):
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self.writer = SummaryWriter(str(run_dir))

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Progress:
    """A one-line progress bar on stderr, shown when stderr is a terminal (``auto``) or ``on``. Epochs are counted
    from 0, as in the log. :meth:`eta` is the one estimate of the time left (the bar's and the epoch line's): the
    time since the first epoch of this process began, scaled to the epochs still to run."""

    def __init__(self, mode: str, total_epochs: int, start_epoch: int = 0):
        self.enabled = mode == "on" or (mode == "auto" and sys.stderr.isatty())
        self.total_epochs = total_epochs
        self.start_epoch = start_epoch
        self.started: float | None = None

    def eta(self, epochs_done: float) -> float:
        """Seconds left when the run is ``epochs_done`` epochs (a fraction within an epoch) into its work."""
        if self.started is None:
            self.started = time.monotonic()
        done = epochs_done - self.start_epoch
        if done <= 0:
            return float("nan")
        return (time.monotonic() - self.started) / done * (self.total_epochs - epochs_done)

    def update(self, epoch: int, step: int, steps: int, phase: str, note: str = "") -> None:
        if self.started is None:
            self.started = time.monotonic()
        if not self.enabled:
            return
        eta = self.eta(epoch + (step + 1) / max(steps, 1))
        width = 24
        filled = int(width * (step + 1) / max(steps, 1))
        bar = "#" * filled + "." * (width - filled)
        sys.stderr.write(f"\repoch {epoch}/{self.total_epochs - 1} [{bar}] {step + 1}/{steps} {phase} "
                         f"ETA {format_seconds(eta)} {note}\033[K")
        sys.stderr.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write(f"\r{text}\033[K")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def format_seconds(seconds: float) -> str:
    if seconds != seconds:  # NaN: nothing measured yet
        return "-:--:--"
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
