"""Device-side dispatch (``sswp_fast.search.executors.device``): a cell run from device-side op indices equals the
module path.

Compared with :class:`~sswp_fast.search.supernet.SearchCell` run from a host plan: outputs, gradients of the inputs and
of every parameter (on the device executor, the parameter's part of its cell's bank gradient), the gate gradients
of probing plans, and the whole state dict afterwards (running statistics and ``num_batches_tracked`` of exactly
the BNs that ran; the banks are what the modules' tensors view). Also: no host synchronisation and the same
operator sequence whatever was sampled (what CUDA-graph replay needs), dropped edges, and the masked optimizer
step on the banks.
Triton kernels run in the interpreter on CPU (tests/conftest.py), so the cells are tiny.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sswp_fast.kernels import batchnorm
from sswp_fast.search.engine import SearchEngine
from sswp_fast.search.executors.bank_optimizer import MaskedBankUpdate
from sswp_fast.search.executors.banks import bind_banks, bind_cell
from sswp_fast.search.executors.device import Selection, cell_steps, run_cell, slot_groups
from sswp_fast.search.supernet import NODE_EDGES, DevicePlan, ExecutionPlan, SearchNetwork

from _support.configs import tiny_config
from _support.op_trace import OpTrace

# every op on a stride-2 and on a stride-1 edge of a reduction cell (stride-2 edges: 0 1 2 3 5 6 9 10)
EVERY_OP = [0, 1, 2, 3, 4, 5, 6, 6, 5, 4, 3, 2, 1, 0]


def cell_and_inputs(reduction: bool, affine: bool, n: int = 2, size: int = 6):
    net = SearchNetwork(4, 10, 3, affine=affine)
    cell = net.cells[1 if reduction else 0]
    assert cell.reduction == reduction
    s0 = torch.randn(n, cell.preprocess0.op[1].in_channels, size, size)
    s1 = torch.randn(n, cell.preprocess1.op[1].in_channels, size, size)
    return cell, s0, s1


def outputs_and_grads(fn, cell, s0, s1, dy=None):
    """Output of ``fn(cell, s0, s1)`` and the gradients of the inputs and of every parameter of ``cell``; for a
    cell with banks, a bank-held parameter's gradient is its part of the bank gradient."""
    s0, s1 = s0.clone().requires_grad_(), s1.clone().requires_grad_()
    out = fn(cell, s0, s1)
    dy = torch.randn_like(out) if dy is None else dy
    banks = cell.__dict__.get("_banks")
    offsets = {} if banks is None else {id(p): o for p, o in banks.bound_params()}
    params = list(cell.parameters())
    leaves = [s0, s1, *(p for p in params if id(p) not in offsets)] + ([banks.weights] if banks else [])
    grads = iter(torch.autograd.grad(out, leaves, dy, allow_unused=True, materialize_grads=True))
    inputs = [next(grads), next(grads)]
    own = [next(grads) for p in params if id(p) not in offsets]
    bank = next(grads) if banks else None
    own_it = iter(own)
    per_param = [bank[offsets[id(p)]:offsets[id(p)] + p.numel()].view(p.shape) if id(p) in offsets else next(own_it)
                 for p in params]
    return out, inputs + per_param, dy


def assert_states_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("reduction,affine,training", [
    pytest.param(False, False, True, id="normal"),
    pytest.param(True, True, True, id="reduction-affine"),
    pytest.param(True, False, False, id="reduction-eval"),
])
def test_cell_equals_the_module_path(reduction, affine, training):
    cell, s0, s1 = cell_and_inputs(reduction, affine)
    cell.train(training)
    if not training:  # non-trivial running statistics
        for m in cell.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    twin = copy.deepcopy(cell)
    bind_cell(cell)
    active = torch.tensor(EVERY_OP)
    out, grads, dy = outputs_and_grads(lambda c, a, b: run_cell(c, NODE_EDGES, a, b, active), cell, s0, s1)
    ref, ref_grads, _ = outputs_and_grads(lambda c, a, b: c(a, b, EVERY_OP), twin, s0, s1, dy)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    scale = max(g.abs().max().item() for g in ref_grads)
    for i, (g, r) in enumerate(zip(grads, ref_grads, strict=True)):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5 * scale, msg=f"gradient {i}")
    assert_states_equal(cell, twin)


