"""NASiam's MLP search space (spec ``nasiam.md`` §2, §5.1): the 7 candidate ops of each framework, the mixed op of
the DARTS relaxation with a fused forward, the searchable and the derived MLP cells, and the genotype parse.

Module layouts, and therefore ``state_dict`` keys, are the reference's: :func:`build_op` applies the same
dimension-dependent wrappers (:func:`linear_wrapper`, :func:`op_wrapper`), a :class:`MixedOp` keeps its candidates
in ``_ops.{k}``, a cell its layers in ``_ops.{i}``. Departures from the reference, all deliberate:

- MoCo's ``BatchNorm1d(in_dim, out_dim)`` (eps = out_dim, spec §8 quirk 6) is fixed to ``BatchNorm1d(out_dim)``
  unless ``moco_bn_eps_bug=True`` asks for the reference's eps;
- :class:`HeadSearchCell`'s ``alphas`` is an ``nn.Parameter`` (spec §8 quirk 1), so it is in the state dict;
- :meth:`MixedOp.forward` computes the same sum as the reference (:meth:`MixedOp.reference_forward`) in about
  half the operator calls: the Linears on the input side by side (one matrix multiply on CUDA), one batch norm
  call per stage, one weighted reduction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sswp_fast.errors import ConfigError

_POOLS = ("maxpool_3x3", "avgpool_3x3")
_SIAM_LINEARS = ("linear_relu", "linear_silu", "linear_hardswish", "linear_elu")
_SIMCLR_LINEARS = ("linear_relu", "linear_hardswish", "linear_silu", "linear_elu")

OPS: dict[str, tuple[str, ...]] = {
    "simsiam": (*_POOLS, "identity", *_SIAM_LINEARS),
    "moco": (*_POOLS, "identity", *_SIAM_LINEARS),
    "simclr": (*_POOLS, "identity", *_SIMCLR_LINEARS),
}
"""The candidate op names of each framework in alpha-column order (spec §2.1; SimCLR swaps indices 4 and 5).
Every order has the two pools at 0-1, ``identity`` at 2 and the four ``linear_*`` at 3-6, which the fused
:meth:`MixedOp.forward` relies on."""

NUM_OPS = 7
_IDENTITY = 2
_FIRST_LINEAR = 3

_ACTIVATION_MODULES: dict[str, Callable[[], nn.Module]] = {
    "linear_relu": lambda: nn.ReLU(inplace=True),
    "linear_silu": lambda: nn.SiLU(inplace=True),
    "linear_hardswish": lambda: nn.Hardswish(inplace=True),
    "linear_elu": lambda: nn.ELU(inplace=True),
}
_LINEAR_ACTIVATION = {"linear_relu": "relu", "linear_silu": "silu", "linear_hardswish": "hardswish",
                      "linear_elu": "elu"}
_ACTIVATION_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda t: t,
    "relu": F.relu,
    "silu": F.silu,
    "hardswish": F.hardswish,
    "elu": F.elu,
}


def _check_framework(framework: str) -> None:
    if framework not in OPS:
        raise ConfigError(f"unknown NASiam framework {framework!r}; use one of {', '.join(OPS)}")


def linear_wrapper(in_dim: int, out_dim: int, act: nn.Module, framework: str, *,
                   moco_bn_eps_bug: bool = False) -> nn.Module:
    """A ``linear_*`` candidate (spec §2.2): ``Linear(in, out)`` alone when ``in < out``, otherwise
    ``Sequential(Linear, BatchNorm1d(out), act)``. The Linear has no bias, except in MoCo, whose reference keeps it.

    In-place activations are safe here: ``act`` only ever overwrites the batch norm's fresh output.
    ``moco_bn_eps_bug`` builds MoCo's reference ``BatchNorm1d(in_dim, out_dim)`` (eps = out_dim); the reference
    fails at its first forward unless ``in_dim == out_dim``, so other shapes are refused here."""
    _check_framework(framework)
    if in_dim < out_dim:
        return nn.Linear(in_dim, out_dim)
    moco = framework == "moco"
    if moco and moco_bn_eps_bug:
        if in_dim != out_dim:
            raise ConfigError(f"moco_bn_eps_bug builds the reference's BatchNorm1d({in_dim}, eps={out_dim}), which "
                              f"cannot normalise {out_dim} features; it needs in_dim == out_dim")
        norm = nn.BatchNorm1d(in_dim, eps=float(out_dim))
    else:
        norm = nn.BatchNorm1d(out_dim)
    return nn.Sequential(nn.Linear(in_dim, out_dim, bias=moco), norm, act)


def op_wrapper(in_dim: int, out_dim: int, op: nn.Module) -> nn.Module:
    """A pool or identity candidate (spec §2.2): ``Sequential(Linear(no bias), BatchNorm1d(out), ReLU, op)`` when
    ``in > out``, ``Sequential(Linear(bias), op)`` when ``in < out``, ``op`` itself when ``in == out``."""
    if in_dim > out_dim:
        return nn.Sequential(nn.Linear(in_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim), nn.ReLU(inplace=True),
                             op)
    if in_dim < out_dim:
        return nn.Sequential(nn.Linear(in_dim, out_dim), op)
    return op


def build_op(name: str, in_dim: int, out_dim: int, framework: str, *, moco_bn_eps_bug: bool = False) -> nn.Module:
    """The reference module of candidate ``name`` mapping ``in_dim`` to ``out_dim`` features in ``framework``.

    Pools are ``Sequential(MaxPool1d | AvgPool1d(3, stride=1, padding=1), BatchNorm1d(out))``. On an (N, D) input
    torch reads the pool's input as one unbatched (C=N, L=D) signal, so a pool smooths along the feature axis of
    each sample (spec §8 quirk 10); ``AvgPool1d`` counts the padding (divisor 3 everywhere)."""
    _check_framework(framework)
    if name not in OPS[framework]:
        raise ConfigError(f"unknown {framework} op {name!r}; use one of {', '.join(OPS[framework])}")
    if name == "maxpool_3x3":
        return op_wrapper(in_dim, out_dim, nn.Sequential(nn.MaxPool1d(3, stride=1, padding=1),
                                                         nn.BatchNorm1d(out_dim)))
    if name == "avgpool_3x3":
        return op_wrapper(in_dim, out_dim, nn.Sequential(nn.AvgPool1d(3, stride=1, padding=1),
                                                         nn.BatchNorm1d(out_dim)))
    if name == "identity":
        return op_wrapper(in_dim, out_dim, nn.Identity())
    return linear_wrapper(in_dim, out_dim, _ACTIVATION_MODULES[name](), framework, moco_bn_eps_bug=moco_bn_eps_bug)


def activate_and_mix(blocks: Sequence[torch.Tensor], activations: Sequence[str], weights: torch.Tensor) -> torch.Tensor:
    """``Σ_k weights[k] · act_k(blocks[k])`` for K (N, D) tensors (typically views into larger buffers).

    ``activations[k]`` is one of ``identity``, ``relu``, ``silu``, ``hardswish``, ``elu``; ``weights`` has K
    entries. This is the elementwise tail of the fused :meth:`MixedOp.forward`, kept as one function so that a
    kernel (one read of each block, one (N, D) write) can replace it. On CUDA (with triton installed) the blocks
    are stacked to (K, N, D) for that kernel, the custom op ``sswp_fast::activate_and_mix``
    (:mod:`sswp_fast.kernels.mixed_activation`); elsewhere, and as the reference the kernel is tested against:
    the activated blocks stacked to (N, K, D), then one weighted reduction over K. CPU tensors never take the
    kernel here, not even under the (very slow) Triton interpreter: its tests call it directly."""
    from sswp_fast.search.executors.choice import triton_installed

    if blocks[0].is_cuda and triton_installed():
        from sswp_fast.kernels.common import runs_on_triton
        from sswp_fast.kernels.mixed_activation import mixed_activation

        if runs_on_triton(blocks[0]):
            return mixed_activation(torch.stack(list(blocks)), activations, weights)
    stacked = torch.stack([_ACTIVATION_FUNCTIONS[act](block) for act, block in zip(activations, blocks, strict=True)],
                          1)
    return (stacked * weights[:, None]).sum(1)


def stacked_linear(x: torch.Tensor, linears: Sequence[nn.Linear], concat_weights: bool | None = None) -> torch.Tensor:
    """``cat([lin(x) for lin in linears], 1)``: the outputs of Linears sharing the input ``x``, side by side.

    With ``concat_weights`` (the default on CUDA) as one matrix multiply, ``x @ cat(W_k).T`` plus the concatenated
    biases (zeros for a Linear without one): one launch instead of one per Linear. Otherwise (the default on CPU)
    one multiply per Linear and the outputs concatenated: a CPU runs each multiply at full speed already, and
    concatenating the weights would copy all of them on every call."""
    if not (x.is_cuda if concat_weights is None else concat_weights):
        return torch.cat([F.linear(x, lin.weight, lin.bias) for lin in linears], 1)
    weight = torch.cat([lin.weight for lin in linears])
    if all(lin.bias is None for lin in linears):
        return F.linear(x, weight)
    bias = torch.cat([lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.out_features)
                      for lin in linears])
    return F.linear(x, weight, bias)


def _bn_settings(bn: nn.BatchNorm1d) -> tuple[float, float | None, bool, bool, bool]:
    return bn.eps, bn.momentum, bn.affine, bn.track_running_stats, bn.training


def _batch_norm_run(block: torch.Tensor, bns: Sequence[nn.BatchNorm1d]) -> torch.Tensor:
    """``bns`` (same settings) applied to consecutive column slices of ``block`` in one ``F.batch_norm`` call.

    Batch norm normalises every channel on its own, so one call over the concatenated channels, with the
    concatenated running statistics and affine parameters, equals the separate calls. The updated running
    statistics are written back to each module's buffers and each ``num_batches_tracked`` counts the batch, as
    each module's own forward would."""
    first = bns[0]
    if len(bns) == 1:
        return first(block)
    widths = [bn.num_features for bn in bns]
    if first.momentum is None or not first.track_running_stats:  # cumulative averages or batch-only statistics
        return torch.cat([bn(part) for bn, part in zip(bns, block.split(widths, 1), strict=True)], 1)
    weight = torch.cat([bn.weight for bn in bns]) if first.affine else None
    bias = torch.cat([bn.bias for bn in bns]) if first.affine else None
    running_mean = torch.cat([bn.running_mean for bn in bns])
    running_var = torch.cat([bn.running_var for bn in bns])
    out = F.batch_norm(block, running_mean, running_var, weight, bias, first.training, first.momentum, first.eps)
    if first.training:
        with torch.no_grad():
            torch._foreach_copy_([*(bn.running_mean for bn in bns), *(bn.running_var for bn in bns)],
                                 [*running_mean.split(widths), *running_var.split(widths)])
            torch._foreach_add_([bn.num_batches_tracked for bn in bns], 1)
    return out


