"""Tests for crash-safe checkpoint IO (atomic writes, weights-only loads)."""

from __future__ import annotations

import math
import os
import pickle
import random
import shlex
import stat

import pytest
import torch

from sswp_fast.errors import CheckpointError
from sswp_fast.runtime.checkpoint import atomic_save, atomic_write_bytes, atomic_write_text, load_checkpoint


def _sample_state() -> dict:
    g = torch.Generator().manual_seed(42)
    return {
        "model": {"w": torch.randn(3, 4, generator=g), "b": torch.zeros(4, dtype=torch.float64)},
        "epoch": 17,
        "lr": 0.025,
        "history": [1, 2.5, "x", [3, 4]],
        "nested": {"a": {"b": {"c": torch.arange(5)}}, "flag": True, "none": None},
        "rng": g.get_state(),
        "py_random": random.Random(3).getstate(),
        "best": (-math.inf, math.inf),
    }


def test_round_trip(tmp_path) -> None:
    state = _sample_state()
    path = tmp_path / "ckpt.pth.tar"
    atomic_save(state, path)
    loaded = load_checkpoint(path)
    assert loaded.keys() == state.keys()
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert loaded["model"]["b"].dtype == torch.float64
    assert loaded["epoch"] == 17 and loaded["lr"] == 0.025
    assert loaded["history"] == [1, 2.5, "x", [3, 4]]
    assert torch.equal(loaded["nested"]["a"]["b"]["c"], torch.arange(5))
    assert loaded["nested"]["flag"] is True and loaded["nested"]["none"] is None
    assert loaded["rng"].dtype == torch.uint8
    g1, g2 = torch.Generator(), torch.Generator()
    g1.set_state(state["rng"])
    g2.set_state(loaded["rng"])
    assert torch.equal(torch.rand(8, generator=g1), torch.rand(8, generator=g2))
    restored = random.Random()
    restored.setstate(loaded["py_random"])
    assert restored.random() == random.Random(3).random()
    assert loaded["best"] == (-math.inf, math.inf)
    assert sorted(os.listdir(tmp_path)) == ["ckpt.pth.tar"]


def test_overwrite_and_permissions_follow_umask(tmp_path) -> None:
    path = tmp_path / "ckpt.pth.tar"
    atomic_save({"v": 1}, path)
    atomic_save({"v": 2}, str(path))
    assert load_checkpoint(path)["v"] == 2
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask


def test_atomic_write_text(tmp_path) -> None:
    path = tmp_path / "state.json"
    atomic_write_text(path, '{"epoch": 1}\n')
    atomic_write_text(path, '{"epoch": 2, "note": "é"}\n')
    assert path.read_text(encoding="utf-8") == '{"epoch": 2, "note": "é"}\n'
    assert os.listdir(tmp_path) == ["state.json"]
    atomic_write_bytes(b"\x00\x01binary", tmp_path / "blob.npz")
    assert (tmp_path / "blob.npz").read_bytes() == b"\x00\x01binary"
    assert sorted(os.listdir(tmp_path)) == ["blob.npz", "state.json"]


def test_missing_file_and_directory(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pth.tar")
    with pytest.raises(CheckpointError, match="directory"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="cannot write"):
        atomic_save({"v": 1}, tmp_path / "no_such_dir" / "ckpt.pth.tar")


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty", "not_a_dict"])
def test_corrupt_files_raise_one_line_error(tmp_path, kind: str) -> None:
    path = tmp_path / "ckpt.pth.tar"
    if kind == "truncated":
        atomic_save(_sample_state(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        path.write_bytes(os.urandom(4096))
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        atomic_save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="corrupt or not a torch checkpoint") as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and "--resume" in message


class _Evil:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("container", ["raw_pickle", "torch_zip", "nested_in_dict"])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path, container: str) -> None:
    marker = tmp_path / "pwned"
    evil = _Evil(f"touch {shlex.quote(str(marker))}")
    path = tmp_path / "ckpt.pth.tar"
    if container == "raw_pickle":
        path.write_bytes(pickle.dumps({"state": evil}, protocol=2))
    elif container == "torch_zip":
        torch.save(evil, path)
    else:
        torch.save({"w": torch.zeros(2), "hook": evil}, path)
    assert not marker.exists()  # writing the payload did not run it
    with pytest.raises(CheckpointError, match="corrupt or not a torch checkpoint") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def _partial_save(obj, f) -> None:  # stands in for torch.save dying halfway through
    f.write(b"PK\x03\x04 half a checkpoint")
    f.flush()
    raise RuntimeError("simulated crash")


def test_crash_mid_save_keeps_previous_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "ckpt.pth.tar"
    atomic_save({"epoch": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", _partial_save)
    with pytest.raises(RuntimeError, match="simulated crash"):
        atomic_save({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["ckpt.pth.tar"]


def test_disk_error_mid_save_becomes_checkpoint_error(tmp_path, monkeypatch) -> None:
    path = tmp_path / "ckpt.pth.tar"

    def _disk_full(obj, f) -> None:
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", _disk_full)
    with pytest.raises(CheckpointError, match="No space left"):
        atomic_save({"epoch": 1}, path)
    assert os.listdir(tmp_path) == []
