"""Triton kernels of the search engine, installed as ``sswp_fast.kernels``.

Each module holds one fused op: its Triton kernels, the launcher, the ``torch.autograd.Function`` and a
pure-PyTorch reference that the tests compare it with. Which backend a run uses is decided in one place,
:mod:`sswp_fast.search.executors.choice`. On CPU tensors the kernels run only under the Triton interpreter
(``TRITON_INTERPRET=1``, set before this package is imported), which is how CI tests them.
"""
