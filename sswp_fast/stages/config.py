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

from sswp_fast.errors import ConfigError, require
from sswp_fast.runtime.flags import PROGRESS_MODES, flag
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
    note: str = flag("exp", "run name: exps/{exp_group}/{stage}-{note}_{arch_name}")
    exp_group: str = flag("exp", "output group folder under exps/")
    path: str | None = flag(None, "search (or pretrain) folder holding net.config and {arch_name}.pth.tar")
    arch_name: str = flag("highest_acc", "comma list of net.config names (or darts / pdarts without --path)")
    warmup_epochs: int = flag(5, "linear LR warm-up epochs")
    train_epochs: int = flag(595, "cosine epochs after the warm-up")
    epochs: int = flag(100, "pretraining epochs (cosine LR, no warm-up)")
    data_mode: str = flag("supervised", "supervised (train stages) or SimCLR (pretrain); accepted for compatibility")
    dataset: str = flag("cifar10", f"one of {', '.join(DATASETS)}", choices=DATASETS)
    data_path: str | None = flag(None, "dataset root")
    train_ratio: float = flag(1.0, "labelled fraction: the class-balanced subset of the seed-0 split (spec 2.3)")
    batch_size: int = flag(128, "global batch size")
    num_workers: int = flag(16, "decoding threads for image-folder datasets")
    cutout: bool = flag(True, "cutout augmentation (--no-cutout turns it off)", negatable=True)
    cutout_length: int = flag(16, "cutout square size")
    label_smooth: float = flag(0.0, "label smoothing of the training loss")
    init_channels: int = flag(36, "initial channels C (must equal the search's when starting from its weights)")
    drop_path_prob: float = flag(0.3, "drop-path probability reached at the last epoch (linearly from 0)")
    auxiliary: bool = flag(True, "auxiliary head (--no-auxiliary turns it off)", negatable=True)
    auxiliary_weight: float = flag(0.4, "weight of the auxiliary loss")
    affine: bool = flag(True, "affine BatchNorm in the ops (--no-affine turns it off)", negatable=True)
    fix: bool = flag(False, "finetune: train only the heads during the warm-up epochs")
    preserve_weight: bool = flag(False, "start from the search weights (projection head included)")
    optm: str = flag("sgd", "optimizer: sgd or adam", choices=("sgd", "adam"))
    lr: float = flag(0.025, "peak learning rate")
    lr_min: float = flag(0.0, "cosine floor of the learning rate")
    weight_decay: float = flag(3e-4, "weight decay")
    momentum: float = flag(0.9, "SGD momentum")
    grad_clip: float = flag(5.0, "gradient-norm clip")
    debug: bool = flag(False, "use 200-image subsets")
    seed: int = flag(2, "random seed")
    report_freq: int = flag(40, "log a train line every k steps (and on the last)")
    valid_freq: int = flag(5, "validate every k epochs (and every epoch from 500 on, and the last)")
    local_rank: int = flag(-1, "accepted for compatibility; torchrun sets the rank")
    ddp: bool = flag(False, "accepted for compatibility; start several processes with torchrun")
    sync_bn: bool = flag(False, "BatchNorm over the global batch in multi-process runs")
    amp: str = flag("off", "mixed precision: bare --amp is fp16 on CUDA and bf16 on CPU", choices=AMP_MODES,
                    listed=True, bare="auto")
    # ours
    temperature: float = flag(0.07, "InfoNCE temperature")
    resume: bool = flag(False, "continue the run in the existing folder from its last checkpoint")
    force: bool = flag(False, "overwrite an existing run folder")
    steps_per_epoch: int | None = flag(None, "cap the steps per epoch (smoke tests)")
    device: str = flag("auto", "auto (CUDA if available), cpu, cuda, cuda:1, ...")
    progress: str = flag("auto", "progress bar: auto (on terminals), on, off", choices=PROGRESS_MODES)

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
        """Raise :class:`ConfigError` with a one-line fix for any invalid value or refused combination."""
        require(self.stage in STAGES, f"unknown stage {self.stage!r}; use one of {', '.join(STAGES)}")
        self.check_flags()
        mode = "SimCLR" if self.stage == "pretrain" else "supervised"
        require(self.data_mode == mode, f"{self.stage} trains with --data_mode {mode}, got {self.data_mode!r}; "
             f"drop the flag")
        require(self.warmup_epochs >= 0 and self.train_epochs >= 1 and self.epochs >= 1,
             "--warmup_epochs must be >= 0 and --train_epochs / --epochs at least 1")
        require(0 < self.train_ratio <= 1, f"--train_ratio must be in (0, 1], got {self.train_ratio}")
        require(self.batch_size >= (2 if self.stage == "pretrain" else 1),
             f"--batch_size must be at least {2 if self.stage == 'pretrain' else 1}, got {self.batch_size}")
        require(self.init_channels >= 2 and self.init_channels % 2 == 0,
             f"--init_channels must be an even number of at least 2, got {self.init_channels}")
        require(0 <= self.drop_path_prob < 1, f"--drop_path_prob must be in [0, 1), got {self.drop_path_prob}")
        require(0 <= self.label_smooth < 1, f"--label_smooth must be in [0, 1), got {self.label_smooth}")
        require(self.cutout_length >= 0, f"--cutout_length must be >= 0, got {self.cutout_length}")
        require(self.lr > 0 and self.lr_min >= 0, "--lr must be positive and --lr_min non-negative")
        require(self.grad_clip > 0, f"--grad_clip must be positive, got {self.grad_clip}")
        require(self.report_freq >= 1 and self.valid_freq >= 1, "--report_freq and --valid_freq must be at least 1")
        require(self.temperature > 0, f"--temperature must be positive, got {self.temperature}")
        require(self.steps_per_epoch is None or self.steps_per_epoch >= 1,
             f"--steps_per_epoch must be at least 1, got {self.steps_per_epoch}")
        if self.stage in ("finetune", "linear-eval") or (self.stage == "pretrain" and self.preserve_weight):
            require(self.path is not None, f"{self.stage} starts from search weights: pass --path, the search folder "
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
