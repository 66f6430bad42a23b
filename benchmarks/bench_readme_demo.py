"""The README demo over several seeds: the quick-start search (a) and the downstream commands after it, run as
written with ``--seed S`` added, one seed after the other, each seed in its own folder.

    python benchmarks/bench_readme_demo.py --seeds 1 2 3 4 5

Reports per seed the search's wall time, the best test top-1 of ``finetune`` (from the search weights) and of
``train`` (random initialisation), the linear probe's and the kNN accuracy, then mean ± sample standard deviation
over the seeds, and how many seeds fine-tuning won. Writes ``benchmarks/results/readme_demo_{device}.{json,md}``.
The README's demo numbers come from here.
"""

from __future__ import annotations

import argparse
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from bench_common import machine_info, write_results  # noqa: E402

from sswp_fast.stages.config import STAGE_FOLDERS  # noqa: E402

README = BENCH_DIR.parent / "README.md"
STAGES = ("finetune", "train", "linear-eval")


def demo_arguments() -> list[str]:
    """The arguments of ``sswp-fast`` in the README's install-and-run command (a)."""
    for line in README.read_text().splitlines():
        if line.startswith("bash scripts/install.sh && .venv/bin/sswp-fast "):
            return shlex.split(line.split(".venv/bin/sswp-fast ", 1)[1])
    raise ValueError("README has no demo command")


def readme_commands(command: str) -> list[list[str]]:
    """The arguments of every README line ``.venv/bin/sswp-fast {command} ...``."""
    prefix = f".venv/bin/sswp-fast {command} "
    return [shlex.split(line.split(".venv/bin/sswp-fast ", 1)[1]) for line in README.read_text().splitlines()
            if line.startswith(prefix)]


def best_top1(log: Path) -> float:
    """The best test top-1 that a compact-network run wrote last to its ``log.txt``."""
    last = [line for line in log.read_text().splitlines() if line.startswith("best_top1 ")][-1]
    return float(last.split(",")[0].split()[1])


def _sswp(args: list[str], cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "sswp_fast.cli", *args], cwd=cwd,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"sswp-fast {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def run_seed(seed: int, folder: Path) -> dict:
    """The demo's search and downstream commands with ``--seed seed`` in ``folder``: their accuracies."""
    folder.mkdir(parents=True)
    seeded = ["--seed", str(seed)]
    start = time.perf_counter()
    _sswp([*demo_arguments(), *seeded], folder)
    row: dict = {"seed": seed, "search_s": round(time.perf_counter() - start, 1)}
    for stage in STAGES:
        args, = readme_commands(stage)
        _sswp([*args, *seeded], folder)
        run = f"{STAGE_FOLDERS[stage]}-{args[args.index('--note') + 1]}_{args[args.index('--arch_name') + 1]}"
        row[stage] = best_top1(folder / "exps" / "exp" / run / "log.txt")
    knn, = readme_commands("knn")
    row["knn"] = float(re.search(r"knn_top1 ([\d.]+)", _sswp(knn, folder)).group(1))
    return row


def summary(rows: list[dict]) -> dict:
    """Mean and sample standard deviation of every accuracy over the seeds, and fine-tuning's wins."""
    out = {}
    for key in ("search_s", *STAGES, "knn"):
        values = [row[key] for row in rows]
        out[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}
    out["finetune_wins"] = sum(row["finetune"] > row["train"] for row in rows)
    return out


def markdown(report: dict) -> str:
    rows, total = report["rows"], report["summary"]
    lines = [f"# README demo over {len(rows)} seeds ({report['machine']['date']})", "",
             f"Machine: {report['machine']['cpu_model']}, torch {report['machine']['torch']}. "
             "Test top-1 (%) on the 359 held-out digits; the README's commands as written plus `--seed S`; "
             "`python benchmarks/bench_readme_demo.py --seeds " + " ".join(str(r["seed"]) for r in rows) + "`.", "",
             "| seed | search (s) | finetune | train (scratch) | linear-eval | kNN |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['seed']} | {r['search_s']:.0f} | {r['finetune']:.1f} | {r['train']:.1f} | "
              f"{r['linear-eval']:.1f} | {r['knn']:.1f} |" for r in rows]
    digits = {"search_s": 0}
    lines.append("| mean ± std | " + " | ".join(
        f"{total[key]['mean']:.{digits.get(key, 1)}f} ± {total[key]['std']:.{digits.get(key, 1)}f}"
        for key in ("search_s", *STAGES, "knn")) + " |")
    lines += ["", f"Fine-tuning from the search weights beat training from scratch in {total['finetune_wins']} "
              f"of {len(rows)} seeds.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for seed in args.seeds:
            rows.append(run_seed(seed, Path(scratch) / f"seed{seed}"))
            print(rows[-1], flush=True)
    report = {"machine": machine_info(), "rows": rows, "summary": summary(rows)}
    write_results(args.out, "readme_demo_cpu", report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
