"""Launches and host synchronisations per search step, which decide a step's speed on a GPU.

For ``--kernels torch`` (host-planned path), ``--kernels triton`` (device-side dispatch) and, when
``$SSWP_REFERENCE`` names a checkout, the reference's own step, one weight step and one arch step are run under
a ``TorchDispatchMode`` that records every ATen operator call (forward, backward and optimizer), with every
Triton kernel launch counted too. Reported per step:

* ``aten``: ATen operator calls; ``aten_compute``: those that are not views or metadata-only (each of those
  launches at least one kernel on a GPU);
* ``triton``: Triton kernel launches;
* ``launches`` = ``aten_compute + triton``: an estimate of the kernel launches on a GPU;
* ``syncs``: operators that return a tensor's value to Python (``.item()``, ``nonzero``...) and ``.tolist()``
  calls, each a device-to-host synchronisation on a GPU;
* ``flops``: the floating-point operations executed, counted as ``torch.utils.flop_counter`` counts them
  (convolutions and matrix products, forward and backward; a convolution's backward as its forward once per
  gradient, see :func:`_convolution_backward_flops`) plus pooling (k² per output element) and the Triton
  ``sswp_fast::sampled_dwpw`` (the variant or pool each slot ran) and ``sswp_fast::sampled_reduce`` ops; the
  "× sampled" column divides a row's FLOPs by ``sampled_flops``, those of the PyTorch executor's same step along
  the path the row's step sampled, which runs each of the path's ops once (not counted for the reference);
* ``bytes``: the bytes of every operand and result of each launch, each counted whole (no cache reuse): an upper
  bound of a step's memory traffic.

One of our Python custom ops (``sswp_fast::*`` but the C++ InfoNCE op, which counts as one launch) counts as what
its implementation runs: its Triton launches and the ATen operators inside it that launch (the fills of its
outputs and gradient buffers, copies), not as one more launch.

The counts depend on the layers and the sampled path, not on channels, batch or image size, so on CPU (where the
Triton kernels run in the interpreter) a small-tensor configuration with the requested number of cells gives the
counts of the large one: ``--layers 8`` stands for L=8, C=16, batch 32.

    python benchmarks/bench_launch_counts.py                 # CPU: results/launch_counts_cpu.{json,md}
    python benchmarks/bench_launch_counts.py --layers 8 --only "device, recompute none" --step arch
                                                             # one row, printed (nothing written)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections import Counter
from pathlib import Path

import torch
from torch._library.custom_ops import OPDEFS
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_leaves

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from torch.utils.flop_counter import flop_registry  # noqa: E402  (imports triton: after TRITON_INTERPRET is set)

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import bench_common  # noqa: E402
import reference_harness  # noqa: E402
from bench_common import (  # noqa: E402
    WEIGHT_POOL_DROP_PROB,
    WEIGHT_SKIP_DROP_PROB,
    BenchConfig,
    Stepper,
    machine_info,
    write_results,
)

SYNC_OPS = ("aten._local_scalar_dense", "aten.item", "aten.nonzero", "aten.equal", "aten.is_nonzero")


_METADATA = {torch.ops.aten.detach, torch.ops.aten.alias, torch.ops.aten.lift_fresh, torch.ops.aten.empty,
             torch.ops.aten.empty_strided, torch.ops.aten.empty_like, torch.ops.aten.new_empty,
             torch.ops.aten.new_empty_strided, torch.ops.aten.promote_types, torch.ops.aten.result_type}
"""Operators that launch nothing: allocation from the caching allocator, aliasing, dtype arithmetic."""


def _nbytes(*trees) -> int:
    """Bytes of the distinct tensors among ``trees`` (nested args, kwargs and results)."""
    tensors = {id(t): t for t in tree_leaves(trees) if isinstance(t, torch.Tensor)}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _pool_flops(out: torch.Tensor, kernel_size: int | list[int]) -> int:
    """k² per output element of a k×k pool (``kernel_size`` as ATen takes it: an int, [k] or [kh, kw])."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else (kernel_size[0], kernel_size[-1])
    return out.numel() * kh * kw


