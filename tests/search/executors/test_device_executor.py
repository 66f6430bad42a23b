"""The device executor (persistent banks, masked optimizer, device-side path) against the PyTorch executor, whole
searches at a time: in float64 a tiny search through warm-up, search, pruning and stabilisation leaves the same
weights, alphas, BatchNorm statistics and genotypes under both, to 1e-9 (SGD and Adam, with and without
``--prune_edges``, and ``--reference_quirks``); a checkpoint of either resumes under the other; a device-executor
resume is bit-exact.

The device executor runs its PyTorch kernels here (the Triton kernels, float32 and slow in the interpreter, are
tested against the same PyTorch references in ``tests/test_kernels_*.py`` and ``tests/test_dispatch.py``)."""

from __future__ import annotations

import copy

import pytest
import torch

from sswp_fast import Batch, SearchEngine
from sswp_fast.search.executors.choice import Executor
from sswp_fast.search.export import derive_cell

from _support.configs import tiny_config

DEVICE = Executor("triton", True, "test: the device executor")
TORCH = Executor("torch", False, "test: the PyTorch executor")


@pytest.fixture
def float64(monkeypatch, one_torch_thread):
    from sswp_fast.search.executors import device as dispatch

    monkeypatch.setitem(dispatch.runs_on_triton.__globals__, "interpreter_on", lambda: False)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def _batch(seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch((torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)))


def _engine(executor: Executor, **flags) -> SearchEngine:
    torch.manual_seed(0)
    config = tiny_config(arch_lr=0.05, temperature=0.5, lr=0.05, **flags)
    return SearchEngine(config, 10, executor=executor)


def _steps(engine: SearchEngine, start: int, weight: int, arch: bool, warmup: bool = False) -> None:
    for i in range(start, start + weight):
        engine.weight_step(_batch(i), warmup=warmup, skip_drop_prob=0.3, pool_drop_prob=0.3)
        if arch:
            engine.arch_step(_batch(1000 + i))


def _search(engine: SearchEngine) -> SearchEngine:
    """Warm-up, search, forward pruning (cell 0, then the rest), stabilisation."""
    _steps(engine, 0, 2, arch=False, warmup=True)
    _steps(engine, 2, 2, arch=True)
    engine.freeze([0])
    _steps(engine, 4, 2, arch=True)
    engine.freeze([1, 2])
    _steps(engine, 6, 2, arch=False)
    return engine


def _assert_same(a: SearchEngine, b: SearchEngine, tol: float) -> None:
    sa, sb = a.net.state_dict(), b.net.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=tol, atol=tol, msg=key)
    torch.testing.assert_close(a.frozen_ops, b.frozen_ops, rtol=0, atol=0)
    for alpha_a, alpha_b in zip(a.net.arch_alpha.detach(), b.net.arch_alpha.detach(), strict=True):
        assert derive_cell(alpha_a, True, 1, 1) == derive_cell(alpha_b, True, 1, 1)


FLAGS = [
    pytest.param({}, id="sgd"),
    pytest.param({"weight_optm": "adam"}, id="adam"),
    pytest.param({"prune_edges": True}, id="sgd-prune_edges"),
    pytest.param({"weight_optm": "adam", "prune_edges": True}, id="adam-prune_edges"),
    pytest.param({"reference_quirks": True}, id="reference_quirks"),
]


@pytest.mark.parametrize("flags", FLAGS)
def test_a_search_ends_the_same_under_both_executors(flags, float64) -> None:
    device, host = _search(_engine(DEVICE, **flags)), _search(_engine(TORCH, **flags))
    assert device.dispatch and not host.dispatch
    _assert_same(device, host, 1e-9)
    moved = [c for c in device.net.cells[2].modules() if isinstance(c, torch.nn.BatchNorm2d)]
    assert any(int(bn.num_batches_tracked) > 0 for bn in moved)


