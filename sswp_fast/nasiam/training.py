"""The NASiam runs (spec §3, §6, §7b): ``search`` (first-order DARTS of the heads, then the genotype file),
``pretrain`` (a framework with a genotype's heads, kNN monitor every epoch) and ``lincls`` (a linear classifier on
the frozen backbone, BatchNorm in eval mode).

They share the SSWP conventions: ``exps/{exp_group}/nasiam-{framework}-{command}-{note}/`` with ``log.txt`` and
``metrics.jsonl``; a checkpoint written atomically after every epoch and ``--resume`` from it; an existing folder
kept unless ``--force``; augmentation on the device (:class:`sswp_fast.data.SimCLRAugment`, parameters of
spec §7).

Reference bugs fixed here (spec §8): arch batches come from a pass over the held-out half that starts every
epoch, instead of a new loader iterator every step (§8.4); resume works, alphas and both optimizers included (§8.2);
the loss logged is the epoch mean (§8.17). An architecture step differentiates only the alphas, with the backbone
run without its backward graph (:meth:`sswp_fast.nasiam.models.SimSiam.loss`).
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sswp_fast.data import EvalTransform, FolderDataset, ImageDataset, SimCLRAugment, SupervisedAugment, load_dataset
from sswp_fast.data.loader import FolderBatches, ResidentBatches
from sswp_fast.errors import ConfigError, SSWPError
from sswp_fast.losses.objectives import topk_accuracy
from sswp_fast.nasiam.backbones import resnet
from sswp_fast.nasiam.config import NasiamConfig
from sswp_fast.nasiam.genotypes import (
    NasiamGenotype,
    genotype_filename,
    published_genotype,
    published_names,
    read_genotype,
    write_genotype,
)
from sswp_fast.nasiam.models import MoCo, SimCLR, SimSiam
from sswp_fast.nasiam.search_space import HeadSearchCell, derive_genes
from sswp_fast.runtime import run_folder
from sswp_fast.runtime.checkpoint import atomic_save, load_checkpoint
from sswp_fast.runtime.devices import describe as describe_device
from sswp_fast.runtime.devices import pick_device, pick_memory_format, require_present
from sswp_fast.runtime.epoch_run import EpochRun, read_resume_checkpoint
from sswp_fast.runtime.lr_schedule import cosine_lr, set_lr
from sswp_fast.runtime.plan import Plan
from sswp_fast.runtime.run_state import cycle
from sswp_fast.stages.knn import knn_accuracy

CHECKPOINT = "last_checkpoint.pth.tar"
FORMAT = "sswp-fast-nasiam/1"
BACKBONE_PREFIX = {"simsiam": "encoder.", "moco": "encoder_q.", "simclr": "f."}
"""Where each framework keeps its backbone in a state dict (the linear classifier starts from those keys)."""


def build_model(config: NasiamConfig, genotype: NasiamGenotype | None) -> nn.Module:
    """The framework's model: search cells for ``genotype=None``, else the genotype's derived cells."""
    c = config
    if c.framework == "simsiam":
        return SimSiam(c.arch, c.cifar, c.dim, c.pred_dim, genotype)
    if c.framework == "moco":
        return MoCo(c.arch, c.cifar, c.moco_dim, c.moco_k, c.moco_m, c.moco_t, genotype, c.moco_bn_eps_bug)
    return SimCLR(c.arch, c.cifar, c.feature_dim, c.temperature, genotype)


def load_genotype(config: NasiamConfig) -> NasiamGenotype:
    """``-g``: a genotype file's path, or the name of a published genotype of the framework."""
    if Path(config.genotype).suffix == ".txt" or Path(config.genotype).exists():
        return read_genotype(config.genotype, config.framework)
    if config.genotype in published_names(config.framework):
        return published_genotype(config.framework, config.genotype)
    raise ConfigError(f"-g {config.genotype}: no such file and no published {config.framework} genotype of that "
                      f"name (published: {', '.join(published_names(config.framework))}); pass a search's .txt file")


