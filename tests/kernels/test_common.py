"""What the kernel modules share (``sswp_fast.kernels.common``): whether a launch is compiled or interpreted is
decided at the launch, from its tensors' device and ``TRITON_INTERPRET`` at that moment, not when the package was
imported. Every Triton function is a compiled ``JITFunction``; a launch on CPU tensors runs an interpreted twin
whose nested Triton functions, from its own module, another, or Triton's library, are interpreted too. (The
other kernel tests run that way: ``tests/conftest.py`` turns the interpreter on after importing Triton.)"""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

from sswp_fast.kernels import (
    batchnorm,
    common,
    dwpw,
    mixed_activation,
    sampled_dwpw,
    sampled_pool,
    sampled_reduce,
    slot_sum,
)

MODULES = (batchnorm, common, dwpw, mixed_activation, sampled_dwpw, sampled_pool, sampled_reduce, slot_sum)


def test_every_triton_function_is_compiled_whatever_triton_interpret_said_at_import():
    """``@triton.jit`` would make interpreted functions of a package imported under ``TRITON_INTERPRET=1``;
    :func:`common.jit` makes ``JITFunction``s all the same, what a CUDA launch and the sm_90 compile checks need."""
    functions = [value for module in MODULES for value in vars(module).values()
                 if isinstance(value, (JITFunction, InterpretedFunction))]
    assert len(functions) > 30
    assert all(isinstance(fn, JITFunction) for fn in functions)


def test_a_launch_compiles_for_cuda_tensors_and_interprets_for_cpu_ones(monkeypatch):
    """The kernel itself for a CUDA tensor; for a CPU tensor its interpreted twin (made once), whose globals
    map the tile functions it calls, and theirs in turn (``cast_out`` from :mod:`common`), to their twins, while
    the modules keep their compiled functions. Where Triton's own library was imported interpreted, CUDA tensors
    are interpreted too."""
    kernel = sampled_dwpw._sampled_fwd_kernel
    cuda = SimpleNamespace(is_cuda=True)
    monkeypatch.setattr(common, "TRITON_LIBRARY_COMPILED", True)
    assert common.launcher(kernel, cuda) is kernel and not common.interpreted(cuda)
    twin = common.launcher(kernel, torch.empty(0))
    assert isinstance(twin, InterpretedFunction) and common.launcher(kernel, torch.empty(0)) is twin
    tile = twin.fn.__globals__["fwd_tile"]
    assert isinstance(tile, InterpretedFunction) and tile is common.launcher(dwpw.fwd_tile, torch.empty(0))
    assert isinstance(tile.fn.__globals__["cast_out"], InterpretedFunction)
    assert isinstance(twin.fn.__globals__["pool_fwd_tile"], InterpretedFunction)
    assert isinstance(sampled_dwpw.fwd_tile, JITFunction) and isinstance(dwpw.cast_out, JITFunction)
    monkeypatch.setattr(common, "TRITON_LIBRARY_COMPILED", False)
    assert common.launcher(kernel, cuda) is twin and common.interpreted(cuda)


def test_the_interpreter_is_decided_at_each_call(monkeypatch):
    """``TRITON_INTERPRET`` unset in the middle of the process: CPU tensors are refused by the launchers and
    take the ops' PyTorch kernels; set again, they run the kernels in the interpreter. No re-import."""
    x = torch.randn(2, 3, 4, 4)
    mean, rstd = torch.full((3,), 0.5), torch.full((3,), 2.0)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not common.runs_on_triton(x)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        batchnorm.bn_forward(x, mean, rstd)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert common.runs_on_triton(x) and not common.runs_on_triton(x.to("meta"))
    torch.testing.assert_close(batchnorm.bn_forward(x, mean, rstd), (x - 0.5) * 2.0)


_FRESH_PROCESS = r"""
import os
import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from sswp_fast.kernels import batchnorm, sampled_dwpw
from sswp_fast.kernels.sampled_dwpw import Variant
assert "TRITON_INTERPRET" not in os.environ
os.environ["TRITON_INTERPRET"] = "1"  # after the import: the interpreter is asked for at the launch
torch.manual_seed(0)
variants = (Variant(3, 1, 1), Variant(5, 2, 1))
x = torch.randn(1, 6, 5, 5)
banks = [torch.randn(3, 2, 1, 3, 3), torch.randn(3, 2, 2, 1, 1), torch.randn(3, 2, 1, 5, 5), torch.randn(3, 2, 2, 1, 1)]
chosen = torch.tensor([1, -1, 0])
ours = sampled_dwpw.sampled_dwpw_forward(x, chosen, 1, variants, *banks)
torch.testing.assert_close(ours, sampled_dwpw.sampled_dwpw_reference(x, chosen, 1, variants, *banks), atol=1e-4,
                           rtol=1e-4)
y, _, _ = batchnorm.bn_train_forward(x)  # tl.sum, Triton's own @triton.jit function, interpreted
torch.testing.assert_close(y, torch.nn.functional.batch_norm(x, None, None, training=True), atol=1e-4, rtol=1e-4)
fn = batchnorm._bn_finalize_apply_kernel  # and the same process still compiles for a GPU
cex = {"HAS_RUNNING": False, "BANKED": False, "RTNE_BF16_RUNNING": False, "HAS_WEIGHT": True, "HAS_BIAS": True,
       "RTNE_BF16": False, "BLOCK": 1024, "BLOCK_S": 256}
floats = ("eps", "momentum", "inv_m", "inv_m1")
sig = {a: "constexpr" if a in cex else "*i64" if a in ("rows_ptr", "count_ptr") else "*fp32" if a.endswith("_ptr")
       else "fp32" if a in floats else "i32" for a in fn.arg_names}
assert "cubin" in triton.compile(ASTSource(fn, sig, constexprs=cex), target=GPUTarget("cuda", 90, 32)).asm
print("ok")
"""


@pytest.mark.slow(seconds=30)
def test_a_process_imported_without_the_interpreter_interprets_later_and_still_compiles(tmp_path):
    """A fresh process imports the kernels without ``TRITON_INTERPRET``, sets it, runs a slotted forward (nested
    tile functions of two other modules) and a BatchNorm (``tl.sum``) on CPU tensors against their references,
    then compiles a kernel for sm_90: the interpreted launches leave ``triton.language`` as they found it."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    done = subprocess.run([sys.executable, "-c", _FRESH_PROCESS], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]
