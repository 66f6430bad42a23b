"""Peak memory per search step: the reference, our default, and each recompute and precision mode.

    python benchmarks/bench_memory.py                          # CPU, the three configurations below
    SSWP_REFERENCE=/path/to/SSWP-NAS python benchmarks/bench_memory.py
    python benchmarks/bench_memory.py --device cuda --max-batch   # also the largest batch that fits the card

Configurations (SimCLR, mode two, two 32x32 views per sample): L=8/C=16/batch 32, L=20/C=36/batch 16 and the
default CIFAR search L=20/C=36/batch 96. Every (configuration, variant) runs in a fresh process
(``step_memory.py``): one weight step, then one arch step (the first steps of a run, which also allocate the
optimizer state), the peak resident set per step kind (``VmHWM``, reset before each kind) and, on CUDA,
``torch.cuda.max_memory_allocated``. A process whose resident set passes ``--rss-limit-gb`` is stopped and
recorded as such, so a variant that would exhaust the machine (the reference at the default configuration)
cannot take the benchmark down with it.

Writes ``benchmarks/results/memory_{device}.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from bench_common import BenchConfig, machine_info, write_results  # noqa: E402
from reference_harness import reference_path  # noqa: E402

CONFIGS = (BenchConfig(8, 16, 32), BenchConfig(20, 36, 16), BenchConfig(20, 36, 96))
MB = 2**20


@dataclass(frozen=True)
class Variant:
    name: str
    impl: str = "ours"
    recompute: str = "auto"
    amp: str = "off"
    kernels: str = "auto"

    def flags(self) -> list[str]:
        return ["--impl", self.impl, "--recompute", self.recompute, "--amp", self.amp, "--kernels", self.kernels]


def variants(device: str, with_reference: bool) -> list[Variant]:
    """What is measured on ``device``: the default first, then every recompute mode and bf16 alone and with the
    least-memory recompute mode. Mixed precision runs on the PyTorch executor (``--kernels torch``)."""
    out = [Variant("reference", impl="reference")] if with_reference else []
    if device == "cuda":  # default: Triton executor, recompute edge
        out += [Variant("ours (default: triton, edge)"), Variant("triton, none", recompute="none"),
                Variant("triton, cell", recompute="cell"), Variant("torch, none", recompute="none", kernels="torch")]
    else:  # default: PyTorch executor, recompute none
        out += [Variant("ours (default: none)"), Variant("edge", recompute="edge"), Variant("cell", recompute="cell")]
    out += [Variant("bf16", amp="bf16", kernels="torch"),
            Variant("cell + bf16", recompute="cell", amp="bf16", kernels="torch")]
    return out


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024 / MB
    except OSError:
        pass
    return 0.0


def run_watched(cmd: list[str], rss_limit_mb: float) -> dict:
    """Run a ``step_memory.py`` command; stop it if its resident set passes ``rss_limit_mb``."""
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    highest = 0.0
    while proc.poll() is None:
        highest = max(highest, _rss_mb(proc.pid))
        if highest > rss_limit_mb:
            proc.kill()
            proc.communicate()
            return {"error": f"stopped: resident set passed {rss_limit_mb / 1024:.0f} GiB", "exceeded_mb": highest}
        time.sleep(0.2)
    out, err = proc.communicate()
    if proc.returncode != 0:
        tail = err.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        oom = "out of memory" in err.lower()
        return {"error": ("out of memory: " if oom else "") + tail[0], "oom": oom}
    result = json.loads(out.strip().splitlines()[-1])
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def measure(variant: Variant, cfg: BenchConfig, device: str, rss_limit_mb: float, threads: int) -> dict:
    cmd = [sys.executable, str(BENCH_DIR / "step_memory.py"), *variant.flags(), "--step", "both",
           "--layers", str(cfg.layers), "--C", str(cfg.C), "--batch", str(cfg.batch), "--steps", "1",
           "--warmup", "0", "--device", device, "--threads", str(threads)]
    return run_watched(cmd, rss_limit_mb)


def largest_fitting(fits: Callable[[int], bool], start: int, limit: int, granularity: int = 8) -> int:
    """The largest batch ``b <= limit`` (a multiple of ``granularity``, or ``start``) with ``fits(b)``: doubling
    from ``start`` until a batch fails, then bisection; 0 when ``start`` itself does not fit."""
    if not fits(start):
        return 0
    good, bad = start, None
    while bad is None and good < limit:
        trial = min(2 * good, limit)
        if fits(trial):
            good = trial
        else:
            bad = trial
    while bad is not None and bad - good > granularity:
        mid = (good + bad) // 2 // granularity * granularity
        if mid <= good:
            break
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def _cell(result: dict, kind: str, key: str) -> str:
    if "error" in result:
        return "stopped" if "exceeded_mb" in result else ("OOM" if result.get("oom") else "failed")
    value = result.get(key, {}).get(kind)
    return "n/a" if value is None else f"{value / 1024:.2f}"


def markdown(report: dict) -> str:
    info, device = report["machine"], report["device"]
    key = "cuda_peak_allocated_mb" if device == "cuda" else "peak_rss_mb"
    what = "peak CUDA memory allocated" if device == "cuda" else "peak resident set (VmHWM)"
    lines = [f"# Search-step memory ({device})", "",
             f"- Date: {info['date']}; {info['cpu_model']}, {info['cpus_available']} cores"
             + (f"; GPU {info['cuda_device']}" if info.get("cuda_device") else ""),
             f"- Python {info['python']}, torch {info['torch']}, triton {info['triton']}; sswp-fast "
             f"{info['sswp_fast_commit']}; reference {info['reference_path']} @ {info['reference_commit']}",
             f"- {what} in GiB per step kind, one fresh process per row (one weight step, then one arch step, "
             f"no warm-up; SimCLR, mode two, synthetic 32x32 views, batch = samples, two views each); "
             f"seconds: those steps. A process passing {report['rss_limit_gb']} GiB resident is stopped.", ""]
    for entry in report["configs"]:
        cfg = entry["config"]
        lines += [f"## L={cfg['layers']}, C={cfg['C']}, batch {cfg['batch']}", "",
                  f"Measured {entry['date']}; load average before / after {entry['load_average'][0]} / "
                  f"{entry['load_average'][1]}.", "",
                  "| variant | weight step (GiB) | arch step (GiB) | weight step (s) | arch step (s) "
                  "| peak × reference |",
                  "|---|---|---|---|---|---|"]
        ref = entry["results"].get("reference", {})
        ref_peak = max(ref.get(key, {}).values(), default=None) if "error" not in ref else None
        for name, result in entry["results"].items():
            peaks = result.get(key, {}) if "error" not in result else {}
            ratio = f"{max(peaks.values()) / ref_peak:.2f}" if peaks and ref_peak else "n/a"
            secs = result.get("seconds", {})
            lines.append(f"| {name} | {_cell(result, 'weight', key)} | {_cell(result, 'arch', key)} | "
                         f"{secs.get('weight', ['n/a'])[0]} | {secs.get('arch', ['n/a'])[0]} | {ratio} |")
        lines.append("")
    if report.get("largest_batch"):
        lines += ["## Largest batch that fits (L=20, C=36)", "", "| variant | batch |", "|---|---|"]
        lines += [f"| {name} | {batch} |" for name, batch in report["largest_batch"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--configs", default="all", help="comma list of indices into the configurations (0,1,2)")
    parser.add_argument("--rss-limit-gb", type=float, default=20.0, help="stop a process above this resident set")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--max-batch", action="store_true", help="CUDA: also the largest batch that fits")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    chosen = CONFIGS if args.configs == "all" else tuple(CONFIGS[int(i)] for i in args.configs.split(","))
    limit_mb = args.rss_limit_gb * 1024
    todo = variants(args.device, reference_path() is not None)
    path = args.out / f"memory_{args.device}.json"
    report = {"device": args.device, "machine": machine_info(), "rss_limit_gb": args.rss_limit_gb, "configs": []}
    if args.configs != "all" and path.exists():  # measure some configurations again, keep the others
        report["configs"] = json.loads(path.read_text())["configs"]
    for cfg in chosen:
        start = machine_info()
        results = {v.name: measure(v, cfg, args.device, limit_mb, args.threads) for v in todo}
        entry = {"config": {"layers": cfg.layers, "C": cfg.C, "batch": cfg.batch}, "results": results,
                 "date": start["date"], "load_average": [start["load_average"], machine_info()["load_average"]]}
        report["configs"] = [e for e in report["configs"] if e["config"] != entry["config"]] + [entry]
    report["configs"].sort(key=lambda e: (e["config"]["layers"], e["config"]["C"], e["config"]["batch"]))
    if args.max_batch and args.device == "cuda":
        def fits(variant: Variant) -> Callable[[int], bool]:
            return lambda batch: "error" not in measure(variant, BenchConfig(20, 36, batch), "cuda", limit_mb,
                                                        args.threads)

        report["largest_batch"] = {v.name: largest_fitting(fits(v), 16, 4096) for v in todo}
    write_results(args.out, f"memory_{args.device}", report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
