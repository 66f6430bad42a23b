"""InfoNCE forward+backward: the compiled op against the PyTorch formula, time and peak extra memory.

    python benchmarks/bench_info_nce.py                 # all sizes, CPU; writes results/info_nce_cpu.{json,md}
    python benchmarks/bench_info_nce.py --probe op 4096 # one measurement in this process (prints JSON)

Each (implementation, size) runs in a fresh process, because peak RSS is process-wide: the probe records the
resident set after the features exist, runs warm-up + timed forward+backward passes, and reports the peak RSS
above that baseline ("extra memory").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

SIZES = (192, 1024, 4096, 16384)
DIM = 128
RESULTS = Path(__file__).resolve().parent / "results"


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def probe(impl: str, rows: int, rounds: int) -> dict:
    import torch

    from sswp_fast.losses import info_nce, info_nce_formula

    fn = info_nce if impl == "op" else info_nce_formula
    torch.manual_seed(0)
    features = torch.randn(rows, DIM, requires_grad=True)
    fn(torch.randn(8, DIM, requires_grad=True), 0.07).backward()  # load kernels before the baseline
    baseline = _rss_mb()
    times = []
    for i in range(rounds + 1):
        features.grad = None
        start = time.perf_counter()
        fn(features, 0.07).backward()
        if i:  # the first pass is a warm-up
            times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"impl": impl, "rows": rows, "dim": DIM, "median_s": statistics.median(times), "times_s": times,
            "extra_peak_mb": peak - baseline, "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", nargs=2, metavar=("IMPL", "ROWS"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe[0], int(args.probe[1]), args.rounds)))
        return
    import torch

    records = []
    for rows in SIZES:
        rounds = 1 if rows >= 16384 else args.rounds
        for impl in ("op", "formula"):
            out = subprocess.run([sys.executable, __file__, "--probe", impl, str(rows), "--rounds", str(rounds)],
                                 capture_output=True, text=True, check=True)
            records.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(records[-1], flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    meta = {"date": str(date.today()), "machine": f"{cpu}, {os.cpu_count()} cores", "python": platform.python_version(),
            "torch": torch.__version__, "device": "cpu", "temperature": 0.07, "load_after": os.getloadavg()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "info_nce_cpu.json").write_text(json.dumps({**meta, "records": records}, indent=1))
    lines = [f"# InfoNCE forward+backward, CPU ({meta['date']})", "",
             f"- Machine: {meta['machine']}; Python {meta['python']}, torch {meta['torch']}; D = {DIM}, "
             f"temperature 0.07; median of timed passes after one warm-up; each cell a fresh process.", "",
             "| 2N | op (s) | formula (s) | formula / op | op extra peak (MB) | formula extra peak (MB) |",
             "|---|---|---|---|---|---|"]
    for rows in SIZES:
        op = next(r for r in records if r["rows"] == rows and r["impl"] == "op")
        ref = next(r for r in records if r["rows"] == rows and r["impl"] == "formula")
        ratio = ref["median_s"] / op["median_s"]
        lines.append(f"| {rows} | {op['median_s']:.4f} | {ref['median_s']:.4f} | {ratio:.2f}× "
                     f"| {op['extra_peak_mb']:.1f} | {ref['extra_peak_mb']:.1f} |")
    (RESULTS / "info_nce_cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
