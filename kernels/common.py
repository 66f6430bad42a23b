"""What the kernel modules share: the decorator of their Triton functions and the choice, at each launch, between
compiling a kernel (CUDA tensors) and interpreting it (CPU tensors, under ``TRITON_INTERPRET=1``); the device
checks of their launchers; the fp32 → output-dtype cast (bf16 rounded to nearest even where the interpreter would
truncate); and the weight-gradient buffer their backward launchers add into.

Why a decorator of our own: ``@triton.jit`` decides at decoration time (``triton/runtime/jit.py``, ``jit``'s
``decorator``: ``if knobs.runtime.interpret``) whether a function becomes a ``JITFunction`` (compiled) or an
``InterpretedFunction``, and an interpreted function calls the ``@triton.jit`` functions it uses (ours through its
module's globals, Triton's own such as ``tl.sum`` and ``tl.zeros`` through ``triton.language``) as they were
decorated: a ``JITFunction`` called there raises "Cannot call @triton.jit'd outside of the scope of a kernel".
:func:`jit` always makes a ``JITFunction``, and :func:`launcher` gives a CPU launch an interpreted twin of the
kernel: its Python function re-bound to a copy of its module's globals in which every ``JITFunction`` is its own
twin, and ``tl`` a view of ``triton.language`` whose ``JITFunction``s are interpreted. So CPU tensors are
interpreted whenever ``TRITON_INTERPRET=1`` is set at the launch, whether or not it was set at import.

Triton decides its own library once, when it is imported: under ``TRITON_INTERPRET=1`` then, ``tl.sum`` and the
like are interpreted functions that no compiled kernel can call (:data:`TRITON_LIBRARY_COMPILED` is false), and
CUDA tensors are interpreted too, through host copies, as ``@triton.jit`` kernels would be.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

__all__ = ["TRITON_LIBRARY_COMPILED", "cast_out", "check_device", "interpreted", "interpreter_on", "jit", "launcher",
           "runs_on_triton", "weight_gradient_buffer"]

TRITON_LIBRARY_COMPILED = isinstance(tl.zeros, JITFunction)
"""Whether Triton's own ``@triton.jit`` functions (``tl.zeros``, ``tl.sum``, ...) can be compiled: Triton was imported
without ``TRITON_INTERPRET=1`` (``triton/language/standard.py`` decorates them then)."""


def jit(fn: Callable) -> JITFunction:
    """``@triton.jit`` that compiles whatever ``TRITON_INTERPRET`` says: launch the kernel through
    :func:`launcher`, which interprets it for CPU tensors."""
    return JITFunction(fn)


_TWINS: dict[int, InterpretedFunction] = {}
"""The interpreted twin of each ``JITFunction``, by ``id`` (hashing one computes its cache key, which fails while
the interpreter has ``triton.language`` patched)."""
_TWIN_GLOBALS: dict[int, dict] = {}


class _InterpretedLanguage(types.ModuleType):
    """``triton.language`` as the interpreted twins see it: Triton's own ``JITFunction``s (``tl.sum``, ``tl.zeros``,
    ``tl.cdiv``, ... when Triton was imported without ``TRITON_INTERPRET``) interpreted; everything else, the
    interpreter's patched builtins included, looked up on ``triton.language`` at each use."""

    def __getattr__(self, name: str):
        value = getattr(tl, name)
        if not isinstance(value, JITFunction):
            return value
        if id(value) not in _TWINS:
            _TWINS[id(value)] = InterpretedFunction(_rebound(value.fn, _twin_globals(value.fn.__globals__, False)))
        return _TWINS[id(value)]


_LANGUAGE = _InterpretedLanguage(tl.__name__)


def _twin_globals(module_globals: dict, twins: bool = True) -> dict:
    """A copy of a module's globals (made once a module) for interpreted functions: with ``twins`` (ours) every
    ``JITFunction`` in it is its interpreted twin and ``tl`` is :data:`_LANGUAGE`; without (Triton's library) its
    functions stay, so that the interpreter still recognises the reductions' combine functions. The interpreter
    patches ``triton.language`` and ``triton.language.core`` during a launch, finding them in the launched
    kernel's globals (under names of their own here): both, so that the calls into the library, which patch
    ``core`` again, leave nothing patched behind."""
    twin = _TWIN_GLOBALS.get(id(module_globals))
    if twin is None:
        twin = _TWIN_GLOBALS[id(module_globals)] = dict(module_globals)
        twin.update(_triton_language=tl, _triton_language_core=tl.core)
        for name, value in module_globals.items():
            if twins and isinstance(value, JITFunction):
                twin[name] = _interpreted_twin(value)
            elif twins and value is tl:
                twin[name] = _LANGUAGE
    return twin


