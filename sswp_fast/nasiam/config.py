"""Options of ``sswp-fast nasiam {search,pretrain,lincls}``: one dataclass for the flags of the reference's
``main_search.py`` / ``main_simsiam.py`` / ``main_moco.py`` / ``main.py`` / ``main_lincls.py`` (spec §3, §6,
§7b), with each framework's and each command's defaults from :func:`nasiam_defaults`. Field names are the
reference flags with ``-`` written ``_`` (``--moco-k`` is ``moco_k``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sswp_fast.errors import ConfigError
from sswp_fast.nasiam.backbones import ARCHS
from sswp_fast.nasiam.models import FRAMEWORKS
from sswp_fast.runtime.run_folder import RunOptions
from sswp_fast.search.config import DATASETS

COMMANDS = ("search", "pretrain", "lincls")
RESULT_NEUTRAL_FIELDS = frozenset({"resume", "force", "device", "workers", "print_freq", "progress"})


@dataclass
class NasiamConfig(RunOptions):
    """All options of one NASiam command."""

    NEUTRAL = RESULT_NEUTRAL_FIELDS

    command: str = "search"
    framework: str = "simsiam"
    data: str | None = None
    dataset: str = "cifar10"
    arch: str = "resnet50"
    genotype: str | None = None
    pretrained: str | None = None
    workers: int = 5
    epochs: int = 100
    batch_size: int = 512
    lr: float = 0.05
    search_lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    search_wd: float = 1e-3
    print_freq: int = 10
    train_portion: float = 0.5
    seed: int = 0
    dim: int = 2048
    pred_dim: int = 512
    fix_pred_lr: bool = False
    moco_dim: int = 128
    moco_k: int = 4096
    moco_m: float = 0.999
    moco_t: float = 0.1
    feature_dim: int = 128
    temperature: float = 0.5
    k: int = 200
    # ours
    note: str = "exp"
    exp_group: str = "exp"
    moco_bn_eps_bug: bool = False
    resume: bool = False
    force: bool = False
    steps_per_epoch: int | None = None
    device: str = "auto"
    progress: str = "auto"

    @property
    def cifar(self) -> bool:
        """CIFAR-style backbone stem: every dataset but full-size ImageNet."""
        return self.dataset != "imagenet"

    def validate(self) -> None:
        def need(cond: bool, message: str) -> None:
            if not cond:
                raise ConfigError(message)

        need(self.command in COMMANDS, f"unknown nasiam command {self.command!r}; use one of {', '.join(COMMANDS)}")
        need(self.framework in FRAMEWORKS,
             f"unknown --framework {self.framework!r}; use one of {', '.join(FRAMEWORKS)}")
        need(self.dataset in DATASETS, f"unknown --dataset {self.dataset!r}; use one of {', '.join(DATASETS)}")
        need(self.arch in ARCHS, f"unknown --arch {self.arch!r}; use one of {', '.join(ARCHS)}")
        need(self.epochs >= 1 and self.batch_size >= 2, "--epochs must be at least 1 and --batch-size at least 2")
        need(0 < self.train_portion < 1, f"--train_portion must be strictly between 0 and 1, got {self.train_portion}")
        need(self.lr > 0 and self.search_lr >= 0, "--lr must be positive and --search_lr non-negative")
        need(self.k >= 1 and self.temperature > 0 and self.moco_t > 0,
             "--k, --temperature and --moco-t must be positive")
        need(0 <= self.moco_m < 1, f"--moco-m must be in [0, 1), got {self.moco_m}")
        need(self.steps_per_epoch is None or self.steps_per_epoch >= 1, "--steps_per_epoch must be at least 1")
        need(not (self.resume and self.force), "--resume and --force exclude each other; pick one")
        need(self.progress in ("auto", "on", "off"), f"--progress must be auto, on or off, got {self.progress}")
        if self.command == "pretrain":
            need(self.genotype is not None, "pretrain builds the heads of a genotype: pass -g NAME (a published "
                 "genotype such as cifar10_resnet18) or -g PATH (a search's .txt file)")
        if self.command == "lincls":
            need(self.pretrained is not None, "lincls needs --pretrained CHECKPOINT (a pretrain run's "
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
