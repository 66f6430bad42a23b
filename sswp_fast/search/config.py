"""The search configuration: every flag of the reference search scripts (spec §7.1) plus ours, in one object.

Defaults equal the reference's. Four defaults depend on the dataset, as the reference's two drivers do
(``search_cifar.py`` / ``search_imagenet.py``): ``--min_warmup`` 40 / 10, ``--batch_size`` 96 / 256,
``--layers`` 20 / 14, ``--init_channels`` 36 / 48; they are ``None`` here until :meth:`SearchConfig.resolved`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sswp_fast.errors import ConfigError
from sswp_fast.runtime.precision import AMP_MODES
from sswp_fast.runtime.run_folder import RunOptions
from sswp_fast.search.recompute import RECOMPUTE_MODES
from sswp_fast.search.schedule import parse_epoch_ratios

DATASETS = ("cifar10", "cifar100", "imagenet", "imagenet-tiny", "digits")
IMAGENET_LIKE = ("imagenet", "imagenet-tiny")

_CIFAR_DEFAULTS = {"min_warmup": 40, "batch_size": 96, "layers": 20, "init_channels": 36}
_IMAGENET_DEFAULTS = {"min_warmup": 10, "batch_size": 256, "layers": 14, "init_channels": 48}

RESULT_NEUTRAL_FIELDS = frozenset({"resume", "force", "device", "num_workers", "report_freq", "progress", "kernels",
                                   "compile", "compile_cache", "cuda_graphs", "recompute", "max_memory"})
"""Fields that may differ when a run is resumed; every other field must match the checkpoint's."""


