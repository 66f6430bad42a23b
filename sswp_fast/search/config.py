"""The search configuration: every flag of the reference search scripts (spec §7.1) plus ours, in one object.

Defaults equal the reference's. Four defaults depend on the dataset, as the reference's two drivers do
(``search_cifar.py`` / ``search_imagenet.py``): ``--min_warmup`` 40 / 10, ``--batch_size`` 96 / 256,
``--layers`` 20 / 14, ``--init_channels`` 36 / 48; they are ``None`` here until :meth:`SearchConfig.resolved`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from sswp_fast.errors import require
from sswp_fast.runtime.flags import PROGRESS_MODES, Combination, flag
from sswp_fast.runtime.precision import AMP_MODES
from sswp_fast.runtime.run_folder import RESUME_OR_FORCE, RunOptions
from sswp_fast.search.executors.choice import KERNEL_CHOICES
from sswp_fast.search.recompute import RECOMPUTE_MODES
from sswp_fast.search.schedule import parse_epoch_ratios

DATASETS = ("cifar10", "cifar100", "imagenet", "imagenet-tiny", "digits")
IMAGENET_LIKE = ("imagenet", "imagenet-tiny")

_CIFAR_DEFAULTS = {"min_warmup": 40, "batch_size": 96, "layers": 20, "init_channels": 36}
_IMAGENET_DEFAULTS = {"min_warmup": 10, "batch_size": 256, "layers": 14, "init_channels": 48}

RESULT_NEUTRAL_FIELDS = frozenset({"resume", "force", "device", "num_workers", "report_freq", "progress", "kernels",
                                   "compile", "compile_cache", "cuda_graphs", "recompute", "max_memory"})
"""Fields that may differ when a run is resumed; every other field must match the checkpoint's."""


COMBINATIONS: tuple[Combination, ...] = (
    Combination("`--kernels triton` on a CPU device",
                "error, unless `TRITON_INTERPRET=1` (the interpreter: for tests, far too slow for runs)"),
    Combination("`--compile default` / `max-autotune` with `--amp` or torchrun",
                "error: drop `--compile` or the feature"),
    Combination("`--cuda_graphs auto` (default) on a CPU device, on the PyTorch executor, under torchrun or with "
                "`--amp fp16`", "eager steps; the reason is logged"),
    Combination("`--cuda_graphs on` where `auto` would run eager steps", "error: use `--cuda_graphs auto`"),
    Combination("`--recompute auto` (default) with `--compile`", "the compiler decides what to recompute"),
    Combination("`--recompute none` / `edge` / `cell` with `--compile`", "error: drop one",
                lambda c: c.compile != "off" and c.recompute != "auto",
                "--recompute {recompute} does not combine with --compile (the compiler decides what to recompute); "
                "drop one"),
    Combination("`--recompute auto` with `--max_memory GB`",
                "the mode is measured against that budget on the device at start"),
    Combination("`--recompute none` / `edge` / `cell` with `--max_memory`",
                "error: `--max_memory` picks the mode itself",
                lambda c: c.max_memory is not None and c.recompute != "auto",
                "--max_memory picks the recompute mode itself; drop --recompute {recompute}"),
    Combination("`--max_memory` with `--compile`", "error: drop one",
                lambda c: c.max_memory is not None and c.compile != "off",
                "--max_memory picks a recompute mode, which --compile leaves to the compiler; drop one"),
    Combination("`--amp` with `--reference_quirks`", "error: the quirks reproduce float32 results",
                lambda c: c.amp != "off" and c.reference_quirks,
                "--reference_quirks reproduces the reference's float32 results; drop --amp"),
    Combination("`--prune_edges` with `--reference_quirks`", "error: pick one",
                lambda c: c.prune_edges and c.reference_quirks,
                "--prune_edges changes what frozen cells compute, which --reference_quirks reproduces; pick one"),
    RESUME_OR_FORCE,
    Combination("`$SSWP_FAST_KERNELS` with an explicit `--kernels`",
                "the flag wins; the variable only stands in for `--kernels auto`"),
)
"""The search's flags that do not combine, in README's order: the rows with a test are refused by
:meth:`SearchConfig.validate`; the others are decided where the device and the process count are known
(:func:`~sswp_fast.search.executors.choice.choose_executor`, :func:`~sswp_fast.search.executors.choice.choose_graphs`,
:func:`~sswp_fast.search.plan.plan_recompute`)."""


