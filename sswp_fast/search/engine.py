"""One search step at a time: the documented Python API behind the trainer and the benchmarks.

    engine = SearchEngine(SearchConfig(layers=5, init_channels=8, batch_size=4).resolved(), num_classes=10)
    engine.weight_step(Batch(views=(view1, view2)), warmup=False, skip_drop_prob=0.2)   # SimCLR: two views
    engine.arch_step(Batch(views=(arch_view1, arch_view2)))

A **weight step** samples a path (spec §5.2), runs exactly one op per edge (the sampled op, or the argmax op
of a frozen cell), and takes an SGD step; candidate ops that did not run have no gradient and so get no
weight decay or momentum that step. An **arch step** samples a path, measures the gate gradients of the
sampled ops of every non-frozen cell on that batch alone (spec §5.5, ProxylessNAS intent), and applies
closed-form alpha gradients → Adam (β1 = 0) → pair rescale. Nothing is computed that cannot change a result:
no inactive op in weight steps, no weight gradients in arch steps, no autograd below the lowest non-frozen
cell. ``reference_quirks=True`` instead accumulates gate gradients over every pass since the start, as the
reference does (§16.1), which needs the inactive op in weight steps too.

With the Triton kernels (``kernels="triton"``) the sampled path never leaves the device: the steps run through
the device-side dispatch executor (:mod:`sswp_fast.search.executors.device`) and the same results come from the same
launches whatever was sampled; otherwise the path is read on the host once per step and only the sampled modules run.
``compile`` (``--compile``) runs the steps' forward pass and loss under ``torch.compile`` on the dispatch
executor (:mod:`sswp_fast.search.executors.compiled`). On CUDA the dispatch executor's whole steps are captured as CUDA
graphs and replayed (``--cuda_graphs``, :mod:`sswp_fast.search.executors.cuda_graphs`); everything a step updates is
updated in place, which is what a replayed graph needs.
"""

from __future__ import annotations

import copy
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from sswp_fast.losses.objectives import byol_loss, info_nce_with_topk, topk_accuracy
from sswp_fast.runtime.devices import pick_memory_format
from sswp_fast.runtime.distributed import (
    SINGLE,
    World,
    average_gradients,
    average_tensor,
    broadcast_state,
    gather_views,
    sync_batch_norms,
)
from sswp_fast.runtime.precision import amp_dtype, autocast
from sswp_fast.search.arch_update import ArchAdam, ArchAdamConfig, alpha_grad_full, alpha_grad_two, rescale_pair
from sswp_fast.search.config import SearchConfig
from sswp_fast.search.executors.choice import Executor, GraphChoice, choose_executor, choose_graphs
from sswp_fast.search.executors.compiled import DEFAULT_BACKEND, CompiledStep, compile_step
from sswp_fast.search.export import derive_cell, edge_ops
from sswp_fast.search.recompute import resolve_recompute
from sswp_fast.search.sampling import one_hot, sample_paths
from sswp_fast.search.space import NUM_CANDIDATES
from sswp_fast.search.supernet import EDGES_PER_CELL, NODE_EDGES, DevicePlan, ExecutionPlan, SearchNetwork

if TYPE_CHECKING:
    from sswp_fast.search.executors.bank_optimizer import MaskedBankUpdate
    from sswp_fast.search.executors.cuda_graphs import StepGraphs


@dataclass
class Batch:
    """One batch of model inputs: one view (supervised) or two views (SimCLR, BYOL) of ``[B, 3, S, S]``."""

    views: tuple[torch.Tensor, ...]
    labels: torch.Tensor | None = None


@dataclass
class StepResult:
    """Detached device tensors (no host synchronisation): the loss, top-1/top-5 in percent, rows counted."""

    loss: torch.Tensor
    top1: torch.Tensor
    top5: torch.Tensor
    rows: int


class BYOLHeads(nn.Module):
    """BYOL projector and predictor on the pooled super-network features (spec §12, done correctly)."""

    def __init__(self, feature_dim: int, hidden: int = 4096, out: int = 256):
        super().__init__()

        def mlp(d_in: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, out))

        self.projector = mlp(feature_dim)
        self.predictor = mlp(out)


