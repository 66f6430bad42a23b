"""Device-side dispatch of a sampled path: the Triton executor of the search network.

The PyTorch executor (:class:`~sswp_fast.search.supernet.ExecutionPlan`) reads the sampled path on the host once a step
and calls the one module each edge runs. This executor never reads it: the ``[cells, 14]`` op indices stay on the
device and every node of a cell runs a fixed sequence of launches whatever was sampled, so a step has no host
synchronisation and its launches can be captured once as a CUDA graph and replayed while the path changes.

A node's incoming edges (its *slots*; in a reduction cell, those at stride 2 and those at stride 1 separately)
are stacked along channels, ``[N, G*C, H, W]``, and evaluated together:

1. first stage of every slot's op, chosen per slot by its index: the separable/dilated convolutions' first
   ReLU + depthwise + pointwise half or the max or average pool, in one launch for all slots
   (:mod:`sswp_fast.kernels.sampled_dwpw`, the pools from :mod:`sswp_fast.kernels.sampled_pool`), zero in the
   other slots; the stride-2 skip (a factorized reduce) in a second, in the slots that sampled it
   (:mod:`sswp_fast.kernels.sampled_reduce`); the stride-1 skip is the input;
2. BatchNorm of every slot over the G*C channels (Triton kernels): each slot's running statistics are read and
   updated in the bank row of the op it ran (and one more batch counted there) by the statistics launch itself;
   under ``torchrun`` the group's batch statistics are first reduced over the processes in one all-reduce;
3. the second half of ``sep_conv_*`` (one launch, the other slots idle) and its BatchNorm;
4. the node's part is the sum over the slots of each slot's own output (the first stage, the second half, the
   stride-1 skip or, for a dropped edge, nothing), weighted by the one-hot gates when gate gradients are
   measured: one launch (:mod:`sswp_fast.kernels.slot_sum`), which also adds what the node has so far (its other
   group's part in a reduction cell, the other paths' in a gate-gradient step), and one in the backward pass,
   which routes the gradient to the stage each slot chose.

With ``--recompute edge`` a group keeps under autograd only its stacked input (and, on the Triton kernels, its
BatchNorms' per-channel batch statistics): the backward pass evaluates it again, each BatchNorm with the
forward's statistics (one launch, not two), and differentiates that, so no slot's intermediate activation is
stored (:mod:`sswp_fast.search.recompute` has the other modes). On the Triton kernels a group is one autograd node
either way, whose backward pass is the chain rule written out on the kernels' ops: from the activations it kept
(``--recompute none``) or from the stages rebuilt up to the second convolution (``edge``). The gradients a
stage's input gets from two places (a skip or a factorized reduce and the convolutions; the node's sum and the
second half) are disjoint by slot, so the convolution's input-gradient launch writes both and no addition is
launched.

The weights and statistics live in persistent banks (:mod:`sswp_fast.search.executors.banks`), which the per-edge
modules view: nothing is stacked or written back per call. Autograd gives every bank a gradient, zero in the rows of
ops that did not run; :class:`~sswp_fast.search.executors.bank_optimizer.MaskedBankUpdate` updates only the rows that
ran, as the PyTorch executor (where the other ops have no gradient at all) does.

Under ``--amp bf16`` activations are bf16 (the kernels accumulate in fp32) while the banks, and so the master
weights and BatchNorm statistics, stay fp32; a recomputed group re-enters the forward's autocast state.

Where Triton does not run (CPU tensors outside the interpreter) the slotted convolution is the PyTorch kernel
of the same custom op and BatchNorm is ``F.batch_norm``; that is how ``--compile`` runs this executor on a CPU.
Under ``torch.compile`` BatchNorm is ``F.batch_norm`` everywhere (the compiler generates its kernels) and the
recompute boundary is left to the compiler's partitioner. The groups of a cell are built once
(:func:`slot_groups`); a network's forward pass selects every cell's path in one gather and fills one
weight-gradient buffer for all its cells (:func:`cell_steps`), and counts the batch of its stems' and
preprocessing's BatchNorms in one launch (:func:`batches_counted_once`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from sswp_fast.kernels.batchnorm import batch_norm, bn_backward, bn_banked_reference, bn_forward, bn_train_forward
from sswp_fast.kernels.common import runs_on_triton
from sswp_fast.kernels.sampled_dwpw import Variant, sampled_dwpw, sampled_dwpw_grads
from sswp_fast.kernels.sampled_reduce import sampled_reduce, sampled_reduce_grads
from sswp_fast.kernels.slot_sum import slot_sum
from sswp_fast.runtime.distributed import sum_over_ranks
from sswp_fast.search.executors.banks import SEP_INDICES, BatchStats, CellBanks, GroupBanks, cell_banks
from sswp_fast.search.space import PARAMETRIC_INDICES


@dataclass(frozen=True)
class Selection:
    """A cell's path as the kernel indices its slot groups read, gathered once (one launch for all its edges, or
    all the cells', from :attr:`~sswp_fast.search.executors.banks.CellBanks.selection`) and sliced per group (views):
    ``ops`` ``[E]`` (-1: a dropped edge), ``first`` / ``second`` the :func:`sampled_dwpw` variant of each edge's first
    stage and of a ``sep_conv``'s second half (negative: none), ``pool`` its pool kind
    (:mod:`~sswp_fast.kernels.sampled_pool`; negative: none), ``source`` / ``reduce_source`` the
    :func:`slot_sum` source of its output at stride 1 / at stride 2, and ``reduce``, 1 where it runs the skip (at
    stride 2, a factorized reduce: :func:`sampled_reduce`), else 0."""

    ops: torch.Tensor
    first: torch.Tensor
    second: torch.Tensor
    pool: torch.Tensor
    source: torch.Tensor
    reduce_source: torch.Tensor
    reduce: torch.Tensor

    @staticmethod
    def of(ops: torch.Tensor, banks: CellBanks) -> Selection:
        """The selection of ``ops`` ``[E]``, or of several paths at once, ``[P, E]``."""
        return Selection(ops, *banks.selection[:, ops])

    def __getitem__(self, index: slice | tuple[int, slice]) -> Selection:
        """Edges ``index`` (views), or ``[p, edges]`` of path ``p`` of a several-path selection."""
        return Selection(*(t[index] for t in (self.ops, self.first, self.second, self.pool, self.source,
                                              self.reduce_source, self.reduce)))


class _BatchStatsMemo:
    """The batch statistics (mean, rstd) of a slot group's BatchNorms on the Triton kernels, in the order they run:
    recorded by the group's forward evaluation (under ``no_grad``), replayed by its recomputation in the backward
    pass, whose BatchNorms are then the apply launch alone (the statistics of the same input are the same). With
    ``keep`` the forward evaluation also records the BatchNorms' inputs there (``inputs``), for a backward pass
    that recomputes nothing."""

    def __init__(self, saved: Sequence[torch.Tensor] = (), replay: bool = False, keep: bool = False):
        self.stats, self.replay, self.keep, self._next = list(saved), replay, keep, 0
        self.inputs: list[torch.Tensor] = []

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._next += 2
        return self.stats[self._next - 2], self.stats[self._next - 1]


def _batch_norm(x: torch.Tensor, ops: torch.Tensor, stats: BatchStats, affine: tuple[torch.Tensor, torch.Tensor] | None,
                bn: nn.BatchNorm2d, slots: torch.Tensor, update: bool,
                memo: _BatchStatsMemo | None = None) -> torch.Tensor:
    """BatchNorm of a slot stack ``x`` ``[N, G*C, H, W]``, slot ``g`` with the statistics (and affine parameters)
    of bank row ``ops[g]``; in training mode ``update`` writes the new running statistics into those rows and
    counts one more batch there (in the statistics launch, on the Triton kernels). ``bn`` gives momentum, eps and
    the training flag. ``memo`` (training mode, Triton kernels) records the batch statistics, or replays them."""
    weight = bias = None
    if affine is not None:
        weight, bias = (t[ops, slots].reshape(-1) for t in affine)
    if bn.training and dist.is_initialized() and dist.get_world_size() > 1:
        return _global_batch_norm(x, ops, stats, weight, bias, bn, slots, update)
    triton = runs_on_triton(x) and not torch.compiler.is_compiling()
    if triton and bn.training and memo is not None:
        if memo.replay:
            return batch_norm(x, None, None, weight, bias, True, bn.momentum, bn.eps, batch_stats=memo.take())
        running = (stats.mean, stats.var) if update else (None, None)
        banked = (ops, stats.count) if update else (None, None)
        y, mean, rstd = bn_train_forward(x, weight, bias, bn.eps, *running, bn.momentum, *banked)
        memo.stats += [mean, rstd]
        memo.inputs += [x] * memo.keep
        return y
    if bn.training and not update:  # the batch statistics alone: the running ones are neither read nor written
        return (batch_norm if triton else F.batch_norm)(x, None, None, weight, bias, True, bn.momentum, bn.eps)
    if triton:
        return batch_norm(x, stats.mean, stats.var, weight, bias, bn.training, bn.momentum, bn.eps, ops, stats.count)
    return bn_banked_reference(x, stats.mean, stats.var, ops, stats.count, weight, bias, bn.training, bn.momentum,
                               bn.eps)


def _global_batch_norm(x: torch.Tensor, ops: torch.Tensor, stats: BatchStats, weight: torch.Tensor | None,
                       bias: torch.Tensor | None, bn: nn.BatchNorm2d, slots: torch.Tensor,
                       update: bool) -> torch.Tensor:
    """Training-mode :func:`_batch_norm` over the global batch of every process (``torchrun``), as
    :class:`~sswp_fast.runtime.distributed.SyncedBatchNorm` normalises on the PyTorch executor: the per-channel sums of
    ``x - shift`` and of its square, reduced over the ranks in one (differentiable) all-reduce for the whole slot
    group. ``shift`` is each channel's running mean, the same on every rank, so that the one-pass variance does
    not cancel catastrophically; then the running statistics of the rows that ran are updated as a
    single-process BatchNorm of the global batch would."""
    shape = (1, -1, 1, 1)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    shift = stats.mean[ops, slots].reshape(-1).to(acc)
    centred = x.to(acc) - shift.view(shape)
    sums = sum_over_ranks(torch.stack([centred.sum((0, 2, 3)), (centred * centred).sum((0, 2, 3))]))
    count = x.numel() // x.shape[1] * dist.get_world_size()
    offset = sums[0] / count
    var = sums[1] / count - offset * offset
    out = (centred - offset.view(shape)) * torch.rsqrt(var + bn.eps).view(shape)
    if weight is not None:
        out = out * weight.view(shape) + bias.view(shape)
    if update:
        with torch.no_grad():
            rows = (ops, slots)
            g = ops.shape[0]
            for bank, batch in ((stats.mean, shift + offset), (stats.var, var * (count / max(count - 1, 1)))):
                bank.index_put_(rows, bank[rows].lerp(batch.view(g, -1).to(bank.dtype), bn.momentum))
            stats.count.index_put_(rows, torch.ones_like(stats.count[0]), accumulate=True)
    return out.to(x.dtype)


class _SlotGroup:
    """Edges ``start:stop`` of a cell, all at one stride, evaluated together on their stacked inputs."""

    def __init__(self, edges: Sequence[nn.Module], start: int, stop: int, stride: int, channels: int):
        self.ops = [edges[e]._ops for e in range(start, stop)]
        self.start, self.stop, self.stride, self.channels = start, stop, stride, channels
        self.bn = self.ops[0][PARAMETRIC_INDICES[0]].halves()[0][2]
        self.variants = tuple(self._variant(op, 0) for op in PARAMETRIC_INDICES)
        self.sep_variants = tuple(self._variant(op, 1) for op in SEP_INDICES)

    def _variant(self, op: int, half: int) -> Variant:
        depthwise = self.ops[0][op].halves()[half][0]
        return Variant(depthwise.kernel_size[0], depthwise.padding[0], depthwise.dilation[0])

    def __call__(self, x: torch.Tensor, path: Selection, banks: GroupBanks, scale: torch.Tensor | None = None,
                 recompute: bool = True, base: torch.Tensor | None = None) -> torch.Tensor:
        """``[N, C, Ho, Wo]``, the node's part from these edges: the sum over the slots ``g`` of op ``path.ops[g]``
        of edge ``start + g`` on slot ``g`` of ``x`` ``[N, G*C, H, W]``, with the weights of ``banks``, each
        times ``scale[g]`` when given, plus ``base`` (in the same launch) when given. With ``recompute``, under
        autograd only ``x`` (and the banks, which are views of the parameters, and ``scale``) is kept for the
        backward pass, which recomputes the rest; it and the backward pass of a group on the Triton kernels are
        :class:`_GroupFunction`."""
        if torch.compiler.is_compiling():  # the compiler's partitioner decides what to recompute
            return self.evaluate(x, path, banks, scale, base=base)
        weights = banks.weights()
        differentiable = [x, *weights] + ([] if scale is None else [scale])
        if (torch.is_grad_enabled() and any(t.requires_grad for t in differentiable)
                and (recompute or self._differentiable_by_hand(x))):
            return _GroupFunction.apply(self, banks, recompute, x, path, scale, base, *weights)
        return self.evaluate(x, path, banks, scale, base=base)

    def _differentiable_by_hand(self, x: torch.Tensor) -> bool:
        """Whether :func:`_backward_by_hand` can differentiate this group: on the Triton kernels, with its
        BatchNorms in training mode and in one process (where :func:`_batch_norm` records the batch statistics)."""
        return (runs_on_triton(x) and self.bn.training
                and not (dist.is_initialized() and dist.get_world_size() > 1))

    def evaluate(self, x: torch.Tensor, path: Selection, banks: GroupBanks, scale: torch.Tensor | None = None,
                 update: bool = True, memo: _BatchStatsMemo | None = None,
                 base: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`__call__` as plain autograd operations; ``update=False`` leaves the BN running statistics."""
        return self.sum_slots(self.stages(x, path, banks, update, memo), path, scale, base)

    def sum_slots(self, stages: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None], path: Selection,
                  scale: torch.Tensor | None = None, base: torch.Tensor | None = None) -> torch.Tensor:
        """The node's part from the :meth:`stages` of ``path``: each slot's own output, scaled, summed, plus
        ``base``."""
        return slot_sum(*stages, path.source if self.stride == 1 else path.reduce_source, scale, base)

    def stages(self, x: torch.Tensor, path: Selection, banks: GroupBanks, update: bool = True,
               memo: _BatchStatsMemo | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Every slot's op up to its output, stacked ``[N, G*C, Ho, Wo]``: the first stage after its BatchNorm
        (for a ``sep_conv``, the input of its second half), the ``sep_conv`` second half after its BatchNorm,
        and at stride 1 the skip (``x``). Each slot's own output is one of them (``path.source``); the other
        slots of each are zero or unused."""
        grads = banks.grads or (None, None, None)
        pre = sampled_dwpw(x, path.first, self.stride, self.variants, *banks.first, grad_out=grads[0], pool=path.pool)
        if self.stride != 1:  # the skip: a factorized reduce where sampled, the rest passed through
            pre = sampled_reduce(x, path.reduce, *banks.reduce, pre, grad_out=grads[2])
        first = _batch_norm(pre, path.ops, banks.stats1, banks.bn1, self.bn, banks.slots, update, memo)
        conv2 = sampled_dwpw(first, path.second, 1, self.sep_variants, *banks.second, grad_out=grads[1])
        second = _batch_norm(conv2, path.ops, banks.stats2, banks.bn2, self.bn, banks.slots, update, memo)
        return first, second, x if self.stride == 1 else None


class _GroupFunction(torch.autograd.Function):
    """A slot group under autograd as one node. It saves its input, its weight banks (views of the parameters) and,
    on the Triton kernels, its BatchNorms' per-channel batch statistics; with ``recompute`` nothing more, otherwise
    also the activations the backward pass reads (the BatchNorms' inputs and the first stage's output, and the
    second's for a gate's gradient: what autograd would keep). The backward pass is written out by hand on the
    Triton kernels in one process (:func:`_backward_by_hand`), rebuilding what was not kept. Elsewhere (only with
    ``recompute``) it evaluates the group again, with the same batch statistics, no second running-statistics
    update and the forward's autocast state, and lets autograd differentiate that."""

    @staticmethod
    def forward(ctx, group: _SlotGroup, banks: GroupBanks, recompute: bool, x: torch.Tensor, path: Selection,
                scale: torch.Tensor | None, base: torch.Tensor | None, *weights: torch.Tensor) -> torch.Tensor:
        ctx.group, ctx.banks, ctx.path = group, banks, path
        device = x.device.type
        ctx.autocast = ((device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
                        if torch.amp.is_autocast_available(device) else ("cpu", False, torch.bfloat16))  # meta
        memo = _BatchStatsMemo(keep=not recompute)
        with torch.no_grad():
            stages = group.stages(x, path, banks, memo=memo)
            y = group.sum_slots(stages, path, scale, base)
        kept = []
        if memo.inputs:  # pre, first, conv2 (and second, which only a gate's gradient reads)
            kept = [memo.inputs[0], stages[0], memo.inputs[1]] + [stages[1]] * ctx.needs_input_grad[5]
        ctx.save_for_backward(x, scale, *memo.stats, *kept, *weights)
        ctx.stats, ctx.kept = len(memo.stats), len(kept)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, scale, *saved = ctx.saved_tensors
        stats, kept, weights = saved[:ctx.stats], saved[ctx.stats:ctx.stats + ctx.kept], saved[ctx.stats + ctx.kept:]
        needs = ctx.needs_input_grad[3:]  # x, path, scale, base, *weights
        if ctx.stats == 4:  # both BatchNorms ran on the Triton kernels in one process
            grads = _backward_by_hand(ctx.group, ctx.path, ctx.banks.with_weights(weights), x, scale, stats, kept,
                                      dy, needs)
            ctx.banks = replace(ctx.banks, grads=None)  # the gradient buffer takes one backward pass's gradients
            return None, None, None, *grads
        memo = _BatchStatsMemo(stats, replay=True)
        device, enabled, dtype = ctx.autocast  # the recomputation runs in the forward's precision (--amp)
        with torch.enable_grad(), torch.autocast(device, dtype, enabled=enabled):
            leaf = x.detach().requires_grad_(needs[0])
            gate = None if scale is None else scale.detach().requires_grad_(needs[2])
            trained = needs[4:]  # none in an arch step (detached banks): no weight gradient
            leaves = [w.detach().requires_grad_(needed) for w, needed in zip(weights, trained, strict=True)]
            y = ctx.group.evaluate(leaf, ctx.path, ctx.banks.with_weights(leaves), gate, update=False,
                                   memo=memo)  # without base: its gradient is dy
            ctx.banks = replace(ctx.banks, grads=None)  # the gradient buffer takes one backward pass's gradients
            inputs = [leaf] * needs[0] + [gate] * needs[2] + [w for w in leaves if w.requires_grad]
            grads = list(torch.autograd.grad(y, inputs, dy, allow_unused=True, materialize_grads=True))
        dx = grads.pop(0) if needs[0] else None
        dscale = grads.pop(0) if needs[2] else None
        dbase = dy if needs[3] else None
        return (None, None, None, dx, None, dscale, dbase, *(grads.pop(0) if needed else None for needed in trained))


def _backward_by_hand(group: _SlotGroup, path: Selection, banks: GroupBanks, x: torch.Tensor,
                      scale: torch.Tensor | None, stats: Sequence[torch.Tensor], kept: Sequence[torch.Tensor],
                      dy: torch.Tensor, needs: Sequence[bool]) -> list[torch.Tensor | None]:
    """The gradients :class:`_GroupFunction` returns for ``x, path, scale, base, *weights`` (``needs``, in that
    order: which are needed), by the chain rule written out on the Triton kernels' ops: each stage's backward op
    in reverse, from the activations ``kept`` by the forward pass or, without them, from the stages rebuilt up to
    the second convolution (its BatchNorm only for a gate's gradient). The gradient a stage's input gets from
    elsewhere (the first stage's own output in the node's sum; the skip or the factorized reduce for the group's
    input) is written by the convolution's input-gradient launch into the slots that ran no convolution (they are
    disjoint), so no addition is launched. ``stats``: (mean, rstd) of the two BatchNorms as the forward pass
    measured them."""
    mean1, rstd1, mean2, rstd2 = stats
    train = any(needs[4:])  # none in an arch step (detached banks)
    grads = banks.grads if train and banks.grads else (None, None, None)
    affine1, affine2 = ((None, None) if pair is None else tuple(t[path.ops, banks.slots].reshape(-1) for t in pair)
                        for pair in (banks.bn1, banks.bn2))
    if kept:
        pre, first, conv2, *second = kept
    else:
        pre = sampled_dwpw(x, path.first, group.stride, group.variants, *banks.first, pool=path.pool)
        if group.stride != 1:
            pre = sampled_reduce(x, path.reduce, *banks.reduce, pre)
        first = bn_forward(pre, mean1, rstd1, *affine1)
        conv2 = sampled_dwpw(first, path.second, 1, group.sep_variants, *banks.second)
        second = [bn_forward(conv2, mean2, rstd2, *affine2)] if needs[2] else []
    skip = x if group.stride == 1 else None
    sources = [first, *second] + ([] if skip is None else [skip]) if needs[2] else []  # what a gate's gradient reads
    source = path.source if group.stride == 1 else path.reduce_source
    # d_own: the first stage's gradient as the output of the slots that end there
    d_own, d_second, *rest = torch.ops.sswp_fast.slot_sum_backward(dy, source, scale, skip is not None, sources)
    d_conv2, *d_bn2 = bn_backward(d_second, conv2, mean2, rstd2, affine2[0],
                                  need_param_grads=train and banks.bn2 is not None)
    del d_second  # each gradient is let go once read, as autograd frees them: the group's transient peak
    d_first, second_grads = sampled_dwpw_grads(d_conv2, first, path.second, 1, group.sep_variants, *banks.second,
                                               weight_grads=train, grad_out=grads[1], idle_dx=d_own)
    del d_conv2, d_own
    d_pre, *d_bn1 = bn_backward(d_first, pre, mean1, rstd1, affine1[0],
                                need_param_grads=train and banks.bn1 is not None)
    del d_first
    idle = rest.pop(0) if skip is not None else None
    reduce_grads = None
    if group.stride != 1:
        idle, d_pre, reduce_grads = sampled_reduce_grads(d_pre, x, path.reduce, *banks.reduce, train, grads[2])
    dx, first_grads = sampled_dwpw_grads(d_pre, x, path.first, group.stride, group.variants, *banks.first,
                                         weight_grads=train, grad_out=grads[0], pool=path.pool, idle_dx=idle)
    dscale = rest.pop(0) if needs[2] else None
    inputs = [dx if needs[0] else None, None, dscale, dy if needs[3] else None]
    if not train:
        return inputs + [None] * len(needs[4:])
    weights = [*first_grads, *second_grads, *(reduce_grads or ())]
    rows = (path.ops, banks.slots)
    for pair, (d_weight, d_bias) in ((banks.bn1, d_bn1), (banks.bn2, d_bn2)):
        if pair is not None:
            weights += [torch.zeros_like(bank).index_put_(rows, d.view(bank.shape[1:]).to(bank.dtype))
                        for bank, d in zip(pair, (d_weight, d_bias), strict=True)]
    return inputs + [w if needed else None for w, needed in zip(weights, needs[4:], strict=True)]


def slot_groups(cell: nn.Module, node_edges: Sequence[Sequence[int]]) -> list[list[tuple[_SlotGroup, int]]]:
    """Per node, its slot groups with the index of the first state each reads (states are read in order).
    Built once per cell and kept on it (not as a submodule); call it before compiling, so that the compiled code
    only reads them."""
    cached = cell.__dict__.get("_slot_groups")
    if cached is not None:
        return cached
    channels = cell.edges[0]._ops[PARAMETRIC_INDICES[0]].halves()[0][0].weight.shape[0]
    nodes = []
    for edges in node_edges:
        split = 2 if cell.reduction else 0
        parts = [(0, split, 2), (split, len(edges), 1)] if split else [(0, len(edges), 1)]
        nodes.append([(_SlotGroup(cell.edges, edges[0] + a, edges[0] + b, stride, channels), a)
                      for a, b, stride in parts if b > a])
    cell.__dict__["_slot_groups"] = nodes
    return nodes


class _GateScales(torch.autograd.Function):
    """The gates a cell's slot groups scale their paths by: ``codes`` ``[P, 14]`` (the path, then the others),
    ``gates[e, codes[p, e]]`` gathered in one launch and returned per path and group, ``[G]`` each, path-major,
    in ``sizes``' group order (views of the gathered ``[P, 14]``). The backward pass scatters every group's gate
    gradient back in three launches (a concatenation, a fill, a scatter) where autograd would give each
    gathered, sliced and accumulated scale its own backward launches."""

    @staticmethod
    def forward(ctx, gates: torch.Tensor, codes: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, ...]:
        ctx.save_for_backward(codes)
        ctx.gates = (gates.shape, gates.dtype)
        return torch.gather(gates.t(), 0, codes).view(-1).split(sizes * codes.shape[0])

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):
        (codes,) = ctx.saved_tensors
        shape, dtype = ctx.gates
        flat = torch.cat(grads).view(codes.shape).t()
        return codes.new_zeros(shape, dtype=dtype).scatter_add_(1, codes.t(), flat.to(dtype)), None, None


@dataclass(frozen=True)
class CellStep:
    """What :func:`run_cell` would otherwise make for itself in each cell, made for every cell of a network at once
    by :func:`cell_steps`: the :class:`Selection` of the path (one gather for all the cells, ``None`` for a
    probed cell, whose paths include the others) and the zero buffer of its weight gradients (a view of one for
    the whole network, ``None`` when no weight is differentiated)."""

    paths: Selection | None
    grads: torch.Tensor | None


def _needs_gradient_buffer(like: torch.Tensor, train_weights: bool) -> bool:
    """Whether a step's convolution weight gradients go into a zero buffer (``GroupBanks.grads``): on the Triton
    kernels, when weights are differentiated and not under ``torch.compile``."""
    return (train_weights and torch.is_grad_enabled() and runs_on_triton(like)
            and not torch.compiler.is_compiling())


def cell_steps(cells: Sequence[nn.Module], active: torch.Tensor, probed: Sequence[bool] | None, like: torch.Tensor,
               train_weights: bool) -> list[CellStep]:
    """The :class:`CellStep` of every cell of a forward pass along ``active`` ``[cells, 14]``: two launches for
    the network (a gather, a fill) rather than two per cell. ``like``: a tensor on the step's device."""
    paths = Selection.of(active, cell_banks(cells[0]))  # the selection table is the same in every cell
    grads: Sequence[torch.Tensor | None] = [None] * len(cells)
    if _needs_gradient_buffer(like, train_weights):
        sizes = [cell_banks(cell).weights.numel() for cell in cells]
        grads = torch.zeros(sum(sizes), device=like.device, dtype=torch.float32).split(sizes)
    return [CellStep(None if probed is not None and probed[i] else paths[i:i + 1], grads[i])
            for i in range(len(cells))]


def run_cell(cell: nn.Module, node_edges: Sequence[Sequence[int]], s0: torch.Tensor, s1: torch.Tensor,
             active: torch.Tensor, others: torch.Tensor | None = None,
             gates: torch.Tensor | None = None, recompute_groups: bool = True,
             train_weights: bool = True, step: CellStep | None = None) -> torch.Tensor:
    """One search cell along the device-side path ``active`` ``[14]``.

    With ``gates`` (``[14, 7]``, one-hot), each edge's output is ``gates[e, active[e]] * y_active +
    sum_k gates[e, others[e, k]] * y_others[k]``, the other ops evaluated without autograd (spec §5.4).
    ``recompute_groups`` (``--recompute edge``) keeps only each slot group's input (and its BatchNorms' batch
    statistics) for the backward pass. ``train_weights=False`` (an arch step) differentiates no weight bank.
    ``step``: this cell's part of :func:`cell_steps`, made for the whole network (else made here)."""
    banks = cell_banks(cell)
    if step is None:
        grads = None  # one zero buffer for the cell's convolution weight gradients (GroupBanks.grads)
        if _needs_gradient_buffer(s1, train_weights):
            grads = torch.zeros(banks.weights.numel(), device=s1.device, dtype=torch.float32)
        step = CellStep(None, grads)
    grads = step.grads
    codes = active[None] if gates is None else torch.cat([active[None], others.t()])  # [paths, 14]
    paths = Selection.of(codes, banks) if step.paths is None else step.paths
    groups = slot_groups(cell, node_edges)
    scales = None
    if gates is not None:
        sizes = [group.stop - group.start for node in groups for group, _ in node]
        scales = _GateScales.apply(gates, codes, sizes)
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    index = 0
    for node, node_banks in zip(groups, banks.views(train_weights, grads), strict=True):
        total = None
        for (group, first), banks in zip(node, node_banks, strict=True):
            inputs = states[first:first + len(group.ops)]
            x = torch.cat(inputs, dim=1)
            edges = slice(group.start, group.stop)
            scale = None if scales is None else scales[index]
            total = group(x, paths[0, edges], banks, scale, recompute_groups, base=total)
            for p in range(1, codes.shape[0]):
                other = paths[p, edges]
                with torch.no_grad():
                    stages = group.stages(x, other, banks)
                total = group.sum_slots(stages, other, scales[p * len(sizes) + index], total)
            index += 1
        states.append(total)
    return torch.cat(states[2:], dim=1)


@contextmanager
def batches_counted_once(batch_norms: Sequence[_BatchNorm]) -> Iterator[None]:
    """Count one more batch in every training-mode ``batch_norms`` (the BatchNorms outside the banks: stems and
    preprocessing) in one ``_foreach_add_`` after the forward pass, not one ``add_`` launch each inside it.
    Inside the block their ``num_batches_tracked`` is ``None``, which makes ``nn.BatchNorm2d`` skip its count and
    nothing else when ``momentum`` is set (a cumulative average, ``momentum=None``, needs the count first: those
    count as usual). Under ``torch.compile`` nothing changes (the compiler fuses the counts)."""
    counted = [bn for bn in batch_norms if bn.training and bn.track_running_stats and bn.momentum is not None
               and bn.num_batches_tracked is not None] if not torch.compiler.is_compiling() else []
    counters = [bn.num_batches_tracked for bn in counted]
    for bn in counted:
        bn.num_batches_tracked = None
    try:
        yield
    finally:
        for bn, counter in zip(counted, counters, strict=True):
            bn.num_batches_tracked = counter
    if counters:
        torch._foreach_add_(counters, 1)