def search_split(config: NasiamConfig, num_train: int) -> tuple[int, int]:
    """``(split, n)``: weight steps take training images ``[0, split)``, arch steps ``[split, n)`` (a quarter of
    the training set on ImageNet, spec §3); a one-line error when a side holds less than a batch."""
    n = num_train // 4 if config.dataset == "imagenet" else num_train
    split = int(math.floor(config.train_portion * n))
    if split < config.batch_size or n - split < config.batch_size:
        raise ConfigError(f"--train_portion {config.train_portion} leaves fewer than --batch-size {config.batch_size} "
                          f"images on one side of the {n}-image split; lower --batch-size")
    return split, n


def pretrained_backbone(config: NasiamConfig, model: nn.Module) -> None:
    """Load the backbone of ``--pretrained`` into ``model`` (a ResNet whose ``fc`` is left as it is); one-line
    errors for a file without that framework's backbone or with another architecture's."""
    state = load_checkpoint(config.pretrained, fix="pass --pretrained with a pretrain run's checkpoint")
    weights = backbone_keys(state.get("state_dict", state), config.framework)
    if not weights:
        raise ConfigError(f"{config.pretrained} holds no {config.framework} backbone "
                          f"({BACKBONE_PREFIX[config.framework]}* keys); pass the checkpoint of a pretrain run of "
                          "that framework")
    with warnings.catch_warnings():  # into a meta network (a plan) the copies are no-ops, and torch says so
        warnings.simplefilter("ignore")
        missing, unexpected = model.load_state_dict(weights, strict=False)
    if set(missing) != {"fc.weight", "fc.bias"} or unexpected:
        raise ConfigError(f"{config.pretrained} does not fit an --arch {config.arch} backbone (missing "
                          f"{[k for k in missing if not k.startswith('fc.')][:3]}, unexpected {unexpected[:3]}); "
                          "pass the --arch it was pretrained with")


@dataclass
class NasiamPlan:
    """A NASiam command with every input checked (:func:`plan_nasiam`); nothing written yet."""

    config: NasiamConfig
    device: torch.device
    dataset: ImageDataset | FolderDataset
    run_dir: Path
    resume_state: dict | None
    detail: str

    def plan(self) -> Plan:
        c, data = self.config, self.dataset
        folder = (f"resumed at epoch {self.resume_state['epoch']}" if self.resume_state is not None
                  else "replaced (--force)" if c.force and self.run_dir.exists() else "new")
        items = {
            "device": str(self.device),
            "framework": c.framework, "backbone": c.arch,
            "run_folder": {"path": str(self.run_dir), "state": folder},
            "data": {"dataset": c.dataset, "path": c.data, "train_images": int(data.train_labels.numel()),
                     "test_images": int(data.test_labels.numel()), "classes": data.num_classes},
            "epochs": c.epochs, "batch": c.batch_size, "lr": c.lr,
            c.command: self.detail,
        }
        notes = {"device": describe_device(self.device), "run_folder": f"{self.run_dir} ({folder})",
                 "data": f"{c.dataset}{'' if c.data is None else ' from ' + c.data}: {data.train_labels.numel()} "
                         f"training images, {data.test_labels.numel()} test images, {data.num_classes} classes"}
        return Plan(f"sswp-fast nasiam {c.command}", items, notes)


def plan_nasiam(config: NasiamConfig, root: Path | str = ".", run: bool = True) -> NasiamPlan:
    """Check every input of a NASiam command (flags, device, dataset, the weight/arch split, the genotype, the
    pretrained backbone, run folder, resume checkpoint) without writing or allocating anything on the device."""
    config.validate()
    device = pick_device(config.device)
    if run:
        require_present(device)
    dataset = load_dataset(config.dataset, config.data)
    if config.command == "search":
        split, n = search_split(config, int(dataset.train_labels.numel()))
        detail = f"weight steps on training images [0, {split}), arch steps on [{split}, {n})"
    elif config.command == "pretrain":
        genotype = load_genotype(config)
        detail = f"heads of {config.genotype}: {genotype}"
    else:
        with torch.device("meta"):
            backbone = resnet(config.arch, dataset.num_classes, config.cifar)
        pretrained_backbone(config, backbone)
        detail = f"the frozen {config.arch} backbone of {config.pretrained}"
    run_dir = run_folder.run_dir_for(root, config.exp_group, f"nasiam-{config.framework}-{config.command}",
                                     config.note)
    run_folder.prepare_run_dir(run_dir, config.resume, config.force, create=False, resume_file=CHECKPOINT)
    resume_state = read_resume_checkpoint(run_dir / CHECKPOINT, FORMAT, "NASiam", config) if config.resume else None
    return NasiamPlan(config, device, dataset, run_dir, resume_state, detail)


