"""A whole search run (spec §6-§7): the epoch loop, validation stamps, export, checkpoints, resume.

Reads like the reference driver: for every epoch, the schedule says which cells freeze, whether paths are
sampled as in warm-up and whether arch steps run; each weight step is followed, every
``update_arch_every`` steps, by ``arch_update_steps`` arch steps on the held-out half. The run writes the
reference's artifacts in ``exps/{exp_group}/search-{note}/`` (``log.txt``, ``net.config``,
``Epoch_N.pth.tar``, ``highest_acc.pth.tar``, ``lowest_loss.pth.tar``) plus ``metrics.jsonl``,
``alpha_history.npz`` and ``resume.pth.tar``, the full state written atomically after every epoch.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from sswp_fast.data import EvalTransform, SimCLRAugment, SupervisedAugment, build_search_loaders
from sswp_fast.errors import SSWPError
from sswp_fast.runtime import distributed, run_folder
from sswp_fast.runtime.checkpoint import atomic_save
from sswp_fast.runtime.devices import GB
from sswp_fast.runtime.epoch_run import EpochRun
from sswp_fast.runtime.lr_schedule import cosine_lr
from sswp_fast.runtime.reporting import (
    AlphaHistory,
    Silent,
    TensorBoard,
    format_seconds,
)
from sswp_fast.runtime.run_state import cycle
from sswp_fast.search.config import SearchConfig
from sswp_fast.search.engine import Batch, SearchEngine, StepResult
from sswp_fast.search.executors.compiled import DEFAULT_BACKEND, cache_dir, compiled_graphs
from sswp_fast.search.export import append_net_config, derive_architecture
from sswp_fast.search.memory_budget import PeakMeter, RecomputeChoice, choose_recompute
from sswp_fast.search.plan import RESUME_FORMAT, plan_search
from sswp_fast.search.sampling import mean_edge_entropy
from sswp_fast.search.schedule import EpochPlan, Schedule

RESUME_FILE = run_folder.RESUME_FILE
TRAIN_COLUMNS = {
    "SimCLR": "InfoNCE loss, InfoNCE top-1 and top-5 (% of views whose other view is among the 1 or 5 most similar)",
    "supervised": "cross-entropy loss, top-1 and top-5 accuracy (%)",
    "byol": "BYOL loss, then two unused columns (0)",
}
"""What the columns of a ``train`` log line mean, per objective (the reference prints them unlabelled)."""


def run_dir_for(config: SearchConfig, root: Path | str = ".") -> Path:
    """``{root}/exps/{exp_group}/search-{note}`` (the reference's place)."""
    return run_folder.run_dir_for(root, config.exp_group, "search", config.note)


class Meter:
    """Row-weighted running means of loss / top-1 / top-5 kept on the device (no host sync per step)."""

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(3, device=device, dtype=torch.float64)
        self.rows = 0
        self.count = 0

    def add(self, result: StepResult) -> None:
        self.sums += torch.stack([result.loss, result.top1, result.top5]).double() * result.rows
        self.rows += result.rows
        self.count += 1

    def means(self) -> tuple[float, float, float]:
        if self.rows == 0:
            return float("nan"), float("nan"), float("nan")
        loss, top1, top5 = (self.sums / self.rows).tolist()
        return loss, top1, top5


class Views:
    """Turns uint8 batches into model inputs: two SimCLR views (SimCLR, BYOL) or one supervised view."""

    def __init__(self, config: SearchConfig, dataset, generator: torch.Generator,
                 world: distributed.World = distributed.SINGLE):
        """``world``: training views are this rank's share of every batch (:func:`distributed.shard`); every rank
        draws the augmentations of the whole batch, so the views equal the single-process ones."""
        self.mode = config.data_mode
        self.generator = generator
        self.world = world
        self.contrastive = SimCLRAugment(dataset.image_size, dataset.mean, dataset.std)
        self.supervised = SupervisedAugment(dataset.image_size, dataset.mean, dataset.std)
        self.plain = EvalTransform(dataset.mean, dataset.std)

    def train(self, images: torch.Tensor, labels: torch.Tensor) -> Batch:
        """This rank's rows of the training views of a batch."""
        batch = self._augmented(images, labels)
        if not self.world.distributed:
            return batch
        rows = distributed.shard(images.shape[0], self.world)
        return Batch(tuple(view[rows] for view in batch.views), labels[rows])

    def _augmented(self, images: torch.Tensor, labels: torch.Tensor) -> Batch:
        if self.mode == "supervised":
            return Batch((self.supervised(images, self.generator),), labels)
        return Batch((self.contrastive(images, self.generator), self.contrastive(images, self.generator)), labels)

    def test(self, images: torch.Tensor, labels: torch.Tensor) -> Batch:
        """Validation inputs, the whole batch on every rank; SimCLR validation uses random two-view augmentations
        like the reference."""
        if self.mode == "supervised":
            return Batch((self.plain(images),), labels)
        return self._augmented(images, labels)


def _namespace_line(config: SearchConfig, run_dir: Path, schedule: Schedule, num_classes: int) -> str:
    lengths = schedule.lengths
    fields = dict(config.to_dict(), save_path=str(run_dir), progressive=True, warmup_epochs=lengths.warmup,
                  search_epochs=lengths.search, prune_epochs=lengths.prune, stabilize_epochs=lengths.stabilize,
                  num_classes=num_classes)
    return repr(argparse.Namespace(**fields))


class SearchRun(EpochRun):
    """State of one run; :meth:`run` executes the remaining epochs."""

    resume_format = RESUME_FORMAT
    log_name = "sswp_fast.run"

    def __init__(self, config: SearchConfig, root: Path | str = ".", world: distributed.World | None = None,
                 compile_backend: str = DEFAULT_BACKEND):
        """``world``: this process's place in a multi-process run; by default read from ``torchrun``'s
        environment (:func:`sswp_fast.runtime.distributed.world_from_env`). Only rank 0 writes files and logs. Every
        input is checked before the run folder is made (:func:`~sswp_fast.search.plan.plan_search`, then the engine and
        a resume checkpoint), so a refused run creates and changes no file. ``compile_backend``: the ``torch.compile``
        backend of ``--compile`` (:class:`~sswp_fast.search.engine.SearchEngine`)."""
        self.plan = plan = plan_search(config, root, world)
        self.config = config = plan.config
        self.world = world = plan.world
        self.device = plan.device
        self.dataset = plan.dataset
        self.schedule = plan.schedule
        distributed.init(world, self.device)
        torch.manual_seed(config.seed)
        self.engine = SearchEngine(plan.engine_config, self.dataset.num_classes, self.device, world, plan.executor,
                                   plan.graphs, compile_backend)
        self.memory_choice: RecomputeChoice | None = None
        if config.max_memory is not None:
            self.memory_choice = choose_recompute(self.engine, config.batch_size // world.size,
                                                  self.dataset.image_size, config.max_memory, release_free_heap=True)
        self.data_generator = torch.Generator(self.device).manual_seed(config.seed + 1)
        self.train_loader, self.valid_loader, self.test_loader = build_search_loaders(
            self.dataset, config.train_ratio, config.batch_size, self.device, self.data_generator,
            debug=config.debug, max_batches=config.steps_per_epoch, num_workers=config.num_workers)
        self.views = Views(config, self.dataset, self.data_generator, world)
        self.best_acc = -math.inf
        self.best_loss = math.inf
        self.weight_steps_done = 0
        if plan.resume_state is not None:
            self.restore(plan.resume_state, plan.run_dir)
        self.open_folder(plan.run_dir)
        if not config.resume:
            self.log.info(_namespace_line(config, self.run_dir, self.schedule, self.dataset.num_classes))
            self.log.info("train lines: step, " + TRAIN_COLUMNS[config.data_mode] + "; means since the epoch began")
        self.log.info(f"executor: {plan.executor.describe()}")
        self.log.info(f"cuda graphs: {plan.graphs.describe()}")
        if self.memory_choice is not None:
            self.log.info(self.memory_choice.describe(config.max_memory))
        else:
            self.log.info("recompute: " + plan.recompute.describe().replace("\n", "; "))
        self.memory_meter = PeakMeter(self.device)
        self.memory_held = self.memory_meter.held()
        """Bytes held before the first step (on CPU the process itself: torch, the dataset)."""
        if self.main:
            self.alpha_history = AlphaHistory(self.run_dir, self.start_epoch)
            self.tensorboard = TensorBoard(self.run_dir)
        else:
            self.alpha_history = self.tensorboard = Silent()
        self.progress.message(f"executor: {plan.executor.describe()}; recompute {self.recompute_mode}; cuda graphs "
                              f"{'on' if plan.graphs.enabled else 'off'}\n")

    @property
    def recompute_mode(self) -> str:
        """The recompute mode the steps run (``auto`` only under ``--compile``, where the compiler decides)."""
        return self.engine.net.recompute

    # ---- persistence -----------------------------------------------------------------------------------

    @property
    def total_epochs(self) -> int:
        return self.config.epochs

    def resume_state(self) -> dict:
        return {"weight_steps": self.weight_steps_done, "best_acc": self.best_acc, "best_loss": self.best_loss,
                "engine": self.engine.state_dict(), "data_generator": self.data_generator.get_state()}

    def load_resume_state(self, state: dict) -> None:
        self.engine.load_state_dict(state["engine"])
        self.data_generator.set_state(state["data_generator"])
        self.weight_steps_done = state["weight_steps"]
        self.best_acc, self.best_loss = state["best_acc"], state["best_loss"]

    def _save_arch_weights(self, name: str, arch: list) -> None:
        """Append ``name:{arch}`` (the restricted export) to ``net.config`` and write ``{name}.pth.tar`` (§8.2)."""
        if not self.main:
            return
        atomic_save(self.engine.net.state_dict(), self.run_dir / f"{name}.pth.tar")
        append_net_config(self.run_dir / "net.config", name, arch)

    def architecture(self, restrict: bool) -> list:
        c = self.config
        return derive_architecture(self.engine.net.arch_alpha.detach().cpu(), restrict, c.skip_r_num, c.pool_r_num)

    # ---- the loop ----------------------------------------------------------------------------------------

    def _check_finite(self, value: float, epoch: int, step: int) -> None:
        if not math.isfinite(value):
            last = self.run_dir / RESUME_FILE
            kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
            raise SSWPError(f"loss became {value} at epoch {epoch} step {step}; {kept}; "
                            "lower --lr or --arch_lr and resume with --resume")

    def _predicted_peak(self) -> str:
        """The prediction of the mode the steps run, in the words of the epoch's memory line."""
        mode = self.recompute_mode
        if self.config.compile != "off":
            return "by the compiler"
        if self.memory_choice is not None:
            return f"{self.memory_choice.predicted_gb[mode]:.2f} GB, measured at start"
        predicted = self.plan.recompute.predicted_gb[mode]
        return f"{predicted:.2f} GB for the steps on top of {self.memory_held / GB:.2f} GB held at the start"

    def _say_if_compiling(self, kind: str) -> None:
        """Under ``--compile``, the first step of each graph compiles (or loads it from the cache): say so."""
        if self.engine.will_compile(kind):
            self.progress.message(f"compiling the {kind} step (once per configuration; cached in "
                                  f"{cache_dir(self.config.compile_cache)})...")

    def train_epoch(self, plan: EpochPlan, skip: float, pool: float) -> dict:
        """Weight steps over the train half, each ``update_arch_every``-th followed by arch steps."""
        cfg = self.config
        epoch = plan.epoch
        engine = self.engine
        weights, arch = Meter(self.device), Meter(self.device)
        arch_batches = cycle(self.valid_loader)  # a generator: the first pass starts at the first arch step
        steps = len(self.train_loader)
        try:
            for step, (images, labels) in enumerate(self.train_loader):
                self._say_if_compiling("weight")
                result = engine.weight_step(self.views.train(images, labels), warmup=plan.warmup_sampling,
                                            skip_drop_prob=skip, pool_drop_prob=pool)
                weights.add(result)
                self.weight_steps_done += 1
                if plan.arch_steps and (step + 1) % cfg.update_arch_every == 0:
                    for _ in range(cfg.arch_update_steps):
                        valid_images, valid_labels = next(arch_batches)
                        self._say_if_compiling("arch")
                        arch_result = engine.arch_step(self.views.train(valid_images, valid_labels),
                                                       skip_drop_prob=cfg.arch_skip_drop_prob,
                                                       pool_drop_prob=cfg.arch_pool_drop_prob)
                        if arch_result is not None:
                            arch.add(arch_result)
                if step % cfg.report_freq == 0 or step == steps - 1:
                    loss, top1, top5 = weights.means()
                    self._check_finite(loss, epoch, step)
                    self.log.info("train %05d %e %f %f", step, loss, top1, top5)
                    self.tensorboard.scalar("train/loss", loss, epoch * steps + step)
                    self.tensorboard.scalar("train/acc", top1, epoch * steps + step)
                self.progress.update(epoch, step, steps, plan.phase)
        finally:
            arch_batches.close()  # stops a folder loader's decoding threads
        loss, top1, top5 = weights.means()
        self._check_finite(loss, epoch, steps)
        return {"train_loss": loss, "train_top1": top1, "train_top5": top5, "weight_steps": weights.count,
                "arch_loss": arch.means()[0] if arch.count else None, "arch_steps": arch.count}

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        meter = Meter(self.device)
        for step, (images, labels) in enumerate(self.test_loader):
            meter.add(self.engine.eval_step(self.views.test(images, labels)))
            if step % self.config.report_freq == 0:
                loss, top1, top5 = meter.means()
                self.log.info("valid %05d %e %f %f", step, loss, top1, top5)
        loss, top1, _ = meter.means()
        return top1, loss

    def finish(self) -> None:
        self.log.info("search finished; run folder: %s", self.run_dir)

    def close(self) -> None:
        self.tensorboard.close()
        super().close()

    def run_epoch(self, epoch: int) -> None:
        cfg = self.config
        plan = self.schedule.plan(epoch)
        started = time.monotonic()
        self.log.info("epoch %d", epoch)
        if plan.freeze_cells:
            self.engine.freeze(plan.freeze_cells)
        lr = cosine_lr(cfg.lr, epoch, cfg.epochs)
        self.engine.set_lr(lr)
        skip, pool = (0.0, 0.0) if plan.zero_weight_drop else (cfg.weight_skip_drop_prob, cfg.weight_pool_drop_prob)
        self.memory_meter.reset()
        stats = self.train_epoch(plan, skip, pool)
        self.log.info("train_acc %f, train_loss %e", stats["train_top1"], stats["train_loss"])
        record = {"epoch": epoch, "phase": plan.phase, "lr": lr, **stats,
                  "peak_memory_gb": self.memory_meter.peak() / GB, "executor": self.plan.executor.name,
                  "executor_reason": self.plan.executor.reason, "recompute": self.recompute_mode}
        self.log.info("peak memory of epoch %d: %.2f GB%s (--recompute %s, predicted %s)", epoch,
                      record["peak_memory_gb"], "" if self.memory_meter.resettable else " since the start",
                      self.recompute_mode, self._predicted_peak())
        restricted = self.architecture(restrict=True)  # the alphas are final for this epoch
        if plan.validate:
            acc, loss = self.validate()
            self.log.info("train_valid_acc %f, train_valid_loss %e", acc, loss)
            self.tensorboard.scalar("train/valid_acc", acc, epoch)
            self.tensorboard.scalar("train/valid_loss", loss, epoch)
            record.update(valid_top1=acc, valid_loss=loss)
            if acc > self.best_acc:
                self.best_acc = acc
                self._save_arch_weights("highest_acc", restricted)
            if loss < self.best_loss:
                self.best_loss = loss
                self._save_arch_weights("lowest_loss", restricted)
        if plan.save_stamp:
            self._save_arch_weights(f"Epoch_{epoch}", restricted)
        if plan.log_arch:
            for arch, label, tag in ((self.architecture(restrict=False), "without restrict", "wr"),
                                     (restricted, "restrict", "r")):
                self.log.info(label)
                for idx, cell in enumerate(arch):
                    self.log.info("Epoch_%d_%s_Cell%d:%s", epoch, tag, idx, cell)
        seconds = time.monotonic() - started
        record.update(frozen_cells=self.engine.frozen_cells(), seconds=seconds,
                      alpha_entropy=mean_edge_entropy(self.engine.net.arch_alpha))
        if cfg.compile != "off":
            record["compiled_graphs"] = compiled_graphs()
        self.metrics.write(record)
        self.alpha_history.append(epoch, self.engine.net.arch_alpha.detach().cpu().numpy())
        self.save_resume(epoch + 1)
        self.progress.message("")
        if self.main:
            print(f"Time per epoch: {format_seconds(seconds)}, "
                  f"Est. complete in: {format_seconds(self.progress.eta(epoch + 1))}")
            print("-" * 120)


def run_search(config: SearchConfig, root: Path | str = ".") -> Path:
    """Run (or resume) a search and return its run folder; under ``torchrun``, one rank of a multi-process
    search (:mod:`sswp_fast.runtime.distributed`)."""
    world = distributed.world_from_env()
    try:
        return SearchRun(config, root, world).run()
    finally:
        distributed.shutdown(world)
