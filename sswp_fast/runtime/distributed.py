"""Multi-process search (``torchrun``): what each rank computes so that k processes equal one.

A run on k processes with a global batch of B images gives, step for step, the result of one process with
batch B (up to floating-point summation order):

* every rank holds the same network, optimizers and generators (same seed; parameters and buffers are also
  broadcast from rank 0 at start), so every rank samples the same path and applies the same updates;
* each rank runs the network on its B/k slice of every view;
* the network outputs of all ranks are gathered into the single-process row order before the loss
  (:func:`gather_views`): InfoNCE sees the features of all ranks as negatives, and every rank computes the
  same global loss;
* BatchNorm uses the statistics of the global batch (:class:`SyncedBatchNorm`, which works with the gloo
  backend on CPU as well as NCCL);
* the gradients of the weights and of the gates are all-reduced (:func:`average_gradients`).

Why not :class:`torch.nn.parallel.DistributedDataParallel`: a weight-sharing super-network trains a different
subset of its parameters every step (the sampled ops), which DDP handles only by searching the autograd graph
for unused parameters each step, and arch steps take gate gradients with ``torch.autograd.grad``, which DDP's
reducer does not see. One coalesced all-reduce of the gradients that exist (the same set on every rank,
since the path is shared) is exact and simpler.

Gradients: every rank computes the same global loss L, and every collective here has its exact adjoint as
backward (the adjoint of a sum over ranks is a sum over ranks), so the k copies together differentiate k·L;
averaging the gradients over ranks gives dL/dθ exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from sswp_fast.errors import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place in the run: ``rank`` of ``size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and logs."""
        return self.rank == 0


SINGLE = World()


def world_from_env() -> World:
    """The :class:`World` that ``torchrun`` describes in ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    if "RANK" not in os.environ:
        raise ConfigError(f"WORLD_SIZE is {size} but RANK is not set; start multi-process runs with torchrun "
                          "(torchrun --nproc_per_node K -m sswp_fast.cli search ...)")
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def init(world: World, device: torch.device) -> None:
    """Join the process group (NCCL on CUDA, gloo on CPU) unless already joined or single-process."""
    if not world.distributed or dist.is_initialized():
        return
    if "MASTER_ADDR" not in os.environ:
        raise ConfigError("WORLD_SIZE > 1 but MASTER_ADDR is not set; start multi-process runs with torchrun "
                          "(torchrun --nproc_per_node K -m sswp_fast.cli search ...)")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank, world_size=world.size)


def barrier(world: World) -> None:
    """Wait for every rank (no-op in a single process)."""
    if world.distributed and dist.is_initialized():
        dist.barrier()


def shutdown(world: World) -> None:
    """Leave the process group joined by :func:`init`."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def check_batch_size(batch_size: int, world: World) -> None:
    """One-line error unless the global batch splits evenly over the processes."""
    if batch_size % world.size:
        raise ConfigError(f"--batch_size {batch_size} does not split over {world.size} processes; "
                          f"use a multiple of {world.size}")


def shard(rows: int, world: World) -> slice:
    """This rank's rows of a global batch of ``rows`` rows: equal parts in rank order; the last ``rows % k`` rows
    (only an epoch's short last batch can have them) are left out, as every rank must gather equal parts."""
    per_rank = rows // world.size
    return slice(world.rank * per_rank, (world.rank + 1) * per_rank)


class _SumOverRanks(torch.autograd.Function):
    """``Σ_ranks x``; its adjoint is again the sum over ranks."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _SumOverRanks.apply(grad)


class _GatherRows(torch.autograd.Function):
    """All ranks' ``x`` concatenated along dim 0 in rank order; the adjoint sums the gradient over ranks and
    returns this rank's rows."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x)
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        rank = dist.get_rank()
        return grad[rank * ctx.rows:(rank + 1) * ctx.rows]


def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Differentiable all-reduce (sum) of ``x``."""
    return _SumOverRanks.apply(x)


def gather_views(x: torch.Tensor, views: int, world: World) -> torch.Tensor:
    """Rows ``[view 0 of this rank, view 1 of this rank, ...]`` of every rank, reordered into the single-process
    layout ``[view 0 of all ranks, view 1 of all ranks, ...]``; differentiable."""
    if not world.distributed:
        return x
    gathered = _GatherRows.apply(x).view(world.size, views, x.shape[0] // views, *x.shape[1:])
    return gathered.transpose(0, 1).reshape(world.size * x.shape[0], *x.shape[1:])


@torch.no_grad()
def average_gradients(tensors: list[torch.Tensor], world: World) -> None:
    """Replace the gradients of ``tensors`` (those that have one) by their mean over ranks, in one all-reduce."""
    grads = [t.grad for t in tensors if t.grad is not None]
    if not world.distributed or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world.size
    torch._foreach_copy_(grads, [part.view_as(g) for part, g in zip(flat.split([g.numel() for g in grads]), grads,
                                                                  strict=True)])


@torch.no_grad()
def average_tensor(x: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of ``x`` over ranks (a new tensor)."""
    if not world.distributed:
        return x
    out = x.clone()
    dist.all_reduce(out)
    return out / world.size


@torch.no_grad()
def broadcast_state(module: nn.Module, world: World) -> None:
    """Rank 0's parameters and buffers on every rank."""
    if world.distributed:
        for tensor in [*module.parameters(), *module.buffers()]:
            dense = tensor.data.contiguous()  # collectives want the default layout (weights may be channels-last)
            dist.broadcast(dense, 0)
            if dense is not tensor.data:
                tensor.data.copy_(dense)


class SyncedBatchNorm(_BatchNorm):
    """BatchNorm over the global batch of all ranks (training mode); evaluation mode is a plain BatchNorm.

    The state-dict keys are BatchNorm's. Unlike :class:`torch.nn.SyncBatchNorm` this runs on CPU tensors
    (gloo) too. Two all-reduces per call: the mean, then the centred sum of squares (the two-pass variance,
    as ``torch.batch_norm`` computes it)."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = x.numel() // x.shape[1] * dist.get_world_size()
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        mean = sum_over_ranks(x.sum(dims, dtype=acc)) / count
        centred = x - mean.to(x.dtype).view(shape)
        var = sum_over_ranks((centred * centred).sum(dims, dtype=acc)) / count
        out = centred * torch.rsqrt(var + self.eps).to(x.dtype).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                unbiased = var.detach() * (count / max(count - 1, 1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        return out


def sync_batch_norms(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm under ``module`` by a :class:`SyncedBatchNorm` sharing its parameters and
    buffers (so optimizers built afterwards, and the state-dict keys, are unchanged); returns ``module``."""
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm) and not isinstance(child, SyncedBatchNorm):
            synced = SyncedBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                     child.track_running_stats)
            synced.training = child.training
            for key, value in child._parameters.items():
                synced._parameters[key] = value
            for key, value in child._buffers.items():
                synced._buffers[key] = value
            setattr(module, name, synced)
        else:
            sync_batch_norms(child)
    return module