def backbone_keys(state: dict[str, torch.Tensor], framework: str) -> dict[str, torch.Tensor]:
    """The backbone tensors of a framework state dict, prefix stripped, head (``fc``) left out."""
    prefix = BACKBONE_PREFIX[framework]
    return {k[len(prefix):]: v for k, v in state.items()
            if k.startswith(prefix) and not k[len(prefix):].startswith("fc.")}


def weight_step(model: nn.Module, optimizer: torch.optim.Optimizer, x1: torch.Tensor,
                x2: torch.Tensor) -> torch.Tensor:
    """One weight update on two views; the alphas get no gradient. Returns the loss (detached)."""
    model.train()
    loss = model.loss(x1, x2)
    optimizer.zero_grad(set_to_none=True)
    loss.backward(inputs=model.weight_parameters())
    optimizer.step()
    return loss.detach()


def arch_step(model: nn.Module, arch_optimizer: torch.optim.Optimizer, x1: torch.Tensor,
              x2: torch.Tensor) -> torch.Tensor:
    """One first-order DARTS update of the alphas on two held-out views: the SSL loss differentiated w.r.t. the
    alphas only, with the backbone run without its backward graph. Returns the loss (detached)."""
    model.train()
    arch = model.arch_parameters()
    loss = model.loss(x1, x2, backbone_grad=False)
    for alpha, grad in zip(arch, torch.autograd.grad(loss, arch), strict=True):
        alpha.grad = grad
    arch_optimizer.step()
    return loss.detach()


