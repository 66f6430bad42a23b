"""Weight-preserving downstream stages: the compact network of a genotype (:mod:`~.compact`), built-in genotypes,
``train`` / ``finetune`` / ``linear-eval`` / ``pretrain`` / ``knn`` runs (:mod:`~.run`, flags in :mod:`~.config`)
and the kNN monitor (:mod:`~.knn`)."""
