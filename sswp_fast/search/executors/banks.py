"""Persistent parameter banks of the device executor: the candidate ops' weights, BatchNorm running statistics and
batch counts of every slot group, stored stacked once and kept as the source of truth.

The device executor (:mod:`sswp_fast.search.executors.device`) evaluates the slots (edges) of a group together, so it
wants each candidate tensor stacked along the slots: ``[G, *shape]`` for a convolution weight, ``[8, G, C]`` for a
BatchNorm statistic or affine parameter (row = op index, so each slot's row is picked by its sampled op; rows
of ops without that BatchNorm are scratch, and so is the last, row ``-1``, which a dropped edge indexes).
:func:`bind_banks` allocates those stacks once, in three flat tensors per network (weights, statistics, batch
counts), and re-points every per-edge parameter and buffer of
the reference module tree at its row. The modules, and therefore the ``state_dict`` keys, loading, the PyTorch
executor and export, see the same storage: nothing is stacked or written back per step.

For autograd, each cell's weights are one leaf tensor, a view of the network's flat weights, that a step splits
into the banks. The backward pass so delivers one flat gradient per cell, which
:class:`~sswp_fast.search.executors.bank_optimizer.MaskedBankUpdate` updates in a few launches, masked by the ops that
ran.

Bind after moving the network to its device and dtype (``.to()`` gives parameters new storage), and after any
``copy.deepcopy`` of it (a copy gets independent parameters and must be bound on its own).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from math import prod

import torch
from torch import nn

from sswp_fast.kernels.slot_sum import FIRST, NONE, SECOND, SKIP
from sswp_fast.search.space import (
    CANDIDATES,
    NUM_CANDIDATES,
    PARAMETRIC_INDICES,
    POOL_INDICES,
    SKIP_INDEX,
    FactorizedReduce,
)

SEP_INDICES = (CANDIDATES.index("sep_conv_3x3"), CANDIDATES.index("sep_conv_5x5"))
"""The ops with a second half (``sep_conv_*``)."""

BANK_ROWS = NUM_CANDIDATES + 1
"""Rows of a BatchNorm bank: one per op, and a scratch row last (``-1``: a dropped edge, ``--prune_edges``)."""


@dataclass
class _Entry:
    """One bank row: the tensor ``module.<name>`` of slot ``slot`` in row ``row``."""

    row: int
    slot: int
    module: nn.Module
    name: str


@dataclass
class _Block:
    """A bank: ``[rows, slots, *shape]`` whose ``(row, slot)`` entries are bound to module tensors, the rest
    filled with ``fill`` (scratch)."""

    rows: int
    slots: int
    shape: tuple[int, ...]
    fill: float
    entries: list[_Entry]

    @property
    def numel(self) -> int:
        return self.rows * self.slots * prod(self.shape)


@dataclass
class BatchStats:
    """A stage's running statistics: ``mean``, ``var`` ``[8, G, C]`` and ``count`` ``[8, G]``, row = op."""

    mean: torch.Tensor
    var: torch.Tensor
    count: torch.Tensor


