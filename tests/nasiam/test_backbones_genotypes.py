"""Tests for the NASiam backbones (spec nasiam.md §1) and genotype files (spec §5.2, §5.3)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from importlib import resources

import pytest
import torch
from torch import nn

from sswp_fast.errors import ConfigError
from sswp_fast.nasiam.backbones import resnet
from sswp_fast.nasiam.genotypes import (
    NasiamGenotype,
    format_genotype,
    genotype_filename,
    parse_genotype,
    published_genotype,
    published_names,
    read_genotype,
    write_genotype,
)

# ------------------------------------------------------------------------------------------ backbones

# torchvision facts: state-dict sizes (num_batches_tracked included) and parameter counts with 1000 classes
_TORCHVISION_KEYS = {"resnet18": 122, "resnet50": 320}
_TORCHVISION_PARAMS = {"resnet18": 11_689_512, "resnet50": 25_557_032}
_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet50": (3, 4, 6, 3)}
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _expected_keys(name: str) -> set[str]:
    """torchvision's key names, written out from its naming rules."""
    convs = 2 if name == "resnet18" else 3
    keys = {"conv1.weight", "fc.weight", "fc.bias"} | {f"bn1.{s}" for s in _BN}
    for layer, blocks in enumerate(_BLOCKS[name], start=1):
        for b in range(blocks):
            prefix = f"layer{layer}.{b}"
            for c in range(1, convs + 1):
                keys |= {f"{prefix}.conv{c}.weight"} | {f"{prefix}.bn{c}.{s}" for s in _BN}
            if b == 0 and (layer > 1 or name == "resnet50"):
                keys |= {f"{prefix}.downsample.0.weight"} | {f"{prefix}.downsample.1.{s}" for s in _BN}
    return keys


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("cifar", [True, False])
def test_state_dict_matches_torchvision_layout(name: str, cifar: bool) -> None:
    sd = resnet(name, 1000, cifar=cifar).state_dict()
    assert len(sd) == _TORCHVISION_KEYS[name]
    assert set(sd) == _expected_keys(name)
    for key in ("conv1.weight", "bn1.running_var", "layer4.1.bn2.num_batches_tracked", "layer2.0.downsample.0.weight",
                "layer3.0.downsample.1.running_mean", "fc.weight", "fc.bias"):
        assert key in sd
    assert ("layer1.0.downsample.0.weight" in sd) == (name == "resnet50")
    assert ("layer3.5.conv3.weight" in sd) == (name == "resnet50")
    params = sum(p.numel() for p in resnet(name, 1000, cifar=False).parameters())
    assert params == _TORCHVISION_PARAMS[name]
    assert sd["conv1.weight"].shape == ((64, 3, 3, 3) if cifar else (64, 3, 7, 7))
    assert sd["fc.weight"].shape == (1000, 512 if name == "resnet18" else 2048)
    if name == "resnet50":  # v1.5: the stride sits on the 3x3 conv, the first conv of a stage is 1x1
        assert sd["layer2.0.conv1.weight"].shape == (128, 256, 1, 1)
        assert sd["layer2.0.conv2.weight"].shape == (128, 128, 3, 3)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_state_dict_equals_torchvision(name: str) -> None:
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed")
    from torchvision import models

    for cifar in (True, False):
        ours = resnet(name, 10, cifar=cifar).state_dict()
        theirs = getattr(models, name)(num_classes=10)
        if cifar:
            theirs.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        theirs_sd = theirs.state_dict()
        assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs_sd.items()}
        theirs.load_state_dict(ours)


