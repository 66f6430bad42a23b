"""The ``sswp-fast`` command with float64 as the default dtype, for tests that compare whole runs exactly
(in float32 a search is chaotic enough that two thread counts already end with different paths).

With ``SSWP_TEST_DEVICE_EXECUTOR=1`` (and ``TRITON_INTERPRET=1``, which ``--kernels triton`` asks for on a CPU) the
device executor runs on its PyTorch kernels instead of the interpreted Triton ones: the same dispatch, banks and
masked update in seconds rather than hours (the Triton kernels are tested against those kernels elsewhere)."""

import os
import sys

import torch

from sswp_fast.cli import main

if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    if os.environ.get("SSWP_TEST_DEVICE_EXECUTOR") == "1":
        from sswp_fast.kernels import common

        common.interpreter_on = lambda: False  # what runs_on_triton asks: CPU tensors take the PyTorch kernels
    sys.exit(main())
