"""``--compile``: the compiled steps follow the eager ones, compile one graph per step kind and frozen prefix
whatever the sampled paths, and keep their code where the user says."""

from __future__ import annotations

import json
import os

import pytest
import torch

from sswp_fast import SearchConfig, SearchEngine
from sswp_fast.cli import build_parser, config_from_args
from sswp_fast.errors import ConfigError
from sswp_fast.kernels import common
from sswp_fast.runtime.checkpoint import load_checkpoint
from sswp_fast.runtime.distributed import World
from sswp_fast.search.executors import compiled as step_compiler
from sswp_fast.search.run import SearchRun

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


def _sine_sum(x: torch.Tensor) -> torch.Tensor:
    return (x.sin() * 2).sum()


def test_compiled_steps_set_their_settings_only_while_they_run(tmp_path, monkeypatch) -> None:
    """The cache folder and the recompile limit hold inside :meth:`CompiledStep.settings`, and the environment
    and dynamo's configuration are as they were before compiling and after running."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "user"))
    limit = torch._dynamo.config.recompile_limit
    environment = dict(os.environ)  # after importing torch._dynamo, which sets $TORCHINDUCTOR_CACHE_DIR if unset
    step = step_compiler.compile_step(_sine_sum, "default", str(tmp_path / "cache"), backend="aot_eager")
    assert dict(os.environ) == environment and step.cache == tmp_path / "cache" and step.cache.is_dir()
    x = torch.randn(5, requires_grad=True)
    with step.settings():
        assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache")
        assert torch._dynamo.config.recompile_limit == max(limit, step_compiler.RECOMPILE_LIMIT)
        step.fn(x).backward()
    torch.testing.assert_close(x.grad, 2 * x.detach().cos())
    assert dict(os.environ) == environment and torch._dynamo.config.recompile_limit == limit


@pytest.mark.slow(seconds=40)
def test_inductor_keeps_the_forward_and_backward_code_in_the_cache_folder(tmp_path, monkeypatch) -> None:
    """Inductor compiles the backward pass at the first backward: inside the settings, it too lands in the
    chosen folder, and nothing in the folder the environment names."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "user"))
    step = step_compiler.compile_step(_sine_sum, "default", str(tmp_path / "cache"))
    x = torch.randn(5, requires_grad=True)
    with step.settings():
        step.fn(x).backward()
    torch.testing.assert_close(x.grad, 2 * x.detach().cos())
    assert len(list((tmp_path / "cache" / "fxgraph").iterdir())) == 2  # the forward graph and the backward graph
    assert not (tmp_path / "user").exists()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "user")


def test_the_compile_backend_is_passed_down_to_torch_compile(monkeypatch) -> None:
    calls = []

    def record(fn, **options):
        calls.append(options)
        return fn

    monkeypatch.setattr(torch, "compile", record)
    SearchEngine(_config(compile="default"), 10, compile_backend="aot_eager")
    SearchEngine(_config(compile="max-autotune"), 10)
    assert calls == [dict(backend="aot_eager", dynamic=False), dict(mode="max-autotune", dynamic=False)]


def test_the_first_step_of_each_graph_is_announced() -> None:
    engine = SearchEngine(_config(compile="default"), 10)
    assert engine.will_compile("weight") and not engine.will_compile("weight")
    assert engine.will_compile("arch") and not engine.will_compile("arch")
    engine.freeze([0])
    assert not engine.will_compile("weight")
    assert engine.will_compile("arch")
    assert not SearchEngine(_config(), 10).will_compile("weight")


def _search(root, *extra: str) -> None:
    """The search the CLI runs for ``search TINY extra``, its steps compiled (with ``--compile``) by ``aot_eager``."""
    config = config_from_args(build_parser().parse_args(["search", *TINY, *extra]))
    SearchRun(config, root, compile_backend="aot_eager").run()


@pytest.mark.slow(seconds=100)
def test_compiled_search_follows_the_eager_search_with_a_bounded_number_of_graphs(tmp_path, monkeypatch) -> None:
    """A whole run through every phase (warm-up, search, pruning) with ``--compile``: the same losses, alphas and
    weights as the eager run (float64, so that only real differences show), one graph for the weight step and
    one arch-step graph per frozen prefix, however many paths were sampled, and the process's environment and
    dynamo configuration as they were. The ``aot_eager`` backend traces the same graphs as inductor without its
    code generation (minutes per graph on this CPU); inductor itself is exercised by
    ``benchmarks/bench_compile.py``."""
    monkeypatch.setattr(common, "interpreter_on", lambda: False)  # the PyTorch kernels, as on a CPU outside the tests
    limit = torch._dynamo.config.recompile_limit
    environment = dict(os.environ)  # after importing torch._dynamo, which sets $TORCHINDUCTOR_CACHE_DIR if unset
    torch.set_default_dtype(torch.float64)
    try:
        _search(tmp_path, "--note", "eager")
        _search(tmp_path, "--note", "compiled", "--compile", "default")
    finally:
        torch.set_default_dtype(torch.float32)
    assert dict(os.environ) == environment and torch._dynamo.config.recompile_limit == limit
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
