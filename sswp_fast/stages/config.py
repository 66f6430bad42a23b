"""Options of the compact-network stages (spec §11): ``train`` (from scratch, ``train_cifar.py``), ``finetune``
(from the concomitant search weights, ``finetune.py``), ``linear-eval`` (``linear_eval.py``) and ``pretrain``
(the two-stage SimCLR baseline, ``simclr_weight_pretrain.py``).

One dataclass holds the flags of all four; :func:`stage_defaults` gives each stage the reference script's
defaults. The reference's ``store_true`` flags that default to True (``--cutout``, ``--auxiliary``,
``--affine``: quirk 16.17) keep their name and default here and gain a ``--no-`` form that turns them off.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sswp_fast.errors import ConfigError
from sswp_fast.runtime.precision import AMP_MODES
from sswp_fast.runtime.run_folder import RunOptions
from sswp_fast.search.config import DATASETS

STAGES = ("train", "finetune", "linear-eval", "pretrain")
STAGE_FOLDERS = {"train": "train", "finetune": "finetune", "linear-eval": "linear_eval", "pretrain": "pretrain"}
"""The stage name in the run folder ``exps/{exp_group}/{folder}-{note}_{arch_name}``."""


TRAIN_STAGES = ("train", "finetune", "linear-eval")
ONLY_IN: dict[str, tuple[str, ...]] = {
    "warmup_epochs": TRAIN_STAGES, "train_epochs": TRAIN_STAGES, "label_smooth": TRAIN_STAGES,
    "drop_path_prob": TRAIN_STAGES, "auxiliary_weight": TRAIN_STAGES, "fix": TRAIN_STAGES,
    "epochs": ("pretrain",), "preserve_weight": ("pretrain",), "temperature": ("pretrain",),
}
"""Options that only some stages have (a flag of their reference script); every other option is every stage's."""


def applies(field: str, stage: str) -> bool:
    """Whether ``stage`` has the option ``field`` (its flag, and a line in its logged configuration)."""
    return stage in ONLY_IN.get(field, STAGES)


RESULT_NEUTRAL_FIELDS = frozenset({"resume", "force", "device", "num_workers", "report_freq", "progress", "local_rank"})
"""Fields that may differ when a run is resumed; every other field must match the checkpoint's."""


