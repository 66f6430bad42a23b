"""Device-side dispatch of a sampled path: the Triton executor of the search network.

The PyTorch executor (:class:`~sswp_fast.supernet.ExecutionPlan`) reads the sampled path on the host once a step
and calls the one module each edge runs. This executor never reads it: the ``[cells, 14]`` op indices stay on the
device and every node of a cell runs a fixed sequence of launches whatever was sampled, so a step has no host
synchronisation and its launches can be captured once as a CUDA graph and replayed while the path changes.

A node's incoming edges (its *slots*; in a reduction cell, those at stride 2 and those at stride 1 separately)
are stacked along channels, ``[N, G*C, H, W]``, and evaluated together:

1. first stage of every slot's op, chosen per slot by its index: the separable/dilated convolutions' first
   ReLU + depthwise + pointwise half in one launch for all slots (:mod:`sswp_fast.kernels.sampled_dwpw`); the
   pools and the stride-2 skip (factorized reduce) for all slots at once; the stride-1 skip is the input;
2. BatchNorm of every slot over the G*C channels (Triton kernels), with each slot's running statistics, affine
   parameters and ``num_batches_tracked`` taken from, and written back to, the BN module of the op it ran;
3. the second half of ``sep_conv_*`` (one launch, the other slots idle) and its BatchNorm;
4. the node is the sum of its slots (weighted by the one-hot gates when gate gradients are measured).

With ``--recompute edge`` (this executor's default) a group keeps under autograd only its stacked input: the
backward pass evaluates it again and differentiates that, so no slot's intermediate activation, and no pool of a
slot that did not pool, is stored (:mod:`sswp_fast.recompute` has the other modes).

Every candidate's parameters are stacked into per-op banks each call, so autograd gives every parameter a
gradient, zero for the ops that did not run; :class:`MaskedWeightUpdate` makes the optimizer step leave those
untouched, exactly as the PyTorch executor (where they have no gradient at all) does.

Where Triton does not run (CPU tensors outside the interpreter) the slotted convolution is the PyTorch kernel
of the same custom op and BatchNorm is ``F.batch_norm``; that is how ``--compile`` runs this executor on a CPU.
Under ``torch.compile`` BatchNorm is ``F.batch_norm`` everywhere (the compiler generates its kernels) and the
recompute boundary is left to the compiler's partitioner. The groups of a cell are built once
(:func:`slot_groups`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .kernels._common import runs_on_triton
from .kernels.batchnorm import batch_norm
from .kernels.sampled_dwpw import Variant, sampled_dwpw
from .ops import CANDIDATES, NUM_CANDIDATES, PARAMETRIC_INDICES, POOL_INDICES, SKIP_INDEX, FactorizedReduce
from .sampling import one_hot

SEP_INDICES = (CANDIDATES.index("sep_conv_3x3"), CANDIDATES.index("sep_conv_5x5"))
"""The ops with a second half (``sep_conv_*``)."""


def _bn_of(module: nn.Module) -> nn.BatchNorm2d:
    """The BatchNorm that ends a pool or factorized-reduce op."""
    return module.bn if isinstance(module, FactorizedReduce) else module[1]


class _SlotBatchNorm:
    """BatchNorm of a slot stack where slot ``g`` uses ``rows[ops[g]][g]`` (None: no BN, a scratch row)."""

    def __init__(self, rows: list[list[nn.BatchNorm2d | None]], channels: int, like: torch.Tensor):
        self.rows = rows
        first = next(bn for row in rows for bn in row if bn is not None)
        self.momentum, self.eps, self.training = first.momentum, first.eps, first.training
        self.affine = any(bn is not None and bn.affine for row in rows for bn in row)
        self.channels = channels
        self.like = like

    def _stack(self, pick, fill: float) -> torch.Tensor:
        """``[rows, G, C]``: ``pick(bn)`` of every entry, ``fill`` where there is no BN or no such tensor."""
        def value(bn: nn.BatchNorm2d | None) -> torch.Tensor:
            tensor = pick(bn) if bn is not None else None
            if tensor is None:
                return torch.full((self.channels,), fill, device=self.like.device, dtype=self.like.dtype)
            return tensor
        return torch.stack([torch.stack([value(bn) for bn in row]) for row in self.rows])

    def __call__(self, x: torch.Tensor, ops: torch.Tensor, update: bool = True) -> torch.Tensor:
        """BN of ``x`` [N, G*C, H, W]; in training mode ``update`` writes the running statistics back."""
        slots = torch.arange(ops.shape[0], device=ops.device)
        running_mean = self._stack(lambda bn: bn.running_mean, 0.0)
        running_var = self._stack(lambda bn: bn.running_var, 1.0)
        mean = running_mean[ops, slots].reshape(-1)
        var = running_var[ops, slots].reshape(-1)
        weight = bias = None
        if self.affine:
            weight = self._stack(lambda bn: bn.weight, 1.0)[ops, slots].reshape(-1)
            bias = self._stack(lambda bn: bn.bias, 0.0)[ops, slots].reshape(-1)
        norm = batch_norm if runs_on_triton(x) and not torch.compiler.is_compiling() else F.batch_norm
        out = norm(x, mean, var, weight, bias, self.training, self.momentum, self.eps)
        if self.training and update:
            with torch.no_grad():  # a context, not a decorator: torch.compile traces it
                self._write_back(running_mean, running_var, mean, var, ops, slots)
        return out

    def _write_back(self, running_mean: torch.Tensor, running_var: torch.Tensor, mean: torch.Tensor,
                    var: torch.Tensor, ops: torch.Tensor, slots: torch.Tensor) -> None:
        """Updated statistics (and one more batch counted) into the BN modules of the ops that ran."""
        running_mean[ops, slots] = mean.view(-1, self.channels)
        running_var[ops, slots] = var.view(-1, self.channels)
        ran = one_hot(ops, len(self.rows)).long().T  # [rows, G]
        targets, mean_rows, var_rows, counts, count_rows = [], [], [], [], []
        for r, row in enumerate(self.rows):
            for g, bn in enumerate(row):
                if bn is not None:
                    targets.extend((bn.running_mean, bn.running_var))
                    mean_rows.append(running_mean[r, g])
                    var_rows.append(running_var[r, g])
                    if bn.num_batches_tracked is not None:
                        counts.append(bn.num_batches_tracked)
                        count_rows.append(ran[r, g])
        torch._foreach_copy_(targets, [t for pair in zip(mean_rows, var_rows, strict=True) for t in pair])
        if counts:
            torch._foreach_add_(counts, count_rows)


class _SlotGroup:
    """Edges ``start:stop`` of a cell, all at one stride, evaluated together on their stacked inputs."""

    def __init__(self, edges: Sequence[nn.Module], start: int, stop: int, stride: int, channels: int):
        self.ops = [edges[e]._ops for e in range(start, stop)]
        self.start, self.stop, self.stride, self.channels = start, stop, stride, channels

    def _halves(self, op: int, half: int):
        return [ops[op].halves()[half] for ops in self.ops]

    def _variant(self, op: int, half: int) -> Variant:
        depthwise = self._halves(op, half)[0][0]
        return Variant(depthwise.kernel_size[0], depthwise.padding[0], depthwise.dilation[0])

    def _banks(self, ops: Sequence[int], half: int) -> list[torch.Tensor]:
        banks = []
        for op in ops:
            halves = self._halves(op, half)
            banks += [torch.stack([dw.weight for dw, _, _ in halves]), torch.stack([pw.weight for _, pw, _ in halves])]
        return banks

    def parameters(self) -> list[nn.Parameter]:
        return [p for ops in self.ops for p in ops.parameters()]

    def __call__(self, x: torch.Tensor, ops: torch.Tensor, recompute: bool = True) -> torch.Tensor:
        """``[N, G, C, Ho, Wo]``: slot ``g`` is op ``ops[g]`` of edge ``start + g`` on slot ``g`` of ``x``
        ``[N, G*C, H, W]``. With ``recompute``, under autograd only ``x`` is kept for the backward pass, which
        recomputes the rest (:class:`_Recomputed`)."""
        params = self.parameters()
        if torch.compiler.is_compiling():  # the compiler's partitioner decides what to recompute
            return self.evaluate(x, ops)
        if recompute and torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
            return _Recomputed.apply(self, x, ops, *params)
        return self.evaluate(x, ops)

    def evaluate(self, x: torch.Tensor, ops: torch.Tensor, update: bool = True) -> torch.Tensor:
        """:meth:`__call__` as plain autograd operations; ``update=False`` leaves the BN running statistics."""
        n, c, g = x.shape[0], self.channels, len(self.ops)
        slot = ops.view(1, g, 1, 1, 1)
        first = PARAMETRIC_INDICES[0]
        variants = tuple(self._variant(op, 0) for op in PARAMETRIC_INDICES)
        conv = sampled_dwpw(x, ops - first, self.stride, variants, *self._banks(PARAMETRIC_INDICES, 0))
        ho, wo = conv.shape[2:]

        def slots(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, g, c, ho, wo)

        pre = slots(conv)
        for op in POOL_INDICES:
            pooled = self.ops[0][op][0](x)  # every slot through the same (parameter-free) pool
            pre = torch.where(slot == op, slots(pooled), pre)
        if self.stride != 1:
            pre = torch.where(slot == SKIP_INDEX, slots(self._factorized_reduce(x)), pre)
        bn_rows = [[None] * g for _ in range(NUM_CANDIDATES)]
        for op in (*POOL_INDICES, *((SKIP_INDEX,) if self.stride != 1 else ())):
            bn_rows[op] = [_bn_of(ops[op]) for ops in self.ops]
        for op in PARAMETRIC_INDICES:
            bn_rows[op] = [bn for _, _, bn in self._halves(op, 0)]
        out = slots(_SlotBatchNorm(bn_rows, c, x)(pre.reshape(n, g * c, ho, wo), ops, update))
        if self.stride == 1:
            out = torch.where(slot == SKIP_INDEX, slots(x), out)

        sep = tuple(self._variant(op, 1) for op in SEP_INDICES)
        second = torch.where((ops == SEP_INDICES[0]) | (ops == SEP_INDICES[1]), ops - SEP_INDICES[0], -1)
        conv2 = sampled_dwpw(out.reshape(n, g * c, ho, wo), second, 1, sep, *self._banks(SEP_INDICES, 1))
        bn2_rows = [[None] * g for _ in range(NUM_CANDIDATES)]
        for op in SEP_INDICES:
            bn2_rows[op] = [bn for _, _, bn in self._halves(op, 1)]
        out2 = slots(_SlotBatchNorm(bn2_rows, c, x)(conv2, ops, update))
        return torch.where((slot == SEP_INDICES[0]) | (slot == SEP_INDICES[1]), out2, out)

    def _factorized_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Every slot's factorized reduce (before its BN): two grouped, offset, stride-2 1×1 convolutions."""
        g, half = len(self.ops), self.channels // 2
        x = torch.relu(x)
        even = F.conv2d(x[:, :, ::2, ::2], torch.cat([ops[SKIP_INDEX].conv_1.weight for ops in self.ops]), groups=g)
        odd = F.conv2d(x[:, :, 1::2, 1::2], torch.cat([ops[SKIP_INDEX].conv_2.weight for ops in self.ops]), groups=g)
        n, _, h, w = even.shape
        return torch.stack([even.view(n, g, half, h, w), odd.view(n, g, half, h, w)], dim=2).view(n, g * 2 * half, h, w)