@pytest.mark.parametrize(("name", "dim"), [("resnet18", 512), ("resnet50", 2048)])
@pytest.mark.parametrize("cifar", [True, False])
def test_output_shapes_and_head_swap(name: str, dim: int, cifar: bool) -> None:
    net = resnet(name, 7, cifar=cifar).eval()
    x = torch.randn(2, 3, 16, 16)
    fc_inputs = []
    net.fc.register_forward_hook(lambda _m, inputs, _out: fc_inputs.append(inputs[0]))
    with torch.no_grad():
        logits = net(x)
        assert logits.shape == (2, 7) and net.feature_dim == dim
        net.fc = nn.Identity()  # the swapped head now returns features(x)
        feats = net(x)
    assert feats.shape == (2, dim)
    torch.testing.assert_close(fc_inputs[0], feats)


@pytest.mark.parametrize(("cifar", "side"), [(True, 4), (False, 1)])
def test_stems(cifar: bool, side: int) -> None:
    net = resnet("resnet18", 10, cifar=cifar).eval()
    assert net.conv1.stride == ((1, 1) if cifar else (2, 2))
    assert isinstance(net.maxpool, nn.Identity) == cifar
    seen = []
    net.layer4.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    with torch.no_grad():
        net(torch.randn(2, 3, 32, 32))
    assert seen == [(2, 512, side, side)]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_init_and_zero_init_residual(name: str) -> None:
    last = "bn2" if name == "resnet18" else "bn3"
    plain = resnet(name, 10, cifar=True)
    zeroed = resnet(name, 10, cifar=True, zero_init_residual=True)
    for key, value in plain.state_dict().items():
        if key.endswith("bn1.weight") or key.endswith(f"{last}.weight") or key.endswith("downsample.1.weight"):
            assert torch.equal(value, torch.ones_like(value)), key
        if "bn" in key and key.endswith(".bias"):
            assert torch.equal(value, torch.zeros_like(value)), key
    zeroed_sd = zeroed.state_dict()
    last_weights = [k for k in zeroed_sd if k.startswith("layer") and k.endswith(f".{last}.weight")]
    assert len(last_weights) == sum(_BLOCKS[name])
    for key in last_weights:
        assert torch.equal(zeroed_sd[key], torch.zeros_like(zeroed_sd[key])), key
    assert torch.equal(zeroed_sd["layer1.0.bn1.weight"], torch.ones(64))
    conv = plain.layer4[0].conv2.weight  # kaiming normal, fan_out = out_channels * 3 * 3
    expected_std = (2.0 / (conv.shape[0] * 9)) ** 0.5
    assert abs(conv.std().item() / expected_std - 1) < 0.05


def test_resnet_errors() -> None:
    with pytest.raises(ConfigError, match="resnet18, resnet50"):
        resnet("resnet34", 10, cifar=True)
    with pytest.raises(ConfigError, match="num_classes"):
        resnet("resnet18", 0, cifar=True)


# ------------------------------------------------------------------------------------------ genotypes