def test_checkpoints_resume_under_either_executor_and_exactly_under_the_device_one(float64) -> None:
    flags = {"weight_optm": "adam", "prune_edges": True}
    device, host = _engine(DEVICE, **flags), _engine(TORCH, **flags)
    _steps(device, 0, 2, arch=True)
    _steps(host, 0, 2, arch=True)
    device.freeze([0])
    host.freeze([0])
    crossed = {"device": _engine(DEVICE, **flags), "host": _engine(TORCH, **flags)}
    crossed["device"].load_state_dict(copy.deepcopy(host.state_dict()))
    crossed["host"].load_state_dict(copy.deepcopy(device.state_dict()))
    resumed = _engine(DEVICE, **flags)
    resumed.load_state_dict(copy.deepcopy(device.state_dict()))
    for engine in (device, host, *crossed.values(), resumed):
        _steps(engine, 2, 2, arch=True)
    _assert_same(crossed["device"], host, 1e-9)
    _assert_same(crossed["host"], device, 1e-9)
    _assert_same(resumed, device, 0.0)
    for key, value in device.weight_optimizer.state_dict()["state"].items():
        for name, tensor in value.items():
            assert torch.equal(tensor, resumed.weight_optimizer.state_dict()["state"][key][name]), (key, name)


def test_the_banks_keep_the_reference_state_dict_and_loading_writes_into_them(tmp_path) -> None:
    """Binding changes no key and no value, and does not grow the checkpoint; a strict load of another network's state
    lands in the banks (the modules' tensors are views of them)."""
    from sswp_fast.search.executors.banks import bind_banks
    from sswp_fast.search.supernet import SearchNetwork

    net, other = SearchNetwork(4, 10, 3, affine=True), SearchNetwork(4, 10, 3, affine=True)
    before = copy.deepcopy(net.state_dict())
    torch.save(before, tmp_path / "plain.pt")
    banks = bind_banks(net)
    after = net.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    torch.save(after, tmp_path / "banked.pt")
    plain, banked = (tmp_path / "plain.pt").stat().st_size, (tmp_path / "banked.pt").stat().st_size
    assert banked <= 1.05 * plain  # one storage per bank instead of one per tensor: smaller, if anything
    loaded = torch.load(tmp_path / "banked.pt", weights_only=True)
    assert all(torch.equal(loaded[k], before[k]) for k in before)
    net.load_state_dict(other.state_dict(), strict=True)
    edge = other.cells[1].edges[0]._ops[3].op[1].weight  # a stride-2 sep_conv_3x3 depthwise weight
    offsets = {id(p): o for p, o in banks.cells[1].bound_params()}
    mine = net.cells[1].edges[0]._ops[3].op[1].weight
    start = offsets[id(mine)]
    assert torch.equal(banks.cells[1].weights[start:start + mine.numel()].view_as(edge), edge)
    loaded, expected = net.state_dict(), other.state_dict()
    assert all(torch.equal(loaded[k], expected[k]) for k in before)


def test_a_step_is_capturable_no_sync_and_the_same_launches_whatever_was_sampled(monkeypatch) -> None:
    """The preconditions of capturing a step once as a CUDA graph and replaying it, on the engine's whole weight
    and arch steps (sampling, forward, backward, clipping, masked optimizer, alpha update): no host
    synchronisation, and the same operators in the same order for two different sampled paths. SGD (the default);
    Adam is made ``capturable`` on CUDA, where its step counts then stay on the device.

    With the PyTorch kernels: the slotted convolution is then one custom-op call whose CPU kernel reads the
    indices internally, below the traced level, as its Triton kernel on CUDA does on the device. The Triton
    kernels themselves are traced at cell level in the interpreter (tests/test_dispatch.py)."""
    from sswp_fast.search.executors import device as dispatch

    monkeypatch.setitem(dispatch.runs_on_triton.__globals__, "interpreter_on", lambda: False)
    from _support.op_trace import OpTrace

    engine = _engine(DEVICE)
    batch = Batch((torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)))
    engine.weight_step(batch, warmup=False)  # the first weight step creates the momentum buffers
    traces = {}
    for step in ("weight", "arch"):
        for attempt in range(2):
            before = engine.net.arch_gates.clone()
            with OpTrace() as trace:
                if step == "weight":
                    engine.weight_step(batch, warmup=False, skip_drop_prob=0.3, pool_drop_prob=0.3)
                else:
                    engine.arch_step(batch)
            assert trace.syncs() == [], (step, trace.syncs())
            assert not torch.equal(engine.net.arch_gates, before), "the two steps sampled different paths"
            traces[step, attempt] = trace.ops
        assert traces[step, 0] == traces[step, 1], step