class NasiamRun(EpochRun):
    """What every NASiam command shares beyond the run scaffold (:class:`~sswp_fast.runtime.epoch_run.EpochRun`):
    data, device, layout, the checkpoint's reference keys and the per-epoch report."""

    resume_format = FORMAT
    resume_file = CHECKPOINT
    log_name = "sswp_fast.nasiam"
    model_kind = "model"

    def __init__(self, config: NasiamConfig, root: Path | str = "."):
        """Every input is checked first (:func:`plan_nasiam`), and the model and a resume checkpoint loaded,
        before the run folder is made: a refused run leaves nothing behind."""
        self.plan = plan = plan_nasiam(config, root)
        self.config = c = config
        self.device = plan.device
        self.memory_format = pick_memory_format("auto", self.device)
        """Channels-last on CPU (oneDNN's ResNet convolutions are faster in it), the default layout on CUDA."""
        self.dataset = plan.dataset
        if not isinstance(self.dataset, FolderDataset):  # resident on the device once, shared by every loader
            d = self.dataset
            self._resident = {"train": (d.train_images.to(self.device), d.train_labels.to(self.device)),
                              "test": (d.test_images.to(self.device), d.test_labels.to(self.device))}
        torch.manual_seed(c.seed)
        self.generator = torch.Generator(self.device).manual_seed(c.seed + 1)
        self.setup()
        self.best = 0.0
        if plan.resume_state is not None:
            self.restore(plan.resume_state, plan.run_dir)
        self.open_folder(plan.run_dir)
        if not c.resume:
            self.log.info(repr(argparse.Namespace(**c.to_dict())))

    @property
    def total_epochs(self) -> int:
        return self.config.epochs

    @abstractmethod
    def setup(self) -> None:
        """Model, optimizers and loaders (before the run folder is made, so bad input leaves nothing)."""

    def _loader(self, split: str, indices: torch.Tensor, drop_last: bool, cap: bool = True, batch_size: int = 0):
        """Batches of ``split`` images ``indices``: ``cap`` applies ``--steps_per_epoch``; ``batch_size`` 0 means
        ``--batch-size``."""
        c, data = self.config, self.dataset
        max_batches = c.steps_per_epoch if cap else None
        batch_size = batch_size or c.batch_size
        if isinstance(data, FolderDataset):
            return FolderBatches(data, split, indices, batch_size, self.generator, drop_last=drop_last,
                                 max_batches=max_batches, num_workers=c.workers, device=self.device)
        images, labels = self._resident[split]
        return ResidentBatches(images, labels, indices, batch_size, self.generator, drop_last=drop_last,
                               max_batches=max_batches)

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=self.memory_format)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """The kNN monitor's features of a normalised batch."""
        return self.model.features(self._layout(x))

    def _evaluation_loader(self, split: str):
        """Every image of ``split`` in batches of at least 256 (no gradients, so larger batches are cheap)."""
        n = int((self.dataset.train_labels if split == "train" else self.dataset.test_labels).numel())
        return self._loader(split, torch.arange(n), False, cap=False, batch_size=max(256, self.config.batch_size))

    def _views(self) -> SimCLRAugment:
        """The two-crop augmentation of spec §7: SimSiam crops from 20% of the image, MoCo and SimCLR from 8%;
        colour jitter (0.4, 0.4, 0.4, 0.1) with p = 0.8, grayscale 0.2, no blur on CIFAR (p = 0.5 on folders).
        On ``digits`` (ours, not the reference's) crops keep at least half of the 16×16 image and are never
        mirrored: a 4×4 crop holds no digit, and a mirrored digit is another symbol."""
        data = self.dataset
        scale = (0.2, 1.0) if self.config.framework == "simsiam" or isinstance(data, FolderDataset) else (0.08, 1.0)
        digits = data.name == "digits"
        return SimCLRAugment(data.image_size, data.mean, data.std, scale=(0.5, 1.0) if digits else scale,
                             flip_p=0.0 if digits else 0.5, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, gray_p=0.2,
                             blur_p=0.5 if isinstance(data, FolderDataset) else 0.0, blur_sigma=(0.1, 2.0))

    def state(self) -> dict:
        """The run-specific part of the checkpoint: the reference's keys (arch, state_dict, optimizer)."""
        return {"arch": self.config.arch, "state_dict": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state(self, state: dict) -> None:
        """Restore :meth:`state`."""
        self.model.load_state_dict(state["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])

    def resume_state(self) -> dict:
        return {"best": self.best, "generator": self.generator.get_state(), **self.state()}

    def load_resume_state(self, state: dict) -> None:
        self.load_state(state)
        self.generator.set_state(state["generator"])
        self.best = state["best"]

    @abstractmethod
    def train_epoch(self, epoch: int) -> dict:
        """One epoch; returns its metrics (``loss`` at least)."""

    def finish(self) -> None:
        """What the run writes after its last epoch (subclasses add their result files)."""
        self.log.info(f"finished {self.config.epochs} epochs; best {self.best:.4f}")

    def run_epoch(self, epoch: int) -> None:
        """One epoch, its report line and metrics, then the checkpoint; a non-finite loss stops the run."""
        started = time.monotonic()
        record = {"epoch": epoch, **self.train_epoch(epoch)}
        if not math.isfinite(record["loss"]):
            raise SSWPError(f"loss became {record['loss']} at epoch {epoch}; lower --lr and resume with "
                            f"--resume from {self.run_dir / CHECKPOINT}")
        record["seconds"] = time.monotonic() - started
        self.log.info(" ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()))
        self.metrics.write(record)
        self.save_resume(epoch + 1)

    def _cosine(self, epoch: int) -> None:
        """The per-epoch cosine from ``base_lr``; groups marked ``fix_lr`` keep ``base_lr``."""
        set_lr(self.optimizer, cosine_lr(self.base_lr, epoch, self.config.epochs), fixed=self.base_lr)


class _SelfSupervisedRun(NasiamRun):
    """Search and pretrain: a framework model trained with its SSL loss on two views."""

    genotype: NasiamGenotype | None = None

    def setup(self) -> None:
        c = self.config
        self.model = build_model(c, self.genotype).to(self.device, memory_format=self.memory_format)
        if c.framework == "simclr":
            self.base_lr = c.lr
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(
                self.model.weight_parameters(), lr=c.lr, weight_decay=c.weight_decay)
        else:
            self.base_lr = c.lr * c.batch_size / 256 if c.framework == "simsiam" else c.lr
            self.optimizer = torch.optim.SGD(self._weight_groups(), lr=self.base_lr, momentum=c.momentum,
                                             weight_decay=c.weight_decay)
        self.augment = self._views()

    def _weight_groups(self) -> list[dict]:
        params = self.model.weight_parameters()
        if not (self.config.fix_pred_lr and self.config.framework == "simsiam"):
            return [{"params": params}]
        predictor = {id(p) for p in self.model.predictor.parameters()}
        return [{"params": [p for p in params if id(p) not in predictor], "fix_lr": False},
                {"params": [p for p in params if id(p) in predictor], "fix_lr": True}]

    def _two_views(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._layout(self.augment(images, self.generator)), self._layout(self.augment(images, self.generator))

    def _weight_step(self, images: torch.Tensor) -> float:
        return float(weight_step(self.model, self.optimizer, *self._two_views(images)))

    def _report_step(self, epoch: int, step: int, steps: int, losses: list[float], phase: str) -> None:
        """The reference's progress line every ``--print-freq`` steps (and on the last), and the progress bar."""
        if step % self.config.print_freq == 0 or step == steps - 1:
            mean = sum(losses) / len(losses)
            self.log.info(f"Epoch: [{epoch}][{step:>3}/{steps}]\tLoss {losses[-1]:.4f} ({mean:.4f})")
        self.progress.update(epoch, step, steps, phase)

    def _adjust_lr(self, epoch: int) -> None:
        if self.config.framework != "simclr":  # the reference's SimCLR Adam has no schedule
            self._cosine(epoch)


class HeadSearchRun(_SelfSupervisedRun):
    """First-order DARTS (spec §3): weights on the first ``train_portion`` of the training set in index order,
    alphas on the rest; SimSiam and MoCo take an arch step before every weight step, SimCLR one per epoch."""

    def setup(self) -> None:
        super().setup()
        c = self.config
        arch = self.model.arch_parameters()
        if c.framework == "simsiam":
            self.arch_optimizer: torch.optim.Optimizer = torch.optim.AdamW(
                arch, lr=c.search_lr, betas=(0.9, 0.999), weight_decay=c.search_wd)
        else:
            self.arch_optimizer = torch.optim.Adam(arch, lr=c.search_lr, betas=(0.9, 0.999), weight_decay=c.search_wd)
        split, n = search_split(c, int(self.dataset.train_labels.numel()))
        self.train_loader = self._loader("train", torch.arange(split), drop_last=True)
        self.arch_loader = self._loader("train", torch.arange(split, n), drop_last=True, cap=False)

    def arch_step(self, images: torch.Tensor) -> float:
        """One alpha update on a held-out batch of uint8 ``images`` (:func:`arch_step`)."""
        return float(arch_step(self.model, self.arch_optimizer, *self._two_views(images)))

    def train_epoch(self, epoch: int) -> dict:
        c = self.config
        self._adjust_lr(epoch)
        per_step = c.framework != "simclr"
        arch_batches = cycle(self.arch_loader)  # a fresh pass every epoch, so a resumed epoch sees the same batches
        arch_losses = [] if per_step else [self.arch_step(next(arch_batches)[0])]
        losses = []
        steps = len(self.train_loader)
        for i, (images, _) in enumerate(self.train_loader):
            if per_step:
                arch_losses.append(self.arch_step(next(arch_batches)[0]))
            losses.append(self._weight_step(images))
            self._report_step(epoch, i, steps, losses, "search")
        return {"loss": sum(losses) / len(losses), "arch_loss": sum(arch_losses) / len(arch_losses)}

    def state(self) -> dict:
        return {**super().state(), "alphas": [a.detach().clone() for a in self.model.arch_parameters()],
                "search_optimizer": self.arch_optimizer.state_dict()}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.arch_optimizer.load_state_dict(state["search_optimizer"])

    def genotype_found(self) -> NasiamGenotype:
        """The ``'sparse'`` parse of every head's alphas (spec §5.1)."""
        cells = [m for m in self.model.modules() if isinstance(m, HeadSearchCell) and m.alphas.requires_grad]
        genes = [derive_genes(cell.alphas.detach(), self.config.framework) for cell in cells]
        fields = {"simsiam": ("encoder", "predictor"), "moco": ("encoder",), "simclr": ("predictor",)}
        return NasiamGenotype(self.config.framework, **dict(zip(fields[self.config.framework], genes, strict=True)))

    def finish(self) -> None:
        super().finish()
        path = self.run_dir / genotype_filename(self.config.dataset, self.config.arch)
        write_genotype(path, self.genotype_found())
        self.log.info(f"genotype: {path}")


class PretrainRun(_SelfSupervisedRun):
    """Pretraining with a genotype's heads (spec §6) on the whole training set; after every epoch the kNN monitor
    (:mod:`sswp_fast.stages.knn`) on the framework's features, and ``pretrained_model_best.pth.tar`` at its best."""

    def setup(self) -> None:
        self.genotype = load_genotype(self.config)
        super().setup()
        n = int(self.dataset.train_labels.numel())
        self.train_loader = self._loader("train", torch.arange(n), drop_last=True)
        self.plain = EvalTransform(self.dataset.mean, self.dataset.std)

    def train_epoch(self, epoch: int) -> dict:
        c = self.config
        self._adjust_lr(epoch)
        losses = []
        steps = len(self.train_loader)
        for i, (images, _) in enumerate(self.train_loader):
            losses.append(self._weight_step(images))
            self._report_step(epoch, i, steps, losses, "pretrain")
        self.model.eval()
        accuracy = knn_accuracy(self._features, self._evaluation_loader("train"),
                                self._evaluation_loader("test"), self.plain, self.dataset.num_classes, c.k)
        if accuracy > self.best:
            self.best = accuracy
            atomic_save(self.state(), self.run_dir / "pretrained_model_best.pth.tar")
        return {"loss": sum(losses) / len(losses), "knn_top1": accuracy}


class LinclsRun(NasiamRun):
    """Linear classification (spec §7b): the backbone of ``--pretrained`` frozen with BatchNorm in eval mode, a
    fresh ``fc`` (N(0, 0.01), bias 0) trained with SGD (Adam for SimCLR) and a per-epoch cosine LR."""

    def setup(self) -> None:
        c = self.config
        self.model = resnet(c.arch, self.dataset.num_classes, c.cifar).to(self.device, memory_format=self.memory_format)
        nn.init.normal_(self.model.fc.weight, std=0.01)
        nn.init.zeros_(self.model.fc.bias)
        pretrained_backbone(c, self.model)
        for name, p in self.model.named_parameters():
            p.requires_grad_(name.startswith("fc."))
        fc = list(self.model.fc.parameters())
        if c.framework == "simclr":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(fc, lr=c.lr, weight_decay=c.weight_decay)
        else:
            self.base_lr = c.lr * c.batch_size / 256 if c.framework == "simsiam" else c.lr
            self.optimizer = torch.optim.SGD(fc, lr=self.base_lr, momentum=c.momentum, weight_decay=c.weight_decay)
        data = self.dataset
        self.augment = SupervisedAugment(data.image_size, data.mean, data.std)
        self.plain = EvalTransform(data.mean, data.std)
        self.train_loader = self._loader("train", torch.arange(int(data.train_labels.numel())), drop_last=False)
        self.test_loader = self._evaluation_loader("test")

    def train_epoch(self, epoch: int) -> dict:
        if self.config.framework != "simclr":
            self._cosine(epoch)
        self.model.eval()  # frozen BatchNorm: a true linear probe
        losses = []
        for images, labels in self.train_loader:
            with torch.no_grad():
                h = self.model.features(self._layout(self.augment(images, self.generator)))
            loss = F.cross_entropy(self.model.fc(h), labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            losses.append(float(loss.detach()))
        top1, top5 = self.evaluate()
        if top1 > self.best:
            self.best = top1
            atomic_save(self.state(), self.run_dir / "model_best.pth.tar")
        return {"loss": sum(losses) / len(losses), "top1": top1, "top5": top5}

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        hits = torch.zeros(2, dtype=torch.float64)
        count = 0
        for images, labels in self.test_loader:
            logits = self.model(self._layout(self.plain(images)))
            hits += torch.tensor([float(a) for a in topk_accuracy(logits, labels)], dtype=torch.float64) * len(labels)
            count += len(labels)
        top1, top5 = (hits / count).tolist()
        return top1, top5


RUNS = {"search": HeadSearchRun, "pretrain": PretrainRun, "lincls": LinclsRun}


def run_nasiam(config: NasiamConfig, root: Path | str = ".") -> Path:
    """Run ``config.command``; returns its run folder."""
    return RUNS[config.command](config, root).run()