@dataclass
class GroupBanks:
    """One slot group's banks as a step uses them.

    ``first``: ``w_dw``, ``w_pw`` of the first half of each parametric op (``PARAMETRIC_INDICES`` order),
    ``[G, ...]``; ``second``: the same for the second half of each ``sep_conv``; ``reduce``: the factorized
    reduce's two convolutions ``[G*C/2, C, 1, 1]`` (stride-2 groups only); ``bn1`` / ``bn2``: (weight, bias)
    ``[8, G, C]`` of the two BatchNorm stages (affine networks only); ``stats1`` / ``stats2``: their running
    statistics. ``grads`` (a weight step on the Triton kernels): zero fp32 tensors, views of the cell's one
    gradient buffer, into which the backward pass adds the gradients of ``first``, ``second`` and ``reduce``
    (each in its banks' order), so that no kernel fills a gradient of its own."""

    first: list[torch.Tensor]
    second: list[torch.Tensor]
    reduce: tuple[torch.Tensor, torch.Tensor] | None
    bn1: tuple[torch.Tensor, torch.Tensor] | None
    bn2: tuple[torch.Tensor, torch.Tensor] | None
    stats1: BatchStats
    stats2: BatchStats
    slots: torch.Tensor
    """``arange(G)`` on the device (a constant, made once)."""
    grads: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None

    def weights(self) -> list[torch.Tensor]:
        """The differentiable banks, in a fixed order (what :meth:`with_weights` takes back)."""
        out = [*self.first, *self.second, *(self.reduce or ())]
        for pair in (self.bn1, self.bn2):
            out += list(pair or ())
        return out

    def with_weights(self, weights: Sequence[torch.Tensor]) -> GroupBanks:
        """These banks with :meth:`weights` replaced by ``weights`` (same order and shapes)."""
        it = iter(weights)
        first = [next(it) for _ in self.first]
        second = [next(it) for _ in self.second]
        reduce = None if self.reduce is None else (next(it), next(it))
        bn1 = None if self.bn1 is None else (next(it), next(it))
        bn2 = None if self.bn2 is None else (next(it), next(it))
        return GroupBanks(first, second, reduce, bn1, bn2, self.stats1, self.stats2, self.slots, self.grads)


@dataclass
class _GroupLayout:
    """Where one slot group's banks are: indices into its cell's weight blocks and statistics blocks."""

    slots: int
    channels: int
    stride: int
    affine: bool
    weights: list[_Block] = field(default_factory=list)
    stats: list[_Block] = field(default_factory=list)
    counts: list[_Block] = field(default_factory=list)


def _stage_bns(ops: nn.ModuleList, stride: int) -> tuple[dict[int, nn.BatchNorm2d], dict[int, nn.BatchNorm2d]]:
    """The BatchNorm each op ends its first stage with (by op index), and those of the second stage."""
    first = {op: ops[op][1] for op in POOL_INDICES}
    if stride != 1:
        reduce = ops[SKIP_INDEX]
        assert isinstance(reduce, FactorizedReduce)
        first[SKIP_INDEX] = reduce.bn
    for op in PARAMETRIC_INDICES:
        first[op] = ops[op].halves()[0][2]
    second = {op: ops[op].halves()[1][2] for op in SEP_INDICES}
    return first, second


def _group_layout(edge_ops: Sequence[nn.ModuleList], stride: int, channels: int) -> _GroupLayout:
    """The banks of the slots ``edge_ops`` (one ModuleList of the seven candidates per edge)."""
    g = len(edge_ops)
    stages = [_stage_bns(ops, stride) for ops in edge_ops]
    affine = stages[0][0][PARAMETRIC_INDICES[0]].affine
    layout = _GroupLayout(g, channels, stride, affine)

    def conv_block(pick) -> _Block:
        modules = [pick(ops) for ops in edge_ops]
        shape = tuple(modules[0].weight.shape)
        return _Block(1, g, shape, 0.0, [_Entry(0, s, m, "weight") for s, m in enumerate(modules)])

    for half, ops_with_half in ((0, PARAMETRIC_INDICES), (1, SEP_INDICES)):
        for op in ops_with_half:
            for part in (0, 1):  # depthwise, pointwise
                layout.weights.append(conv_block(lambda ops, op=op, half=half, part=part: ops[op].halves()[half][part]))
    if stride != 1:
        layout.weights += [conv_block(lambda ops: ops[SKIP_INDEX].conv_1),
                           conv_block(lambda ops: ops[SKIP_INDEX].conv_2)]

    def row_block(stage: int, name: str, fill: float, shape: tuple[int, ...]) -> _Block:
        entries = [_Entry(op, s, bns[stage][op], name) for s, bns in enumerate(stages) for op in bns[stage]
                   if getattr(bns[stage][op], name) is not None]
        return _Block(BANK_ROWS, g, shape, fill, entries)

    for stage in (0, 1):
        if affine:
            layout.weights += [row_block(stage, "weight", 1.0, (channels,)), row_block(stage, "bias", 0.0, (channels,))]
        layout.stats += [row_block(stage, "running_mean", 0.0, (channels,)),
                         row_block(stage, "running_var", 1.0, (channels,))]
        layout.counts.append(row_block(stage, "num_batches_tracked", 0.0, ()))
    return layout


