"""CUDA graphs of the search steps (``--cuda_graphs``, :mod:`sswp_fast.search.executors.cuda_graphs`).

On this CPU machine: which runs ``auto`` captures (planned for ``--device cuda``); the preconditions of capture,
shown on the device executor's steps (its PyTorch kernels here): no host synchronisation, the same ATen calls on
the same shapes whatever path was sampled, and a step that reads only tensors that existed before it and that the
previous step read too (its state is updated in place, so a replayed graph reads the current values); and when a
step is warmed up, captured, replayed or run eagerly. On CUDA: replayed steps against eager ones."""

from __future__ import annotations

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from sswp_fast import Batch, SearchEngine
from sswp_fast.errors import ConfigError
from sswp_fast.search.config import SearchConfig
from sswp_fast.search.engine import StepResult
from sswp_fast.search.executors.choice import KERNELS_ENV, Executor, GraphChoice, choose_executor, choose_graphs
from sswp_fast.search.executors.cuda_graphs import StepGraphs

from _support.configs import tiny_config

DEVICE = Executor("triton", True, "test: the device executor")
SYNC_OPS = ("aten._local_scalar_dense", "aten.item", "aten.nonzero", "aten.equal", "aten.is_nonzero")


@pytest.fixture(autouse=True)
def _no_override(monkeypatch) -> None:
    monkeypatch.delenv(KERNELS_ENV, raising=False)


def _choice(device: str, processes: int = 1, **flags) -> GraphChoice:
    config = SearchConfig(**flags).resolved()
    return choose_graphs(config, device, choose_executor(config, device, processes), processes)


def test_auto_captures_on_cuda_with_the_device_executor_and_says_why_not_elsewhere() -> None:
    cuda = _choice("cuda")
    assert (cuda.enabled, cuda.strict) == (True, False)
    assert _choice("cuda", cuda_graphs="on").strict
    for choice, why in ((_choice("cpu"), "cpu device"), (_choice("cuda", kernels="torch"), "PyTorch executor"),
                        (_choice("cuda", 2), "torchrun"), (_choice("cuda", amp="fp16"), "loss scaler"),
                        (_choice("cuda", cuda_graphs="off"), "--cuda_graphs off")):
        assert not choice.enabled and why in choice.reason
    bf16 = _choice("cuda", amp="bf16", weight_optm="adam", prune_edges=True)
    assert bf16.enabled


@pytest.mark.parametrize(("device", "flags", "why"), [
    ("cpu", {}, "cpu device"),
    ("cuda", {"kernels": "torch"}, "PyTorch executor"),
])
def test_on_where_it_cannot_capture_is_a_one_line_error(device, flags, why) -> None:
    with pytest.raises(ConfigError, match=why) as refused:
        _choice(device, cuda_graphs="on", **flags)
    assert "\n" not in str(refused.value) and "--cuda_graphs auto" in str(refused.value)
    with pytest.raises(ConfigError, match="--cuda_graphs must be auto, on or off"):
        SearchConfig(cuda_graphs="yes").resolved()


class _Trace(TorchDispatchMode):
    """The ATen calls of a step with their tensors' shapes and dtypes, the host synchronisations, and the storages
    it read that it had not made itself (the step's external inputs)."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple] = []
        self.syncs = 0
        self.made: set[int] = set()
        self.external: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outputs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        if func is torch.ops.aten.lift_fresh.default:  # a constant the step's Python made just now (Adam's CPU
            self.made.update(t.untyped_storage().data_ptr() for t in inputs)  # step increment): not state
        for t in inputs:
            storage = t.untyped_storage().data_ptr()
            if storage and storage not in self.made:
                self.external.add(storage)
        self.made.update(t.untyped_storage().data_ptr() for t in outputs)
        self.syncs += str(func).startswith(SYNC_OPS)
        self.calls.append((str(func), *((tuple(t.shape), t.dtype) for t in inputs + outputs)))
        return out


@pytest.fixture
def pytorch_kernels(monkeypatch, one_torch_thread):
    """The device executor on its PyTorch kernels (the Triton ones run one launch sequence by construction), and
    ``torch.optim.Adam``'s capturable path, which the engine takes on CUDA, allowed on CPU tensors."""
    from torch.optim import adam

    from sswp_fast.search.executors import device as dispatch

    monkeypatch.setitem(dispatch.runs_on_triton.__globals__, "interpreter_on", lambda: False)
    supported = adam._get_capturable_supported_devices
    monkeypatch.setattr(adam, "_get_capturable_supported_devices", lambda **kw: [*supported(**kw), "cpu"])


