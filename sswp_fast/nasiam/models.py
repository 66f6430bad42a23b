"""The three NASiam frameworks (spec §3, §6) as one interface: SimSiam, MoCo v2 and SimCLR with a searchable
(:class:`~sswp_fast.nasiam.search_space.HeadSearchCell`) or derived (:class:`~sswp_fast.nasiam.search_space.Cell`)
MLP head on a ResNet backbone.

Every model has ``loss(x1, x2, backbone_grad=True)`` (the framework's SSL loss on two views),
``features(x)`` (what its kNN monitor reads, spec §6.4), ``arch_parameters()`` / ``weight_parameters()`` and
``backbone_state()`` (the keys a linear classifier starts from). With ``backbone_grad=False`` the backbone runs
without building its backward graph: an architecture step only needs gradients of the head's alphas (the
weight gradients the reference computes there are discarded, spec §3 "gradient hygiene").

Deliberate fixes of reference bugs (spec §8): MoCo's key encoder is an EMA copy of the whole query encoder,
searched head included (the reference shares one head object, trainable in search and frozen in pretraining,
§8.7); each head is registered once (§8.18); the alphas are parameters, so they are in every state dict (§8.1).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from sswp_fast.errors import ConfigError
from sswp_fast.losses.objectives import info_nce
from sswp_fast.nasiam.backbones import resnet
from sswp_fast.nasiam.genotypes import NasiamGenotype
from sswp_fast.nasiam.search_space import Cell, HeadSearchCell

FRAMEWORKS = ("simsiam", "moco", "simclr")
SIMSIAM_ENCODER_LAYERS, SIMSIAM_PREDICTOR_LAYERS = 6, 4
MOCO_ENCODER_LAYERS = 4
SIMCLR_PROJECTOR_LAYERS, SIMCLR_HIDDEN = 6, 512


def _head(genotype: NasiamGenotype | None, field: str, dim: int, layers: int, framework: str,
          hidden_dim: int | None = None, out_dim: int | None = None, moco_bn_eps_bug: bool = False) -> nn.Module:
    """A search cell, or the cell the genotype's ``field`` derives."""
    if genotype is None:
        return HeadSearchCell(dim, layers, framework, hidden_dim=hidden_dim, out_dim=out_dim,
                          moco_bn_eps_bug=moco_bn_eps_bug)
    if genotype.framework != framework:
        raise ConfigError(f"a {genotype.framework} genotype cannot build a {framework} model; pass a {framework} one")
    return Cell(dim, getattr(genotype, field), framework, hidden_dim=hidden_dim, out_dim=out_dim,
                moco_bn_eps_bug=moco_bn_eps_bug)


def _backbone_context(backbone_grad: bool):
    return nullcontext() if backbone_grad else torch.no_grad()


class _Model(nn.Module):
    framework = ""

    def arch_parameters(self) -> list[nn.Parameter]:
        return [m.alphas for m in self.modules() if isinstance(m, HeadSearchCell) and m.alphas.requires_grad]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in arch]


class SimSiam(_Model):
    """SimSiam (spec §3.1, §6.1): projector = head cell → ``Linear(prev, dim)`` → ``BN(dim, affine=False)``
    inside ``encoder.fc``; predictor = head cell ``dim → pred_dim → dim``."""

    framework = "simsiam"

    def __init__(self, arch: str = "resnet18", cifar: bool = True, dim: int = 2048, pred_dim: int = 512,
                 genotype: NasiamGenotype | None = None):
        super().__init__()
        self.encoder = resnet(arch, dim, cifar, zero_init_residual=True)
        prev = self.encoder.feature_dim
        self.encoder.fc = nn.Sequential(
            _head(genotype, "encoder", prev, SIMSIAM_ENCODER_LAYERS, self.framework),
            nn.Linear(prev, dim), nn.BatchNorm1d(dim, affine=False))
        self.encoder.fc[1].bias.requires_grad_(False)  # followed by a BN: the reference freezes it
        self.predictor = nn.Sequential(
            _head(genotype, "predictor", dim, SIMSIAM_PREDICTOR_LAYERS, self.framework, hidden_dim=pred_dim))

    def _project(self, x: torch.Tensor, backbone_grad: bool) -> torch.Tensor:
        with _backbone_context(backbone_grad):
            h = self.encoder.features(x)
        return self.encoder.fc(h)

    def loss(self, x1: torch.Tensor, x2: torch.Tensor, backbone_grad: bool = True) -> torch.Tensor:
        """``-½[cos(p1, sg(z2)) + cos(p2, sg(z1))]`` (each view through the encoder on its own, as the
        reference does, so BatchNorm sees one view at a time)."""
        z1, z2 = self._project(x1, backbone_grad), self._project(x2, backbone_grad)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return -(F.cosine_similarity(p1, z2.detach()).mean() + F.cosine_similarity(p2, z1.detach()).mean()) / 2

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder(x), dim=1)

    def backbone_state(self) -> dict[str, torch.Tensor]:
        return {k[len("encoder."):]: v for k, v in self.state_dict().items()
                if k.startswith("encoder.") and not k.startswith("encoder.fc.")}


