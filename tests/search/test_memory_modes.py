"""Memory modes of the search step: ``--recompute`` gives the gradients of ``none`` exactly, ``--amp`` follows
the float32 trajectories within tolerance, and bad combinations are one-line errors."""

from __future__ import annotations

import copy

import pytest
import torch

from sswp_fast import Batch, SearchEngine, sample_paths
from sswp_fast.errors import ConfigError
from sswp_fast.losses.objectives import info_nce
from sswp_fast.search.executors.banks import bind_banks
from sswp_fast.search.sampling import one_hot
from sswp_fast.search.supernet import DevicePlan, ExecutionPlan, SearchNetwork

from _support.configs import tiny_config

MODES = ("none", "edge", "cell")


def _plan(kind: str, active: torch.Tensor, inactive: torch.Tensor, probe: bool,
          dtype: torch.dtype) -> ExecutionPlan | DevicePlan:
    layers = active.shape[0]
    gates = one_hot(active).to(dtype).requires_grad_(True) if probe else None
    if kind == "device":
        return DevicePlan(active, [True] * layers if probe else None, inactive[..., None] if probe else None, gates)
    others = [[[b] for b in row] for row in inactive.tolist()] if probe else None
    return ExecutionPlan(active.tolist(), [True] * layers if probe else None, others, gates)


