"""Shared pieces of the search-step benchmarks: configurations, synthetic data, the three steppers, machine facts.

Implementations:
  * ``ours``      — :class:`sswp_fast.SearchEngine` with the default ``reference_quirks=False``;
  * ``quirks``    — the same engine with ``reference_quirks=True`` (weight steps also run the inactive op);
  * ``reference`` — the unchanged reference driven by :mod:`reference_harness` (needs ``$SSWP_REFERENCE``).

All three start from the same architecture logits (a fixed-seed ``[L, 14, 7]`` normal draw) and see the same
synthetic images; every timed step is post-warm-up (``warmup=False``, skip-drop 0.2, pool-drop 0.0 for weight
steps; no drops for arch steps), as the reference's own measurements were.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

import reference_harness  # noqa: E402

IMPLEMENTATIONS = ("ours", "quirks", "reference")
STEPS = ("weight", "arch")
SEED = 0
IMAGE_SIZE = 32
WEIGHT_SKIP_DROP_PROB = 0.2
WEIGHT_POOL_DROP_PROB = 0.0


@dataclass(frozen=True)
class BenchConfig:
    layers: int
    C: int  # noqa: N815 - the reference's name for init_channels
    batch: int

    @property
    def images(self) -> int:
        """Images per forward pass: two SimCLR views of every sample."""
        return 2 * self.batch

    def label(self) -> str:
        return f"L={self.layers}, C={self.C}, batch={self.batch} ({self.images} images of {IMAGE_SIZE}x{IMAGE_SIZE})"


CPU_CONFIG = BenchConfig(layers=8, C=16, batch=32)
CUDA_CONFIG = BenchConfig(layers=20, C=36, batch=96)  # the default CIFAR search (search_cifar.py defaults)


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def apply_threads() -> int:
    """Honour ``SSWP_BENCH_THREADS`` (same intra-op thread count for every implementation); return the count."""
    threads = env_int("SSWP_BENCH_THREADS", 0)
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def shared_alpha(layers: int, seed: int = SEED) -> torch.Tensor:
    """The non-zero ``[L, 14, 7]`` architecture logits every implementation starts from."""
    return torch.randn(layers, 14, 7, generator=torch.Generator().manual_seed(seed + 1))


def synthetic_views(batch: int, seed: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two ``[B, 3, 32, 32]`` standard-normal "views" from a fixed seed."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    return x[0].to(device), x[1].to(device)


class Stepper:
    """One implementation at one configuration: ``weight()`` / ``arch()`` run one step on fixed batches."""

    def __init__(self, impl: str, cfg: BenchConfig, device: torch.device | str = "cpu", frozen: int = 0,
                 kernels: str = "auto", compile: str = "off", recompute: str = "auto", amp: str = "off"):
        """``frozen``: freeze the first ``frozen`` cells (argmax ops), as the reference's forward pruning does;
        ``kernels``, ``compile``, ``recompute`` and ``amp``: our engine's flags of those names."""
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"unknown implementation {impl!r}; use one of {IMPLEMENTATIONS}")
        self.impl = impl
        self.cfg = cfg
        self.device = torch.device(device)
        torch.manual_seed(SEED)
        alpha = shared_alpha(cfg.layers)
        self.weight_views = synthetic_views(cfg.batch, SEED + 10, self.device)
        self.arch_views = synthetic_views(cfg.batch, SEED + 20, self.device)
        if impl == "reference":
            self.ref = reference_harness.ReferenceStepper(
                cfg.layers, cfg.C, cfg.batch, net_mode="two", device=self.device, seed=SEED,
                weight_skip_drop_prob=WEIGHT_SKIP_DROP_PROB, weight_pool_drop_prob=WEIGHT_POOL_DROP_PROB)
            self.ref.set_alphas(alpha)
            self.weight_images = torch.cat(self.weight_views, dim=0)
            self.arch_images = torch.cat(self.arch_views, dim=0)
            if frozen:
                self.weight()  # MixedEdge.freeze zeroes binary_gates.grad, which exists after a backward only
                self.ref.freeze(list(range(frozen)))
        else:
            from sswp_fast import Batch, SearchConfig, SearchEngine

            config = SearchConfig(layers=cfg.layers, init_channels=cfg.C, batch_size=cfg.batch, dataset="cifar10",
                                  seed=SEED, reference_quirks=impl == "quirks", kernels=kernels,
                                  compile=compile, recompute=recompute, amp=amp).resolved()
            self.engine = SearchEngine(config, num_classes=10, device=self.device)
            with torch.no_grad():
                self.engine.net.arch_alpha.copy_(alpha.to(self.device))
            self.weight_batch = Batch(views=self.weight_views)
            self.arch_batch = Batch(views=self.arch_views)
            if frozen:
                self.engine.freeze(list(range(frozen)))

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def weight(self) -> None:
        if self.impl == "reference":
            self.ref.weight_step(self.weight_images, warmup=False)
        else:
            self.engine.weight_step(self.weight_batch, warmup=False, skip_drop_prob=WEIGHT_SKIP_DROP_PROB,
                                    pool_drop_prob=WEIGHT_POOL_DROP_PROB)
        self.sync()

    def arch(self) -> None:
        if self.impl == "reference":
            self.ref.arch_step(self.arch_images)
        else:
            self.engine.arch_step(self.arch_batch)
        self.sync()

    def step_fn(self, step: str) -> Callable[[], None]:
        if step not in STEPS:
            raise ValueError(f"unknown step {step!r}; use one of {STEPS}")
        return self.weight if step == "weight" else self.arch


def write_results(out_dir: Path, name: str, report: dict, markdown: str) -> None:
    """``{out_dir}/{name}.json`` (the report) and ``{name}.md`` (its table), the folder created if needed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / f"{name}.md").write_text(markdown + "\n")


# ---- machine facts ---------------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - optional packages
        return None


def _git_commit(path: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _git_dirty(path: Path, under: str) -> list[str] | None:
    """Files under ``under`` that differ from the commit (the benchmark ran on them as they were)."""
    try:
        out = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--", under], capture_output=True,
                             text=True, timeout=10, check=True)
        return [line[3:] for line in out.stdout.splitlines()]
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict:
    """Where and with what a result was measured."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    ref = reference_harness.reference_path()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": affinity,
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "numpy": _version("numpy"),
        "platform": platform.platform(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "sswp_fast_commit": _git_commit(BENCH_DIR.parent),
        "sswp_fast_uncommitted": _git_dirty(BENCH_DIR.parent, "sswp_fast"),
        "reference_path": str(ref) if ref else None,
        "reference_commit": _git_commit(ref) if ref else None,
    }


def config_info(cfg: BenchConfig) -> dict:
    return {**asdict(cfg), "images": cfg.images, "image_size": IMAGE_SIZE, "data_mode": "SimCLR",
            "net_mode": "two", "weight_skip_drop_prob": WEIGHT_SKIP_DROP_PROB,
            "weight_pool_drop_prob": WEIGHT_POOL_DROP_PROB, "warmup": False}
