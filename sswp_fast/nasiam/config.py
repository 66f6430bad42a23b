"""Options of ``sswp-fast nasiam {search,pretrain,lincls}``: one dataclass for the flags of the reference's
``main_search.py`` / ``main_simsiam.py`` / ``main_moco.py`` / ``main.py`` / ``main_lincls.py`` (spec §3, §6,
§7b), with each framework's and each command's defaults from :func:`nasiam_defaults`. Field names are the
reference flags with ``-`` written ``_`` (``--moco-k`` is ``moco_k``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sswp_fast.errors import ConfigError, require
from sswp_fast.nasiam.backbones import ARCHS
from sswp_fast.nasiam.models import FRAMEWORKS
from sswp_fast.runtime.flags import PROGRESS_MODES, flag
from sswp_fast.runtime.run_folder import RunOptions
from sswp_fast.search.config import DATASETS

COMMANDS = ("search", "pretrain", "lincls")
RESULT_NEUTRAL_FIELDS = frozenset({"resume", "force", "device", "workers", "print_freq", "progress"})


@dataclass
class NasiamConfig(RunOptions):
    """All options of one NASiam command."""

    NEUTRAL = RESULT_NEUTRAL_FIELDS

    command: str = "search"
    framework: str = flag("simsiam", "", choices=FRAMEWORKS, listed=True, required=True)
    data: str | None = flag(None, "dataset root (the reference's positional data argument)")
    dataset: str = flag("cifar10", f"one of {', '.join(DATASETS)}", choices=DATASETS)
    arch: str = flag("resnet50", "backbone: resnet18 or resnet50", names=("-a", "--arch"), choices=ARCHS)
    genotype: str | None = flag(None, "pretrain: a genotype file, or a published name (e.g. cifar10_resnet18)",
                                names=("-g", "--genotype"))
    pretrained: str | None = flag(None, "lincls: the pretrain checkpoint")
    workers: int = flag(5, "decoding threads for image folders", names=("-j", "--workers"))
    epochs: int = flag(100, "epochs")
    batch_size: int = flag(512, "batch size", names=("-b", "--batch-size", "--batch_size"))
    lr: float = flag(0.05, "base learning rate (SimSiam: scaled by batch/256)", names=("--lr", "--learning-rate"))
    search_lr: float = flag(1e-3, "learning rate of the alphas")
    momentum: float = flag(0.9, "SGD momentum")
    weight_decay: float = flag(1e-4, "weight decay", names=("--wd", "--weight-decay"))
    search_wd: float = flag(1e-3, "weight decay of the alphas")
    print_freq: int = flag(10, "log stride in steps", names=("-p", "--print-freq"))
    train_portion: float = flag(0.5, "search: fraction (index order) for weight steps")
    seed: int = flag(0, "random seed")
    dim: int = flag(2048, "SimSiam projector output dim")
    pred_dim: int = flag(512, "SimSiam predictor hidden dim", names=("--pred-dim",))
    fix_pred_lr: bool = flag(False, "SimSiam: the predictor keeps the base learning rate", names=("--fix-pred-lr",))
    moco_dim: int = flag(128, "MoCo output dim", names=("--moco-dim",))
    moco_k: int = flag(4096, "MoCo queue size (a multiple of twice the batch)", names=("--moco-k",))
    moco_m: float = flag(0.999, "MoCo key-encoder EMA momentum", names=("--moco-m",))
    moco_t: float = flag(0.1, "MoCo temperature", names=("--moco-t",))
    feature_dim: int = flag(128, "SimCLR projector output dim")
    temperature: float = flag(0.5, "SimCLR NT-Xent temperature")
    k: int = flag(200, "neighbours of the kNN monitor")
    # ours
    note: str = flag("exp", "run name: exps/{exp_group}/nasiam-{framework}-{command}-{note}")
    exp_group: str = flag("exp", "output group folder under exps/")
    moco_bn_eps_bug: bool = flag(False, "reproduce MoCo's BatchNorm1d(in, out) eps bug (spec 8.6)")
    resume: bool = flag(False, "continue the run in the existing folder from its last checkpoint")
    force: bool = flag(False, "overwrite an existing run folder")
    steps_per_epoch: int | None = flag(None, "cap the steps per epoch (smoke tests)")
    device: str = flag("auto", "auto (CUDA if available), cpu, cuda, ...")
    progress: str = flag("auto", "progress bar: auto, on, off", choices=PROGRESS_MODES)

    @property
    def cifar(self) -> bool:
        """CIFAR-style backbone stem: every dataset but full-size ImageNet."""
        return self.dataset != "imagenet"

    def validate(self) -> None:
        """Raise :class:`ConfigError` with a one-line fix for any invalid value or refused combination."""
        require(self.command in COMMANDS, f"unknown nasiam command {self.command!r}; use one of {', '.join(COMMANDS)}")
        self.check_flags()
        require(self.epochs >= 1 and self.batch_size >= 2, "--epochs must be at least 1 and --batch-size at least 2")
        require(0 < self.train_portion < 1,
                f"--train_portion must be strictly between 0 and 1, got {self.train_portion}")
        require(self.lr > 0 and self.search_lr >= 0, "--lr must be positive and --search_lr non-negative")
        require(self.k >= 1 and self.temperature > 0 and self.moco_t > 0,
             "--k, --temperature and --moco-t must be positive")
        require(0 <= self.moco_m < 1, f"--moco-m must be in [0, 1), got {self.moco_m}")
        require(self.steps_per_epoch is None or self.steps_per_epoch >= 1, "--steps_per_epoch must be at least 1")
        if self.command == "pretrain":
            require(self.genotype is not None, "pretrain builds the heads of a genotype: pass -g NAME (a published "
                 "genotype such as cifar10_resnet18) or -g PATH (a search's .txt file)")
        if self.command == "lincls":
            require(self.pretrained is not None, "lincls needs --pretrained CHECKPOINT (a pretrain run's "
                 "pretrained_model_best.pth.tar)")



_FRAMEWORK_DEFAULTS: dict[str, dict[str, object]] = {
    "simsiam": {},
    "moco": {"workers": 32, "lr": 0.06, "search_lr": 3e-4, "weight_decay": 5e-4},
    "simclr": {"batch_size": 256, "lr": 1e-3, "weight_decay": 1e-6, "search_wd": 0.0},
}
_COMMAND_DEFAULTS: dict[tuple[str, str], dict[str, object]] = {
    ("pretrain", "simsiam"): {"workers": 16},
    ("pretrain", "moco"): {"epochs": 800, "moco_m": 0.99},
    ("pretrain", "simclr"): {"batch_size": 512, "workers": 16},
    ("lincls", "simsiam"): {"workers": 16, "epochs": 90, "lr": 0.1, "weight_decay": 0.0},
    ("lincls", "moco"): {"lr": 30.0, "batch_size": 256, "weight_decay": 0.0},
    ("lincls", "simclr"): {"lr": 1e-3, "weight_decay": 1e-6, "workers": 4},
}


def nasiam_defaults(command: str, framework: str) -> NasiamConfig:
    """The configuration with the defaults of ``framework``'s reference script for ``command``."""
    if command not in COMMANDS or framework not in FRAMEWORKS:
        raise ConfigError(f"unknown nasiam command/framework {command!r}/{framework!r}; use one of "
                          f"{', '.join(COMMANDS)} and one of {', '.join(FRAMEWORKS)}")
    values = {**_FRAMEWORK_DEFAULTS[framework], **_COMMAND_DEFAULTS.get((command, framework), {})}
    return dataclasses.replace(NasiamConfig(command=command, framework=framework), **values)
