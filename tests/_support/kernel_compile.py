"""Compile-only checks of Triton kernels for the lent GPUs (sm_90: H100/H200), on a machine without one: each
kernel through Triton's CUDA backend to a cubin, in a subprocess that imports the module without
``TRITON_INTERPRET`` (the test process interprets)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_SCRIPT = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import importlib
module, kernels, dtypes, shared, ints, fp32 = json.loads(sys.argv[1])
module = importlib.import_module(module)
count = 0
for dtype in dtypes:
    for name, own in kernels.items():
        fn = getattr(module, name)
        constexprs = {**shared, **own, "ROUND_BF16": dtype == "bf16"}
        constexprs = {k: v for k, v in constexprs.items() if k in fn.arg_names}
        sig = {a: "constexpr" if a in constexprs else "*i64" if a in ints else "*fp32" if a in fp32
               else f"*{dtype}" if a.endswith("_ptr") else "i32" for a in fn.arg_names}
        compiled = triton.compile(ASTSource(fn, sig, constexprs=constexprs), target=GPUTarget("cuda", 90, 32))
        assert "cubin" in compiled.asm
        count += 1
print(count, "ok")
"""


def compiles_for_sm90(cache: Path, module: str, kernels: dict[str, dict], dtypes: tuple[str, ...],
                      constexprs: dict, ints: tuple[str, ...] = (), fp32: tuple[str, ...] = ()) -> None:
    """Compile every kernel ``name`` of ``module`` (with its own and the ``constexprs`` shared ones, ``ROUND_BF16``
    set per dtype) for each of ``dtypes``: pointers are of that dtype, except ``ints`` (int64) and ``fp32``;
    scalars are int32. Triton's cache goes to ``cache``, so nothing is reused from an earlier run."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(cache)
    spec = json.dumps([module, kernels, list(dtypes), constexprs, list(ints), list(fp32)])
    done = subprocess.run([sys.executable, "-c", _SCRIPT, spec], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"{len(kernels) * len(dtypes)} ok", done.stdout