def _relative_error(values, exact) -> float:
    flat = torch.cat([v.double().flatten() for v in values])
    reference = torch.cat([e.double().flatten() for e in exact])
    return ((flat - reference).norm() / reference.norm()).item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, pytest.param(torch.float16, marks=pytest.mark.slow)],
                         ids=["bf16", "fp16"])
def test_autocast_cell_is_as_accurate_as_the_module_path(dtype):
    """``--amp bf16`` / ``fp16``: a reduction cell (every op, recompute of each slot group in its backward) under
    autocast, on the device executor and on the module path, each against the module path in float32: the
    device executor's relative error in the output, the gradients and the running statistics is at most twice the
    module path's (+1e-3). bf16 keeps 8 bits (fp16 11), so the errors are about 1e-2 (1e-3); the bound is
    relative to what PyTorch's own autocast path gives, not one CPU's outcome."""
    cell, s0, s1 = cell_and_inputs(True, False)
    exact_cell, module_cell = copy.deepcopy(cell), copy.deepcopy(cell)
    bind_cell(cell)
    active = torch.tensor(EVERY_OP)
    exact = outputs_and_grads(lambda c, a, b: c(a, b, EVERY_OP), exact_cell, s0, s1)
    dy = exact[2]
    with torch.autocast("cpu", dtype):
        ours = outputs_and_grads(lambda c, a, b: run_cell(c, NODE_EDGES, a, b, active), cell, s0, s1, dy)
        module = outputs_and_grads(lambda c, a, b: c(a, b, EVERY_OP), module_cell, s0, s1, dy)
    stats = [[t for k, t in c.state_dict().items() if "running" in k] for c in (cell, module_cell, exact_cell)]
    for name, mine, theirs, reference in (("output", [ours[0]], [module[0]], [exact[0]]),
                                          ("gradients", ours[1], module[1], exact[1]),
                                          ("running statistics", *stats)):
        error, module_error = _relative_error(mine, reference), _relative_error(theirs, reference)
        assert 0 < error <= 2 * module_error + 1e-3, f"{name}: {error:.2e} vs the module path's {module_error:.2e}"


def test_probing_gives_the_module_paths_gate_gradients():
    """Mode two: the active op differentiable, the inactive one evaluated without autograd; the gates' gradient
    and the inactive ops' BN running statistics as on the module path (spec §5.4-5.5)."""
    cell, s0, s1 = cell_and_inputs(True, False)
    twin = copy.deepcopy(cell)
    bind_cell(cell)
    active = torch.tensor(EVERY_OP)
    inactive = (active + torch.randint(1, 7, (14,))) % 7
    gates = torch.nn.functional.one_hot(active, 7).float().requires_grad_()
    twin_gates = gates.detach().clone().requires_grad_()
    with OpTrace() as trace:
        out = run_cell(cell, NODE_EDGES, s0, s1, active, inactive[:, None], gates)
        dy = torch.randn_like(out)
        (g,) = torch.autograd.grad(out, [gates], dy)
    ref = twin(s0, s1, EVERY_OP, [[b] for b in inactive.tolist()], twin_gates)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    (g_ref,) = torch.autograd.grad(ref, [twin_gates], dy)
    # the gates of all 7 groups and both paths: one gather, and one scatter back (no per-group gathers, slices,
    # and their backward launches)
    assert trace.ops.count("aten.gather") == 1 and trace.ops.count("aten.scatter_add_") == 1
    assert "aten.slice_backward" not in trace.ops and "aten.scatter_add" not in trace.ops
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4 * g_ref.abs().max().item())
    assert (g_ref.gather(1, inactive[:, None]) != 0).all(), "the inactive ops were measured"
    assert_states_equal(cell, twin)


