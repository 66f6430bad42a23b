"""Multi-process search (torchrun, gloo on CPU): k processes end where one process with the same global batch
ends, and the pieces that make it so (synchronised BatchNorm, gathered views)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from sswp_fast import SearchConfig, SearchEngine
from sswp_fast.errors import ConfigError
from sswp_fast.runtime.checkpoint import load_checkpoint
from sswp_fast.runtime.distributed import (
    SINGLE,
    World,
    check_batch_size,
    gather_views,
    shard,
    sync_batch_norms,
    world_from_env,
)
from sswp_fast.search.supernet import SearchNetwork

TESTS = Path(__file__).resolve().parents[1] / "_support"
TINY = ["--dataset", "digits", "--epochs", "4", "--epoch_ratios", "0.25,0.25,0.5,0.0", "--min_warmup", "0",
        "--layers", "3", "--init_channels", "4", "--batch_size", "8", "--steps_per_epoch", "3",
        "--update_arch_every", "1", "--report_freq", "2", "--progress", "off", "--device", "cpu"]


def _run(cwd: Path, processes: int, *extra: str, device_executor: bool = False) -> subprocess.CompletedProcess:
    """The fp64 CLI on ``processes`` processes; ``device_executor``: on the device executor (its PyTorch kernels,
    see tests/fp64_cli.py)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    if processes == 1:
        launcher = [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS.parent)}
    if device_executor:
        env.update(SSWP_TEST_DEVICE_EXECUTOR="1", TRITON_INTERPRET="1")
        extra = (*extra, "--kernels", "triton")
    cwd.mkdir(exist_ok=True)
    return subprocess.run([*launcher, str(TESTS / "fp64_cli.py"), "search", *TINY, *extra], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("mode", "device_executor"), [("SimCLR", False), ("supervised", False), ("SimCLR", True)],
                         ids=["SimCLR", "supervised", "SimCLR-device-executor"])
def test_two_processes_end_with_the_single_process_weights_and_alphas(tmp_path, mode, device_executor) -> None:
    """``device-executor``: both runs on the device executor, whose slot-group BatchNorms then reduce their
    statistics over the ranks (one all-reduce per group) and whose banks every rank updates alike."""
    one = _run(tmp_path / "one", 1, "--data_mode", mode, device_executor=device_executor)
    two = _run(tmp_path / "two", 2, "--data_mode", mode, device_executor=device_executor)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    assert ("executor: device" in two.stdout + two.stderr) == device_executor
    assert two.stdout.count("run folder:") == 1  # rank 1 prints and writes nothing
    run = Path("exps/exp/search-exp")
    single = load_checkpoint(tmp_path / "one" / run / "resume.pth.tar")
    multi = load_checkpoint(tmp_path / "two" / run / "resume.pth.tar")
    assert single["epoch"] == multi["epoch"] == 4
    assert torch.equal(single["engine"]["frozen"], multi["engine"]["frozen"])
    assert single["engine"]["frozen"].any()  # the run went through forward pruning
    net_single, net_multi = single["engine"]["net"], multi["engine"]["net"]
    assert net_single.keys() == net_multi.keys()
    for key, value in net_single.items():
        if value.is_floating_point():
            torch.testing.assert_close(net_multi[key], value, rtol=1e-7, atol=1e-9, msg=key)
        else:
            assert torch.equal(net_multi[key], value), key
    assert (tmp_path / "one" / run / "net.config").read_text() == (tmp_path / "two" / run / "net.config").read_text()
    logged = [line for line in (tmp_path / "two" / run / "log.txt").read_text().splitlines()
              if re.match(r"train \d", line)]
    assert len(logged) == 8  # one log, written once


def test_an_existing_run_folder_stops_the_run_with_the_one_line_error(tmp_path) -> None:
    """Every rank refuses the folder on its own; torchrun stops the others as soon as one exits, so whether the
    second rank prints its line before it is stopped depends on scheduling: one line at least, nothing touched."""
    existing = tmp_path / "exps/exp/search-exp"
    existing.mkdir(parents=True)
    (existing / "log.txt").write_text("an earlier run\n")
    done = _run(tmp_path, 2)
    assert done.returncode != 0
    assert 1 <= done.stderr.count("already exists; pass --resume to continue it") <= 2
    assert (existing / "log.txt").read_text() == "an earlier run\n"
    assert sorted(p.name for p in existing.iterdir()) == ["log.txt"]


def test_synced_batch_norm_keeps_keys_parameters_and_single_process_values() -> None:
    torch.manual_seed(0)
    net = SearchNetwork(4, 10, 3, affine=True)
    keys = list(net.state_dict())
    weight = net.cells[0].edges[3]._ops[3].op[3].weight
    reference = SearchNetwork(4, 10, 3, affine=True)
    reference.load_state_dict(net.state_dict())
    sync_batch_norms(net)
    assert list(net.state_dict()) == keys
    assert net.cells[0].edges[3]._ops[3].op[3].weight is weight
    assert not any(type(m) is nn.BatchNorm2d for m in net.modules())
    x = torch.randn(6, 4, 8, 8)
    bn, synced = reference.cells[0].edges[3]._ops[3].op[3], net.cells[0].edges[3]._ops[3].op[3]
    torch.testing.assert_close(synced(x), bn(x), rtol=0, atol=0)  # no process group: plain BatchNorm


def test_gather_views_is_the_identity_in_one_process() -> None:
    x = torch.randn(6, 3)
    assert gather_views(x, 2, SINGLE) is x


def test_bad_multi_process_configurations_are_named(monkeypatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ConfigError, match="RANK is not set; start multi-process runs with torchrun"):
        world_from_env()
    monkeypatch.setenv("RANK", "1")
    assert world_from_env() == World(1, 2, 0)
    monkeypatch.delenv("WORLD_SIZE")
    assert world_from_env() is SINGLE
    with pytest.raises(ConfigError, match="--batch_size 10 does not split over 4 processes"):
        check_batch_size(10, World(0, 4, 0))
    assert shard(8, World(1, 2, 1)) == slice(4, 8)
    assert shard(7, World(1, 2, 1)) == slice(3, 6)  # a short last batch: equal parts, one row left out
    config = SearchConfig(layers=3, init_channels=4, batch_size=8, dataset="digits", compile="default").resolved()
    with pytest.raises(ConfigError, match="which lack torchrun"):
        SearchEngine(config, 10, "cpu", World(0, 2, 0))
