"""Seconds per search epoch, ours and the reference side by side, and the floor under a step: FLOPs and bytes.

    python benchmarks/bench_epoch.py                        # CPU: L=8, C=16, batch 96 -> results/epoch_cpu.{json,md}
    SSWP_REFERENCE=/path/to/SSWP-NAS python benchmarks/bench_epoch.py      # with the reference
    python benchmarks/bench_epoch.py --device cuda          # the default search (L=20, C=36, batch 96)

**Epoch.** A CIFAR search epoch trains on the 25,000-image half (``--train_ratio 0.5``): W = ceil(25000 / batch)
weight steps, and an arch step after every 5th (``--update_arch_every 5``), A = W // 5. Its seconds are
W·t_weight + A·t_arch, from median step times measured interleaved (one weight and one arch step of each
implementation in turn, round after round, in one process, so all see the same load). Data loading and
augmentation are not included. Steps are post-warm-up (paths sampled from the alphas, skip-drop 0.2), as in
the other step benchmarks (``bench_common``).

**Floor.** Every operator of our steps is counted by ``bench_launch_counts.Counts``: FLOPs of convolutions,
matrix products and pools, forward and backward (element-wise work is not counted; ``torch.utils.flop_counter``
alone counts a depthwise convolution's weight gradient about C times over), and bytes as the bytes of its tensor
inputs plus outputs, which is what an unfused execution moves through memory. Both are
counted at the configuration's L and C for batches 2, 4 and 8 (the mean of a few sampled paths each) and
extrapolated to the batch with the quadratic through those three points (every operator is per-sample except
the loss's 2B x 2B similarity, quadratic, and the weight updates, constant), so the default configuration's
counts come from small CPU runs. The time floor on a GPU is max(FLOPs / fp32 peak, bytes / memory bandwidth)
with the vendor's datasheet peaks below; on a GPU the report also gives the measured fraction of that floor.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import reference_harness  # noqa: E402
from bench_common import STEPS, BenchConfig, Stepper, machine_info, write_results  # noqa: E402
from bench_launch_counts import Counts  # noqa: E402
from interleaved import time_interleaved  # noqa: E402

TRAIN_IMAGES = 25_000
UPDATE_ARCH_EVERY = 5
COUNT_BATCHES = (2, 4, 8)

GPU_PEAKS = {
    "H100": {"fp32_flops": 67e12, "bytes_per_s": 3.35e12},
    "H200": {"fp32_flops": 67e12, "bytes_per_s": 4.8e12},
}
"""Datasheet peaks of the SXM parts: FP32 (non-tensor-core) FLOP/s and HBM bandwidth."""


def count_step(stepper: Stepper, step: str, paths: int) -> tuple[float, float]:
    """Mean FLOPs and bytes of ``paths`` steps of kind ``step`` (counted as ``bench_launch_counts`` counts them)."""
    flops = moved = 0.0
    fn = stepper.step_fn(step)
    for _ in range(paths):
        counter = Counts()
        with counter:
            fn()
        flops += counter.flops
        moved += counter.bytes
    return flops / paths, moved / paths


def quadratic_at(xs: tuple[int, ...], ys: list[float], x: float) -> float:
    """The value at ``x`` of the quadratic through the three points (Lagrange form)."""
    (x0, x1, x2), (y0, y1, y2) = xs, ys
    return (y0 * (x - x1) * (x - x2) / ((x0 - x1) * (x0 - x2)) + y1 * (x - x0) * (x - x2) / ((x1 - x0) * (x1 - x2))
            + y2 * (x - x0) * (x - x1) / ((x2 - x0) * (x2 - x1)))


def step_floor(cfg: BenchConfig, paths: int) -> dict[str, dict[str, float]]:
    """FLOPs and unfused bytes per weight / arch step at ``cfg`` (see the module docstring)."""
    samples: dict[str, dict[str, list[float]]] = {step: {"flops": [], "bytes": []} for step in STEPS}
    for batch in COUNT_BATCHES:
        stepper = Stepper("ours", BenchConfig(cfg.layers, cfg.C, batch), "cpu", kernels="torch")
        stepper.weight()  # creates the optimizer state
        for step in STEPS:
            flops, moved = count_step(stepper, step, paths)
            samples[step]["flops"].append(flops)
            samples[step]["bytes"].append(moved)
    return {step: {key: quadratic_at(COUNT_BATCHES, values, cfg.batch) for key, values in counts.items()}
            for step, counts in samples.items()}


def gpu_floors(floor: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Seconds per step on each GPU of :data:`GPU_PEAKS` if it ran at its fp32 or bandwidth peak."""
    return {gpu: {step: max(c["flops"] / peak["fp32_flops"], c["bytes"] / peak["bytes_per_s"])
                  for step, c in floor.items()} for gpu, peak in GPU_PEAKS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--layers", type=int, default=None, help="default: 8 on CPU, 20 on CUDA")
    parser.add_argument("--C", type=int, default=None, help="default: 16 on CPU, 36 on CUDA")
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--paths", type=int, default=3, help="sampled paths averaged per count")
    parser.add_argument("--impls", default="ours,reference", help="reference rows need $SSWP_REFERENCE")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    cfg = BenchConfig(args.layers or (20 if cuda else 8), args.C or (36 if cuda else 16), args.batch)
    weight_steps = math.ceil(TRAIN_IMAGES / cfg.batch)
    arch_steps = weight_steps // UPDATE_ARCH_EVERY
    impls = [i for i in args.impls.split(",") if i and (i != "reference" or reference_harness.reference_path())]

    floor = step_floor(cfg, args.paths)
    print(json.dumps({"floor": floor}), flush=True)
    steppers = {impl: Stepper(impl, cfg, args.device) for impl in impls}
    times = time_interleaved(steppers, args.rounds, args.warmup)
    median = {impl: {step: statistics.median(t) for step, t in d.items()} for impl, d in times.items()}
    epoch = {impl: weight_steps * m["weight"] + arch_steps * m["arch"] for impl, m in median.items()}
    report = {
        "machine": machine_info(), "device": args.device, "config": cfg.label(),
        "epoch": {"train_images": TRAIN_IMAGES, "weight_steps": weight_steps, "arch_steps": arch_steps},
        "seconds": {impl: {step: [round(t, 4) for t in v] for step, v in d.items()} for impl, d in times.items()},
        "median_step_s": median, "epoch_s": epoch, "floor": floor, "gpu_floor_s": gpu_floors(floor),
        "gpu_peaks": GPU_PEAKS,
    }
    if cuda:
        name = torch.cuda.get_device_name()
        gpu = next((g for g in GPU_PEAKS if g in name), None)
        if gpu is not None:
            report["fraction_of_floor"] = {step: report["gpu_floor_s"][gpu][step] / median["ours"][step]
                                           for step in STEPS}
    write_results(args.out, f"epoch_{args.device}", report, render(report))
    print(render(report))
    return 0


def render(report: dict) -> str:
    m = report["machine"]
    where = m["cuda_device"] if report["device"] == "cuda" else f"{m['cpu_model']}, {m['torch_threads']} threads"
    e = report["epoch"]
    lines = [f"# Seconds per search epoch, {report['config']}", "",
             f"{where}; torch {m['torch']}, triton {m['triton']}; {m['date']}. One epoch = {e['weight_steps']} "
             f"weight steps + {e['arch_steps']} arch steps ({e['train_images']} training images); median step "
             "times measured interleaved; data loading and augmentation not included.", "",
             "| implementation | weight step (s) | arch step (s) | epoch (s) | epoch vs ours |",
             "|---|---|---|---|---|"]
    ours = report["epoch_s"]["ours"]
    for impl, med in report["median_step_s"].items():
        lines.append(f"| {impl} | {med['weight']:.3f} | {med['arch']:.3f} | {report['epoch_s'][impl]:.0f} | "
                     f"{report['epoch_s'][impl] / ours:.2f}x |")
    lines += ["", "Floor per step (ours; FLOPs of convolutions and matrix products, bytes an unfused execution "
              "moves), and the time it would take at each GPU's fp32 or bandwidth peak:", "",
              "| step | GFLOP | GB moved | " + " | ".join(f"{g} floor (ms)" for g in report["gpu_floor_s"]) + " |",
              "|---|---|---|" + "---|" * len(report["gpu_floor_s"])]
    for step, c in report["floor"].items():
        floors = " | ".join(f"{report['gpu_floor_s'][g][step] * 1e3:.2f}" for g in report["gpu_floor_s"])
        lines.append(f"| {step} | {c['flops'] / 1e9:.1f} | {c['bytes'] / 1e9:.2f} | {floors} |")
    if report["device"] == "cpu":
        lines += ["", "Achieved on this CPU (ours): " + ", ".join(
            f"{step} {report['floor'][step]['flops'] / report['median_step_s']['ours'][step] / 1e9:.1f} GFLOP/s"
            for step in STEPS)]
    if "fraction_of_floor" in report:
        lines += ["", "Fraction of the floor achieved (ours): " + ", ".join(
            f"{step} {f:.1%}" for step, f in report["fraction_of_floor"].items())]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
