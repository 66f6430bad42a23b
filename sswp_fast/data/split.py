"""Deterministic, class-balanced train/valid splitting (spec §1.2 ``get_split_list`` and §2.2).

The split never depends on the user's ``--seed``: it always uses a private CPU ``torch.Generator`` seeded with 0,
so the same dataset gives the same split in every run, exactly as the reference ``random_sample_valid_set``.
"""

from __future__ import annotations

import torch

from sswp_fast.errors import DataError

__all__ = ["split_list", "class_balanced_split", "SPLIT_SEED"]

#: Seed of the private generator behind :func:`class_balanced_split` (fixed by the reference code).
SPLIT_SEED = 0


def split_list(n: int, k: int) -> list[int]:
    """Split ``n`` into ``k`` near-equal non-negative integers; the first ``n % k`` entries get one more.

    >>> split_list(10, 3)
    [4, 3, 3]
    """
    if k <= 0:
        raise ValueError(f"split_list needs k > 0, got k={k}")
    if n < 0:
        raise ValueError(f"split_list needs n >= 0, got n={n}")
    base, rem = divmod(n, k)
    return [base + 1 if i < rem else base for i in range(k)]


def _as_class_ids(labels: torch.Tensor) -> torch.Tensor:
    """Labels as a 1-D int64 CPU tensor (one-hot/probability rows → argmax, floats → truncated like ``int()``)."""
    labels = torch.as_tensor(labels).detach().cpu()
    if labels.dim() == 2:
        labels = labels.argmax(dim=1)
    elif labels.dim() != 1:
        raise ValueError(f"labels must be 1-D class ids or 2-D one-hot rows, got shape {tuple(labels.shape)}")
    return labels.to(torch.int64)


def class_balanced_split(labels: torch.Tensor, valid_size: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(len(labels))`` into ``(train_idx, valid_idx)`` with ``valid_size`` spread evenly over classes.

    Reference semantics (spec §2.2): draw ``randperm(len(labels))`` from a private generator seeded with 0, give
    class ``c`` the quota ``split_list(valid_size, num_classes)[c]``, and walk the permutation: an index goes to
    ``valid`` while its class still has quota left, otherwise to ``train``. Both outputs are int64 CPU tensors in
    permutation order. A class with fewer members than its quota simply contributes all its members to ``valid``.

    Vectorised: the rank of each element among the elements of its class, in permutation order, comes from one
    stable sort; an element is in ``valid`` exactly when that rank is below its class quota.
    """
    ids = _as_class_ids(labels)
    n = ids.numel()
    if n and (int(ids.min()) < 0 or int(ids.max()) >= num_classes):
        raise DataError(
            f"labels must lie in 0..{num_classes - 1} but range over {int(ids.min())}..{int(ids.max())}; "
            "check that the dataset folder matches the dataset name"
        )
    quotas = torch.tensor(split_list(valid_size, num_classes), dtype=torch.int64)

    gen = torch.Generator(device="cpu")
    gen.manual_seed(SPLIT_SEED)
    perm = torch.randperm(n, generator=gen)

    lab = ids[perm]
    order = torch.sort(lab, stable=True).indices  # groups classes, keeping permutation order inside a class
    counts = torch.bincount(lab, minlength=num_classes)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.int64)
    rank[order] = torch.arange(n, dtype=torch.int64) - starts[lab[order]]
    is_valid = rank < quotas[lab]
    return perm[~is_valid], perm[is_valid]