def _sampled_dwpw_flops(out_shape, variant: torch.Tensor, variants: list[int]) -> int:
    """2 × the multiply-adds of each slot's variant (depthwise k×k, then pointwise C×C); an idle slot adds none."""
    n, gc, ho, wo = out_shape
    c = gc // variant.numel()
    with _disable_current_modes():  # reading the indices is the counter's, not the step's
        chosen = variant.detach().cpu().numpy()
    return sum(2 * n * ho * wo * c * (variants[3 * v] ** 2 + c) for v in chosen if v >= 0)


def _sampled_pool_flops(out_shape, variant: torch.Tensor, pool: torch.Tensor | None) -> int:
    """k² = 9 per output element of each slot that pools (no variant, a pool kind); the others add none."""
    if pool is None:
        return 0
    n, gc, ho, wo = out_shape
    with _disable_current_modes():
        pooling = int(((variant < 0) & (pool >= 0)).sum())
    return 9 * n * ho * wo * (gc // pool.numel()) * pooling


def _sampled_reduce_flops(out_shape, reduce: torch.Tensor) -> int:
    """2 × the multiply-adds of each reducing slot's two 1×1 convolutions (C inputs to C/2 outputs each, on the
    output grid); a passing slot adds none."""
    n, gc, ho, wo = out_shape
    c = gc // reduce.numel()
    with _disable_current_modes():
        reducing = int((reduce != 0).sum())
    return 2 * n * ho * wo * c * c * reducing


def _convolution_backward_flops(args) -> int:
    """The forward convolution's FLOPs once per gradient it computes (input, weight). ``flop_counter``'s own formula
    drops the groups from the weight gradient, counting a depthwise convolution's about C times over."""
    grad_out, x, weight, _bias_sizes, stride, padding, dilation, transposed, output_padding, groups, mask = args[:11]
    forward = flop_registry[torch.ops.aten.convolution](x, weight, None, stride, padding, dilation, transposed,
                                                         output_padding, groups, out_val=grad_out)
    return int(forward) * (int(mask[0]) + int(mask[1]))


def _flops(func, args, kwargs, out) -> int:
    """FLOPs of one operator call (0 for the operators that are not counted)."""
    packet = func.overloadpacket
    if packet is torch.ops.aten.convolution_backward:
        return _convolution_backward_flops(args)
    if packet in flop_registry:
        return int(flop_registry[packet](*args, **kwargs, out_val=out))
    name = str(packet)
    if name in ("aten.max_pool2d_with_indices", "aten.avg_pool2d"):
        return _pool_flops(out[0] if isinstance(out, tuple) else out, args[1])
    if name in ("aten.max_pool2d_with_indices_backward", "aten.avg_pool2d_backward"):
        return _pool_flops(args[0], args[2])
    if name == "sswp_fast.sampled_dwpw":  # the convolutions and the pools of the slots that run them
        return _sampled_dwpw_flops(out.shape, args[1], args[3]) + _sampled_pool_flops(out.shape, args[1], args[6])
    if name == "sswp_fast.sampled_dwpw_backward":  # input (and weight) gradients: once (twice) the forward's;
        return ((1 + args[6]) * _sampled_dwpw_flops(args[0].shape, args[2], args[4])  # pools: as ATen's backward
                + _sampled_pool_flops(args[0].shape, args[2], args[8]))
    if name == "sswp_fast.sampled_reduce":
        return _sampled_reduce_flops(out.shape, args[1])
    if name == "sswp_fast.sampled_reduce_backward":  # input (and weight) gradients: once (twice) the forward's
        return (1 + args[5]) * _sampled_reduce_flops(args[0].shape, args[2])
    return 0


class Counts(TorchDispatchMode):
    """ATen operator calls by name, Triton launches (counted by the patched launchers below), FLOPs and bytes."""

    active: Counts | None = None

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.compute = 0
        self.triton = 0
        self.host_reads = 0
        self.flops = 0
        self.bytes = 0

    def __enter__(self):
        Counts.active = self
        self._tolist = torch.Tensor.tolist

        def tolist(tensor: torch.Tensor, __original=self._tolist):
            self.host_reads += 1  # not an ATen operator on CPU tensors; a device-to-host copy on a GPU
            return __original(tensor)

        torch.Tensor.tolist = tolist
        return super().__enter__()

    def __exit__(self, *exc):
        Counts.active = None
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops[str(func.overloadpacket)] += 1
        python_op = OPDEFS.get(func._schema.name)  # one of our Python custom ops (the C++ ones count as one launch)
        if python_op is not None:  # what its implementation runs (launches, fills, copies), not itself
            with _Inside(self):
                out = python_op._init_fn(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
            if _launches(func):
                self.compute += 1
                self.bytes += _nbytes(args, kwargs, out)
        self.flops += _flops(func, args, kwargs, out)
        return out

    def summary(self) -> dict:
        aten = sum(self.ops.values())
        syncs = sum(n for op, n in self.ops.items() if op.startswith(SYNC_OPS)) + self.host_reads
        return {"aten": aten, "aten_compute": self.compute, "triton": self.triton,
                "launches": self.compute + self.triton, "syncs": syncs, "flops": self.flops, "bytes": self.bytes}


def _launches(func) -> bool:
    """Whether an ATen operator launches a kernel on a GPU: not a view, a metadata-only operator or a profiler
    record (``torch.optim`` marks its steps with those)."""
    return not (func.is_view or func.overloadpacket in _METADATA or func.namespace == "profiler")


class _Inside(TorchDispatchMode):
    """The ATen operators that one of our custom ops runs inside its implementation (the outer mode is off there):
    each that launches is counted into ``counts`` as the outer mode counts one, so that an op costs its Triton
    launches plus its fills and copies, and an op on its PyTorch kernel costs what that runs. Its FLOPs stay
    counted at the op (:func:`_flops`)."""

    def __init__(self, counts: Counts):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if _launches(func):
            self.counts.compute += 1
            self.counts.bytes += _nbytes(args, kwargs, out)
        return out


def _patch_triton_launchers() -> None:
    """Count every Triton launch (interpreted or compiled) into the active :class:`Counts`; what a launcher
    does in PyTorch itself (the interpreter copies arguments) is not counted as the step's operators."""
    import triton.runtime.interpreter as interpreter
    import triton.runtime.jit as jit

    for cls in (interpreter.InterpretedFunction, jit.JITFunction):
        original = cls.run

        def run(self, *args, __original=original, **kwargs):
            if Counts.active is None:
                return __original(self, *args, **kwargs)
            Counts.active.triton += 1
            Counts.active.bytes += _nbytes(args, kwargs)
            with _disable_current_modes():
                return __original(self, *args, **kwargs)

        cls.run = run


def count_step(stepper: Stepper, step: str) -> dict:
    """One ``step`` counted; for our executors also ``sampled_flops`` / ``sampled_bytes``, those of the PyTorch
    executor's same step along the path this one sampled (:func:`sampled_work`)."""
    paths = None if stepper.impl == "reference" else _record_paths(stepper.engine)
    counter = Counts()
    with counter:
        stepper.step_fn(step)()
    counts = counter.summary()
    if paths:
        counts.update(sampled_work(stepper, step, *paths[-1]))
    return counts


def _record_paths(engine) -> list:
    """Make ``engine`` keep every path it samples (the (active, inactive) pair of :meth:`SearchEngine.sample`)."""
    paths = []
    sample = engine.sample

    def recorded(**kwargs):
        paths.append(sample(**kwargs))
        return paths[-1]

    engine.sample = recorded
    return paths


def sampled_work(stepper: Stepper, step: str, active: torch.Tensor, inactive: torch.Tensor | None) -> dict:
    """FLOPs and bytes of the PyTorch executor's ``step`` (its second, counted as in :func:`count_step`) along the
    path ``active`` / ``inactive`` at the stepper's size: it runs each sampled op once, so its FLOPs are the
    sampled path's own."""
    from sswp_fast.search.executors.choice import Executor
    from sswp_fast.search.memory_model import FixedPathEngine

    config = dataclasses.replace(stepper.engine.config, kernels="torch", recompute="none")
    engine = FixedPathEngine(config, 10, Executor("torch", False, "the sampled path"), device=str(stepper.device),
                             active=active.tolist(), inactive=None if inactive is None else inactive.tolist())
    if step == "weight":
        def run():
            engine.weight_step(stepper.weight_batch, warmup=False, skip_drop_prob=WEIGHT_SKIP_DROP_PROB,
                               pool_drop_prob=WEIGHT_POOL_DROP_PROB)
    else:
        def run():
            engine.arch_step(stepper.arch_batch)
    run()
    counter = Counts()
    with counter:
        run()
    return {"sampled_flops": counter.flops, "sampled_bytes": counter.bytes}


VARIANTS = (("torch", "ours", "torch", "auto"), ("device, recompute edge", "ours", "triton", "edge"),
            ("device, recompute none", "ours", "triton", "none"))
"""Our executors counted: (name in the table, implementation, ``--kernels``, ``--recompute``)."""


def _per_sampled(row: dict) -> str:
    return f"{row['flops'] / row['sampled_flops']:.2f}" if "sampled_flops" in row else "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[8, 3],
                        help="cell counts to count at; the first is the table's (default 8, and 3 for the growth "
                             "per normal cell that benchmarks/gpu_model.py extrapolates with)")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--only", choices=[name for name, *_ in VARIANTS],
                        help="count this executor alone and print its rows, writing nothing (the whole table takes "
                             "about an hour in the interpreter)")
    parser.add_argument("--step", choices=("weight", "arch"), help="with --only: this step alone")
    args = parser.parse_args(argv)
    if args.step and not args.only:
        parser.error("--step counts one executor's step: give --only too")
    _patch_triton_launchers()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    bench_common.IMAGE_SIZE = 8  # the smallest images two reductions leave whole: the interpreter is slow
    variants = [v for v in VARIANTS if v[0] == args.only] if args.only else list(VARIANTS)
    skip = reference_harness.skip_reason()
    if args.only is None and skip is None:
        variants.append(("reference", "reference", "auto", "auto"))
    elif args.only is None:
        print(f"reference not counted: {skip}", flush=True)
    rows = []
    for layers in args.layers:
        # batch 4: the reference's step also reports top-5 accuracy, which needs 2 x batch - 1 >= 5 InfoNCE logits
        size = BenchConfig(layers=layers, C=4, batch=4)
        for name, impl, kernels, recompute in variants:
            stepper = Stepper(impl, size, device, kernels=kernels, recompute=recompute)
            stepper.weight()  # first steps create optimizer state; count a later one
            stepper.arch()
            for step in (args.step,) if args.step else ("weight", "arch"):
                rows.append({"layers": layers, "executor": name, "step": step, **count_step(stepper, step)})
                print(rows[-1], flush=True)
    if args.only:
        return 0
    table_layers = args.layers[0]
    table = [r for r in rows if r["layers"] == table_layers]
    reference = {r["step"]: r for r in table if r["executor"] == "reference"}
    report = {"machine": machine_info(), "layers": args.layers, "device": device,
              "note": "launches, calls and syncs are independent of C, batch and image size; FLOPs and bytes are "
                      "those of C=4, batch 4 (two views), 8x8 images",
              "rows": rows}
    lines = [f"# Launches and host synchronisations per step, L={table_layers} ({device})", "",
             f"Measured {report['machine']['date']}, torch {report['machine']['torch']}, triton "
             f"{report['machine']['triton']}, by `python benchmarks/bench_launch_counts.py` (Triton kernels in the "
             "interpreter on CPU). Launches and syncs do not depend on C, batch or image size; FLOPs and bytes are "
             "those of C=4, batch 4, 8×8 images (`× sampled`: FLOPs against those of the PyTorch executor's same "
             "step along the same sampled path, which runs each of its ops once; not counted for the reference; "
             "bytes: every operand of every launch counted whole). `torch`: the "
             "PyTorch executor (`--kernels torch`); `device`: the device executor (`--kernels triton`, the CUDA "
             "default) with `--recompute edge` (its default where memory is short) and `none` (what "
             "`--recompute auto` takes on a large GPU); `reference`: the reference's own step code, counted by the "
             "same counter in the same run.", "",
             "| executor | step | ATen calls | ATen compute | Triton launches | launches | × reference | syncs | "
             "MFLOPs | × sampled | MB touched |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        ratio = f"{r['launches'] / reference[r['step']]['launches']:.2f}" if r["step"] in reference else "n/a"
        lines.append(f"| {r['executor']} | {r['step']} | {r['aten']} | {r['aten_compute']} | {r['triton']} | "
                     f"{r['launches']} | {ratio} | {r['syncs']} | {r['flops'] / 1e6:.2f} | {_per_sampled(r)} | "
                     f"{r['bytes'] / 1e6:.1f} |")
    others = [layers for layers in args.layers if layers != table_layers]
    if others:
        lines += ["", f"Also counted at L={', '.join(map(str, others))} (in the JSON): what "
                      "`benchmarks/gpu_model.py` extrapolates the counts to other cell counts with."]
    write_results(args.out, f"launch_counts_{device}", report, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