def _rebound(raw: Callable, namespace: dict) -> types.FunctionType:
    """``raw`` with ``namespace`` for its globals."""
    clone = types.FunctionType(raw.__code__, namespace, raw.__name__, raw.__defaults__, raw.__closure__)
    clone.__qualname__, clone.__module__, clone.__doc__ = raw.__qualname__, raw.__module__, raw.__doc__
    return clone


def _interpreted_twin(fn: JITFunction) -> InterpretedFunction:
    """``fn`` for the interpreter: its Python function re-bound to :func:`_twin_globals` of its module, so that
    the functions it calls are interpreted too."""
    if id(fn) not in _TWINS:
        namespace = _twin_globals(fn.fn.__globals__)  # may make fn's twin on the way (a module's own functions)
        if id(fn) not in _TWINS:
            _TWINS[id(fn)] = InterpretedFunction(_rebound(fn.fn, namespace))
    return _TWINS[id(fn)]


def launcher(kernel: JITFunction, like: torch.Tensor) -> JITFunction | InterpretedFunction:
    """What launches ``kernel`` (``launcher(kernel, x)[grid](...)``) on ``like``'s device: the kernel itself,
    compiled, for CUDA tensors; its interpreted twin for CPU tensors (which the launchers first check with
    :func:`check_device`), and for CUDA ones where Triton's library is interpreted
    (:data:`TRITON_LIBRARY_COMPILED`)."""
    return kernel if like.is_cuda and TRITON_LIBRARY_COMPILED else _interpreted_twin(kernel)


def interpreted(x: torch.Tensor) -> bool:
    """Whether a launch on ``x``'s device is interpreted (see :func:`launcher`), which sizes the launchers' tiles and
    has the bf16 outputs rounded by hand."""
    return not (x.is_cuda and TRITON_LIBRARY_COMPILED)


def interpreter_on() -> bool:
    """Whether CPU tensors may run the kernels in the Triton interpreter: ``TRITON_INTERPRET=1`` (Triton's
    ``knobs.runtime.interpret``), read at each call."""
    return bool(triton.knobs.runtime.interpret)


def runs_on_triton(x: torch.Tensor) -> bool:
    """Whether the kernels can run on ``x``: CUDA tensors, and CPU tensors under the interpreter (meta tensors,
    which the memory model runs, take the PyTorch path)."""
    return x.is_cuda or (x.device.type == "cpu" and interpreter_on())


def check_device(*tensors: torch.Tensor | None) -> None:
    """One-line error for CPU tensors when the interpreter is off."""
    for t in tensors:
        if t is not None and not t.is_cuda and not interpreter_on():
            raise RuntimeError("sswp_fast Triton kernels got CPU tensors but TRITON_INTERPRET=1 is not set: export "
                               "it (the Triton interpreter, slow) or use CUDA tensors")


@jit
def cast_out(y, ptr, ROUND_BF16: tl.constexpr):
    """fp32 ``y`` cast to ``ptr``'s element type. ``ROUND_BF16`` first rounds ``y`` to the nearest bf16 value, ties
    to even, by bit arithmetic: the interpreter's own fp32→bf16 cast truncates (even with
    ``fp_downcast_rounding="rtne"``), a GPU's rounds to nearest. The result is exact in bf16, so the cast that
    follows cannot round it again. NaNs pass through unchanged."""
    if ROUND_BF16:
        bits = y.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        y = tl.where(y == y, bits.to(tl.float32, bitcast=True), y)
    return y.to(ptr.dtype.element_ty)


def weight_gradient_buffer(grad_out: torch.Tensor | None, size: int, device: torch.device) -> torch.Tensor:
    """The flat fp32 tensor a backward launcher's kernels add ``size`` weight-gradient elements into (with
    atomics): ``grad_out`` when given (a caller's zero buffer, shared by several ops: no fill here), after
    checking it, else a fresh zero one (one fill)."""
    if grad_out is None:
        return torch.zeros(size, device=device, dtype=torch.float32)
    if grad_out.numel() != size or grad_out.dtype != torch.float32 or not grad_out.is_contiguous():
        raise ValueError(f"grad_out must be a contiguous fp32 tensor of {size} elements, got "
                         f"{tuple(grad_out.shape)} {grad_out.dtype}")
    return grad_out