@pytest.mark.slow(seconds=55)  # seven group evaluations per node in the interpreter
def test_full_v2_probing_measures_all_seven_ops():
    cell, s0, s1 = cell_and_inputs(False, False)
    twin = copy.deepcopy(cell)
    bind_cell(cell)
    active = torch.tensor(EVERY_OP)
    others = (active[:, None] + torch.arange(1, 7)) % 7
    gates = torch.nn.functional.one_hot(active, 7).float().requires_grad_()
    twin_gates = gates.detach().clone().requires_grad_()
    out = run_cell(cell, NODE_EDGES, s0, s1, active, others, gates)
    ref = twin(s0, s1, EVERY_OP, others.tolist(), twin_gates)
    dy = torch.randn_like(out)
    (g,) = torch.autograd.grad(out, [gates], dy)
    (g_ref,) = torch.autograd.grad(ref, [twin_gates], dy)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4 * g_ref.abs().max().item())
    assert_states_equal(cell, twin)


@pytest.mark.slow  # a reduction cell forward and backward twice in the interpreter
def test_the_step_never_reads_the_path_and_runs_the_same_operators_whatever_was_sampled():
    cell, s0, s1 = cell_and_inputs(True, False)
    banks = bind_cell(cell)
    traces = []
    for active in (torch.tensor(EVERY_OP), torch.tensor(EVERY_OP[::-1])):
        with OpTrace() as trace:
            out = run_cell(cell, NODE_EDGES, s0.requires_grad_(), s1, active)
            torch.autograd.grad(out.sum(), [s0, banks.weights, *cell.preprocess0.parameters()])
        assert trace.syncs() == []
        fills = [op for op in trace.ops if op in ("aten.zeros", "aten.fill_", "aten.zero_", "aten.new_zeros")]
        assert fills == ["aten.zeros"], "one fill for the weight gradients of all the cell's slot groups"
        traces.append(trace.ops)
    assert traces[0] == traces[1]


def test_the_engine_plans_on_the_device_without_reading_the_path():
    engine = SearchEngine(tiny_config(kernels="triton", device="cpu"), num_classes=10)
    assert engine.dispatch
    with OpTrace() as trace:
        active, inactive = engine.sample(skip_drop_prob=0.5, pool_drop_prob=0.5, warmup=False)
        plan = engine._plan(active, inactive, probe=True, arch=True)
    assert trace.syncs() == []
    assert isinstance(plan, DevicePlan) and plan.others.shape == (3, 14, 1)
    full = SearchEngine(tiny_config(kernels="triton", net_mode="full_v2"), num_classes=10)
    active, _ = full.sample(skip_drop_prob=0.0, pool_drop_prob=0.0, warmup=True)
    others = full._plan(active, None, probe=True).others
    assert sorted(torch.cat([active[..., None], others], -1)[1, 5].tolist()) == list(range(7))


