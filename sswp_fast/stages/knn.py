"""The kNN monitor, the standard read-out of a self-supervised encoder (Wu et al. 2018, as in the SimSiam and
NASiam monitors): every test image is classified by a vote of its ``k`` most cosine-similar training images,
each vote weighted by ``exp(similarity / temperature)``. No training is involved, so it scores any checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

Encoder = Callable[[torch.Tensor], torch.Tensor]
"""Maps a normalised image batch ``[B, 3, H, W]`` to features ``[B, D]``."""

KNN_K = 200
KNN_TEMPERATURE = 0.1


@torch.no_grad()
def extract_features(encoder: Encoder, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     transform: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised features ``[N, D]`` and labels ``[N]`` of every ``(uint8 images, labels)`` batch."""
    features, labels = [], []
    for images, targets in batches:
        features.append(F.normalize(encoder(transform(images)).float(), dim=1))
        labels.append(targets)
    return torch.cat(features), torch.cat(labels)


@torch.no_grad()
def knn_predict(query: torch.Tensor, bank: torch.Tensor, bank_labels: torch.Tensor, num_classes: int,
                k: int = KNN_K, temperature: float = KNN_TEMPERATURE, chunk: int = 1024) -> torch.Tensor:
    """Predicted class of every row of ``query`` (``[M, D]``, L2-normalised) from ``bank`` ``[N, D]``."""
    if k < 1 or temperature <= 0:
        raise ValueError(f"kNN needs k >= 1 and a positive temperature, got k={k}, temperature={temperature}")
    k = min(k, bank.shape[0])
    predictions = []
    for rows in query.split(chunk):
        similarity, neighbours = (rows @ bank.T).topk(k, dim=1)
        weights = (similarity / temperature).exp()
        votes = torch.zeros(rows.shape[0], num_classes, device=rows.device, dtype=weights.dtype)
        votes.scatter_add_(1, bank_labels[neighbours], weights)
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


@torch.no_grad()
def knn_accuracy(encoder: Encoder, train_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                 test_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                 transform: Callable[[torch.Tensor], torch.Tensor], num_classes: int, k: int = KNN_K,
                 temperature: float = KNN_TEMPERATURE) -> float:
    """Top-1 kNN accuracy (percent) on ``test_batches`` with the training images as the memory bank."""
    bank, bank_labels = extract_features(encoder, train_batches, transform)
    query, labels = extract_features(encoder, test_batches, transform)
    predicted = knn_predict(query, bank, bank_labels, num_classes, k, temperature)
    return float((predicted == labels).float().mean()) * 100
