"""Backend of ``sswp-fast plot RUN_DIR``: pictures of how a search run's architecture evolved.

For every cell it draws (a) ``alpha_cellNN``: the softmax of the cell's architecture logits over the recorded
epochs, one heat-map panel (ops × epochs) per edge, laid out like the cell (a row per intermediate node, a
column per input), with the edges kept by the exported genotype outlined. The colours show what moved: white is
the uniform 1/7, red above it, blue below, and full red is the largest probability of the run but never less
than 1/7 + :data:`MIN_CONTRAST`, so a run that barely moved stays pale and a decided edge is saturated; each
title gives the edge's entropy as a fraction of ``ln 7``; and (b) ``genotype_cellNN``: the
exported genotype (the last line of ``net.config``) as a small DAG. Inputs are ``alpha_history.npz``
(``epochs`` [E], ``alpha`` [E, L, 14, 7] logits) and ``net.config``. matplotlib is an optional dependency,
imported only here; figures are drawn on Agg canvases without pyplot, so no global backend is changed.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from sswp_fast.errors import SSWPError
from sswp_fast.search.export import NET_CONFIG, NODE_EDGES, Arch, read_net_config_entries
from sswp_fast.search.space import CANDIDATES

ALPHA_HISTORY = "alpha_history.npz"
FORMATS = ("png", "svg", "pdf")
_INPUT_NAMES = ("c_{k-2}", "c_{k-1}", "0", "1", "2", "3")
_INPUT_LABELS = ("$c_{k-2}$", "$c_{k-1}$", "node 0", "node 1", "node 2", "node 3")
MIN_CONTRAST = 0.1
"""The smallest rise above uniform that the colour scale spans (noise of a few thousandths stays near white)."""
_OP_COLORS = ("#7f7f7f", "#1f77b4", "#17becf", "#d62728", "#ff7f0e", "#2ca02c", "#9467bd")


def _new_figure(figsize: tuple[float, float]) -> Any:
    """A matplotlib Figure on an Agg canvas (no pyplot, so no global backend state is touched)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise SSWPError("plotting needs matplotlib: pip install 'sswp-fast[plot]'") from None
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _load_history(run_dir: str) -> tuple[np.ndarray, np.ndarray]:
    path = os.path.join(run_dir, ALPHA_HISTORY)
    if not os.path.isfile(path):
        raise SSWPError(f"{path} not found; plot a search run folder (it is written after every epoch)")
    try:
        with np.load(path, allow_pickle=False) as data:
            epochs = np.asarray(data["epochs"])
            alpha = np.asarray(data["alpha"], dtype=np.float64)
    except Exception as exc:  # zip/format errors, missing keys, pickled object arrays
        raise SSWPError(f"{path} is unreadable ({type(exc).__name__}); re-run the search or restore the file"
                        ) from None
    if alpha.ndim != 4 or alpha.shape[2:] != (14, len(CANDIDATES)) or epochs.shape != alpha.shape[:1] \
            or alpha.shape[0] == 0 or alpha.shape[1] == 0:
        raise SSWPError(f"{path} has alpha {list(alpha.shape)} and epochs {list(epochs.shape)}, expected "
                        "[E, L, 14, 7] and [E] with E, L >= 1; re-run the search or restore the file")
    return epochs, alpha


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _last_architecture(run_dir: str, cells: int) -> tuple[str, Arch]:
    path = os.path.join(run_dir, NET_CONFIG)
    if not os.path.isfile(path):
        raise SSWPError(f"{path} not found; plot a search run folder that has saved an architecture")
    entries = read_net_config_entries(path)
    if not entries:
        raise SSWPError(f"{path} has no architecture line; plot a run that has saved one")
    name, arch = entries[-1]
    if len(arch) != cells:
        raise SSWPError(f"{path} has {len(arch)} cells but {ALPHA_HISTORY} has {cells}; "
                        "plot a run folder whose files belong together")
    return name, arch


