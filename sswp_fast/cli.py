"""The sswp-fast command line: the reference's flags for the search, the downstream stages and NASiam.

``sswp-fast search [flags]`` accepts every flag of the reference's ``search_cifar.py`` /
``search_imagenet.py`` with the same names and defaults (:class:`~sswp_fast.search.config.SearchConfig`); ``train``,
``finetune``, ``linear-eval`` and ``pretrain`` those of ``train_cifar.py``, ``finetune.py``, ``linear_eval.py`` and
``simclr_weight_pretrain.py`` (:class:`~sswp_fast.stages.config.DownstreamConfig`); ``sswp-fast knn`` scores any
checkpoint with a kNN monitor; ``sswp-fast plot RUN_DIR`` draws a finished run. Every run command takes
``--dry_run`` (print the resolved plan, run nothing). Any :class:`~sswp_fast.errors.SSWPError` is printed as one
``error:`` line (exit status 2). The parser has no logic of its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from sswp_fast.errors import SSWPError
from sswp_fast.runtime.precision import AMP_MODES
from sswp_fast.search.config import DATASETS, SearchConfig
from sswp_fast.stages.config import STAGES, DownstreamConfig, applies, stage_defaults
from sswp_fast.stages.knn import KNN_K, KNN_TEMPERATURE

_DEFAULTS = SearchConfig()
DESCRIPTION = ("Self-supervised, weight-preserving neural architecture search (SSWP-NAS) and NASiam, with the "
               "reference scripts' flags. Every run command takes --dry_run to print its plan without running.")

# (flag, type or "flag", help, ours?) in the reference's order, then ours.
SEARCH_FLAGS: list[tuple[str, object, str, bool]] = [
    ("note", str, "run name: exps/{exp_group}/search-{note}", False),
    ("exp_group", str, "output group folder under exps/", False),
    ("data_mode", str, "objective and head: SimCLR (InfoNCE), supervised (cross-entropy) or byol", False),
    ("epochs", int, "total epochs (also the cosine period of the weight LR)", False),
    ("epoch_ratios", str, "warm-up, search, prune, stabilize fractions of --epochs", False),
    ("min_warmup", int, "minimum warm-up epochs, taken from search (default 40; ImageNet 10)", False),
    ("dataset", str, f"one of {', '.join(DATASETS)}; digits is embedded in the package", False),
    ("data_path", str, "dataset root (CIFAR python folders or an image folder with train/ and val/)", False),
    ("train_ratio", float, "fraction of the training set for weight steps; the rest feeds arch steps", False),
    ("batch_size", int, "images per batch; SimCLR and BYOL see 2x (default 96; ImageNet 256)", False),
    ("num_workers", int, "decoding threads for image-folder datasets (resident datasets need none)", False),
    ("layers", int, "number of cells (default 20; ImageNet 14)", False),
    ("init_channels", int, "initial channels C (default 36; ImageNet 48)", False),
    ("net_mode", str, "path binarization: two (active+inactive op) or full_v2 (one op, 7-way gradient)", False),
    ("prune_direct", str, "progressive freezing order: forward (input first) or backward", False),
    ("affine", "flag", "affine BatchNorm in candidate ops and preprocessing", False),
    ("weight_skip_drop_prob", float, "redraw probability of a sampled skip in weight steps (after warm-up)", False),
    ("weight_pool_drop_prob", float, "redraw probability of a sampled pool in weight steps", False),
    ("arch_skip_drop_prob", float, "redraw probability of a sampled skip in arch steps", False),
    ("arch_pool_drop_prob", float, "redraw probability of a sampled pool in arch steps", False),
    ("skip_r_num", int, "max skip connections per cell in the restricted export", False),
    ("pool_r_num", int, "max pools per cell in the restricted export", False),
    ("compatible_mode", "flag", "zero the weight-step drop probabilities from epoch warmup+search-1", False),
    ("weight_optm", str, "weight optimizer: sgd or adam", False),
    ("lr", float, "weight learning rate (cosine over --epochs)", False),
    ("weight_decay", float, "weight decay of the weight optimizer", False),
    ("momentum", float, "SGD momentum", False),
    ("arch_lr", float, "Adam learning rate of the architecture logits", False),
    ("arch_weight_decay", float, "Adam L2 on the architecture logits", False),
    ("arch_adam_beta1", float, "Adam beta1 for the architecture logits", False),
    ("arch_adam_beta2", float, "Adam beta2 for the architecture logits", False),
    ("grad_clip", float, "gradient-norm clip of weight steps", False),
    ("update_arch_every", int, "an arch update after every k-th weight step", False),
    ("arch_update_steps", int, "arch steps per update", False),
    ("debug", "flag", "use 200-sample subsets", False),
    ("seed", int, "random seed", False),
    ("report_freq", int, "log a train line every k steps (and on the last)", False),
    ("valid_freq", int, "validation stride after pruning", False),
    ("local_rank", int, "accepted for compatibility; multi-process runs take their rank from torchrun", False),
    ("temperature", float, "InfoNCE temperature (the reference hard-codes 0.07)", True),
    ("byol_decay", float, "EMA decay of the BYOL target network, updated after every weight step", True),
    ("reference_quirks", "flag", "reproduce the reference bugs that change results (see README)", True),
    ("prune_edges", "flag", "a frozen cell runs its exported genotype (2 edges per node: the compact cell) "
     "instead of all 14 edges with their argmax ops", True),
    ("resume", "flag", "continue the run in the existing folder from its last checkpoint", True),
    ("force", "flag", "overwrite an existing run folder", True),
    ("steps_per_epoch", int, "cap the weight steps per epoch (smoke tests)", True),
    ("device", str, "auto (CUDA if available), cpu, cuda, cuda:1, ...", True),
    ("progress", str, "progress bar: auto (on terminals), on, off", True),
    ("memory_format", str, "tensor layout: auto (channels_last on CPU, contiguous on CUDA), channels_last, "
     "contiguous", True),
    ("kernels", str, "auto (Triton on CUDA, PyTorch on CPU), triton, torch; $SSWP_FAST_KERNELS overrides", True),
    ("compile", str, "torch.compile the steps: off, default or max-autotune (runs the device-side dispatch "
     "executor; one graph per step kind and frozen prefix)", True),
    ("compile_cache", str, "folder for compiled code (default $TORCHINDUCTOR_CACHE_DIR or "
     "~/.cache/sswp-fast/inductor)", True),
    ("cuda_graphs", str, "capture each search step as a CUDA graph and replay it: auto (on CUDA with the device "
     "executor, one process, no --amp fp16), on, off", True),
    ("recompute", str, "activation recompute, memory for time, same gradients: none, edge (keep node states), "
     "cell (keep cell inputs), auto (none on the PyTorch executor, edge on the Triton one)", True),
    ("max_memory", float, "GB a step may use: measure the recompute modes on small batches, take the fastest "
     "that fits and say which", True),
]


# (flag, type, "flag" (store_true) or "bool" (--x / --no-x), help) in the reference scripts' order, then ours; a stage
# has the flags that apply to it (downstream_config.applies).
STAGE_FLAGS: list[tuple[str, object, str]] = [
    ("note", str, "run name: exps/{exp_group}/{stage}-{note}_{arch_name}"),
    ("exp_group", str, "output group folder under exps/"),
    ("path", str, "search (or pretrain) folder holding net.config and {arch_name}.pth.tar"),
    ("warmup_epochs", int, "linear LR warm-up epochs"),
    ("train_epochs", int, "cosine epochs after the warm-up"),
    ("epochs", int, "pretraining epochs (cosine LR, no warm-up)"),
    ("data_mode", str, "supervised (train stages) or SimCLR (pretrain); accepted for compatibility"),
    ("dataset", str, f"one of {', '.join(DATASETS)}"),
    ("data_path", str, "dataset root"),
    ("train_ratio", float, "labelled fraction: the class-balanced subset of the seed-0 split (spec 2.3)"),
    ("batch_size", int, "global batch size"),
    ("num_workers", int, "decoding threads for image-folder datasets"),
    ("cutout", "bool", "cutout augmentation (--no-cutout turns it off)"),
    ("cutout_length", int, "cutout square size"),
    ("label_smooth", float, "label smoothing of the training loss"),
    ("arch_name", str, "comma list of net.config names (or darts / pdarts without --path)"),
    ("init_channels", int, "initial channels C (must equal the search's when starting from its weights)"),
    ("drop_path_prob", float, "drop-path probability reached at the last epoch (linearly from 0)"),
    ("auxiliary", "bool", "auxiliary head (--no-auxiliary turns it off)"),
    ("auxiliary_weight", float, "weight of the auxiliary loss"),
    ("affine", "bool", "affine BatchNorm in the ops (--no-affine turns it off)"),
    ("fix", "flag", "finetune: train only the heads during the warm-up epochs"),
    ("preserve_weight", "flag", "start from the search weights (projection head included)"),
    ("optm", str, "optimizer: sgd or adam"),
    ("lr", float, "peak learning rate"),
    ("lr_min", float, "cosine floor of the learning rate"),
    ("weight_decay", float, "weight decay"),
    ("momentum", float, "SGD momentum"),
    ("grad_clip", float, "gradient-norm clip"),
    ("debug", "flag", "use 200-image subsets"),
    ("seed", int, "random seed"),
    ("report_freq", int, "log a train line every k steps (and on the last)"),
    ("valid_freq", int, "validate every k epochs (and every epoch from 500 on, and the last)"),
    ("local_rank", int, "accepted for compatibility; torchrun sets the rank"),
    ("ddp", "flag", "accepted for compatibility; start several processes with torchrun"),
    ("sync_bn", "flag", "BatchNorm over the global batch in multi-process runs"),
    ("temperature", float, "InfoNCE temperature"),
    ("resume", "flag", "continue the run in the existing folder from its last checkpoint"),
    ("force", "flag", "overwrite an existing run folder"),
    ("steps_per_epoch", int, "cap the steps per epoch (smoke tests)"),
    ("device", str, "auto (CUDA if available), cpu, cuda, cuda:1, ..."),
    ("progress", str, "progress bar: auto (on terminals), on, off"),
]


def _add_dry_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry_run", nargs="?", const="text", default=None, choices=("text", "json"),
                        help="check every input and print the resolved plan (executor, recompute, precision, "
                             "folders, ...) as text or one JSON object; runs, writes and allocates nothing, and "
                             "plans for a --device this machine does not have")


def _add_stage(commands, stage: str, text: str) -> None:
    parser = commands.add_parser(stage, help=text)
    _add_dry_run(parser)
    defaults = stage_defaults(stage)
    for name, kind, help_text in STAGE_FLAGS:
        if not applies(name, stage):
            continue
        default = getattr(defaults, name)
        if kind == "flag":
            parser.add_argument(f"--{name}", action="store_true", help=help_text)
        elif kind == "bool":
            parser.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=default,
                                help=f"{help_text} (default: {'on' if default else 'off'})")
        else:
            parser.add_argument(f"--{name}", type=kind, default=default,
                                help=f"{help_text} (default: {'none' if default is None else repr(default)})")
    parser.add_argument("--amp", nargs="?", const="auto", default="off", choices=AMP_MODES,
                        help="mixed precision: bare --amp is fp16 on CUDA and bf16 on CPU (default: off)")


# (flags, dest, type or "flag", help) of `sswp-fast nasiam`: the reference spellings (spec 3, 6, 7b), then ours.
NASIAM_FLAGS: list[tuple[tuple[str, ...], str, object, str]] = [
    (("--data",), "data", str, "dataset root (the reference's positional data argument)"),
    (("--dataset",), "dataset", str, f"one of {', '.join(DATASETS)}"),
    (("-a", "--arch"), "arch", str, "backbone: resnet18 or resnet50"),
    (("-g", "--genotype"), "genotype", str, "pretrain: a genotype file, or a published name (e.g. cifar10_resnet18)"),
    (("--pretrained",), "pretrained", str, "lincls: the pretrain checkpoint"),
    (("-j", "--workers"), "workers", int, "decoding threads for image folders"),
    (("--epochs",), "epochs", int, "epochs"),
    (("-b", "--batch-size", "--batch_size"), "batch_size", int, "batch size"),
    (("--lr", "--learning-rate"), "lr", float, "base learning rate (SimSiam: scaled by batch/256)"),
    (("--search_lr",), "search_lr", float, "learning rate of the alphas"),
    (("--momentum",), "momentum", float, "SGD momentum"),
    (("--wd", "--weight-decay"), "weight_decay", float, "weight decay"),
    (("--search_wd",), "search_wd", float, "weight decay of the alphas"),
    (("-p", "--print-freq"), "print_freq", int, "log stride in steps"),
    (("--train_portion",), "train_portion", float, "search: fraction (index order) for weight steps"),
    (("--seed",), "seed", int, "random seed"),
    (("--dim",), "dim", int, "SimSiam projector output dim"),
    (("--pred-dim",), "pred_dim", int, "SimSiam predictor hidden dim"),
    (("--fix-pred-lr",), "fix_pred_lr", "flag", "SimSiam: the predictor keeps the base learning rate"),
    (("--moco-dim",), "moco_dim", int, "MoCo output dim"),
    (("--moco-k",), "moco_k", int, "MoCo queue size (a multiple of twice the batch)"),
    (("--moco-m",), "moco_m", float, "MoCo key-encoder EMA momentum"),
    (("--moco-t",), "moco_t", float, "MoCo temperature"),
    (("--feature_dim",), "feature_dim", int, "SimCLR projector output dim"),
    (("--temperature",), "temperature", float, "SimCLR NT-Xent temperature"),
    (("--k",), "k", int, "neighbours of the kNN monitor"),
    (("--note",), "note", str, "run name: exps/{exp_group}/nasiam-{framework}-{command}-{note}"),
    (("--exp_group",), "exp_group", str, "output group folder under exps/"),
    (("--moco_bn_eps_bug",), "moco_bn_eps_bug", "flag", "reproduce MoCo's BatchNorm1d(in, out) eps bug (spec 8.6)"),
    (("--resume",), "resume", "flag", "continue the run in the existing folder from its last checkpoint"),
    (("--force",), "force", "flag", "overwrite an existing run folder"),
    (("--steps_per_epoch",), "steps_per_epoch", int, "cap the steps per epoch (smoke tests)"),
    (("--device",), "device", str, "auto (CUDA if available), cpu, cuda, ..."),
    (("--progress",), "progress", str, "progress bar: auto, on, off"),
]


def _add_nasiam(commands) -> None:
    nasiam = commands.add_parser("nasiam", help="NASiam: search, pretrain and linear-evaluate SSL heads")
    sub = nasiam.add_subparsers(dest="nasiam_command", required=True)
    for command, text in (("search", "DARTS search of the projector/predictor heads"),
                          ("pretrain", "pretrain with a genotype's heads (kNN monitor every epoch)"),
                          ("lincls", "linear classifier on the frozen pretrained backbone")):
        parser = sub.add_parser(command, help=text)
        parser.add_argument("--framework", required=True, choices=("simsiam", "moco", "simclr"))
        parser.add_argument("data_root", nargs="?", default=None, help="dataset root (or --data)")
        _add_dry_run(parser)
        for flags, dest, kind, help_text in NASIAM_FLAGS:
            if kind == "flag":
                parser.add_argument(*flags, dest=dest, action="store_true", default=None, help=help_text)
            else:
                parser.add_argument(*flags, dest=dest, type=kind, default=None, help=help_text)


def nasiam_config_from_args(args: argparse.Namespace):
    """The :class:`~sswp_fast.nasiam.config.NasiamConfig` of parsed ``nasiam`` arguments (unset flags take the
    framework's and command's reference defaults)."""
    from sswp_fast.nasiam.config import nasiam_defaults

    values = {dest: getattr(args, dest) for _, dest, _, _ in NASIAM_FLAGS if getattr(args, dest) is not None}
    if args.data_root is not None:
        values.setdefault("data", args.data_root)
    return dataclasses.replace(nasiam_defaults(args.nasiam_command, args.framework), **values)


def stage_config_from_args(args: argparse.Namespace) -> DownstreamConfig:
    names = {f.name for f in dataclasses.fields(DownstreamConfig)}
    return dataclasses.replace(stage_defaults(args.command), **{k: v for k, v in vars(args).items() if k in names})


def _default_text(name: str) -> str:
    value = getattr(_DEFAULTS, name)
    if value is None:
        return "dataset-dependent" if name in ("min_warmup", "batch_size", "layers", "init_channels") else "none"
    return repr(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sswp-fast", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    search = commands.add_parser("search", help="run an SSWP-NAS search (reference-compatible flags)")
    for name, kind, text, _ in SEARCH_FLAGS:
        if kind == "flag":
            search.add_argument(f"--{name}", action="store_true", help=text)
        else:
            search.add_argument(f"--{name}", type=kind, default=getattr(_DEFAULTS, name),
                                help=f"{text} (default: {_default_text(name)})")
    _add_dry_run(search)
    search.add_argument("--amp", nargs="?", const="auto", default="off", choices=AMP_MODES,
                        help="mixed precision of the search steps (InfoNCE and BN statistics stay float32): "
                             "bare --amp is fp16 on CUDA and bf16 on CPU (default: off)")
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
    _add_dry_run(knn)
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
        triton_state = f"{triton.__version__}: fused sep/dil conv kernels, {active}"
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
