"""Search objectives: SimCLR InfoNCE (spec §1.3), supervised cross-entropy, BYOL regression (spec §12).

``info_nce`` runs the compiled op of ``csrc/`` (see :mod:`sswp_fast.losses.compiled_op`) where it is built and
``info_nce_formula``, its PyTorch reference, elsewhere. Rows ``i`` and ``i + N`` of the ``[2N, D]`` features
are the two views of sample ``i``: each row's positive is its partner, its negatives are the other ``2N - 2``
rows, self is excluded.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F

from sswp_fast.losses import compiled_op as compiled


def _check_features(features: torch.Tensor, temperature: float) -> None:
    if features.dim() != 2:
        raise ValueError(f"info_nce expects [2N, D] features, got shape {tuple(features.shape)}")
    if features.shape[0] < 2 or features.shape[0] % 2:
        raise ValueError(f"info_nce needs an even number of rows (two views per sample), got {features.shape[0]}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")


def _similarity_logits(features: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities / τ with self masked out, and each row's partner index."""
    n2 = features.shape[0]
    z = F.normalize(features.to(torch.promote_types(features.dtype, torch.float32)), dim=1)  # >= fp32
    logits = (z @ z.t()) / temperature
    logits = logits.masked_fill(torch.eye(n2, dtype=torch.bool, device=features.device), float("-inf"))
    partner = torch.arange(n2, device=features.device).roll(n2 // 2)
    return logits, partner


def info_nce(features: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Mean InfoNCE loss over the ``2N`` rows (the reference's logits layout under a cross-entropy).

    Runs the compiled op (``csrc/``, no ``2N x 2N`` matrix) where it is built for the features' device, else
    :func:`info_nce_formula` (with a one-time warning when the extension is missing altogether)."""
    _check_features(features, temperature)
    if _use_compiled(features):
        return compiled.info_nce_op(features, temperature)[0]
    _warn_fallback(features.device.type)
    return info_nce_formula(features, temperature)


def info_nce_formula(features: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """The PyTorch formula of :func:`info_nce`: the full similarity matrix under a cross-entropy."""
    _check_features(features, temperature)
    logits, partner = _similarity_logits(features, temperature)
    return F.cross_entropy(logits, partner)


def _use_compiled(features: torch.Tensor) -> bool:
    """The one backend rule: the compiled op where it has kernels for the features' device, else the formula."""
    return compiled.available(features.device.type)


_BUILT_WHEN = {"cpu": "torch is importable at install time",
               "cuda": "torch has CUDA and nvcc is on PATH (or CUDA_HOME is set) at install time"}


@functools.cache
def _warn_fallback(device_type: str) -> None:
    if device_type in _BUILT_WHEN:
        warnings.warn(f"sswp-fast was installed without the compiled InfoNCE op for {device_type} tensors; "
                      "info_nce uses the PyTorch formula. Reinstall with `pip install --no-build-isolation -e .` "
                      f"where {_BUILT_WHEN[device_type]} to build it.", stacklevel=3)


def reference_logits(features: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """The reference's ``[2N, 2N-1]`` logits: column 0 the positive, then the negatives in column order."""
    _check_features(features, temperature)
    logits, partner = _similarity_logits(features, temperature)
    n2 = features.shape[0]
    keep = ~torch.eye(n2, dtype=torch.bool, device=features.device)
    keep[torch.arange(n2), partner] = False
    negatives = logits[keep].view(n2, n2 - 2)
    return torch.cat([logits.gather(1, partner[:, None]), negatives], dim=1)


def info_nce_with_topk(features: torch.Tensor, temperature: float = 0.07) -> tuple[torch.Tensor, torch.Tensor,
                                                                                    torch.Tensor]:
    """:func:`info_nce` plus the top-1 / top-5 instance-discrimination accuracy (percent) the search logs;
    the compiled op yields both from one pass."""
    _check_features(features, temperature)
    if _use_compiled(features):
        loss, rank = compiled.info_nce_op(features, temperature)
        return loss, (rank < 1).float().mean() * 100, (rank < 5).float().mean() * 100
    top1, top5 = info_nce_topk(features)
    return info_nce(features, temperature), top1, top5


@torch.no_grad()
def info_nce_topk(features: torch.Tensor, topk: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """Instance-discrimination accuracy (percent) of the ``2N - 1``-way task: row ``i`` is a top-k hit when
    fewer than ``k`` other rows are more similar to it than its partner."""
    logits, partner = _similarity_logits(features, 1.0)
    positive = logits.gather(1, partner[:, None])
    better = (logits > positive).sum(1)
    return [(better < k).float().mean() * 100 for k in topk]


@torch.no_grad()
def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, topk: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """Classification accuracy (percent) for each k (k clipped to the number of classes)."""
    maxk = min(max(topk), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hits = pred == labels[:, None]
    return [hits[:, :min(k, maxk)].any(1).float().mean() * 100 for k in topk]


def byol_loss(online_prediction: torch.Tensor, target_projection: torch.Tensor) -> torch.Tensor:
    """``2 - 2·cos(p, z)`` per sample, averaged; ``target_projection`` must already be detached."""
    return (2 - 2 * F.cosine_similarity(online_prediction, target_projection, dim=-1)).mean()
