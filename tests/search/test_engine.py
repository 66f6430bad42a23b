"""Single weight and arch steps (spec §5, §17): minimum work, exact gradients, quirks behind the flag."""

from __future__ import annotations

import copy

import pytest
import torch

from sswp_fast import Batch, SearchEngine, sample_paths
from sswp_fast.losses.objectives import info_nce
from sswp_fast.search.arch_update import ArchAdam, ArchAdamConfig, alpha_grad_two, rescale_pair
from sswp_fast.search.supernet import ExecutionPlan

from _support.configs import tiny_config


def make_batch(n: int = 4, size: int = 8, views: int = 2) -> Batch:
    return Batch(tuple(torch.randn(n, 3, size, size) for _ in range(views)), torch.randint(0, 10, (n,)))


def count_op_forwards(engine: SearchEngine) -> list[int]:
    counter = [0]
    for cell in engine.net.cells:
        for edge in cell.edges:
            for op in edge._ops:
                op.register_forward_hook(lambda *args: counter.__setitem__(0, counter[0] + 1))
    return counter


@pytest.mark.parametrize("net_mode", ["two", "full_v2"])
def test_minimum_op_forwards_per_step(net_mode: str) -> None:
    engine = SearchEngine(tiny_config(net_mode=net_mode), 10)
    counter = count_op_forwards(engine)
    batch = make_batch()
    engine.weight_step(batch, warmup=False)
    assert counter[0] == 3 * 14  # one op per edge
    engine.freeze([0])
    counter[0] = 0
    engine.weight_step(batch, warmup=False)
    assert counter[0] == 3 * 14  # frozen edges run only their argmax op
    counter[0] = 0
    engine.arch_step(batch)
    probes = 2 if net_mode == "two" else 7  # the sampled pair / all 7 for the 7-way gradient
    assert counter[0] == 14 + 2 * 14 * probes
    engine.freeze([1, 2])
    counter[0] = 0
    assert engine.arch_step(batch) is None  # nothing left to search
    assert counter[0] == 0


def test_reference_quirks_weight_step_also_runs_the_inactive_op() -> None:
    engine = SearchEngine(tiny_config(reference_quirks=True), 10)
    counter = count_op_forwards(engine)
    engine.weight_step(make_batch(), warmup=False)
    assert counter[0] == 3 * 14 * 2
    assert engine.gate_grad_sum.abs().sum() > 0


def test_weight_step_updates_only_active_ops_and_no_alpha() -> None:
    engine = SearchEngine(tiny_config(weight_decay=0.1), 10)
    before = copy.deepcopy(engine.net.state_dict())
    state = engine.generator.get_state()
    active, _ = sample_paths(engine.net.arch_alpha.detach(), warmup=True,
                             generator=torch.Generator().set_state(state))
    engine.weight_step(make_batch(), warmup=True)
    after = engine.net.state_dict()
    for c, cell in enumerate(engine.net.cells):
        for e, edge in enumerate(cell.edges):
            for k, op in enumerate(edge._ops):
                for name, _ in op.named_parameters():
                    key = f"cells.{c}.edges.{e}._ops.{k}.{name}"
                    changed = not torch.equal(before[key], after[key])
                    assert changed == (k == int(active[c, e])), key
    assert torch.equal(engine.net.arch_alpha, torch.zeros_like(engine.net.arch_alpha))


def test_full_v2_trains_candidate_weights() -> None:
    engine = SearchEngine(tiny_config(net_mode="full_v2"), 10)
    ops = [p.detach().clone() for c in engine.net.cells for e in c.edges for k in (3, 4, 5, 6)
           for p in e._ops[k].parameters()]
    for _ in range(3):
        engine.weight_step(make_batch(), warmup=True)
    after = [p for c in engine.net.cells for e in c.edges for k in (3, 4, 5, 6) for p in e._ops[k].parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(ops, after, strict=True))


def naive_gate_gradients(net, batch, active, inactive, temperature) -> torch.Tensor:
    """G from a full backward with taps on every edge output (independent of the engine's probe code)."""
    net = copy.deepcopy(net)
    taps = []

    def tap(module, inputs, output):
        output = output.clone()  # a stride-1 skip returns its input tensor itself
        output.retain_grad()
        taps.append((module, inputs[0].detach(), output))
        return output

    for cell in net.cells:
        for edge in cell.edges:
            edge.register_forward_hook(tap)
    features = net(torch.cat(batch.views), ExecutionPlan(active.tolist()))
    info_nce(features, temperature).backward()
    g = torch.zeros(len(net.cells), 14, 7)
    for i, (edge, x, y) in enumerate(taps):
        c, e = divmod(i, 14)
        a, b = int(active[c, e]), int(inactive[c, e])
        g[c, e, a] = (y.detach() * y.grad).sum()
        with torch.no_grad():
            g[c, e, b] = (edge._ops[b](x) * y.grad).sum()
    return g


