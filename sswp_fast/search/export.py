"""Architecture export (spec §8.1) and the ``net.config`` file (spec §8.2, §11.1, quirk 28).

:func:`derive_cell` turns one cell's ``[14, 7]`` architecture logits into its 8 ``(op_name, input_index)``
pairs exactly as the reference's ``final_prune`` does, ties and the restricted (skip/pool-limited) pass
included; :func:`derive_architecture` does it for every cell. ``net.config`` lines are
``{name}:{str(arch)}``; :func:`read_net_config` parses them with :func:`ast.literal_eval` (never ``eval``)
and validates the result, so a hostile file is rejected instead of executed.
"""

from __future__ import annotations

import ast
import operator
import os
from collections.abc import Iterable, Sequence

import torch

from sswp_fast.errors import ConfigError, SSWPError
from sswp_fast.search.space import CANDIDATES, NUM_CANDIDATES

NODE_EDGES: tuple[tuple[int, ...], ...] = ((0, 1), (2, 3, 4), (5, 6, 7, 8), (9, 10, 11, 12, 13))
"""Global edge ids of each intermediate node's incoming edges; edge ``NODE_EDGES[n][j]`` reads input ``j``."""

NUM_EDGES = 14
EDGES_PER_CELL_ARCH = 8
NET_CONFIG = "net.config"

_SKIP = "skip_connect"
_POOLS = ("max_pool_3x3", "avg_pool_3x3")
_NON_PARAMETRIC_COLUMNS = 3  # skip and both pools come first in CANDIDATES

Arch = list[list[tuple[str, int]]]

# One kept edge while pruning: (op_name, node, local_edge, prob). Tuple equality on all four fields is what
# identifies the entry to replace, as in the reference.
_Entry = tuple[str, int, int, float]


def _first_max(values: Sequence[float]) -> tuple[int, float]:
    """Index and value of the maximum; the first index wins exact ties (as ``torch.max`` does)."""
    best = 0
    for i in range(1, len(values)):
        if values[i] > values[best]:
            best = i
    return best, values[best]


def _keep_two_per_node(weight: list[list[float]]) -> tuple[list[_Entry], int, int]:
    """Unrestricted pass: each node keeps its 2 most probable incoming edges (stable, descending)."""
    kept: list[_Entry] = []
    skips = pools = 0
    for node, edges in enumerate(NODE_EDGES):
        candidates = [(*_first_max(weight[edge]), local) for local, edge in enumerate(edges)]
        ranked = sorted(candidates, key=lambda c: c[1], reverse=True)  # stable: lower edge first on ties
        for op, prob, local in ranked[:2]:
            skips += op == 0
            pools += op in (1, 2)
            kept.append((CANDIDATES[op], node, local, prob))
    return kept, skips, pools


def _replace_dropped(weight: list[list[float]], kept: list[_Entry], dropped: Sequence[_Entry]) -> list[_Entry]:
    """Replace each dropped entry by its node's best parametric (edge, op) (the reference ``_drop_op``)."""
    for target in dropped:
        _, node, local_edge, _ = target
        block = [list(weight[edge]) for edge in NODE_EDGES[node]]  # a copy: `weight` stays untouched
        for _, other_node, other_edge, _ in kept:
            if other_node == node and other_edge != local_edge:
                block[other_edge] = [0.0] * NUM_CANDIDATES
        for row in block:
            row[:_NON_PARAMETRIC_COLUMNS] = [0.0] * _NON_PARAMETRIC_COLUMNS
        # first row-major position equal to the block's maximum
        flat, top = _first_max([value for row in block for value in row])
        new_edge, new_op = divmod(flat, NUM_CANDIDATES)
        replacement = (CANDIDATES[new_op], node, new_edge, top)
        kept = [replacement if entry == target else entry for entry in kept]
    return kept


def _lowest(kept: list[_Entry], names: tuple[str, ...], count: int) -> list[_Entry]:
    """The ``count`` lowest-prob entries among ops in ``names`` (other ops sort as 1; stable ascending)."""
    return sorted(kept, key=lambda e: e[3] if e[0] in names else 1)[:count]