def _selection_table(device: torch.device) -> torch.Tensor:
    """:attr:`CellBanks.selection`: negative variants and pool kinds for the ops without that stage."""
    table = torch.full((6, BANK_ROWS), -1, dtype=torch.int64)
    table[0, list(PARAMETRIC_INDICES)] = torch.arange(len(PARAMETRIC_INDICES))
    table[1, list(SEP_INDICES)] = torch.arange(len(SEP_INDICES))
    table[2, list(POOL_INDICES)] = torch.arange(len(POOL_INDICES))
    table[3:5] = FIRST
    table[3:5, list(SEP_INDICES)] = SECOND
    table[3, SKIP_INDEX] = SKIP  # the input; at stride 2 the skip is a factorized reduce, a first stage
    table[3:5, -1] = NONE
    table[5] = 0
    table[5, SKIP_INDEX] = 1  # runs the factorized reduce (at stride 2)
    return table.to(device)


def _fill_and_bind(blocks: list[_Block], flat: torch.Tensor) -> list[torch.Tensor]:
    """Copy the blocks' module tensors into ``flat`` (scratch rows get their fill), re-point every module tensor at
    its row, and return the blocks as ``[rows, slots, *shape]`` views of ``flat``."""
    views, offset = [], 0
    for block in blocks:
        view = flat[offset:offset + block.numel].view(block.rows, block.slots, *block.shape)
        offset += block.numel
        with torch.no_grad():
            view.fill_(block.fill)
            for entry in block.entries:
                view[entry.row, entry.slot].copy_(getattr(entry.module, entry.name))
        for entry in block.entries:
            row = view[entry.row, entry.slot]
            if entry.name in entry.module._parameters:
                entry.module._parameters[entry.name].data = row
            else:
                entry.module._buffers[entry.name] = row
        views.append(view)
    return views


