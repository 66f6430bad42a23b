"""The objectives: SimCLR InfoNCE (the compiled op of ``csrc/`` where built, loaded by :mod:`~.compiled_op`,
its PyTorch formula elsewhere), cross-entropy top-k accuracy and BYOL regression (:mod:`~.objectives`)."""

from sswp_fast.losses.objectives import byol_loss, info_nce, info_nce_formula, topk_accuracy

__all__ = ["byol_loss", "info_nce", "info_nce_formula", "topk_accuracy"]
