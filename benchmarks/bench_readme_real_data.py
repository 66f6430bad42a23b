"""The README's real-data search command, as written, on this machine: its plan, then its first weight step and
its first arch step on real CIFAR-10, with the peak resident set of each.

    python ../shared/data/cifar10/make_cifar10.py /tmp/c10        # the standard python-version folder
    python benchmarks/bench_readme_real_data.py --data /tmp/c10

The command is read from README.md (``sswp-fast search --dataset cifar10 --data_path DATA --note c10``: the
reference defaults, L=20, C=36, batch 96), ``DATA`` replaced by ``--data``. It is built exactly as the CLI builds
it (:class:`sswp_fast.search.run.SearchRun`: executor and ``--recompute auto`` chosen by the plan, from the RAM
available when it starts), in a temporary folder. Then one weight step, as epoch 0 (warm-up) takes it, and one
arch step, as the search phase takes it, run on batches from the run's own loaders; the peak resident set
(``VmHWM``) is reset before each. The ``--dry_run --device cuda`` plan of the same command is recorded too.
Writes ``benchmarks/results/readme_real_data_cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from bench_common import machine_info, write_results  # noqa: E402

from sswp_fast.cli import build_parser, config_from_args  # noqa: E402
from sswp_fast.runtime.reporting import close_log  # noqa: E402
from sswp_fast.search.memory_budget import process_status_bytes, reset_peak_rss  # noqa: E402
from sswp_fast.search.plan import plan_search  # noqa: E402
from sswp_fast.search.run import SearchRun  # noqa: E402

README = BENCH_DIR.parent / "README.md"
GIB = 2**30


def readme_real_data_command() -> list[str]:
    """The README's first ``sswp-fast search --dataset cifar10 --data_path DATA`` line (no ``--resume``)."""
    for line in README.read_text().splitlines():
        if line.startswith(".venv/bin/sswp-fast search --dataset cifar10 --data_path DATA") and "--resume" not in line:
            return shlex.split(line.split(".venv/bin/sswp-fast ", 1)[1])
    raise ValueError("README has no CIFAR-10 search command")


def _measured(step) -> dict:
    reset_peak_rss(release_free_heap=True)  # this process is the benchmark's: the arch step's peak shows apart
    start = time.perf_counter()
    step()
    return {"seconds": round(time.perf_counter() - start, 1), "peak_rss_gib": process_status_bytes("VmHWM") / GIB}


def first_steps(args: list[str]) -> dict:
    """Build the run of ``args`` as the CLI does, take its first weight and arch steps; what they used."""
    run = SearchRun(config_from_args(build_parser().parse_args(args)))
    try:
        held = process_status_bytes("VmRSS") / GIB
        plan = run.schedule.plan(0)
        images, labels = next(iter(run.train_loader))
        weight = _measured(lambda: run.engine.weight_step(run.views.train(images, labels),
                                                          warmup=plan.warmup_sampling, skip_drop_prob=0.0))
        images, labels = next(iter(run.valid_loader))
        arch = _measured(lambda: run.engine.arch_step(run.views.train(images, labels)))
        return {"plan": json.loads(run.plan.plan().json()), "rss_before_steps_gib": held, "weight_step": weight,
                "arch_step": arch, "recompute": run.recompute_mode, "executor": run.engine.executor.describe(),
                "log": (run.run_dir / "log.txt").read_text()}
    finally:
        close_log(run.log)


def markdown(report: dict) -> str:
    run, plan = report["run"], report["run"]["plan"]
    predicted = plan["recompute"]["predicted_peak_gb"]
    cuda = report["cuda_plan"]["recompute"]
    lines = [f"# The README's real-data search command on this machine ({report['machine']['date']})", "",
             f"Machine: {report['machine']['cpu_model']}, {os.cpu_count()} cores, torch {report['machine']['torch']}. "
             f"Command: `sswp-fast {' '.join(report['command'])}`, on the real CIFAR-10 (50,000 training images). "
             "`python benchmarks/bench_readme_real_data.py --data DATA`.", "",
             f"- executor: {run['executor']}",
             f"- recompute: {run['recompute']} ({plan['recompute']['reason']})",
             "- predicted peak per step, GB (the tensors the model counts: weights, optimizer state, activations; "
             "not the process's libraries, allocator caching or oneDNN workspaces): "
             + ", ".join(f"{mode} {gb:.1f}" for mode, gb in predicted.items()),
             f"- resident before the first step (torch, the network, the dataset): "
             f"{run['rss_before_steps_gib']:.2f} GiB", "",
             "| step | seconds | peak resident set (GiB) |", "|---|---|---|",
             f"| first weight step (warm-up) | {run['weight_step']['seconds']} | "
             f"{run['weight_step']['peak_rss_gib']:.2f} |",
             f"| first arch step | {run['arch_step']['seconds']} | {run['arch_step']['peak_rss_gib']:.2f} |", "",
             "`--dry_run --device cuda` of the same command, `--recompute auto` by GPU size: "
             + ", ".join(f"{gb} GB: {mode}" for gb, mode in cuda["picks_by_gpu_gb"].items())
             + "; predicted GB: " + ", ".join(f"{m} {gb:.1f}" for m, gb in cuda["predicted_peak_gb"].items()), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder holding cifar-10-batches-py")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    options = parser.parse_args()
    command = readme_real_data_command()
    args = [str(options.data.resolve()) if word == "DATA" else word for word in command]
    with tempfile.TemporaryDirectory() as scratch:
        os.chdir(scratch)
        cuda_plan = plan_search(config_from_args(build_parser().parse_args([*args, "--device", "cuda"])),
                                run=False).plan().json()
        cuda_plan = json.loads(cuda_plan)
        report = {"machine": machine_info(), "command": command, "cuda_plan": cuda_plan, "run": first_steps(args)}
    write_results(options.out, "readme_real_data_cpu", report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
