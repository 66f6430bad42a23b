"""The plan of a search run: every input checked and every choice resolved before anything is written.

:func:`plan_search` validates the flags, the device, the process count, the dataset, the schedule, the run folder
and the resume checkpoint, and resolves the executor (:func:`sswp_fast.search.executors.choice.choose_executor`), the
precision, the layout and the recompute mode. It creates no file or folder and allocates nothing on the device, so it
runs for a device this machine does not have: ``sswp-fast search ... --dry_run`` prints it (as text, or one JSON
object with ``--dry_run json``), and a real run starts from it, which is why a refused run leaves nothing behind.

``--recompute auto`` takes the fastest mode whose predicted peak per step (:mod:`sswp_fast.search.memory_model`), times
its margin, fits the memory the device has free: GPU memory on CUDA, available RAM on CPU (``--max_memory GB``
sets that budget instead, and measures the modes on the device first: :mod:`sswp_fast.search.memory_budget`). For a
device that is not on this machine the plan gives the free memory each mode needs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from sswp_fast.data import load_dataset
from sswp_fast.data.datasets import FolderDataset, ImageDataset
from sswp_fast.data.loader import search_split
from sswp_fast.runtime import devices, distributed, run_folder
from sswp_fast.runtime.devices import GB, pick_memory_format
from sswp_fast.runtime.epoch_run import read_resume_checkpoint
from sswp_fast.runtime.plan import Plan, process_count
from sswp_fast.runtime.precision import amp_dtype, precision_text
from sswp_fast.search.config import SearchConfig
from sswp_fast.search.executors.choice import Executor, GraphChoice, choose_executor, choose_graphs
from sswp_fast.search.memory_model import HEADROOM, MODES_FASTEST_FIRST, fastest_fitting, modelled_peaks
from sswp_fast.search.schedule import Schedule, phase_lengths

RESUME_FORMAT = "sswp-fast-search-resume/1"
GPU_SIZES_GB = (16, 24, 40, 80, 141)
"""Device memory sizes a plan for an absent GPU shows the pick for (common cards: 16 GB to an H200)."""


GRAPH_POOLS = 2
"""Per-step peaks that CUDA-graph runs keep at once: the weight step's graph and the arch step's each hold their
memory pool (:mod:`sswp_fast.search.executors.cuda_graphs`)."""


@dataclass
class RecomputePlan:
    """The recompute mode of a run and why; ``mode`` is None when free memory decides it at start (a device that
    is not on this machine)."""

    mode: str | None
    reason: str
    predicted_gb: dict[str, float]
    budget_gb: float | None = None
    graphs: bool = False
    """``predicted_gb`` is the memory of both captured step graphs (:data:`GRAPH_POOLS` per-step peaks)."""

    def picks(self) -> dict[int, str]:
        """The mode ``auto`` takes on a device of each of :data:`GPU_SIZES_GB` with all its memory free."""
        return {size: fastest_fitting(self.predicted_gb, size) or "cell" for size in GPU_SIZES_GB}

    def describe(self) -> str:
        """The choice on one line, then the predictions (and, undecided, the pick on each GPU size)."""
        peaks = ", ".join(f"{m} {gb:.2f}" for m, gb in self.predicted_gb.items())
        text = (f"{self.mode or 'decided at start'} ({self.reason})\n"
                f"predicted peak {'of both step graphs' if self.graphs else 'per step'}, GB: {peaks} (meta-device "
                f"model, costliest path{f', x{GRAPH_POOLS} for the CUDA graphs' if self.graphs else ''})")
        if self.mode is None:
            needs = ", ".join(f"{m} from {gb * HEADROOM:.2f} GB" for m, gb in self.predicted_gb.items())
            by_size = ", ".join(f"{mode} on {size} GB" for size, mode in self.picks().items())
            text += f"\ntakes, of the memory free: {needs}; a whole GPU: {by_size}"
        return text


def plan_recompute(config: SearchConfig, device: torch.device, executor: Executor, predicted_gb: dict[str, float],
                   resident_gb: float, graphs: bool = False) -> RecomputePlan:
    """The recompute mode of a run (see the module docstring); ``resident_gb``: what the run keeps on the device
    besides the steps (a dataset held there); ``graphs``: ``predicted_gb`` is that of both step graphs."""
    if config.compile != "off":
        return RecomputePlan("edge" if executor.dispatch else "none", "--compile: the compiler's partitioner "
                             "decides what to recompute", predicted_gb, graphs=graphs)
    if config.recompute != "auto":
        return RecomputePlan(config.recompute, f"--recompute {config.recompute}", predicted_gb, graphs=graphs)
    if config.max_memory is not None:
        return RecomputePlan(None, f"--max_memory {config.max_memory:g}: measured on the device at start",
                             predicted_gb, config.max_memory, graphs)
    free = devices.free_memory(device)
    if free is None:
        return RecomputePlan(None, f"auto: by the free memory of {device} at start", predicted_gb, graphs=graphs)
    budget = free / GB - resident_gb
    mode = fastest_fitting(predicted_gb, budget)
    where = "GPU memory free" if device.type == "cuda" else "RAM available"
    if mode is None:
        return RecomputePlan("cell", f"auto: {budget:.1f} GB {where}, less than any mode needs with a "
                             f"{HEADROOM - 1:.0%} margin; lower --batch_size if it runs out", predicted_gb, budget,
                             graphs)
    return RecomputePlan(mode, f"auto: the fastest mode predicted to fit {budget:.1f} GB {where} with a "
                         f"{HEADROOM - 1:.0%} margin", predicted_gb, budget, graphs)


@dataclass
class SearchPlan:
    """Everything a search needs decided before it starts (see :func:`plan_search`)."""

    config: SearchConfig
    device: torch.device
    world: distributed.World
    run_dir: Path
    dataset: ImageDataset | FolderDataset
    schedule: Schedule
    executor: Executor
    graphs: GraphChoice
    recompute: RecomputePlan
    resume_state: dict | None

    @property
    def engine_config(self) -> SearchConfig:
        """The configuration the engine runs: the recompute mode resolved (``auto`` when --max_memory or the
        compiler still decides it)."""
        mode = self.recompute.mode if self.config.compile == "off" and self.config.max_memory is None else "auto"
        return dataclasses.replace(self.config, recompute=mode)

    def plan(self) -> Plan:
        c, data, lengths = self.config, self.dataset, self.schedule.lengths
        train, valid, test = search_split(data, c.train_ratio, c.debug)
        steps = -(-train.numel() // c.batch_size)
        if c.steps_per_epoch is not None:
            steps = min(steps, c.steps_per_epoch)
        folder = ("resumed at epoch " + str(self.resume_state["epoch"]) if self.resume_state is not None
                  else "replaced (--force)" if c.force and self.run_dir.exists() else "new")
        items = {
            "device": str(self.device),
            "processes": self.world.size,
            "batch": {"global": c.batch_size, "per_process": c.batch_size // self.world.size},
            "run_folder": {"path": str(self.run_dir), "state": folder},
            "data": {"dataset": c.dataset, "path": c.data_path, "weight_images": train.numel(),
                     "arch_images": valid.numel(), "test_images": test.numel(), "image_size": data.image_size,
                     "classes": data.num_classes},
            "network": {"layers": c.layers, "init_channels": c.init_channels, "data_mode": c.data_mode,
                        "net_mode": c.net_mode},
            "schedule": {"epochs": c.epochs, **dataclasses.asdict(lengths), "weight_steps_per_epoch": steps,
                         "arch_steps_per_epoch": steps // c.update_arch_every * c.arch_update_steps},
            "executor": {"name": self.executor.name, "kernels": self.executor.kernels, "reason": self.executor.reason},
            "precision": precision_text(amp_dtype(c.amp, self.device)),
            "compile": c.compile,
            "cuda_graphs": {"enabled": self.graphs.enabled, "reason": self.graphs.reason},
            "layout": "channels_last" if pick_memory_format(c.memory_format, self.device) == torch.channels_last
            else "contiguous",
            "recompute": {"mode": self.recompute.mode, "reason": self.recompute.reason,
                          "predicted_peak_gb": self.recompute.predicted_gb, "budget_gb": self.recompute.budget_gb,
                          **({"picks_by_gpu_gb": self.recompute.picks()} if self.recompute.mode is None else {})},
        }
        notes = {
            "device": devices.describe(self.device),
            "processes": process_count(self.world),
            "batch": f"{c.batch_size} images ({c.batch_size // self.world.size} per process)"
                     + ("" if c.data_mode == "supervised" else ", two views each"),
            "run_folder": f"{self.run_dir} ({folder})",
            "data": f"{c.dataset}{'' if c.data_path is None else ' from ' + c.data_path}: {train.numel()} weight-step "
                    f"+ {valid.numel()} arch-step training images, {test.numel()} test images, "
                    f"{data.image_size}x{data.image_size}, {data.num_classes} classes",
            "network": f"{c.layers} cells, C={c.init_channels}, {c.data_mode}, net_mode {c.net_mode}",
            "schedule": f"{c.epochs} epochs (warm-up {lengths.warmup}, search {lengths.search}, prune {lengths.prune}, "
                        f"stabilize {lengths.stabilize}); {steps} weight steps per epoch, an arch update every "
                        f"{c.update_arch_every}",
            "executor": self.executor.describe(),
            "cuda_graphs": self.graphs.describe(),
            "recompute": self.recompute.describe(),
        }
        return Plan("sswp-fast search", items, notes)


def plan_search(config: SearchConfig, root: Path | str = ".", world: distributed.World | None = None,
                run: bool = True) -> SearchPlan:
    """Check every input of a search and resolve its choices (see the module docstring); a one-line
    :class:`~sswp_fast.errors.SSWPError` for the first problem. ``run=False`` (``--dry_run``) plans for a
    device this machine may not have."""
    config = config.resolved()
    world = world if world is not None else distributed.world_from_env()
    device = devices.pick_device(config.device, world.local_rank if world.distributed else None)
    if run:
        devices.require_present(device)
    distributed.check_batch_size(config.batch_size, world)
    executor = choose_executor(config, device, world.size)
    graphs = choose_graphs(config, device, executor, world.size)
    dataset = load_dataset(config.dataset, config.data_path)
    search_split(dataset, config.train_ratio, config.debug)
    schedule = Schedule(config.epochs, phase_lengths(config.epochs, config.epoch_ratios, config.min_warmup),
                        config.layers, config.prune_direct, config.valid_freq, config.reference_quirks,
                        config.compatible_mode)
    run_dir = run_folder.run_dir_for(root, config.exp_group, "search", config.note)
    run_folder.prepare_run_dir(run_dir, config.resume, config.force, create=False)
    resume_state = (read_resume_checkpoint(run_dir / run_folder.RESUME_FILE, RESUME_FORMAT, "resume", config)
                    if config.resume else None)
    predicted = modelled_peaks(config, dataset.num_classes, dataset.image_size, config.batch_size // world.size,
                               executor)
    resident = dataset.resident_bytes() / GB if isinstance(dataset, ImageDataset) and device.type == "cuda" else 0.0
    peaks = {m: predicted[m].peak / GB for m in MODES_FASTEST_FIRST}
    if graphs.enabled:  # a weight-step and an arch-step graph keep their memory pools at the same time
        peaks = {m: GRAPH_POOLS * gb for m, gb in peaks.items()}
    recompute = plan_recompute(config, device, executor, peaks, resident, graphs.enabled)
    return SearchPlan(config, device, world, run_dir, dataset, schedule, executor, graphs, recompute,
                      resume_state)