def _check_alpha(alpha: torch.Tensor, ndim: int) -> None:
    if not isinstance(alpha, torch.Tensor):
        raise ConfigError(f"architecture logits must be a torch.Tensor, got {type(alpha).__name__}; "
                          "pass the alpha tensor")
    expected = "[L, 14, 7]" if ndim == 3 else "[14, 7]"
    if alpha.dim() != ndim or tuple(alpha.shape[-2:]) != (NUM_EDGES, NUM_CANDIDATES):
        raise ConfigError(f"architecture logits have shape {list(alpha.shape)}, expected {expected}; "
                          "pass the search network's alpha tensor")


def derive_cell(alpha_cell: torch.Tensor, restrict: bool, skip_r_num: int = 2,
                pool_r_num: int = 2) -> list[tuple[str, int]]:
    """Export one cell from its raw ``[14, 7]`` logits, bit-for-bit like the reference's ``final_prune``.

    The softmax runs on the logits' device in float32 and is then moved to the CPU (as the reference does).
    With ``restrict``, surplus skips beyond ``skip_r_num`` and then surplus pools beyond ``pool_r_num``
    (counted before the skip pass) are replaced by the best parametric choice of their node.
    """
    _check_alpha(alpha_cell, 2)
    weight = torch.softmax(alpha_cell.detach().to(torch.float32), dim=-1).cpu()
    if torch.isnan(weight).any():  # the reference would export garbage or crash here
        raise SSWPError("architecture logits contain NaN or +inf (the search diverged); "
                        "lower the learning rates or resume from an earlier checkpoint")
    # From here on plain Python floats: exactly the float32 values, compared exactly, and no per-op dispatch.
    probs = weight.tolist()
    kept, skips, pools = _keep_two_per_node(probs)
    if restrict:
        if skips > skip_r_num:
            kept = _replace_dropped(probs, kept, _lowest(kept, (_SKIP,), skips - skip_r_num))
        if pools > pool_r_num:  # the pool count from the unrestricted pass, as in the reference
            kept = _replace_dropped(probs, kept, _lowest(kept, _POOLS, pools - pool_r_num))
    return [(name, local) for name, _, local, _ in kept]


PRUNED_EDGE = -1
"""The op index :func:`edge_ops` gives an edge that the genotype drops."""


