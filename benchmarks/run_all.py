"""Run the search-step benchmark and the per-process memory probe for every implementation; write the results.

    SSWP_REFERENCE=/path/to/SSWP-NAS python benchmarks/run_all.py            # CPU: L=8, C=16, batch 32
    python benchmarks/run_all.py --device cuda                                # GPU: L=20, C=36, batch 96

Writes ``benchmarks/results/search_step_{device}.json`` (everything: machine, versions, per-round times,
memory probes) and ``search_step_{device}.md`` (the table). Timings are taken twice: by pytest-benchmark (one
case after another) and by ``interleaved.py`` (one process, implementations in turn, so a change of machine load
during the run cannot bias the ratios). Without ``SSWP_REFERENCE`` the reference rows are
left out (and said to be). Timings come from ``pytest benchmarks/test_bench_search_step.py --benchmark-only``
(pytest-benchmark, ``--benchmark-json``); memory from ``step_memory.py``, one fresh process per implementation
and step kind, since peak RSS is process-wide.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from bench_common import (  # noqa: E402
    CPU_CONFIG,
    CUDA_CONFIG,
    IMPLEMENTATIONS,
    STEPS,
    config_info,
    machine_info,
    write_results,
)
from reference_harness import skip_reason  # noqa: E402


def run_timings(device: str, rounds: int, warmup: int, threads: int, impls: list[str]) -> list[dict]:
    """Run the pytest-benchmark cases of ``device`` for ``impls``; return pytest-benchmark's records."""
    env = dict(os.environ, SSWP_BENCH_ROUNDS=str(rounds), SSWP_BENCH_WARMUP=str(warmup))
    if threads > 0:
        env["SSWP_BENCH_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bench.json"
        selector = " or ".join(f"[{impl}-" for impl in impls)
        cmd = [sys.executable, "-m", "pytest", str(BENCH_DIR / "test_bench_search_step.py"), "--benchmark-only",
               f"--benchmark-json={out}", "-p", "no:cacheprovider", "-q", "-rs",
               "-k", f"test_search_step_{device} and ({selector})"]
        print("+", " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, cwd=REPO, env=env, check=False)
        if proc.returncode not in (0, 5) or not out.exists():
            raise SystemExit(f"benchmark run failed (exit {proc.returncode})")
        return json.loads(out.read_text())["benchmarks"]


def _run_json(cmd: list[str]) -> dict:
    """Run a benchmark script that prints one JSON object as its last line; an error record if it fails."""
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_memory(impl: str, step: str, device: str, cfg, steps: int, warmup: int, threads: int) -> dict:
    cmd = [sys.executable, str(BENCH_DIR / "step_memory.py"), "--impl", impl, "--step", step,
           "--layers", str(cfg.layers), "--C", str(cfg.C), "--batch", str(cfg.batch), "--steps", str(steps),
           "--warmup", str(warmup), "--device", device, "--threads", str(threads)]
    return _run_json(cmd)


def run_interleaved(device: str, rounds: int, warmup: int, threads: int, impls: list[str], frozen: int = 0) -> dict:
    cmd = [sys.executable, str(BENCH_DIR / "interleaved.py"), "--impls", ",".join(impls), "--rounds", str(rounds),
           "--warmup", str(warmup), "--device", device, "--threads", str(threads), "--frozen", str(frozen)]
    return _run_json(cmd)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def summarize(timings: list[dict], memory: dict, interleaved: dict, impls: list[str]) -> dict:
    rows: dict[str, dict] = {}
    for impl in impls:
        row: dict = {}
        for step in STEPS:
            rec = next((b for b in timings if b.get("extra_info", {}).get("implementation") == impl
                        and b["extra_info"].get("step") == step), None)
            if rec is not None:
                stats = rec["stats"]
                row[f"{step}_median_s"] = stats["median"]
                row[f"{step}_mean_s"] = stats["mean"]
                row[f"{step}_min_s"] = stats["min"]
                row[f"{step}_max_s"] = stats["max"]
                row[f"{step}_rounds"] = stats["rounds"]
            inter = interleaved.get("median_s", {}).get(impl, {})
            if step in inter:
                row[f"{step}_interleaved_median_s"] = inter[step]
            mem = memory.get(impl, {}).get(step, {})
            if "ru_maxrss_mb" in mem:
                row[f"{step}_peak_rss_mb"] = mem["ru_maxrss_mb"]
                row[f"{step}_rss_after_build_mb"] = mem["rss_after_build_mb"]
            if "cuda_max_memory_allocated_mb" in mem:
                row[f"{step}_cuda_max_allocated_mb"] = mem["cuda_max_memory_allocated_mb"]
        rows[impl] = row
    ratios: dict[str, float] = {}
    interleaved_ratios: dict[str, float] = {}
    ours = rows.get("ours", {})
    for impl in ("reference", "quirks"):
        for step in STEPS:
            for key, out in ((f"{step}_median_s", ratios), (f"{step}_interleaved_median_s", interleaved_ratios)):
                if key in rows.get(impl, {}) and ours.get(key):
                    out[f"{impl}/ours {step}"] = rows[impl][key] / ours[key]
    return {"rows": rows, "ratios": ratios, "interleaved_ratios": interleaved_ratios}


def markdown(result: dict) -> str:
    m, cfg, summary = result["machine"], result["config"], result["summary"]
    rows, ratios = summary["rows"], summary["ratios"]
    interleaved_ratios = summary.get("interleaved_ratios", {})
    device = result["device"]
    lines = [
        f"# Search-step benchmark ({device})",
        "",
        f"- Date: {m['date']}",
        f"- Machine: {m['cpu_model']}, {m['cpu_count']} cores ({m['cpus_available']} available), "
        f"torch threads {m['torch_threads']}" + (f"; GPU {m['cuda_device']}" if m.get("cuda_device") else ""),
        f"- Load average before / after: {result['load_before']} / {result['load_after']}",
        f"- Python {m['python']}, torch {m['torch']}, triton {m['triton']}, numpy {m['numpy']}",
        f"- sswp-fast commit {m['sswp_fast_commit']}"
        + (f" plus uncommitted changes to {', '.join(m['sswp_fast_uncommitted'])}"
           if m.get("sswp_fast_uncommitted") else "") + "; reference "
        + (f"{m['reference_path']} @ {m['reference_commit']}" if m.get("reference_path") else "not run"
           + (f" ({result['reference_skipped']})" if result.get("reference_skipped") else "")),
        f"- Configuration: SimCLR, net_mode two, L={cfg['layers']}, C={cfg['C']}, batch {cfg['batch']} "
        f"({cfg['images']} images of {cfg['image_size']}x{cfg['image_size']}), synthetic data, fixed seed, "
        f"post-warm-up steps (weight: skip-drop {cfg['weight_skip_drop_prob']}, "
        f"pool-drop {cfg['weight_pool_drop_prob']}); same starting alphas for all",
        f"- Timing: pytest-benchmark, {result['warmup']} warm-up step(s), then {result['rounds']} rounds x 1 "
        f"step, one case after another; median seconds. Interleaved: all implementations in one process, "
        f"one step of each in turn for {result['rounds']} rounds (same load for all; the fairer ratios). "
        f"Memory: one fresh process per implementation and step kind "
        f"({result['memory_warmup']} warm-up + {result['memory_steps']} steps), peak `ru_maxrss`.",
        "",
    ]
    cuda = device == "cuda"
    header = ["implementation", "weight step (s)", "arch step (s)", "weight × ours", "arch × ours",
              "interleaved weight (s)", "interleaved arch (s)", "interleaved weight × ours",
              "interleaved arch × ours", "peak RSS, weight (MB)", "peak RSS, arch (MB)", "RSS after build (MB)"]
    if cuda:
        header += ["CUDA max alloc, weight (MB)", "CUDA max alloc, arch (MB)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ours = rows.get("ours", {})
    for impl, row in rows.items():
        def rel(key: str, row: dict = row) -> str:
            return _fmt(row[key] / ours[key], 2) + "×" if key in row and ours.get(key) else "—"

        cells = [impl, _fmt(row.get("weight_median_s")), _fmt(row.get("arch_median_s")), rel("weight_median_s"),
                 rel("arch_median_s"), _fmt(row.get("weight_interleaved_median_s")),
                 _fmt(row.get("arch_interleaved_median_s")), rel("weight_interleaved_median_s"),
                 rel("arch_interleaved_median_s"), _fmt(row.get("weight_peak_rss_mb"), 0),
                 _fmt(row.get("arch_peak_rss_mb"), 0), _fmt(row.get("weight_rss_after_build_mb"), 0)]
        if cuda:
            cells += [_fmt(row.get("weight_cuda_max_allocated_mb"), 0), _fmt(row.get("arch_cuda_max_allocated_mb"), 0)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if ratios:
        lines.append("Ratios of median step times (pytest-benchmark, sequential): "
                     + "; ".join(f"{k} = {v:.2f}" for k, v in ratios.items()) + ".")
        lines.append("")
    if interleaved_ratios:
        lines.append("Ratios of median step times (interleaved, same process): "
                     + "; ".join(f"{k} = {v:.2f}" for k, v in interleaved_ratios.items()) + ".")
        lines.append("")
    frozen = result.get("interleaved_frozen") or {}
    if frozen.get("median_s"):
        med = frozen["median_s"]
        lines += [f"Pruning phase: interleaved, the first {frozen['frozen_cells']} of {cfg['layers']} cells frozen "
                  f"(the reference runs all 7 ops on frozen edges), {frozen['rounds']} rounds, torch threads "
                  f"{frozen['torch_threads']}, load {frozen['load_before']} / {frozen['load_after']}:", "",
                  "| implementation | weight step (s) | arch step (s) | weight × ours | arch × ours |",
                  "|---|---|---|---|---|"]
        for impl, steps in med.items():
            base = med.get("ours", {})
            lines.append(f"| {impl} | {_fmt(steps.get('weight'))} | {_fmt(steps.get('arch'))} | "
                         + " | ".join(_fmt(steps[k] / base[k], 2) + "×" if base.get(k) else "—"
                                      for k in ("weight", "arch")) + " |")
        lines.append("")
    if result.get("interleaved", {}).get("load_before"):
        inter = result["interleaved"]
        lines.append(f"Interleaved run: torch threads {inter['torch_threads']}, load average before / after "
                     f"{inter['load_before']} / {inter['load_after']}.")
        lines.append("")
    for note in result.get("notes", []):
        lines += [f"Note: {note}", ""]
    lines.append("Implementations: `ours` = `SearchEngine` (default, `reference_quirks=False`); `quirks` = "
                 "`reference_quirks=True` (weight steps also run the inactive op to accumulate gate gradients); "
                 "`reference` = the unchanged reference through `benchmarks/reference_harness.py`, the "
                 "step sequence of `search_cifar.py:train`.")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up steps per case")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads for every run (0: default)")
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--impls", default=",".join(IMPLEMENTATIONS), help="comma-separated subset")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-interleaved", action="store_true")
    parser.add_argument("--frozen", type=int, default=0,
                        help="also time (interleaved) with the first N cells frozen: the pruning phase")
    parser.add_argument("--out-dir", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)

    impls = [i for i in args.impls.split(",") if i]
    reference_skipped = skip_reason() if "reference" in impls else None
    if reference_skipped:
        print(f"reference left out: {reference_skipped}", flush=True)
        impls.remove("reference")
    cfg = CPU_CONFIG if args.device == "cpu" else CUDA_CONFIG

    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    load_before = [round(x, 2) for x in os.getloadavg()]
    timings = run_timings(args.device, args.rounds, args.warmup, args.threads, impls)
    interleaved = {} if args.skip_interleaved else run_interleaved(args.device, args.rounds, args.warmup,
                                                                    args.threads, impls)
    interleaved_frozen = (run_interleaved(args.device, args.rounds, args.warmup, args.threads, impls, args.frozen)
                          if args.frozen else {})
    memory: dict[str, dict] = {}
    if not args.skip_memory:
        for impl in impls:
            for step in STEPS:
                memory.setdefault(impl, {})[step] = run_memory(impl, step, args.device, cfg, args.memory_steps,
                                                               args.warmup, args.threads)
    load_after = [round(x, 2) for x in os.getloadavg()]

    result = {
        "device": args.device,
        "machine": machine_info(),
        "config": config_info(cfg),
        "rounds": args.rounds,
        "warmup": args.warmup,
        "memory_steps": args.memory_steps,
        "memory_warmup": args.warmup,
        "load_before": load_before,
        "load_after": load_after,
        "reference_skipped": reference_skipped,
        "summary": summarize(timings, memory, interleaved, impls),
        "interleaved": interleaved,
        "interleaved_frozen": interleaved_frozen,
        "memory": memory,
        "timings": [{"name": b["name"], "extra_info": b["extra_info"], "stats": b["stats"]} for b in timings],
    }
    write_results(args.out_dir, f"search_step_{args.device}", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