@dataclass
class SearchConfig(RunOptions):
    """All search options. Field names are the CLI flag names (``--epoch_ratios`` → ``epoch_ratios``)."""

    NEUTRAL = RESULT_NEUTRAL_FIELDS

    # reference flags (spec §7.1)
    note: str = "exp"
    exp_group: str = "exp"
    data_mode: str = "SimCLR"
    epochs: int = 300
    epoch_ratios: str = "0.2,0.4,0.4,0.0"
    min_warmup: int | None = None
    dataset: str = "cifar10"
    data_path: str | None = None
    train_ratio: float = 0.5
    batch_size: int | None = None
    num_workers: int = 8
    layers: int | None = None
    init_channels: int | None = None
    net_mode: str = "two"
    prune_direct: str = "forward"
    affine: bool = False
    weight_skip_drop_prob: float = 0.2
    weight_pool_drop_prob: float = 0.0
    arch_skip_drop_prob: float = 0.0
    arch_pool_drop_prob: float = 0.0
    skip_r_num: int = 2
    pool_r_num: int = 2
    compatible_mode: bool = False
    weight_optm: str = "sgd"
    lr: float = 0.025
    weight_decay: float = 4e-5
    momentum: float = 0.9
    arch_lr: float = 1e-3
    arch_weight_decay: float = 0.0
    arch_adam_beta1: float = 0.0
    arch_adam_beta2: float = 0.999
    grad_clip: float = 5.0
    update_arch_every: int = 5
    arch_update_steps: int = 1
    debug: bool = False
    seed: int = 2
    report_freq: int = 40
    valid_freq: int = 5
    local_rank: int = -1
    # ours
    temperature: float = 0.07
    byol_decay: float = 0.99
    reference_quirks: bool = False
    prune_edges: bool = False
    resume: bool = False
    force: bool = False
    steps_per_epoch: int | None = None
    device: str = "auto"
    memory_format: str = "auto"
    kernels: str = "auto"
    compile: str = "off"
    compile_cache: str | None = None
    cuda_graphs: str = "auto"
    recompute: str = "auto"
    amp: str = "off"
    max_memory: float | None = None
    progress: str = "auto"

    def resolved(self) -> SearchConfig:
        """A copy with dataset-dependent defaults filled in and every value validated."""
        defaults = _IMAGENET_DEFAULTS if self.dataset in IMAGENET_LIKE else _CIFAR_DEFAULTS
        values = {k: (defaults[k] if getattr(self, k) is None else getattr(self, k)) for k in defaults}
        cfg = dataclasses.replace(self, **values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise :class:`ConfigError` with a one-line fix for any invalid value."""
        def need(cond: bool, message: str) -> None:
            if not cond:
                raise ConfigError(message)

        need(self.dataset in DATASETS, f"unknown dataset {self.dataset!r}; use one of {', '.join(DATASETS)}")
        need(self.data_mode in ("SimCLR", "supervised", "byol"),
             f"unknown --data_mode {self.data_mode!r}; use SimCLR, supervised or byol")
        need(self.net_mode in ("two", "full_v2"), f"unknown --net_mode {self.net_mode!r}; use two or full_v2")
        need(self.prune_direct in ("forward", "backward"),
             f"unknown --prune_direct {self.prune_direct!r}; use forward or backward")
        need(self.weight_optm in ("sgd", "adam"), f"unknown --weight_optm {self.weight_optm!r}; use sgd or adam")
        need(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        parse_epoch_ratios(self.epoch_ratios)
        need(self.min_warmup is not None and self.min_warmup >= 0,
             f"--min_warmup must be non-negative, got {self.min_warmup}")
        need(self.batch_size is not None and self.batch_size >= 1,
             f"--batch_size must be at least 1, got {self.batch_size}")
        if self.data_mode in ("SimCLR", "byol"):
            need(self.batch_size >= 2, f"--data_mode {self.data_mode} needs --batch_size of at least 2 "
                 f"(contrastive and BYOL losses compare samples), got {self.batch_size}")
        need(self.layers is not None and self.layers >= 3, f"--layers must be at least 3, got {self.layers}")
        need(self.init_channels is not None and self.init_channels >= 2 and self.init_channels % 2 == 0,
             f"--init_channels must be an even number of at least 2, got {self.init_channels}")
        need(0 < self.train_ratio < 1, f"--train_ratio must be strictly between 0 and 1 (the rest feeds "
             f"the arch steps), got {self.train_ratio}")
        for name in ("weight_skip_drop_prob", "weight_pool_drop_prob", "arch_skip_drop_prob",
                     "arch_pool_drop_prob"):
            value = getattr(self, name)
            need(0 <= value <= 1, f"--{name} must be a probability in [0, 1], got {value}")
        need(self.skip_r_num >= 0 and self.pool_r_num >= 0, "--skip_r_num and --pool_r_num must be >= 0")
        need(self.update_arch_every >= 1, f"--update_arch_every must be at least 1, got {self.update_arch_every}")
        need(self.arch_update_steps >= 0, f"--arch_update_steps must be >= 0, got {self.arch_update_steps}")
        need(self.report_freq >= 1, f"--report_freq must be at least 1, got {self.report_freq}")
        need(self.valid_freq >= 1, f"--valid_freq must be at least 1, got {self.valid_freq}")
        need(self.temperature > 0, f"--temperature must be positive, got {self.temperature}")
        need(0 <= self.byol_decay < 1, f"--byol_decay must be in [0, 1), got {self.byol_decay}")
        need(self.lr > 0 and self.arch_lr >= 0, "--lr must be positive and --arch_lr non-negative")
        need(0 <= self.arch_adam_beta1 < 1 and 0 <= self.arch_adam_beta2 < 1,
             "--arch_adam_beta1/--arch_adam_beta2 must be in [0, 1)")
        need(self.grad_clip > 0, f"--grad_clip must be positive, got {self.grad_clip}")
        need(self.steps_per_epoch is None or self.steps_per_epoch >= 1,
             f"--steps_per_epoch must be at least 1, got {self.steps_per_epoch}")
        need(not (self.prune_edges and self.reference_quirks),
             "--prune_edges changes what frozen cells compute, which --reference_quirks reproduces; pick one")
        need(not (self.resume and self.force), "--resume and --force exclude each other; pick one")
        need(self.progress in ("auto", "on", "off"), f"--progress must be auto, on or off, got {self.progress}")
        need(self.memory_format in ("auto", "channels_last", "contiguous"),
             f"--memory_format must be auto, channels_last or contiguous, got {self.memory_format}")
        need(self.kernels in ("auto", "triton", "torch"),
             f"--kernels must be auto, triton or torch, got {self.kernels}")
        need(self.cuda_graphs in ("auto", "on", "off"),
             f"--cuda_graphs must be auto, on or off, got {self.cuda_graphs}")
        need(self.compile in ("off", "default", "max-autotune"),
             f"--compile must be off, default or max-autotune, got {self.compile}")
        need(self.recompute in RECOMPUTE_MODES,
             f"--recompute must be one of {', '.join(RECOMPUTE_MODES)}, got {self.recompute}")
        need(self.amp in AMP_MODES, f"--amp must be one of {', '.join(AMP_MODES)}, got {self.amp}")
        need(not (self.amp != "off" and self.reference_quirks),
             "--reference_quirks reproduces the reference's float32 results; drop --amp")
        need(self.max_memory is None or self.max_memory > 0,
             f"--max_memory is in GB and must be positive, got {self.max_memory}")
        need(self.max_memory is None or self.compile == "off",
             "--max_memory picks a recompute mode, which --compile leaves to the compiler; drop one")
        need(self.max_memory is None or self.recompute == "auto",
             f"--max_memory picks the recompute mode itself; drop --recompute {self.recompute}")