def test_a_dropped_edge_adds_nothing_and_touches_no_statistics():
    """--prune_edges: an edge at -1 is left out of its node, as the module path leaves it out; its slot uses the
    banks' scratch row, so no BatchNorm of any op of that edge moves."""
    cell, s0, s1 = cell_and_inputs(True, False)
    twin = copy.deepcopy(cell)
    bind_cell(cell)
    active = list(EVERY_OP)
    active[3] = active[10] = -1  # a stride-2 edge and a stride-1 edge (node 1 keeps edge 2, node 3 keeps 9 11-13)
    out = run_cell(cell, NODE_EDGES, s0, s1, torch.tensor(active))
    ref = twin(s0, s1, active)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert_states_equal(cell, twin)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_the_unbanked_batch_norms_count_their_batches_in_one_launch(momentum):
    """Stems and preprocessing count one batch each per forward pass, as on the PyTorch executor, in one
    ``_foreach_add_`` (not an ``add_`` each); a cumulative average (``momentum=None``) needs its count first."""
    net = SearchNetwork(4, 10, 3)
    for bn in net.unbanked_batch_norms():
        bn.momentum = momentum
    twin = copy.deepcopy(net)
    bind_banks(net)
    x, active = torch.randn(2, 3, 8, 8), torch.tensor([EVERY_OP] * 3)
    with torch.no_grad(), OpTrace() as trace:
        net.features(x, DevicePlan(active))
    with torch.no_grad():
        twin.features(x, ExecutionPlan(active.tolist()))
    counts = [bn.num_batches_tracked.item() for bn in net.unbanked_batch_norms()]
    assert counts == [1] * 7 and counts == [bn.num_batches_tracked.item() for bn in twin.unbanked_batch_norms()]
    assert (trace.ops.count("aten._foreach_add_"), trace.ops.count("aten.add_")) == ((1, 0) if momentum else (0, 7))
    assert_states_equal(net, twin)


def test_a_network_gathers_every_cells_path_and_fills_one_gradient_buffer():
    """The selection of every cell's path is one gather and the weight-gradient buffer one fill for the network
    (views per cell), not one of each per cell; the probed cells of an arch step select their own paths."""
    net = SearchNetwork(4, 10, 3)
    bind_banks(net)
    x, active = torch.randn(2, 3, 8, 8), torch.tensor([EVERY_OP] * 3)
    with OpTrace() as trace:
        net.features(x, DevicePlan(active))
    assert (trace.ops.count("aten.index"), trace.ops.count("aten.zeros")) == (1, 1)
    steps = cell_steps(net.cells, active, [False, True, False], x, train_weights=True)
    assert [step.paths is None for step in steps] == [False, True, False]
    assert steps[2].grads.data_ptr() == steps[0].grads.data_ptr() + 4 * steps[0].grads.numel() + 4 * steps[
        1].grads.numel()
    assert torch.equal(steps[2].paths.first[0], Selection.of(active[2], bind_cell(net.cells[2])).first)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_masked_bank_update_is_the_pytorch_step_of_the_ops_that_ran(optimizer):
    """Gradients everywhere in the banks (as the device executor gives them, here even in the rows of ops that did
    not run): after two masked steps the ops that did not run, and their optimizer state, are bitwise unchanged,
    and the others equal ``torch.optim`` steps that only ever saw the ops that ran. The optimizer's state dict
    then loads into the plain optimizer of the twin and steps it the same way."""
    net = SearchNetwork(4, 10, 3).double()
    twin = copy.deepcopy(net)
    banks = bind_banks(net)

    def make(params):
        if optimizer == "sgd":
            return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-2)
        return torch.optim.Adam(params, lr=0.01, weight_decay=1e-2)

    opt, twin_opt = make(net.weight_parameters()), make(twin.weight_parameters())
    masked = MaskedBankUpdate(banks, opt)
    held = {id(p): i for i, p in enumerate(banks.params)}
    pairs = list(zip(net.weight_parameters(), twin.weight_parameters(), strict=True))
    for _ in range(2):
        active = torch.randint(0, 7, (3, 14))
        ran = {id(p) for c, cell in enumerate(net.cells) for e, edge in enumerate(cell.edges)
               for p in edge._ops[int(active[c, e])].parameters()}
        masked.zero_grad()
        twin_opt.zero_grad(set_to_none=True)
        for leaf in banks.leaves():
            leaf.grad = torch.randn_like(leaf)
        for p, q in pairs:
            if id(p) in held:
                q.grad = banks.view_of(banks.flat_grad(), held[id(p)]).clone() \
                    if id(p) in ran else None
            else:
                p.grad = torch.randn_like(p)
                q.grad = p.grad.clone()
        before = {id(p): p.detach().clone() for p, _ in pairs}
        masked.step(active)
        twin_opt.step()
        for p, q in pairs:
            if id(p) in held and id(p) not in ran:
                assert torch.equal(p, before[id(p)])
            else:
                torch.testing.assert_close(p, q, rtol=0, atol=1e-12)
    loaded = make(twin.weight_parameters())
    loaded.load_state_dict(opt.state_dict())  # the PyTorch executor resuming the device executor's checkpoint
    for _, q in pairs:
        twin_state, state = twin_opt.state[q], loaded.state[q]
        for name, value in state.items():
            torch.testing.assert_close(value, twin_state.get(name, torch.zeros_like(value)), rtol=0, atol=1e-12)


