"""Compact (discrete) networks built from an exported architecture (spec §9), and weight preservation from a
search checkpoint into them (spec §10).

A compact cell runs exactly the 8 ``(op_name, input_index)`` choices of its architecture cell: two ops per
node, summed, the 4 nodes concatenated. Stems, channel schedule and reduction positions are those of
:class:`~sswp_fast.search.supernet.SearchNetwork`, and module names follow the reference, so ``state_dict()`` keys
are the reference's (``stem.*`` or ``stem0.*``/``stem1.*``, ``cells.i.preprocess{0,1}.*``, ``cells.i._ops.j.*``,
``aux_head.*`` for the CIFAR-stem net and ``auxiliary_head.*`` for the ImageNet-stem net (quirk 26),
``classifier.*``).

Deliberate differences from the reference:

* ``drop_path_prob`` defaults to 0 (the reference raises AttributeError until it is set);
* global pooling is adaptive for the ImageNet stem too (the reference hard-codes ``AvgPool2d(7)``);
* the ImageNet-stem net always uses the ImageNet auxiliary head (the reference picks the head by class count,
  which breaks for anything but 1000 classes);
* an auxiliary head whose input is not the size its ``AvgPool2d(5)`` expects (8×8 CIFAR, 7×7 ImageNet) pools
  adaptively to the 2×2 its last convolution needs, so small inputs such as the 16×16 digits work;
* the auxiliary head's first ReLU is not in place (the reference's rectifies the cell output that later
  cells read);
* :func:`load_search_weights` refuses a checkpoint that does not fit instead of letting the strict load fail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sswp_fast.errors import CheckpointError, ConfigError
from sswp_fast.search.export import Arch, validate_arch
from sswp_fast.search.space import CANDIDATES, Identity, build_op
from sswp_fast.search.supernet import (
    HEAD_DIM_SIMCLR,
    MULTIPLIER,
    NODE_EDGES,
    STEPS,
    build_preprocessing,
    build_stems,
    reduction_cells,
)

HEADS = ("classifier", "projection")
"""``classifier``: ``Linear(C_prev, num_classes)``; ``projection``: the SimCLR pretraining head (spec §9.4)."""

AUX_VARIANTS = ("cifar", "tiny", "imagenet")
AUX_CHANNELS = 768
HEAD_PREFIXES = ("classifier.", "aux_head.", "auxiliary_head.")


def drop_path(x: torch.Tensor, drop_prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero whole samples of ``x`` with probability ``drop_prob`` and scale the kept ones by ``1 / keep``."""
    keep = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep, generator=generator)
    return x / keep * mask


class CompactCell(nn.Module):
    """One discrete cell: preprocessing as in the search cell, then the 8 chosen ops (``_ops``, arch order)."""

    def __init__(self, arch_cell: Sequence[tuple[str, int]], c_prev_prev: int, c_prev: int, channels: int,
                 reduction: bool, reduction_prev: bool, affine: bool):
        super().__init__()
        self.reduction = reduction
        self.preprocess0, self.preprocess1 = build_preprocessing(c_prev_prev, c_prev, channels, reduction_prev, affine)
        self._indices = tuple(index for _, index in arch_cell)
        self._ops = nn.ModuleList(
            build_op(name, channels, 2 if reduction and index < 2 else 1, affine) for name, index in arch_cell)
        # drop-path applies to every op but the stride-1 skip (pools and the factorized-reduce skip included)
        self._droppable = tuple(not isinstance(op, Identity) for op in self._ops)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        drop = self.training and drop_prob > 0
        for node in range(STEPS):
            total: torch.Tensor | None = None
            for k in (2 * node, 2 * node + 1):
                h = self._ops[k](states[self._indices[k]])
                if drop and self._droppable[k]:
                    h = drop_path(h, drop_prob)
                total = h if total is None else total + h
            states.append(total)
        return torch.cat(states[2:], dim=1)