class MoCo(_Model):
    """MoCo v2 (spec §3.2, §6.2): query encoder with ``fc = head cell → Linear(dim_mlp, dim)``, its EMA copy as
    the key encoder, a queue of ``k`` keys, InfoNCE at temperature ``t`` summed over both view orders."""

    framework = "moco"

    def __init__(self, arch: str = "resnet18", cifar: bool = True, dim: int = 128, k: int = 4096, m: float = 0.999,
                 t: float = 0.1, genotype: NasiamGenotype | None = None, moco_bn_eps_bug: bool = False):
        """``moco_bn_eps_bug`` reproduces the reference's ``BatchNorm1d(in, out)`` (eps = out_dim, spec §8.6)."""
        super().__init__()
        self.k, self.m, self.t = k, m, t
        self.encoder_q = resnet(arch, dim, cifar, zero_init_residual=arch == "resnet18")
        dim_mlp = self.encoder_q.feature_dim
        self.encoder_q.fc = nn.Sequential(_head(genotype, "encoder", dim_mlp, MOCO_ENCODER_LAYERS, self.framework,
                                                moco_bn_eps_bug=moco_bn_eps_bug), nn.Linear(dim_mlp, dim))
        self.encoder_k = copy.deepcopy(self.encoder_q).requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(dim, k), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def _momentum_update(self) -> None:
        for q, key in zip(self.encoder_q.parameters(), self.encoder_k.parameters(), strict=True):
            key.mul_(self.m).add_(q.detach(), alpha=1 - self.m)

    @torch.no_grad()
    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised keys, with the batch shuffled through the key encoder's BatchNorm and restored."""
        order = torch.randperm(x.shape[0], device=x.device)
        keys = F.normalize(self.encoder_k(x[order]), dim=1)
        return keys[torch.argsort(order)]

    def _contrastive(self, q_in: torch.Tensor, keys: torch.Tensor, backbone_grad: bool) -> torch.Tensor:
        with _backbone_context(backbone_grad):
            h = self.encoder_q.features(q_in)
        q = F.normalize(self.encoder_q.fc(h), dim=1)
        positive = (q * keys).sum(1, keepdim=True)
        negative = q @ self.queue.clone().detach()
        logits = torch.cat([positive, negative], dim=1) / self.t
        return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))

    def loss(self, x1: torch.Tensor, x2: torch.Tensor, backbone_grad: bool = True) -> torch.Tensor:
        """The symmetric MoCo loss (summed, as the reference); updates the key encoder first and enqueues the
        keys after, on every call (arch steps included, as the reference, spec §8.8)."""
        if 2 * x1.shape[0] > self.k or self.k % (2 * x1.shape[0]):
            raise ConfigError(f"--moco-k {self.k} must be a multiple of twice the batch ({2 * x1.shape[0]}); "
                              "change --moco-k or --batch-size")
        self._momentum_update()
        k1, k2 = self._keys(x1), self._keys(x2)
        loss = self._contrastive(x1, k2, backbone_grad) + self._contrastive(x2, k1, backbone_grad)
        self._enqueue(torch.cat([k1, k2]))
        return loss

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        ptr = int(self.queue_ptr)
        self.queue[:, ptr:ptr + keys.shape[0]] = keys.T
        self.queue_ptr[0] = (ptr + keys.shape[0]) % self.k

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encoder_q(x), dim=1)

    def backbone_state(self) -> dict[str, torch.Tensor]:
        return {k[len("encoder_q."):]: v for k, v in self.state_dict().items()
                if k.startswith("encoder_q.") and not k.startswith("encoder_q.fc.")}


class SimCLR(_Model):
    """SimCLR (spec §3.3, §6.3): backbone ``f`` (CIFAR ResNet-50 by default), projector ``g`` = head cell
    ``2048 → 512 → feature_dim``, NT-Xent at temperature ``temperature`` through :func:`sswp_fast.info_nce`."""

    framework = "simclr"

    def __init__(self, arch: str = "resnet50", cifar: bool = True, feature_dim: int = 128, temperature: float = 0.5,
                 genotype: NasiamGenotype | None = None):
        super().__init__()
        self.temperature = temperature
        self.f = resnet(arch, 1, cifar)
        self.f.fc = nn.Identity()
        self.g = nn.Sequential(_head(genotype, "predictor", self.f.feature_dim, SIMCLR_PROJECTOR_LAYERS,
                                     self.framework, hidden_dim=SIMCLR_HIDDEN, out_dim=feature_dim))

    def loss(self, x1: torch.Tensor, x2: torch.Tensor, backbone_grad: bool = True) -> torch.Tensor:
        """NT-Xent over the 2B normalised projections; the denominator runs over every other row, positive
        included (spec §3.3), which is :func:`sswp_fast.info_nce` with rows ``i`` and ``i + B`` paired."""
        with _backbone_context(backbone_grad):
            h1, h2 = self.f.features(x1), self.f.features(x2)  # one view at a time through BatchNorm
        return info_nce(F.normalize(torch.cat([self.g(h1), self.g(h2)]), dim=1), self.temperature)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.f.features(x), dim=1)

    def backbone_state(self) -> dict[str, torch.Tensor]:
        return {k[len("f."):]: v for k, v in self.state_dict().items() if k.startswith("f.")}
