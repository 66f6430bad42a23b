"""Super-network structure and state-dict compatibility with the reference (spec §3-§4, §8.2)."""

from __future__ import annotations

import pytest
import torch

from sswp_fast.search.space import CANDIDATES, FactorizedReduce, Identity, build_op
from sswp_fast.search.supernet import NODE_EDGES, ExecutionPlan, SearchNetwork

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def bn_keys(prefix: str, affine: bool) -> list[str]:
    return ([f"{prefix}.weight", f"{prefix}.bias"] if affine else []) + [f"{prefix}.{b}" for b in BN_BUFFERS]


def spec_keys(layers: int, data_mode: str, affine: bool) -> set[str]:
    """The reference's search-network keys, written from the table in spec §8.2 (CIFAR stem)."""
    keys = {"stem.0.weight", *bn_keys("stem.1", True)}
    reductions = {layers // 3, 2 * layers // 3}
    for i in range(layers):
        reduction_prev = i - 1 in reductions
        if reduction_prev:
            keys |= {f"cells.{i}.preprocess0.conv_1.weight", f"cells.{i}.preprocess0.conv_2.weight",
                     *bn_keys(f"cells.{i}.preprocess0.bn", affine)}
        else:
            keys |= {f"cells.{i}.preprocess0.op.1.weight", *bn_keys(f"cells.{i}.preprocess0.op.2", affine)}
        keys |= {f"cells.{i}.preprocess1.op.1.weight", *bn_keys(f"cells.{i}.preprocess1.op.2", affine)}
        e = 0
        for node in range(4):
            for j in range(node + 2):
                p = f"cells.{i}.edges.{e}"
                keys |= {f"{p}.alpha", f"{p}.binary_gates"}
                if i in reductions and j < 2:
                    keys |= {f"{p}._ops.0.conv_1.weight", f"{p}._ops.0.conv_2.weight",
                             *bn_keys(f"{p}._ops.0.bn", affine)}
                for pool in (1, 2):
                    keys |= set(bn_keys(f"{p}._ops.{pool}.1", False))
                for sep in (3, 4):
                    keys |= {f"{p}._ops.{sep}.op.{k}.weight" for k in (1, 2, 5, 6)}
                    keys |= {*bn_keys(f"{p}._ops.{sep}.op.3", affine), *bn_keys(f"{p}._ops.{sep}.op.7", affine)}
                for dil in (5, 6):
                    keys |= {f"{p}._ops.{dil}.op.1.weight", f"{p}._ops.{dil}.op.2.weight",
                             *bn_keys(f"{p}._ops.{dil}.op.3", affine)}
                e += 1
    if data_mode == "SimCLR":
        keys |= {"classifier.0.weight", "classifier.0.bias", "classifier.2.weight", "classifier.2.bias"}
    else:
        keys |= {"classifier.weight", "classifier.bias"}
    return keys


@pytest.mark.parametrize("data_mode", ["SimCLR", "supervised"])
@pytest.mark.parametrize("affine", [False, True])
def test_state_dict_keys_equal_the_reference_layout(data_mode: str, affine: bool) -> None:
    net = SearchNetwork(4, 10, 5, data_mode, affine)
    assert set(net.state_dict()) == spec_keys(5, data_mode, affine)


def test_state_dict_shapes_and_strict_round_trip() -> None:
    net = SearchNetwork(4, 10, 5)
    with torch.no_grad():
        net.arch_alpha.normal_()
        net.arch_gates.bernoulli_(0.5)
    state = net.state_dict()
    assert state["cells.2.edges.13.alpha"].shape == (7,)
    assert state["cells.2.edges.13.binary_gates"].shape == (7,)
    assert torch.equal(state["cells.3.edges.5.alpha"], net.arch_alpha[3, 5])
    assert state["classifier.0.weight"].shape == (4 * 16, 4 * 16)
    assert state["classifier.2.weight"].shape == (128, 4 * 16)
    other = SearchNetwork(4, 10, 5)
    other.load_state_dict(state, strict=True)
    assert torch.equal(other.arch_alpha, net.arch_alpha)
    assert torch.equal(other.arch_gates, net.arch_gates)
    # the edge's alpha / binary_gates keys precede its ops, as in the reference
    keys = list(state)
    assert keys.index("cells.0.edges.0.alpha") < keys.index("cells.0.edges.0._ops.1.1.running_mean")


def test_mismatched_configuration_fails_strict_load() -> None:
    state = SearchNetwork(4, 10, 5).state_dict()
    with pytest.raises(RuntimeError):
        SearchNetwork(6, 10, 5).load_state_dict(state, strict=True)
    with pytest.raises(RuntimeError):
        SearchNetwork(4, 10, 4).load_state_dict(state, strict=True)


def test_imagenet_stem_keys() -> None:
    keys = set(SearchNetwork(8, 10, 5, imagenet=True).state_dict())
    assert {"stem0.0.weight", "stem0.1.weight", "stem0.3.weight", "stem0.4.running_var",
            "stem1.1.weight", "stem1.2.bias"} <= keys
    assert not any(k.startswith("stem.") for k in keys)
    assert "cells.0.preprocess0.conv_1.weight" in keys  # reduction_prev starts True


def test_macro_structure_default_cifar() -> None:
    net = SearchNetwork(36, 10, 20)
    reductions = [i for i, c in enumerate(net.cells) if c.reduction]
    assert reductions == [6, 13]
    assert net.feature_dim == 576
    widths = [c.preprocess1.op[1].out_channels for c in net.cells]
    assert widths == [36] * 6 + [72] * 7 + [144] * 7
    assert sum(len(c.edges) for c in net.cells) == 280


def test_candidate_order_and_stride_two_skip() -> None:
    assert CANDIDATES == ("skip_connect", "max_pool_3x3", "avg_pool_3x3", "sep_conv_3x3", "sep_conv_5x5",
                          "dil_conv_3x3", "dil_conv_5x5")
    assert isinstance(build_op("skip_connect", 4, 1, False), Identity)
    assert isinstance(build_op("skip_connect", 4, 2, False), FactorizedReduce)
    for k, name in enumerate(CANDIDATES):
        for stride in (1, 2):
            op = build_op(name, 4, stride, False)
            y = op(torch.randn(2, 4, 8, 8))
            assert y.shape == (2, 4, 8 // stride, 8 // stride), (k, name, stride)


def test_forward_runs_the_planned_op_and_node_wiring() -> None:
    net = SearchNetwork(4, 10, 3, "supervised")
    assert [len(n) for n in NODE_EDGES] == [2, 3, 4, 5]
    plan = ExecutionPlan([[3] * 14 for _ in range(3)])
    out = net(torch.randn(2, 3, 8, 8), plan)
    assert out.shape == (2, 10)


@pytest.mark.parametrize("name", CANDIDATES)
@pytest.mark.parametrize("stride", [1, 2])
def test_channels_last_ops_equal_float64_contiguous(name: str, stride: int) -> None:
    """The CPU layout the engine uses by default computes the same op, at sizes up to 64x64 (a stride-2 1x1
    convolution on channels-last inputs corrupted the heap there before FactorizedReduce sampled first)."""
    for channels, size in ((4, 64), (6, 10), (16, 32)):
        reference = build_op(name, channels, stride, False).double()
        op = build_op(name, channels, stride, False).to(memory_format=torch.channels_last)
        op.load_state_dict(reference.state_dict())
        x = torch.randn(3, channels, size, size)
        x_cl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
        y = op(x_cl)
        w = torch.randn_like(y)
        (y * w).sum().backward()
        x64 = x.double().requires_grad_()
        y64 = reference(x64)
        (y64 * w.double()).sum().backward()
        torch.testing.assert_close(y.double(), y64, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(x_cl.grad.double(), x64.grad, rtol=1e-3, atol=1e-3)
