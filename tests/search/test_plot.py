"""Tests for ``sswp-fast plot`` (alpha heat-maps and genotype graphs); skipped without matplotlib."""

from __future__ import annotations

import builtins
import importlib.util

import numpy as np
import pytest
import torch

from sswp_fast.errors import SSWPError
from sswp_fast.search.export import append_net_config, derive_architecture
from sswp_fast.search.plot import contrast_norm, plot_run, relative_entropy

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
needs_matplotlib = pytest.mark.skipif(not HAVE_MATPLOTLIB,
                                      reason="matplotlib not installed (pip install 'sswp-fast[plot]')")


def _make_run(run_dir, epochs: int = 3, cells: int = 2) -> None:
    rng = np.random.default_rng(0)
    alpha = np.cumsum(rng.normal(0.0, 0.5, (epochs, cells, 14, 7)), axis=0).astype(np.float32)
    np.savez(run_dir / "alpha_history.npz", epochs=np.arange(epochs, dtype=np.int64), alpha=alpha)
    append_net_config(run_dir / "net.config", "Epoch_0", derive_architecture(torch.from_numpy(alpha[0]), True))
    append_net_config(run_dir / "net.config", "Epoch_2", derive_architecture(torch.from_numpy(alpha[-1]), True))


@needs_matplotlib
def test_plot_run_writes_valid_pngs(tmp_path) -> None:
    _make_run(tmp_path, epochs=3, cells=2)
    out = tmp_path / "figs"
    paths = plot_run(str(tmp_path), str(out), "png")
    assert [p.rsplit("/", 1)[-1] for p in paths] == [
        "alpha_cell00.png", "genotype_cell00.png", "alpha_cell01.png", "genotype_cell01.png"]
    for path in paths:
        assert path.startswith(str(out))
        data = open(path, "rb").read()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")
        assert len(data) > 10_000


@needs_matplotlib
def test_plot_run_svg_in_default_folder_uses_last_line(tmp_path) -> None:
    _make_run(tmp_path, epochs=1, cells=1)
    paths = plot_run(str(tmp_path), fmt="svg")
    assert paths == [str(tmp_path / "plots" / "alpha_cell00.svg"), str(tmp_path / "plots" / "genotype_cell00.svg")]
    for path in paths:
        text = open(path, encoding="utf-8").read()
        assert text.lstrip().startswith("<?xml") and "<svg" in text and text.rstrip().endswith("</svg>")
    assert "Epoch_2" in open(paths[1], encoding="utf-8").read()  # title names the last net.config line


def test_missing_inputs(tmp_path) -> None:
    with pytest.raises(SSWPError, match="alpha_history.npz not found"):
        plot_run(str(tmp_path))
    with pytest.raises(SSWPError, match="not found"):
        plot_run(str(tmp_path / "nope"))
    _make_run(tmp_path)
    (tmp_path / "net.config").unlink()
    with pytest.raises(SSWPError, match="net.config not found"):
        plot_run(str(tmp_path))
    with pytest.raises(SSWPError, match="unknown plot format"):
        plot_run(str(tmp_path), fmt="bmp")


def test_inconsistent_or_corrupt_inputs(tmp_path) -> None:
    _make_run(tmp_path, cells=2)
    np.savez(tmp_path / "alpha_history.npz", epochs=np.arange(3), alpha=np.zeros((3, 3, 14, 7), np.float32))
    with pytest.raises(SSWPError, match="has 2 cells"):
        plot_run(str(tmp_path))
    np.savez(tmp_path / "alpha_history.npz", epochs=np.arange(2), alpha=np.zeros((3, 2, 14, 7), np.float32))
    with pytest.raises(SSWPError, match=r"expected \[E, L, 14, 7\]"):
        plot_run(str(tmp_path))
    (tmp_path / "alpha_history.npz").write_bytes(b"not a zip")
    with pytest.raises(SSWPError, match="unreadable"):
        plot_run(str(tmp_path))


def test_without_matplotlib_gives_install_hint(tmp_path, monkeypatch) -> None:
    _make_run(tmp_path)
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("no matplotlib")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(SSWPError, match=r"pip install 'sswp-fast\[plot\]'"):
        plot_run(str(tmp_path))


@needs_matplotlib
def test_the_colour_scale_shows_what_moved_and_a_near_uniform_run_stays_pale() -> None:
    uniform = np.full((5, 2, 14, 7), 1 / 7)
    noise = uniform + np.random.default_rng(0).uniform(-0.003, 0.003, uniform.shape)  # the README demo's alphas
    norm = contrast_norm(noise)
    assert norm(1 / 7) == pytest.approx(0.5)  # uniform: the white middle of the diverging map
    assert np.abs(norm(noise) - 0.5).max() < 0.02  # noise of a few thousandths stays within 2% of white
    decided = uniform.copy()
    decided[-1, 0, 3] = [0.01, 0.01, 0.01, 0.94, 0.01, 0.01, 0.01]
    norm = contrast_norm(decided)
    assert norm(0.94) == pytest.approx(1.0) and norm(0.0) == pytest.approx(0.0)
    entropy = relative_entropy(decided[-1, 0])
    assert entropy[3] < 0.2 and entropy[2] == pytest.approx(1.0)
