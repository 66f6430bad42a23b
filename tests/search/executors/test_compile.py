"""``--compile``: the compiled steps follow the eager ones, compile one graph per step kind and frozen prefix
whatever the sampled paths, and keep their code where the user says."""

from __future__ import annotations

import json

import pytest
import torch

from sswp_fast import SearchConfig, SearchEngine
from sswp_fast.cli import main
from sswp_fast.errors import ConfigError
from sswp_fast.kernels import _common
from sswp_fast.runtime.checkpoint import load_checkpoint
from sswp_fast.runtime.distributed import World
from sswp_fast.search.executors import compiled as step_compiler

TINY = ["--dataset", "digits", "--epochs", "4", "--epoch_ratios", "0.25,0.25,0.5,0.0", "--min_warmup", "0",
        "--layers", "3", "--init_channels", "4", "--batch_size", "8", "--steps_per_epoch", "3",
        "--update_arch_every", "1", "--report_freq", "2", "--progress", "off", "--device", "cpu",
        "--kernels", "torch"]


def _config(**overrides) -> SearchConfig:
    values = dict(layers=3, init_channels=4, batch_size=4, dataset="digits", device="cpu", kernels="torch")
    return SearchConfig(**{**values, **overrides}).resolved()


def test_compile_flag_values_and_combinations_are_checked() -> None:
    with pytest.raises(ConfigError, match="--compile must be off, default or max-autotune"):
        _config(compile="fast")
    with pytest.raises(ConfigError, match=r"lack --amp .*drop --compile or pass --amp off"):
        SearchEngine(_config(compile="default", amp="bf16"), 10)
    with pytest.raises(ConfigError, match="lack torchrun .*drop --compile or run in a single process"):
        SearchEngine(_config(compile="default"), 10, "cpu", World(0, 2, 0))


def test_cache_folder_is_the_flag_then_the_environment_then_the_user_cache(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(step_compiler, "_USER_CACHE_DIR", str(tmp_path / "env"))  # read when sswp_fast loads
    assert step_compiler.cache_dir(str(tmp_path / "flag")) == tmp_path / "flag"
    assert step_compiler.cache_dir() == tmp_path / "env"
    monkeypatch.setattr(step_compiler, "_USER_CACHE_DIR", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert step_compiler.cache_dir() == tmp_path / "xdg" / "sswp-fast" / "inductor"


def test_the_first_step_of_each_graph_is_announced() -> None:
    engine = SearchEngine(_config(compile="default"), 10)
    assert engine.will_compile("weight") and not engine.will_compile("weight")
    assert engine.will_compile("arch") and not engine.will_compile("arch")
    engine.freeze([0])
    assert not engine.will_compile("weight")
    assert engine.will_compile("arch")
    assert not SearchEngine(_config(), 10).will_compile("weight")


@pytest.mark.slow(seconds=100)
def test_compiled_search_follows_the_eager_search_with_a_bounded_number_of_graphs(tmp_path, monkeypatch) -> None:
    """A whole run through every phase (warm-up, search, pruning) with ``--compile``: the same losses, alphas and
    weights as the eager run (float64, so that only real differences show), one graph for the weight step and
    one arch-step graph per frozen prefix, however many paths were sampled. The ``aot_eager`` backend traces
    the same graphs as inductor without its code generation (minutes per graph on this CPU); inductor itself
    is exercised by ``benchmarks/bench_compile.py``."""
    monkeypatch.setattr(step_compiler, "BACKEND", "aot_eager")
    monkeypatch.setattr(_common, "INTERPRETED", False)  # the PyTorch kernels, as on a CPU outside the tests
    monkeypatch.chdir(tmp_path)
    torch.set_default_dtype(torch.float64)
    try:
        assert main(["search", *TINY, "--note", "eager"]) == 0
        assert main(["search", *TINY, "--note", "compiled", "--compile", "default"]) == 0
    finally:
        torch.set_default_dtype(torch.float32)
    runs = {name: tmp_path / f"exps/exp/search-{name}" for name in ("eager", "compiled")}
    records = {name: [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
               for name, run in runs.items()}
    for eager, compiled in zip(records["eager"], records["compiled"], strict=True):
        assert compiled["phase"] == eager["phase"] and compiled["frozen_cells"] == eager["frozen_cells"]
        assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-9)
        assert (compiled["arch_loss"] is None) == (eager["arch_loss"] is None)
        if eager["arch_loss"] is not None:
            assert compiled["arch_loss"] == pytest.approx(eager["arch_loss"], rel=1e-9)
    eager_net = load_checkpoint(runs["eager"] / "resume.pth.tar")["engine"]["net"]
    compiled_net = load_checkpoint(runs["compiled"] / "resume.pth.tar")["engine"]["net"]
    for key, value in eager_net.items():
        torch.testing.assert_close(compiled_net[key], value, rtol=1e-9, atol=1e-12, msg=key)
    assert (runs["eager"] / "net.config").read_text() == (runs["compiled"] / "net.config").read_text()
    phases = [r["phase"] for r in records["compiled"]]
    assert phases[:2] == ["warmup", "search"] and phases[-1] == "prune"
    graphs = [r["compiled_graphs"] - records["compiled"][0]["compiled_graphs"] + 1 for r in records["compiled"]]
    assert graphs[:2] == [1, 2]  # 3 weight steps, then 3 weight and 3 arch steps on new paths: no new graphs
    assert graphs[-1] <= 2 + 3  # plus at most one arch graph per frozen prefix of the 3 cells
