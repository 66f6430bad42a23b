"""Side-by-side checks against the unchanged public reference (LzVv123456/SSWP-NAS).

Skipped unless ``SSWP_REFERENCE`` points at a checkout of it (``git clone https://github.com/LzVv123456/SSWP-NAS``).
The reference is imported through ``benchmarks/reference_harness.py`` (no file of it is changed or copied).

Checks:
  (a) ``SearchNetwork.state_dict()`` has the reference ``Network`` / ``NetworkImageNet`` keys, in the same order,
      with the same shapes and dtypes, and state dicts load both ways with ``strict=True``;
  (b) ``sswp_fast.losses.objectives.info_nce`` equals ``CrossEntropyLoss()(*info_nce_loss(features))`` (value and
      gradient);
  (c) ``sswp_fast.search.export.derive_architecture`` equals the reference ``Network.final_prune``;
  (d) with the same weights and the same sampled path, both networks compute the same features and weight
      gradients.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REAL_CUDA_AVAILABLE = torch.cuda.is_available()
REAL_TENSOR_CUDA = torch.Tensor.cuda
HARNESS_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "reference_harness.py"


def _load_harness():
    name = "reference_harness"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HARNESS_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


harness = _load_harness()
SKIP_REASON = harness.skip_reason()
pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")

from sswp_fast.losses.objectives import info_nce  # noqa: E402
from sswp_fast.search.supernet import ExecutionPlan, SearchNetwork  # noqa: E402

from _support.alpha_cases import ALPHA_KINDS, random_cell_alpha  # noqa: E402


@pytest.fixture(scope="module")
def ref():
    return harness.load_reference()


def _reference_net(ref, C: int, num_classes: int, layers: int, data_mode: str, affine: bool, imagenet: bool,
                   skip_r_num: int = 2, pool_r_num: int = 2):
    cls = ref.NetworkImageNet if imagenet else ref.Network
    return cls(C, num_classes, layers, "two", data_mode, "forward", affine, skip_r_num, pool_r_num)


@torch.no_grad()
def _randomize(net: torch.nn.Module, seed: int) -> None:
    """Distinct random values in every parameter and floating buffer (and the BN batch counters)."""
    g = torch.Generator().manual_seed(seed)
    for tensor in list(net.parameters()) + list(net.buffers()):
        if tensor.dtype.is_floating_point:
            tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
        elif tensor.dtype == torch.long:
            tensor.copy_(torch.randint(0, 1000, tensor.shape, generator=g))


def _assert_same_state(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


CONFIGS = [
    # (C, num_classes, layers, data_mode, affine, imagenet)
    pytest.param(4, 10, 5, "SimCLR", False, False, id="cifar-simclr"),
    pytest.param(4, 10, 5, "supervised", True, False, id="cifar-supervised-affine"),
    pytest.param(6, 100, 4, "SimCLR", True, False, id="cifar-simclr-affine-L4"),
    pytest.param(4, 10, 3, "supervised", False, False, id="cifar-supervised-L3"),
    pytest.param(8, 1000, 5, "SimCLR", False, True, id="imagenet-simclr"),
    pytest.param(8, 200, 4, "supervised", True, True, id="imagenet-supervised-affine"),
]


# ---- (a) state-dict layout and strict loading, both ways ----------------------------------------------------

@pytest.mark.parametrize(("C", "num_classes", "layers", "data_mode", "affine", "imagenet"), CONFIGS)
def test_state_dict_layout_equals_reference(ref, C, num_classes, layers, data_mode, affine, imagenet) -> None:
    theirs = _reference_net(ref, C, num_classes, layers, data_mode, affine, imagenet).state_dict()
    ours = SearchNetwork(C, num_classes, layers, data_mode, affine, imagenet=imagenet).state_dict()
    assert list(ours) == list(theirs)
    assert [tuple(v.shape) for v in ours.values()] == [tuple(v.shape) for v in theirs.values()]
    assert [v.dtype for v in ours.values()] == [v.dtype for v in theirs.values()]


@pytest.mark.parametrize(("C", "num_classes", "layers", "data_mode", "affine", "imagenet"), CONFIGS)
def test_state_dicts_load_both_ways_strictly(ref, C, num_classes, layers, data_mode, affine, imagenet) -> None:
    theirs = _reference_net(ref, C, num_classes, layers, data_mode, affine, imagenet)
    _randomize(theirs, seed=1)
    ours = SearchNetwork(C, num_classes, layers, data_mode, affine, imagenet=imagenet)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    _assert_same_state(ours.state_dict(), theirs.state_dict())
    alphas = harness.reference_alphas(theirs)
    assert torch.equal(ours.arch_alpha.detach(), alphas)

    _randomize(ours, seed=2)
    back = _reference_net(ref, C, num_classes, layers, data_mode, affine, imagenet)
    back.load_state_dict(ours.state_dict(), strict=True)
    _assert_same_state(back.state_dict(), ours.state_dict())


# ---- (b) InfoNCE -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "dim", "scale"), [(2, 8, 1.0), (8, 128, 1.0), (32, 128, 5.0), (5, 3, 0.1)])
def test_info_nce_equals_reference(ref, n: int, dim: int, scale: float) -> None:
    g = torch.Generator().manual_seed(n * 1000 + dim)
    base = torch.randn(2 * n, dim, generator=g) * scale  # float32, as in training (ours computes in float32)
    mine = base.clone().requires_grad_(True)
    theirs = base.clone().requires_grad_(True)
    loss = info_nce(mine, 0.07)
    ref_loss = torch.nn.CrossEntropyLoss()(*ref.info_nce_loss(theirs))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    loss.backward()
    ref_loss.backward()
    torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-6)
    # the harness's CUDA shim is scoped: nothing stays patched after the call
    assert torch.cuda.is_available() == REAL_CUDA_AVAILABLE
    assert torch.Tensor.cuda is REAL_TENSOR_CUDA


# ---- (c) architecture export --------------------------------------------------------------------------------

@pytest.mark.parametrize(("skip_r_num", "pool_r_num"), [(2, 2), (1, 1), (0, 0), (3, 1)])
def test_derive_architecture_equals_final_prune(ref, one_torch_thread, skip_r_num: int, pool_r_num: int) -> None:
    from sswp_fast.search.export import derive_architecture

    layers = 6
    net = _reference_net(ref, 4, 10, layers, "SimCLR", False, False, skip_r_num, pool_r_num)
    g = torch.Generator().manual_seed(100 * skip_r_num + pool_r_num)
    restricted_differs = 0
    for trial in range(40):
        alpha = torch.stack([random_cell_alpha(g, (trial + c) % ALPHA_KINDS) for c in range(layers)])
        harness.set_reference_alphas(net, alpha)
        for restrict in (False, True):
            expected = net.final_prune(add_restrict=restrict)
            got = derive_architecture(alpha, restrict, skip_r_num, pool_r_num)
            assert got == expected, (trial, restrict, alpha)
        restricted_differs += derive_architecture(alpha, True, skip_r_num, pool_r_num) != derive_architecture(
            alpha, False, skip_r_num, pool_r_num)
    assert restricted_differs > 0  # the restricted pass was exercised


# ---- (d) same weights, same path: same features and weight gradients -----------------------------------------

@pytest.mark.parametrize("imagenet", [False, True], ids=["cifar", "imagenet"])
def test_forward_and_weight_gradients_equal_reference(ref, one_torch_thread, imagenet: bool) -> None:
    layers, C = 4, 8
    theirs = _reference_net(ref, C, 10, layers, "SimCLR", True, imagenet)
    ours = SearchNetwork(C, 10, layers, "SimCLR", True, imagenet=imagenet)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    g = torch.Generator().manual_seed(7)
    pairs = torch.stack([torch.randperm(7, generator=g)[:2] for _ in range(layers * 14)]).view(layers, 14, 2)
    for c, row in enumerate(harness.reference_edges(theirs)):
        for e, edge in enumerate(row):
            a, b = int(pairs[c, e, 0]), int(pairs[c, e, 1])
            edge.active_index, edge.inactive_index = [a], [b]
            with torch.no_grad():
                edge.binary_gates.zero_()
                edge.binary_gates[a] = 1.0
    ours.train()
    theirs.train()
    size = 64 if imagenet else 16
    x = torch.randn(8, 3, size, size, generator=g)
    out = ours(x, ExecutionPlan(pairs[..., 0].tolist()))
    ref_out = theirs(x)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    loss = info_nce(out)
    ref_loss = torch.nn.CrossEntropyLoss()(*ref.info_nce_loss(ref_out))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    loss.backward()
    ref_loss.backward()
    theirs_params = dict(theirs.named_parameters())
    checked = 0
    for name, p in ours.named_parameters():
        if name == "arch_alpha":
            continue
        q = theirs_params[name]
        if p.grad is None:  # ops off the path: the reference gives them no gradient either
            assert q.grad is None or not q.grad.any(), name
            continue
        # summation order differs in the backward, so compare against the tensor's scale, not elementwise
        assert (p.grad - q.grad).abs().max() <= 1e-5 * q.grad.abs().max() + 1e-7, name
        checked += 1
    assert checked > 20


# ---- (e) weight steps train the same non-candidate weights as the reference, frozen cells included ----------

def _shared_weights_with_grad(named_parameters) -> set[str]:
    """Names of the stem / preprocessing / head parameters (not candidate ops, not arch) that got a gradient."""
    return {name for name, p in named_parameters
            if "_ops." not in name and "alpha" not in name and "binary_gates" not in name
            and p.grad is not None and bool(p.grad.any())}


@pytest.mark.parametrize("quirks", [False, True], ids=["ours", "quirks"])
def test_weight_step_trains_stem_and_frozen_cells_like_reference(ref, one_torch_thread, quirks: bool) -> None:
    from sswp_fast import Batch, SearchConfig, SearchEngine

    layers, C, batch = 4, 4, 4
    g = torch.Generator().manual_seed(3)
    x1, x2 = torch.randn(2, batch, 3, 16, 16, generator=g)
    stepper = harness.ReferenceStepper(layers, C, batch)
    stepper.weight_step((x1, x2))  # the reference can only freeze after a backward (binary_gates.grad)
    stepper.freeze([0, 1])  # forward pruning freezes cell 0 first
    stepper.weight_step((x1, x2))
    expected = _shared_weights_with_grad(stepper.model.named_parameters())
    assert "stem.0.weight" in expected and "cells.0.preprocess1.op.1.weight" in expected

    config = SearchConfig(layers=layers, init_channels=C, batch_size=batch, dataset="cifar10",
                          reference_quirks=quirks).resolved()
    engine = SearchEngine(config, num_classes=10)
    engine.freeze([0, 1])
    engine.weight_step(Batch(views=(x1, x2)), warmup=False, skip_drop_prob=0.2, pool_drop_prob=0.0)
    assert _shared_weights_with_grad(engine.net.named_parameters()) == expected