class _Recomputed(torch.autograd.Function):
    """A slot group that saves only its input for backward: the backward pass evaluates the group again (the
    same batch statistics, no second running-statistics update) and differentiates that. Every activation
    between the stacked input and the group's output is rebuilt rather than stored."""

    @staticmethod
    def forward(ctx, group: _SlotGroup, x: torch.Tensor, ops: torch.Tensor, *params: nn.Parameter) -> torch.Tensor:
        ctx.group = group
        ctx.save_for_backward(x, ops)
        with torch.no_grad():
            return group.evaluate(x, ops)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, ops = ctx.saved_tensors
        params = ctx.group.parameters()
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(ctx.needs_input_grad[1])
            y = ctx.group.evaluate(leaf, ops, update=False)
            inputs = [leaf, *params] if ctx.needs_input_grad[1] else params
            grads = torch.autograd.grad(y, inputs, dy, allow_unused=True, materialize_grads=True)
        dx = grads[0] if ctx.needs_input_grad[1] else None
        return (None, dx, None, *grads[-len(params):])


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


def run_cell(cell: nn.Module, node_edges: Sequence[Sequence[int]], s0: torch.Tensor, s1: torch.Tensor,
             active: torch.Tensor, others: torch.Tensor | None = None,
             gates: torch.Tensor | None = None, recompute_groups: bool = True) -> torch.Tensor:
    """One search cell along the device-side path ``active`` ``[14]``.

    With ``gates`` (``[14, 7]``, one-hot), each edge's output is ``gates[e, active[e]] * y_active +
    sum_k gates[e, others[e, k]] * y_others[k]``, the other ops evaluated without autograd (spec §5.4).
    ``recompute_groups`` (``--recompute edge``) keeps only each slot group's input for the backward pass."""
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    for node in slot_groups(cell, node_edges):
        total = None
        for group, first in node:
            inputs = states[first:first + len(group.ops)]
            x = torch.cat(inputs, dim=1)
            ops = active[group.start:group.stop]
            y = group(x, ops, recompute_groups)
            if gates is not None:
                edge_gates = gates[group.start:group.stop]
                y = y * edge_gates.gather(1, ops[:, None]).view(1, -1, 1, 1, 1)
                for k in range(others.shape[1]):
                    other = others[group.start:group.stop, k]
                    with torch.no_grad():
                        y_other = group(x, other)
                    y = y + y_other * edge_gates.gather(1, other[:, None]).view(1, -1, 1, 1, 1)
            part = y.sum(dim=1)
            total = part if total is None else total + part
        states.append(total)
    return torch.cat(states[2:], dim=1)


