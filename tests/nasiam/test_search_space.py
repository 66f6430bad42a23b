"""NASiam MLP search space: op order and reference module layouts, the fused MixedOp against the per-candidate sum
(values, every gradient, running statistics; train and eval),
MoCo's eps fix, HeadSearchCell, Cell and the gene parse."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from sswp_fast.errors import ConfigError
from sswp_fast.nasiam import search_space
from sswp_fast.nasiam.search_space import (
    OPS,
    Cell,
    HeadSearchCell,
    MixedOp,
    build_op,
    derive_genes,
    layer_dims,
)

FRAMEWORKS = ("simsiam", "moco", "simclr")
DIMS = ((16, 8), (8, 8), (8, 16))  # in > out, in == out, in < out
TOL = {"atol": 1e-10, "rtol": 1e-10}
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def bn_keys(prefix: str) -> set[str]:
    return {f"{prefix}{key}" for key in BN_KEYS}


def test_op_order_per_framework() -> None:
    siam = ("maxpool_3x3", "avgpool_3x3", "identity", "linear_relu", "linear_silu", "linear_hardswish", "linear_elu")
    assert OPS["simsiam"] == siam
    assert OPS["moco"] == siam
    assert OPS["simclr"] == siam[:4] + ("linear_hardswish", "linear_silu", "linear_elu")
    assert MixedOp(8, 8, "simclr").op_names == OPS["simclr"]


@pytest.mark.parametrize(("name", "in_dim", "out_dim", "framework", "keys"), [
    ("linear_relu", 16, 8, "simsiam", {"0.weight"} | bn_keys("1.")),
    ("linear_elu", 8, 8, "simclr", {"0.weight"} | bn_keys("1.")),
    ("linear_relu", 8, 8, "moco", {"0.weight", "0.bias"} | bn_keys("1.")),
    ("linear_silu", 8, 16, "simsiam", {"weight", "bias"}),
    ("maxpool_3x3", 16, 8, "simsiam", {"0.weight"} | bn_keys("1.") | bn_keys("3.1.")),
    ("avgpool_3x3", 8, 8, "moco", bn_keys("1.")),
    ("avgpool_3x3", 8, 16, "simclr", {"0.weight", "0.bias"} | bn_keys("1.1.")),
    ("identity", 16, 8, "simsiam", {"0.weight"} | bn_keys("1.")),
    ("identity", 8, 8, "simsiam", set()),
    ("identity", 8, 16, "moco", {"0.weight", "0.bias"}),
])
def test_built_op_keys_match_reference_layout(name, in_dim, out_dim, framework, keys) -> None:
    assert set(build_op(name, in_dim, out_dim, framework).state_dict()) == keys


def test_mixed_op_keys_and_unknown_names() -> None:
    keys = set(MixedOp(16, 8, "simsiam").state_dict())
    assert {"_ops.0.0.weight", "_ops.0.3.1.running_var", "_ops.3.0.weight", "_ops.6.1.num_batches_tracked"} <= keys
    with pytest.raises(ConfigError, match="framework"):
        MixedOp(8, 8, "byol")
    with pytest.raises(ConfigError, match="op"):
        build_op("linear_mish", 8, 8, "moco")


@pytest.mark.parametrize("pool", ["maxpool_3x3", "avgpool_3x3"])
def test_pools_act_along_features_and_avg_counts_padding(pool) -> None:
    op = build_op(pool, 6, 6, "simsiam").double().eval()  # BN at its initial state: x / sqrt(1 + eps)
    x = torch.randn(4, 6, dtype=torch.float64)
    padded = torch.nn.functional.pad(x, (1, 1), value=float("-inf") if pool == "maxpool_3x3" else 0.0)
    windows = torch.stack([padded[:, :-2], padded[:, 1:-1], padded[:, 2:]])
    pooled = windows.max(0).values if pool == "maxpool_3x3" else windows.sum(0) / 3
    torch.testing.assert_close(op(x), pooled / (1 + 1e-5) ** 0.5, **TOL)


def test_moco_bn_eps_fixed_by_default_and_bug_on_request() -> None:
    assert build_op("linear_relu", 8, 8, "moco")[1].eps == 1e-5
    assert build_op("linear_elu", 16, 8, "moco")[1].eps == 1e-5
    bugged = MixedOp(8, 8, "moco", moco_bn_eps_bug=True)
    assert [bugged._ops[k][1].eps for k in range(3, 7)] == [8.0] * 4
    assert bugged._ops[0][1].eps == 1e-5  # the pools' own BN never had the bug
    assert build_op("linear_relu", 8, 8, "simsiam", moco_bn_eps_bug=True)[1].eps == 1e-5  # MoCo only
    with pytest.raises(ConfigError, match="in_dim == out_dim"):
        build_op("linear_relu", 16, 8, "moco", moco_bn_eps_bug=True)


def randomise(module: torch.nn.Module) -> None:
    """Non-trivial BN affine parameters and running statistics (the defaults would hide slice mix-ups)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked.fill_(3)


