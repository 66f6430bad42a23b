"""Tests for architecture export (spec §8.1) and net.config IO (spec §8.2, §11.1)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from sswp_fast.errors import ConfigError, SSWPError
from sswp_fast.search.export import (
    NODE_EDGES,
    append_net_config,
    derive_architecture,
    derive_cell,
    format_arch,
    load_architecture,
    load_architectures,
    net_config_line,
    read_net_config,
    read_net_config_entries,
)
from sswp_fast.search.space import CANDIDATES

from _support.alpha_cases import ALPHA_KINDS, random_cell_alpha

# ------------------------------------------------------------------------------------------ spec oracle


def _first_argmax(values: list[float]) -> int:
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def oracle_cell(alpha: torch.Tensor, restrict: bool, skip_r: int = 2,
                pool_r: int = 2) -> list[tuple[str, int]]:
    """Plain-Python transcription of spec §8.1 (lists of floats, explicit loops)."""
    w = torch.softmax(alpha.float(), dim=-1).tolist()
    arch: list[tuple[str, int, int, float]] = []
    n_skip = n_pool = 0
    for node, edges in enumerate(NODE_EDGES):
        best = []
        for local, edge in enumerate(edges):
            op = _first_argmax(w[edge])
            best.append((op, local, w[edge][op]))
        # Descending by prob; on equal probs the lower edge comes first.
        order = sorted(range(len(best)), key=lambda i: (-best[i][2], i))[:2]
        for i in order:
            op, local, prob = best[i]
            n_skip += op == 0
            n_pool += op in (1, 2)
            arch.append((CANDIDATES[op], node, local, prob))

    def drop(entries: list[tuple[str, int, int, float]]) -> None:
        for target in entries:
            _, node, local, _ = target
            nw = [list(w[e]) for e in NODE_EDGES[node]]
            for _, n2, e2, _ in arch:
                if n2 == node and e2 != local:
                    nw[e2] = [0.0] * 7
            for row in nw:
                row[0] = row[1] = row[2] = 0.0
            top = max(max(row) for row in nw)
            pos = next((r, c) for r in range(len(nw)) for c in range(7) if nw[r][c] == top)
            new = (CANDIDATES[pos[1]], node, pos[0], top)
            for k, entry in enumerate(arch):
                if entry == target:
                    arch[k] = new

    def lowest(names: tuple[str, ...], count: int) -> list[tuple[str, int, int, float]]:
        keyed = [(e[3] if e[0] in names else 1.0, k) for k, e in enumerate(arch)]
        return [arch[k] for _, k in sorted(keyed)[:count]]

    if restrict:
        if n_skip > skip_r:
            drop(lowest(("skip_connect",), n_skip - skip_r))
        if n_pool > pool_r:
            drop(lowest(("max_pool_3x3", "avg_pool_3x3"), n_pool - pool_r))
    return [(name, local) for name, _, local, _ in arch]


def test_derive_cell_matches_spec_oracle_on_random_alphas(one_torch_thread) -> None:
    g = torch.Generator().manual_seed(1234)
    limits = ((2, 2), (1, 1), (0, 0), (3, 1))
    checked_restricted_changes = 0
    for trial in range(2000):
        alpha = random_cell_alpha(g, trial % ALPHA_KINDS)
        assert derive_cell(alpha, False) == oracle_cell(alpha, False)
        skip_r, pool_r = limits[trial % len(limits)]
        got = derive_cell(alpha, True, skip_r, pool_r)
        assert got == oracle_cell(alpha, True, skip_r, pool_r), (trial, alpha)
        checked_restricted_changes += got != derive_cell(alpha, False)
    assert checked_restricted_changes > 500  # the restricted pass really was exercised


def _cell_with_winners(winners: list[tuple[int, int]]) -> torch.Tensor:
    """Logits where edge e's best op is ``op`` with a strength ``s`` (higher = more probable)."""
    a = torch.zeros(14, 7)
    for edge, (op, strength) in enumerate(winners):
        a[edge, op] = strength
    return a


