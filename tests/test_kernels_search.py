"""A short search with the Triton kernels (`--kernels triton`; interpreter on CPU) follows the same loss and
architecture-logit trajectory as the PyTorch path (`--kernels torch`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sswp_fast.backend import KERNELS_ENV
from sswp_fast.cli import main

SHORT = ["--dataset", "digits", "--epochs", "2", "--epoch_ratios", "0.0,1.0,0.0,0.0", "--min_warmup", "0",
         "--layers", "3", "--init_channels", "4", "--batch_size", "2", "--steps_per_epoch", "1",
         "--update_arch_every", "1", "--progress", "off", "--memory_format", "contiguous", "--device", "cpu",
         "--debug"]  # --debug: the last epoch validates on 200 test images, not 359


def trajectory(run) -> tuple[list[float], np.ndarray]:
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    with np.load(run / "alpha_history.npz") as history:
        return [m["train_loss"] for m in metrics], history["alpha"]


@pytest.mark.slow  # minutes in the interpreter: a weight and an arch step, then the last epoch (cells frozen)
def test_triton_kernels_follow_the_pytorch_search(tmp_path, monkeypatch, capsys) -> None:
    pytest.importorskip("triton")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(KERNELS_ENV, raising=False)
    assert main(["search", *SHORT, "--kernels", "torch", "--note", "torch"]) == 0
    assert main(["search", *SHORT, "--kernels", "triton", "--note", "triton"]) == 0
    torch_loss, torch_alpha = trajectory(tmp_path / "exps/exp/search-torch")
    triton_loss, triton_alpha = trajectory(tmp_path / "exps/exp/search-triton")
    assert len(triton_loss) == 2
    np.testing.assert_allclose(triton_loss, torch_loss, rtol=1e-4, atol=1e-4)
    assert np.abs(torch_alpha[0]).max() > 5e-4, "the first epoch's arch step must have moved the alphas from zero"
    np.testing.assert_allclose(triton_alpha, torch_alpha, rtol=1e-3, atol=1e-5)
