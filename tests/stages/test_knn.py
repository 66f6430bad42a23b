"""The kNN monitor: weighted votes of the nearest training features."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sswp_fast.stages.knn import knn_accuracy, knn_predict


def test_votes_are_weighted_by_similarity():
    bank = F.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]]), dim=1)
    labels = torch.tensor([0, 1, 1, 1])
    query = F.normalize(torch.tensor([[1.0, 0.1]]), dim=1)
    # k=1: the nearest neighbour decides
    assert knn_predict(query, bank, labels, 2, k=1).tolist() == [0]
    # k=3, sharp temperature: one very close class-0 vote outweighs two farther class-1 votes
    assert knn_predict(query, bank, labels, 2, k=3, temperature=0.05).tolist() == [0]
    # k=3, flat temperature: the two class-1 votes win
    assert knn_predict(query, bank, labels, 2, k=3, temperature=100.0).tolist() == [1]


def test_k_larger_than_the_bank_and_chunking_give_the_same_answer():
    g = torch.Generator().manual_seed(0)
    bank = F.normalize(torch.randn(30, 5, generator=g), dim=1)
    labels = torch.randint(0, 3, (30,), generator=g)
    query = F.normalize(torch.randn(17, 5, generator=g), dim=1)
    whole = knn_predict(query, bank, labels, 3, k=500)
    assert torch.equal(whole, knn_predict(query, bank, labels, 3, k=30, chunk=4))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="k >= 1"):
        knn_predict(torch.ones(1, 2), torch.ones(1, 2), torch.zeros(1, dtype=torch.long), 2, k=0)


def test_accuracy_of_an_encoder_that_separates_the_classes():
    labels = torch.arange(40) % 4
    images = labels.view(-1, 1, 1, 1).expand(40, 3, 2, 2).to(torch.uint8)

    def encoder(x: torch.Tensor) -> torch.Tensor:  # class c -> a point on the circle at angle c
        angle = x[:, 0, 0, 0] * (torch.pi / 2)
        return torch.stack([angle.cos(), angle.sin()], dim=1)

    batches = [(images[i:i + 8], labels[i:i + 8]) for i in range(0, 40, 8)]
    assert knn_accuracy(encoder, batches, batches, lambda x: x.float(), 4, k=5) == 100.0
    assert knn_accuracy(lambda x: torch.ones(x.shape[0], 2), batches, batches, lambda x: x.float(), 4) == 25.0