def _cell_kind(cell: int, cells: int) -> str:
    return "reduction" if cell in (cells // 3, 2 * cells // 3) else "normal"


def _kept_ops(cell_arch: list[tuple[str, int]]) -> dict[int, list[str]]:
    """Global edge id -> op names the genotype keeps on it."""
    kept: dict[int, list[str]] = {}
    for position, (op, source) in enumerate(cell_arch):
        kept.setdefault(NODE_EDGES[position // 2][source], []).append(op)
    return kept


def _epoch_edges(epochs: np.ndarray) -> np.ndarray:
    """Cell boundaries around each recorded epoch (midpoints; the records need not be evenly spaced)."""
    centers = epochs.astype(np.float64)
    if len(centers) == 1:
        return np.array([centers[0] - 0.5, centers[0] + 0.5])
    mids = (centers[1:] + centers[:-1]) / 2
    return np.concatenate([[2 * centers[0] - mids[0]], mids, [2 * centers[-1] - mids[-1]]])


def contrast_norm(probs: np.ndarray) -> Any:
    """The colour scale of the heat-maps of a run's ``probs`` (any shape, last axis the 7 ops): white at the uniform
    1/7, down to 0 and up to the run's largest probability, at least 1/7 + :data:`MIN_CONTRAST`."""
    from matplotlib.colors import TwoSlopeNorm

    uniform = 1.0 / len(CANDIDATES)
    return TwoSlopeNorm(vcenter=uniform, vmin=0.0, vmax=max(float(probs.max()), uniform + MIN_CONTRAST))


def relative_entropy(probs: np.ndarray) -> np.ndarray:
    """The entropy of each distribution over the last axis as a fraction of ``ln 7``: 1 uniform, 0 decided."""
    return -(probs * np.log(np.clip(probs, 1e-30, None))).sum(-1) / np.log(len(CANDIDATES))


def _plot_alpha(probs: np.ndarray, epochs: np.ndarray, cell: int, cells: int,
                cell_arch: list[tuple[str, int]], arch_name: str, path: str, norm: Any) -> None:
    """``probs`` is [E, 14, 7]: one panel (ops × epochs) per edge, in a node × input grid."""
    from matplotlib.ticker import MaxNLocator

    kept = _kept_ops(cell_arch)
    fig = _new_figure((16, 10.5))
    axes = fig.subplots(4, 5, squeeze=False)
    x_edges = _epoch_edges(epochs)
    y_edges = np.arange(len(CANDIDATES) + 1) - 0.5
    image = None
    for node, edges in enumerate(NODE_EDGES):
        for col in range(5):
            ax = axes[node][col]
            if col >= len(edges):
                ax.set_axis_off()
                continue
            edge = edges[col]
            image = ax.pcolormesh(x_edges, y_edges, probs[:, edge, :].T, cmap="RdBu_r", norm=norm)
            ax.set_ylim(y_edges[-1], y_edges[0])  # first op on top
            ax.set_yticks(range(len(CANDIDATES)))
            ax.set_yticklabels(CANDIDATES if col == 0 else [], fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
            ax.tick_params(axis="x", labelsize=8)
            if node == len(NODE_EDGES) - 1 or col == len(edges) - 1:
                ax.set_xlabel("epoch", fontsize=8)
            title = f"edge {edge}: {_INPUT_LABELS[col]} → node {node}, H/ln7 {relative_entropy(probs[-1, edge]):.3f}"
            if edge in kept:
                title += "\nkept: " + ", ".join(kept[edge])
                for spine in ax.spines.values():
                    spine.set_edgecolor("#d62728")
                    spine.set_linewidth(2.5)
                ax.set_title(title, fontsize=9, color="#d62728", fontweight="bold")
            else:
                ax.set_title(title + "\n", fontsize=9)
    fig.suptitle(f"cell {cell} ({_cell_kind(cell, cells)}): softmax(alpha) per edge over epochs, white = uniform "
                 f"1/7 (outlined: edges kept in {arch_name}; H: entropy at the last epoch)", fontsize=12)
    fig.tight_layout(rect=(0, 0, 0.93, 0.96))
    bar_axes = fig.add_axes((0.94, 0.1, 0.015, 0.8))
    fig.colorbar(image, cax=bar_axes, label="probability (white: uniform 1/7)")
    fig.savefig(path)


_NODE_X = (2.5, 4.8, 7.1, 9.4)
_RADIUS = 0.4


def _node_positions() -> dict[str, tuple[float, float]]:
    """Inputs top-left and bottom-left, the 4 intermediate nodes on a line, the output on the right."""
    positions = {"c_{k-2}": (0.0, 1.7), "c_{k-1}": (0.0, -1.7), "output": (11.8, 0.0)}
    positions.update({str(n): (x, 0.0) for n, x in enumerate(_NODE_X)})
    return positions


def _edge_rad(source: int, node: int, slot: int, repeat: int) -> float:
    """``arc3`` curvature: c_{k-2} edges bow up, c_{k-1} edges bow down, node-to-node edges bow up for a
    node's first input and down for its second; a repeated (source, node) pair (possible after the
    restricted export) bows further."""
    if source == 0:
        rad = -0.12 - 0.06 * node
    elif source == 1:
        rad = 0.12 + 0.06 * node
    else:
        rad = -0.3 if slot == 0 else 0.3
    return rad + (0.3 if rad >= 0 else -0.3) * repeat


def _bezier(p1: tuple[float, float], p2: tuple[float, float], rad: float, t: float) -> tuple[float, float]:
    """Point ``t`` of matplotlib's ``arc3`` quadratic Bézier (data units; the axes aspect is equal)."""
    (x1, y1), (x2, y2) = p1, p2
    cx, cy = (x1 + x2) / 2 + rad * (y2 - y1), (y1 + y2) / 2 - rad * (x2 - x1)
    a, b, c = (1 - t) ** 2, 2 * t * (1 - t), t ** 2
    return a * x1 + b * cx + c * x2, a * y1 + b * cy + c * y2


def _overlap(box: Any, others: list[Any]) -> float:
    total = 0.0
    for other in others:
        w = min(box.x1, other.x1) - max(box.x0, other.x0)
        h = min(box.y1, other.y1) - max(box.y0, other.y0)
        if w > 0 and h > 0:
            total += w * h
    return total


def _plot_genotype(cell_arch: list[tuple[str, int]], cell: int, cells: int, arch_name: str,
                   path: str) -> None:
    from matplotlib.patches import Circle, FancyArrowPatch
    from matplotlib.transforms import Bbox

    positions = _node_positions()
    fig = _new_figure((13, 5.2))
    ax = fig.subplots()
    ax.set_xlim(-0.7, 12.5)
    ax.set_ylim(-2.9, 2.9)
    ax.set_aspect("equal")
    ax.set_axis_off()
    circles = {}
    taken = []  # data-space boxes that labels must avoid
    for name, (x, y) in positions.items():
        color = "#c6dbef" if name.startswith("c_") else "#fdd0a2" if name == "output" else "#e5f5e0"
        circles[name] = Circle((x, y), _RADIUS, facecolor=color, edgecolor="black", linewidth=1.2, zorder=3)
        ax.add_patch(circles[name])
        label = {"c_{k-2}": "$c_{k-2}$", "c_{k-1}": "$c_{k-1}$", "output": "$c_k$"}.get(name, name)
        ax.text(x, y, label, ha="center", va="center", fontsize=12, zorder=4)
        taken.append(Bbox.from_extents(x - _RADIUS, y - _RADIUS, x + _RADIUS, y + _RADIUS))
    for node in range(4):  # concatenation into the output
        ax.add_patch(FancyArrowPatch(positions[str(node)], positions["output"], patchA=circles[str(node)],
                                     patchB=circles["output"], connectionstyle="arc3,rad=0.28",
                                     arrowstyle="-|>", mutation_scale=12, color="#bbbbbb", linestyle="--",
                                     linewidth=1.0, zorder=1))
    renderer = fig.canvas.get_renderer()
    to_data = ax.transData.inverted()
    seen: dict[tuple[int, int], int] = {}
    for position, (op, source) in enumerate(cell_arch):
        node, slot = divmod(position, 2)
        repeat = seen.get((source, node), 0)
        seen[(source, node)] = repeat + 1
        start, end = _INPUT_NAMES[source], str(node)
        rad = _edge_rad(source, node, slot, repeat)
        color = _OP_COLORS[CANDIDATES.index(op)]
        ax.add_patch(FancyArrowPatch(positions[start], positions[end], patchA=circles[start],
                                     patchB=circles[end], connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>",
                                     mutation_scale=14, color=color, linewidth=1.8, zorder=2))
        text = ax.text(0, 0, op, ha="center", va="center", fontsize=9, color=color, zorder=5,
                       bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": color,
                             "linewidth": 0.6})
        best = None
        for t in (0.5, 0.4, 0.6, 0.3, 0.7, 0.22, 0.78):  # slide the label along its edge until it is free
            text.set_position(_bezier(positions[start], positions[end], rad, t))
            box = text.get_window_extent(renderer).transformed(to_data)
            cost = _overlap(box.expanded(1.05, 1.15), taken)
            if best is None or cost < best[0]:
                best = (cost, t, box)
            if cost == 0:
                break
        assert best is not None
        text.set_position(_bezier(positions[start], positions[end], rad, best[1]))
        taken.append(best[2])
    ax.set_title(f"cell {cell} ({_cell_kind(cell, cells)}) genotype from {arch_name}", fontsize=12)
    fig.tight_layout()
    fig.savefig(path)


def plot_run(run_dir: str, out_dir: str | None = None, fmt: str = "png") -> list[str]:
    """Draw every cell's alpha heat-map and genotype graph of a search run; return the written paths."""
    if fmt not in FORMATS:
        raise SSWPError(f"unknown plot format {fmt!r}; use one of {', '.join(FORMATS)}")
    if not os.path.isdir(run_dir):
        raise SSWPError(f"run folder {run_dir} not found; pass a search folder (exps/<group>/search-<note>)")
    epochs, alpha = _load_history(run_dir)
    cells = alpha.shape[1]
    arch_name, arch = _last_architecture(run_dir, cells)
    _new_figure((1, 1))  # fail early, before creating folders, when matplotlib is missing
    out = out_dir if out_dir is not None else os.path.join(run_dir, "plots")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise SSWPError(f"cannot create {out} ({exc.strerror or exc}); pass a writable --out folder") from None
    probs = _softmax(alpha)
    norm = contrast_norm(probs)
    written: list[str] = []
    width = max(2, len(str(cells - 1)))
    for cell in range(cells):
        heat = os.path.join(out, f"alpha_cell{cell:0{width}d}.{fmt}")
        _plot_alpha(probs[:, cell], epochs, cell, cells, arch[cell], arch_name, heat, norm)
        graph = os.path.join(out, f"genotype_cell{cell:0{width}d}.{fmt}")
        _plot_genotype(arch[cell], cell, cells, arch_name, graph)
        written += [heat, graph]
    return written
