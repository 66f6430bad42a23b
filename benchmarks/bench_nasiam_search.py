"""NASiam search iteration (one arch step + one weight step), ours against the reference, side by side.

    NASIAM_REFERENCE=/path/to/NASiam python benchmarks/bench_nasiam_search.py   # results/nasiam_search_cpu.*
    python benchmarks/bench_nasiam_search.py --device cuda --batch 512            # on a GPU

SimSiam on a CIFAR-style ResNet-18 (dim 2048, pred-dim 512, two views of 32x32 images), as the reference's
``main_search.py`` runs it: the arch step is the SSL loss on a held-out batch followed by an AdamW step of the
alphas, the weight step the loss on a training batch followed by an SGD step. Ours runs
:func:`sswp_fast.nasiam.training.arch_step` / :func:`~sswp_fast.nasiam.training.weight_step` (the arch step
differentiates only the alphas, without the backbone's backward graph; the mixed ops are fused; channels-last
tensors on CPU, as ``sswp-fast nasiam`` uses there). The reference
runs its own modules (``SimSiam/simsiam/builder.py``) through the same calls as its ``search_step`` and training
loop; it needs ``torchvision`` (not a dependency of sswp-fast) and, on a CPU, has its CUDA-only alphas created
on the CPU instead. Data loading is not timed (the views are fixed tensors). Rounds alternate the two
implementations so both see the same machine load; medians are reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

from bench_common import machine_info, write_results  # noqa: E402

DIM, PRED_DIM, LR, WD, SEARCH_LR, SEARCH_WD = 2048, 512, 0.05, 1e-4, 1e-3, 1e-3


def _views(batch: int, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, batch, 3, 32, 32, generator=g)
    return x[0].to(device), x[1].to(device)


def ours(batch: int, device: torch.device):
    from sswp_fast.nasiam.models import SimSiam
    from sswp_fast.nasiam.training import arch_step, weight_step
    from sswp_fast.runtime.devices import pick_memory_format

    torch.manual_seed(0)
    layout = pick_memory_format("auto", device)  # what `sswp-fast nasiam search` uses on this device
    model = SimSiam("resnet18", True, DIM, PRED_DIM).to(device, memory_format=layout)
    optimizer = torch.optim.SGD(model.weight_parameters(), lr=LR * batch / 256, momentum=0.9, weight_decay=WD)
    arch_optimizer = torch.optim.AdamW(model.arch_parameters(), lr=SEARCH_LR, betas=(0.9, 0.999),
                                       weight_decay=SEARCH_WD)
    train, held_out = ([v.contiguous(memory_format=layout) for v in _views(batch, seed, device)] for seed in (1, 2))

    def iteration() -> None:
        arch_step(model, arch_optimizer, *held_out)
        weight_step(model, optimizer, *train)
    return iteration


@contextmanager
def _alphas_on(device: torch.device):
    """The reference creates its alphas with ``device="cuda"``; off a GPU, create them on ``device``."""
    original = torch.zeros

    def zeros(*args, **kwargs):
        if kwargs.get("device") == "cuda" and not torch.cuda.is_available():
            kwargs["device"] = device
        return original(*args, **kwargs)
    torch.zeros = zeros
    try:
        yield
    finally:
        torch.zeros = original


def reference(batch: int, device: torch.device, path: Path):
    import torchvision.models as models

    sys.path.insert(0, str(path / "SimSiam"))
    import simsiam.builder as builder

    torch.manual_seed(0)
    with _alphas_on(device):
        model = builder.SimSiamSearch(models.__dict__["resnet18"], DIM, PRED_DIM).to(device)
    criterion = nn.CosineSimilarity(dim=1)
    optimizer = torch.optim.SGD(model.parameters(), LR * batch / 256, momentum=0.9, weight_decay=WD)
    search_optimizer = torch.optim.AdamW(model.arch_parameters(), lr=SEARCH_LR, betas=(0.9, 0.999),
                                         weight_decay=SEARCH_WD)
    train, held_out = _views(batch, 1, device), _views(batch, 2, device)
    model.train()

    def loss_of(views):
        p1, p2, z1, z2 = model(x1=views[0], x2=views[1])
        return -(criterion(p1, z2).mean() + criterion(p2, z1).mean()) * 0.5

    def iteration() -> None:
        loss = loss_of(held_out)  # search_step
        search_optimizer.zero_grad()
        loss.backward()
        search_optimizer.step()
        loss = loss_of(train)  # the weight step of train()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return iteration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)
    impls = {"ours": ours(args.batch, device)}
    ref = os.environ.get("NASIAM_REFERENCE")
    if ref:
        impls["reference"] = reference(args.batch, device, Path(ref))

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    for fn in impls.values():
        for _ in range(args.warmup):
            fn()
    seconds = {name: [] for name in impls}
    for _ in range(args.rounds):
        for name, fn in impls.items():
            seconds[name].append(timed(fn))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    report = {"machine": {**machine_info(), "reference_path": ref}, "batch": args.batch, "device": str(device),
              "framework": "simsiam", "backbone": "resnet18 (CIFAR stem)", "seconds": seconds, "median": medians}
    rows = [f"| {name} | {medians[name]:.3f} | {medians.get('reference', float('nan')) / medians[name]:.2f}x |"
            for name in impls]
    info = report["machine"]
    markdown = "\n".join([
        f"# NASiam SimSiam search iteration (arch step + weight step), ResNet-18 CIFAR, batch {args.batch} "
        f"({device.type})", "",
        f"{info['cpu_model'] if device.type == 'cpu' else info['cuda_device']}, {info['torch_threads']} threads; "
        f"torch {info['torch']}; {info['date']}. Medians of {args.rounds} interleaved rounds after "
        f"{args.warmup} warm-up rounds.", "",
        "| implementation | seconds per iteration | reference / this |", "|---|---|---|", *rows])
    write_results(BENCH_DIR / "results", f"nasiam_search_{device.type}", report, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
