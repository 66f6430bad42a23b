"""Path sampling (spec §5.2): which op every edge runs in a step, drawn on the training device.

The reference draws, per edge, with 2-3 host-synchronised multinomials. Here the same joint distribution
is drawn for all edges at once:

* mode ``two``: two distinct ops in proportion to ``softmax(alpha)`` (multinomial without replacement,
  done as the top-2 of ``log p + Gumbel`` noise); after warm-up, a pair containing a pool is redrawn from
  the parametric ops 3-6 with probability ``pool_drop_prob``, and otherwise a pair containing the skip is
  redrawn likewise with probability ``skip_drop_prob`` (quirk §16.6: a redraw replaces *both* ops); the
  active op of the pair is then chosen with probability ``softmax(alpha_a, alpha_b)``;
* mode ``full_v2``: one op in proportion to ``softmax(alpha)``, a skip or pool redrawn from ops 3-6 with
  the respective drop probability.
"""

from __future__ import annotations

import torch

from sswp_fast.search.space import NUM_CANDIDATES, PARAMETRIC_INDICES, POOL_INDICES, SKIP_INDEX

MODES = ("two", "full_v2")


def _gumbel(shape: torch.Size, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(shape, dtype=like.dtype, device=like.device, generator=generator)
    return -torch.log(-torch.log(u.clamp_min(torch.finfo(like.dtype).tiny)))


def _uniform(shape: torch.Size, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, dtype=like.dtype, device=like.device, generator=generator)


def mean_edge_entropy(alpha: torch.Tensor) -> float:
    """The mean over the edges of the entropy of ``softmax(alpha)`` (nats), ``alpha`` [..., 7]: ``ln 7`` (1.946)
    while every edge is uniform, 0 once every edge has decided; how far the search has moved the architecture."""
    logp = torch.log_softmax(alpha.detach().double(), dim=-1)
    return float(-(logp.exp() * logp).sum(-1).mean())


def one_hot(index: torch.Tensor, classes: int = NUM_CANDIDATES) -> torch.Tensor:
    """``float`` one-hot of ``index`` along a new last dimension. Unlike ``F.one_hot``, which checks the range of
    its input on the host for CPU tensors, this never reads ``index``: paths stay on the device."""
    return (index[..., None] == torch.arange(classes, device=index.device)).float()


def sample_paths(alpha: torch.Tensor, *, mode: str = "two", skip_drop_prob: float = 0.0,
                 pool_drop_prob: float = 0.0, warmup: bool = False,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample the path of every edge.

    Args:
        alpha: architecture logits, shape ``[..., 7]`` (candidate order of :data:`sswp_fast.search.space.CANDIDATES`).
        mode: ``"two"`` (active + inactive op) or ``"full_v2"`` (one op).
        skip_drop_prob / pool_drop_prob: redraw probabilities for a sampled skip / pool (ignored in warm-up).
        warmup: warm-up steps never redraw.
        generator: random source on ``alpha``'s device.

    Returns:
        ``(active, inactive)`` long tensors of shape ``alpha.shape[:-1]``; ``inactive`` is None for ``full_v2``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if alpha.shape[-1] != NUM_CANDIDATES:
        raise ValueError(f"alpha must have {NUM_CANDIDATES} candidates in its last dimension, got {alpha.shape}")
    logits = torch.log_softmax(alpha.detach().float(), dim=-1)
    batch = logits.shape[:-1]
    parametric = logits.clone()  # a slice filled in place: a list index would copy the list to the device
    parametric[..., :PARAMETRIC_INDICES[0]].fill_(float("-inf"))  # (the parametric ops are the last candidates)
    draws = 2 if mode == "two" else 1

    def draw(source: torch.Tensor) -> torch.Tensor:
        return (source + _gumbel(source.shape, source, generator)).topk(draws, dim=-1).indices

    sample = draw(logits)
    if not warmup:
        redraw_from = draw(parametric)
        has_pool = (sample == POOL_INDICES[0]) | (sample == POOL_INDICES[1])
        pool_redraw = has_pool.any(-1) & (_uniform(batch, logits, generator) < pool_drop_prob)
        has_skip = (sample == SKIP_INDEX).any(-1)
        skip_redraw = ~pool_redraw & has_skip & (_uniform(batch, logits, generator) < skip_drop_prob)
        sample = torch.where((pool_redraw | skip_redraw).unsqueeze(-1), redraw_from, sample)
    if mode == "full_v2":
        return sample[..., 0], None
    pair_logits = alpha.detach().float().gather(-1, sample)
    first_active = _uniform(batch, logits, generator) < torch.softmax(pair_logits, dim=-1)[..., 0]
    active = torch.where(first_active, sample[..., 0], sample[..., 1])
    inactive = torch.where(first_active, sample[..., 1], sample[..., 0])
    return active, inactive