def batch_norm_concat(block: torch.Tensor, bns: Sequence[nn.BatchNorm1d]) -> torch.Tensor:
    """The batch norms ``bns`` applied to consecutive column slices of ``block`` (slice j is
    ``bns[j].num_features`` wide): one ``F.batch_norm`` call per run of consecutive modules with equal settings
    (eps, momentum, affine, running statistics, mode), i.e. one call unless the settings differ."""
    runs: list[list[nn.BatchNorm1d]] = []
    for bn in bns:
        if runs and _bn_settings(runs[-1][0]) == _bn_settings(bn):
            runs[-1].append(bn)
        else:
            runs.append([bn])
    if len(runs) == 1:
        return _batch_norm_run(block, runs[0])
    widths = [sum(bn.num_features for bn in run) for run in runs]
    return torch.cat([_batch_norm_run(part, run) for part, run in zip(block.split(widths, 1), runs, strict=True)], 1)


def _pools(first: torch.Tensor, second: torch.Tensor) -> list[torch.Tensor]:
    """``[maxpool(first), avgpool(second)]``, each (N, D) input pooled along its own feature axis."""
    return [F.max_pool1d(first, 3, stride=1, padding=1), F.avg_pool1d(second, 3, stride=1, padding=1)]


class MixedOp(nn.Module):
    """The DARTS relaxation of one MLP layer (spec §2.3): all 7 candidates of ``framework`` mapping ``in_dim`` to
    ``out_dim`` features in ``_ops`` (reference keys ``_ops.{k}.*``); ``forward(x, weights) = Σ_k weights[k]·op_k(x)``.

    :meth:`forward` is fused: the candidates that start with a Linear on ``x`` produce their outputs side by side
    (:func:`stacked_linear`: one matrix multiply on CUDA), the batch norms of a stage run as one call
    (:func:`batch_norm_concat`), then come the pools and, in one function a kernel can replace
    (:func:`activate_and_mix`), the per-candidate activations and the weighted sum. :meth:`reference_forward` runs
    the candidate modules one by one."""

    def __init__(self, in_dim: int, out_dim: int, framework: str, *, moco_bn_eps_bug: bool = False):
        super().__init__()
        _check_framework(framework)
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.framework = framework
        self.op_names = OPS[framework]
        self._ops = nn.ModuleList(build_op(name, in_dim, out_dim, framework, moco_bn_eps_bug=moco_bn_eps_bug)
                                  for name in self.op_names)
        self._linear_acts = tuple(_LINEAR_ACTIVATION[name] for name in self.op_names[_FIRST_LINEAR:])

    def reference_forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``Σ_k weights[k]·op_k(x)`` through the candidate modules, as the reference computes it."""
        return sum(w * op(x) for w, op in zip(weights, self._ops, strict=True))

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The same value as :meth:`reference_forward` (also its gradients and running-statistics updates)."""
        if weights.shape != (NUM_OPS,):
            raise ValueError(f"MixedOp needs {NUM_OPS} mixing weights, got shape {tuple(weights.shape)}")
        if self.in_dim > self.out_dim:
            return self._forward_down(x, weights)
        if self.in_dim < self.out_dim:
            return self._forward_up(x, weights)
        return self._forward_same(x, weights)

    def _forward_down(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``in > out``: every candidate starts with ``Linear → BN → ReLU`` (the linears with their own activation);
        the pools continue with pool → BN."""
        ops = self._ops
        h = batch_norm_concat(stacked_linear(x, [op[0] for op in ops]), [op[1] for op in ops]).split(self.out_dim, 1)
        pooled = batch_norm_concat(torch.cat(_pools(F.relu(h[0]), F.relu(h[1])), 1), [ops[0][3][1], ops[1][3][1]])
        return activate_and_mix([*pooled.split(self.out_dim, 1), *h[_IDENTITY:]],
                                ("identity", "identity", "relu", *self._linear_acts), weights)

    def _forward_same(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``in == out``: the pools act on ``x`` itself, identity is ``x``, the linears are ``Linear → BN → act``."""
        ops = self._ops
        linears = ops[_FIRST_LINEAR:]
        h = stacked_linear(x, [op[0] for op in linears])
        normed = batch_norm_concat(torch.cat([*_pools(x, x), h], 1),
                                   [ops[0][1], ops[1][1], *(op[1] for op in linears)]).split(self.out_dim, 1)
        return activate_and_mix([normed[0], normed[1], x, *normed[2:]],
                                ("identity", "identity", "identity", *self._linear_acts), weights)

    def _forward_up(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``in < out``: every candidate starts with a biased Linear; only the pools add pool → BN."""
        ops = self._ops
        first_layers = [op[0] for op in ops[:_FIRST_LINEAR]] + list(ops[_FIRST_LINEAR:])
        h = stacked_linear(x, first_layers).split(self.out_dim, 1)
        pooled = batch_norm_concat(torch.cat(_pools(h[0], h[1]), 1), [ops[0][1][1], ops[1][1][1]])
        return activate_and_mix([*pooled.split(self.out_dim, 1), *h[_IDENTITY:]], ("identity",) * NUM_OPS, weights)


def layer_dims(dim: int, num_layers: int, hidden_dim: int | None = None,
               out_dim: int | None = None) -> list[tuple[int, int]]:
    """``(in, out)`` of each layer of a cell, by the reference's rule: layer 0 maps ``dim → hidden_dim``, the last
    ``hidden_dim → out_dim``, the others ``hidden_dim → hidden_dim`` (hidden and out default to ``dim``). The
    layer-0 rule wins, so a 1-layer cell maps ``dim → hidden_dim``, as the reference's does."""
    if num_layers < 1:
        raise ConfigError(f"a NASiam cell needs at least one layer, got {num_layers}")
    hidden = dim if hidden_dim is None else hidden_dim
    out = dim if out_dim is None else out_dim
    return [(dim, hidden) if i == 0 else (hidden, out) if i == num_layers - 1 else (hidden, hidden)
            for i in range(num_layers)]


class HeadSearchCell(nn.Module):
    """A searchable MLP head (spec §2.3): a chain of ``num_layers`` :class:`MixedOp` s (``_ops.{i}``) mixed by
    ``softmax(alphas, dim=1)[i]``. ``alphas`` (``[num_layers, 7]``, zeros) is an ``nn.Parameter``, so it is in the
    state dict, unlike the reference's plain tensor."""

    def __init__(self, dim: int, num_layers: int, framework: str, hidden_dim: int | None = None,
                 out_dim: int | None = None, *, moco_bn_eps_bug: bool = False):
        super().__init__()
        self.framework = framework
        self.num_layers = num_layers
        self._ops = nn.ModuleList(MixedOp(a, b, framework, moco_bn_eps_bug=moco_bn_eps_bug)
                                  for a, b in layer_dims(dim, num_layers, hidden_dim, out_dim))
        self.alphas = nn.Parameter(torch.zeros(num_layers, NUM_OPS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.alphas, dim=1)
        for i, layer in enumerate(self._ops):
            x = layer(x, weights[i])
        return x

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture parameters: ``[alphas]``."""
        return [self.alphas]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every parameter but ``alphas``."""
        return [p for p in self.parameters() if p is not self.alphas]


class Cell(nn.Module):
    """A derived MLP head (spec §2.4): layer i is a ``ModuleList`` holding the op named by ``genes[i][0]`` (keys
    ``_ops.{i}.0.*``; later names in a gene are ignored, as in the reference); forward applies them in turn."""

    def __init__(self, dim: int, genes: Sequence[Sequence[str]], framework: str, hidden_dim: int | None = None,
                 out_dim: int | None = None, *, moco_bn_eps_bug: bool = False):
        super().__init__()
        if not genes or any(not gene for gene in genes):
            raise ConfigError(f"a NASiam cell needs a non-empty list of non-empty genes, got {genes!r}")
        self.framework = framework
        self.genes = [list(gene) for gene in genes]
        self._ops = nn.ModuleList(
            nn.ModuleList([build_op(gene[0], a, b, framework, moco_bn_eps_bug=moco_bn_eps_bug)])
            for gene, (a, b) in zip(genes, layer_dims(dim, len(genes), hidden_dim, out_dim), strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self._ops:
            x = layer[0](x)
        return x


def derive_genes(alphas: torch.Tensor, framework: str) -> list[list[str]]:
    """The reference's ``'sparse'`` parse (spec §5.1): per layer ``[name]`` of the largest ``softmax(alphas)``
    entry, ties going to the highest index (the reference sorts ascending and takes the last)."""
    _check_framework(framework)
    if alphas.dim() != 2 or alphas.shape[1] != NUM_OPS:
        raise ValueError(f"alphas must have shape [layers, {NUM_OPS}], got {tuple(alphas.shape)}")
    names = OPS[framework]
    weights = torch.softmax(alphas.detach(), dim=1).tolist()
    return [[names[max(range(NUM_OPS), key=lambda k, row=row: (row[k], k))]] for row in weights]