class MaskedWeightUpdate:
    """Makes an optimizer step leave the candidate ops that did not run exactly as they were.

    Under device-side dispatch every candidate's parameters get a gradient (zero where the op did not run), so
    a plain SGD step would still apply weight decay and momentum to them. Around the step this restores their
    parameters and momentum buffers from a copy wherever the op did not run (an exact ``lerp`` with weight 0 or
    1 read from the device, no host synchronisation). Missing momentum buffers are created as zeros, which is
    what SGD's lazily created buffer equals on an op's first run.
    """

    def __init__(self, net: nn.Module, optimizer: torch.optim.SGD):
        if not isinstance(optimizer, torch.optim.SGD):
            raise TypeError("MaskedWeightUpdate supports SGD only")
        self.optimizer = optimizer
        self.params: list[torch.Tensor] = []
        self.index: list[int] = []
        for c, cell in enumerate(net.cells):
            for e, edge in enumerate(cell.edges):
                for k, op in enumerate(edge._ops):
                    for p in op.parameters():
                        self.params.append(p)
                        self.index.append((c * len(cell.edges) + e) * NUM_CANDIDATES + k)
        self.momentum = any(group["momentum"] != 0 for group in optimizer.param_groups)

    def step(self, active: torch.Tensor) -> None:
        """``optimizer.step()``, keeping every parameter of an op that is not ``active`` ``[cells, 14]``."""
        keep = 1.0 - one_hot(active).flatten()
        weights = [keep[i] for i in self.index]
        tensors = list(self.params)
        if self.momentum:
            state = self.optimizer.state  # rebuilt by load_state_dict, so the buffers are checked every step
            tensors += [state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in self.params]
            weights += weights
        with torch.no_grad():
            saved = torch._foreach_mul(tensors, 1.0)
            self.optimizer.step()
            torch._foreach_lerp_(tensors, saved, weights)