# spec §5.3, and the SHA-256 of the reference files (aheuillet/NASiam@e3a1a4c, */genotypes/*.txt)
_PUBLISHED = {
    ("simsiam", "cifar10_resnet18"): (
        "d2fe95717926dd35278df26ff7cc0e49e93cd6c144569078af1a18a12788c9f8",
        {"encoder": ["linear_relu", "linear_silu", "linear_elu", "identity", "identity", "linear_relu"],
         "predictor": ["linear_hardswish", "avgpool_3x3", "avgpool_3x3", "linear_hardswish"]}),
    ("simsiam", "cifar10_resnet50"): (
        "1c7a7d765c72124f43055ec56a9139fbfae311d386b3ed218d6e5415eeac0204",
        {"encoder": ["linear_silu", "linear_hardswish", "linear_hardswish", "linear_hardswish", "linear_silu",
                     "linear_silu"],
         "predictor": ["linear_hardswish", "linear_hardswish", "avgpool_3x3", "linear_silu"]}),
    ("simsiam", "cifar100_resnet50"): (
        "3d1af9bc06a896146aeeec760e2652260289ab3d448526628aac8e92309d06fa",
        {"encoder": ["identity", "linear_silu", "linear_silu", "linear_elu", "linear_silu", "linear_elu"],
         "predictor": ["linear_elu", "linear_elu", "linear_elu", "linear_hardswish"]}),
    ("moco", "cifar10_resnet18"): (
        "6ff7cc0126ed03eb191c74c8fa178911d4d152a2569e89bdd886379879e2fbc1",
        {"encoder": ["avgpool_3x3"] * 4}),
    ("moco", "cifar100_resnet18"): (
        "6ff7cc0126ed03eb191c74c8fa178911d4d152a2569e89bdd886379879e2fbc1",
        {"encoder": ["avgpool_3x3"] * 4}),
    ("moco", "cifar10_resnet50"): (
        "0148c43138ec3bf79cfb5478793af7e60f3c83ec62f7e84416e1d51cdd1299ae",
        {"encoder": ["identity", "avgpool_3x3", "avgpool_3x3", "avgpool_3x3"]}),
    ("simclr", "cifar10_resnet50"): (
        "bd05335215a52f0a3c3744e94d95548869afd7d5ef0d7fefd388e45cea8ead9b",
        {"predictor": ["linear_hardswish", "linear_hardswish", "avgpool_3x3", "linear_relu", "linear_relu",
                       "linear_relu"]}),
}

_SIMSIAM_TEXT = ("Genotype(encoder=[['linear_relu'], ['linear_silu'], ['linear_elu'], ['identity'], ['identity'], "
                 "['linear_relu']], predictor=[['linear_hardswish'], ['avgpool_3x3'], ['avgpool_3x3'], "
                 "['linear_hardswish']])")


def _published_bytes(framework: str, name: str) -> bytes:
    return resources.files("sswp_fast.nasiam").joinpath("published", framework, f"{name}.txt").read_bytes()


def test_published_names() -> None:
    for framework in ("simsiam", "moco", "simclr"):
        assert published_names(framework) == sorted(n for fw, n in _PUBLISHED if fw == framework)


@pytest.mark.parametrize(("framework", "name"), sorted(_PUBLISHED))
def test_published_files_parse_and_round_trip(framework: str, name: str) -> None:
    digest, genes = _PUBLISHED[(framework, name)]
    raw = _published_bytes(framework, name)
    assert hashlib.sha256(raw).hexdigest() == digest
    assert raw.endswith(b"\n") == ((framework, name) == ("simsiam", "cifar10_resnet50"))
    g = published_genotype(framework, name)
    assert g.framework == framework
    assert g.fields() == {field: [[op] for op in ops] for field, ops in genes.items()}
    assert format_genotype(g).encode() == raw.removesuffix(b"\n")
    assert parse_genotype(raw.decode(), framework) == g


def test_format_matches_reference_example() -> None:
    g = parse_genotype(_SIMSIAM_TEXT, "simsiam")
    assert g.encoder is not None and g.encoder[2] == ["linear_elu"]
    assert g.predictor is not None and g.predictor[1] == ["avgpool_3x3"]
    assert format_genotype(g) == _SIMSIAM_TEXT
    edge = NasiamGenotype("moco", encoder=[["identity", "linear_elu"]])  # an 'edge' gene: [second_best, best]
    assert format_genotype(edge) == "Genotype(encoder=[['identity', 'linear_elu']])"
    assert hash(edge) == hash(parse_genotype(format_genotype(edge), "moco"))


def test_published_unknown_name() -> None:
    with pytest.raises(ConfigError, match="available: cifar100_resnet18, cifar10_resnet18, cifar10_resnet50"):
        published_genotype("moco", "cifar100_resnet50")  # the README's -g name that was never published
    with pytest.raises(ConfigError, match="simsiam, moco, simclr"):
        published_names("byol")