def test_a_slot_group_keeps_only_its_input_for_backward(monkeypatch):
    """Recompute: of a whole node (five slots, every op), autograd stores the stacked input (and the weight banks,
    views of the parameters, and the two BatchNorms' per-channel batch mean and rstd, which the recomputation
    reuses); the intermediates are rebuilt in the backward pass (exactness: the tests above)."""
    cell, _, _ = cell_and_inputs(False, False)
    banks = bind_cell(cell)
    group, _ = slot_groups(cell, NODE_EDGES)[3][0]
    x = torch.randn(2, 5 * 4, 6, 6, requires_grad=True)
    ops = torch.tensor([0, 1, 3, 5, 6])
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = group(x, Selection.of(ops, banks), banks.views()[3][0])
    weights = banks.weights.untyped_storage().data_ptr()
    activations = [t for t in saved if t.untyped_storage().data_ptr() != weights]
    assert activations[0].data_ptr() == x.data_ptr()
    assert [tuple(t.shape) for t in activations[1:]] == [(5 * 4,)] * 4, "per-channel statistics, nothing more"
    statistics_launches = []
    chunk_stats = batchnorm._ChunkStats
    monkeypatch.setattr(batchnorm, "_ChunkStats", lambda *args: statistics_launches.append(1) or chunk_stats(*args))
    (dx,) = torch.autograd.grad(y.sum(), [x])
    assert dx.abs().sum() > 0
    assert not statistics_launches, "the recomputation reuses the forward's batch statistics"


@pytest.mark.parametrize("gates", [False, True], ids=["weight-step", "gates"])
def test_a_group_without_recompute_keeps_what_autograd_keeps(gates):
    """``--recompute none`` on the Triton kernels: the group's one autograd node keeps the activations autograd
    through its ops keeps (the two BatchNorms' inputs and the first stage's output; the second stage's too for a
    gate's gradient), no more bytes."""
    cell, _, _ = cell_and_inputs(False, False)
    banks = bind_cell(cell)
    group, _ = slot_groups(cell, NODE_EDGES)[3][0]
    x = torch.randn(2, 5 * 4, 6, 6, requires_grad=True)
    path, scale = Selection.of(torch.tensor([0, 1, 3, 5, 6]), banks), torch.rand(5, requires_grad=gates)
    weights = banks.weights.untyped_storage().data_ptr()
    kept = {}
    for mode, run in (("by hand", lambda: group(x, path, banks.views()[3][0], scale, recompute=False)),
                      ("autograd", lambda: group.evaluate(x, path, banks.views()[3][0], scale))):
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor, storages=storages) -> torch.Tensor:
            if t.untyped_storage().data_ptr() != weights:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run()
        kept[mode] = sum(storages.values())
    assert 0 < kept["by hand"] <= kept["autograd"], kept


