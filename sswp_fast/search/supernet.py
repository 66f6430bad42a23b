"""The search super-network (spec §4): stems, cells of 14 mixed edges, heads — and how a sampled path runs.

The module tree mirrors the reference so ``state_dict()`` has its keys (``stem.*``, ``cells.i.preprocess0.*``,
``cells.i.edges.j._ops.k.*``, ``cells.i.edges.j.alpha``, ``cells.i.edges.j.binary_gates``, ``classifier.*``).
The architecture state, however, is stored once for the whole network, as ``[cells, 14, 7]`` tensors that
vectorized sampling and updates work on; two state-dict hooks (below, and nowhere else) translate between
that storage and the reference's per-edge keys.

Which op each edge runs is decided by an :class:`ExecutionPlan` (built from the device-side path with one
host transfer per step). A plain plan runs exactly one op per edge. A *probing* plan additionally measures
the gate gradient ``G_k = <op_k(x), dL/d edge_out>`` of the sampled ops of the non-frozen cells (spec §5.5):
the edge output is ``Σ_k g_k·y_k`` with a one-hot leaf tensor ``g``, the active op differentiable and the
others evaluated without autograd, so ``grad(g)`` is ``G`` and every value equals the reference's. A
:class:`DevicePlan` holds the same path as device tensors for the device-side dispatch executor
(:mod:`sswp_fast.search.executors.device`, used with the Triton kernels), which never reads it on the host.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sswp_fast.search.recompute import recomputed
from sswp_fast.search.space import CANDIDATES, NUM_CANDIDATES, FactorizedReduce, Identity, ReLUConvBN, build_op

if TYPE_CHECKING:
    from sswp_fast.search.executors.device import CellStep

STEPS = 4
MULTIPLIER = 4
EDGES_PER_CELL = 14
NODE_EDGES: tuple[tuple[int, ...], ...] = ((0, 1), (2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12, 13))
"""Global edge ids of each node's incoming edges; edge ``NODE_EDGES[n][j]`` reads input ``j``."""

HEAD_DIM_SIMCLR = 128
DATA_MODES = ("SimCLR", "supervised", "byol")


@dataclass
class ExecutionPlan:
    """Which op every edge runs in one forward pass.

    ``active[c][e]`` is the op index of edge ``e`` of cell ``c`` (negative: the edge is dropped, as in a frozen
    cell under ``--prune_edges``; every node keeps at least one edge). For probing plans, ``probed[c]`` is True for
    the cells whose gate gradients are measured, ``others[c][e]`` lists the further ops run (without autograd)
    on those edges, and ``gates`` is the one-hot ``[cells, 14, 7]`` leaf whose gradient is ``G``.
    ``no_grad_cells`` leading cells (and the stem) run without autograd: nothing below them is trained.
    """

    active: list[list[int]]
    probed: list[bool] | None = None
    others: list[list[list[int]]] | None = None
    gates: torch.Tensor | None = None
    no_grad_cells: int = 0


@dataclass
class DevicePlan:
    """Which op every edge runs, as device tensors: the plan of the device-side dispatch executor
    (:mod:`sswp_fast.search.executors.device`), which never reads it on the host.

    ``active`` ``[cells, 14]``: the op of every edge. For probing plans ``others`` ``[cells, 14, P]`` lists the
    further ops evaluated (without autograd) on the probed cells' edges; ``probed``, ``gates`` and
    ``no_grad_cells`` are as in :class:`ExecutionPlan`. ``train_weights=False`` (an arch step) differentiates no
    weight bank."""

    active: torch.Tensor
    probed: list[bool] | None = None
    others: torch.Tensor | None = None
    gates: torch.Tensor | None = None
    no_grad_cells: int = 0
    train_weights: bool = True


