"""Predicted GPU seconds per search step and epoch: a model, not a measurement.

Nothing here runs on a GPU. For each executor (the device executor eager and graph-replayed, the PyTorch
executor, and the reference) and each configuration (L=8, C=16 and the default L=20, C=36; batch 96, two
SimCLR views of 32×32 images), a step's time on an H100 and an A100 is predicted from quantities counted on CPU:

* **launches, ATen calls and host syncs per step** (``results/launch_counts_cpu.json``, written by
  ``bench_launch_counts.py`` at L=3 and L=8 in the same run as the reference's). Counts grow by the same amount
  with every normal cell, so L cells have ``count(8) + (L - 8) * (count(8) - count(3)) / 5`` (L >= 3 always
  holds two reduction cells);
* **FLOPs and bytes per step at the configuration's own size**: the PyTorch executor's step on the meta device
  (shapes only), along a path that runs every candidate op equally often, counted by the same counter; each
  other executor's are those times its ratio, in the launch-count run (at small size), to the PyTorch
  executor's same step along the same path (:func:`work_at`).

The model, per step:

* GPU time ``launches * (KERNEL_FLOOR_US + GAP_US) + bytes / bandwidth + FLOPs / fp32 peak`` (``GRAPH_GAP_US``
  instead of ``GAP_US`` when replayed from a CUDA graph). Every kernel pays the floor, and the work is added on
  top: an upper bound, tight when either the launches or the work dominate;
* host time ``ATen calls * HOST_US_PER_OP``, measured on this machine's CPU (the PyTorch executor's step on tiny
  CPU tensors, divided by its ATen calls: dispatch, Python and the tiny kernels themselves; an upper bound for
  views and metadata calls, which the device executor makes many of). A Triton launch is assumed to cost the
  host as much;
* a step without host syncs overlaps the two (``max``); a step with syncs waits for the GPU at each, modelled as
  no overlap (``sum``); a replayed graph has no per-launch host time.

Constants and their sources:

* fp32 peak and HBM bandwidth: NVIDIA's datasheets (H100 SXM5: 67 TFLOPS FP32, 3.35 TB/s HBM3; A100 SXM4
  80 GB: 19.5 TFLOPS FP32, 2.039 TB/s HBM2e);
* ``KERNEL_FLOOR_US``, ``GAP_US``, ``GRAPH_GAP_US``: NVIDIA's "Getting Started with CUDA Graphs" (2019, V100):
  a short kernel of 2.9 µs took 3.8 µs per kernel launched back to back from a stream, 3.4 µs replayed from a
  graph; newer GPUs and drivers are taken to be no slower.

    python benchmarks/gpu_model.py            # results/gpu_model.{json,md}
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import bench_common  # noqa: E402
from bench_common import BenchConfig, Stepper, machine_info, write_results  # noqa: E402
from bench_launch_counts import Counts  # noqa: E402

KERNEL_FLOOR_US = 2.9
GAP_US = 0.9
GRAPH_GAP_US = 0.5
CIFAR10_TRAIN_IMAGES = 50_000
CONFIGS = (BenchConfig(layers=8, C=16, batch=96), BenchConfig(layers=20, C=36, batch=96))


@dataclass(frozen=True)
class Gpu:
    name: str
    fp32_tflops: float
    hbm_tb_per_s: float
    source: str


GPUS = (
    Gpu("H100 SXM", 67.0, 3.35, "NVIDIA H100 Tensor Core GPU datasheet: FP32 67 TFLOPS, HBM3 3.35 TB/s (SXM5)"),
    Gpu("A100 SXM 80GB", 19.5, 2.039, "NVIDIA A100 Tensor Core GPU datasheet: FP32 19.5 TFLOPS, HBM2e 2,039 GB/s"),
)


COUNTED = ("aten", "launches", "syncs", "flops", "bytes")


def counts_at(rows: list[dict], executor: str, step: str, layers: int, keys: tuple[str, ...] = COUNTED) -> dict:
    """A row of the launch-count run extrapolated to ``layers`` cells (linear in the normal cells)."""
    by_layers = {r["layers"]: r for r in rows if r["executor"] == executor and r["step"] == step}
    low, high = by_layers[3], by_layers[8]
    return {key: high[key] + (layers - 8) * (high[key] - low[key]) / 5 for key in keys}


def work_at(rows: list[dict], executor: str, step: str, layers: int, sampled_work: dict[str, int]) -> dict:
    """FLOPs and bytes of ``executor``'s step at full size: ``sampled_work`` (the PyTorch executor's, counted at
    full size) times the executor's ratio to the PyTorch executor's same step along the same sampled path in the
    launch-count run. The reference samples its own paths, so its ratio is to the PyTorch executor's row (another
    path of the same distribution)."""
    counts = counts_at(rows, executor, step, layers, ("flops", "bytes"))
    if "sampled_flops" in next(r for r in rows if r["executor"] == executor):
        base = counts_at(rows, executor, step, layers, ("sampled_flops", "sampled_bytes"))
        base = {"flops": base["sampled_flops"], "bytes": base["sampled_bytes"]}
    else:
        base = counts_at(rows, "torch", step, layers, ("flops", "bytes"))
    return {key: sampled_work[key] * counts[key] / base[key] for key in ("flops", "bytes")}


def representative_path(layers: int, edges: int = 14, ops: int = 7) -> tuple[list[list[int]], list[list[int]]]:
    """Every candidate op equally often (edge ``e`` of cell ``l`` runs ``(e + l) % 7``), and a different second op
    beside each for the arch steps that evaluate a pair."""
    active = [[(e + cell) % ops for e in range(edges)] for cell in range(layers)]
    return active, [[(op + 1) % ops for op in row] for row in active]


def meta_work(cfg: BenchConfig) -> dict[str, dict[str, int]]:
    """FLOPs and bytes of the PyTorch executor's weight and arch steps at ``cfg``'s size, on the meta device."""
    from sswp_fast import Batch, SearchConfig
    from sswp_fast.search.executors.choice import Executor
    from sswp_fast.search.memory_model import FixedPathEngine

    config = SearchConfig(layers=cfg.layers, init_channels=cfg.C, batch_size=cfg.batch, dataset="cifar10",
                          kernels="torch").resolved()
    active, inactive = representative_path(cfg.layers)
    engine = FixedPathEngine(config, 10, Executor("torch", False, "gpu model"), active=active, inactive=inactive)
    views = tuple(torch.empty(cfg.batch, 3, 32, 32, device="meta") for _ in range(2))
    batch = Batch(views, torch.zeros(cfg.batch, dtype=torch.long, device="meta"))
    work = {}
    for step, run in (("weight", lambda: engine.weight_step(batch, warmup=False)),
                      ("arch", lambda: engine.arch_step(batch))):
        counter = Counts()
        with counter:
            run()
        work[step] = {"flops": counter.flops, "bytes": counter.bytes}
    return work


def host_us_per_op(repeats: int = 7) -> float:
    """Median µs per ATen call of the PyTorch executor's weight step on tiny CPU tensors (this machine)."""
    size, bench_common.IMAGE_SIZE = bench_common.IMAGE_SIZE, 8
    stepper = Stepper("ours", BenchConfig(layers=3, C=2, batch=2), "cpu", kernels="torch")
    bench_common.IMAGE_SIZE = size
    stepper.weight()
    counter = Counts()
    with counter:
        stepper.weight()
    calls = counter.summary()["aten"]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        stepper.weight()
        times.append(time.perf_counter() - start)
    return statistics.median(times) / calls * 1e6


