"""NASiam MixedOp forward+backward: the fused forward against the per-candidate sum (``reference_forward``), CPU.

    python benchmarks/bench_nasiam_mixed_op.py [--rounds 31] [--threads 1]

One SimSiam ``MixedOp`` per shape (512→512: a projector layer; 2048→512: the predictor's first layer), float32,
training mode, batch 32. A pass is: mixing weights ``softmax(alphas)``, the forward, ``(out · g).sum()`` and its
backward to the parameters, the alphas and the input, with gradients cleared before each pass. After one warm-up
pass of each path, every round times one pass of each path back to back, so both see the same machine load; the
table gives the medians. The default is one torch thread: on a loaded machine several threads mostly measure
OpenMP contention, which grows with the number of operator calls. Also counted, once per path: the ATen operator
calls of one pass that are not views or metadata (``bench_launch_counts.Counts``), each at least one kernel
launch on a GPU. Results: ``results/nasiam_mixed_op_cpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from bench_common import machine_info, write_results  # noqa: E402
from bench_launch_counts import Counts  # noqa: E402

from sswp_fast.nasiam import search_space  # noqa: E402
from sswp_fast.nasiam.search_space import MixedOp  # noqa: E402

SHAPES = ((512, 512), (2048, 512))
BATCH = 32
FRAMEWORK = "simsiam"
RESULTS = Path(__file__).resolve().parent / "results"
PATHS = ("fused", "per_candidate")


def make_pass(op: MixedOp, path: str, x: torch.Tensor, grad_out: torch.Tensor, alphas: torch.Tensor):
    """One forward+backward through ``op`` by ``path``, as a zero-argument callable."""
    forward = op.forward if path == "fused" else op.reference_forward

    def run() -> None:
        op.zero_grad(set_to_none=True)
        alphas.grad = x.grad = None
        (forward(x, torch.softmax(alphas, 0)) * grad_out).sum().backward()

    return run


def count_ops(run) -> int:
    """ATen operator calls of one ``run()`` that are neither views nor metadata."""
    counter = Counts()
    with counter:
        run()
    return counter.compute


def time_shape(in_dim: int, out_dim: int, rounds: int) -> dict:
    torch.manual_seed(0)
    op = MixedOp(in_dim, out_dim, FRAMEWORK).train()
    x = torch.randn(BATCH, in_dim, requires_grad=True)  # a layer inside a cell: its input needs a gradient too
    grad_out = torch.randn(BATCH, out_dim)
    alphas = torch.zeros(7, requires_grad=True)
    passes = {path: make_pass(op, path, x, grad_out, alphas) for path in PATHS}
    for run in passes.values():
        run()
    launches = {path: count_ops(run) for path, run in passes.items()}
    linear_on_cpu = search_space.stacked_linear
    search_space.stacked_linear = functools.partial(linear_on_cpu, concat_weights=True)
    try:
        launches["fused_concat_weights"] = count_ops(passes["fused"])
    finally:
        search_space.stacked_linear = linear_on_cpu
    times: dict[str, list[float]] = {path: [] for path in PATHS}
    for _ in range(rounds):
        for path, run in passes.items():
            start = time.perf_counter()
            run()
            times[path].append(time.perf_counter() - start)
    medians = {path: statistics.median(t) for path, t in times.items()}
    return {"in_dim": in_dim, "out_dim": out_dim, "batch": BATCH, "framework": FRAMEWORK, "rounds": rounds,
            "median_s": medians, "aten_compute_ops": launches,
            "times_s": {path: [round(t, 6) for t in v] for path, v in times.items()},
            "per_candidate_over_fused": medians["per_candidate"] / medians["fused"]}


def table(records: list[dict], meta: dict, argv: list[str]) -> str:
    lines = [f"# NASiam MixedOp forward+backward, CPU ({meta['date'][:10]})", "",
             f"- Machine: {meta['cpu_model']}, {meta['cpus_available']} CPUs available, {meta['torch_threads']} "
             f"torch threads, load average {', '.join(f'{x:.1f}' for x in meta['load_average'])} at the start; "
             f"Python {meta['python']}, torch {meta['torch']}.",
             f"- {FRAMEWORK} MixedOp, float32, training mode, batch {BATCH}; median of {records[0]['rounds']} "
             "interleaved rounds after one warm-up pass of each path.",
             f"- Command: `{' '.join(['python', 'benchmarks/bench_nasiam_mixed_op.py', *argv])}` at commit "
             f"{meta['sswp_fast_commit']}.",
             "- On CPU the fused path multiplies each Linear on its own (`stacked_linear`); on CUDA it concatenates "
             "the weights into one multiply.",
             "- ATen compute ops: operator calls per pass that are neither views nor metadata, each at least one "
             "kernel launch on a GPU; \"fused, CUDA way\" counts the fused path with the weights concatenated.", "",
             "| in → out | fused (ms) | per-candidate sum (ms) | per-candidate / fused | ATen compute ops: fused "
             "| fused, CUDA way | per-candidate |",
             "|---|---|---|---|---|---|---|"]
    for r in records:
        m = r["median_s"]
        lines.append(f"| {r['in_dim']} → {r['out_dim']} | {1e3 * m['fused']:.2f} | {1e3 * m['per_candidate']:.2f} "
                     f"| {r['per_candidate_over_fused']:.2f}× | {r['aten_compute_ops']['fused']} "
                     f"| {r['aten_compute_ops']['fused_concat_weights']} | {r['aten_compute_ops']['per_candidate']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    meta = machine_info()
    records = [time_shape(i, o, args.rounds) for i, o in SHAPES]
    report = {**meta, "load_average_after": list(os.getloadavg()), "records": records}
    markdown = table(records, meta, sys.argv[1:] if argv is None else argv)
    write_results(RESULTS, "nasiam_mixed_op_cpu", report, markdown)
    print(markdown)
    return report


if __name__ == "__main__":
    main()