class MixedEdge(nn.Module):
    """The 7 candidate ops of one edge (``_ops``, reference order; pools BN-wrapped by :func:`build_op`)."""

    def __init__(self, channels: int, stride: int, affine: bool):
        super().__init__()
        self._ops = nn.ModuleList(build_op(name, channels, stride, affine) for name in CANDIDATES)

    def forward(self, x: torch.Tensor, op: int, recompute: bool = False) -> torch.Tensor:
        """``op_k(x)``; with ``recompute`` its inner activations are rebuilt in the backward pass."""
        module = self._ops[op]
        if recompute and not isinstance(module, Identity):
            return recomputed(module, module, x)
        return module(x)

    def probe(self, x: torch.Tensor, op: int, others: list[int], gates: torch.Tensor,
              recompute: bool = False) -> torch.Tensor:
        """``Σ_k gates[k]·op_k(x)`` over ``[op] + others``; only ``op`` is differentiated (spec §5.4). With
        ``recompute`` only ``x`` is kept: the backward pass evaluates the ops again, the others included (the gate
        gradients need their outputs)."""
        if recompute:
            return recomputed(lambda x, gates: self.probe(x, op, others, gates), self, x, gates)
        out = gates[op] * self._ops[op](x)
        if others:
            with torch.no_grad():
                outs = [self._ops[k](x) for k in others]
            for k, y in zip(others, outs, strict=True):
                out = out + gates[k] * y
        return out


def build_preprocessing(c_prev_prev: int, c_prev: int, channels: int, reduction_prev: bool,
                        affine: bool) -> tuple[nn.Module, nn.Module]:
    """A cell's ``preprocess0`` (factorized reduce after a reduction, else ReLU-conv-BN) and ``preprocess1``."""
    if reduction_prev:
        pre0: nn.Module = FactorizedReduce(c_prev_prev, channels, affine)
    else:
        pre0 = ReLUConvBN(c_prev_prev, channels, 1, 1, 0, affine)
    return pre0, ReLUConvBN(c_prev, channels, 1, 1, 0, affine)


