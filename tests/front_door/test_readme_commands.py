"""Every command in the README's code blocks plans on a GPU machine and on a CPU one: each ``sswp-fast ...`` and
``torchrun ... -m sswp_fast.cli ...`` line runs with ``--dry_run --device cuda`` (one JSON object) and with
``--dry_run --device cpu`` (text), torchrun lines as rank 0 of 4 processes. The inputs a command names (a
search folder, a genotype file, a pretrained checkpoint, a run to resume, ``DATA``) are first made by tiny real
runs, and each command plans in a folder holding exactly those inputs, so its own run folder is new there."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest

from sswp_fast.cli import build_parser, config_from_args, main
from sswp_fast.runtime.reporting import close_log
from sswp_fast.search.run import SearchRun

from _support.fake_data import write_fake_cifar, write_random_image_folder

README = Path(__file__).resolve().parents[2] / "README.md"
TORCHRUN_ENV = {"WORLD_SIZE": "4", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "29555"}


def readme_commands() -> list[tuple[list[str], int]]:
    """(arguments after ``sswp-fast``, processes) of every command line in the README's bash blocks."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S):
        for line in block.splitlines():
            line = line.split(" && ")[-1].strip()
            if not line or line.startswith("#"):
                continue
            words = shlex.split(line)
            if words[0].endswith("sswp-fast"):
                commands.append((words[1:], 1))
            elif words[0].endswith("torchrun") and "sswp_fast.cli" in words:
                processes = int(words[words.index("--nproc_per_node") + 1])
                commands.append((words[words.index("sswp_fast.cli") + 1:], processes))
    return commands


COMMANDS = readme_commands()


def _value(args: list[str], *flags: str) -> str | None:
    for flag in flags:
        if flag in args:
            return args[args.index(flag) + 1]
    return None


def _inputs(args: list[str]) -> list[str]:
    """The paths a command reads from an earlier run (relative to the folder it runs in)."""
    named = [_value(args, "--path"), _value(args, "--pretrained"), _value(args, "-g", "--genotype")]
    paths = [p for p in named if p is not None and "/" in p]
    if "--resume" in args:
        paths.append(f"exps/{_value(args, '--exp_group') or 'exp'}/search-{_value(args, '--note')}")
    return paths


def _run_folder(args: list[str]) -> str:
    return f"exps/{_value(args, '--exp_group') or 'exp'}/search-{_value(args, '--note')}"


def _makes(args: list[str], path: str) -> bool:
    """Whether the command ``args`` writes ``path``."""
    if args[0] == "search":
        return path.startswith(_run_folder(args))
    if args[0] == "nasiam":
        return path.startswith(f"exps/exp/nasiam-{_value(args, '--framework')}-{args[1]}-exp/")
    return False


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """DATA (a small CIFAR-10 and an ImageNet-style folder) and every input the README's commands name, made by
    tiny real runs of the README commands that write them: a run to resume is the command as written for one
    epoch; the others are capped to one step per epoch (and NASiam to one epoch)."""
    root = tmp_path_factory.mktemp("made")
    write_fake_cifar(root / "DATA", n_train=40, n_test=10)
    write_random_image_folder(root / "DATA", size=32)
    needed = {path for args, _ in COMMANDS for path in _inputs(args)}
    resumed = {_run_folder(args) for args, _ in COMMANDS if "--resume" in args}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for args, processes in COMMANDS:
            outputs = [p for p in needed if _makes(args, p) and not (root / p).exists()]
            if not outputs or processes > 1:
                continue
            if _run_folder(args) in resumed:
                run = SearchRun(config_from_args(build_parser().parse_args([*args, "--progress", "off"])))
                run.run_epoch(0)
                close_log(run.log)
            else:
                capped = ["--steps_per_epoch", "1", "--progress", "off"] + ["--epochs", "1"] * (args[0] == "nasiam")
                assert main([*args, *capped]) == 0, args
    missing = [p for p in needed if not (root / p).exists()]
    assert not missing, f"no README command makes {missing}"
    return root


def test_the_readme_has_the_commands_this_test_expects() -> None:
    kinds = {(args[0], args[1] if args[0] == "nasiam" else None) for args, _ in COMMANDS}
    assert {("search", None), ("finetune", None), ("train", None), ("linear-eval", None), ("knn", None),
            ("nasiam", "search"), ("nasiam", "pretrain"), ("nasiam", "lincls")} <= kinds
    assert any(processes == 4 for _, processes in COMMANDS)
    assert any("--resume" in args for args, _ in COMMANDS)


@pytest.mark.parametrize(("args", "processes"), COMMANDS, ids=[" ".join(a) for a, _ in COMMANDS])
def test_every_readme_command_plans_on_cuda_and_on_cpu(args, processes, made, tmp_path, monkeypatch,
                                                       capsys) -> None:
    for path in _inputs(args):
        source, target = made / path, tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
    (tmp_path / "DATA").symlink_to(made / "DATA")
    monkeypatch.chdir(tmp_path)
    if processes > 1:
        for name, value in {**TORCHRUN_ENV, "WORLD_SIZE": str(processes)}.items():
            monkeypatch.setenv(name, value)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    assert main([*args, "--dry_run", "json", "--device", "cuda"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["device"].startswith("cuda")
    assert main([*args, "--dry_run", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "plan (--dry_run: nothing was run, written or allocated)" in text
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    if args[0] == "search":
        assert plan["processes"] == processes
        assert plan["executor"]["name"] in ("device", "torch") and plan["executor"]["reason"]