def epoch_steps(batch: int) -> tuple[int, int]:
    """Weight and arch steps of a CIFAR-10 search epoch with the default flags: the ``--train_ratio`` share of
    the training images in weight steps, ``--arch_update_steps`` arch steps after every ``--update_arch_every``-th."""
    from sswp_fast import SearchConfig

    defaults = SearchConfig()
    weight = math.ceil(CIFAR10_TRAIN_IMAGES * defaults.train_ratio / batch)
    return weight, weight // defaults.update_arch_every * defaults.arch_update_steps


def predict(counts: dict, work: dict, gpu: Gpu, host_us: float, graph: bool) -> float:
    """Seconds of one step (see the module docstring)."""
    gap = GRAPH_GAP_US if graph else GAP_US
    device = (counts["launches"] * (KERNEL_FLOOR_US + gap) * 1e-6 + work["bytes"] / (gpu.hbm_tb_per_s * 1e12)
              + work["flops"] / (gpu.fp32_tflops * 1e12))
    if graph:
        return device
    host = counts["aten"] * host_us * 1e-6
    return max(host, device) if counts["syncs"] == 0 else host + device


EXECUTORS = (("device, graph-replayed", "device, recompute none", True),
             ("device, eager", "device, recompute none", False),
             ("PyTorch executor", "torch", False),
             ("reference", "reference", False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=Path, default=BENCH_DIR / "results" / "launch_counts_cpu.json")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    rows = json.loads(args.counts.read_text())["rows"]
    host_us = host_us_per_op()
    print(f"host: {host_us:.1f} µs per ATen call", flush=True)
    predictions = []
    for cfg in CONFIGS:
        torch_work = meta_work(cfg)
        print(cfg.label(), torch_work, flush=True)
        weight_steps, arch_steps = epoch_steps(cfg.batch)
        for label, executor, graph in EXECUTORS:
            if not any(r["executor"] == executor for r in rows):
                continue
            seconds = {}
            for step in ("weight", "arch"):
                counts = counts_at(rows, executor, step, cfg.layers)
                work = work_at(rows, executor, step, cfg.layers, torch_work[step])
                for gpu in GPUS:
                    seconds[(gpu.name, step)] = predict(counts, work, gpu, host_us, graph)
            for gpu in GPUS:
                weight, arch = seconds[(gpu.name, "weight")], seconds[(gpu.name, "arch")]
                predictions.append({"config": asdict(cfg), "executor": label, "gpu": gpu.name,
                                    "weight_step_ms": weight * 1e3, "arch_step_ms": arch * 1e3,
                                    "search_epoch_s": weight_steps * weight + arch_steps * arch,
                                    "weight_steps": weight_steps, "arch_steps": arch_steps})
    report = {"machine": machine_info(), "host_us_per_aten_call": host_us, "counts": str(args.counts.name),
              "constants": {"KERNEL_FLOOR_US": KERNEL_FLOOR_US, "GAP_US": GAP_US, "GRAPH_GAP_US": GRAPH_GAP_US,
                            "gpus": [asdict(g) for g in GPUS]},
              "predictions": predictions}
    lines = [f"# Predicted GPU time per search step (a model, not a measurement; {report['machine']['date'][:10]})",
             "", f"By `python benchmarks/gpu_model.py` from `{args.counts.name}` (counted on "
             f"{report['machine']['cpu_model']}); host cost {host_us:.1f} µs per ATen call, measured on that CPU. "
             "The model and its constants: the module docstring. Batch 96 (192 images of 32×32); a CIFAR-10 search "
             f"epoch is {predictions[0]['weight_steps']} weight and {predictions[0]['arch_steps']} arch steps "
             "(default flags; data loading not included).", "",
             "| config | executor | "
             + " | ".join(f"{g.name}: weight / arch step (ms), epoch (s)" for g in GPUS) + " |",
             "|---|---|" + "---|" * len(GPUS)]
    for cfg in CONFIGS:
        for label, _, _ in EXECUTORS:
            cells = [p for p in predictions if p["executor"] == label and p["config"] == asdict(cfg)]
            if cells:
                lines.append(f"| L={cfg.layers}, C={cfg.C} | {label} | " + " | ".join(
                    f"{p['weight_step_ms']:.1f} / {p['arch_step_ms']:.1f}, {p['search_epoch_s']:.0f}" for p in cells)
                    + " |")
    write_results(args.out, "gpu_model", report, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