def test_skip_wins_five_of_eight_kept_edges() -> None:
    # (op, logit) per edge. Kept: node 0 skip 5, skip 4; node 1 skip 5, sep3 3; node 2 skip 6, sep5 4;
    # node 3 skip 7, sep3 5.
    winners = [(0, 5), (0, 4), (0, 5), (3, 3), (0, 2), (0, 6), (4, 4), (5, 1), (6, 1),
               (0, 7), (3, 5), (4, 1), (5, 1), (6, 1)]
    alpha = _cell_with_winners(winners)
    free = derive_cell(alpha, False)
    assert [op for op, _ in free].count("skip_connect") == 5
    assert free == [("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 0), ("sep_conv_3x3", 1),
                    ("skip_connect", 0), ("sep_conv_5x5", 1), ("skip_connect", 0), ("sep_conv_3x3", 1)]
    restricted = derive_cell(alpha, True)
    assert restricted == oracle_cell(alpha, True)
    assert [op for op, _ in restricted].count("skip_connect") == 2
    # the 3 weakest skips (logits 4, 5, 5: node 0 edges 1 and 0, node 1 edge 0) are replaced in place;
    # the two strongest (node 2 edge 0, node 3 edge 0) stay
    assert restricted[4] == ("skip_connect", 0) and restricted[6] == ("skip_connect", 0)
    assert restricted == oracle_cell(alpha, True)


def test_pool_pass_uses_original_pool_count() -> None:
    winners = [(1, 5), (2, 4), (1, 5), (2, 3), (0, 6), (0, 6), (1, 4), (5, 1), (6, 1),
               (2, 7), (3, 5), (4, 1), (5, 1), (6, 1)]
    alpha = _cell_with_winners(winners)
    free = derive_cell(alpha, False)
    pools = sum(op in ("max_pool_3x3", "avg_pool_3x3") for op, _ in free)
    assert pools == 5
    got = derive_cell(alpha, True, skip_r_num=2, pool_r_num=2)
    assert got == oracle_cell(alpha, True, 2, 2)
    assert sum(op in ("max_pool_3x3", "avg_pool_3x3") for op, _ in got) == 2


def test_exact_ties_resolve_to_first_op_and_lower_edge() -> None:
    alpha = torch.zeros(14, 7)
    assert derive_cell(alpha, False) == [("skip_connect", 0), ("skip_connect", 1)] * 4
    # 8 equal skips, keep 2: the first 6 list positions are replaced by their edge's first parametric op
    assert derive_cell(alpha, True) == [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)] * 3 + [
        ("skip_connect", 0), ("skip_connect", 1)]


def test_kept_order_is_by_probability_not_edge() -> None:
    alpha = torch.zeros(14, 7)
    alpha[1, 3] = 2.0  # node 0: edge 1 stronger than edge 0
    alpha[0, 4] = 1.0
    assert derive_cell(alpha, False)[:2] == [("sep_conv_3x3", 1), ("sep_conv_5x5", 0)]


