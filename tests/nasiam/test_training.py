"""NASiam runs on ``digits``: the architecture step's shortcut (no backbone backward graph) gives the alpha
gradients of a full backward pass; search checkpoints round-trip and resume exactly; each framework searches,
writes a genotype, pretrains with it and linear-evaluates (slow)."""

from __future__ import annotations

import copy
import dataclasses
import re

import pytest
import torch

from sswp_fast.cli import main
from sswp_fast.errors import ConfigError
from sswp_fast.nasiam.config import nasiam_defaults
from sswp_fast.nasiam.genotypes import read_genotype
from sswp_fast.nasiam.models import MoCo, SimCLR, SimSiam
from sswp_fast.nasiam.training import HeadSearchRun
from sswp_fast.runtime.checkpoint import load_checkpoint

TINY = ["--dataset", "digits", "-a", "resnet18", "-b", "8", "--steps_per_epoch", "2", "--dim", "32",
        "--pred-dim", "8", "--moco-k", "32", "--moco-dim", "16", "--feature_dim", "16", "--progress", "off",
        "--device", "cpu"]


def _models() -> list[torch.nn.Module]:
    torch.manual_seed(0)
    return [SimSiam("resnet18", True, dim=16, pred_dim=8), MoCo("resnet18", True, dim=8, k=16),
            SimCLR("resnet18", True, feature_dim=8)]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["simsiam", "moco", "simclr"])
def test_arch_gradients_without_the_backbone_graph_equal_the_full_backward(index):
    model = _models()[index].double().train()
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(4, 3, 16, 16, generator=g).double(), torch.randn(4, 3, 16, 16, generator=g).double()
    with torch.no_grad():
        for alpha in model.arch_parameters():
            alpha.normal_(generator=g)
    full, fast = copy.deepcopy(model), copy.deepcopy(model)
    torch.manual_seed(2)  # MoCo shuffles keys with the global generator
    full.loss(x1, x2).backward()
    torch.manual_seed(2)
    fast_loss = fast.loss(x1, x2, backbone_grad=False)
    grads = torch.autograd.grad(fast_loss, fast.arch_parameters())
    assert len(grads) == len(full.arch_parameters()) >= 1
    for expected, got in zip((a.grad for a in full.arch_parameters()), grads, strict=True):
        assert expected.abs().max() > 0
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    backbone = fast.encoder if index == 0 else fast.encoder_q if index == 1 else fast.f
    assert all(p.grad is None for p in backbone.conv1.parameters())  # no weight gradient was built


def test_moco_key_encoder_is_an_ema_copy_with_its_own_head():
    model = _models()[1]
    head_q, head_k = model.encoder_q.fc[0], model.encoder_k.fc[0]
    assert head_q is not head_k and not any(p.requires_grad for p in model.encoder_k.parameters())
    before = [p.clone() for p in model.encoder_k.parameters()]
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(1.0)
    model.loss(torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16))
    after = list(model.encoder_k.parameters())
    for b, a, q in zip(before, after, model.encoder_q.parameters(), strict=True):
        torch.testing.assert_close(a, model.m * b + (1 - model.m) * q.detach())
    with pytest.raises(ConfigError, match="multiple of twice the batch"):
        model.loss(torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16))


def test_the_moco_eps_flag_reaches_every_linear_candidate_of_the_head():
    from sswp_fast.nasiam.config import nasiam_defaults as defaults
    from sswp_fast.nasiam.training import build_model

    base = dataclasses.replace(defaults("search", "moco"), arch="resnet18", moco_k=16, moco_dim=8)
    for bug, eps in ((False, 1e-5), (True, 512.0)):
        model = build_model(dataclasses.replace(base, moco_bn_eps_bug=bug), None)
        linear_bns = [m for name, m in model.encoder_q.fc.named_modules()  # candidate k of layer i: _ops.i._ops.k
                      if isinstance(m, torch.nn.BatchNorm1d) and re.search(r"_ops\.\d+\._ops\.[3-6]\.", name)]
        assert linear_bns and all(bn.eps == eps for bn in linear_bns)