def _backward(net: SearchNetwork, x: torch.Tensor, plan) -> dict[str, torch.Tensor]:
    """Gradients of every parameter (and of the gates) after one InfoNCE backward, plus every buffer."""
    info_nce(net(x, plan), 0.5).backward()
    out = {f"grad.{n}": p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    banks = net.__dict__.get("_banks")  # the device executor's parameter banks (sswp_fast.search.executors.banks)
    if banks is not None:
        out.update({f"grad.banks.{c}": leaf.grad.clone() for c, leaf in enumerate(banks.leaves())})
    out.update({f"buffer.{n}": b.clone() for n, b in net.named_buffers()})
    if plan.gates is not None:
        out["gates"] = plan.gates.grad.clone()
    return out


@pytest.mark.parametrize("kind", ["host", "device"])
@pytest.mark.parametrize("probe", [False, True], ids=["weight", "probe"])
def test_recompute_modes_give_the_same_gradients_and_statistics(kind: str, probe: bool, one_torch_thread,
                                                                 monkeypatch) -> None:
    """In float64, to 1e-13. The device-side dispatch executor runs its PyTorch kernels here (the Triton ones,
    slow in the interpreter, are tested against those elsewhere): what is checked is which
    tensors it keeps and recomputes."""
    from sswp_fast.search.executors import device as dispatch

    monkeypatch.setitem(dispatch.runs_on_triton.__globals__, "interpreter_on", lambda: False)
    dtype, atol = torch.float64, 1e-13
    torch.manual_seed(0)
    base = SearchNetwork(4, 10, 3, affine=True).to(dtype)
    for m in base.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
    x = torch.randn(4, 3, 8, 8, dtype=dtype)
    alpha = torch.randn(3, 14, 7)
    active, inactive = sample_paths(alpha, generator=torch.Generator().manual_seed(1))
    results = {}
    for mode in MODES:
        net = copy.deepcopy(base)
        if kind == "device":
            bind_banks(net)
        net.recompute = mode
        results[mode] = _backward(net, x, _plan(kind, active, inactive, probe, dtype))
    reference = results["none"]
    assert any(k.startswith(("grad.cells.2.edges", "grad.banks.2")) for k in reference)
    for mode in ("edge", "cell"):
        assert results[mode].keys() == reference.keys()
        for key, value in reference.items():
            torch.testing.assert_close(results[mode][key], value, rtol=atol, atol=atol, msg=f"{mode}: {key}")


def _saved_bytes(net: SearchNetwork, x: torch.Tensor, plan) -> int:
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not (t.is_leaf and t.requires_grad):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        info_nce(net(x, plan), 0.5)
    return sum(storages.values())


def test_recompute_modes_keep_less_for_the_backward_pass() -> None:
    torch.manual_seed(0)
    base = SearchNetwork(4, 10, 3)
    x = torch.randn(4, 3, 8, 8)
    active = torch.full((3, 14), 4)  # every edge a sep_conv_3x3: the op that keeps the most
    saved = {}
    for mode in MODES:
        net = copy.deepcopy(base)
        net.recompute = mode
        saved[mode] = _saved_bytes(net, x, ExecutionPlan(active.tolist()))
    assert saved["edge"] < 0.5 * saved["none"]
    assert saved["cell"] < 0.5 * saved["edge"]


def _batch(seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch((torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)))


def _trajectory(steps: int = 6, **overrides) -> tuple[list[float], list[torch.Tensor], SearchEngine]:
    torch.manual_seed(0)
    engine = SearchEngine(tiny_config(arch_lr=0.05, temperature=0.5, **overrides), 10)
    losses, alphas = [], []
    for i in range(steps):
        losses.append(float(engine.weight_step(_batch(i), warmup=False).loss))
        losses.append(float(engine.arch_step(_batch(100 + i)).loss))
        alphas.append(engine.net.arch_alpha.detach().clone())
    return losses, alphas, engine


def test_recompute_search_steps_equal_the_plain_ones(one_torch_thread) -> None:
    losses, alphas, engine = _trajectory(3)
    for mode in ("edge", "cell"):
        other_losses, other_alphas, other = _trajectory(3, recompute=mode)
        assert other.net.recompute == mode
        torch.testing.assert_close(other_losses, losses, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(other_alphas, alphas, rtol=1e-6, atol=1e-6)
        for p, q in zip(engine.net.parameters(), other.net.parameters(), strict=True):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


def _follow(engine: SearchEngine, leader: SearchEngine) -> None:
    """Put ``engine`` in ``leader``'s state (weights, optimizers, alphas, generator)."""
    state = copy.deepcopy(leader.state_dict())
    if engine.scaler.is_enabled():
        state["scaler"] = engine.scaler.state_dict()
    engine.load_state_dict(state)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


@pytest.mark.parametrize(("amp", "executor"), [("bf16", "torch"), ("fp16", "torch"), ("bf16", "device"),
                                               ("fp16", "device")])
def test_amp_steps_follow_the_float32_steps(amp: str, executor: str, one_torch_thread, monkeypatch) -> None:
    """Along a float32 search trajectory, every mixed-precision step taken from the same state gives the float32
    loss (1%), moves the weights in the float32 direction (cosine), and measures the float32 gate gradients
    within half their norm. The bounds are what the precision promises, not one CPU's outcome: bf16 rounds every
    result to 8 bits (u = 2^-8), and a gradient through the ~40 rounded stages of this network may carry
    40·u ≈ 16% error (measured: 17% bf16, 7% fp16 on an Intel Xeon), so half the norm leaves a 3x margin. The
    alpha update itself is not compared: Adam with beta1 = 0 moves every alpha by ±lr after the sign of its
    gradient, and the sign of a near-zero gradient is not something 8 bits can promise.

    ``device``: the mixed-precision steps run on the device executor (float32 master weights in its banks; on its
    PyTorch kernels here, for time: its Triton kernels under bf16 autocast are checked at cell level in
    tests/test_dispatch.py), the float32 steps on the PyTorch executor."""
    kind = {}
    if executor == "device":
        from sswp_fast.search.executors import device as dispatch
        from sswp_fast.search.executors.choice import Executor

        monkeypatch.setitem(dispatch.runs_on_triton.__globals__, "interpreter_on", lambda: False)
        kind = {"executor": Executor("triton", True, "test: the device executor")}
    fp32 = SearchEngine(tiny_config(batch_size=8, temperature=0.5), 10)
    low = SearchEngine(tiny_config(batch_size=8, temperature=0.5, amp=amp), 10, **kind)
    assert low.masked_update is not None if executor == "device" else low.masked_update is None
    assert low.amp_dtype == (torch.bfloat16 if amp == "bf16" else torch.float16)
    assert low.scaler.is_enabled() == (amp == "fp16")
    for i in range(4):
        for kind in ("weight", "arch"):
            _follow(low, fp32)
            before_w = torch.cat([p.detach().flatten() for p in fp32.net.weight_parameters()])
            scale = low.scaler.get_scale()
            results = []
            for engine in (fp32, low):
                batch = _batch(i) if kind == "weight" else _batch(100 + i)
                step = engine.weight_step(batch, warmup=False) if kind == "weight" else engine.arch_step(batch)
                results.append(step)
            assert results[1].loss.dtype == torch.float32
            torch.testing.assert_close(results[1].loss, results[0].loss, rtol=1e-2, atol=0)
            if kind == "weight":
                moves = [torch.cat([p.detach().flatten() for p in e.net.weight_parameters()]) - before_w
                         for e in (fp32, low)]
                if amp == "fp16" and not moves[1].any():  # GradScaler skips a step that overflowed at its scale
                    assert low.scaler.get_scale() < scale
                else:
                    assert _cosine(*moves) > 0.95
            else:
                _follow(low, fp32)
                grads = []
                for engine in (fp32, low):
                    engine.generator.manual_seed(i)
                    path = engine.sample(skip_drop_prob=0.0, pool_drop_prob=0.0, warmup=False)
                    grads.append(engine.gate_gradient(_batch(100 + i), *path)[1])
                if grads[1] is not None:  # None: an fp16 backward overflowed, and the arch step was skipped
                    assert float((grads[1] - grads[0]).norm()) <= 0.5 * float(grads[0].norm())
    for m in low.net.modules():  # statistics and parameters stay float32
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.running_mean.dtype == m.running_var.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in low.net.parameters())


def test_fp16_overflow_in_a_bank_gradient_skips_the_whole_device_executor_step(one_torch_thread,
                                                                              monkeypatch) -> None:
    """Under ``--amp fp16`` the loss scaler checks the banks' gradients with the other weights': an inf in one
    cell's bank leaves every weight (stem and head included) and the momentum as they were and halves the scale,
    as ``GradScaler`` does on the PyTorch executor; the next, finite step moves them."""
    from sswp_fast.search.executors import device as dispatch
    from sswp_fast.search.executors.choice import Executor

    monkeypatch.setitem(dispatch.runs_on_triton.__globals__, "interpreter_on", lambda: False)
    engine = SearchEngine(tiny_config(batch_size=8, temperature=0.5, amp="fp16"), 10,
                          executor=Executor("triton", True, "test: the device executor"))
    weights = lambda: torch.cat([p.detach().flatten() for p in engine.net.weight_parameters()])  # noqa: E731
    for i in range(10):  # the scale falls from 2^16 until the gradients fit in fp16 and a step is taken
        before = weights()
        engine.weight_step(_batch(i), warmup=False)
        if not torch.equal(weights(), before):
            break
    before, scale = weights(), engine.scaler.get_scale()
    momentum = engine.masked_update.state["momentum_buffer"].clone()
    hook = engine.masked_update.banks.leaves()[-1].register_hook(lambda grad: torch.full_like(grad, float("inf")))
    engine.weight_step(_batch(20), warmup=False)
    hook.remove()
    assert torch.equal(weights(), before) and engine.scaler.get_scale() == scale / 2
    assert torch.equal(engine.masked_update.state["momentum_buffer"], momentum)
    engine.weight_step(_batch(21), warmup=False)
    assert not torch.equal(weights(), before)


def test_amp_trajectory_stays_near_the_float32_one(one_torch_thread) -> None:
    """A short bf16 search keeps the float32 losses within 5%. Alphas are not compared: each arch step moves an
    alpha by ±lr after the sign of a gradient bf16 may flip where it is near zero (see above), and the next paths
    are sampled from those alphas, so the two searches need not even run the same ops."""
    losses, _, _ = _trajectory(3)
    amp_losses, _, _ = _trajectory(3, amp="bf16")
    torch.testing.assert_close(amp_losses, losses, rtol=0.05, atol=0)


def test_amp_keeps_the_loss_in_float32(monkeypatch) -> None:
    import sswp_fast.search.engine as engine_module

    seen = []
    real = engine_module.info_nce_with_topk

    def spy(features, temperature):
        seen.append((features.dtype, torch.is_autocast_enabled("cpu")))
        return real(features, temperature)

    monkeypatch.setattr(engine_module, "info_nce_with_topk", spy)
    engine = SearchEngine(tiny_config(amp="bf16"), 10)
    engine.weight_step(_batch(0), warmup=False)
    assert seen == [(torch.float32, False)]


def test_fp16_state_round_trips_its_loss_scale() -> None:
    engine = SearchEngine(tiny_config(amp="fp16"), 10)
    engine.weight_step(_batch(0), warmup=False)
    state = engine.state_dict()
    assert "scaler" in state
    fresh = SearchEngine(tiny_config(amp="fp16"), 10)
    fresh.load_state_dict(copy.deepcopy(state))
    assert fresh.scaler.get_scale() == engine.scaler.get_scale()


@pytest.mark.parametrize(("overrides", "words"), [
    (dict(recompute="layer"), "--recompute must be one of"),
    (dict(amp="fp8"), "--amp must be one of"),
    (dict(amp="bf16", reference_quirks=True), "drop --amp"),
    (dict(max_memory=-1.0), "--max_memory"),
    (dict(max_memory=4.0, recompute="edge"), "drop --recompute edge"),
    (dict(recompute="cell", compile="default"), "--compile"),
])
def test_config_refuses_bad_memory_options(overrides: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        tiny_config(**overrides)


def test_max_memory_takes_the_fastest_mode_predicted_to_fit(monkeypatch) -> None:
    from sswp_fast.search import memory_budget

    # a fake measurement: 1 GB fixed plus, per sample, 0.3 / 0.1 / 0.05 GB for none / edge / cell
    per_sample = {"none": 0.3, "edge": 0.1, "cell": 0.05}
    measured = []
    trimming = []

    def fake_peak(engine, meter, batch_size, image_size):
        measured.append((engine.net.recompute, batch_size))
        trimming.append(meter.release_free_heap)
        return (1.0 + per_sample[engine.net.recompute] * batch_size) * memory_budget.GB

    monkeypatch.setattr(memory_budget, "step_peak", fake_peak)
    engine = SearchEngine(tiny_config(), 10)
    for budget, mode in ((40.0, "none"), (20.0, "edge"), (7.5, "cell")):  # 25% margin: 29.8 / 10.6 / 5.8 GB
        measured.clear()
        choice = memory_budget.choose_recompute(engine, 96, 8, budget, release_free_heap=mode == "edge")
        assert choice.mode == mode and engine.net.recompute == mode
        assert set(trimming) == {mode == "edge"}
        trimming.clear()
        assert choice.predicted_gb["none"] == pytest.approx(1.0 + 0.3 * 96)
        assert measured[-2:] == [(mode, 4), (mode, 8)]
        assert f"--recompute {mode}" in choice.describe(budget)
    with pytest.raises(ConfigError, match="even --recompute cell needs about 5.8 GB.*lower --batch_size"):
        memory_budget.choose_recompute(engine, 96, 8, 6.5, release_free_heap=False)  # fits, but not with the margin


def test_max_memory_measurement_leaves_the_search_state_as_it_was(one_torch_thread) -> None:
    from sswp_fast.search import memory_budget

    engine = SearchEngine(tiny_config(), 10)
    engine.weight_step(_batch(0), warmup=False)
    before = copy.deepcopy(engine.state_dict())
    choice = memory_budget.choose_recompute(engine, 4, 8, 1000.0, release_free_heap=True)
    assert choice.mode == "none" and choice.predicted_gb["none"] > 0.1  # a process holds torch: >100 MB
    after = engine.state_dict()
    torch.testing.assert_close(after["net"], before["net"], rtol=0, atol=0)
    torch.testing.assert_close(after["weight_optimizer"], before["weight_optimizer"], rtol=0, atol=0)
    torch.testing.assert_close(after["arch_optimizer"], before["arch_optimizer"], rtol=0, atol=0)
    assert torch.equal(after["generator"], before["generator"])


def test_peak_meters_give_the_free_heap_back_only_when_told(monkeypatch) -> None:
    """``malloc_trim`` acts on the whole process: :func:`reset_peak_rss` and :class:`PeakMeter` call it only when
    their caller asks."""
    from sswp_fast.search import memory_budget

    trims = []
    monkeypatch.setattr(memory_budget, "_release_free_heap", lambda: trims.append(1))
    memory_budget.reset_peak_rss()
    meter = memory_budget.PeakMeter(torch.device("cpu"))
    meter.reset()
    assert trims == []
    memory_budget.reset_peak_rss(release_free_heap=True)
    assert len(trims) == 1
    meter = memory_budget.PeakMeter(torch.device("cpu"), release_free_heap=True)
    meter.reset()
    assert len(trims) == 3


@pytest.mark.parametrize("extra, trimmed", [((), False), (("--max_memory", "1000"), True)])
def test_a_search_gives_the_free_heap_back_only_to_measure_max_memory(tmp_path, monkeypatch, one_torch_thread,
                                                                      extra: tuple[str, ...], trimmed: bool) -> None:
    from sswp_fast.cli import build_parser, config_from_args
    from sswp_fast.search import memory_budget
    from sswp_fast.search.run import SearchRun

    trims = []
    monkeypatch.setattr(memory_budget, "_release_free_heap", lambda: trims.append(1))
    args = ["search", "--dataset", "digits", "--epochs", "2", "--epoch_ratios", "0.5,0.5,0.0,0.0", "--min_warmup",
            "0", "--layers", "3", "--init_channels", "4", "--batch_size", "8", "--steps_per_epoch", "2",
            "--progress", "off", "--device", "cpu", "--kernels", "torch", *extra]
    run = SearchRun(config_from_args(build_parser().parse_args(args)), tmp_path)
    probes = len(trims)
    run.run()
    assert (probes > 0) == trimmed and len(trims) == probes
