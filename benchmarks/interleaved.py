"""Interleaved timing: all implementations in one process, one step each in turn, round after round.

    python benchmarks/interleaved.py --impls ours,quirks,reference --rounds 5 [--threads 1]

pytest-benchmark times one case after another, so on a shared machine a load change during the run biases the
ratios between implementations. Here every round runs one weight step and one arch step of each implementation
back to back, so all of them see the same load; the medians of this run give the more trustworthy ratios.
Prints one JSON object (per implementation and step: every step's seconds and the median).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_common import CPU_CONFIG, CUDA_CONFIG, IMPLEMENTATIONS, STEPS, Stepper  # noqa: E402


def time_interleaved(steppers: dict[str, Stepper], rounds: int, warmup: int) -> dict[str, dict[str, list[float]]]:
    """Seconds of every timed step, per implementation and step kind: ``warmup`` untimed rounds, then ``rounds``
    rounds of one weight step and one arch step of each implementation in turn."""
    for stepper in steppers.values():
        for _ in range(warmup):
            stepper.weight()
            stepper.arch()
    times: dict[str, dict[str, list[float]]] = {impl: {step: [] for step in STEPS} for impl in steppers}
    for _ in range(rounds):
        for impl, stepper in steppers.items():
            for step in STEPS:
                fn = stepper.step_fn(step)
                t0 = time.perf_counter()
                fn()
                times[impl][step].append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impls", default=",".join(IMPLEMENTATIONS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--frozen", type=int, default=0,
                        help="freeze the first N cells first (the pruning phase: the reference runs all 7 ops there)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = CPU_CONFIG if args.device == "cpu" else CUDA_CONFIG
    impls = [i for i in args.impls.split(",") if i]
    steppers = {impl: Stepper(impl, cfg, args.device, frozen=args.frozen) for impl in impls}
    load_before = os.getloadavg()
    times = time_interleaved(steppers, args.rounds, args.warmup)
    result = {
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "frozen_cells": args.frozen,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "seconds": {impl: {step: [round(t, 4) for t in v] for step, v in d.items()} for impl, d in times.items()},
        "median_s": {impl: {step: statistics.median(v) for step, v in d.items()} for impl, d in times.items()},
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