def test_arch_step_equals_naive_full_backward_gradients() -> None:
    cfg = tiny_config(arch_lr=0.05)
    engine = SearchEngine(cfg, 10)
    with torch.no_grad():
        engine.net.arch_alpha.normal_()
    batch = make_batch()
    net_before = copy.deepcopy(engine.net)
    alpha0 = engine.net.arch_alpha.detach().clone()
    active, inactive = sample_paths(alpha0, generator=torch.Generator().set_state(engine.generator.get_state()))
    weights_before = [p.detach().clone() for p in engine.net.weight_parameters()]
    engine.arch_step(batch)
    g = naive_gate_gradients(net_before, batch, active, inactive, cfg.temperature)
    a, b = active.view(-1), inactive.view(-1)
    flat = alpha0.view(-1, 7)
    grad = alpha_grad_two(flat, g.view(-1, 7), a, b)
    adam = ArchAdam(flat.shape[0], "cpu", ArchAdamConfig(lr=0.05))
    expected = rescale_pair(flat, adam.step(flat, grad, torch.ones(flat.shape[0], dtype=torch.bool)), a, b)
    torch.testing.assert_close(engine.net.arch_alpha.detach().view(-1, 7), expected, rtol=1e-4, atol=1e-5)
    # weights untouched by arch steps, and no weight gradient was even computed
    for w0, w in zip(weights_before, engine.net.weight_parameters(), strict=True):
        assert torch.equal(w0, w.detach())
        assert w.grad is None


def test_frozen_cells_keep_their_alphas_and_argmax() -> None:
    engine = SearchEngine(tiny_config(), 10)
    with torch.no_grad():
        engine.net.arch_alpha.normal_()
    engine.freeze([1])
    frozen_alpha = engine.net.arch_alpha[1].detach().clone()
    for _ in range(2):
        engine.arch_step(make_batch())
    assert torch.equal(engine.net.arch_alpha[1], frozen_alpha)
    assert not torch.equal(engine.net.arch_alpha[0], torch.zeros(14, 7))
    active, _ = engine.sample(skip_drop_prob=0.0, pool_drop_prob=0.0, warmup=False)
    assert torch.equal(active[1], frozen_alpha.argmax(-1))
    assert torch.equal(engine.net.arch_gates[1].argmax(-1), frozen_alpha.argmax(-1))


@pytest.mark.parametrize("data_mode", ["supervised", "byol"])
def test_other_objectives_step(data_mode: str) -> None:
    engine = SearchEngine(tiny_config(data_mode=data_mode), 10)
    batch = make_batch(views=1 if data_mode == "supervised" else 2)
    result = engine.weight_step(batch, warmup=False)
    assert torch.isfinite(result.loss)
    assert engine.arch_step(batch) is not None
    assert engine.net.arch_alpha.abs().sum() > 0


def test_byol_trains_its_heads_and_updates_the_ema_target_every_step() -> None:
    engine = SearchEngine(tiny_config(data_mode="byol", byol_decay=0.9), 10)
    online = [engine.net.stem[0].weight, engine.byol.projector[0].weight]
    targets = [engine.target_net.stem[0].weight, engine.target_projector[0].weight]
    predictor0 = engine.byol.predictor[0].weight.detach().clone()
    for _ in range(2):
        before = [t.detach().clone() for t in targets]
        engine.weight_step(make_batch(), warmup=False)
        for t0, o, t in zip(before, online, targets, strict=True):
            torch.testing.assert_close(t, 0.9 * t0 + 0.1 * o.detach())
            assert not torch.equal(t, t0)
    assert not torch.equal(engine.byol.predictor[0].weight, predictor0)


def test_engine_state_round_trip() -> None:
    engine = SearchEngine(tiny_config(reference_quirks=True), 10)
    engine.weight_step(make_batch(), warmup=False)
    engine.freeze([0])
    engine.arch_step(make_batch())
    state = copy.deepcopy(engine.state_dict())
    other = SearchEngine(tiny_config(reference_quirks=True), 10)
    other.load_state_dict(state)
    torch.testing.assert_close(other.net.arch_alpha, engine.net.arch_alpha)
    assert other.frozen_cells() == [0]
    assert torch.equal(other.generator.get_state(), engine.generator.get_state())
    torch.manual_seed(3)
    b = make_batch()
    r1 = engine.arch_step(b)
    r2 = other.arch_step(b)
    torch.testing.assert_close(r1.loss, r2.loss)
    torch.testing.assert_close(other.net.arch_alpha, engine.net.arch_alpha)


def test_weight_step_clips_the_gradient_norm() -> None:
    engine = SearchEngine(tiny_config(lr=1.0, momentum=0.0, weight_decay=0.0, grad_clip=1e-3), 10)
    before = [p.detach().clone() for p in engine.weight_params]
    engine.weight_step(make_batch(), warmup=True)
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(engine.weight_params, before, strict=True)])
    assert 0 < step.norm() <= 1e-3 * (1 + 1e-4)


class _OpCalls(torch.utils._python_dispatch.TorchDispatchMode):
    """How many ATen operators run on tensors (not on scalars: Adam's step counts stay on the host, one each)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        leaves = torch.utils._pytree.tree_leaves((args, kwargs))
        self.calls += any(isinstance(t, torch.Tensor) and t.dim() > 0 for t in leaves)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_weight_optimizer_step_costs_the_same_operators_whatever_the_parameter_count(optimizer: str) -> None:
    """Multi-tensor (foreach) updates, as torch.optim runs them on CUDA: a fixed handful of launches per step on
    every device, not a few per parameter (a network twice as deep has twice the parameters)."""
    calls = []
    for layers in (3, 6):
        engine = SearchEngine(tiny_config(layers=layers, weight_optm=optimizer, weight_decay=0.1), 10)
        engine.weight_step(make_batch(), warmup=False)  # the first step creates the optimizer state
        engine.weight_step(make_batch(), warmup=False)
        with _OpCalls() as ops:
            engine.weight_optimizer.step()
        calls.append(ops.calls)
    assert calls[0] == calls[1]
