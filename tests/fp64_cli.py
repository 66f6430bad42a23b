"""The ``sswp-fast`` command with float64 as the default dtype, for tests that compare whole runs exactly
(in float32 a search is chaotic enough that two thread counts already end with different paths)."""

import sys

import torch

from sswp_fast.cli import main

if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    sys.exit(main())