class AuxPool(nn.Module):
    """``AvgPool2d(kernel, stride)`` of the auxiliary heads where it yields the 2×2 the head expects;
    adaptive average pooling to 2×2 for inputs of other sizes."""

    def __init__(self, kernel: int, stride: int):
        super().__init__()
        self.kernel = kernel
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if all(size >= self.kernel and (size - self.kernel) // self.stride == 1 for size in x.shape[-2:]):
            return F.avg_pool2d(x, self.kernel, self.stride)
        return F.adaptive_avg_pool2d(x, 2)


class AuxiliaryHead(nn.Module):
    """Auxiliary classifier on the output of cell ``2 * layers // 3`` (spec §9.2), ``features`` then
    ``classifier``; ``variant`` is ``"cifar"`` (8×8 input), ``"tiny"`` (200-class tiny-ImageNet, 16×16 input)
    or ``"imagenet"`` (7×7 input)."""

    def __init__(self, channels: int, num_classes: int, variant: str):
        super().__init__()
        if variant == "tiny":
            self.features = nn.Sequential(
                nn.Conv2d(channels, 64, 3, padding=1, bias=False),
                nn.AvgPool2d(2, stride=2),
                nn.ReLU(inplace=True),
                nn.Conv2d(64, 128, 1, bias=False),
                AuxPool(5, 3),
                nn.ReLU(inplace=True),
                nn.BatchNorm2d(128),
                nn.ReLU(inplace=True),
                nn.Conv2d(128, AUX_CHANNELS, 2, bias=False),
                nn.BatchNorm2d(AUX_CHANNELS),
                nn.ReLU(inplace=True),
            )
        elif variant in ("cifar", "imagenet"):
            self.features = nn.Sequential(
                nn.ReLU(inplace=False),
                AuxPool(5, 3 if variant == "cifar" else 2),
                nn.Conv2d(channels, 128, 1, bias=False),
                nn.BatchNorm2d(128),
                nn.ReLU(inplace=True),
                nn.Conv2d(128, AUX_CHANNELS, 2, bias=False),
                nn.BatchNorm2d(AUX_CHANNELS),
                nn.ReLU(inplace=True),
            )
        else:
            raise ValueError(f"unknown auxiliary head variant {variant!r}; expected one of {AUX_VARIANTS}")
        self.classifier = nn.Linear(AUX_CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def _checked_arch(arch: Arch) -> Arch:
    try:
        return validate_arch(arch)
    except ValueError as exc:
        raise ConfigError(f"invalid architecture: {exc}; pass cells of 8 (op_name, input) pairs as net.config "
                          "holds them, or a built-in name") from None


class CompactNetwork(nn.Module):
    """The discrete network of ``arch`` (one cell per entry, so ``layers = len(arch)``), spec §9.

    ``imagenet`` selects the ImageNet stems (``stem0``/``stem1``) of spec §9.3 instead of the CIFAR stem.
    ``head="classifier"`` ends in ``Linear(C_prev, num_classes)``, with an auxiliary head after cell
    ``2 * layers // 3`` when ``auxiliary`` (``aux_head``; ``auxiliary_head`` with the ImageNet stems; the
    200-class tiny-ImageNet variant for 200 classes on the CIFAR stem). ``head="projection"`` is the SimCLR
    pretraining net of spec §9.4: ``Sequential(Linear(C_prev, C_prev), ReLU, Linear(C_prev, 128))``, no
    auxiliary head and ``num_classes`` unused. Set ``drop_path_prob`` to enable drop-path in training.
    """

    def __init__(self, init_channels: int, num_classes: int, arch: Arch, auxiliary: bool = True,
                 affine: bool = True, head: str = "classifier", imagenet: bool = False, stem_multiplier: int = 3):
        super().__init__()
        if head not in HEADS:
            raise ConfigError(f"unknown compact-network head {head!r}; pass one of {', '.join(HEADS)}")
        self.arch = _checked_arch(arch)
        self.layers = len(self.arch)
        self.imagenet = imagenet
        self.drop_path_prob = 0.0
        c = init_channels
        stems, c_prev, reduction_prev = build_stems(c, imagenet, stem_multiplier)
        for name, stem in stems.items():
            self.add_module(name, stem)
        c_prev_prev = c_prev
        self.aux_cell = 2 * self.layers // 3
        self.cells = nn.ModuleList()
        c_curr = c
        reductions = reduction_cells(self.layers)
        aux_channels = c_prev
        for idx, arch_cell in enumerate(self.arch):
            reduction = idx in reductions
            if reduction:
                c_curr *= 2
            self.cells.append(CompactCell(arch_cell, c_prev_prev, c_prev, c_curr, reduction, reduction_prev, affine))
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, MULTIPLIER * c_curr
            if idx == self.aux_cell:
                aux_channels = c_prev
        self.auxiliary = auxiliary and head == "classifier"
        self.aux_name = "auxiliary_head" if imagenet else "aux_head"
        if self.auxiliary:
            variant = "imagenet" if imagenet else "tiny" if num_classes == 200 else "cifar"
            self.add_module(self.aux_name, AuxiliaryHead(aux_channels, num_classes, variant))
        self.feature_dim = c_prev
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        if head == "projection":
            self.classifier: nn.Module = nn.Sequential(
                nn.Linear(c_prev, c_prev), nn.ReLU(), nn.Linear(c_prev, HEAD_DIM_SIMCLR))
        else:
            self.classifier = nn.Linear(c_prev, num_classes)

    @staticmethod
    def is_head_key(name: str) -> bool:
        """True for parameter / state-dict names of the classifier or auxiliary head."""
        return name.startswith(HEAD_PREFIXES)

    def head_parameter_names(self) -> list[str]:
        """Names of the classifier and auxiliary-head parameters (what ``--fix`` and linear evaluation train)."""
        return [name for name, _ in self.named_parameters() if self.is_head_key(name)]

    def _backbone(self, x: torch.Tensor, with_aux: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.imagenet:
            s0 = self.stem0(x)
            s1 = self.stem1(s0)
        else:
            s0 = s1 = self.stem(x)
        aux_logits = None
        for idx, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if with_aux and idx == self.aux_cell:
                aux_logits = getattr(self, self.aux_name)(s1)
        return self.global_pooling(s1).flatten(1), aux_logits

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled ``[B, feature_dim]`` backbone features (no head), for linear evaluation and kNN."""
        return self._backbone(x, with_aux=False)[0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(logits or projection, auxiliary logits)``; the latter only in training with an auxiliary head."""
        pooled, aux_logits = self._backbone(x, with_aux=self.auxiliary and self.training)
        return self.classifier(pooled), aux_logits


# ---- weight preservation (spec §10) --------------------------------------------------------------------

@dataclass
class TransferReport:
    """What :func:`load_search_weights` did, by state-dict key.

    ``copied``: compact keys filled from the checkpoint. ``fresh``: compact keys that kept their current
    (fresh) values: head and auxiliary-head keys the checkpoint lacks or holds in another shape, and BN affine
    weight/bias a non-affine search does not have. ``ignored``: checkpoint keys nothing was taken from
    (architecture logits and gates, unchosen ops, a head the compact network does not have).
    """

    copied: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def _search_key(key: str, arch: Arch) -> str | None:
    """The search-network key of compact key ``cells.i._ops.j.<rest>``; None for any other key."""
    parts = key.split(".", 4)
    if len(parts) != 5 or parts[0] != "cells" or parts[2] != "_ops":
        return None
    cell, position, rest = int(parts[1]), int(parts[3]), parts[4]
    name, index = arch[cell][position]
    edge = NODE_EDGES[position // 2][index]
    return f"cells.{cell}.edges.{edge}._ops.{CANDIDATES.index(name)}.{rest}"


_FIX = "the checkpoint was searched with different --init_channels, --layers or dataset; pass the search's values"


def load_search_weights(model: CompactNetwork, state: dict[str, torch.Tensor]) -> TransferReport:
    """Load a search checkpoint's ``state`` (or a compact checkpoint's) into ``model``, spec §10.

    A compact key present in ``state`` is copied as is (stem, preprocessing, a compact checkpoint); a cell op
    key ``cells.i._ops.j.*`` takes the weights of the chosen op of the chosen edge in the search network,
    ``cells.i.edges.{NODE_EDGES[node][input]}._ops.{op}.*``. Head and auxiliary-head keys the checkpoint
    lacks, or holds in another shape, keep their current values; so do the BN affine weight/bias of an
    affine compact network loaded from a non-affine search (1 and 0 when fresh, which computes what the
    search computed). Any other missing key, any shape mismatch, or a checkpoint with more cells raises
    :class:`CheckpointError`; the reference instead copies silently or fails in ``load_state_dict``.
    The network is finally loaded with ``strict=True``.
    """
    own = model.state_dict()
    bn_stats = {f"{name}.{param}": f"{name}.running_mean"
                for name, module in model.named_modules()
                if isinstance(module, nn.BatchNorm2d) and module.affine for param in ("weight", "bias")}

    def source_of(key: str) -> str | None:
        if key in state:
            return key
        mapped = _search_key(key, model.arch)
        return mapped if mapped is not None and mapped in state else None

    report = TransferReport()
    loaded: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for key, value in own.items():
        source = source_of(key)
        if source is None:
            stats = bn_stats.get(key)
            if model.is_head_key(key) or (stats is not None and source_of(stats) is not None):
                loaded[key] = value
                report.fresh.append(key)
                continue
            mapped = _search_key(key, model.arch)
            what = key if mapped is None else f"{mapped} (for the compact network's {key})"
            raise CheckpointError(f"checkpoint lacks {what}: missing; {_FIX}")
        tensor = state[source]
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"checkpoint entry {source} is a {type(tensor).__name__}, not a tensor; "
                                  "pass a search or compact state_dict checkpoint")
        if tensor.shape != value.shape:
            if model.is_head_key(key):
                loaded[key] = value
                report.fresh.append(key)
                continue
            raise CheckpointError(f"checkpoint {source} has shape {list(tensor.shape)} but the compact network's "
                                  f"{key} needs {list(value.shape)}; {_FIX}")
        loaded[key] = tensor
        used.add(source)
        report.copied.append(key)
    cells = {int(k.split(".")[1]) for k in state if k.startswith("cells.") and k.split(".")[1].isdigit()}
    if cells and max(cells) >= model.layers:
        raise CheckpointError(f"checkpoint has {max(cells) + 1} cells but the architecture has {model.layers}; "
                              f"{_FIX}")
    report.ignored = [k for k in state if k not in used]
    model.load_state_dict(loaded, strict=True)
    return report
