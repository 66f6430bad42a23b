"""The commands' flags come from the configurations' flag fields: the parsers give the configurations' defaults,
every listed choice is checked, docs/flags.md and README's table of the flags that do not combine are the
generated text, and every row of that table does what it says."""

from __future__ import annotations

from pathlib import Path

import pytest

from sswp_fast.cli import build_parser, config_from_args, main, nasiam_config_from_args, stage_config_from_args
from sswp_fast.errors import ConfigError, SSWPError
from sswp_fast.flag_docs import REGENERATE, generated, readme_with_combinations
from sswp_fast.nasiam.config import COMMANDS, NasiamConfig, nasiam_defaults
from sswp_fast.nasiam.models import FRAMEWORKS
from sswp_fast.runtime.flags import flag_fields
from sswp_fast.search.config import COMBINATIONS, SearchConfig
from sswp_fast.stages.config import STAGES, stage_defaults

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_flag_docs_are_the_generated_ones() -> None:
    for path, text in generated(ROOT).items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.relative_to(ROOT)} differs from the flag fields and COMBINATIONS: run `.venv/bin/{REGENERATE}`")


def test_a_readme_without_the_table_markers_is_a_one_line_error() -> None:
    with pytest.raises(SSWPError, match="put them back") as refused:
        readme_with_combinations("# README\n\n| flags | what happens |\n")
    assert "\n" not in str(refused.value)


def test_each_command_without_flags_has_its_configuration_defaults() -> None:
    parser = build_parser()
    assert config_from_args(parser.parse_args(["search"])) == SearchConfig()
    for stage in STAGES:
        assert stage_config_from_args(parser.parse_args([stage])) == stage_defaults(stage)
    for command in COMMANDS:
        for framework in FRAMEWORKS:
            args = parser.parse_args(["nasiam", command, "--framework", framework])
            assert nasiam_config_from_args(args) == nasiam_defaults(command, framework)


def test_every_flag_value_outside_its_choices_is_refused_naming_the_flag() -> None:
    configs = [SearchConfig(dataset="digits").resolved(), stage_defaults("train"), nasiam_defaults("search", "simsiam")]
    for config in configs:
        chosen = [(field.name, spec) for field, spec, _ in flag_fields(type(config)) if spec.choices is not None]
        assert chosen
        for name, spec in chosen:
            bad = type(config)(**{**vars(config), name: "bogus"})
            with pytest.raises(ConfigError, match=f"^{spec.option(name)} must be .*, got 'bogus'$"):
                bad.validate()


def test_nasiam_flags_keep_the_reference_spellings() -> None:
    args = build_parser().parse_args(["nasiam", "pretrain", "--framework", "moco", "-b", "8", "--moco-k", "16",
                                      "--wd", "0.1", "-g", "cifar10_resnet18", "DATA"])
    config = nasiam_config_from_args(args)
    assert (config.batch_size, config.moco_k, config.weight_decay, config.genotype, config.data) == (
        8, 16, 0.1, "cifar10_resnet18", "DATA")
    assert isinstance(config, NasiamConfig)


TINY = ["--dataset", "digits", "--device", "cpu", "--layers", "3", "--init_channels", "4", "--batch_size", "4"]
# for each row of COMBINATIONS: flags that ask for it, the environment, and what the dry run says (for a refused
# row: the start of its one-line error; otherwise a line of the plan)
EXAMPLES: dict[str, tuple[list[str], dict[str, str], str]] = {
    "`--kernels triton` on a CPU device": (["--kernels", "triton"], {}, "error: --kernels triton "),
    "`--compile default` / `max-autotune` with `--amp` or torchrun":
        (["--compile", "default", "--amp", "bf16"], {}, "error: --compile default runs the device executor's"),
    "`--cuda_graphs auto` (default) on a CPU device, on the PyTorch executor, under torchrun or with `--amp fp16`":
        ([], {}, "off (auto: cpu device: CUDA graphs need CUDA)"),
    "`--cuda_graphs on` where `auto` would run eager steps": (["--cuda_graphs", "on"], {}, "error: --cuda_graphs on "),
    "`--recompute auto` (default) with `--compile`":
        (["--compile", "default"], {}, "(--compile: the compiler's partitioner decides what to recompute)"),
    "`--recompute none` / `edge` / `cell` with `--compile`":
        (["--compile", "default", "--recompute", "edge"], {}, "error: --recompute edge does not combine"),
    "`--recompute auto` with `--max_memory GB`": (["--max_memory", "2"], {}, "(--max_memory 2: measured on the device"),
    "`--recompute none` / `edge` / `cell` with `--max_memory`":
        (["--max_memory", "2", "--recompute", "cell"], {}, "error: --max_memory picks the recompute mode itself"),
    "`--max_memory` with `--compile`": (["--max_memory", "2", "--compile", "default"], {}, "error: --max_memory "),
    "`--amp` with `--reference_quirks`": (["--amp", "bf16", "--reference_quirks"], {}, "error: --reference_quirks "),
    "`--prune_edges` with `--reference_quirks`": (["--prune_edges", "--reference_quirks"], {}, "error: --prune_edges "),
    "`--resume` with `--force`": (["--resume", "--force"], {}, "error: --resume and --force"),
    "`$SSWP_FAST_KERNELS` with an explicit `--kernels`":
        (["--kernels", "torch"], {"SSWP_FAST_KERNELS": "triton"}, "torch (--kernels torch)"),
}


def test_every_row_of_the_table_has_an_example() -> None:
    assert [row.flags for row in COMBINATIONS] == list(EXAMPLES)


@pytest.mark.parametrize("row", COMBINATIONS, ids=[row.flags for row in COMBINATIONS])
def test_each_row_of_the_table_does_what_it_says(row, tmp_path, monkeypatch, capsys) -> None:
    args, env, says = EXAMPLES[row.flags]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    refused = row.outcome.startswith("error")
    assert main(["search", "--dry_run", *TINY, *args]) == (2 if refused else 0)
    out, err = capsys.readouterr()
    if not refused:
        assert says in out and err == "", out + err
        return
    assert err.startswith(says) and len(err.strip().splitlines()) == 1, err
    if row.refused is not None:
        config = config_from_args(build_parser().parse_args(["search", *TINY, *args]))
        assert err.strip() == "error: " + row.error.format_map(vars(config))
    assert list(tmp_path.iterdir()) == []
