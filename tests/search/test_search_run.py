"""End-to-end search runs through the CLI on the embedded digits dataset (tiny configurations)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sswp_fast.cli import main
from sswp_fast.runtime.checkpoint import load_checkpoint
from sswp_fast.search.export import read_net_config
from sswp_fast.search.run import SearchRun
from sswp_fast.search.sampling import mean_edge_entropy
from sswp_fast.search.supernet import SearchNetwork

from _support.fake_data import write_random_image_folder

TINY = ["--dataset", "digits", "--epochs", "4", "--epoch_ratios", "0.25,0.25,0.5,0.0", "--min_warmup", "0",
        "--layers", "3", "--init_channels", "4", "--batch_size", "8", "--steps_per_epoch", "3",
        "--update_arch_every", "1", "--report_freq", "2", "--progress", "off"]


def search(*extra: str) -> int:
    return main(["search", *TINY, *extra])


def test_search_writes_the_reference_artifacts(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert search("--note", "a") == 0
    run = tmp_path / "exps" / "exp" / "search-a"
    log = (run / "log.txt").read_text().splitlines()
    assert log[0].startswith("Namespace(") and "warmup_epochs=1" in log[0]
    assert "epoch 0" in log and any(line.startswith("train 00000 ") for line in log)
    assert any(line.startswith("train_acc ") for line in log)
    assert any(line.startswith("Epoch_1_r_Cell2:[(") for line in log)
    assert any(line.startswith("train_valid_acc ") for line in log)
    configs = read_net_config(run / "net.config")
    assert {"Epoch_3", "highest_acc", "lowest_loss"} <= set(configs)
    assert len(configs["Epoch_3"]) == 3 and all(len(cell) == 8 for cell in configs["Epoch_3"])
    state = load_checkpoint(run / "Epoch_3.pth.tar")
    net = SearchNetwork(4, 10, 3)
    net.load_state_dict(state, strict=True)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0, 1, 2, 3]
    assert metrics[0]["phase"] == "warmup" and metrics[0]["arch_steps"] == 0
    assert metrics[1]["arch_steps"] == 3 and metrics[1]["weight_steps"] == 3
    assert metrics[-1]["frozen_cells"] == [0, 1, 2]
    assert all(math.isfinite(m["train_loss"]) and m["seconds"] > 0 for m in metrics)
    assert [m["lr"] for m in metrics] == pytest.approx([0.025 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])
    alphas = np.load(run / "alpha_history.npz")["alpha"]  # each epoch's alpha entropy is that of its logits
    assert [m["alpha_entropy"] for m in metrics] == pytest.approx(
        [mean_edge_entropy(torch.from_numpy(a)) for a in alphas])
    assert all(0 < m["alpha_entropy"] <= math.log(7) + 1e-12 for m in metrics)
    with np.load(run / "alpha_history.npz") as history:
        assert history["alpha"].shape == (4, 3, 14, 7)
        assert history["epochs"].tolist() == [0, 1, 2, 3]
    assert (run / "resume.pth.tar").exists()


def test_existing_run_folder_is_never_overwritten(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "exps" / "exp" / "search-b"
    run.mkdir(parents=True)
    (run / "keep.txt").write_text("precious")
    assert search("--note", "b") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: experiment folder") and "--force" in err and len(err.splitlines()) == 1
    assert (run / "keep.txt").read_text() == "precious"
    assert search("--note", "b", "--force", "--epochs", "1", "--epoch_ratios", "0,0,1,0") == 0
    assert not (run / "keep.txt").exists()


def _final_state(run: Path) -> tuple[torch.Tensor, dict]:
    state = load_checkpoint(run / "resume.pth.tar")
    return state["engine"]["net"], read_net_config(run / "net.config")


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert search("--note", "full") == 0
    original = SearchRun.run_epoch

    def crash_at_two(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(SearchRun, "run_epoch", crash_at_two)
    assert search("--note", "cut") == 130
    monkeypatch.setattr(SearchRun, "run_epoch", original)
    assert search("--note", "cut", "--resume") == 0
    full_net, full_configs = _final_state(tmp_path / "exps/exp/search-full")
    cut_net, cut_configs = _final_state(tmp_path / "exps/exp/search-cut")
    assert full_configs["Epoch_3"] == cut_configs["Epoch_3"]
    for key in full_net:
        assert torch.equal(full_net[key], cut_net[key]), key
    lines = (tmp_path / "exps/exp/search-cut/metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2, 3]


@pytest.mark.parametrize(("args", "message"), [
    (["--epoch_ratios", "0.5,0.5,0.5"], "--epoch_ratios"),
    (["--batch_size", "1"], "--batch_size of at least 2"),
    (["--dataset", "mnist"], "--dataset must be one of cifar10, "),
    (["--dataset", "cifar10", "--data_path", "/nonexistent/cifar"], "CIFAR"),
    (["--resume"], "--resume"),
    (["--recompute", "layer"], "--recompute must be one of"),
    (["--max_memory", "4", "--recompute", "cell"], "drop --recompute cell"),
    (["--cuda_graphs", "on"], "use --cuda_graphs auto"),
])
def test_bad_input_gives_one_clear_line(tmp_path, monkeypatch, capsys, args, message) -> None:
    monkeypatch.chdir(tmp_path)
    assert search("--note", "bad", *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err


def test_resume_with_another_configuration_or_corrupt_checkpoint(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert search("--note", "c") == 0
    capsys.readouterr()
    assert search("--note", "c", "--resume", "--lr", "0.1") == 2
    err = capsys.readouterr().err.strip()
    assert "different configuration" in err and "--lr" in err and len(err.splitlines()) == 1
    (tmp_path / "exps/exp/search-c/resume.pth.tar").write_bytes(b"not a checkpoint")
    assert search("--note", "c", "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert "corrupt" in err and len(err.splitlines()) == 1


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    import sswp_fast.search.engine as engine_module

    real = engine_module.info_nce_with_topk
    calls = {"n": 0}

    def poisoned(features, temperature):
        loss, top1, top5 = real(features, temperature)
        if features.is_meta:  # the memory model's steps, before the run
            return loss, top1, top5
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 3 else loss), top1, top5

    monkeypatch.setattr(engine_module, "info_nce_with_topk", poisoned)
    assert search("--note", "nan", "--update_arch_every", "100") == 2
    err = capsys.readouterr().err.strip()
    assert "loss became nan at epoch 1" in err and "resume.pth.tar" in err
    state = load_checkpoint(tmp_path / "exps/exp/search-nan/resume.pth.tar")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["engine"]["net"].values() if v.is_floating_point())


def test_max_memory_says_what_it_chose_and_measures_every_epoch(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert search("--note", "mm", "--max_memory", "1000", "--amp", "bf16") == 0
    log = (tmp_path / "exps/exp/search-mm/log.txt").read_text()
    assert "--max_memory 1000: --recompute none (predicted peak per step, GB: none " in log
    assert "peak memory of epoch 3: " in log
    records = [json.loads(line) for line in (tmp_path / "exps/exp/search-mm/metrics.jsonl").read_text().splitlines()]
    assert all(r["peak_memory_gb"] > 0.1 for r in records)


def test_progress_bar_shows_eta_on_terminals(capsys) -> None:
    from sswp_fast.runtime.reporting import Progress

    bar = Progress("on", total_epochs=2)
    bar.update(0, 0, 4, "warmup")
    bar.close()
    err = capsys.readouterr().err
    assert "epoch 0/1" in err and "ETA" in err and "warmup" in err
    silent = Progress("off", total_epochs=2)
    silent.update(0, 0, 4, "warmup")
    assert capsys.readouterr().err == ""


def test_tensorboard_scalars_when_tensorboard_is_installed(tmp_path, monkeypatch) -> None:
    import sys
    import types

    written: list[tuple[str, float, int]] = []

    class FakeWriter:
        def __init__(self, log_dir: str) -> None:
            assert log_dir.endswith("search-tb")

        def add_scalar(self, tag: str, value: float, step: int) -> None:
            written.append((tag, value, step))

        def close(self) -> None:
            written.append(("closed", 0.0, 0))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=FakeWriter))
    monkeypatch.chdir(tmp_path)
    assert search("--note", "tb") == 0
    tags = {tag for tag, _, _ in written}
    assert {"train/loss", "train/acc", "train/valid_acc", "train/valid_loss", "closed"} <= tags


def test_search_on_an_image_folder_dataset(tmp_path, monkeypatch) -> None:
    """imagenet-tiny layout (train/<class>/*.png, val/<class>/*.png), decoded in threads, CIFAR stem (the
    stem its compact networks use, so weights transfer)."""
    pytest.importorskip("PIL.Image", reason="Pillow decodes image folders")
    write_random_image_folder(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert main(["search", "--dataset", "imagenet-tiny", "--data_path", str(tmp_path / "data"), "--epochs", "3",
                 "--epoch_ratios", "0.34,0.34,0.32,0", "--min_warmup", "0", "--layers", "3", "--init_channels", "4",
                 "--batch_size", "2", "--num_workers", "2", "--update_arch_every", "1", "--progress", "off",
                 "--note", "folder"]) == 0
    run = tmp_path / "exps" / "exp" / "search-folder"
    state = load_checkpoint(run / "Epoch_2.pth.tar")
    assert "stem.0.weight" in state
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["weight_steps"] == 3 and metrics[1]["arch_steps"] == 3


def test_plot_command_draws_a_finished_run(tmp_path, monkeypatch, capsys) -> None:
    pytest.importorskip("matplotlib", reason="sswp-fast plot needs matplotlib")
    monkeypatch.chdir(tmp_path)
    assert search("--note", "p") == 0
    capsys.readouterr()
    assert main(["plot", "exps/exp/search-p"]) == 0
    written = capsys.readouterr().out.split()
    assert any(p.endswith("alpha_cell00.png") for p in written) and any("genotype_cell02" in p for p in written)
    assert all(Path(p).stat().st_size > 0 for p in written)
    assert main(["plot", "exps/exp/missing"]) == 2
