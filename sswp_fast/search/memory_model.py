"""Peak memory of the search steps, predicted without a device: what ``--recompute auto`` and ``--dry_run`` use.

The engine's own weight and arch steps run on the meta device (shapes only: no data, no memory, no device
needed, so a CUDA run is planned on a CPU machine) while :class:`LiveBytes` counts the bytes of every storage an
op creates for as long as it is alive. A step's predicted peak is what exists before it (parameters, buffers,
optimizer state, and a dataset resident on the device) plus the most its ops hold at once. The path is the
costliest one (:data:`COSTLIEST_OP` on every edge, :data:`PROBED_OP` beside it when an arch step measures gate
gradients), so a sampled path never needs more.

Not modelled, hence the margin (:data:`HEADROOM`) a choice keeps: allocator caching and fragmentation, cuDNN and
oneDNN workspaces, the CUDA context, the augmentation's temporaries; an ``--amp`` run is modelled in float32
(an upper bound), and a multi-process run as one process on its share of the batch.
"""

from __future__ import annotations

import dataclasses
import json
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from sswp_fast.search.config import SearchConfig
from sswp_fast.search.engine import Batch, SearchEngine
from sswp_fast.search.executors.choice import Executor
from sswp_fast.search.space import CANDIDATES

MODES_FASTEST_FIRST = ("none", "edge", "cell")
HEADROOM = 1.25
"""A mode is taken when its predicted peak times this fits the budget."""
COSTLIEST_OP = CANDIDATES.index("sep_conv_5x5")
"""The op that keeps the most for the backward pass (two ReLU + depthwise + pointwise + BatchNorm stages)."""
PROBED_OP = CANDIDATES.index("dil_conv_5x5")
"""The largest other op, run beside the costliest one when an arch step probes an edge."""

_aten = torch.ops.aten
_BATCH_NORMS = (_aten.native_batch_norm.default, _aten._native_batch_norm_legit.default,
                _aten._native_batch_norm_legit_no_training.default)