@pytest.mark.parametrize("reduction,weights,gates", [
    pytest.param(False, True, False, id="weight-step"),
    pytest.param(True, True, False, id="stride-2-affine"),
    pytest.param(False, False, True, id="arch-step-gates"),
    pytest.param(True, False, True, id="stride-2-arch-step-gates"),
])
def test_a_group_differentiates_by_hand_as_autograd_does(reduction, weights, gates):
    """On the Triton kernels a slot group's backward pass, recomputed or from kept activations, is the chain rule
    written out on the kernels' ops (``dispatch._backward_by_hand``): the same gradients of the input, the weight
    banks and the gates as autograd through the same ops (``evaluate``), and no addition launched (the skip's,
    the factorized reduce's and the first stage's own gradient are written by the convolutions' input-gradient
    launches)."""
    cell, _, _ = cell_and_inputs(reduction, reduction)
    banks = bind_cell(cell)
    group, _ = slot_groups(cell, NODE_EDGES)[3][0]
    g = group.stop - group.start
    ops = torch.tensor([0, 1, 2, 3, 4, 5, 6][:g] if g < 7 else range(7))
    if reduction:
        ops = torch.tensor([0, 3])  # stride 2: the skip (a factorized reduce) and sep_conv_3x3
    x = torch.randn(2, g * group.channels, 6, 6)
    group_banks = banks.views()[3][0]
    if not weights:  # an arch step's banks: detached
        group_banks = group_banks.with_weights([w.detach() for w in group_banks.weights()])
    scale = torch.rand(g) if gates else None
    results = {}
    for mode in ("recompute", "keep", "autograd"):
        leaves = [x.clone().requires_grad_(), *([scale.clone().requires_grad_()] if gates else [])]
        if weights:
            leaves.append(banks.weights)
        path, gate = Selection.of(ops, banks), leaves[1] if gates else None
        if mode == "autograd":
            y = group.evaluate(leaves[0], path, group_banks, gate)
        else:
            y = group(leaves[0], path, group_banks, gate, recompute=mode == "recompute")
        with OpTrace() as trace:
            results[mode] = torch.autograd.grad(y, leaves, torch.ones_like(y))
        if mode != "autograd":
            assert "aten.add" not in trace.ops, trace.ops
    for mode in ("recompute", "keep"):
        for ours, theirs in zip(results[mode], results["autograd"], strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * theirs.abs().max().item(), msg=mode)


@pytest.mark.parametrize("recompute", ["none", "edge"])
def test_an_arch_step_asks_our_kernels_for_no_weight_gradient(recompute, one_torch_thread, monkeypatch):
    """An arch step differentiates the gates only. PyTorch's own operators skip the weight gradients then; our
    custom ops cannot tell (autograd gives a custom op no such mask), so an arch plan detaches the weight banks:
    every sampled-convolution backward of an arch step computes no weight gradient, every one of a weight step
    computes them, and the arch step leaves the weights and their gradients alone. On the ops' PyTorch kernels,
    for time (the Triton kernel's flag: tests/test_kernels_sampled_dwpw.py)."""
    from sswp_fast import Batch
    from sswp_fast.search.executors import device as dispatch
    from sswp_fast.search.executors.choice import Executor

    monkeypatch.setitem(dispatch.runs_on_triton.__globals__, "interpreter_on", lambda: False)
    torch.manual_seed(0)
    engine = SearchEngine(tiny_config(recompute=recompute), 10,
                          executor=Executor("triton", True, "test: the device executor"))
    g = torch.Generator().manual_seed(0)
    batch = Batch((torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)))
    backward = torch.ops.sswp_fast.sampled_dwpw_backward

    class WeightGradFlags(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.flags: list[bool] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket is backward:
                self.flags.append(args[6])
            return func(*args, **(kwargs or {}))

    with WeightGradFlags() as weight_step:
        engine.weight_step(batch, warmup=False)
    weights = [p.detach().clone() for p in engine.net.parameters()]
    grads = [None if p.grad is None else p.grad.clone() for p in engine.net.parameters()]
    with WeightGradFlags() as arch_step:
        engine.arch_step(batch)
    assert weight_step.flags and all(weight_step.flags)
    assert arch_step.flags and not any(arch_step.flags)
    for p, before, grad in zip(engine.net.parameters(), weights, grads, strict=True):
        if p is not engine.net.arch_alpha:
            assert torch.equal(p.detach(), before)
            assert (p.grad is None and grad is None) or torch.equal(p.grad, grad)
