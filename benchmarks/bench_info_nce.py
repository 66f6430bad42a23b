"""InfoNCE forward+backward: the compiled op against the PyTorch formula, time and peak extra memory.

    python benchmarks/bench_info_nce.py                        # CPU, all sizes: results/info_nce_cpu.{json,md}
    python benchmarks/bench_info_nce.py --device cuda          # GPU: fp32 and bf16, results/info_nce_cuda.{json,md}
    python benchmarks/bench_info_nce.py --probe op 4096 cpu float32   # one measurement here (prints JSON)

Each (implementation, size, dtype) runs in a fresh process. On CPU, peak memory is the process's peak RSS above
the resident set once the features exist ("extra memory"), which is process-wide, hence one process per cell.
On CUDA it is ``torch.cuda.max_memory_allocated`` above the allocation once the features exist. Timings: one
warm-up pass, then the median of timed forward+backward passes (CUDA: synchronised before and after).
``test_bench_info_nce.py`` times the same passes under pytest-benchmark.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SIZES = (192, 1024, 4096, 16384)
DIM = 128
TEMPERATURE = 0.07
RESULTS = Path(__file__).resolve().parent / "results"
DTYPES = {"cpu": ("float32",), "cuda": ("float32", "bfloat16")}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def loss_fn(impl: str):
    """The function under test: ``op`` = sswp_fast.info_nce (compiled), ``formula`` = the PyTorch formula."""
    from sswp_fast.losses.objectives import info_nce, info_nce_formula

    return info_nce if impl == "op" else info_nce_formula


def make_features(rows: int, device: str, dtype: str):
    import torch

    torch.manual_seed(0)
    return torch.randn(rows, DIM, device=device).to(getattr(torch, dtype)).requires_grad_()


def forward_backward(fn, features) -> None:
    features.grad = None
    fn(features, TEMPERATURE).backward()


def probe(impl: str, rows: int, device: str, dtype: str, rounds: int) -> dict:
    import torch

    fn = loss_fn(impl)
    cuda = device == "cuda"
    features = make_features(rows, device, dtype)
    forward_backward(fn, make_features(8, device, dtype))  # load kernels / libraries before the baseline
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated() / 2**20
    else:
        baseline = _rss_mb()
    times = []
    for i in range(rounds + 1):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        forward_backward(fn, features)
        if cuda:
            torch.cuda.synchronize()
        if i:  # the first pass is a warm-up
            times.append(time.perf_counter() - start)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"impl": impl, "rows": rows, "dim": DIM, "dtype": dtype, "device": device,
            "median_s": statistics.median(times), "times_s": times, "extra_peak_mb": peak - baseline,
            "threads": torch.get_num_threads()}


def table(records: list[dict], device: str, meta: dict) -> list[str]:
    where = meta["cuda_device"] if device == "cuda" else f"{meta['cpu_model']}, {meta['cpu_count']} cores"
    memory = "torch.cuda.max_memory_allocated" if device == "cuda" else "peak RSS"
    lines = [f"# InfoNCE forward+backward, {device.upper()} ({meta['date'][:10]})", "",
             f"- Machine: {where}; Python {meta['python']}, torch {meta['torch']}, triton {meta['triton']}; "
             f"D = {DIM}, temperature {TEMPERATURE}; median of timed passes after one warm-up; each cell a fresh "
             f"process; extra memory = {memory} above the baseline once the features exist.",
             f"- Command: `python benchmarks/bench_info_nce.py --device {device}` at commit "
             f"{meta['sswp_fast_commit']}.", "",
             "| dtype | 2N | op (s) | formula (s) | formula / op | op extra peak (MB) | formula extra peak (MB) "
             "| formula / op memory |",
             "|---|---|---|---|---|---|---|---|"]
    for dtype in DTYPES[device]:
        for rows in SIZES:
            op = next(r for r in records if (r["rows"], r["impl"], r["dtype"]) == (rows, "op", dtype))
            ref = next(r for r in records if (r["rows"], r["impl"], r["dtype"]) == (rows, "formula", dtype))
            memory_ratio = ref["extra_peak_mb"] / max(op["extra_peak_mb"], 1e-3)
            lines.append(f"| {dtype} | {rows} | {op['median_s']:.4f} | {ref['median_s']:.4f} "
                         f"| {ref['median_s'] / op['median_s']:.2f}× | {op['extra_peak_mb']:.1f} "
                         f"| {ref['extra_peak_mb']:.1f} | {memory_ratio:.0f}× |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", nargs=4, metavar=("IMPL", "ROWS", "DEVICE", "DTYPE"))
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.probe:
        impl, rows, device, dtype = args.probe
        print(json.dumps(probe(impl, int(rows), device, dtype, args.rounds)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_common import machine_info

    records = []
    for dtype in DTYPES[args.device]:
        for rows in SIZES:
            rounds = 1 if rows >= 16384 and args.device == "cpu" else args.rounds
            for impl in ("op", "formula"):
                out = subprocess.run([sys.executable, __file__, "--probe", impl, str(rows), args.device, dtype,
                                      "--rounds", str(rounds)], capture_output=True, text=True, check=True)
                records.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(records[-1], flush=True)
    meta = {**machine_info(), "temperature": TEMPERATURE}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"info_nce_{args.device}.json").write_text(json.dumps({**meta, "records": records}, indent=1))
    lines = table(records, args.device, meta)
    (RESULTS / f"info_nce_{args.device}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
