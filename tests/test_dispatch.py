"""Device-side dispatch (``sswp_fast.dispatch``): a cell run from device-side op indices equals the module path.

Compared with :class:`~sswp_fast.supernet.SearchCell` run from a host plan: outputs, gradients of the inputs and
of every parameter, the gate gradients of probing plans, and the whole state dict afterwards (running
statistics and ``num_batches_tracked`` of exactly the BNs that ran). Also: no host synchronisation and the same
operator sequence whatever was sampled (what CUDA-graph replay needs), and the masked optimizer step.
Triton kernels run in the interpreter on CPU (tests/conftest.py), so the cells are tiny.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_config
from torch.utils._python_dispatch import TorchDispatchMode

from sswp_fast.dispatch import MaskedWeightUpdate, run_cell, slot_groups
from sswp_fast.engine import SearchEngine
from sswp_fast.errors import ConfigError
from sswp_fast.supernet import NODE_EDGES, DevicePlan, SearchNetwork

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
    s0, s1 = s0.clone().requires_grad_(), s1.clone().requires_grad_()
    out = fn(cell, s0, s1)
    dy = torch.randn_like(out) if dy is None else dy
    leaves = [s0, s1, *cell.parameters()]
    grads = torch.autograd.grad(out, leaves, dy, allow_unused=True, materialize_grads=True)
    return out, grads, dy


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
    active = torch.tensor(EVERY_OP)
    out, grads, dy = outputs_and_grads(lambda c, a, b: run_cell(c, NODE_EDGES, a, b, active), cell, s0, s1)
    ref, ref_grads, _ = outputs_and_grads(lambda c, a, b: c(a, b, EVERY_OP), twin, s0, s1, dy)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    scale = max(g.abs().max().item() for g in ref_grads)
    for i, (g, r) in enumerate(zip(grads, ref_grads, strict=True)):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5 * scale, msg=f"gradient {i}")
    assert_states_equal(cell, twin)


def test_probing_gives_the_module_paths_gate_gradients():
    """Mode two: the active op differentiable, the inactive one evaluated without autograd; the gates' gradient
    and the inactive ops' BN running statistics as on the module path (spec §5.4-5.5)."""
    cell, s0, s1 = cell_and_inputs(True, False)
    twin = copy.deepcopy(cell)
    active = torch.tensor(EVERY_OP)
    inactive = (active + torch.randint(1, 7, (14,))) % 7
    gates = torch.nn.functional.one_hot(active, 7).float().requires_grad_()
    twin_gates = gates.detach().clone().requires_grad_()
    out = run_cell(cell, NODE_EDGES, s0, s1, active, inactive[:, None], gates)
    ref = twin(s0, s1, EVERY_OP, [[b] for b in inactive.tolist()], twin_gates)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    dy = torch.randn_like(out)
    (g,) = torch.autograd.grad(out, [gates], dy)
    (g_ref,) = torch.autograd.grad(ref, [twin_gates], dy)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4 * g_ref.abs().max().item())
    assert (g_ref.gather(1, inactive[:, None]) != 0).all(), "the inactive ops were measured"
    assert_states_equal(cell, twin)


@pytest.mark.slow  # seven group evaluations per node in the interpreter
def test_full_v2_probing_measures_all_seven_ops():
    cell, s0, s1 = cell_and_inputs(False, False)
    twin = copy.deepcopy(cell)
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


class OpTrace(TorchDispatchMode):
    """Records every ATen operator; host synchronisations are the ones that turn a tensor into a Python number."""

    SYNCS = ("aten._local_scalar_dense", "aten.item", "aten.nonzero", "aten.equal", "aten.is_nonzero")

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))

    def syncs(self) -> list[str]:
        return [op for op in self.ops if op.startswith(self.SYNCS)]


def test_the_step_never_reads_the_path_and_runs_the_same_operators_whatever_was_sampled():
    cell, s0, s1 = cell_and_inputs(True, False)
    traces = []
    for active in (torch.tensor(EVERY_OP), torch.tensor(EVERY_OP[::-1])):
        with OpTrace() as trace:
            out = run_cell(cell, NODE_EDGES, s0.requires_grad_(), s1, active)
            torch.autograd.grad(out.sum(), [s0, *cell.parameters()])
        assert trace.syncs() == []
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


def test_adam_weights_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match=r"lacks --weight_optm adam .*use --kernels auto"):
        SearchEngine(tiny_config(kernels="triton", weight_optm="adam"), num_classes=10)


def test_masked_update_leaves_the_ops_that_did_not_run_untouched():
    """Zero gradients on every op that did not run: after the masked step those parameters and momentum
    buffers are bitwise unchanged, and the others equal a plain SGD step that never saw the idle ops."""
    net = SearchNetwork(4, 10, 3)
    twin = copy.deepcopy(net)
    active = torch.randint(0, 7, (3, 14))
    ran = {id(p) for c, cell in enumerate(net.cells) for e, edge in enumerate(cell.edges)
           for p in edge._ops[int(active[c, e])].parameters()}
    opt = torch.optim.SGD(net.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    twin_opt = torch.optim.SGD(twin.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    masked = MaskedWeightUpdate(net, opt)
    for _ in range(2):
        for p, q in zip(net.weight_parameters(), twin.weight_parameters(), strict=True):
            g = torch.randn_like(p)
            is_edge_param = any(p is r for r in masked.params)
            p.grad = g if (id(p) in ran or not is_edge_param) else torch.zeros_like(p)
            q.grad = g.clone() if (id(p) in ran or not is_edge_param) else None
        before = {id(p): p.detach().clone() for p in net.weight_parameters()}
        masked.step(active)
        twin_opt.step()
        for p, q in zip(net.weight_parameters(), twin.weight_parameters(), strict=True):
            if id(p) in ran or not any(p is r for r in masked.params):
                torch.testing.assert_close(p, q, rtol=0, atol=1e-7)
                assert not torch.equal(p, before[id(p)])
            else:
                assert torch.equal(p, before[id(p)])
                assert opt.state[p]["momentum_buffer"].abs().max() == 0


def test_a_slot_group_keeps_only_its_input_for_backward():
    """Recompute: of a whole node (five slots, every op), autograd stores the stacked input and the op indices;
    the intermediates are rebuilt in the backward pass (exactness: the tests above)."""
    cell, _, _ = cell_and_inputs(False, False)
    group, _ = slot_groups(cell, NODE_EDGES)[3][0]
    x = torch.randn(2, 5 * 4, 6, 6, requires_grad=True)
    ops = torch.tensor([0, 1, 3, 5, 6])
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = group(x, ops)
    assert sorted(t.data_ptr() for t in saved) == sorted((x.data_ptr(), ops.data_ptr()))
    (dx,) = torch.autograd.grad(y.sum(), [x])
    assert dx.abs().sum() > 0