class CellBanks:
    """The banks of one cell: ``weights`` (one leaf tensor, a view of the network's flat weights), and the
    statistics and counts, per node and slot group in :func:`sswp_fast.search.executors.device.slot_groups` order."""

    def __init__(self, layouts: list[list[_GroupLayout]], weights: torch.Tensor, stats: torch.Tensor,
                 counts: torch.Tensor):
        self.layouts = layouts
        blocks = [b for node in layouts for layout in node for b in layout.weights]
        self._shapes = [tuple(v.shape) for v in _fill_and_bind(blocks, weights)]
        self.weights = weights.detach().requires_grad_(True)
        """The cell's weight banks, flat: the leaf that autograd differentiates."""
        self._sizes = [b.numel for b in blocks]
        stat_views = iter(_fill_and_bind([b for node in layouts for lay in node for b in lay.stats], stats))
        count_views = iter(_fill_and_bind([b for node in layouts for lay in node for b in lay.counts], counts))
        self._stats = [[(BatchStats(next(stat_views), next(stat_views), next(count_views)),
                         BatchStats(next(stat_views), next(stat_views), next(count_views)),
                         torch.arange(layout.slots, device=weights.device)) for layout in node]
                       for node in layouts]
        self.selection = _selection_table(weights.device)
        """``[6, BANK_ROWS]``: by field of a path's :class:`~sswp_fast.search.executors.device.Selection` (first-stage
        variant, ``sep_conv`` second-half variant, pool kind, :func:`~sswp_fast.kernels.slot_sum.slot_sum` source at
        stride 1 and at stride 2, factorized-reduce flag) and op (-1 last: a dropped edge), what a slot running that op
        reads: one gather selects a whole path."""

    def bound_params(self) -> list[tuple[nn.Parameter, int]]:
        """The per-edge parameters this cell's banks hold, with their offsets in :attr:`weights`."""
        return _bound_params(self.layouts)

    def views(self, trainable: bool = True, grads: torch.Tensor | None = None) -> list[list[GroupBanks]]:
        """Every group's banks for one evaluation, as views of :attr:`weights` (differentiable when autograd is
        on and ``trainable``; an arch step, which differentiates the gates only, takes them detached, so that our
        kernels compute no weight gradient): no copy, no launch. ``grads``, a zero fp32 tensor shaped like
        :attr:`weights`, gives each group its :attr:`GroupBanks.grads` (views)."""
        weights = self.weights if trainable else self.weights.detach()
        chunks = iter(w.view(shape) for w, shape in zip(weights.split(self._sizes), self._shapes, strict=True))
        nodes, at = [], 0  # at: the offset of the next chunk
        for node, stats in zip(self.layouts, self._stats, strict=True):
            groups = []
            for layout, (stats1, stats2, slots) in zip(node, stats, strict=True):
                first = [next(chunks).flatten(0, 1) for _ in range(2 * len(PARAMETRIC_INDICES))]
                second = [next(chunks).flatten(0, 1) for _ in range(2 * len(SEP_INDICES))]
                reduce = None
                if layout.stride != 1:
                    reduce = tuple(next(chunks).flatten(0, 2) for _ in range(2))
                bn1 = bn2 = None
                if layout.affine:
                    bn1 = (next(chunks), next(chunks))
                    bn2 = (next(chunks), next(chunks))
                regions = None
                if grads is not None:  # first, second, reduce: consecutive chunks in that order, a slice each
                    ends = list(itertools.accumulate((sum(t.numel() for t in part) for part in
                                                      (first, second, reduce or ())), initial=at))
                    regions = (grads[ends[0]:ends[1]], grads[ends[1]:ends[2]],
                               grads[ends[2]:ends[3]] if reduce else None)
                group = GroupBanks(first, second, reduce, bn1, bn2, stats1, stats2, slots, regions)
                at += sum(t.numel() for t in group.weights())
                groups.append(group)
            nodes.append(groups)
        return nodes


def _cell_layouts(cell: nn.Module) -> list[list[_GroupLayout]]:
    from sswp_fast.search.executors.device import slot_groups
    from sswp_fast.search.supernet import NODE_EDGES

    return [[_group_layout(group.ops, group.stride, group.channels) for group, _ in node]
            for node in slot_groups(cell, NODE_EDGES)]


def _flat_size(layouts: list[list[_GroupLayout]], kind: str) -> int:
    """Elements of a cell's ``kind`` blocks (``weights``, ``stats`` or ``counts``) in its flat tensor."""
    return sum(b.numel for node in layouts for layout in node for b in getattr(layout, kind))


def _bound_params(layouts: list[list[_GroupLayout]]) -> list[tuple[nn.Parameter, int]]:
    """The per-edge parameters a cell's weight banks hold, with their offsets in the cell's flat weights."""
    out, offset = [], 0
    for node in layouts:
        for layout in node:
            for block in layout.weights:
                row = block.numel // (block.rows * block.slots)
                for entry in block.entries:
                    start = offset + (entry.row * block.slots + entry.slot) * row
                    out.append((entry.module._parameters[entry.name], start))
                offset += block.numel
    return out