def _batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch((torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)))


def _traced_steps(seed: int, kind: str, **flags) -> list[_Trace]:
    """Three steps of ``kind`` on one batch, each traced, after an untraced first one (as the graphs warm up)."""
    torch.manual_seed(0)
    engine = SearchEngine(tiny_config(seed=seed, memory_format="contiguous", **flags), 10, executor=DEVICE)
    engine.weight_optimizer.param_groups[0]["capturable"] = True  # as on CUDA (SGD ignores it)
    batch = _batch()
    if kind == "frozen arch":
        engine.freeze([0])

    def step() -> None:
        if kind == "weight":
            engine.weight_step(batch, warmup=False, skip_drop_prob=0.3, pool_drop_prob=0.3)
        else:
            engine.arch_step(batch, skip_drop_prob=0.3, pool_drop_prob=0.3)

    step()
    traces = []
    for _ in range(3):
        with _Trace() as trace:
            step()
        trace.path = engine.net.arch_gates.argmax(-1).clone()
        traces.append(trace)
    return traces


@pytest.mark.parametrize(("kind", "flags"), [
    ("weight", {}),
    ("weight", {"weight_optm": "adam"}),
    ("weight", {"reference_quirks": True}),
    ("arch", {}),
    ("arch", {"net_mode": "full_v2"}),
    ("frozen arch", {"prune_edges": True}),
], ids=["weight-sgd", "weight-adam", "weight-quirks", "arch-two", "arch-full-v2", "arch-frozen-prefix"])
def test_a_step_can_be_captured_whatever_path_it_samples(pytorch_kernels, kind, flags) -> None:
    first, second = _traced_steps(1, kind, **flags), _traced_steps(2, kind, **flags)
    assert any(not torch.equal(a.path, b.path) for a, b in zip(first, second, strict=True)), "paths must differ"
    for a, b in zip(first, second, strict=True):
        assert a.syncs == b.syncs == 0
        assert a.calls == b.calls, "the ATen calls (or their shapes) depend on the sampled path"
    for run in (first, second):
        assert run[0].external == run[1].external == run[2].external, (
            "a step read a tensor that an earlier step made (state rebound instead of updated in place)")


class _Recorded(StepGraphs):
    """:class:`StepGraphs` with the CUDA parts replaced by a log of what would run."""

    def __init__(self, full_rows: int = 4, strict: bool = False, fail: bool = False):
        super().__init__(torch.Generator(), full_rows, strict)
        self.log: list[str] = []
        self.fail = fail

    def _warm_up(self, step, batch):
        self.log.append("warm up")
        return step(batch)

    def _capture(self, key, batch, step):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing\nmore")
        self.log.append("capture")
        return _Fake(key, batch, step)

    def _replay(self, captured):
        self.log.append("replay")
        captured.inputs_seen.append(captured.inputs.views[0].clone())
        return captured.result


class _Fake:
    def __init__(self, key, batch, step):
        self.key = key
        self.inputs = Batch(tuple(v.clone() for v in batch.views))
        self.inputs_seen: list[torch.Tensor] = []
        self.result = StepResult(torch.zeros(()), torch.zeros(()), torch.zeros(()), batch.views[0].shape[0])


def _rows(n: int, value: float = 0.0) -> Batch:
    return Batch((torch.full((n, 1), value), torch.full((n, 1), value)))


