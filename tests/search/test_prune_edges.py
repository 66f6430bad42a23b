"""``--prune_edges``: a frozen cell runs its exported genotype, so once every cell is frozen the search network
computes exactly the compact network that fine-tuning starts from."""

from __future__ import annotations

import pytest
import torch

from sswp_fast import Batch, SearchConfig, SearchEngine
from sswp_fast.errors import ConfigError
from sswp_fast.search.export import PRUNED_EDGE, derive_architecture, edge_ops
from sswp_fast.search.supernet import ExecutionPlan
from sswp_fast.stages.compact import CompactNetwork, load_search_weights


def _engine(prune_edges: bool = True, **changes) -> SearchEngine:
    config = SearchConfig(dataset="digits", layers=4, init_channels=4, batch_size=4, seed=3,
                          prune_edges=prune_edges, kernels="torch", **changes).resolved()
    engine = SearchEngine(config, num_classes=10)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        engine.net.arch_alpha.normal_(generator=generator)
        for module in engine.net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
    return engine


def _views(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, 16, 16, generator=g), torch.randn(4, 3, 16, 16, generator=g)


def test_edge_ops_place_the_eight_kept_pairs_on_their_edges():
    cell = [("sep_conv_3x3", 1), ("skip_connect", 0), ("max_pool_3x3", 2), ("dil_conv_5x5", 0),
            ("avg_pool_3x3", 3), ("sep_conv_5x5", 1), ("dil_conv_3x3", 4), ("skip_connect", 2)]
    ops = edge_ops(cell)
    assert ops == [0, 3, 6, -1, 1, -1, 4, -1, 2, -1, -1, 0, -1, 5]
    assert ops.count(PRUNED_EDGE) == 6


@pytest.mark.parametrize("dtype", [torch.float64])
def test_all_frozen_search_net_equals_the_compact_net_of_its_genotype(dtype):
    torch.set_default_dtype(dtype)
    try:
        engine = _engine()
        engine.weight_step(Batch(_views(0)), warmup=True, skip_drop_prob=0.0)  # move the weights off init
        engine.freeze(list(range(4)))
        c = engine.config
        arch = derive_architecture(engine.net.arch_alpha.detach(), True, c.skip_r_num, c.pool_r_num)
        assert all(engine.frozen_ops[i].tolist() == edge_ops(arch[i]) for i in range(4))
        compact = CompactNetwork(4, 10, arch, auxiliary=False, affine=False, head="projection")
        load_search_weights(compact, engine.net.state_dict())
        x = torch.cat(_views(1))
        plan = ExecutionPlan(engine.frozen_ops.tolist())
        for train in (False, True):  # eval: running statistics; train: batch statistics
            engine.net.train(train)
            compact.train(train)
            torch.testing.assert_close(compact.features(x), engine.net.features(x, plan), rtol=1e-10, atol=1e-12)
    finally:
        torch.set_default_dtype(torch.float32)


def test_a_weight_step_trains_only_the_kept_edges_of_a_frozen_cell():
    engine = _engine()
    engine.freeze([0])
    before = {k: v.clone() for k, v in engine.net.cells[0].edges.named_parameters()}
    engine.weight_step(Batch(_views(2)), warmup=False, skip_drop_prob=0.0)
    ops = engine.frozen_ops[0].tolist()
    for name, value in engine.net.cells[0].edges.named_parameters():
        edge, op = int(name.split(".")[0]), int(name.split(".")[2])
        moved = not torch.equal(value, before[name])
        assert moved == (ops[edge] == op), name
    assert engine.arch_step(Batch(_views(3))) is not None  # the other cells still search


def test_without_the_flag_a_frozen_cell_keeps_all_fourteen_argmax_edges():
    engine = _engine(prune_edges=False)
    engine.freeze([1])
    assert engine.frozen_ops[1].tolist() == engine.net.arch_alpha[1].argmax(-1).tolist()


def test_the_flag_is_refused_with_reference_quirks_only():
    """The device executor runs it too (a dropped edge is op -1: tests/test_device_executor.py), so --compile
    takes it."""
    with pytest.raises(ConfigError, match="pick one"):
        _engine(reference_quirks=True)
    engine = SearchEngine(SearchConfig(dataset="digits", layers=3, init_channels=4, batch_size=4, prune_edges=True,
                                       kernels="torch", compile="default").resolved(), num_classes=10)
    assert engine.dispatch