class NetworkBanks:
    """The banks of every cell of a search network, in three flat tensors: ``weights``, ``stats`` and ``counts``.

    For the masked optimizer: ``params`` are the per-edge parameters the banks hold, ``offsets`` where each
    starts in ``weights``, ``param_op`` ``[len(params) + 1]`` the op each belongs to (``cell * 98 + edge * 7 +
    op``; the last entry, for scratch rows, is an op that never runs) and ``element_param`` ``[weights.numel()]``
    the parameter of every element."""

    def __init__(self, net: nn.Module):
        layouts = [_cell_layouts(cell) for cell in net.cells]
        param = next(net.parameters())
        sizes = [[_flat_size(cell, kind) for cell in layouts] for kind in ("weights", "stats", "counts")]
        self.weights = torch.empty(sum(sizes[0]), device=param.device, dtype=param.dtype)
        self.stats = torch.empty(sum(sizes[1]), device=param.device, dtype=param.dtype)
        self.counts = torch.empty(sum(sizes[2]), device=param.device, dtype=torch.long)
        self.cells: list[CellBanks] = []
        starts = [0, 0, 0]
        edges = len(net.cells[0].edges)
        scratch_op = len(net.cells) * edges * NUM_CANDIDATES
        self.params: list[nn.Parameter] = []
        self.offsets: list[int] = []
        op_of: list[int] = []
        element_param = torch.full((self.weights.numel(),), -1, dtype=torch.int32)
        for c, (cell, cell_layouts) in enumerate(zip(net.cells, layouts, strict=True)):
            flats = [flat[s:s + n[c]] for flat, s, n in zip((self.weights, self.stats, self.counts), starts, sizes,
                                                           strict=True)]
            banks = CellBanks(cell_layouts, *flats)
            cell.__dict__["_banks"] = banks
            self.cells.append(banks)
            owner = {id(p): (e, k) for e, edge in enumerate(cell.edges) for k, op in enumerate(edge._ops)
                     for p in op.parameters()}
            for p, offset in _bound_params(cell_layouts):
                e, k = owner[id(p)]
                element_param[starts[0] + offset:starts[0] + offset + p.numel()] = len(self.params)
                self.params.append(p)
                self.offsets.append(starts[0] + offset)
                op_of.append((c * edges + e) * NUM_CANDIDATES + k)
            starts = [s + n[c] for s, n in zip(starts, sizes, strict=True)]
        element_param[element_param < 0] = len(self.params)
        self.param_op = torch.tensor(op_of + [scratch_op], device=param.device)
        self.element_param = element_param.to(param.device)

    def leaves(self) -> list[torch.Tensor]:
        """The tensors autograd gives gradients to (one per cell)."""
        return [cell.weights for cell in self.cells]

    def flat_grad(self) -> torch.Tensor:
        """The cells' weight gradients as one flat tensor, zero for cells that got none."""
        return torch.cat([c.weights.grad if c.weights.grad is not None else torch.zeros_like(c.weights)
                          for c in self.cells])

    def view_of(self, flat: torch.Tensor, index: int) -> torch.Tensor:
        """Parameter ``index``'s part of a flat tensor shaped like :attr:`weights`."""
        p = self.params[index]
        return flat[self.offsets[index]:self.offsets[index] + p.numel()].view(p.shape)


def bind_banks(net: nn.Module) -> NetworkBanks:
    """Allocate the banks of every cell of ``net`` and re-point its per-edge tensors at them (see the module
    docstring); kept on ``net`` and returned."""
    banks = NetworkBanks(net)
    net.__dict__["_banks"] = banks
    return banks


def cell_banks(cell: nn.Module) -> CellBanks:
    """The banks of ``cell``, bound by :func:`bind_banks` (or, for a lone cell, :func:`bind_cell`)."""
    banks = cell.__dict__.get("_banks")
    if banks is None:
        raise RuntimeError("the device executor needs the cell's parameter banks: call "
                           "sswp_fast.search.executors.banks.bind_banks on the network (after .to())")
    return banks


def bind_cell(cell: nn.Module) -> CellBanks:
    """Banks for one cell on its own (tests evaluate single cells)."""
    layouts = _cell_layouts(cell)
    param = next(cell.parameters())
    flats = [torch.empty(_flat_size(layouts, kind), device=param.device, dtype=dtype)
             for kind, dtype in (("weights", param.dtype), ("stats", param.dtype), ("counts", torch.long))]
    banks = CellBanks(layouts, *flats)
    cell.__dict__["_banks"] = banks
    return banks