def test_saturated_probabilities_reference_quirks() -> None:
    # Skip prob exactly 1.0 ties with the sort key 1 that every non-skip gets, so the first list entries are
    # "dropped" whatever they are; with all parametric probs 0 the replacement is ('skip_connect', edge 0)
    # and node 1 ends up with the same input twice. Expected values were checked against the reference.
    alpha = torch.zeros(14, 7)
    alpha[:, 3] = 1.0
    alpha[2:, 0] = 200.0
    assert derive_cell(alpha, True) == [
        ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0),
        ("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 0), ("skip_connect", 1)]
    assert derive_cell(alpha, True) == oracle_cell(alpha, True)


def test_derive_architecture_shapes_and_errors() -> None:
    g = torch.Generator().manual_seed(0)
    alpha = torch.randn(3, 14, 7, generator=g)
    arch = derive_architecture(alpha, True)
    assert arch == [derive_cell(alpha[i], True) for i in range(3)]
    assert all(len(cell) == 8 for cell in arch)
    with pytest.raises(ConfigError, match=r"\[L, 14, 7\]"):
        derive_architecture(torch.zeros(14, 7), True)
    with pytest.raises(ConfigError, match=r"\[14, 7\]"):
        derive_cell(torch.zeros(14, 8), True)
    bad = torch.zeros(14, 7)
    bad[3, 2] = float("nan")
    with pytest.raises(SSWPError, match="diverged"):
        derive_cell(bad, True)


def test_derive_cell_accepts_float64_and_grad_tensors() -> None:
    alpha = torch.randn(14, 7, generator=torch.Generator().manual_seed(5))
    expected = derive_cell(alpha, True)
    assert derive_cell(alpha.double().float(), True) == expected
    assert derive_cell(alpha.clone().requires_grad_(True), True) == expected


# ------------------------------------------------------------------------------------------ net.config

SPEC_CELL = ("[('sep_conv_3x3', 1), ('sep_conv_5x5', 0), ('dil_conv_3x3', 2), ('sep_conv_3x3', 1), "
             "('sep_conv_3x3', 0), ('skip_connect', 1), ('dil_conv_5x5', 4), ('sep_conv_3x3', 2)]")
QUOTED_SEP5 = "'sep_conv_5x5'"


def test_format_arch_is_python_str() -> None:
    arch = derive_architecture(torch.randn(2, 14, 7, generator=torch.Generator().manual_seed(3)), True)
    assert format_arch(arch) == str(arch)
    as_numpy = [[(np.str_(op), np.int64(i)) for op, i in cell] for cell in arch]
    assert format_arch(as_numpy) == str(arch)
    assert net_config_line("Epoch_3", arch) == f"Epoch_3:{arch}\n"


def test_reference_example_line(tmp_path) -> None:
    path = tmp_path / "net.config"
    path.write_text(f"Epoch_299:[{SPEC_CELL}, {SPEC_CELL}]\n")
    archs = read_net_config(path)
    assert list(archs) == ["Epoch_299"]
    assert archs["Epoch_299"][0][5] == ("skip_connect", 1)
    assert format_arch(archs["Epoch_299"]) == f"[{SPEC_CELL}, {SPEC_CELL}]"


def test_round_trip_and_last_line_wins(tmp_path) -> None:
    path = tmp_path / "net.config"
    g = torch.Generator().manual_seed(7)
    first = derive_architecture(torch.randn(4, 14, 7, generator=g), True)
    second = derive_architecture(torch.randn(4, 14, 7, generator=g), True)
    append_net_config(path, "Epoch_0", first)
    append_net_config(path, "highest_acc", first)
    append_net_config(path, "Epoch_0", second)
    text = path.read_text()
    assert text.splitlines()[0] == f"Epoch_0:{first}"
    archs = read_net_config(path)
    assert list(archs) == ["Epoch_0", "highest_acc"]
    assert archs["Epoch_0"] == second and archs["highest_acc"] == first
    entries = read_net_config_entries(path)
    assert [name for name, _ in entries] == ["Epoch_0", "highest_acc", "Epoch_0"]
    assert entries[-1][1] == second
    assert load_architecture(tmp_path, "Epoch_0") == second
    assert load_architecture(path, "highest_acc") == first
    assert list(load_architectures(tmp_path, "highest_acc,Epoch_0")) == ["highest_acc", "Epoch_0"]


def test_reader_semantics_colons_blank_lines_crlf(tmp_path) -> None:
    path = tmp_path / "net.config"
    path.write_bytes(f"\nweird:label:[{SPEC_CELL}]\r\n\n  \nEpoch_1:[{SPEC_CELL}]".encode())
    archs = read_net_config(path)
    assert set(archs) == {"weird", "Epoch_1"}  # name before the first ':', structure after the last


def test_load_architecture_unknown_name_lists_available(tmp_path) -> None:
    append_net_config(tmp_path / "net.config", "Epoch_299", [[("sep_conv_3x3", 0)] * 8])
    with pytest.raises(ConfigError, match="available: Epoch_299") as info:
        load_architecture(tmp_path, "highest_acc")
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="not found"):
        load_architecture(tmp_path / "missing_run", "Epoch_299")


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        read_net_config(tmp_path / "net.config")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (f"Epoch_1:[{SPEC_CELL}", "not a literal"),
        ("Epoch_1:[[('sep_conv_3x3', 0)] * 8]", "not a literal"),
        ("Epoch_1:[]", "non-empty list"),
        ("Epoch_1:[[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)]]", "8"),
        (f"Epoch_1:[{SPEC_CELL.replace('sep_conv_5x5', 'conv_7x7')}]", "unknown op"),
        (f"Epoch_1:[{SPEC_CELL.replace(QUOTED_SEP5 + ', 0', QUOTED_SEP5)}]", "pair"),
        (f"Epoch_1:[{SPEC_CELL.replace('1)', '2)', 1)}]", "0..1"),
        (f"Epoch_1:[{SPEC_CELL.replace('0)', 'True)', 1)}]", "input True"),
        (f"Epoch_1:[{SPEC_CELL.replace('2)', '2.0)', 1)}]", "input 2.0"),
        ("no colon here", "no 'name:'"),
        (f":[{SPEC_CELL}]", "empty architecture name"),
        ("Epoch_1:" + "[" * 100_000 + "]" * 100_000, "not a literal"),
    ],
)
def test_malformed_lines_raise_config_error_with_line_number(tmp_path, body: str, match: str) -> None:
    path = tmp_path / "net.config"
    path.write_text(f"Epoch_0:[{SPEC_CELL}]\n{body}\n")
    with pytest.raises(ConfigError, match=match) as info:
        read_net_config(path)
    message = str(info.value)
    assert "line 2" in message and str(path) in message and "\n" not in message


def test_code_payload_is_rejected_not_executed(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "net.config"
    path.write_text(f"Epoch_0:__import__('os').system('touch {marker}')\n")
    with pytest.raises(ConfigError, match="line 1"):
        read_net_config(path)
    path.write_text(f"Epoch_0:[[(__import__('pathlib').Path('{marker}').touch(), 0)]]\n")
    with pytest.raises(ConfigError, match="line 1"):
        read_net_config(path)
    assert not marker.exists()


def test_writer_rejects_bad_names_and_archs(tmp_path) -> None:
    cell = [("sep_conv_3x3", 0)] * 8
    for name in ("", "a:b", "a\nb"):
        with pytest.raises(ConfigError, match="name"):
            append_net_config(tmp_path / "net.config", name, [cell])
    with pytest.raises(ConfigError, match="unknown op"):
        format_arch([[("conv_7x7", 0)] * 8])
    with pytest.raises(ConfigError, match="input"):
        format_arch([[("sep_conv_3x3", 3)] * 8])
    with pytest.raises(ConfigError):
        format_arch([[("sep_conv_3x3", 0.5)] * 8])
    assert not os.path.exists(tmp_path / "net.config")