class SearchCell(nn.Module):
    """Two preprocessing layers and 14 mixed edges feeding 4 nodes; output is the 4 nodes concatenated."""

    def __init__(self, c_prev_prev: int, c_prev: int, channels: int, reduction: bool, reduction_prev: bool,
                 affine: bool):
        super().__init__()
        self.reduction = reduction
        self.preprocess0, self.preprocess1 = build_preprocessing(c_prev_prev, c_prev, channels, reduction_prev, affine)
        self.edges = nn.ModuleList(
            MixedEdge(channels, 2 if reduction and j < 2 else 1, affine)
            for node in NODE_EDGES for j in range(len(node))
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, active: list[int],
                others: list[list[int]] | None = None, gates: torch.Tensor | None = None,
                recompute_edges: bool = False) -> torch.Tensor:
        """The cell along ``active``; ``recompute_edges`` keeps only the node states for the backward pass."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in NODE_EDGES:
            total: torch.Tensor | None = None
            for j, e in enumerate(node):
                edge = self.edges[e]
                if active[e] < 0:  # an edge that a frozen cell's genotype drops (--prune_edges)
                    continue
                if gates is None:
                    y = edge(states[j], active[e], recompute_edges)
                else:
                    y = edge.probe(states[j], active[e], others[e], gates[e], recompute_edges)
                total = y if total is None else total + y
            states.append(total)
        return torch.cat(states[2:], dim=1)


def build_stems(init_channels: int, imagenet: bool, stem_multiplier: int = 3
                ) -> tuple[dict[str, nn.Module], int, bool]:
    """The stem modules by attribute name (CIFAR: ``stem``; ImageNet: ``stem0``, ``stem1``, spec §4.2-§4.3), the
    channels they output, and whether they reduce the resolution (the first cell then factorizes ``s0``)."""
    c = init_channels
    if imagenet:
        stem0 = nn.Sequential(
            nn.Conv2d(3, c // 2, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c // 2), nn.ReLU(inplace=True),
            nn.Conv2d(c // 2, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c))
        stem1 = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False),
                              nn.BatchNorm2d(c))
        return {"stem0": stem0, "stem1": stem1}, c, True
    c_stem = stem_multiplier * c
    stem = nn.Sequential(nn.Conv2d(3, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem))
    return {"stem": stem}, c_stem, False


def reduction_cells(layers: int) -> tuple[int, int]:
    """The indices of the two reduction cells of a ``layers``-cell network (at a third and two thirds)."""
    return layers // 3, 2 * layers // 3


class SearchNetwork(nn.Module):
    """The weight-sharing super-network of spec §4.2 (CIFAR stem) or §4.3 (``imagenet=True``).

    Architecture state (one tensor each, see the module docstring):
      - ``arch_alpha`` ``[cells, 14, 7]`` parameter: the logits, trained by the arch step only;
      - ``arch_gates`` ``[cells, 14, 7]`` buffer: the last sampled one-hot path (reference ``binary_gates``);
      - ``arch_frozen`` ``[cells]`` bool buffer (not in the reference checkpoint format).
    """

    def __init__(self, init_channels: int, num_classes: int, layers: int, data_mode: str = "SimCLR",
                 affine: bool = False, imagenet: bool = False, stem_multiplier: int = 3):
        super().__init__()
        if data_mode not in DATA_MODES:
            raise ValueError(f"unknown data_mode {data_mode!r}; expected one of {DATA_MODES}")
        if layers < 1:
            raise ValueError(f"layers must be at least 1, got {layers}")
        self.layers = layers
        self.data_mode = data_mode
        self.imagenet = imagenet
        c = init_channels
        stems, c_prev, reduction_prev = build_stems(c, imagenet, stem_multiplier)
        for name, stem in stems.items():
            self.add_module(name, stem)
        c_prev_prev = c_prev
        self.cells = nn.ModuleList()
        c_curr = c
        reductions = reduction_cells(layers)
        for idx in range(layers):
            reduction = idx in reductions
            if reduction:
                c_curr *= 2
            self.cells.append(SearchCell(c_prev_prev, c_prev, c_curr, reduction, reduction_prev, affine))
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, MULTIPLIER * c_curr
        self.feature_dim = c_prev
        self.recompute = "none"
        """What the backward pass recomputes instead of storing: ``none``, ``edge`` or ``cell``
        (:mod:`sswp_fast.search.recompute`)."""
        self.globalpooling = nn.AdaptiveAvgPool2d(1)
        if data_mode == "SimCLR":
            self.classifier: nn.Module = nn.Sequential(
                nn.Linear(c_prev, c_prev), nn.ReLU(), nn.Linear(c_prev, HEAD_DIM_SIMCLR))
        else:
            self.classifier = nn.Linear(c_prev, num_classes)

        self.arch_alpha = nn.Parameter(torch.zeros(layers, EDGES_PER_CELL, NUM_CANDIDATES))
        self.register_buffer("arch_gates", torch.zeros(layers, EDGES_PER_CELL, NUM_CANDIDATES))
        self.register_buffer("arch_frozen", torch.zeros(layers, dtype=torch.bool), persistent=False)
        self.register_state_dict_post_hook(_arch_to_reference_keys)
        self.register_load_state_dict_pre_hook(_arch_from_reference_keys)

    def weight_parameters(self) -> list[nn.Parameter]:
        """Everything the weight optimizer trains: stems, preprocessing, candidate ops, head."""
        return [p for name, p in self.named_parameters() if name != "arch_alpha"]

    def stem_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.imagenet:
            s0 = self.stem0(x)
            return s0, self.stem1(s0)
        s = self.stem(x)
        return s, s

    def unbanked_batch_norms(self) -> list[nn.BatchNorm2d]:
        """The BatchNorms of the stems and of the cells' preprocessing: those the device executor's parameter
        banks (:mod:`sswp_fast.search.executors.banks`) do not hold (plain ``nn.BatchNorm2d``; a multi-process
        :class:`~sswp_fast.runtime.distributed.SyncedBatchNorm` counts its own batches)."""
        stems = [module for name, module in self.named_children() if name.startswith("stem")]
        preprocessing = [part for cell in self.cells for part in (cell.preprocess0, cell.preprocess1)]
        return [m for root in stems + preprocessing for m in root.modules() if isinstance(m, nn.BatchNorm2d)]

    def features(self, x: torch.Tensor, plan: ExecutionPlan | DevicePlan) -> torch.Tensor:
        """Pooled ``[B, feature_dim]`` features of ``x`` along ``plan``."""
        if isinstance(plan, DevicePlan):  # what every cell reads, made at once; one launch counts the batches
            from sswp_fast.search.executors.device import batches_counted_once, cell_steps

            steps = cell_steps(self.cells, plan.active, plan.probed if plan.gates is not None else None, x,
                               plan.train_weights)
            with batches_counted_once(self.unbanked_batch_norms()):
                return self._features(x, plan, steps)
        return self._features(x, plan)

    def _features(self, x: torch.Tensor, plan: ExecutionPlan | DevicePlan, steps: list[CellStep] | None = None
                  ) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and plan.no_grad_cells == 0):
            s0, s1 = self.stem_forward(x)
        for idx, cell in enumerate(self.cells):
            probe = plan.gates is not None and plan.probed is not None and plan.probed[idx]
            forward = self._cell_forward(idx, plan, probe, None if steps is None else steps[idx])
            with torch.set_grad_enabled(torch.is_grad_enabled() and idx >= plan.no_grad_cells):
                out = recomputed(forward, cell, s0, s1) if self.recompute == "cell" else forward(s0, s1)
            s0, s1 = s1, out
        return self.globalpooling(s1).flatten(1)

    def _cell_forward(self, idx: int, plan: ExecutionPlan | DevicePlan, probe: bool,
                      step: CellStep | None = None):
        """``(s0, s1) -> out`` of cell ``idx`` along ``plan``, on the plan's executor (``step``: the cell's
        :class:`~sswp_fast.search.executors.device.CellStep`, on the device executor)."""
        cell = self.cells[idx]
        edges = self.recompute in ("edge", "cell")  # cell: inside the recomputed cell, edge by edge
        if isinstance(plan, DevicePlan):
            from sswp_fast.search.executors.device import run_cell

            return lambda s0, s1: run_cell(cell, NODE_EDGES, s0, s1, plan.active[idx],
                                           plan.others[idx] if probe else None, plan.gates[idx] if probe else None,
                                           recompute_groups=edges, train_weights=plan.train_weights, step=step)
        if probe:
            return lambda s0, s1: cell(s0, s1, plan.active[idx], plan.others[idx], plan.gates[idx], edges)
        return lambda s0, s1: cell(s0, s1, plan.active[idx], recompute_edges=edges)

    def forward(self, x: torch.Tensor, plan: ExecutionPlan | DevicePlan) -> torch.Tensor:
        return self.classifier(self.features(x, plan))


# ---- state-dict boundary: [cells, 14, 7] storage <-> reference per-edge keys ---------------------------

def _edge_key(prefix: str, cell: int, edge: int, name: str) -> str:
    return f"{prefix}cells.{cell}.edges.{edge}.{name}"


def _arch_to_reference_keys(module: SearchNetwork, state: dict[str, Any], prefix: str,
                            local_metadata: Any) -> None:
    """Replace ``arch_alpha`` / ``arch_gates`` by per-edge ``alpha`` / ``binary_gates`` keys, in place,
    each edge's pair placed before its ``_ops`` keys as the reference orders them."""
    alpha = state.pop(prefix + "arch_alpha")
    gates = state.pop(prefix + "arch_gates")
    items = list(state.items())
    state.clear()
    done: set[tuple[int, int]] = set()
    edges_prefix = prefix + "cells."
    for key, value in items:
        if key.startswith(edges_prefix) and ".edges." in key:
            parts = key[len(edges_prefix):].split(".")
            cell, edge = int(parts[0]), int(parts[2])
            if (cell, edge) not in done:
                done.add((cell, edge))
                state[_edge_key(prefix, cell, edge, "binary_gates")] = gates[cell, edge]
                state[_edge_key(prefix, cell, edge, "alpha")] = alpha[cell, edge]
        state[key] = value


def _arch_from_reference_keys(module: SearchNetwork, state: dict[str, Any], prefix: str,
                              local_metadata: Any, strict: bool, missing_keys: list[str],
                              unexpected_keys: list[str], error_msgs: list[str]) -> None:
    """Gather per-edge ``alpha`` / ``binary_gates`` keys back into the ``[cells, 14, 7]`` storage."""
    for name, target in (("alpha", "arch_alpha"), ("binary_gates", "arch_gates")):
        keys = [[_edge_key(prefix, c, e, name) for e in range(EDGES_PER_CELL)] for c in range(module.layers)]
        present = [k for row in keys for k in row if k in state]
        if not present:
            continue
        if len(present) != module.layers * EDGES_PER_CELL:
            missing_keys.extend(k for row in keys for k in row if k not in state)
            for k in present:
                state.pop(k)
            continue
        state[prefix + target] = torch.stack([torch.stack([state.pop(k) for k in row]) for row in keys])