@pytest.mark.parametrize("payload", [
    "__import__('os').system('x')",
    "Genotype(encoder=__import__('os').system('x'))",
    "(lambda: __import__('os').system('x'))()",
    "Genotype(encoder=(lambda: [['identity']])())",
    "Genotype.__class__.__subclasses__()",
    "os.system('x')",
    "Genotype(encoder=[[os.system('x')]])",
    "Genotype(encoder=[['identity']]).encoder",
    "Genotype(**{'encoder': [['identity']]})",
    "Genotype([['identity']])",
    "Genotype(encoder=[['identity']] * 2)",
    "Genotype(encoder=[[f'{os.system(1)}']])",
    "Genotype(encoder=[['identity']]); os.system('x')",
    "Genotype(encoder=[['identity']])\nos.system('x')",
    "[" * 200_000,
    "Genotype(encoder=[['identity']])\0",
    "",
])
def test_hostile_text_is_rejected_without_running(payload: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a) or 0)
    with pytest.raises(ConfigError) as info:
        parse_genotype(payload, "moco")
    assert "\n" not in str(info.value)
    assert calls == []


@pytest.mark.parametrize(("text", "framework", "match"), [
    (_SIMSIAM_TEXT, "moco",
     r"fields \(encoder, predictor\) \(a simsiam genotype\), but a moco genotype has \(encoder\)"),
    ("Genotype(encoder=[['identity']])", "simclr", r"a simclr genotype has \(predictor\)"),
    ("Genotype(encoder=[['identity']])", "simsiam", r"has \(encoder, predictor\)"),
    ("Genotype(encoder=[['identity']], encoder=[['identity']])", "moco", "fields"),
    ("Genotype(encoder=[['sep_conv_3x3']])", "moco", "unknown moco op 'sep_conv_3x3' in encoder gene 0"),
    ("Genotype(predictor=[['identity'], ['Linear_relu']])", "simclr", "unknown simclr op 'Linear_relu'"),
    ("Genotype(encoder=[])", "moco", "non-empty list of genes"),
    ("Genotype(encoder=[[]])", "moco", "gene 0 must be a non-empty list"),
    ("Genotype(encoder=['identity'])", "moco", "gene 0 must be a non-empty list"),
    ("Genotype(encoder=(('identity',),))", "moco", "non-empty list of genes"),
    ("Genotype(encoder=[['identity']])", "byol", "unknown NASiam framework"),
])
def test_invalid_genotypes(text: str, framework: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        parse_genotype(text, framework)
    assert "\n" not in str(info.value)


def test_dataclass_validation() -> None:
    with pytest.raises(ConfigError, match="no predictor"):
        NasiamGenotype("moco", encoder=[["identity"]], predictor=[["identity"]])
    with pytest.raises(ConfigError, match="predictor must be"):
        NasiamGenotype("simsiam", encoder=[["identity"]])
    genes = [["linear_relu"]]
    g = NasiamGenotype("simclr", predictor=genes)
    genes[0][0] = "identity"
    assert g.predictor == [["linear_relu"]]


def test_write_read_round_trip(tmp_path) -> None:
    assert genotype_filename("cifar10", "resnet18") == "cifar10_resnet18.txt"
    with pytest.raises(ConfigError, match="plain name"):
        genotype_filename("../x", "resnet18")
    for framework, name in _PUBLISHED:
        g = published_genotype(framework, name)
        path = tmp_path / framework / genotype_filename(*name.split("_"))
        path.parent.mkdir(exist_ok=True)
        write_genotype(path, g)
        assert path.read_bytes() == _published_bytes(framework, name).removesuffix(b"\n")
        assert read_genotype(path, framework) == g
    with pytest.raises(ConfigError, match=r"does not exist; .*cifar10_resnet50"):
        read_genotype(tmp_path / "missing.txt", "simclr")
    bad = tmp_path / "bad.txt"
    bad.write_text("Genotype(encoder=[['identity']])")
    with pytest.raises(ConfigError, match=f"genotype file {bad} has the fields"):
        read_genotype(bad, "simclr")
