"""The compact-network stages on ``digits``: fine-tune, train, linear-eval and pretrain consume a search's
``net.config`` and weights, resume exactly, refuse bad input with one line, and run on two processes."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sswp_fast.cli import main
from sswp_fast.runtime.checkpoint import load_checkpoint
from sswp_fast.search.export import load_architecture
from sswp_fast.stages.compact import HEAD_PREFIXES, CompactNetwork, load_search_weights
from sswp_fast.stages.config import stage_defaults
from sswp_fast.stages.run import StageRun, select_architectures

from _support.fake_data import write_random_image_folder

TESTS = Path(__file__).resolve().parents[1] / "_support"
SEARCH = ["--dataset", "digits", "--epochs", "4", "--epoch_ratios", "0.25,0.25,0.5,0.0", "--min_warmup", "0",
          "--layers", "3", "--init_channels", "4", "--batch_size", "8", "--steps_per_epoch", "3",
          "--update_arch_every", "1", "--progress", "off", "--device", "cpu"]
STAGE = ["--dataset", "digits", "--arch_name", "Epoch_3", "--init_channels", "4", "--batch_size", "8",
         "--steps_per_epoch", "2", "--warmup_epochs", "1", "--train_epochs", "1", "--no-cutout", "--progress", "off",
         "--device", "cpu"]


@pytest.fixture(scope="module")
def search_dir(tmp_path_factory) -> Path:
    """A finished 3-cell SimCLR search (``Epoch_3`` in its net.config)."""
    root = tmp_path_factory.mktemp("search")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["search", *SEARCH]) == 0
    finally:
        os.chdir(cwd)
    return root / "exps/exp/search-exp"


def _config(stage: str, search_dir: Path, **changes):
    base = dict(dataset="digits", path=str(search_dir), arch_name="Epoch_3", init_channels=4, batch_size=8,
                steps_per_epoch=2, warmup_epochs=1, train_epochs=1, cutout=False, progress="off", device="cpu")
    return dataclasses.replace(stage_defaults(stage), **{**base, **changes})


def _stage(config, root: Path) -> StageRun:
    (name, arch), = select_architectures(config.path, config.arch_name).items()
    return StageRun(config, name, arch, root)


def _started_from_search(search_dir: Path) -> CompactNetwork:
    """A compact net loaded the way every stage starts from ``Epoch_3``."""
    net = CompactNetwork(4, 10, load_architecture(search_dir, "Epoch_3"), auxiliary=False, affine=False)
    load_search_weights(net, load_checkpoint(search_dir / "Epoch_3.pth.tar"))
    return net


def test_finetune_writes_the_reference_artifacts(search_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["finetune", *STAGE, "--path", str(search_dir), "--note", "ft"]) == 0
    run = tmp_path / "exps/exp/finetune-ft_Epoch_3"
    assert f"run folder: {Path('exps/exp/finetune-ft_Epoch_3')}" in capsys.readouterr().out
    assert (run / "net.config").read_text().startswith("model:[[")
    log = (run / "log.txt").read_text()
    assert "weights from" in log and "best_top1" in log
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert (run / "model.pth.tar").exists() and (run / "resume.pth.tar").exists()


def test_linear_eval_trains_only_the_classifier_and_keeps_bn_statistics(search_dir, tmp_path):
    run = _stage(_config("linear-eval", search_dir), tmp_path)
    run.run()
    before = _started_from_search(search_dir).state_dict()
    after = run.model.state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert changed and all(k.startswith("classifier.") for k in changed), changed


def test_fix_trains_only_the_heads_during_the_warmup(search_dir, tmp_path):
    run = _stage(_config("finetune", search_dir, fix=True, note="fix"), tmp_path)
    weights = {k: v.clone() for k, v in run.model.named_parameters()}
    run.run_epoch(0)
    moved = {k for k, v in run.model.named_parameters() if not torch.equal(v, weights[k])}
    assert moved and all(k.startswith(HEAD_PREFIXES) for k in moved), moved
    run.run_epoch(1)
    assert any(not k.startswith(HEAD_PREFIXES) and not torch.equal(v, weights[k])
               for k, v in run.model.named_parameters())


def test_resume_continues_exactly_where_the_run_stopped(search_dir, tmp_path):
    whole = _stage(_config("train", search_dir, note="whole"), tmp_path)
    whole.run()
    broken = _stage(_config("train", search_dir, note="broken"), tmp_path)
    broken.run_epoch(0)  # the process dies here; resume.pth.tar holds epoch 0
    resumed = _stage(_config("train", search_dir, note="broken", resume=True), tmp_path)
    assert resumed.start_epoch == 1
    resumed.run()
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_pretrain_writes_its_checkpoints_and_knn_scores_them(search_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--dataset", "digits", "--path", str(search_dir), "--arch_name", "Epoch_3",
                 "--init_channels", "4", "--batch_size", "8", "--steps_per_epoch", "2", "--epochs", "2",
                 "--preserve_weight", "--progress", "off", "--device", "cpu"]) == 0
    run = tmp_path / "exps/exp/pretrain-exp_Epoch_3"
    names = [line.split(":")[0] for line in (run / "net.config").read_text().splitlines()]
    assert names == ["pretrained", "Epoch_0", "Epoch_1"]
    for file in ("Epoch_0", "Epoch_1", "last_pretrain"):
        assert (run / f"{file}.pth.tar").exists(), file
    epoch0 = load_checkpoint(run / "Epoch_0.pth.tar")  # written before any training: the search weights
    search = load_checkpoint(search_dir / "Epoch_3.pth.tar")
    assert torch.equal(epoch0["classifier.0.weight"], search["classifier.0.weight"])
    capsys.readouterr()
    assert main(["knn", "--dataset", "digits", "--path", str(run), "--arch_name", "Epoch_1",
                 "--checkpoint", str(run / "last_pretrain.pth.tar"), "--device", "cpu"]) == 0
    accuracy = float(capsys.readouterr().out.split("knn_top1")[1])
    assert 0 <= accuracy <= 100


@pytest.mark.parametrize("amp,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_trains_with_finite_losses(search_dir, tmp_path, amp, dtype):
    run = _stage(_config("finetune", search_dir, amp=amp, note=amp), tmp_path)
    record = run.train_epoch(0)
    assert torch.isfinite(torch.tensor(record["train_loss"]))
    assert run.amp_dtype == dtype and run.scaler.is_enabled() == (amp == "fp16")


def test_finetune_and_knn_on_an_image_folder_dataset(tmp_path, monkeypatch, capsys):
    pytest.importorskip("PIL.Image", reason="Pillow decodes image folders")
    write_random_image_folder(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    data = ["--dataset", "imagenet-tiny", "--data_path", str(tmp_path / "data"), "--init_channels", "4",
            "--batch_size", "4", "--num_workers", "2"]
    assert main(["search", *data, "--epochs", "2", "--epoch_ratios", "0.5,0,0.5,0", "--min_warmup", "0",
                 "--layers", "3", "--progress", "off"]) == 0
    search = tmp_path / "exps/exp/search-exp"
    assert main(["finetune", *data, "--path", str(search), "--arch_name", "Epoch_1", "--warmup_epochs", "0",
                 "--train_epochs", "1", "--progress", "off"]) == 0
    assert (tmp_path / "exps/exp/finetune-exp_Epoch_1/model.pth.tar").exists()
    capsys.readouterr()
    assert main(["knn", *data[:4], "--path", str(search), "--arch_name", "Epoch_1", "--k", "3"]) == 0
    assert "knn_top1" in capsys.readouterr().out


def _error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_bad_input_gets_one_line_errors(search_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = ["--path", str(search_dir)]
    assert "not in" in _error(["finetune", *STAGE, *path, "--arch_name", "Epoch_9"], capsys)
    assert "pass --init_channels 4" in _error(["finetune", *STAGE, *path, "--init_channels", "6"], capsys)
    assert "pass --path" in _error(["finetune", *STAGE], capsys)
    assert "not a built-in" in _error(["train", *STAGE], capsys)

    bigger = tmp_path / "bigger"  # a 5-cell architecture next to the 3-cell search weights
    bigger.mkdir()
    (bigger / "net.config").write_text(f"big:{[load_architecture(search_dir, 'Epoch_3')[0]] * 5}\n")
    (bigger / "big.pth.tar").write_bytes((search_dir / "Epoch_3.pth.tar").read_bytes())
    assert "--layers" in _error(["finetune", *STAGE, "--path", str(bigger), "--arch_name", "big"], capsys)

    (bigger / "big.pth.tar").write_bytes(b"not a checkpoint")
    assert "corrupt" in _error(["finetune", *STAGE, "--path", str(bigger), "--arch_name", "big"], capsys)

    existing = tmp_path / "exps/exp/finetune-exp_Epoch_3"
    existing.mkdir(parents=True)
    (existing / "log.txt").write_text("an earlier run\n")
    assert "already exists" in _error(["finetune", *STAGE, *path], capsys)
    assert (existing / "log.txt").read_text() == "an earlier run\n"


def _stage_arguments(stage: str) -> list[str]:
    if stage == "pretrain":  # its own epochs flag; starts from the search weights
        return ["pretrain", *STAGE[:10], "--epochs", "2", "--preserve_weight", *STAGE[-4:]]
    return [stage, *STAGE]


def _ranks(cwd: Path, processes: int, search_dir: Path, *extra: str, stage: str = "finetune"
           ) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    if processes == 1:
        launcher = [sys.executable]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS.parent)}
    cwd.mkdir()
    return subprocess.run([*launcher, str(TESTS / "stage_ranks.py"),
                           *_stage_arguments(stage), "--path", str(search_dir), "--sync_bn", *extra],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("stage", ["finetune", "pretrain"])
def test_two_processes_end_with_identical_weights(search_dir, tmp_path, stage):
    done = _ranks(tmp_path / "two", 2, search_dir, stage=stage)
    assert done.returncode == 0, done.stderr[-2000:]
    rank0, rank1 = (load_checkpoint(tmp_path / f"two/rank{r}.pth.tar") for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for key, value in rank0.items():
        assert torch.equal(rank1[key], value), key


def test_without_drop_path_two_processes_equal_one_process(search_dir, tmp_path):
    """Drop-path masks are drawn per rank (as under the reference's DDP), so only without them do k processes
    with SyncBN follow one process with the same global batch."""
    one = _ranks(tmp_path / "one", 1, search_dir, "--drop_path_prob", "0")
    two = _ranks(tmp_path / "two", 2, search_dir, "--drop_path_prob", "0")
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    single, multi = load_checkpoint(tmp_path / "one/rank0.pth.tar"), load_checkpoint(tmp_path / "two/rank0.pth.tar")
    assert single.keys() == multi.keys()
    for key, value in single.items():
        if value.is_floating_point():
            torch.testing.assert_close(multi[key], value, rtol=1e-7, atol=1e-9, msg=key)
        else:
            assert torch.equal(multi[key], value), key
