"""Peak memory of search steps for one implementation, in this (fresh) process; prints one JSON object.

    python benchmarks/step_memory.py --impl {ours,quirks,reference} --layers 8 --C 16 --batch 32 --steps 3
    python benchmarks/step_memory.py --impl ours --step both --recompute cell --amp bf16 ...

The process imports everything, builds the network and optimizers (``rss_after_build_mb``: the baseline), then
for each step kind runs ``--warmup`` steps and ``--steps`` timed steps and reports the peak. ``ru_maxrss`` is the
process-wide high-water mark; ``peak_rss_mb`` is per step kind: the kernel's high-water mark (``VmHWM``) is
reset through ``/proc/self/clear_refs`` before each kind (Linux), so one process measures both. On CUDA it also
reports ``torch.cuda.max_memory_allocated`` per step kind (the statistics are reset before each).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_common import IMPLEMENTATIONS, STEPS, BenchConfig, Stepper, config_info, device_name  # noqa: E402

from sswp_fast.search.memory_budget import process_status_bytes, reset_peak_rss  # noqa: E402

MB = 2**20


def current_rss_mb() -> float:
    """Resident set size now (``VmRSS``), in MiB."""
    return process_status_bytes("VmRSS") / MB


def peak_rss_mb() -> float:
    """``VmHWM``: the peak resident set since the last :func:`reset_peak_rss` (or the start), in MiB."""
    return process_status_bytes("VmHWM") / MB


def max_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports ``ru_maxrss`` in KiB), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", choices=IMPLEMENTATIONS, required=True)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--C", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="measured steps after the warm-up")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up steps before the measured ones")
    parser.add_argument("--step", choices=STEPS + ("both",), default="weight",
                        help="which step kind to run (both: weight steps, then arch steps)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--kernels", default="auto", help="our --kernels")
    parser.add_argument("--recompute", default="auto", help="our --recompute")
    parser.add_argument("--amp", default="off", help="our --amp")
    args = parser.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = BenchConfig(layers=args.layers, C=args.C, batch=args.batch)
    rss_import = current_rss_mb()
    stepper = Stepper(args.impl, cfg, device, kernels=args.kernels, recompute=args.recompute, amp=args.amp)
    stepper.sync()
    rss_build = current_rss_mb()
    maxrss_build = max_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        allocated_build = torch.cuda.memory_allocated(device) / MB

    kinds = list(STEPS) if args.step == "both" else [args.step]
    seconds: dict[str, list[float]] = {}
    peaks: dict[str, float] = {}
    cuda_peaks: dict[str, float] = {}
    for kind in kinds:
        per_kind = reset_peak_rss(release_free_heap=False)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        fn = stepper.step_fn(kind)
        for _ in range(args.warmup):
            fn()
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        seconds[kind] = times
        if per_kind:
            peaks[kind] = round(peak_rss_mb(), 1)
        if device.type == "cuda":
            cuda_peaks[kind] = round(torch.cuda.max_memory_allocated(device) / MB, 1)

    result = {
        "implementation": args.impl,
        "step": args.step,
        "config": config_info(cfg),
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "warmup_steps": args.warmup,
        "measured_steps": args.steps,
        "rss_after_import_mb": round(rss_import, 1),
        "rss_after_build_mb": round(rss_build, 1),
        "ru_maxrss_after_build_mb": round(maxrss_build, 1),
        "ru_maxrss_mb": round(max_rss_mb(), 1),
        "step_rss_growth_mb": round(max_rss_mb() - rss_build, 1),
        "peak_rss_mb": peaks,
        "kernels": args.kernels,
        "recompute": args.recompute,
        "amp": args.amp,
        "seconds": {k: [round(t, 4) for t in v] for k, v in seconds.items()},
    }
    if device.type == "cuda":
        result["cuda_memory_allocated_after_build_mb"] = round(allocated_build, 1)
        result["cuda_max_memory_allocated_mb"] = max(cuda_peaks.values())
        result["cuda_peak_allocated_mb"] = cuda_peaks
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
