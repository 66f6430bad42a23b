"""A refused search leaves nothing behind: every bad input is a one-line error, the refused run creates no file or
folder and changes none (an existing experiment stays byte for byte), and the corrected command with the same
``--note`` then runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from sswp_fast.cli import main

from _support.fake_data import write_fake_cifar

TINY = ["--layers", "3", "--init_channels", "4", "--batch_size", "4", "--epochs", "2", "--min_warmup", "0",
        "--steps_per_epoch", "1", "--progress", "off"]


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every folder (None) and file (its bytes) under ``root``."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def _search(*args: str) -> int:
    return main(["search", "--dataset", "cifar10", *TINY, *args])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """DATA (a small CIFAR-10), BROKEN (the same with a truncated batch file), and two finished experiments:
    ``exp1``, and ``exp2`` with a corrupt resume checkpoint."""
    root = tmp_path_factory.mktemp("refused")
    write_fake_cifar(root / "DATA", n_train=40, n_test=10)
    shutil.copytree(root / "DATA", root / "BROKEN")
    batch = root / "BROKEN" / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        assert _search("--data_path", "DATA", "--note", "exp1") == 0
    shutil.copytree(root / "exps/exp/search-exp1", root / "exps/exp/search-exp2")
    (root / "exps/exp/search-exp2/resume.pth.tar").write_bytes(b"\x80\x02 not a checkpoint")
    return root


NO_CUDA = [] if torch.cuda.is_available() else [(["--data_path", "DATA", "--device", "cuda", "--note", "typo"],
                                                   "is not on this machine")]
CASES = [
    (["--data_path", "nope", "--note", "typo"], "CIFAR-10 folder nope does not exist"),
    (["--data_path", "BROKEN", "--note", "typo"], "data_batch_3"),
    (["--data_path", "DATA", "--epoch_ratios", "0.5,0.6,0.2,0", "--note", "typo"], "--epoch_ratios"),
    (["--data_path", "DATA", "--batch_size", "1", "--note", "typo"], "--batch_size of at least 2"),
    (["--data_path", "DATA", "--dataset", "mnist", "--note", "typo"], "got 'mnist'"),
    (["--data_path", "DATA", "--layers", "2", "--note", "typo"], "--layers must be at least 3"),
    (["--data_path", "DATA", "--init_channels", "7", "--note", "typo"], "--init_channels must be an even number"),
    (["--data_path", "DATA", "--train_ratio", "1.0", "--note", "typo"], "--train_ratio"),
    (["--data_path", "DATA", "--cuda_graphs", "on", "--note", "typo"], "--cuda_graphs on cannot capture"),
    (["--data_path", "DATA", "--device", "tpu", "--note", "typo"], "--device 'tpu' is not a device"),
    (["--data_path", "DATA", "--note", "typo", "--resume"], "no resume.pth.tar"),
    (["--data_path", "DATA", "--note", "exp1"], "already exists; pass --resume"),
    (["--data_path", "DATA", "--note", "exp1", "--resume", "--lr", "0.1"], "different configuration (--lr"),
    (["--data_path", "DATA", "--note", "exp2", "--resume"], "corrupt"),
    (["--data_path", "nope", "--note", "exp1", "--force"], "CIFAR-10 folder nope does not exist"),
    (["--data_path", "BROKEN", "--note", "exp1", "--force"], "data_batch_3"),
    *NO_CUDA,
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_a_refused_run_leaves_nothing_behind(workspace, monkeypatch, capsys, args, message) -> None:
    monkeypatch.chdir(workspace)
    before = _tree(workspace)
    assert _search(*args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err
    assert _tree(workspace) == before


def test_the_corrected_command_with_the_same_note_runs(workspace, monkeypatch, capsys) -> None:
    monkeypatch.chdir(workspace)
    assert _search("--data_path", "nope", "--note", "fixed") == 2
    assert not (workspace / "exps/exp/search-fixed").exists()
    assert _search("--data_path", "DATA", "--note", "fixed") == 0
    assert (workspace / "exps/exp/search-fixed/resume.pth.tar").exists()
    assert _search("--data_path", "DATA", "--note", "exp1", "--force") == 0  # --force still replaces, once valid
