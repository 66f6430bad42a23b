"""The compact-network stages that consume a search (spec §11): train from scratch, fine-tune from the
concomitant search weights, linear evaluation, and the two-stage SimCLR pretrain baseline.

Each stage picks architectures by name (``--arch_name``, comma-separated) from a search folder's
``net.config`` (``--path``), or the built-in ``darts`` / ``pdarts`` without ``--path``, and runs once per
name in ``exps/{exp_group}/{stage}-{note}_{name}/``. Fine-tune, linear evaluation and pretrain with
``--preserve_weight`` start from ``{path}/{name}.pth.tar`` through the weight-preserving key mapping of
:func:`sswp_fast.stages.compact.load_search_weights`.

Differences from the reference scripts, all deliberate:
  * ``--cutout``, ``--auxiliary`` and ``--affine`` can be turned off (``--no-cutout``...; quirk 16.17);
  * linear evaluation keeps the frozen backbone's BatchNorm in eval mode, a true linear probe, and has
    ``--exp_group`` (quirk 16.18);
  * the last epoch is always validated; mixed precision (``--amp``) and multi-process runs work for every stage,
    with gradient clipping (quirk 16.19);
  * a run writes ``resume.pth.tar`` atomically after every epoch and continues from it with ``--resume``.

Several processes train together through ``torchrun``, as the search does: ``--batch_size`` is the global
batch, every rank augments the whole batch from the shared generator and trains on its slice, gradients are
averaged in one all-reduce (``--sync_bn``: BatchNorm over the global batch), and only rank 0 writes. The
``DistributedDataParallel`` wrapper is not used because it fixes the set of trained parameters when it is built,
and ``--fix`` changes that set at the end of the warm-up. Drop-path masks are drawn per rank.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from sswp_fast.data import EvalTransform, FolderDataset, ImageDataset, SimCLRAugment, SupervisedAugment, load_dataset
from sswp_fast.data.loader import DEBUG_SUBSET, FolderBatches, ResidentBatches
from sswp_fast.data.split import class_balanced_split
from sswp_fast.errors import ConfigError, SSWPError
from sswp_fast.losses.objectives import info_nce, info_nce_topk, topk_accuracy
from sswp_fast.runtime import distributed, run_folder
from sswp_fast.runtime.checkpoint import atomic_save, load_checkpoint
from sswp_fast.runtime.devices import describe as describe_device
from sswp_fast.runtime.devices import pick_device, require_present
from sswp_fast.runtime.epoch_run import EpochRun, read_resume_checkpoint
from sswp_fast.runtime.lr_schedule import set_lr, warmup_cosine_lr
from sswp_fast.runtime.plan import Plan, process_count
from sswp_fast.runtime.precision import amp_dtype, autocast, precision_text
from sswp_fast.runtime.reporting import format_seconds
from sswp_fast.search.export import Arch, append_net_config, load_architectures
from sswp_fast.stages.compact import CompactNetwork, load_search_weights
from sswp_fast.stages.config import DownstreamConfig
from sswp_fast.stages.genotypes import BUILTIN_NAMES, builtin_architecture
from sswp_fast.stages.knn import KNN_K, KNN_TEMPERATURE, knn_accuracy

FORMAT = "sswp-fast-stage-resume/1"
LATE_VALIDATION_EPOCH = 500
"""From this epoch on every epoch is validated (the reference's ``range(500, total)``)."""
PRETRAIN_SNAPSHOT_EVERY = 50


def select_architectures(path: str | None, arch_name: str) -> dict[str, Arch]:
    """The architectures named by ``arch_name`` (``--arch_name``, comma-separated): from ``path``'s
    ``net.config``, or built in when ``path`` is None."""
    if path is not None:
        return load_architectures(path, arch_name)
    names = arch_name.split(",")
    unknown = [n for n in names if n not in BUILTIN_NAMES]
    if unknown:
        raise ConfigError(f"no --path given and {', '.join(unknown)} is not a built-in architecture "
                          f"({', '.join(BUILTIN_NAMES)}); pass --path SEARCH_FOLDER or --arch_name darts")
    return {n: builtin_architecture(n) for n in names}


def searched_channels(state: dict[str, torch.Tensor]) -> int | None:
    """The ``--init_channels`` a checkpoint was made with, read from its stem (None if it has no stem)."""
    if "stem.0.weight" in state:
        return int(state["stem.0.weight"].shape[0]) // 3
    if "stem0.3.weight" in state:
        return int(state["stem0.3.weight"].shape[0])
    return None


def load_start_weights(model: CompactNetwork, config: DownstreamConfig, name: str) -> str:
    """``{path}/{name}.pth.tar`` into ``model`` (spec §10); returns a one-line summary for the log."""
    file = Path(config.path) / f"{name}.pth.tar"
    state = load_checkpoint(file, fix=f"pass --path with the search folder that holds {name}.pth.tar")
    channels = searched_channels(state)
    if channels is not None and channels != config.init_channels:
        raise ConfigError(f"{file} was made with --init_channels {channels}, not {config.init_channels}; "
                          f"pass --init_channels {channels}")
    report = load_search_weights(model, state)
    return f"weights from {file}: {len(report.copied)} tensors copied, {len(report.fresh)} freshly initialised"


def train_indices(labels: torch.Tensor, num_classes: int, train_ratio: float) -> torch.Tensor:
    """The labelled subset of spec §2.3: with ``r < 1`` the complement of a class-balanced ``int(N - r·N)``
    draw of the seed-0 split (the *last* images of each class in its permutation), else every image."""
    n = int(labels.numel())
    if train_ratio >= 1:
        return torch.arange(n)
    train, _ = class_balanced_split(labels, int(n - train_ratio * n), num_classes)
    if train.numel() == 0:
        raise ConfigError(f"--train_ratio {train_ratio} leaves none of the {n} training images; raise it")
    return train


@dataclass
class StagePlan:
    """One stage on one architecture, every input checked (see :func:`plan_stage_run`): nothing is written yet."""

    config: DownstreamConfig
    arch_name: str
    arch: Arch
    device: torch.device
    world: distributed.World
    dataset: ImageDataset | FolderDataset
    labelled: torch.Tensor
    model: CompactNetwork
    start: str | None
    run_dir: Path
    resume_state: dict | None

    def items(self) -> tuple[dict, dict]:
        """(JSON items, text notes) of this architecture's run."""
        folder = (f"resumed at epoch {self.resume_state['epoch']}" if self.resume_state is not None
                  else "replaced (--force)" if self.config.force and self.run_dir.exists() else "new")
        start = self.start or "random initialisation"
        item = {"path": str(self.run_dir), "state": folder, "start": start}
        return item, f"{self.run_dir} ({folder}); {start}"


def plan_stage_run(config: DownstreamConfig, arch_name: str, arch: Arch, root: Path | str = ".",
                   world: distributed.World | None = None, run: bool = True) -> StagePlan:
    """Check every input of one stage run: flags, device, process count, dataset, labelled fraction, the start
    weights (loaded into the network, built on the meta device for ``run=False``), the run folder and a resume
    checkpoint. Creates no file; a one-line :class:`SSWPError` for the first problem."""
    config.validate()
    world = world if world is not None else distributed.world_from_env()
    device = pick_device(config.device, world.local_rank if world.distributed else None)
    if run:
        require_present(device)
    distributed.check_batch_size(config.batch_size, world)
    dataset = load_dataset(config.dataset, config.data_path)
    labelled = train_indices(dataset.train_labels, dataset.num_classes, config.train_ratio)
    contrastive = config.stage == "pretrain"
    torch.manual_seed(config.seed)
    with torch.device("cpu" if run else "meta"):
        model = CompactNetwork(config.init_channels, dataset.num_classes, arch,
                               auxiliary=config.auxiliary and not contrastive and config.stage != "linear-eval",
                               affine=config.affine, head="projection" if contrastive else "classifier",
                               imagenet=config.dataset == "imagenet")
    start = None
    if config.stage in ("finetune", "linear-eval") or (contrastive and config.preserve_weight):
        with warnings.catch_warnings():  # into a meta network the copies are no-ops, and torch says so per tensor
            warnings.simplefilter("ignore")
            start = load_start_weights(model, config, arch_name)
    run_dir = run_folder.run_dir_for(root, config.exp_group, config.folder_stage, f"{config.note}_{arch_name}")
    run_folder.prepare_run_dir(run_dir, config.resume, config.force, create=False)
    resume_state = (read_resume_checkpoint(run_dir / run_folder.RESUME_FILE, FORMAT, config.stage, config)
                    if config.resume else None)
    return StagePlan(config, arch_name, arch, device, world, dataset, labelled, model, start, run_dir, resume_state)


def plan_stage(config: DownstreamConfig, root: Path | str = ".") -> Plan:
    """The ``--dry_run`` plan of ``config.stage`` on every architecture of ``--arch_name``."""
    config.validate()
    plans = [plan_stage_run(config, name, arch, root, run=False)
             for name, arch in select_architectures(config.path, config.arch_name).items()]
    first, c = plans[0], config
    data = first.dataset
    runs = {p.arch_name: p.items() for p in plans}
    epochs = (f"{c.epochs} epochs" if c.stage == "pretrain"
              else f"{c.total_epochs} epochs ({c.warmup_epochs} warm-up, {c.train_epochs} cosine)")
    items = {
        "device": str(first.device),
        "processes": first.world.size,
        "batch": {"global": c.batch_size, "per_process": c.batch_size // first.world.size},
        "data": {"dataset": c.dataset, "path": c.data_path, "train_images": int(first.labelled.numel()),
                 "test_images": int(data.test_labels.numel()), "classes": data.num_classes},
        "architectures": {name: item for name, (item, _) in runs.items()},
        "epochs": c.total_epochs,
        "optimizer": {"name": c.optm, "lr": c.lr, "weight_decay": c.weight_decay},
        "precision": precision_text(amp_dtype(c.amp, first.device)),
    }
    notes = {
        "device": describe_device(first.device),
        "processes": process_count(first.world),
        "batch": f"{c.batch_size} images ({c.batch_size // first.world.size} per process)",
        "data": f"{c.dataset}{'' if c.data_path is None else ' from ' + c.data_path}: {first.labelled.numel()} "
                f"training images (--train_ratio {c.train_ratio:g}), {data.test_labels.numel()} test images, "
                f"{data.num_classes} classes",
        "architectures": "; ".join(f"{name}: {note}" for name, (_, note) in runs.items()),
        "epochs": epochs,
        "optimizer": f"{c.optm}, lr {c.lr:g}, weight decay {c.weight_decay:g}",
    }
    return Plan(f"sswp-fast {c.stage}", items, notes)


class StageRun(EpochRun):
    """One stage on one architecture; :meth:`run` executes the remaining epochs."""

    resume_format = FORMAT
    log_name = "sswp_fast.stage"

    def __init__(self, config: DownstreamConfig, arch_name: str, arch: Arch, root: Path | str = ".",
                 world: distributed.World | None = None):
        """Every input is checked first (:func:`plan_stage_run`); the folder is made only then, so a refused
        run leaves nothing behind."""
        plan = plan_stage_run(config, arch_name, arch, root, world)
        self.config = config
        self.arch_name, self.arch = arch_name, arch
        self.world = world = plan.world
        self.device = plan.device
        distributed.init(world, self.device)
        self.dataset = plan.dataset
        self.contrastive = config.stage == "pretrain"
        self.linear = config.stage == "linear-eval"
        self.model = plan.model.to(self.device)
        self.dtype = next(self.model.parameters()).dtype
        if self.device.type == "cpu":
            self.model.to(memory_format=torch.channels_last)
        if config.sync_bn and world.distributed:
            distributed.sync_batch_norms(self.model)
        distributed.broadcast_state(self.model, world)
        self.trained = self._trainable()
        self.optimizer = self._optimizer()
        self.amp_dtype = amp_dtype(config.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.generator = torch.Generator(self.device).manual_seed(config.seed + 1)
        self.train_loader, self.test_loader = self._loaders(plan.labelled)
        self.augment = self._augmentation()
        self.plain = EvalTransform(self.dataset.mean, self.dataset.std)
        self.steps = len(self.train_loader)
        self.best = {"top1": 0.0, "top5": 0.0, "epoch": None}
        if plan.resume_state is not None:
            self.restore(plan.resume_state, plan.run_dir)
        self.open_folder(plan.run_dir)
        if not config.resume:
            self.log.info(repr(argparse.Namespace(**config.logged(), arch=arch_name, save_path=str(self.run_dir),
                                                  num_classes=self.dataset.num_classes)))
            if plan.start:
                self.log.info(plan.start)
            self.log.info("train lines: step, loss, " + ("InfoNCE instance top-1 (%)" if self.contrastive
                                                        else "top-1 (%)") + ", learning rate; means since the "
                          "epoch began")
            if self.main:
                append_net_config(self.run_dir / "net.config", "pretrained" if self.contrastive else "model", arch)

    @property
    def total_epochs(self) -> int:
        return self.config.total_epochs

    # ---- set-up ------------------------------------------------------------------------------------------

    def _trainable(self) -> list[torch.nn.Parameter]:
        """The parameters the optimizer holds: only the classifier in linear evaluation, else all of them."""
        if self.linear:
            for name, p in self.model.named_parameters():
                p.requires_grad_(name.startswith("classifier."))
        return [p for p in self.model.parameters() if p.requires_grad]

    def _optimizer(self) -> torch.optim.Optimizer:
        c = self.config
        if c.optm == "adam":
            return torch.optim.Adam(self.trained, lr=c.lr, weight_decay=c.weight_decay)
        return torch.optim.SGD(self.trained, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)

    def _loaders(self, train: torch.Tensor) -> tuple[ResidentBatches | FolderBatches, ResidentBatches | FolderBatches]:
        """Batches of the labelled training images ``train`` and of the test split."""
        c, data = self.config, self.dataset
        test = torch.arange(int(data.test_labels.numel()))
        if c.debug:
            train, test = train[:DEBUG_SUBSET], test[:DEBUG_SUBSET]
        if isinstance(data, FolderDataset):
            return (FolderBatches(data, "train", train, c.batch_size, self.generator, max_batches=c.steps_per_epoch,
                                  num_workers=c.num_workers, device=self.device),
                    FolderBatches(data, "test", test, c.batch_size, self.generator, num_workers=c.num_workers,
                                  device=self.device))
        images, labels = data.train_images.to(self.device), data.train_labels.to(self.device)
        return (ResidentBatches(images, labels, train, c.batch_size, self.generator, max_batches=c.steps_per_epoch),
                ResidentBatches(data.test_images, data.test_labels, test, c.batch_size, self.generator))

    def _augmentation(self):
        data = self.dataset
        if self.contrastive:
            return SimCLRAugment(data.image_size, data.mean, data.std)
        if isinstance(data, FolderDataset):  # the reference's ImageNet train transform
            return SimCLRAugment(data.image_size, data.mean, data.std, jitter=(0.4, 0.4, 0.4, 0.2), jitter_p=1.0,
                                 gray_p=0.0, blur_p=0.0)
        return SupervisedAugment(data.image_size, data.mean, data.std,
                                 self.config.cutout_length if self.config.cutout else 0)

    # ---- persistence -------------------------------------------------------------------------------------

    def resume_state(self) -> dict:
        return {"arch_name": self.arch_name, "best": self.best, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "generator": self.generator.get_state()}

    def load_resume_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        self.best = state["best"]

    def _save_weights(self, name: str) -> None:
        if self.main:
            atomic_save(self.model.state_dict(), self.run_dir / f"{name}.pth.tar")

    # ---- steps -------------------------------------------------------------------------------------------

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """Images in the network's dtype (float32 views into a float64 test network) and CPU layout."""
        x = x.to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cpu" else x

    def _autocast(self):
        return autocast(self.amp_dtype, self.device)

    def _loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Loss and top-1 accuracy of this rank's slice of a global batch (augmented whole, as every rank
        draws the same augmentations)."""
        c = self.config
        if self.contrastive:
            v1, v2 = self.augment(images, self.generator), self.augment(images, self.generator)
            rows = distributed.shard(images.shape[0], self.world)
            with self._autocast():
                projection, _ = self.model(self._input(torch.cat([v1[rows], v2[rows]])))
            features = distributed.gather_views(projection.float(), 2, self.world)
            return info_nce(features, c.temperature), info_nce_topk(features.detach(), (1,))[0], features.shape[0]
        x = self.augment(images, self.generator)
        rows = distributed.shard(images.shape[0], self.world)
        x, labels = self._input(x[rows]), labels[rows]
        with self._autocast():
            if self.linear:
                with torch.no_grad():
                    features = self.model.features(x)
                logits, aux = self.model.classifier(features), None
            else:
                logits, aux = self.model(x)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=c.label_smooth)
        if aux is not None:
            loss = loss + c.auxiliary_weight * F.cross_entropy(aux.float(), labels, label_smoothing=c.label_smooth)
        return loss, topk_accuracy(logits.detach(), labels, (1,))[0], labels.shape[0]

    def _step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, int]:
        loss, top1, rows = self._loss(images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        distributed.average_gradients(self.trained, self.world)
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_([p for p in self.trained if p.grad is not None], self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach()), float(top1), rows

    def _set_train_mode(self, epoch: int) -> None:
        c = self.config
        self.model.train(not self.linear)  # a linear probe keeps the frozen backbone's BatchNorm in eval mode
        drops = not (self.contrastive or self.linear)
        self.model.drop_path_prob = c.drop_path_prob * epoch / c.total_epochs if drops else 0.0
        if c.stage == "finetune" and c.fix:  # spec §11.5: only the heads train during the warm-up epochs
            for name, p in self.model.named_parameters():
                p.requires_grad_(epoch >= c.warmup_epochs or "classifier" in name)

    def _lr(self, iteration: int) -> float:
        c = self.config
        if self.contrastive:
            return warmup_cosine_lr(iteration, c.lr, c.lr_min, 0, c.epochs * self.steps)
        return warmup_cosine_lr(iteration, c.lr, c.lr_min, c.warmup_epochs * self.steps, c.train_epochs * self.steps)

    def train_epoch(self, epoch: int) -> dict:
        self._set_train_mode(epoch)
        loss_sum = acc_sum = rows_sum = 0.0
        for step, (images, labels) in enumerate(self.train_loader):
            lr = self._lr(epoch * self.steps + step)
            set_lr(self.optimizer, lr)
            loss, top1, rows = self._step(images, labels)
            if not math.isfinite(loss):
                raise SSWPError(f"loss became {loss} at epoch {epoch} step {step}; lower --lr and resume with "
                                "--resume (the last good epoch is in resume.pth.tar)")
            loss_sum, acc_sum, rows_sum = loss_sum + loss * rows, acc_sum + top1 * rows, rows_sum + rows
            if step % self.config.report_freq == 0 or step == self.steps - 1:
                self.log.info(f"train {step:05d} {loss_sum / rows_sum:e} {acc_sum / rows_sum:f} {lr:f}")
            self.progress.update(epoch, step, self.steps, self.config.stage)
        return {"train_loss": loss_sum / rows_sum, "train_acc": acc_sum / rows_sum, "lr": lr}

    @torch.no_grad()
    def validate(self) -> dict:
        """Test-set loss and accuracy (pretrain: InfoNCE and instance top-1/top-5 on two augmented views)."""
        self.model.eval()
        sums = torch.zeros(3, dtype=torch.float64)
        count = 0
        for images, labels in self.test_loader:
            if self.contrastive:
                views = torch.cat([self.augment(images, self.generator), self.augment(images, self.generator)])
                features = self.model(self._input(views))[0].float()
                top1, top5 = info_nce_topk(features)
                values, rows = (info_nce(features, self.config.temperature), top1, top5), features.shape[0]
            else:
                logits, _ = self.model(self._input(self.plain(images)))
                top1, top5 = topk_accuracy(logits.float(), labels)
                values, rows = (F.cross_entropy(logits.float(), labels), top1, top5), labels.shape[0]
            sums += torch.tensor([float(v) for v in values], dtype=torch.float64) * rows
            count += rows
        loss, top1, top5 = (sums / count).tolist()
        return {"valid_loss": loss, "valid_top1": top1, "valid_top5": top5}

    def _validates(self, epoch: int) -> bool:
        c = self.config
        return epoch % c.valid_freq == 0 or epoch >= LATE_VALIDATION_EPOCH or epoch == c.total_epochs - 1

    def run_epoch(self, epoch: int) -> None:
        c = self.config
        started = time.monotonic()
        self.log.info(f"epoch {epoch}")
        if self.contrastive and (epoch % PRETRAIN_SNAPSHOT_EVERY == 0 or epoch == c.epochs - 1) and self.main:
            self._save_weights(f"Epoch_{epoch}")  # weights before the epoch, as the reference
            append_net_config(self.run_dir / "net.config", f"Epoch_{epoch}", self.arch)
        record = {"epoch": epoch, **self.train_epoch(epoch)}
        self.log.info(f"train_acc {record['train_acc']:f}, train_loss {record['train_loss']:e}")
        if self._validates(epoch):
            record.update(self.validate())
            self._report_validation(record)
        record["seconds"] = time.monotonic() - started
        self.metrics.write(record)
        self.log.info(f"Time per epoch: {format_seconds(record['seconds'])}")
        self.save_resume(epoch + 1)

    def _report_validation(self, record: dict) -> None:
        """Log the epoch's test scores beside the best so far (this epoch included), whose weights are kept."""
        top1, top5, loss = record["valid_top1"], record["valid_top5"], record["valid_loss"]
        if self.best["epoch"] is None or top1 > self.best["top1"]:
            self.best = {"top1": top1, "top5": top5, "epoch": record["epoch"]}
            self._save_weights("pretrained" if self.contrastive else "model")
        if self.contrastive:
            self.log.info(f"valid_acc {top1:f}, best_acc {self.best['top1']:f}, valid_loss {loss:e}")
        else:
            self.log.info(f"valid_top1 {top1:f}, best_top1 {self.best['top1']:f}, valid_top5 {top5:f}, "
                          f"best_top5 {self.best['top5']:f}, valid_loss {loss:e}")

    def finish(self) -> None:
        if self.contrastive:
            self._save_weights("last_pretrain")
            self.log.info(f"best_acc {self.best['top1']:f} (epoch {self.best.get('epoch')})")
        else:
            self.log.info(f"best_top1 {self.best['top1']:f}, best_top5 {self.best['top5']:f} "
                          f"(both of epoch {self.best.get('epoch')})")


def run_stage(config: DownstreamConfig, root: Path | str = ".") -> list[Path]:
    """Run ``config.stage`` on every architecture of ``--arch_name``; returns their run folders."""
    config.validate()
    world = distributed.world_from_env()
    try:
        return [StageRun(config, name, arch, root, world).run() for name, arch in
                select_architectures(config.path, config.arch_name).items()]
    finally:
        distributed.shutdown(world)



def _knn_inputs(path: str | None, arch_name: str, checkpoint: str | None, dataset: str,
                data_path: str | None) -> tuple[Arch, Path, dict, int, ImageDataset | FolderDataset]:
    """(architecture, weights file, its state, its --init_channels, dataset) of ``sswp-fast knn``, each checked."""
    if path is None and checkpoint is None:
        raise ConfigError("knn needs weights: pass --path SEARCH_OR_RUN_FOLDER (with --arch_name) or --checkpoint FILE")
    arch = select_architectures(path, arch_name)[arch_name]
    file = Path(checkpoint) if checkpoint is not None else Path(path) / f"{arch_name}.pth.tar"
    state = load_checkpoint(file, fix="pass --checkpoint with a network checkpoint (.pth.tar)")
    channels = searched_channels(state)
    if channels is None:
        raise SSWPError(f"{file} has no stem weights, so it is not a network checkpoint; pass a search or "
                        "compact-network checkpoint")
    return arch, file, state, channels, load_dataset(dataset, data_path)


def plan_knn(path: str | None, arch_name: str, checkpoint: str | None, dataset: str, data_path: str | None,
             batch_size: int = 256, k: int = KNN_K, device: str = "auto") -> Plan:
    """The ``--dry_run`` plan of :func:`knn_of_checkpoint`: its inputs checked, nothing computed."""
    _, file, _, channels, data = _knn_inputs(path, arch_name, checkpoint, dataset, data_path)
    run_device = pick_device(device)
    items = {"device": str(run_device), "weights": str(file), "architecture": arch_name,
             "init_channels": channels, "train_images": int(data.train_labels.numel()),
             "test_images": int(data.test_labels.numel()), "k": k, "batch": batch_size}
    return Plan("sswp-fast knn", items, {"device": describe_device(run_device)})


def knn_of_checkpoint(path: str | None, arch_name: str, checkpoint: str | None, dataset: str,
                      data_path: str | None, batch_size: int = 256, k: int = KNN_K,
                      temperature: float = KNN_TEMPERATURE, device: str = "auto") -> float:
    """kNN top-1 accuracy (percent) of the backbone features of any checkpoint: a search checkpoint (its
    backbone restricted to the edges of ``arch_name``), or a compact one from train, finetune or pretrain.
    ``--init_channels`` is read from the checkpoint; the architecture comes from ``path``'s ``net.config``
    (or the built-ins), the weights from ``checkpoint`` or ``{path}/{arch_name}.pth.tar``."""
    arch, _, state, channels, data = _knn_inputs(path, arch_name, checkpoint, dataset, data_path)
    run_device = pick_device(device)
    require_present(run_device)
    model = CompactNetwork(channels, data.num_classes, arch, auxiliary=False, affine=True,
                           imagenet=dataset == "imagenet")
    load_search_weights(model, {key: value for key, value in state.items() if not model.is_head_key(key)})
    model.to(run_device).eval()
    generator = torch.Generator(run_device).manual_seed(0)

    def batches(split: str):
        if isinstance(data, FolderDataset):
            n = len(data.files(split))
            return FolderBatches(data, split, torch.arange(n), batch_size, generator, device=run_device)
        images, labels = ((data.train_images, data.train_labels) if split == "train"
                          else (data.test_images, data.test_labels))
        return ResidentBatches(images, labels, torch.arange(labels.numel()), batch_size, generator)

    return knn_accuracy(model.features, batches("train"), batches("test"), EvalTransform(data.mean, data.std),
                        data.num_classes, k, temperature)
