"""SSWP-NAS search: the DARTS space and its super-network, path sampling, the schedule of phases, the
architecture update, the single steps (:mod:`~sswp_fast.search.engine`), the whole run
(:mod:`~sswp_fast.search.run`) and the export of the searched architecture with its weights.

How a step runs on the hardware (PyTorch ops or the device executor's Triton kernels, compiled or captured as a
CUDA graph) lives in :mod:`sswp_fast.search.executors`.
"""
