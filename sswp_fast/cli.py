"""The sswp-fast command line: the reference's flags for the search, the downstream stages and NASiam.

``sswp-fast search [flags]`` accepts every flag of the reference's ``search_cifar.py`` /
``search_imagenet.py`` with the same names and defaults (:class:`~sswp_fast.search.config.SearchConfig`); ``train``,
``finetune``, ``linear-eval`` and ``pretrain`` those of ``train_cifar.py``, ``finetune.py``, ``linear_eval.py`` and
``simclr_weight_pretrain.py`` (:class:`~sswp_fast.stages.config.DownstreamConfig`); ``sswp-fast knn`` scores any
checkpoint with a kNN monitor; ``sswp-fast plot RUN_DIR`` draws a finished run. Every run command takes
``--dry_run`` (print the resolved plan, run nothing). The flags of a command are the flag fields of its
configuration (:mod:`sswp_fast.runtime.flags`): names, types, defaults, help and listed choices. Any
:class:`~sswp_fast.errors.SSWPError` is printed as one ``error:`` line (exit status 2). The parser has no logic of
its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence

from sswp_fast.errors import SSWPError
from sswp_fast.nasiam.config import NasiamConfig, nasiam_defaults
from sswp_fast.runtime.flags import Flag, default_text, flag_fields
from sswp_fast.search.config import DATASETS, SearchConfig
from sswp_fast.stages.config import STAGES, DownstreamConfig, applies, stage_defaults
from sswp_fast.stages.knn import KNN_K, KNN_TEMPERATURE

DESCRIPTION = ("Self-supervised, weight-preserving neural architecture search (SSWP-NAS) and NASiam, with the "
               "reference scripts' flags. Every run command takes --dry_run to print its plan without running.")

DRY_RUN = Flag("check every input and print the resolved plan (executor, recompute, precision, folders, ...) as "
               "text or one JSON object; runs, writes and allocates nothing, and plans for a --device this machine "
               "does not have",
               doc="check and print the resolved plan (executor, recompute and its memory predictions, precision, "
               "compile, device, world size, run folder) and stop, writing nothing: bare or `text` for a readable "
               "block, `json` for one JSON object. Also on `train`, `finetune`, `linear-eval`, `pretrain`, `knn` and "
               "`nasiam`", ours=True, choices=("text", "json"), listed=True, bare="text")
"""``--dry_run``, which every run command takes: a flag of the command line, not of a configuration."""


def _add_flag(parser: argparse.ArgumentParser, name: str, spec: Flag, kind: type, default: object,
             show_default: bool = True) -> None:
    """Add the flag ``spec`` of the field ``name`` (values of type ``kind``) with ``default`` to ``parser``; its help
    ends with the default where ``show_default``. A boolean is a switch (``--x``, with ``--no-x`` where
    ``spec.negatable``)."""
    names = spec.spellings(name)
    if kind is bool and spec.negatable:
        parser.add_argument(*names, dest=name, action=argparse.BooleanOptionalAction, default=default,
                            help=f"{spec.help} (default: {'on' if default else 'off'})")
    elif kind is bool:
        parser.add_argument(*names, dest=name, action="store_true", default=default, help=spec.help)
    else:
        options: dict = {"nargs": "?", "const": spec.bare} if spec.bare is not None else {}
        if spec.listed:
            options["choices"] = spec.choices
        if spec.required:
            options["required"] = True
        parser.add_argument(*names, dest=name, type=kind, default=default, **options,
                            help=f"{spec.help} (default: {default_text(spec, default)})" if show_default
                            else spec.help or None)


def config_flags(config: type, only: Callable[[str], bool] = lambda name: True) -> list[tuple[str, Flag, type]]:
    """(name, :class:`Flag`, value type) of the flags of a command whose configuration is the dataclass ``config``,
    in ``--help`` order: its required flag fields, ``--dry_run``, then its other flag fields that ``only`` keeps, in
    field order."""
    fields = [(field.name, spec, kind) for field, spec, kind in flag_fields(config) if only(field.name)]
    return ([f for f in fields if f[1].required] + [("dry_run", DRY_RUN, str)]
            + [f for f in fields if not f[1].required])


def _add_config_flags(parser: argparse.ArgumentParser, config: type, defaults: object | None = None,
                     only: Callable[[str], bool] = lambda name: True) -> None:
    """The flags of :func:`config_flags` on ``parser``, with the defaults of the configuration ``defaults``, shown in
    the help; without ``defaults`` every flag defaults to None (unset). ``--dry_run`` defaults to None always."""
    for name, spec, kind in config_flags(config, only):
        field_default = defaults is not None and spec is not DRY_RUN
        _add_flag(parser, name, spec, kind, getattr(defaults, name) if field_default else None,
                 show_default=field_default)


def _add_stage(commands, stage: str, text: str) -> None:
    parser = commands.add_parser(stage, help=text)
    _add_config_flags(parser, DownstreamConfig, stage_defaults(stage), only=lambda name: applies(name, stage))


def _add_nasiam(commands) -> None:
    nasiam = commands.add_parser("nasiam", help="NASiam: search, pretrain and linear-evaluate SSL heads")
    sub = nasiam.add_subparsers(dest="nasiam_command", required=True)
    for command, text in (("search", "DARTS search of the projector/predictor heads"),
                          ("pretrain", "pretrain with a genotype's heads (kNN monitor every epoch)"),
                          ("lincls", "linear classifier on the frozen pretrained backbone")):
        parser = sub.add_parser(command, help=text)
        parser.add_argument("data_root", nargs="?", default=None, help="dataset root (or --data)")
        _add_config_flags(parser, NasiamConfig)


def nasiam_config_from_args(args: argparse.Namespace) -> NasiamConfig:
    """The :class:`~sswp_fast.nasiam.config.NasiamConfig` of parsed ``nasiam`` arguments (unset flags take the
    framework's and command's reference defaults)."""
    values = {field.name: getattr(args, field.name) for field, _, _ in flag_fields(NasiamConfig)
              if getattr(args, field.name) is not None}
    if args.data_root is not None:
        values.setdefault("data", args.data_root)
    return dataclasses.replace(nasiam_defaults(args.nasiam_command, args.framework), **values)


def stage_config_from_args(args: argparse.Namespace) -> DownstreamConfig:
    names = {f.name for f in dataclasses.fields(DownstreamConfig)}
    return dataclasses.replace(stage_defaults(args.command), **{k: v for k, v in vars(args).items() if k in names})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sswp-fast", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    search = commands.add_parser("search", help="run an SSWP-NAS search (reference-compatible flags)")
    _add_config_flags(search, SearchConfig, SearchConfig())
    _add_stage(commands, "train", "train a searched architecture from scratch (train_cifar.py flags)")
    _add_stage(commands, "finetune", "fine-tune from the concomitant search weights (finetune.py flags)")
    _add_stage(commands, "linear-eval", "linear probe on the frozen search weights (linear_eval.py flags)")
    _add_stage(commands, "pretrain", "two-stage SimCLR pretraining baseline (simclr_weight_pretrain.py flags)")
    _add_nasiam(commands)
    knn = commands.add_parser("knn", help="kNN accuracy of any search or compact-network checkpoint")
    knn.add_argument("--path", default=None, help="folder holding net.config and {arch_name}.pth.tar")
    knn.add_argument("--arch_name", default="highest_acc", help="architecture (net.config name, or darts / pdarts)")
    knn.add_argument("--checkpoint", default=None, help="weights file (default: {path}/{arch_name}.pth.tar)")
    knn.add_argument("--dataset", default="cifar10", choices=DATASETS, help="dataset (default: cifar10)")
    knn.add_argument("--data_path", default=None, help="dataset root")
    knn.add_argument("--batch_size", type=int, default=256, help="images per forward pass (default: 256)")
    knn.add_argument("--k", type=int, default=KNN_K, help=f"neighbours that vote (default: {KNN_K})")
    knn.add_argument("--temperature", type=float, default=KNN_TEMPERATURE,
                     help=f"vote weight exp(similarity / t) (default: {KNN_TEMPERATURE})")
    knn.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    _add_flag(knn, "dry_run", DRY_RUN, str, None, show_default=False)
    commands.add_parser("doctor", help="say which backends (compiled ops, Triton, device) are built and active")
    plot = commands.add_parser("plot", help="draw alpha heat-maps and genotype graphs of a run")
    plot.add_argument("run_dir", help="a search folder (exps/{exp_group}/search-{note})")
    plot.add_argument("--out", default=None, help="output folder (default: RUN_DIR/plots)")
    plot.add_argument("--format", default="png", choices=("png", "svg"), help="image format")
    return parser


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    names = {f.name for f in dataclasses.fields(SearchConfig)}
    return SearchConfig(**{k: v for k, v in vars(args).items() if k in names})


def _cuda_op_state(built: bool, cuda: bool) -> str:
    if not built:
        return "not built (install with torch+CUDA and nvcc): CUDA tensors use the PyTorch formula"
    return "built, active on CUDA tensors" if cuda else "built, idle (no CUDA device here)"


def doctor_report() -> list[tuple[str, str]]:
    """(backend, state) lines: what this installation built and what a run here would use."""
    import torch

    from sswp_fast import __version__
    from sswp_fast.losses import compiled_op as compiled
    from sswp_fast.search.executors.choice import interpreter_on

    cuda = torch.cuda.is_available()
    try:
        import triton

        active = "used on CUDA by --kernels auto where the run allows it (see a run's executor line)" if cuda else (
            "active on CPU tensors (TRITON_INTERPRET=1)" if interpreter_on() else "idle here (no CUDA device)")
        triton_state = f"{triton.__version__}: the device executor's kernels, {active}"
    except ImportError:
        triton_state = "not installed"
    return [
        ("sswp-fast", __version__),
        ("torch", torch.__version__),
        ("C++ InfoNCE op (CPU)", "built, active on CPU tensors" if compiled.available("cpu")
         else "not built: info_nce uses the PyTorch formula"),
        ("CUDA InfoNCE op", _cuda_op_state(compiled.available("cuda"), cuda)),
        ("Triton", triton_state),
        ("device", f"cuda ({torch.cuda.get_device_name(0)})" if cuda else "cpu (no CUDA device)"),
    ]


def dry_run_plan(args: argparse.Namespace):
    """The :class:`~sswp_fast.runtime.plan.Plan` of a parsed command line with ``--dry_run``."""
    if args.command == "search":
        from sswp_fast.search.plan import plan_search

        return plan_search(config_from_args(args), run=False).plan()
    if args.command in STAGES:
        from sswp_fast.stages.run import plan_stage

        return plan_stage(stage_config_from_args(args))
    if args.command == "nasiam":
        from sswp_fast.nasiam.training import plan_nasiam

        return plan_nasiam(nasiam_config_from_args(args), run=False).plan()
    from sswp_fast.stages.run import plan_knn

    return plan_knn(args.path, args.arch_name, args.checkpoint, args.dataset, args.data_path, args.batch_size,
                    args.k, args.device)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "dry_run", None):
            from sswp_fast.runtime.plan import show

            print(show(dry_run_plan(args), args.dry_run))
        elif args.command == "search":
            from sswp_fast.search.run import run_search

            run_search(config_from_args(args))
        elif args.command in STAGES:
            from sswp_fast.runtime.distributed import world_from_env
            from sswp_fast.stages.run import run_stage

            run_dirs = run_stage(stage_config_from_args(args))
            if world_from_env().main:
                for run_dir in run_dirs:
                    print(f"run folder: {run_dir}")
        elif args.command == "nasiam":
            from sswp_fast.nasiam.training import run_nasiam

            print(f"run folder: {run_nasiam(nasiam_config_from_args(args))}")
        elif args.command == "knn":
            from sswp_fast.stages.run import knn_of_checkpoint

            accuracy = knn_of_checkpoint(args.path, args.arch_name, args.checkpoint, args.dataset, args.data_path,
                                         args.batch_size, args.k, args.temperature, args.device)
            print(f"knn_top1 {accuracy:f}")
        elif args.command == "doctor":
            for name, state in doctor_report():
                print(f"{name:<22} {state}")
        elif args.command == "plot":
            from sswp_fast.search.plot import plot_run

            for path in plot_run(args.run_dir, args.out, args.format):
                print(path)
    except SSWPError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