def _search_config(tmp_path, **changes):
    base = nasiam_defaults("search", "simsiam")
    return dataclasses.replace(base, dataset="digits", arch="resnet18", batch_size=8, steps_per_epoch=1, dim=16,
                               pred_dim=8, epochs=2, progress="off", device="cpu", **changes)


def test_search_checkpoint_holds_alphas_and_resume_continues_exactly(tmp_path):
    whole = HeadSearchRun(_search_config(tmp_path, note="whole"), tmp_path)
    whole.run()
    broken = HeadSearchRun(_search_config(tmp_path, note="broken"), tmp_path)
    broken.train_epoch(0)
    broken.save_resume(1)  # the process dies after epoch 0's checkpoint
    resumed = HeadSearchRun(_search_config(tmp_path, note="broken", resume=True), tmp_path)
    assert resumed.start_epoch == 1
    resumed.run()
    saved = load_checkpoint(tmp_path / "exps/exp/nasiam-simsiam-search-whole/last_checkpoint.pth.tar")
    assert [tuple(a.shape) for a in saved["alphas"]] == [(6, 7), (4, 7)]
    assert {"epoch", "arch", "state_dict", "alphas", "optimizer", "search_optimizer"} <= saved.keys()
    for a, b in zip(whole.model.arch_parameters(), resumed.model.arch_parameters(), strict=True):
        assert torch.equal(a, b)
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    assert (tmp_path / "exps/exp/nasiam-simsiam-search-broken/digits_resnet18.txt").read_text() == \
        (tmp_path / "exps/exp/nasiam-simsiam-search-whole/digits_resnet18.txt").read_text()


def test_pretrain_without_a_genotype_and_an_unknown_genotype_are_one_line_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["nasiam", "pretrain", "--framework", "moco", *TINY]) == 2
    assert "pass -g NAME" in capsys.readouterr().err
    assert main(["nasiam", "pretrain", "--framework", "moco", "-g", "nope", *TINY]) == 2
    err = capsys.readouterr().err
    assert "cifar10_resnet18" in err and err.count("\n") == 1
    assert not (tmp_path / "exps").exists()


@pytest.mark.slow
@pytest.mark.parametrize("framework", ["simsiam", "moco", "simclr"])
def test_each_framework_searches_pretrains_and_linear_evaluates(tmp_path, monkeypatch, capsys, framework):
    monkeypatch.chdir(tmp_path)
    common = ["--framework", framework, *TINY]
    assert main(["nasiam", "search", *common, "--epochs", "1"]) == 0
    genotype = tmp_path / f"exps/exp/nasiam-{framework}-search-exp/digits_resnet18.txt"
    assert read_genotype(genotype, framework).framework == framework
    assert main(["nasiam", "pretrain", *common, "--epochs", "1", "-g", str(genotype)]) == 0
    pretrained = tmp_path / f"exps/exp/nasiam-{framework}-pretrain-exp/pretrained_model_best.pth.tar"
    assert "knn_top1" in (pretrained.parent / "log.txt").read_text()
    assert main(["nasiam", "lincls", *common, "--epochs", "1", "--lr", "0.1", "--pretrained", str(pretrained)]) == 0
    log = (tmp_path / f"exps/exp/nasiam-{framework}-lincls-exp/log.txt").read_text()
    assert "top1" in log


@pytest.mark.parametrize("framework", ["simsiam", "moco", "simclr"])
def test_digits_views_keep_half_the_digit_and_never_mirror_it(framework: str) -> None:
    from types import SimpleNamespace

    from sswp_fast.data import load_dataset
    from sswp_fast.nasiam.training import NasiamRun

    run = SimpleNamespace(dataset=load_dataset("digits", None), config=SimpleNamespace(framework=framework))
    views = NasiamRun._views(run)
    assert views.scale == (0.5, 1.0) and views.flip_p == 0.0
    cifar_like = SimpleNamespace(dataset=dataclasses.replace(run.dataset, name="cifar10"), config=run.config)
    other = NasiamRun._views(cifar_like)
    assert other.scale == ((0.2, 1.0) if framework == "simsiam" else (0.08, 1.0)) and other.flip_p == 0.5