def _eager(batch: Batch) -> StepResult:
    return StepResult(torch.ones(()), torch.ones(()), torch.ones(()), batch.views[0].shape[0])


def test_a_key_is_warmed_up_captured_then_replayed_and_short_batches_run_eagerly() -> None:
    graphs = _Recorded()
    for value in range(3):
        graphs.run("weight", ("lr", 0.1), _rows(4, value), _eager)
    assert graphs.log == ["warm up", "capture", "replay", "replay"]
    assert [float(v[0, 0]) for v in graphs.graphs["weight"].inputs_seen] == [1.0, 2.0], "replays read the batch"
    graphs.run("weight", ("lr", 0.1), _rows(3), _eager)
    assert graphs.log[-1] == "replay", "a short batch runs eagerly"
    graphs.run("arch", (), _rows(4), _eager)
    graphs.run("weight", ("lr", 0.05), _rows(4), _eager)
    assert "weight" not in graphs.graphs, "a new key drops the old graph"
    graphs.run("weight", ("lr", 0.05), _rows(4), _eager)
    assert graphs.log[4:] == ["warm up", "warm up", "capture", "replay"]
    assert graphs.captures == 2 and set(graphs.graphs) == {"weight"}


def test_a_failed_capture_falls_back_to_eager_steps_under_auto_and_stops_the_run_under_on() -> None:
    graphs = _Recorded(fail=True)
    graphs.run("weight", (), _rows(4), _eager)
    with pytest.warns(UserWarning, match=r"capturing the weight step failed \(operation not permitted when stream "
                                         r"is capturing\); the run goes on with eager steps"):
        result = graphs.run("weight", (), _rows(4), _eager)
    assert float(result.loss) == 1.0 and not graphs.enabled
    graphs.run("weight", (), _rows(4), _eager)
    assert graphs.log == ["warm up"]
    strict = _Recorded(strict=True, fail=True)
    strict.run("weight", (), _rows(4), _eager)
    with pytest.raises(RuntimeError, match="not permitted"):
        strict.run("weight", (), _rows(4), _eager)


@pytest.mark.gpu(reason="CUDA graphs need a CUDA device")
def test_replayed_steps_follow_eager_steps_on_cuda() -> None:
    pytest.importorskip("triton")
    device = torch.device("cuda")
    engines = {}
    for graphs in (GraphChoice(True, True, "test"), GraphChoice(False, False, "test")):
        torch.manual_seed(0)
        engines[graphs.enabled] = SearchEngine(tiny_config(layers=5, init_channels=8, batch_size=8), 10, device,
                                               executor=DEVICE, graphs=graphs)
    g = torch.Generator(device).manual_seed(0)
    batches = [Batch((torch.randn(8, 3, 16, 16, device=device, generator=g),
                      torch.randn(8, 3, 16, 16, device=device, generator=g))) for _ in range(6)]
    short = Batch(tuple(view[:4] for view in batches[0].views))
    losses = {}
    for enabled, engine in engines.items():
        losses[enabled] = []
        for i, batch in enumerate(batches):
            losses[enabled].append(engine.weight_step(batch, warmup=False, skip_drop_prob=0.2).loss)
            losses[enabled].append(engine.arch_step(batches[-1 - i]).loss)
        losses[enabled].append(engine.weight_step(short, warmup=False).loss)
        engine.set_lr(0.01)
        losses[enabled] += [engine.weight_step(b, warmup=False).loss for b in batches[:3]]
        engine.freeze([0])
        losses[enabled] += [engine.arch_step(b).loss for b in batches[:3]]
    graphed = engines[True].graphs
    assert graphed.captures == 4 and graphed.replays > 10
    torch.testing.assert_close(torch.stack(losses[True]), torch.stack(losses[False]), rtol=1e-4, atol=1e-5)
    for name, p in engines[False].net.state_dict().items():
        torch.testing.assert_close(engines[True].net.state_dict()[name], p, rtol=1e-4, atol=1e-5, msg=name)
