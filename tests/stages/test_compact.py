"""Compact networks, built-in genotypes and weight preservation from a search checkpoint (spec §9, §10, §13)."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from sswp_fast.errors import CheckpointError, ConfigError
from sswp_fast.search.export import format_arch
from sswp_fast.search.space import CANDIDATES, FactorizedReduce, Identity
from sswp_fast.search.supernet import NODE_EDGES, SearchNetwork
from sswp_fast.stages.compact import AuxiliaryHead, AuxPool, CompactCell, CompactNetwork, drop_path, load_search_weights
from sswp_fast.stages.genotypes import BUILTIN_NAMES, builtin_architecture

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The published genotypes (DARTS-V2: Liu et al. 2019; P-DARTS: Chen et al. 2019), written out independently.
DARTS_NORMAL = [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
                ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)]
DARTS_REDUCE = [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
                ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)]
PDARTS_NORMAL = [("skip_connect", 0), ("dil_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
                 ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 0), ("dil_conv_5x5", 4)]
PDARTS_REDUCE = [("avg_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_3x3", 0), ("dil_conv_5x5", 2),
                 ("max_pool_3x3", 0), ("dil_conv_3x3", 1), ("dil_conv_3x3", 1), ("dil_conv_5x5", 3)]
PUBLISHED = {"darts": (DARTS_NORMAL, DARTS_REDUCE), "pdarts": (PDARTS_NORMAL, PDARTS_REDUCE)}


# ---- built-in genotypes -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["darts", "pdarts"])
def test_builtin_architectures_are_valid_20_cell_lists_with_reduction_cells_6_and_13(name: str) -> None:
    arch = builtin_architecture(name)
    assert len(arch) == 20
    for cell in arch:
        assert len(cell) == 8
        for k, (op, index) in enumerate(cell):
            assert op in CANDIDATES
            assert isinstance(index, int) and 0 <= index <= k // 2 + 1
    normal, reduce = PUBLISHED[name]
    assert [i for i, cell in enumerate(arch) if cell != normal] == [6, 13]
    assert arch[6] == arch[13] == reduce
    assert format_arch(arch) == str(arch)  # the net.config form round-trips


def test_builtin_architecture_other_depths_and_fresh_lists() -> None:
    arch = builtin_architecture("pdarts", layers=5)
    assert [i for i, cell in enumerate(arch) if cell == PDARTS_REDUCE] == [1, 3]
    arch[0][0] = ("max_pool_3x3", 1)
    assert builtin_architecture("pdarts", layers=5)[0] == PDARTS_NORMAL
    assert BUILTIN_NAMES == ("darts", "pdarts")


def test_unknown_builtin_name_is_a_one_line_config_error_naming_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        builtin_architecture("enas")
    message = str(info.value)
    assert "\n" not in message
    assert "'enas'" in message and "darts" in message and "pdarts" in message and "--path" in message
    with pytest.raises(ConfigError):
        builtin_architecture("darts", layers=0)


# ---- shapes and key layout ----------------------------------------------------------------------------

@pytest.mark.parametrize("size", [16, 32])
@pytest.mark.parametrize("name", ["darts", "pdarts"])
def test_cifar_compact_network_shapes_and_aux_only_in_training(name: str, size: int) -> None:
    net = CompactNetwork(4, 10, builtin_architecture(name, layers=5))
    x = torch.randn(4, 3, size, size)
    logits, aux = net(x)
    assert logits.shape == (4, 10) and aux is not None and aux.shape == (4, 10)
    net.eval()
    logits, aux = net(x)
    assert logits.shape == (4, 10) and aux is None
    assert net.features(x).shape == (4, net.feature_dim) == (4, 4 * 4 * 4)


def test_cifar_state_dict_keys_follow_the_reference_layout() -> None:
    net = CompactNetwork(4, 10, builtin_architecture("darts", layers=5))
    keys = set(net.state_dict())
    for key in ("stem.0.weight", "stem.1.running_var",
                "cells.0.preprocess0.op.1.weight", "cells.0.preprocess1.op.2.weight",
                "cells.2.preprocess0.conv_1.weight", "cells.2.preprocess0.bn.weight",  # after reduction cell 1
                "cells.0._ops.0.op.1.weight", "cells.0._ops.0.op.7.running_mean",  # sep_conv_3x3
                "cells.0._ops.7.op.3.weight",  # dil_conv_3x3
                "cells.1._ops.0.1.running_mean",  # max pool + BN
                "aux_head.features.2.weight", "aux_head.features.3.running_mean", "aux_head.features.5.weight",
                "aux_head.features.6.bias", "aux_head.classifier.weight", "classifier.weight", "classifier.bias"):
        assert key in keys, key
    assert not any(k.startswith("cells.1._ops.2.") for k in keys)  # ("skip_connect", 2): Identity, no keys
    assert "cells.1._ops.1.0.running_mean" not in keys  # pools have no `.0.*` keys
    assert not any(k.startswith("global_pooling") for k in keys)
    heads = {k for k, _ in net.named_parameters() if k.startswith(("classifier.", "aux_head."))}
    assert set(net.head_parameter_names()) == heads and heads


def test_reduction_skip_is_factorized_reduce_and_normal_skip_is_identity() -> None:
    arch = builtin_architecture("darts", layers=5)
    arch[1][0] = ("skip_connect", 0)
    net = CompactNetwork(4, 10, arch)
    assert isinstance(net.cells[1]._ops[0], FactorizedReduce)
    assert isinstance(net.cells[1]._ops[2], Identity)  # ("skip_connect", 2) reads a node: stride 1
    assert isinstance(net.cells[0]._ops[5], Identity)
    assert "cells.1._ops.0.conv_2.weight" in net.state_dict()


def test_tiny_imagenet_aux_head_variant() -> None:
    net = CompactNetwork(4, 200, builtin_architecture("pdarts", layers=5))
    keys = set(net.state_dict())
    assert {"aux_head.features.0.weight", "aux_head.features.3.weight", "aux_head.features.6.running_mean",
            "aux_head.features.8.weight", "aux_head.features.9.weight"} <= keys
    logits, aux = net(torch.randn(4, 3, 16, 16))
    assert logits.shape == aux.shape == (4, 200)


def test_imagenet_compact_network_shapes_and_keys() -> None:
    net = CompactNetwork(8, 10, builtin_architecture("darts", layers=5), imagenet=True)
    keys = set(net.state_dict())
    assert {"stem0.0.weight", "stem0.1.weight", "stem0.3.weight", "stem0.4.running_var", "stem1.1.weight",
            "stem1.2.bias", "cells.0.preprocess0.conv_1.weight", "auxiliary_head.features.2.weight",
            "auxiliary_head.classifier.weight", "classifier.weight"} <= keys
    assert not any(k.startswith(("stem.", "aux_head.")) for k in keys)
    x = torch.randn(2, 3, 64, 64)
    logits, aux = net(x)
    assert logits.shape == aux.shape == (2, 10)
    net.eval()
    assert net(x)[1] is None
    assert net.features(x).shape == (2, net.feature_dim) == (2, 4 * 4 * 8)


def test_aux_pool_is_the_reference_pool_at_the_reference_sizes() -> None:
    x8, x7 = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 7, 7)
    ref3 = nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False)
    ref2 = nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False)
    assert torch.equal(AuxPool(5, 3)(x8), ref3(x8))
    assert torch.equal(AuxPool(5, 2)(x7), ref2(x7))
    assert torch.equal(AuxPool(5, 2)(x8), ref2(x8))
    assert AuxPool(5, 3)(torch.randn(2, 3, 4, 4)).shape == (2, 3, 2, 2)


@pytest.mark.parametrize("variant", ["cifar", "tiny", "imagenet"])
def test_aux_head_leaves_the_cell_output_it_reads_unchanged(variant: str) -> None:
    x = torch.randn(2, 8, 8, 8)
    original = x.clone()
    assert AuxiliaryHead(8, 10, variant)(x).shape == (2, 10)
    assert torch.equal(x, original)


def test_projection_head_has_no_aux_head() -> None:
    net = CompactNetwork(4, 10, builtin_architecture("darts", layers=5), auxiliary=True, head="projection")
    keys = set(net.state_dict())
    assert {"classifier.0.weight", "classifier.0.bias", "classifier.2.weight", "classifier.2.bias"} <= keys
    assert not any(k.startswith("aux") for k in keys)
    out, aux = net(torch.randn(4, 3, 16, 16))
    assert out.shape == (4, 128) and aux is None


def test_invalid_architecture_or_head_is_a_config_error() -> None:
    arch = builtin_architecture("darts", layers=3)
    arch[0][0] = ("sep_conv_3x3", 2)  # node 0 reads s0 or s1 only
    with pytest.raises(ConfigError, match="cell 0 entry 0"):
        CompactNetwork(4, 10, arch)
    with pytest.raises(ConfigError, match="projection"):
        CompactNetwork(4, 10, builtin_architecture("darts", layers=3), head="linear")


# ---- weight preservation ------------------------------------------------------------------------------

def randomise_(net: nn.Module, seed: int, bn_affine: bool = True) -> None:
    """Random weights and BN running statistics, so that any tensor copied from the wrong place shows."""
    g = torch.Generator().manual_seed(seed)

    def rand(t: torch.Tensor, scale: float, shift: float = 0.0) -> torch.Tensor:
        return torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype) * scale + shift

    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(rand(module.running_mean, 0.1))
                module.running_var.copy_(rand(module.running_var, 0.1, 1.0).abs())
                module.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (), generator=g)))
                if module.affine and bn_affine:
                    module.weight.copy_(rand(module.weight, 0.1, 1.0))
                    module.bias.copy_(rand(module.bias, 0.1))
            else:
                for p in module.parameters(recurse=False):
                    p.copy_(rand(p, 1.0 / max(1, p[0].numel()) ** 0.5))


def random_arch(layers: int, seed: int) -> list[list[tuple[str, int]]]:
    """A random valid architecture with, forced in: a stride-1 skip, both pools, a reduction-cell skip on s0
    (a FactorizedReduce), strided pools and convs, and a node reading the same input twice."""
    rng = random.Random(seed)
    arch = [[(rng.choice(CANDIDATES), rng.randrange(k // 2 + 2)) for k in range(8)] for _ in range(layers)]
    arch[0][0:4] = [("skip_connect", 0), ("sep_conv_5x5", 1), ("max_pool_3x3", 2), ("avg_pool_3x3", 2)]
    arch[1][0:4] = [("skip_connect", 0), ("avg_pool_3x3", 1), ("skip_connect", 2), ("dil_conv_5x5", 1)]
    arch[2 * layers // 3][4:8] = [("max_pool_3x3", 0), ("max_pool_3x3", 0), ("skip_connect", 1), ("sep_conv_3x3", 4)]
    return arch


def reference_features(search: SearchNetwork, arch: list[list[tuple[str, int]]], x: torch.Tensor) -> torch.Tensor:
    """The search network restricted to ``arch``, written out directly from its modules."""
    if search.imagenet:
        s0 = search.stem0(x)
        s1 = search.stem1(s0)
    else:
        s0 = s1 = search.stem(x)
    for i, cell in enumerate(search.cells):
        states = [cell.preprocess0(s0), cell.preprocess1(s1)]
        for n in range(4):
            node = torch.zeros(())
            for name, index in arch[i][2 * n:2 * n + 2]:
                node = node + cell.edges[NODE_EDGES[n][index]]._ops[CANDIDATES.index(name)](states[index])
            states.append(node)
        s0, s1 = s1, torch.cat(states[2:], dim=1)
    return s1.mean(dim=(2, 3))


def source_modules(compact: CompactNetwork, search: SearchNetwork,
                   arch: list[list[tuple[str, int]]]) -> list[tuple[str, nn.Module, nn.Module]]:
    """(compact prefix, compact module, search module it must be copied from) for every non-head module."""
    stems = ["stem0", "stem1"] if compact.imagenet else ["stem"]
    pairs = [(s, getattr(compact, s), getattr(search, s)) for s in stems]
    for i, (cc, sc) in enumerate(zip(compact.cells, search.cells, strict=True)):
        pairs += [(f"cells.{i}.preprocess0", cc.preprocess0, sc.preprocess0),
                  (f"cells.{i}.preprocess1", cc.preprocess1, sc.preprocess1)]
        for j, (name, index) in enumerate(arch[i]):
            edge = sc.edges[NODE_EDGES[j // 2][index]]
            pairs.append((f"cells.{i}._ops.{j}", cc._ops[j], edge._ops[CANDIDATES.index(name)]))
    return pairs


ACCEPTANCE = [
    pytest.param("SimCLR", False, True, False, id="simclr-nonaffine-search"),
    pytest.param("SimCLR", True, True, False, id="simclr-affine-search"),
    pytest.param("supervised", False, True, False, id="supervised-nonaffine-search"),
    pytest.param("supervised", True, True, False, id="supervised-affine-search"),
    pytest.param("SimCLR", False, False, False, id="nonaffine-to-nonaffine"),
    pytest.param("SimCLR", False, True, True, id="imagenet-stem"),
]


@pytest.mark.parametrize("data_mode,search_affine,compact_affine,imagenet", ACCEPTANCE)
def test_search_weights_transfer_exactly_and_compute_the_restricted_search_network(
        data_mode: str, search_affine: bool, compact_affine: bool, imagenet: bool) -> None:
    layers, c = 5, 8
    search = SearchNetwork(c, 10, layers, data_mode, affine=search_affine, imagenet=imagenet).double()
    randomise_(search, seed=1)
    arch = random_arch(layers, seed=7)
    compact = CompactNetwork(c, 10, arch, auxiliary=True, affine=compact_affine, imagenet=imagenet).double()
    randomise_(compact, seed=2, bn_affine=False)  # BN affine params of the compact net stay at 1 / 0
    before = {k: v.clone() for k, v in compact.state_dict().items()}
    search_state = search.state_dict()

    report = load_search_weights(compact, search_state)

    after = compact.state_dict()
    covered: set[str] = set()
    fresh_affine: set[str] = set()
    for prefix, c_mod, s_mod in source_modules(compact, search, arch):
        c_state, s_state = c_mod.state_dict(), s_mod.state_dict()
        assert set(s_state) <= set(c_state) or not compact_affine and search_affine
        for key, value in c_state.items():
            covered.add(f"{prefix}.{key}")
            if key in s_state:
                assert torch.equal(value, s_state[key]), f"{prefix}.{key}"
            else:  # only BN affine params a non-affine search lacks
                assert not search_affine and compact_affine and key.endswith((".weight", ".bias"))
                assert isinstance(c_mod.get_submodule(key.rsplit(".", 1)[0]), nn.BatchNorm2d)
                assert torch.equal(value, torch.full_like(value, 1.0 if key.endswith("weight") else 0.0))
                fresh_affine.add(f"{prefix}.{key}")
    heads = {k for k in after if k.startswith(("classifier.", "aux_head.", "auxiliary_head."))}
    assert covered | heads == set(after) and not covered & heads
    assert any(k.startswith("auxiliary_head." if imagenet else "aux_head.") for k in heads)
    copied_heads = {"classifier.weight", "classifier.bias"} if data_mode == "supervised" else set()
    for key in heads:
        expected = search_state[key] if key in copied_heads else before[key]
        assert torch.equal(after[key], expected), key
    assert set(report.fresh) == (heads - copied_heads) | fresh_affine
    assert set(report.copied) == set(after) - set(report.fresh)
    assert {f"cells.0.edges.{e}.alpha" for e in range(14)} <= set(report.ignored)
    assert not set(report.ignored) & {search_key for search_key in search_state if search_key in after}

    compact.eval()
    search.eval()
    size = 64 if imagenet else 16
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    with torch.no_grad():
        expected_features = reference_features(search, arch, x)
        features = compact.features(x)
    assert expected_features.abs().max() > 1e-3
    torch.testing.assert_close(features, expected_features, rtol=1e-10, atol=1e-10)


def test_projection_head_copies_the_simclr_search_head() -> None:
    search = SearchNetwork(4, 10, 3, "SimCLR")
    randomise_(search, seed=3)
    arch = random_arch(3, seed=1)
    state = search.state_dict()
    projection = CompactNetwork(4, 10, arch, head="projection", affine=False)
    report = load_search_weights(projection, state)
    for key in ("classifier.0.weight", "classifier.0.bias", "classifier.2.weight", "classifier.2.bias"):
        assert torch.equal(projection.state_dict()[key], state[key]), key
        assert key in report.copied
    assert report.fresh == []
    classifier = CompactNetwork(4, 10, arch, affine=False)
    fresh = classifier.classifier.weight.detach().clone()
    report = load_search_weights(classifier, state)
    assert torch.equal(classifier.classifier.weight, fresh)
    assert "classifier.weight" in report.fresh and "classifier.0.weight" in report.ignored


def one_line_checkpoint_error(compact: CompactNetwork, state: dict[str, torch.Tensor]) -> str:
    with pytest.raises(CheckpointError) as info:
        load_search_weights(compact, state)
    message = str(info.value)
    assert "\n" not in message and "pass the search's values" in message
    return message


def test_checkpoint_from_a_search_with_other_channels_is_refused() -> None:
    arch = random_arch(5, seed=2)
    state = SearchNetwork(8, 10, 5).state_dict()
    message = one_line_checkpoint_error(CompactNetwork(4, 10, arch), state)
    assert "stem.0.weight has shape [24, 3, 3, 3]" in message and "needs [12, 3, 3, 3]" in message
    assert "--init_channels" in message


def test_checkpoint_from_a_search_with_fewer_or_more_cells_is_refused() -> None:
    arch = random_arch(5, seed=2)
    message = one_line_checkpoint_error(CompactNetwork(4, 10, arch), SearchNetwork(4, 10, 4).state_dict())
    assert "cells.2." in message and "--layers" in message
    # 4 and 3 cells share their reduction positions (1, 2): every key of the 3-cell net fits a 4-cell search
    message = one_line_checkpoint_error(CompactNetwork(4, 10, arch[:3]), SearchNetwork(4, 10, 4).state_dict())
    assert "checkpoint has 4 cells but the architecture has 3" in message
    # a search with fewer cells whose kept cells all fit: the first missing key is named
    state = {k: v for k, v in SearchNetwork(4, 10, 4).state_dict().items() if not k.startswith("cells.3.")}
    message = one_line_checkpoint_error(CompactNetwork(4, 10, random_arch(4, seed=2)), state)
    assert "cells.3.preprocess0.conv_1.weight: missing" in message  # cell 3 follows reduction cell 2


def test_compact_checkpoint_loads_into_a_fresh_compact_network_exactly() -> None:
    arch = random_arch(5, seed=4)
    trained = CompactNetwork(4, 10, arch)
    randomise_(trained, seed=5)
    state = trained.state_dict()
    fresh = CompactNetwork(4, 10, arch)
    report = load_search_weights(fresh, state)
    assert report.fresh == [] and report.ignored == [] and report.copied == list(state)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key


# ---- drop-path ----------------------------------------------------------------------------------------

def test_drop_path_zeroes_whole_samples_and_scales_the_rest() -> None:
    x = torch.randn(16, 3, 2, 2)
    y = drop_path(x, 0.25, generator=torch.Generator().manual_seed(3))
    mask = torch.empty(16, 1, 1, 1).bernoulli_(0.75, generator=torch.Generator().manual_seed(3))
    assert torch.equal(y, x / 0.75 * mask)
    kept = mask.flatten().bool()
    assert 0 < int(kept.sum()) < 16
    assert torch.equal(y[~kept], torch.zeros_like(y[~kept]))
    torch.testing.assert_close(y[kept], x[kept] / 0.75)


def sample_choice(actual: torch.Tensor, options: list[torch.Tensor]) -> list[int]:
    """For every sample, the index of the option it equals (fails if none)."""
    chosen = []
    for b in range(actual.shape[0]):
        matches = [i for i, o in enumerate(options) if torch.allclose(actual[b], o[b], rtol=1e-12, atol=1e-12)]
        assert matches, f"sample {b} matches no option"
        chosen.append(matches[0])
    return chosen


def test_cell_drop_path_spares_stride_1_skips_and_drops_every_other_op() -> None:
    keep = 0.5
    normal = [("skip_connect", 0), ("max_pool_3x3", 1), ("avg_pool_3x3", 0), ("skip_connect", 1),
              ("sep_conv_3x3", 0), ("skip_connect", 0), ("dil_conv_3x3", 1), ("max_pool_3x3", 0)]
    cell = CompactCell(normal, 6, 6, 4, reduction=False, reduction_prev=False, affine=True).double()
    s0, s1 = torch.randn(8, 6, 6, 6, dtype=torch.float64), torch.randn(8, 6, 6, 6, dtype=torch.float64)
    p = [cell.preprocess0(s0), cell.preprocess1(s1)]
    h = [cell._ops[k](p[index]) for k, (_, index) in enumerate(normal)]
    plain = cell(s0, s1, 0.0).chunk(4, dim=1)
    for n in range(4):
        torch.testing.assert_close(plain[n], h[2 * n] + h[2 * n + 1], rtol=1e-12, atol=1e-12)
    dropped = cell(s0, s1, 1 - keep).chunk(4, dim=1)
    zero = torch.zeros_like(h[0])
    choices = []
    for n, (identity, op) in enumerate([(0, 1), (3, 2), (5, 4)]):  # (stride-1 skip, droppable op) per node
        choices += sample_choice(dropped[n] - h[identity], [zero, h[op] / keep])
    assert set(choices) == {0, 1}  # some samples dropped, some kept and scaled
    sample_choice(dropped[3], [zero, h[6] / keep, h[7] / keep, (h[6] + h[7]) / keep])
    cell.eval()
    torch.testing.assert_close(cell(s0, s1, 1 - keep), cell(s0, s1, 0.0), rtol=0, atol=0)


def test_reduction_cell_drop_path_drops_the_factorized_reduce_skip() -> None:
    keep = 0.5
    reduce = [("skip_connect", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("sep_conv_3x3", 1),
              ("skip_connect", 3), ("avg_pool_3x3", 0), ("skip_connect", 4), ("dil_conv_5x5", 1)]
    cell = CompactCell(reduce, 6, 6, 4, reduction=True, reduction_prev=False, affine=True).double()
    assert isinstance(cell._ops[0], FactorizedReduce) and isinstance(cell._ops[2], Identity)
    s0, s1 = torch.randn(8, 6, 8, 8, dtype=torch.float64), torch.randn(8, 6, 8, 8, dtype=torch.float64)
    p = [cell.preprocess0(s0), cell.preprocess1(s1)]
    fr, pool, sep = cell._ops[0](p[0]), cell._ops[1](p[1]), cell._ops[3](p[1])
    nodes = cell(s0, s1, 1 - keep).chunk(4, dim=1)
    zero = torch.zeros_like(fr)
    choices = sample_choice(nodes[0], [zero, fr / keep, pool / keep, (fr + pool) / keep])
    assert any(c in (0, 2) for c in choices) and any(c in (1, 3) for c in choices)  # FR dropped / kept
    assert set(sample_choice(nodes[1] - nodes[0], [zero, sep / keep])) == {0, 1}


def test_network_drop_path_prob_defaults_to_zero_and_is_inactive_in_eval() -> None:
    net = CompactNetwork(4, 10, builtin_architecture("darts", layers=3))
    assert net.drop_path_prob == 0.0
    net.eval()
    x = torch.randn(2, 3, 16, 16)
    plain = net(x)[0]
    net.drop_path_prob = 0.5
    assert torch.equal(net(x)[0], plain)