@dataclass
class DownstreamConfig(RunOptions):
    """All options of one stage. Field names are the CLI flag names."""

    NEUTRAL = RESULT_NEUTRAL_FIELDS

    stage: str = "train"
    # reference flags (spec §11.4-§11.8)
    note: str = "exp"
    exp_group: str = "exp"
    path: str | None = None
    arch_name: str = "highest_acc"
    warmup_epochs: int = 5
    train_epochs: int = 595
    epochs: int = 100
    data_mode: str = "supervised"
    dataset: str = "cifar10"
    data_path: str | None = None
    train_ratio: float = 1.0
    batch_size: int = 128
    num_workers: int = 16
    cutout: bool = True
    cutout_length: int = 16
    label_smooth: float = 0.0
    init_channels: int = 36
    drop_path_prob: float = 0.3
    auxiliary: bool = True
    auxiliary_weight: float = 0.4
    affine: bool = True
    fix: bool = False
    preserve_weight: bool = False
    optm: str = "sgd"
    lr: float = 0.025
    lr_min: float = 0.0
    weight_decay: float = 3e-4
    momentum: float = 0.9
    grad_clip: float = 5.0
    debug: bool = False
    seed: int = 2
    report_freq: int = 40
    valid_freq: int = 5
    local_rank: int = -1
    ddp: bool = False
    sync_bn: bool = False
    amp: str = "off"
    # ours
    temperature: float = 0.07
    resume: bool = False
    force: bool = False
    steps_per_epoch: int | None = None
    device: str = "auto"
    progress: str = "auto"

    def logged(self) -> dict:
        """The options of this stage (:func:`applies`) as the log's ``Namespace`` line shows them."""
        return {k: v for k, v in self.to_dict().items() if k == "stage" or applies(k, self.stage)}

    @property
    def total_epochs(self) -> int:
        """Epochs of the run: ``--epochs`` for pretrain, warm-up + cosine epochs otherwise."""
        return self.epochs if self.stage == "pretrain" else self.warmup_epochs + self.train_epochs

    @property
    def folder_stage(self) -> str:
        return STAGE_FOLDERS[self.stage]

    def validate(self) -> None:
        """Raise :class:`ConfigError` with a one-line fix for any invalid value."""
        def need(cond: bool, message: str) -> None:
            if not cond:
                raise ConfigError(message)

        need(self.stage in STAGES, f"unknown stage {self.stage!r}; use one of {', '.join(STAGES)}")
        need(self.dataset in DATASETS, f"unknown dataset {self.dataset!r}; use one of {', '.join(DATASETS)}")
        mode = "SimCLR" if self.stage == "pretrain" else "supervised"
        need(self.data_mode == mode, f"{self.stage} trains with --data_mode {mode}, got {self.data_mode!r}; "
             f"drop the flag")
        need(self.optm in ("sgd", "adam"), f"unknown --optm {self.optm!r}; use sgd or adam")
        need(self.amp in AMP_MODES, f"--amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        need(self.warmup_epochs >= 0 and self.train_epochs >= 1 and self.epochs >= 1,
             "--warmup_epochs must be >= 0 and --train_epochs / --epochs at least 1")
        need(0 < self.train_ratio <= 1, f"--train_ratio must be in (0, 1], got {self.train_ratio}")
        need(self.batch_size >= (2 if self.stage == "pretrain" else 1),
             f"--batch_size must be at least {2 if self.stage == 'pretrain' else 1}, got {self.batch_size}")
        need(self.init_channels >= 2 and self.init_channels % 2 == 0,
             f"--init_channels must be an even number of at least 2, got {self.init_channels}")
        need(0 <= self.drop_path_prob < 1, f"--drop_path_prob must be in [0, 1), got {self.drop_path_prob}")
        need(0 <= self.label_smooth < 1, f"--label_smooth must be in [0, 1), got {self.label_smooth}")
        need(self.cutout_length >= 0, f"--cutout_length must be >= 0, got {self.cutout_length}")
        need(self.lr > 0 and self.lr_min >= 0, "--lr must be positive and --lr_min non-negative")
        need(self.grad_clip > 0, f"--grad_clip must be positive, got {self.grad_clip}")
        need(self.report_freq >= 1 and self.valid_freq >= 1, "--report_freq and --valid_freq must be at least 1")
        need(self.temperature > 0, f"--temperature must be positive, got {self.temperature}")
        need(self.steps_per_epoch is None or self.steps_per_epoch >= 1,
             f"--steps_per_epoch must be at least 1, got {self.steps_per_epoch}")
        need(not (self.resume and self.force), "--resume and --force exclude each other; pick one")
        need(self.progress in ("auto", "on", "off"), f"--progress must be auto, on or off, got {self.progress}")
        if self.stage in ("finetune", "linear-eval") or (self.stage == "pretrain" and self.preserve_weight):
            need(self.path is not None, f"{self.stage} starts from search weights: pass --path, the search folder "
                 "holding net.config and {arch_name}.pth.tar")



_STAGE_DEFAULTS: dict[str, dict[str, object]] = {
    "train": {},
    "finetune": {"warmup_epochs": 20, "train_epochs": 580, "num_workers": 12, "lr_min": 1e-5, "report_freq": 100},
    "linear-eval": {"train_epochs": 145, "num_workers": 12, "cutout": False, "auxiliary": False, "affine": False,
                    "drop_path_prob": 0.0, "lr_min": 1e-5, "report_freq": 100},
    "pretrain": {"data_mode": "SimCLR", "train_ratio": 0.5, "batch_size": 96, "num_workers": 8, "cutout": False,
                 "auxiliary": False, "affine": False, "drop_path_prob": 0.0},
}


def stage_defaults(stage: str) -> DownstreamConfig:
    """The configuration with the defaults of ``stage``'s reference script."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
    return dataclasses.replace(DownstreamConfig(stage=stage), **_STAGE_DEFAULTS[stage])