def edge_ops(cell: Sequence[tuple[str, int]]) -> list[int]:
    """The op index of each of the 14 edges of a genotype cell: the 8 kept ``(op, input)`` pairs, node by node
    (entries ``2n`` and ``2n+1`` feed node ``n``), and :data:`PRUNED_EDGE` for every edge it drops."""
    ops = [PRUNED_EDGE] * NUM_EDGES
    for k, (name, index) in enumerate(cell):
        ops[NODE_EDGES[k // 2][index]] = CANDIDATES.index(name)
    return ops


def derive_architecture(alpha: torch.Tensor, restrict: bool, skip_r_num: int = 2,
                        pool_r_num: int = 2) -> Arch:
    """Export every cell of ``[L, 14, 7]`` logits (one softmax per cell, like the reference)."""
    _check_alpha(alpha, 3)
    return [derive_cell(alpha[i], restrict, skip_r_num, pool_r_num) for i in range(alpha.shape[0])]


# ----------------------------------------------------------------------------------------------- net.config

def validate_arch(value: object) -> Arch:
    """Return ``value`` as cells of 8 ``(op_name, index)`` tuples; raise ValueError saying why not."""
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("expected a non-empty list of cells")
    arch: Arch = []
    for c, cell in enumerate(value):
        if not isinstance(cell, (list, tuple)) or len(cell) != EDGES_PER_CELL_ARCH:
            raise ValueError(f"cell {c} is not a list of {EDGES_PER_CELL_ARCH} (op, input) pairs")
        pairs: list[tuple[str, int]] = []
        for k, pair in enumerate(cell):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError(f"cell {c} entry {k} is not an (op, input) pair")
            op, index = pair
            if not isinstance(op, str) or op not in CANDIDATES:
                raise ValueError(f"cell {c} entry {k} has unknown op {op!r}")
            node = k // 2
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= node + 1:
                raise ValueError(f"cell {c} entry {k} has input {index!r}, expected an int in 0..{node + 1}")
            pairs.append((op, index))
        arch.append(pairs)
    return arch


def format_arch(arch: Iterable[Iterable[tuple[str, int]]]) -> str:
    """The architecture as the reference writes it: Python's ``str()`` of a list of lists of tuples."""
    try:
        cells = [[(str(op), operator.index(index)) for op, index in cell] for cell in arch]
        normalized = validate_arch(cells)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot format architecture: {exc}; pass cells of 8 (op_name, input) pairs"
                          ) from None
    return str(normalized)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name or any(ch in name for ch in ":\r\n"):
        raise ConfigError(f"architecture name {name!r} must be a non-empty string without ':' or newlines; "
                          "rename it")


def net_config_line(name: str, arch: Iterable[Iterable[tuple[str, int]]]) -> str:
    """One ``net.config`` line, newline included: ``f"{name}:{format_arch(arch)}\\n"``."""
    _check_name(name)
    return f"{name}:{format_arch(arch)}\n"


def append_net_config(path: str | os.PathLike[str], name: str,
                      arch: Iterable[Iterable[tuple[str, int]]]) -> None:
    """Append one line to the ``net.config`` file at ``path`` and flush it to disk."""
    line = net_config_line(name, arch)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_net_config(path: str | os.PathLike[str]) -> dict[str, Arch]:
    """Parse a ``net.config`` file into ``{name: arch}``; a later line with the same name wins.

    As in the reference, the name is the text before the first ``:`` and the architecture the text after the
    last ``:``. Blank lines are skipped; anything else that is not a valid architecture raises ConfigError.
    """
    return dict(read_net_config_entries(path))


def read_net_config_entries(path: str | os.PathLike[str]) -> list[tuple[str, Arch]]:
    """Every ``(name, arch)`` line of a ``net.config`` file in file order, repeats included (see
    :func:`read_net_config` for the parsing rules)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.readlines()
    except FileNotFoundError:
        raise ConfigError(f"{os.fspath(path)} not found; point --path at a search run directory "
                          "that contains net.config") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {os.fspath(path)} ({type(exc).__name__}); "
                          "check the file is a readable text net.config") from None
    entries: list[tuple[str, Arch]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{os.fspath(path)} line {number}"
        if ":" not in line:
            raise ConfigError(f"{where} has no 'name:' prefix; fix or delete that line")
        name, structure = line.split(":", 1)[0], line.rsplit(":", 1)[-1]
        if not name:
            raise ConfigError(f"{where} has an empty architecture name; fix or delete that line")
        try:
            value = ast.literal_eval(structure.strip())
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise ConfigError(f"{where} is not a literal architecture list; fix or delete that line"
                              ) from None
        try:
            entries.append((name, validate_arch(value)))
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}; fix or delete that line") from None
    return entries


def _net_config_path(path: str | os.PathLike[str]) -> str:
    path = os.fspath(path)
    return os.path.join(path, NET_CONFIG) if os.path.isdir(path) else path


def load_architectures(path: str | os.PathLike[str], arch_names: str | Sequence[str]) -> dict[str, Arch]:
    """Pick architectures by name (a list or a comma-separated string) from a run dir or ``net.config`` file.

    The result keeps the requested order. Unlike the reference, which silently skips unknown names as long
    as one matches, every unknown name is an error.
    """
    names = arch_names.split(",") if isinstance(arch_names, str) else list(arch_names)
    if not names or any(not n for n in names):
        raise ConfigError(f"bad architecture name list {arch_names!r}; pass names like Epoch_299 or "
                          "Epoch_299,highest_acc")
    config = _net_config_path(path)
    available = read_net_config(config)
    missing = [n for n in names if n not in available]
    if missing:
        known = ", ".join(available) if available else "none"
        raise ConfigError(f"architecture {', '.join(missing)} not in {config} (available: {known}); "
                          "pass one of the available names")
    return {n: available[n] for n in names}


def load_architecture(path: str | os.PathLike[str], arch_name: str) -> Arch:
    """The architecture named ``arch_name`` in a run dir's ``net.config`` (or in a ``net.config`` file)."""
    if "," in arch_name:
        raise ConfigError(f"load_architecture takes one name, got {arch_name!r}; use load_architectures")
    return load_architectures(path, [arch_name])[arch_name]