class SearchEngine:
    """The super-network, both optimizers and the architecture state of one search."""

    def __init__(self, config: SearchConfig, num_classes: int, device: torch.device | str = "cpu",
                 world: World = SINGLE, executor: Executor | None = None, graphs: GraphChoice | None = None,
                 compile_backend: str = DEFAULT_BACKEND):
        """``world``: this process's place in a multi-process run (:mod:`sswp_fast.runtime.distributed`); batches given
        to the steps are then this rank's slice of every view. ``executor``: the executor to run, by default the
        one :func:`~sswp_fast.search.executors.choice.choose_executor` picks for ``config`` on ``device``; ``graphs``:
        whether the steps are captured as CUDA graphs, by default
        :func:`~sswp_fast.search.executors.choice.choose_graphs`'s answer; ``compile_backend``: the ``torch.compile``
        backend of ``--compile`` (tests pass ``aot_eager``). ``--recompute auto`` is the
        executor's default here (``none``, or ``edge`` on the device executor); the search command resolves it by
        memory first (:mod:`sswp_fast.search.memory_model`)."""
        self.config = config
        self.device = torch.device(device)
        self.world = world
        self.two = config.net_mode == "two"
        self.quirks = config.reference_quirks
        self.net = SearchNetwork(config.init_channels, num_classes, config.layers, config.data_mode,
                                 config.affine, imagenet=config.dataset == "imagenet").to(self.device)
        self.memory_format = pick_memory_format(config.memory_format, self.device)
        self.net.to(memory_format=self.memory_format)
        self.executor = executor if executor is not None else choose_executor(config, self.device, world.size)
        """Which executor runs the steps, and why (:func:`sswp_fast.search.executors.choice.choose_executor`)."""
        self.kernels = self.executor.kernels
        self.dispatch = self.executor.dispatch
        """Device-side dispatch (:mod:`sswp_fast.search.executors.device`): the sampled path is never read on the host.
        It runs the Triton kernels, and the compiled steps (with the PyTorch ops where Triton does not run)."""
        self.net.recompute = resolve_recompute(config.recompute, self.dispatch)
        self.amp_dtype = amp_dtype(config.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        """Loss scaling of ``--amp fp16`` (disabled otherwise: its scale is then 1 and it changes nothing)."""
        if world.distributed:
            sync_batch_norms(self.net)
        broadcast_state(self.net, world)
        weights = self.net.weight_parameters()
        self.byol: BYOLHeads | None = None
        if config.data_mode == "byol":
            self.byol = BYOLHeads(self.net.feature_dim).to(self.device)
            if world.distributed:
                sync_batch_norms(self.byol)
            broadcast_state(self.byol, world)
            weights += list(self.byol.parameters())
            self.target_net = copy.deepcopy(self.net).requires_grad_(False)
            self.target_projector = copy.deepcopy(self.byol.projector).requires_grad_(False)
        self.weight_params = weights
        # foreach: a few multi-tensor launches per step, not a few per parameter; what torch.optim picks itself on
        # CUDA, set here so that every device runs (and the launch counter counts) the same update
        if config.weight_optm == "sgd":
            self.weight_optimizer: torch.optim.Optimizer = torch.optim.SGD(
                weights, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, foreach=True)
        else:
            self.weight_optimizer = torch.optim.Adam(  # capturable: step counts on the GPU, no sync (CUDA graphs)
                weights, lr=config.lr, weight_decay=config.weight_decay, foreach=True,
                capturable=self.dispatch and self.device.type == "cuda")
        self.masked_update: MaskedBankUpdate | None = None
        """The weight step of the device executor: the candidate ops live in parameter banks
        (:mod:`sswp_fast.search.executors.banks`), updated only where their op ran
        (:mod:`sswp_fast.search.executors.bank_optimizer`)."""
        self.clip_params = weights
        """The tensors whose gradients a weight step averages and clips: the weights, and on the device executor
        the banks (which get the candidate ops' gradients there)."""
        if self.dispatch:
            from sswp_fast.search.executors.bank_optimizer import MaskedBankUpdate
            from sswp_fast.search.executors.banks import bind_banks

            banks = bind_banks(self.net)
            if self.byol is not None:
                bind_banks(self.target_net)
            self.masked_update = MaskedBankUpdate(banks, self.weight_optimizer)
            self.clip_params = weights + banks.leaves()
        self.arch_optimizer = ArchAdam(config.layers * EDGES_PER_CELL, self.device, ArchAdamConfig(
            lr=config.arch_lr, beta1=config.arch_adam_beta1, beta2=config.arch_adam_beta2,
            weight_decay=config.arch_weight_decay))
        self.generator = None if self.device.type == "meta" else torch.Generator(self.device).manual_seed(config.seed)
        """The paths' random source (none on the meta device, where :mod:`sswp_fast.search.memory_model` sets the
        paths)."""
        self.graphs_choice = graphs if graphs is not None else choose_graphs(config, self.device, self.executor,
                                                                             world.size)
        self.graphs: StepGraphs | None = None
        """The CUDA graphs of the steps (``--cuda_graphs``, :mod:`sswp_fast.search.executors.cuda_graphs`)."""
        if self.graphs_choice.enabled:
            from sswp_fast.search.executors.cuda_graphs import StepGraphs

            self.graphs = StepGraphs(self.generator, config.batch_size // world.size, self.graphs_choice.strict)
        self.gate_grad_sum = torch.zeros_like(self.net.arch_alpha) if self.quirks else None
        self._frozen_host = [False] * config.layers
        """Host copy of ``arch_frozen`` (it changes only in :meth:`freeze`), so planning needs no sync."""
        self.frozen_ops = torch.zeros(config.layers, EDGES_PER_CELL, dtype=torch.long, device=self.device)
        """``[cells, 14]``: the op every edge of a frozen cell runs (see :meth:`freeze`)."""
        self._step_loss = self._loss
        """The objective of the training steps: :meth:`_loss`, compiled with ``--compile`` (then called, and
        differentiated, inside :meth:`_compile_settings`)."""
        self._compiled: CompiledStep | None = None
        self._compiled_kinds: set[tuple] | None = None
        if config.compile != "off":
            from sswp_fast.search.executors.device import slot_groups

            for cell in self.net.cells:
                slot_groups(cell, NODE_EDGES)
            self._compiled = compile_step(self._loss, config.compile, config.compile_cache, compile_backend)
            self._step_loss = self._compiled.fn
            self._compiled_kinds = set()

    # ---- architecture state --------------------------------------------------------------------------

    @property
    def frozen(self) -> torch.Tensor:
        return self.net.arch_frozen

    def frozen_cells(self) -> list[int]:
        return [i for i, f in enumerate(self._frozen_host) if f]

    @torch.no_grad()
    def freeze(self, cells: list[int] | tuple[int, ...]) -> None:
        """Fix every edge of ``cells`` to its argmax op (spec §5.7); their alphas stop moving. With
        ``--prune_edges`` a frozen cell runs its exported genotype instead (the restricted export of its alphas,
        2 edges per node, the other edges dropped): the compact cell that fine-tuning will start from."""
        for c in cells:
            self.net.arch_frozen[c] = True
            self._frozen_host[c] = True
            self.frozen_ops[c] = self._frozen_cell_ops(c)
            self.net.arch_gates[c] = one_hot(self.frozen_ops[c])
            if self.gate_grad_sum is not None:
                self.gate_grad_sum[c] = 0

    def _frozen_cell_ops(self, cell: int) -> torch.Tensor:
        alpha = self.net.arch_alpha[cell].detach()
        if not self.config.prune_edges:
            return alpha.argmax(-1)
        genotype = derive_cell(alpha, True, self.config.skip_r_num, self.config.pool_r_num)
        return torch.tensor(edge_ops(genotype), device=self.device)

    def will_compile(self, kind: str) -> bool:
        """True when the next ``kind`` (``"weight"`` or ``"arch"``) step is the first of its graph under
        ``--compile`` (it compiles, or loads the compiled code from the cache), so a progress bar can say so."""
        if self._compiled_kinds is None:
            return False
        key = (kind, tuple(self._frozen_host) if kind == "arch" or self.quirks else ())
        if key in self._compiled_kinds:
            return False
        self._compiled_kinds.add(key)
        return True

    def _compile_settings(self) -> AbstractContextManager[None]:
        """Where the compiled objective runs, forward and backward (either may compile: see
        :mod:`sswp_fast.search.executors.compiled`): its scoped settings under ``--compile``, nothing otherwise."""
        return self._compiled.settings() if self._compiled is not None else nullcontext()

    def set_lr(self, lr: float) -> None:
        for group in self.weight_optimizer.param_groups:
            group["lr"] = lr

    def sample(self, *, skip_drop_prob: float, pool_drop_prob: float,
               warmup: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sampled ``[cells, 14]`` active (and, mode two, inactive) ops; frozen cells take their argmax."""
        alpha = self.net.arch_alpha.detach()
        active, inactive = sample_paths(alpha, mode=self.config.net_mode, skip_drop_prob=skip_drop_prob,
                                        pool_drop_prob=pool_drop_prob, warmup=warmup, generator=self.generator)
        active = torch.where(self.frozen[:, None], self.frozen_ops, active)
        self.net.arch_gates.copy_(one_hot(active))
        return active, inactive

    def _plan(self, active: torch.Tensor, inactive: torch.Tensor | None, probe: bool,
              arch: bool = False) -> ExecutionPlan | DevicePlan:
        """The plan of the path: probing plans list the extra ops of non-frozen cells. Arch plans also skip
        autograd below the lowest probed cell (no gate and no weight is trained there). Under device-side
        dispatch the path stays on the device; otherwise it is transferred to the host once."""
        probed = [not f for f in self._frozen_host]
        first = probed.index(True) if arch and any(probed) else 0
        if self.dispatch:
            if not probe:
                return DevicePlan(active)
            if self.two:
                others = inactive[..., None]
            else:  # the six other ops of every edge
                others = (active[..., None] + torch.arange(1, NUM_CANDIDATES, device=active.device)) % NUM_CANDIDATES
            gates = one_hot(active).requires_grad_(True)
            return DevicePlan(active, probed, others, gates, no_grad_cells=first, train_weights=not arch)
        active_list, inactive_list = self._host_path(active, inactive if probe and self.two else None)
        if not probe:
            return ExecutionPlan(active_list)
        if self.two:
            others = [[[b] for b in row] for row in inactive_list]
        else:
            others = [[[k for k in range(NUM_CANDIDATES) if k != a] for a in row] for row in active_list]
        gates = one_hot(active).requires_grad_(True)
        return ExecutionPlan(active_list, probed, others, gates, no_grad_cells=first)

    def _host_path(self, active: torch.Tensor,
                   inactive: torch.Tensor | None) -> tuple[list[list[int]], list[list[int]] | None]:
        """The path as host lists: the one transfer of a step on the PyTorch executor."""
        return active.tolist(), None if inactive is None else inactive.tolist()

    # ---- objectives ------------------------------------------------------------------------------------

    def _input(self, views: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The views stacked along the batch, in the network's dtype and the engine's memory format."""
        x = torch.cat(views, dim=0).to(self.net.arch_alpha.dtype)
        return x.contiguous(memory_format=self.memory_format)

    def _network(self, batch: Batch, plan: ExecutionPlan | DevicePlan) -> torch.Tensor:
        """The network's output on the stacked views, under ``--amp``'s autocast; the loss takes it in float32."""
        with autocast(self.amp_dtype, self.device):
            out = self.net(self._input(batch.views), plan)
        return out.float()

    def _loss(self, batch: Batch, plan: ExecutionPlan | DevicePlan, gather: bool = True) -> StepResult:
        """The objective on ``batch``; with ``gather`` (training steps) over the global batch of all ranks,
        otherwise over ``batch`` alone."""
        mode = self.config.data_mode
        world = self.world if gather else SINGLE
        views = len(batch.views)
        if mode == "SimCLR":
            features = gather_views(self._network(batch, plan), views, world)
            loss, top1, top5 = info_nce_with_topk(features, self.config.temperature)
            return StepResult(loss, top1, top5, features.shape[0])
        if mode == "supervised":
            logits = gather_views(self._network(batch, plan), views, world)
            labels = gather_views(batch.labels, views, world)
            loss = F.cross_entropy(logits, labels)
            top1, top5 = topk_accuracy(logits, labels)
            return StepResult(loss, top1, top5, logits.shape[0])
        return self._byol_loss(batch, plan, world)

    def _byol_loss(self, batch: Batch, plan: ExecutionPlan | DevicePlan, world: World) -> StepResult:
        assert self.byol is not None
        x = self._input(batch.views)
        with autocast(self.amp_dtype, self.device):
            online = self.byol.predictor(self.byol.projector(self.net.features(x, plan)))
            with torch.no_grad():
                target = self.target_projector(self.target_net.features(x, type(plan)(plan.active)))
        online = gather_views(online.float(), 2, world)
        target = gather_views(target.float(), 2, world)
        p1, p2 = online.chunk(2)
        z1, z2 = target.chunk(2)
        loss = byol_loss(p1, z2) + byol_loss(p2, z1)
        zero = torch.zeros((), device=x.device)
        return StepResult(loss, zero, zero, p1.shape[0])

    @torch.no_grad()
    def update_target(self) -> None:
        """EMA of the online network and projector into the BYOL target, after every weight step."""
        decay = self.config.byol_decay
        online = list(self.net.parameters()) + list(self.byol.projector.parameters())
        target = list(self.target_net.parameters()) + list(self.target_projector.parameters())
        torch._foreach_lerp_(target, online, 1 - decay)
        for t, o in zip(self.target_net.buffers(), self.net.buffers(), strict=True):
            t.copy_(o)
        for t, o in zip(self.target_projector.buffers(), self.byol.projector.buffers(), strict=True):
            t.copy_(o)

    # ---- steps -----------------------------------------------------------------------------------------

    def train(self) -> None:
        self.net.train()
        if self.byol is not None:
            self.byol.train()
            self.target_net.train()
            self.target_projector.train()

    def weight_step(self, batch: Batch, *, warmup: bool, skip_drop_prob: float = 0.0,
                    pool_drop_prob: float = 0.0) -> StepResult:
        """One SGD step of the weights along a freshly sampled path (replayed from its CUDA graph with
        ``--cuda_graphs``)."""
        def step(batch: Batch) -> StepResult:
            return self._weight_step(batch, warmup, skip_drop_prob, pool_drop_prob)

        if self.graphs is None:
            return step(batch)
        lr = self.weight_optimizer.param_groups[0]["lr"]
        key = (warmup, skip_drop_prob, pool_drop_prob, lr, tuple(self._frozen_host))
        return self.graphs.run("weight", key, batch, step)

    def _weight_step(self, batch: Batch, warmup: bool, skip_drop_prob: float, pool_drop_prob: float) -> StepResult:
        self.train()
        active, inactive = self.sample(skip_drop_prob=skip_drop_prob, pool_drop_prob=pool_drop_prob,
                                       warmup=warmup)
        plan = self._plan(active, inactive, probe=self.quirks)
        with self._compile_settings():
            result = self._step_loss(batch, plan)
            if self.masked_update is not None:
                self.masked_update.zero_grad()
            else:
                self.weight_optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(result.loss).backward()
        average_gradients(self.clip_params + ([plan.gates] if plan.gates is not None else []), self.world)
        update, path = (self.weight_optimizer, ()) if self.masked_update is None else (self.masked_update, (active,))
        self.scaler.unscale_(update)  # (fp16) the banks' gradients too: an overflow anywhere skips the whole step
        nn.utils.clip_grad_norm_(self.clip_params, self.config.grad_clip)
        self.scaler.step(update, *path)
        self.scaler.update()
        if plan.gates is not None and self.gate_grad_sum is not None:
            self._accumulate(plan.gates.grad)
        if self.byol is not None:
            self.update_target()
        return StepResult(result.loss.detach(), result.top1, result.top5, result.rows)

    def _accumulate(self, gate_grad: torch.Tensor | None) -> None:
        if gate_grad is not None:
            self.gate_grad_sum += gate_grad.masked_fill(self.frozen[:, None, None], 0)

    def arch_step(self, batch: Batch, *, skip_drop_prob: float = 0.0,
                  pool_drop_prob: float = 0.0) -> StepResult | None:
        """One architecture update of every non-frozen cell from this batch; None when all cells are frozen.
        Replayed from its CUDA graph with ``--cuda_graphs``."""
        if all(self._frozen_host):
            return None

        def step(batch: Batch) -> StepResult:
            return self._arch_step(batch, skip_drop_prob, pool_drop_prob)

        if self.graphs is None:
            return step(batch)
        return self.graphs.run("arch", (skip_drop_prob, pool_drop_prob, tuple(self._frozen_host)), batch, step)

    def _arch_step(self, batch: Batch, skip_drop_prob: float, pool_drop_prob: float) -> StepResult:
        self.train()
        active, inactive = self.sample(skip_drop_prob=skip_drop_prob, pool_drop_prob=pool_drop_prob,
                                       warmup=False)
        result, gate_grad = self.gate_gradient(batch, active, inactive)
        if gate_grad is None:
            return StepResult(result.loss.detach(), result.top1, result.top5, result.rows)
        gate_grad = average_tensor(gate_grad, self.world).masked_fill(self.frozen[:, None, None], 0)
        if self.gate_grad_sum is not None:
            self.gate_grad_sum += gate_grad
            gate_grad = self.gate_grad_sum
        self._update_alpha(gate_grad, active, inactive)
        return StepResult(result.loss.detach(), result.top1, result.top5, result.rows)

    def gate_gradient(self, batch: Batch, active: torch.Tensor,
                      inactive: torch.Tensor | None) -> tuple[StepResult, torch.Tensor | None]:
        """The loss of an arch step along the path ``active`` (``inactive``) on ``batch`` and the gate gradients
        ``G`` ``[cells, 14, 7]`` of this process's rows (spec §5.5); ``G`` is None when an fp16 backward
        overflowed at the loss scale of the weight steps."""
        plan = self._plan(active, inactive, probe=True, arch=True)
        with self._compile_settings():
            result = self._step_loss(batch, plan)
            if not self.scaler.is_enabled():
                (gate_grad,) = torch.autograd.grad(result.loss, [plan.gates])
                return result, gate_grad
            scale = self.scaler.get_scale()
            (gate_grad,) = torch.autograd.grad(result.loss * scale, [plan.gates])
        gate_grad = gate_grad / scale
        return result, gate_grad if bool(torch.isfinite(gate_grad).all()) else None

    @torch.no_grad()
    def _update_alpha(self, gate_grad: torch.Tensor, active: torch.Tensor, inactive: torch.Tensor | None) -> None:
        alpha = self.net.arch_alpha.detach().view(-1, NUM_CANDIDATES)
        g = gate_grad.view(-1, NUM_CANDIDATES)
        a = active.clamp(min=0).view(-1)  # a frozen cell's dropped edges (-1) are masked out below
        mask = ~self.frozen[:, None].expand(-1, EDGES_PER_CELL).reshape(-1)
        if self.two:
            b = inactive.view(-1)
            grad = alpha_grad_two(alpha, g, a, b)
            new = rescale_pair(alpha, self.arch_optimizer.step(alpha, grad, mask), a, b)
        else:
            new = self.arch_optimizer.step(alpha, alpha_grad_full(alpha, g), mask)
        self.net.arch_alpha.data.copy_(new.view_as(self.net.arch_alpha))

    @torch.no_grad()
    def eval_step(self, batch: Batch) -> StepResult:
        """Evaluate the argmax architecture (frozen cells: what they run) with eval-mode BN on a batch."""
        self.net.eval()
        ops = torch.where(self.frozen[:, None], self.frozen_ops, self.net.arch_alpha.argmax(-1))
        plan = DevicePlan(ops) if self.dispatch else ExecutionPlan(ops.tolist())
        if self.config.data_mode == "byol":
            self.byol.eval()
            self.target_net.eval()
            self.target_projector.eval()
        result = self._loss(batch, plan, gather=False)
        return StepResult(result.loss.detach(), result.top1, result.top5, result.rows)

    # ---- persistence -----------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything a resumed run needs besides the data pipeline and schedule position."""
        state = {
            "net": self.net.state_dict(),
            "frozen": self.frozen.clone(),
            "weight_optimizer": self.weight_optimizer.state_dict(),
            "arch_optimizer": self.arch_optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }
        if self.gate_grad_sum is not None:
            state["gate_grad_sum"] = self.gate_grad_sum.clone()
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        if self.byol is not None:
            state["byol"] = self.byol.state_dict()
            state["target_net"] = self.target_net.state_dict()
            state["target_projector"] = self.target_projector.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.net.arch_frozen.copy_(state["frozen"])
        self._frozen_host = self.net.arch_frozen.tolist()
        for c in self.frozen_cells():
            self.frozen_ops[c] = self._frozen_cell_ops(c)
        self.weight_optimizer.load_state_dict(state["weight_optimizer"])
        if self.masked_update is not None:
            self.masked_update.adopt_state()
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])
        self.generator.set_state(state["generator"])
        if self.gate_grad_sum is not None:
            self.gate_grad_sum.copy_(state["gate_grad_sum"])
        if self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        if self.byol is not None:
            self.byol.load_state_dict(state["byol"])
            self.target_net.load_state_dict(state["target_net"])
            self.target_projector.load_state_dict(state["target_projector"])