@dataclass
class SearchConfig(RunOptions):
    """All search options. Field names are the CLI flag names (``--epoch_ratios`` → ``epoch_ratios``)."""

    NEUTRAL = RESULT_NEUTRAL_FIELDS
    COMBINATIONS = COMBINATIONS

    # reference flags (spec §7.1)
    note: str = flag("exp", "run name: exps/{exp_group}/search-{note}")
    exp_group: str = flag("exp", "output group folder under exps/")
    data_mode: str = flag("SimCLR", "objective and head: SimCLR (InfoNCE), supervised (cross-entropy) or byol",
                          choices=("SimCLR", "supervised", "byol"))
    epochs: int = flag(300, "total epochs (also the cosine period of the weight LR)")
    epoch_ratios: str = flag("0.2,0.4,0.4,0.0", "warm-up, search, prune, stabilize fractions of --epochs")
    min_warmup: int | None = flag(None, "minimum warm-up epochs, taken from search (default 40; ImageNet 10)",
                                  default_text="dataset-dependent")
    dataset: str = flag("cifar10", f"one of {', '.join(DATASETS)}; digits is embedded in the package",
                        choices=DATASETS)
    data_path: str | None = flag(None, "dataset root (CIFAR python folders or an image folder with train/ and val/)")
    train_ratio: float = flag(0.5, "fraction of the training set for weight steps; the rest feeds arch steps")
    batch_size: int | None = flag(None, "images per batch; SimCLR and BYOL see 2x (default 96; ImageNet 256)",
                                  default_text="dataset-dependent")
    num_workers: int = flag(8, "decoding threads for image-folder datasets (resident datasets need none)")
    layers: int | None = flag(None, "number of cells (default 20; ImageNet 14)", default_text="dataset-dependent")
    init_channels: int | None = flag(None, "initial channels C (default 36; ImageNet 48)",
                                     default_text="dataset-dependent")
    net_mode: str = flag("two", "path binarization: two (active+inactive op) or full_v2 (one op, 7-way gradient)",
                         choices=("two", "full_v2"))
    prune_direct: str = flag("forward", "progressive freezing order: forward (input first) or backward",
                             choices=("forward", "backward"))
    affine: bool = flag(False, "affine BatchNorm in candidate ops and preprocessing")
    weight_skip_drop_prob: float = flag(0.2, "redraw probability of a sampled skip in weight steps (after warm-up)")
    weight_pool_drop_prob: float = flag(0.0, "redraw probability of a sampled pool in weight steps")
    arch_skip_drop_prob: float = flag(0.0, "redraw probability of a sampled skip in arch steps")
    arch_pool_drop_prob: float = flag(0.0, "redraw probability of a sampled pool in arch steps")
    skip_r_num: int = flag(2, "max skip connections per cell in the restricted export")
    pool_r_num: int = flag(2, "max pools per cell in the restricted export")
    compatible_mode: bool = flag(False, "zero the weight-step drop probabilities from epoch warmup+search-1")
    weight_optm: str = flag("sgd", "weight optimizer: sgd or adam", choices=("sgd", "adam"))
    lr: float = flag(0.025, "weight learning rate (cosine over --epochs)")
    weight_decay: float = flag(4e-5, "weight decay of the weight optimizer")
    momentum: float = flag(0.9, "SGD momentum")
    arch_lr: float = flag(1e-3, "Adam learning rate of the architecture logits")
    arch_weight_decay: float = flag(0.0, "Adam L2 on the architecture logits")
    arch_adam_beta1: float = flag(0.0, "Adam beta1 for the architecture logits")
    arch_adam_beta2: float = flag(0.999, "Adam beta2 for the architecture logits")
    grad_clip: float = flag(5.0, "gradient-norm clip of weight steps")
    update_arch_every: int = flag(5, "an arch update after every k-th weight step")
    arch_update_steps: int = flag(1, "arch steps per update")
    debug: bool = flag(False, "use 200-sample subsets")
    seed: int = flag(2, "random seed")
    report_freq: int = flag(40, "log a train line every k steps (and on the last)")
    valid_freq: int = flag(5, "validation stride after pruning")
    local_rank: int = flag(-1, "accepted for compatibility; multi-process runs take their rank from torchrun")
    # ours
    temperature: float = flag(0.07, "InfoNCE temperature (the reference hard-codes 0.07)", ours=True)
    byol_decay: float = flag(0.99, "EMA decay of the BYOL target network, updated after every weight step", ours=True)
    reference_quirks: bool = flag(False, "reproduce the reference bugs that change results (see README)", ours=True)
    prune_edges: bool = flag(
        False, "a frozen cell runs its exported genotype (2 edges per node: the compact cell) instead of all 14 edges "
        "with their argmax ops", ours=True,
        doc="a frozen cell runs its exported genotype (2 edges per node: the compact cell, exactly what `finetune` "
        "builds) instead of all 14 edges with their argmax ops (§5.7); so after pruning the weights train in the "
        "network they are exported for (on the device executor a dropped edge indexes op -1 and adds nothing)")
    resume: bool = flag(False, "continue the run in the existing folder from its last checkpoint", ours=True)
    force: bool = flag(False, "overwrite an existing run folder", ours=True)
    steps_per_epoch: int | None = flag(None, "cap the weight steps per epoch (smoke tests)", ours=True)
    device: str = flag("auto", "auto (CUDA if available), cpu, cuda, cuda:1, ...", ours=True,
                       doc="auto (CUDA if available), cpu, cuda, cuda:1, ...; with `--dry_run` a device need not be "
                       "present")
    memory_format: str = flag("auto", "tensor layout: auto (channels_last on CPU, contiguous on CUDA), channels_last, "
                              "contiguous", ours=True, choices=("auto", "channels_last", "contiguous"))
    kernels: str = flag(
        "auto", "auto (Triton on CUDA, PyTorch on CPU), triton, torch; $SSWP_FAST_KERNELS overrides", ours=True,
        choices=KERNEL_CHOICES,
        doc="the executor: auto (the device executor with Triton kernels on CUDA, else the PyTorch executor; see [the "
        "executor table](../README.md#which-executor-a-command-runs-on-cpu-and-on-cuda)), triton, torch. "
        "`$SSWP_FAST_KERNELS` stands in for `auto` only; an explicit flag wins. Triton on CPU needs "
        "`TRITON_INTERPRET=1`")
    compile: str = flag(
        "off", "torch.compile the steps: off, default or max-autotune (runs the device-side dispatch executor; one "
        "graph per step kind and frozen prefix)", ours=True, choices=("off", "default", "max-autotune"),
        doc="`torch.compile` the steps: off, default, max-autotune. Compiled steps run on the device-side dispatch "
        "executor (PyTorch ops where Triton does not run), one graph for the weight step and one per frozen prefix "
        "for the arch step, whatever the sampled paths (`sswp_fast/search/executors/compiled.py`); single process, "
        "no `--amp`")
    compile_cache: str | None = flag(
        None, "folder for compiled code (default $TORCHINDUCTOR_CACHE_DIR or ~/.cache/sswp-fast/inductor)", ours=True,
        doc="folder for compiled code, reused by later runs of the same configuration (default "
        "`$TORCHINDUCTOR_CACHE_DIR`, else `~/.cache/sswp-fast/inductor`)")
    cuda_graphs: str = flag(
        "auto", "capture each search step as a CUDA graph and replay it: auto (on CUDA with the device executor, one "
        "process, no --amp fp16), on, off", ours=True, choices=("auto", "on", "off"),
        doc="capture each search step as a CUDA graph and replay it: auto (on a CUDA device with the device executor, "
        "one process, no `--amp fp16`; eager steps elsewhere, with the reason logged), on (an error where it "
        "cannot), off. See [CUDA graphs](../README.md#cuda-graphs-of-the-search-steps)")
    recompute: str = flag(
        "auto", "activation recompute, memory for time, same gradients: none, edge (keep node states), cell (keep "
        "cell inputs), auto (none on the PyTorch executor, edge on the Triton one)", ours=True,
        choices=RECOMPUTE_MODES,
        doc="activation recompute, memory for time, with the gradients of `none` exactly: `none` keeps every "
        "activation; `edge` keeps the node states and recomputes each edge's op in the backward pass; `cell` keeps "
        "the cell inputs and recomputes whole cells; `auto` takes the fastest mode predicted to fit the device's free "
        "memory with a 25% margin (`sswp_fast/search/recompute.py`, `sswp_fast/search/memory_model.py`)")
    amp: str = flag(
        "off", "mixed precision of the search steps (InfoNCE and BN statistics stay float32): bare --amp is fp16 on "
        "CUDA and bf16 on CPU", ours=True, choices=AMP_MODES, listed=True, bare="auto",
        doc="mixed precision of the search steps: `bf16`, `fp16` (with loss scaling), or bare `--amp` (fp16 on CUDA, "
        "bf16 on CPU); InfoNCE, BatchNorm statistics, weights and alphas stay float32; on the device executor too: "
        "bf16 or fp16 activations, fp32 accumulation, BatchNorm statistics and master weights in its banks; under "
        "fp16 the loss scaler checks the banks' gradients with the others', so an overflow anywhere skips the whole "
        "step")
    max_memory: float | None = flag(
        None, "GB a step may use: measure the recompute modes on small batches, take the fastest that fits and say "
        "which", ours=True,
        doc="GB a search step may use: measures each recompute mode on two small batches (on CPU giving the C heap's "
        "free pages back to the system before each, glibc `malloc_trim`), takes the fastest predicted to fit with a "
        "25% margin, says which in the log, and logs each epoch's measured peak (`sswp_fast/search/memory_budget.py`)")
    progress: str = flag("auto", "progress bar: auto (on terminals), on, off", ours=True, choices=PROGRESS_MODES)

    def resolved(self) -> SearchConfig:
        """A copy with dataset-dependent defaults filled in and every value validated."""
        defaults = _IMAGENET_DEFAULTS if self.dataset in IMAGENET_LIKE else _CIFAR_DEFAULTS
        values = {k: (defaults[k] if getattr(self, k) is None else getattr(self, k)) for k in defaults}
        cfg = dataclasses.replace(self, **values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise :class:`ConfigError` with a one-line fix for any invalid value or refused combination
        (:data:`COMBINATIONS`)."""
        self.check_flags()
        require(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        parse_epoch_ratios(self.epoch_ratios)
        require(self.min_warmup is not None and self.min_warmup >= 0,
             f"--min_warmup must be non-negative, got {self.min_warmup}")
        require(self.batch_size is not None and self.batch_size >= 1,
             f"--batch_size must be at least 1, got {self.batch_size}")
        if self.data_mode in ("SimCLR", "byol"):
            require(self.batch_size >= 2, f"--data_mode {self.data_mode} needs --batch_size of at least 2 "
                 f"(contrastive and BYOL losses compare samples), got {self.batch_size}")
        require(self.layers is not None and self.layers >= 3, f"--layers must be at least 3, got {self.layers}")
        require(self.init_channels is not None and self.init_channels >= 2 and self.init_channels % 2 == 0,
             f"--init_channels must be an even number of at least 2, got {self.init_channels}")
        require(0 < self.train_ratio < 1, f"--train_ratio must be strictly between 0 and 1 (the rest feeds "
             f"the arch steps), got {self.train_ratio}")
        for name in ("weight_skip_drop_prob", "weight_pool_drop_prob", "arch_skip_drop_prob",
                     "arch_pool_drop_prob"):
            value = getattr(self, name)
            require(0 <= value <= 1, f"--{name} must be a probability in [0, 1], got {value}")
        require(self.skip_r_num >= 0 and self.pool_r_num >= 0, "--skip_r_num and --pool_r_num must be >= 0")
        require(self.update_arch_every >= 1, f"--update_arch_every must be at least 1, got {self.update_arch_every}")
        require(self.arch_update_steps >= 0, f"--arch_update_steps must be >= 0, got {self.arch_update_steps}")
        require(self.report_freq >= 1, f"--report_freq must be at least 1, got {self.report_freq}")
        require(self.valid_freq >= 1, f"--valid_freq must be at least 1, got {self.valid_freq}")
        require(self.temperature > 0, f"--temperature must be positive, got {self.temperature}")
        require(0 <= self.byol_decay < 1, f"--byol_decay must be in [0, 1), got {self.byol_decay}")
        require(self.lr > 0 and self.arch_lr >= 0, "--lr must be positive and --arch_lr non-negative")
        require(0 <= self.arch_adam_beta1 < 1 and 0 <= self.arch_adam_beta2 < 1,
             "--arch_adam_beta1/--arch_adam_beta2 must be in [0, 1)")
        require(self.grad_clip > 0, f"--grad_clip must be positive, got {self.grad_clip}")
        require(self.steps_per_epoch is None or self.steps_per_epoch >= 1,
             f"--steps_per_epoch must be at least 1, got {self.steps_per_epoch}")
        require(self.max_memory is None or self.max_memory > 0,
             f"--max_memory is in GB and must be positive, got {self.max_memory}")
