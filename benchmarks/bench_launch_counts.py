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
  calls, each a device-to-host synchronisation on a GPU.

The counts depend on the layers and the sampled path, not on channels, batch or image size, so on CPU (where the
Triton kernels run in the interpreter) a small-tensor configuration with the requested number of cells gives the
counts of the large one: ``--layers 8`` (default) stands for L=8, C=16, batch 32.

    python benchmarks/bench_launch_counts.py                 # CPU: results/launch_counts_cpu.{json,md}
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import bench_common  # noqa: E402
import reference_harness  # noqa: E402
from bench_common import BenchConfig, Stepper, machine_info, write_results  # noqa: E402

SYNC_OPS = ("aten._local_scalar_dense", "aten.item", "aten.nonzero", "aten.equal", "aten.is_nonzero")


_METADATA = {torch.ops.aten.detach, torch.ops.aten.alias, torch.ops.aten.lift_fresh, torch.ops.aten.empty,
             torch.ops.aten.empty_strided, torch.ops.aten.empty_like}
"""Operators that launch nothing (allocation from the caching allocator, aliasing)."""


class Counts(TorchDispatchMode):
    """ATen operator calls by name, and Triton launches (counted by the patched launchers below)."""

    active: Counts | None = None

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.compute = 0
        self.triton = 0
        self.host_reads = 0

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
        self.ops[str(func.overloadpacket)] += 1
        if not (func.is_view or func.overloadpacket in _METADATA):
            self.compute += 1
        return func(*args, **(kwargs or {}))

    def summary(self) -> dict:
        aten = sum(self.ops.values())
        syncs = sum(n for op, n in self.ops.items() if op.startswith(SYNC_OPS)) + self.host_reads
        return {"aten": aten, "aten_compute": self.compute, "triton": self.triton,
                "launches": self.compute + self.triton, "syncs": syncs}


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
            with _disable_current_modes():
                return __original(self, *args, **kwargs)

        cls.run = run


def count_step(stepper: Stepper, step: str) -> dict:
    counter = Counts()
    with counter:
        stepper.step_fn(step)()
    return counter.summary()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    _patch_triton_launchers()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = BenchConfig(layers=args.layers, C=4, batch=2)  # counts do not depend on C, batch or image size
    bench_common.IMAGE_SIZE = 8  # the smallest images two reductions leave whole: the interpreter is slow
    variants = [("torch", "ours", "torch", "auto"), ("device, recompute edge", "ours", "triton", "edge"),
                ("device, recompute none", "ours", "triton", "none")]
    skip = reference_harness.skip_reason()
    if skip is None:
        variants.append(("reference", "reference", "auto", "auto"))
    else:
        print(f"reference not counted: {skip}", flush=True)
    rows = []
    for name, impl, kernels, recompute in variants:
        # the reference's step also reports top-5 accuracy, which needs 2 x batch - 1 >= 5 InfoNCE logits
        size = BenchConfig(layers=args.layers, C=4, batch=4) if impl == "reference" else cfg
        stepper = Stepper(impl, size, device, kernels=kernels, recompute=recompute)
        stepper.weight()  # first steps create optimizer state; count a later one
        stepper.arch()
        for step in ("weight", "arch"):
            rows.append({"executor": name, "step": step, **count_step(stepper, step)})
            print(rows[-1], flush=True)
    reference = {r["step"]: r["launches"] for r in rows if r["executor"] == "reference"}
    report = {"machine": machine_info(), "layers": args.layers, "device": device,
              "note": "counts are independent of C, batch and image size; measured at C=4, batch 2 (reference: "
                      "batch 4, its top-5 accuracy needs 7 logits), 8x8 images",
              "rows": rows}
    lines = [f"# Launches and host synchronisations per step, L={args.layers} ({device})", "",
             f"Measured {report['machine']['date']}, torch {report['machine']['torch']}, triton "
             f"{report['machine']['triton']}, by `python benchmarks/bench_launch_counts.py` (Triton kernels in the "
             "interpreter on CPU). Counts do not depend on C, batch or image size. `torch`: the PyTorch executor "
             "(`--kernels torch`); `device`: the device executor (`--kernels triton`, the CUDA default) with "
             "`--recompute edge` (its default where memory is short) and `none` (what `--recompute auto` takes on "
             "a large GPU); "
             "`reference`: the reference's own step code, counted by the same counter in the same run.", "",
             "| executor | step | ATen calls | ATen compute | Triton launches | launches | × reference | syncs |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['launches'] / reference[r['step']]:.2f}" if r["step"] in reference else "n/a"
        lines.append(f"| {r['executor']} | {r['step']} | {r['aten']} | {r['aten_compute']} | {r['triton']} | "
                     f"{r['launches']} | {ratio} | {r['syncs']} |")
    write_results(args.out, f"launch_counts_{device}", report, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
