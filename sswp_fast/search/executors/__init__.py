"""How a search step runs: :mod:`~.choice` picks the executor; :mod:`~.device` is the device executor (the
sampled path kept on the device, Triton kernels), with its parameter banks (:mod:`~.banks`) and weight step
(:mod:`~.bank_optimizer`); :mod:`~.compiled` is ``torch.compile`` of the steps and :mod:`~.cuda_graphs` their
capture as CUDA graphs. The PyTorch executor is the super-network's own forward (:mod:`sswp_fast.search.supernet`).
"""