def run_pair(fused: MixedOp, reference: MixedOp, x: torch.Tensor, alphas: torch.Tensor, grad_out: torch.Tensor):
    """Forward and backward through both paths from cloned inputs; returns (outputs, x grads, alpha grads)."""
    results = []
    for fn in (fused.forward, reference.reference_forward):
        xi = x.clone().requires_grad_()
        ai = alphas.clone().requires_grad_()
        out = fn(xi, torch.softmax(ai, 0))
        (out * grad_out).sum().backward()
        results.append((out.detach(), xi.grad, ai.grad))
    return results


def assert_fused_matches(fused: MixedOp, reference: MixedOp, batch: int = 6, steps: int = 2) -> None:
    for _ in range(steps):
        x = torch.randn(batch, fused.in_dim, dtype=torch.float64)
        alphas = torch.randn(7, dtype=torch.float64)
        grad_out = torch.randn(batch, fused.out_dim, dtype=torch.float64)
        fused.zero_grad(set_to_none=True)
        reference.zero_grad(set_to_none=True)
        (out, gx, ga), (ref_out, ref_gx, ref_ga) = run_pair(fused, reference, x, alphas, grad_out)
        torch.testing.assert_close(out, ref_out, **TOL)
        torch.testing.assert_close(gx, ref_gx, **TOL)
        torch.testing.assert_close(ga, ref_ga, **TOL)
        ref_params = dict(reference.named_parameters())
        for name, p in fused.named_parameters():  # each op's parameters on their own: a slice mix-up shows here
            assert p.grad is not None and ref_params[name].grad is not None, name
            torch.testing.assert_close(p.grad, ref_params[name].grad, **TOL, msg=lambda m, name=name: f"{name}: {m}")
        ref_state = reference.state_dict()
        for name, value in fused.state_dict().items():
            torch.testing.assert_close(value, ref_state[name], **TOL, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize(("in_dim", "out_dim"), DIMS)
@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("concat_weights", [False, True], ids=["cpu-linears", "cuda-linears"])
def test_fused_mixed_op_equals_per_candidate_sum(framework, in_dim, out_dim, mode, concat_weights,
                                                 monkeypatch) -> None:
    """Both ways of :func:`stacked_linear` (one multiply per Linear: CPU default; one concatenated: CUDA)."""
    monkeypatch.setattr(search_space, "stacked_linear",
                        functools.partial(search_space.stacked_linear, concat_weights=concat_weights))
    fused = MixedOp(in_dim, out_dim, framework).double()
    randomise(fused)
    reference = copy.deepcopy(fused)
    fused.train(mode == "train")
    reference.train(mode == "train")
    before = {k: v.clone() for k, v in fused.state_dict().items()}
    assert_fused_matches(fused, reference)
    changed = [k for k, v in fused.state_dict().items() if not torch.equal(v, before[k])]
    tracked = [k for k in before if k.endswith("num_batches_tracked")]
    if mode == "train":
        assert all(fused.state_dict()[k].item() == 5 for k in tracked)  # 3 + two training forwards, each BN
        assert any(k.endswith("running_mean") for k in changed)
    else:
        assert not changed


def test_stacked_linear_both_ways_equal_the_separate_linears() -> None:
    linears = [torch.nn.Linear(8, 4, bias=bias).double() for bias in (False, True, False)]
    x = torch.randn(5, 8, dtype=torch.float64)
    grad_out = torch.randn(5, 12, dtype=torch.float64)
    expected = torch.cat([lin(x) for lin in linears], 1)
    grads = torch.autograd.grad((expected * grad_out).sum(), [p for lin in linears for p in lin.parameters()])
    for concat in (False, True):
        out = search_space.stacked_linear(x, linears, concat_weights=concat)
        torch.testing.assert_close(out, expected, **TOL)
        got = torch.autograd.grad((out * grad_out).sum(), [p for lin in linears for p in lin.parameters()])
        for g, ref in zip(got, grads, strict=True):
            torch.testing.assert_close(g, ref, **TOL)


def test_fused_mixed_op_with_moco_eps_bug() -> None:
    """Different eps in one stage (pool BNs 1e-5, linear BNs 8): the batch norm runs split by settings."""
    fused = MixedOp(8, 8, "moco", moco_bn_eps_bug=True).double()
    randomise(fused)
    assert_fused_matches(fused, copy.deepcopy(fused))


def test_fused_mixed_op_with_cumulative_bn_averages() -> None:
    """``momentum=None`` BNs (cumulative averages) take the per-module batch norm path, with the same result."""
    fused = MixedOp(16, 8, "simclr").double()
    randomise(fused)
    for m in fused.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.momentum = None
    assert_fused_matches(fused, copy.deepcopy(fused))


def test_equivalence_check_catches_a_slice_order_bug(monkeypatch) -> None:
    """The comparison above fails when the fused path applies the activations to the wrong slices."""
    fused = MixedOp(16, 8, "simsiam").double()
    reference = copy.deepcopy(fused)
    original = search_space.activate_and_mix
    monkeypatch.setattr(search_space, "activate_and_mix",
                        lambda blocks, acts, weights: original(blocks, tuple(reversed(acts)), weights))
    with pytest.raises(AssertionError):
        assert_fused_matches(fused, reference, steps=1)


def test_layer_dims_follow_the_reference_rule() -> None:
    assert layer_dims(8, 3, hidden_dim=16, out_dim=4) == [(8, 16), (16, 16), (16, 4)]
    assert layer_dims(8, 2) == [(8, 8), (8, 8)]
    assert layer_dims(8, 1, hidden_dim=16, out_dim=4) == [(8, 16)]  # reference: layer 0's rule wins
    with pytest.raises(ConfigError):
        layer_dims(8, 0)


def test_search_cell_alphas_are_a_parameter_in_the_state_dict() -> None:
    cell = HeadSearchCell(8, 3, "simsiam", hidden_dim=16, out_dim=4)
    assert isinstance(cell.alphas, torch.nn.Parameter)
    assert torch.equal(cell.state_dict()["alphas"], torch.zeros(3, 7))
    assert cell.arch_parameters() == [cell.alphas]
    weights = cell.weight_parameters()
    assert all(p is not cell.alphas for p in weights)
    assert len(weights) + 1 == len(list(cell.parameters()))
    assert [(layer.in_dim, layer.out_dim) for layer in cell._ops] == [(8, 16), (16, 16), (16, 4)]
    assert {"_ops.0._ops.3.weight", "_ops.1._ops.3.0.weight", "_ops.2._ops.0.3.1.bias"} <= set(cell.state_dict())


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_search_cell_equals_chained_reference(framework) -> None:
    cell = HeadSearchCell(8, 3, framework, hidden_dim=16, out_dim=4).double()
    randomise(cell)
    with torch.no_grad():
        cell.alphas.normal_()
    reference = copy.deepcopy(cell)
    x = torch.randn(6, 8, dtype=torch.float64)
    grad_out = torch.randn(6, 4, dtype=torch.float64)
    out = cell(x)
    (out * grad_out).sum().backward()
    h = x
    weights = torch.softmax(reference.alphas, dim=1)
    for i, layer in enumerate(reference._ops):
        h = layer.reference_forward(h, weights[i])
    (h * grad_out).sum().backward()
    torch.testing.assert_close(out, h, **TOL)
    torch.testing.assert_close(cell.alphas.grad, reference.alphas.grad, **TOL)
    torch.testing.assert_close(cell._ops[1]._ops[5][0].weight.grad, reference._ops[1]._ops[5][0].weight.grad, **TOL)
    for name, value in cell.state_dict().items():
        torch.testing.assert_close(value, reference.state_dict()[name], **TOL)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_derive_genes_argmax_with_ties_to_the_highest_index(framework) -> None:
    names = OPS[framework]
    alphas = torch.zeros(4, 7)
    alphas[1, 0] = alphas[1, 3] = 1.0  # tie between maxpool and linear_relu
    alphas[2, 4] = 2.0
    alphas[3, 1] = 0.5
    assert derive_genes(alphas, framework) == [[names[6]], [names[3]], [names[4]], [names[1]]]
    assert derive_genes(torch.zeros(2, 7), framework) == [["linear_elu"], ["linear_elu"]]
    with pytest.raises(ValueError, match="shape"):
        derive_genes(torch.zeros(2, 6), framework)


def test_cell_keys_and_forward_equal_the_chosen_ops() -> None:
    genes = [["linear_silu"], ["avgpool_3x3", "identity"], ["identity"], ["maxpool_3x3"]]
    cell = Cell(16, genes, "simsiam", hidden_dim=8, out_dim=12)
    keys = set(cell.state_dict())
    assert {"_ops.0.0.0.weight", "_ops.0.0.1.running_mean", "_ops.1.0.1.weight", "_ops.3.0.0.bias",
            "_ops.3.0.1.1.running_var"} <= keys
    assert all(k.startswith(("_ops.0.0.", "_ops.1.0.", "_ops.3.0.")) for k in keys)  # identity 8→8 has no state
    assert [type(layer[0]).__name__ for layer in cell._ops] == ["Sequential", "Sequential", "Identity", "Sequential"]
    cell = cell.double()
    randomise(cell)
    x = torch.randn(6, 16, dtype=torch.float64)
    h = x
    for layer in copy.deepcopy(cell)._ops:
        h = layer[0](h)
    torch.testing.assert_close(cell(x), h, **TOL)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_cell_from_derived_genes_equals_search_cell_with_one_hot_alphas(mode) -> None:
    search = HeadSearchCell(8, 3, "moco").double()
    randomise(search)
    chosen = [5, 1, 3]
    with torch.no_grad():
        search.alphas.fill_(-1e3)  # softmax is exactly one-hot in float64
        search.alphas[torch.arange(3), chosen] = 1e3
    genes = derive_genes(search.alphas, "moco")
    assert genes == [[OPS["moco"][k]] for k in chosen]
    cell = Cell(8, genes, "moco").double()
    for i, k in enumerate(chosen):
        cell._ops[i][0].load_state_dict(search._ops[i]._ops[k].state_dict())
    search.train(mode == "train")
    cell.train(mode == "train")
    x = torch.randn(6, 8, dtype=torch.float64)
    torch.testing.assert_close(cell(x), search(x), **TOL)
