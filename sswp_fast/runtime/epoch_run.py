"""The scaffold every driver's run stands on: the search, the downstream stages and NASiam each subclass
:class:`EpochRun` and keep only what is their own (their model, steps and result files).

What the scaffold does for all three:

- the run folder, made only after every input was checked (a refused run leaves nothing behind): continued
  with ``--resume``, wiped with ``--force``, never silently overwritten; made by rank 0 of a multi-process
  run while the others wait;
- the log (``log.txt``, rank 0 only; the other ranks get a silent one), ``metrics.jsonl`` and the progress
  bar;
- the resume checkpoint: read and checked when the run is planned (:func:`read_resume_checkpoint`), written
  atomically after every epoch with the RNG states (CPU and every CUDA device) beside the driver's own state,
  and restored, with a one-line error when it does not fit;
- the epoch loop, which closes the log and the progress bar however it ends.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from sswp_fast.errors import CheckpointError
from sswp_fast.runtime import distributed, run_folder
from sswp_fast.runtime.checkpoint import atomic_save, load_checkpoint
from sswp_fast.runtime.reporting import MetricsFile, Progress, Silent, close_log, open_log, quiet_log
from sswp_fast.runtime.run_folder import RunOptions, refuse_changed_config
from sswp_fast.runtime.run_state import restore_rng_state, rng_state


def read_resume_checkpoint(path: Path, resume_format: str, kind: str, config: RunOptions) -> dict[str, Any]:
    """The resume checkpoint at ``path``, refused in one line unless it is an sswp-fast ``kind`` checkpoint
    (``format`` is ``resume_format``) of the same result-relevant configuration as ``config``."""
    state = load_checkpoint(path)
    if state.get("format") != resume_format:
        raise CheckpointError(f"{path} is not an sswp-fast {kind} checkpoint; start without --resume")
    refuse_changed_config(config.differences(state["config"]), state["config"], config.to_dict())
    return state


class EpochRun(ABC):
    """One run of a driver: its folder, log, reporters, resume checkpoint and epoch loop.

    A subclass sets the class attributes, builds its own state, calls :meth:`restore` when its plan holds a
    resume checkpoint and then :meth:`open_folder`, and implements :meth:`resume_state`,
    :meth:`load_resume_state`, :meth:`run_epoch` and :meth:`finish`."""

    resume_format: ClassVar[str]
    """The ``format`` entry of the resume checkpoint, checked by the plan before a resume."""
    resume_file: ClassVar[str] = run_folder.RESUME_FILE
    """The resume checkpoint's name in the run folder."""
    log_name: ClassVar[str]
    """The logger's name (one per driver, so that two runs in one process do not share handlers)."""
    model_kind: ClassVar[str] = "network"
    """What a checkpoint that does not load is said not to match."""

    config: RunOptions
    world: distributed.World = distributed.SINGLE
    start_epoch: int = 0
    run_dir: Path
    log: logging.Logger
    metrics: MetricsFile | Silent
    progress: Progress | Silent

    @property
    def main(self) -> bool:
        """Whether this process writes files and logs (rank 0, or the only process)."""
        return self.world.main

    @property
    @abstractmethod
    def total_epochs(self) -> int:
        """The epochs of the whole run (a resumed run runs those from :attr:`start_epoch` on)."""

    @abstractmethod
    def resume_state(self) -> dict[str, Any]:
        """The driver's own part of the resume checkpoint (model, optimizers, data generator, best scores)."""

    @abstractmethod
    def load_resume_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`resume_state` from ``state`` (a ``KeyError``, ``RuntimeError`` or ``ValueError`` means it
        does not fit this run)."""

    @abstractmethod
    def run_epoch(self, epoch: int) -> None:
        """Train (and validate, report, save) one epoch."""

    @abstractmethod
    def finish(self) -> None:
        """What the run writes and logs after its last epoch."""

    def restore(self, state: dict[str, Any], planned_dir: Path) -> None:
        """Continue from the resume checkpoint ``state`` of ``planned_dir`` (its format and configuration were
        checked by the plan): the driver's state, the RNG states and the next epoch."""
        try:
            self.load_resume_state(state)
        except (KeyError, RuntimeError, ValueError) as err:
            raise CheckpointError(f"{planned_dir / self.resume_file} does not match this {self.model_kind} "
                                  f"({str(err).splitlines()[0]}); start a new --note") from None
        restore_rng_state(state["rng"])
        self.start_epoch = state["epoch"]

    def open_folder(self, planned_dir: Path) -> None:
        """Make (or continue, or wipe) the run folder, open the log, and on rank 0 the metrics file and the
        progress bar; the log says where a resumed run continues."""
        c = self.config
        self.run_dir = run_folder.prepare_run_dir_on_all_ranks(planned_dir, c.resume, c.force, self.world,
                                                               resume_file=self.resume_file)
        self.log = open_log(self.run_dir, self.log_name) if self.main else quiet_log()
        if c.resume:
            self.log.info(f"resumed from {self.run_dir / self.resume_file} at epoch {self.start_epoch}")
        if self.main:
            self.metrics = MetricsFile(self.run_dir, self.start_epoch)
            self.progress = Progress(c.progress, self.total_epochs, self.start_epoch)
        else:
            self.metrics = self.progress = Silent()

    def save_resume(self, next_epoch: int) -> None:
        """Write the resume checkpoint atomically (rank 0): the format, the configuration, the next epoch, the
        driver's state and the RNG states."""
        if self.main:
            atomic_save({"format": self.resume_format, "config": self.config.to_dict(), "epoch": next_epoch,
                         **self.resume_state(), "rng": rng_state()}, self.run_dir / self.resume_file)

    def close(self) -> None:
        """Close the progress bar and the log."""
        self.progress.close()
        close_log(self.log)

    def run(self) -> Path:
        """Run the remaining epochs, then :meth:`finish`; returns the run folder."""
        try:
            for epoch in range(self.start_epoch, self.total_epochs):
                self.run_epoch(epoch)
            self.finish()
        finally:
            self.close()
        return self.run_dir
