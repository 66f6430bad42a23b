"""The run scaffold every driver stands on: the resume checkpoint round trip with the RNG states, the one-line
error of a checkpoint that does not fit, a refused folder, and an epoch loop that closes its log however it ends."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from sswp_fast.errors import CheckpointError, ConfigError
from sswp_fast.runtime.checkpoint import load_checkpoint
from sswp_fast.runtime.epoch_run import EpochRun, read_resume_checkpoint
from sswp_fast.search.config import SearchConfig


class CountingRun(EpochRun):
    """A toy driver: one number of state, one random draw per epoch, and a failure at a chosen epoch."""

    resume_format = "test-run/1"
    resume_file = "state.pth.tar"
    log_name = "sswp_fast.test_epoch_run"

    def __init__(self, folder: Path, config: SearchConfig, resume_state: dict | None = None, fail_at: int = -1):
        self.config = config
        self.count = 0
        self.draws: list[float] = []
        self.fail_at = fail_at
        self.finished = False
        if resume_state is not None:
            self.restore(resume_state, folder)
        self.open_folder(folder)

    @property
    def total_epochs(self) -> int:
        return 4

    def resume_state(self) -> dict:
        return {"count": self.count}

    def load_resume_state(self, state: dict) -> None:
        self.count = state["count"]

    def run_epoch(self, epoch: int) -> None:
        if epoch == self.fail_at:
            raise RuntimeError("the process dies")
        self.count += epoch
        self.draws.append(torch.rand(()).item())
        self.log.info(f"epoch {epoch}")
        self.metrics.write({"epoch": epoch, "count": self.count})
        self.save_resume(epoch + 1)

    def finish(self) -> None:
        self.finished = True


def _config(**flags) -> SearchConfig:
    return SearchConfig(progress="off", **flags)


def test_a_crashed_run_resumes_exactly_and_its_log_is_closed(tmp_path):
    torch.manual_seed(0)
    whole = CountingRun(tmp_path / "whole", _config())
    whole.run()
    torch.manual_seed(0)
    broken = CountingRun(tmp_path / "broken", _config(), fail_at=2)
    with pytest.raises(RuntimeError):
        broken.run()
    assert not logging.getLogger(CountingRun.log_name).handlers  # closed although the loop raised
    state = load_checkpoint(tmp_path / "broken" / "state.pth.tar")
    assert (state["format"], state["epoch"], state["count"]) == ("test-run/1", 2, 1)
    assert state["config"] == _config().to_dict() and "torch" in state["rng"]
    torch.manual_seed(123)  # the restore, not this, decides the draws that follow
    resumed = CountingRun(tmp_path / "broken", _config(resume=True), resume_state=state)
    assert resumed.start_epoch == 2
    resumed.run()
    assert (resumed.count, resumed.finished) == (whole.count, True)
    assert broken.draws + resumed.draws == whole.draws
    assert "resumed from" in (tmp_path / "broken" / "log.txt").read_text()


def test_a_checkpoint_that_does_not_fit_names_its_path_in_one_line(tmp_path):
    with pytest.raises(CheckpointError, match=r"state\.pth\.tar does not match this network \('count'\); start a new"):
        CountingRun(tmp_path / "run", _config(), resume_state={"epoch": 1, "rng": {}})
    assert not (tmp_path / "run").exists()


def test_an_existing_folder_is_never_overwritten_unless_asked(tmp_path):
    CountingRun(tmp_path / "run", _config()).run()
    with pytest.raises(ConfigError, match="already exists; pass --resume"):
        CountingRun(tmp_path / "run", _config())
    CountingRun(tmp_path / "run", _config(force=True)).run()


def test_a_resume_checkpoint_is_read_only_with_its_format_and_the_same_configuration(tmp_path):
    run = CountingRun(tmp_path / "run", _config())
    run.run()
    path = tmp_path / "run" / "state.pth.tar"
    assert read_resume_checkpoint(path, "test-run/1", "test", _config(resume=True))["count"] == 6
    with pytest.raises(CheckpointError, match=r"is not an sswp-fast test checkpoint; start without --resume$"):
        read_resume_checkpoint(path, "test-run/2", "test", _config(resume=True))
    with pytest.raises(ConfigError, match=r"--resume with a different configuration \(--lr 0.025 → 0.1\)"):
        read_resume_checkpoint(path, "test-run/1", "test", _config(resume=True, lr=0.1))
