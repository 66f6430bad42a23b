"""Activation memory of a search step: the bytes autograd keeps from the forward pass for the backward pass.

For ``--kernels torch`` (host-planned path, PyTorch modules) and ``--kernels triton`` (device-side dispatch,
slot groups recomputed in backward), one weight-step forward and one arch-step forward along the same sampled
path, from the same weights. Every tensor autograd saves is recorded through ``saved_tensors_hooks`` and the
distinct storages are summed (parameters and other leaves excluded: they live anyway). This is the part of peak
memory that the executors differ in, and it is measurable anywhere: on CPU the Triton kernels run in the
interpreter (tiny configuration), on CUDA at the default search configuration.

    python benchmarks/bench_saved_activations.py                   # CPU: L=5, C=8, batch 8 (interpreter)
    python benchmarks/bench_saved_activations.py --device cuda     # L=20, C=36, batch 96

Writes ``benchmarks/results/saved_activations_{cpu,cuda}.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():  # the Triton kernels run on CPU tensors only in the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from bench_common import CUDA_CONFIG, BenchConfig, Stepper, config_info, machine_info, write_results  # noqa: E402

CPU_CONFIG = BenchConfig(layers=5, C=8, batch=8)


def saved_bytes(stepper: Stepper, step: str) -> int:
    """Bytes of the distinct non-leaf storages autograd saves during the forward pass of one ``step``."""
    engine = stepper.engine
    engine.train()
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not (t.is_leaf and t.requires_grad):
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    arch = step == "arch"
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        active, inactive = engine.sample(skip_drop_prob=0.0, pool_drop_prob=0.0, warmup=False)
        plan = engine._plan(active, inactive, probe=arch, arch=arch)
        engine._loss(stepper.arch_batch if arch else stepper.weight_batch, plan)
    return sum(storages.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--layers", type=int)
    parser.add_argument("--C", type=int)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    base = CPU_CONFIG if args.device == "cpu" else CUDA_CONFIG
    cfg = BenchConfig(layers=args.layers or base.layers, C=args.C or base.C, batch=args.batch or base.batch)
    rows = []
    for step in ("weight", "arch"):
        result = {}
        for kernels in ("torch", "triton"):
            stepper = Stepper("ours", cfg, args.device, kernels=kernels)
            result[kernels] = saved_bytes(stepper, step)
            del stepper
        rows.append({"step": step, "torch_bytes": result["torch"], "triton_bytes": result["triton"],
                     "ratio": result["triton"] / result["torch"]})
        print(f"{step}: torch {result['torch'] / 2**20:.1f} MiB, triton {result['triton'] / 2**20:.1f} MiB, "
              f"ratio {rows[-1]['ratio']:.2f}", flush=True)
    report = {"machine": machine_info(), "config": config_info(cfg), "device": args.device, "rows": rows}
    lines = [f"# Saved activations per step, {args.device} ({report['machine']['cuda_device'] or 'CPU'})", "",
             f"{cfg.label()}; measured {report['machine']['date']}, torch {report['machine']['torch']}, "
             f"triton {report['machine']['triton']}. Bytes autograd keeps from the forward pass for the backward "
             "pass (distinct non-leaf storages).", "",
             "| step | --kernels torch | --kernels triton | triton / torch |", "|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['torch_bytes'] / 2**20:.1f} MiB | {r['triton_bytes'] / 2**20:.1f} MiB | "
              f"{r['ratio']:.2f} |" for r in rows]
    write_results(args.out, f"saved_activations_{args.device}", report, "\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
