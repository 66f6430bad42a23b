"""Compiled steps (``--compile``) against eager steps, side by side, and what compiling costs.

    python benchmarks/bench_compile.py                 # CPU, L=8, C=16, batch 32 -> results/compile_cpu.{json,md}
    python benchmarks/bench_compile.py --device cuda   # the default search (L=20, C=36, batch 96)

``eager`` is our default engine (host-planned path on CPU, ``--kernels auto``); ``compiled`` is the same engine
with ``--compile MODE``, which runs the device-side dispatch executor under ``torch.compile``. The first weight
step and the first arch step of ``compiled`` compile their graphs (or load them from the cache in
``--compile_cache``, see ``sswp_fast.search.executors.compiled``); their seconds are reported apart. Then both run
interleaved (one weight and one arch step of each in turn, round after round, in one process) and the medians
give the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from bench_common import CPU_CONFIG, CUDA_CONFIG, STEPS, Stepper, config_info, machine_info, write_results  # noqa: E402
from interleaved import time_interleaved  # noqa: E402

from sswp_fast.search.executors.compiled import cache_dir, compiled_graphs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--mode", choices=("default", "max-autotune"), default="default")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    cfg = CPU_CONFIG if args.device == "cpu" else CUDA_CONFIG
    eager = Stepper("ours", cfg, args.device)
    compiled = Stepper("ours", cfg, args.device, compile=args.mode)
    first = {}
    for step in STEPS:
        started = time.perf_counter()
        compiled.step_fn(step)()
        first[step] = time.perf_counter() - started
        print(f"first compiled {step} step: {first[step]:.1f} s", flush=True)
    graphs = compiled_graphs()
    times = time_interleaved({"eager": eager, "compiled": compiled}, args.rounds, warmup=1)
    median = {name: {step: statistics.median(t) for step, t in d.items()} for name, d in times.items()}
    report = {
        "machine": machine_info(), "device": args.device, "config": config_info(cfg), "mode": args.mode,
        "cache_dir": str(cache_dir()), "first_step_s": first, "compiled_graphs": graphs,
        "recompiled_while_timing": compiled_graphs() - graphs,
        "seconds": {name: {step: [round(t, 4) for t in v] for step, v in d.items()} for name, d in times.items()},
        "median_s": median,
        "eager_over_compiled": {step: median["eager"][step] / median["compiled"][step] for step in STEPS},
    }
    write_results(args.out, f"compile_{args.device}", report, render(report, cfg.label()))
    print(render(report, cfg.label()))
    return 0


def render(report: dict, label: str) -> str:
    m = report["machine"]
    where = m["cuda_device"] if report["device"] == "cuda" else f"{m['cpu_model']}, {m['torch_threads']} threads"
    rounds = len(report["seconds"]["eager"]["weight"])
    median = report["median_s"]
    lines = [f"# --compile {report['mode']} vs eager, {label}", "",
             f"{where}; torch {m['torch']}, triton {m['triton']}; {m['date']}. Medians of {rounds} interleaved "
             "rounds after one warm-up round.", "",
             "| step | eager (s) | compiled (s) | eager / compiled | first compiled step (s) |",
             "|---|---|---|---|---|"]
    for step in STEPS:
        lines.append(f"| {step} | {median['eager'][step]:.3f} | {median['compiled'][step]:.3f} "
                     f"| {report['eager_over_compiled'][step]:.2f}x | {report['first_step_s'][step]:.0f} |")
    lines += ["", f"Graphs compiled: {report['compiled_graphs']}, recompilations while timing: "
              f"{report['recompiled_while_timing']}. Cache: `{report['cache_dir']}`."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
