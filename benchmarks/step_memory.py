"""Peak memory of search steps for one implementation, in this (fresh) process; prints one JSON object.

    python benchmarks/step_memory.py --impl {ours,quirks,reference} --layers 8 --C 16 --batch 32 --steps 3

Peak RSS (``ru_maxrss``) is a process-wide high-water mark, so each implementation and step kind needs its own
process: ``run_all.py`` starts one per (implementation, step). The process imports everything, builds the
network and optimizers (``rss_after_build_mb``: the baseline), runs ``--warmup`` steps and then ``--steps``
timed steps of the chosen kind, and reports the peak. On CUDA it also reports ``torch.cuda.max_memory_allocated``
over the steps (the statistics are reset after building).
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

MB = 2**20


def current_rss_mb() -> float:
    """Resident set size now (``VmRSS``), in MiB."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    return float("nan")


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
    args = parser.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = BenchConfig(layers=args.layers, C=args.C, batch=args.batch)
    rss_import = current_rss_mb()
    stepper = Stepper(args.impl, cfg, device)
    stepper.sync()
    rss_build = current_rss_mb()
    maxrss_build = max_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        allocated_build = torch.cuda.memory_allocated(device) / MB

    kinds = list(STEPS) if args.step == "both" else [args.step]
    seconds: dict[str, list[float]] = {}
    for kind in kinds:
        fn = stepper.step_fn(kind)
        for _ in range(args.warmup):
            fn()
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        seconds[kind] = times

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
        "seconds": {k: [round(t, 4) for t in v] for k, v in seconds.items()},
    }
    if device.type == "cuda":
        result["cuda_memory_allocated_after_build_mb"] = round(allocated_build, 1)
        result["cuda_max_memory_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / MB, 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