def _like(t: torch.Tensor, shape: torch.Size | None = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised dense meta tensor of ``t``'s shape (or ``shape``), channels-last where ``t`` is, made
    without the Python meta kernels of ``empty_like`` / ``new_empty``."""
    dtype = dtype or t.dtype
    if (shape is None or shape == t.shape) and t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.empty(t.shape, dtype=dtype, device="meta", memory_format=torch.channels_last)
    return torch.empty(t.shape if shape is None else shape, dtype=dtype, device="meta")


def _batch_norm_shapes(func, args) -> tuple | None:
    """Outputs of a BatchNorm op with the shapes its kernels give, made directly: the meta device's BatchNorm
    goes through a Python decomposition that costs most of a modelled step's time."""
    if func in _BATCH_NORMS:
        x = args[0]
        stats = torch.Size([x.shape[1]])
        return _like(x), _like(x, stats), _like(x, stats)
    if func is _aten.native_batch_norm_backward.default:
        x, mask = args[1], args[-1]
        stats = torch.Size([x.shape[1]])
        return (_like(x), *(_like(x, stats) if wanted else None for wanted in mask[1:]))
    return None


_COMPARISONS = ("eq", "ne", "lt", "le", "gt", "ge", "isnan", "isinf", "isfinite")


def _norm_output(func, args, kwargs) -> torch.Tensor | None:
    """The 0-dim output of a whole-tensor ``linalg_vector_norm`` (gradient clipping takes one per parameter)."""
    if func is not _aten.linalg_vector_norm.default or len(args) > 2 or kwargs.get("dim") is not None:
        return None
    return torch.empty((), dtype=kwargs.get("dtype") or args[0].dtype, device="meta")


def _pointwise_output(func, args, kwargs) -> torch.Tensor | None:
    """The output of an out-of-place floating-point pointwise op, made directly (the meta device decomposes these
    in Python): the broadcast shape, the inputs' dtype, the layout of the input of that shape. None for any op
    outside that narrow case, which then runs its meta kernel."""
    if torch.Tag.pointwise not in func.tags or func._schema.is_mutable or "out" in kwargs or any(
            isinstance(v, torch.Tensor) for v in kwargs.values()):
        return None
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if not tensors:
        return None
    if any(t.dim() for t in tensors):  # 0-dim float tensors act as scalars: they change no dtype or shape
        scalars = [t for t in tensors if not t.dim()]
        if any(not t.dtype.is_floating_point for t in scalars):
            return None
        tensors = [t for t in tensors if t.dim()]
    name = func.name().split("::")[1].split(".")[0]
    values = tensors[1:] if name == "where" else tensors  # where's condition is bool; the values set the dtype
    dtypes = {t.dtype for t in values}
    if len(dtypes) != 1 or not (name in _COMPARISONS or next(iter(dtypes)).is_floating_point):
        return None
    shapes = {t.shape for t in tensors}
    shape = shapes.pop() if len(shapes) == 1 else torch.broadcast_shapes(*(t.shape for t in tensors))
    like = next((t for t in tensors if t.shape == shape), tensors[0])
    return _like(like, shape, torch.bool if name in _COMPARISONS else None)


_NOTHING = object()


def _joined_output(func, args) -> torch.Tensor | None:
    """The output of ``cat`` / ``stack`` of same-dtype tensors, made directly (their meta kernels are Python)."""
    if func not in (_aten.cat.default, _aten.stack.default):
        return None
    tensors = [t for t in args[0] if t.numel() or t.dim() != 1]
    dim = args[1] if len(args) > 1 else 0
    if not tensors or len({t.dtype for t in tensors}) != 1:
        return None
    shape = list(tensors[0].shape)
    if func is _aten.stack.default:
        shape.insert(dim % (len(shape) + 1), len(tensors))
    else:
        dim %= len(shape)
        shape[dim] = sum(t.shape[dim] for t in tensors)
    return torch.empty(shape, dtype=tensors[0].dtype, device="meta")


def _foreach_output(func, args):
    """The outputs of a ``_foreach_*`` op, made directly (the meta device runs these tensor by tensor in Python):
    nothing for the in-place ones, one tensor like each input (a 0-dim one per input for norms) otherwise."""
    name = func.name()
    if not name.startswith("aten::_foreach_"):
        return None
    if func._schema.is_mutable:
        return _NOTHING
    if "norm" in name:
        return [_like(t, torch.Size([])) for t in args[0]]
    return [_like(t) for t in args[0]]


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of the storages that ops create inside the mode while they are alive: ``peak`` is the most
    alive at once. Storages that existed before the mode (parameters, optimizer state) are not counted."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self.live:
            return
        self.live[key] = storage.nbytes()
        self.current += self.live[key]
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = None
        if args and isinstance(args[0], torch.Tensor) and args[0].is_meta:
            out = _batch_norm_shapes(func, args)
            if out is None:
                out = _pointwise_output(func, args, kwargs or {})
            if out is None:
                out = _norm_output(func, args, kwargs or {})
        elif args and isinstance(args[0], list) and args[0] and getattr(args[0][0], "is_meta", False):
            out = _joined_output(func, args)
            if out is None:
                out = _foreach_output(func, args)
            if out is _NOTHING:
                return None
        if out is None:
            out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self._track(leaf)
        return out


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


class FixedPathEngine(SearchEngine):
    """A search engine (on the meta device by default) whose every sampled path is the same one: by default the
    costliest (:data:`COSTLIEST_OP` on every edge, :data:`PROBED_OP` beside it in ``two`` mode)."""

    def __init__(self, config: SearchConfig, num_classes: int, executor: Executor, device: str = "meta",
                 active: list[list[int]] | None = None, inactive: list[list[int]] | None = None):
        """``device``: meta for predictions; a real device runs the same steps (how the model is tested).
        ``active`` / ``inactive``: the op of every edge of every cell (``[layers][14]``) instead of the costliest."""
        super().__init__(config, num_classes, device, executor=executor)
        shape = (config.layers, len(self.net.cells[0].edges))
        self._host = ([[COSTLIEST_OP] * shape[1] for _ in range(shape[0])] if active is None else active,
                      ([[PROBED_OP] * shape[1] for _ in range(shape[0])] if inactive is None else inactive)
                      if self.two else None)
        self._active = torch.tensor(self._host[0], device=device)
        self._inactive = None if self._host[1] is None else torch.tensor(self._host[1], device=device)

    def sample(self, *, skip_drop_prob: float, pool_drop_prob: float, warmup: bool):
        return self._active, self._inactive

    def _host_path(self, active, inactive):
        return self._host[0], None if inactive is None else self._host[1]

    def persistent_bytes(self) -> int:
        """Parameters, buffers and the optimizer state of every weight, as after the first steps of a run."""
        banked = set() if self.masked_update is None else {id(p) for p in self.masked_update.banks.params}
        with torch.no_grad(), LiveBytes():  # the mode for its fast meta kernels; the state is counted below
            for p in self.clip_params:  # on the device executor the banks get the gradients, not the edges
                if id(p) not in banked:
                    p.grad = torch.zeros_like(p)
            if self.masked_update is not None:
                self.masked_update.step(self._active)
                self.masked_update.zero_grad()
            else:
                self.weight_optimizer.step()
        self.weight_optimizer.zero_grad(set_to_none=True)
        modules = [self.net] + ([self.byol, self.target_net, self.target_projector] if self.byol else [])
        state = [v for s in self.weight_optimizer.state.values() for v in s.values()]
        if self.masked_update is not None:  # the masked update's maps (per element, per parameter)
            state += [self.masked_update.banks.element_param, self.masked_update.banks.param_op]
        return sum(_tensor_bytes(m.parameters()) + _tensor_bytes(m.buffers()) for m in modules) + _tensor_bytes(state)


@dataclass(frozen=True)
class ModelledPeaks:
    """Predicted bytes of one mode: ``persistent`` before any step, and the peak of each step kind on top."""

    persistent: int
    weight_step: int
    arch_step: int

    @property
    def peak(self) -> int:
        return self.persistent + max(self.weight_step, self.arch_step)


_SHAPING = frozenset({"data_mode", "dataset", "layers", "init_channels", "net_mode", "affine", "weight_optm",
                       "momentum", "reference_quirks", "memory_format"})
"""The options a step's memory depends on (besides the batch and the executor): the key of :data:`_CACHE`."""
_CACHE: dict[tuple, dict[str, ModelledPeaks]] = {}
"""Predictions already made in this process (a modelled step at the default size takes seconds)."""


def _modelled(config: SearchConfig, num_classes: int, image_size: int, rows: int,
              executor: Executor) -> dict[str, ModelledPeaks]:
    engine = FixedPathEngine(dataclasses.replace(config, recompute="none", amp="off"), num_classes, executor)
    persistent = engine.persistent_bytes()
    views = 1 if config.data_mode == "supervised" else 2
    batch = Batch(tuple(torch.empty(rows, 3, image_size, image_size, device="meta") for _ in range(views)),
                  torch.zeros(rows, dtype=torch.long, device="meta"))
    predicted = {}
    for mode in MODES_FASTEST_FIRST:
        engine.net.recompute = mode
        peaks = []
        for step in (lambda: engine.weight_step(batch, warmup=False), lambda: engine.arch_step(batch)):
            with LiveBytes() as live:
                step()
            peaks.append(live.peak)
        predicted[mode] = ModelledPeaks(persistent, *peaks)
    return predicted


def modelled_peaks(config: SearchConfig, num_classes: int, image_size: int, rows: int,
                   executor: Executor) -> dict[str, ModelledPeaks]:
    """Every ``--recompute`` mode's predicted bytes for a run of ``config`` (resolved) with ``rows`` images per
    process and view on ``executor``; the same numbers whatever device the run is for."""
    config = dataclasses.replace(config, compile="off", max_memory=None, kernels="auto")
    key = (json.dumps({k: v for k, v in config.to_dict().items() if k in _SHAPING}, sort_keys=True), num_classes,
           image_size, rows, executor)
    if key not in _CACHE:
        _CACHE[key] = _modelled(config, num_classes, image_size, rows, executor)
    return _CACHE[key]


def fastest_fitting(predicted_gb: dict[str, float], budget_gb: float) -> str | None:
    """The fastest mode whose prediction times :data:`HEADROOM` fits ``budget_gb``; None when none does."""
    for mode in MODES_FASTEST_FIRST:
        if predicted_gb[mode] * HEADROOM <= budget_gb:
            return mode
    return None


def smallest_budget_gb(predicted_gb: float) -> float:
    """The free memory (GB) a mode predicted at ``predicted_gb`` needs to be taken."""
    return predicted_gb * HEADROOM
