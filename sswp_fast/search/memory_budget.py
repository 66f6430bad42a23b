"""``--max_memory GB``: the fastest ``--recompute`` mode whose search steps fit a memory budget, by measurement.

A step's peak memory is, to a good approximation, a fixed part (the process, data, weights, optimizer state)
plus a part proportional to the batch (the activations). So each mode, fastest first (``none``, ``edge``,
``cell``), runs one weight step and one arch step at two small batches of synthetic images, the peak of each is
measured, and the line through the two points gives the peak at the run's batch size. The first mode predicted to
fit with a margin (:data:`HEADROOM`) is taken; the engine's state (weights, BN statistics, optimizers, alphas,
generator) is restored afterwards, so the search itself is unchanged. The trainer logs the choice and, after
every epoch, the measured peak beside the prediction.

Peaks are ``torch.cuda.max_memory_allocated`` on CUDA and the process's peak resident set on CPU (``VmHWM``,
reset through ``/proc/self/clear_refs``). On CPU a probe's peak would hide behind the free heap pages an earlier,
larger probe left resident, so before each probe the C heap's free pages are given back to the system (glibc
``malloc_trim``). That acts on the whole process, so it is never done unless asked for: :func:`choose_recompute`
takes it as an argument, which the search command passes when ``--max_memory`` asks it to measure; a
:class:`PeakMeter` and :func:`reset_peak_rss` trim only when told to.
"""

from __future__ import annotations

import copy
import ctypes
from dataclasses import dataclass

import torch

from sswp_fast.errors import ConfigError
from sswp_fast.runtime.devices import GB
from sswp_fast.search.engine import Batch, SearchEngine

MODES_FASTEST_FIRST = ("none", "edge", "cell")
PROBE_BATCHES = (4, 8)
HEADROOM = 1.25
"""A mode is taken when its predicted peak times this fits: at the default configuration (L=20, C=36, batch 96)
the prediction came out 14% (``cell``) and 18% (``edge``) under the peaks ``benchmarks/bench_memory.py``
measured."""



def _release_free_heap() -> None:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim``), so that the resident set is the
    memory in use: otherwise a step reuses pages an earlier, larger step left resident, and its peak is hidden."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def reset_peak_rss(release_free_heap: bool = False) -> bool:
    """Reset this process's peak resident set (``VmHWM``) to the resident set now (Linux), first giving the C heap's
    free pages back to the system when told to (``release_free_heap``: it acts on the whole process, for a caller
    that owns it); False where not possible."""
    if release_free_heap:
        _release_free_heap()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def process_status_bytes(field: str) -> float:
    """A size field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ...) in bytes; NaN where there is none."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024.0
    except OSError:
        pass
    return float("nan")


class PeakMeter:
    """Peak memory of the device since the last :meth:`reset`, in bytes: ``torch.cuda.max_memory_allocated`` on
    CUDA, the process's peak resident set on CPU (since the process started where Linux does not let it be reset:
    ``resettable`` is then False). On CPU the resident set counts the C heap's free pages still resident, so a peak
    is at least what the process held at the reset, unless ``release_free_heap`` gives those pages back to the
    system at every reset (glibc ``malloc_trim``, which acts on the whole process: for a caller that owns it)."""

    def __init__(self, device: torch.device, release_free_heap: bool = False):
        self.device = device
        self.release_free_heap = release_free_heap
        self.resettable = device.type == "cuda" or reset_peak_rss(release_free_heap)

    def held(self) -> float:
        """Bytes held now: allocated tensors on CUDA, the resident set on CPU."""
        if self.device.type == "cuda":
            return float(torch.cuda.memory_allocated(self.device))
        return process_status_bytes("VmRSS")

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_peak_rss(self.release_free_heap)

    def peak(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return float(torch.cuda.max_memory_allocated(self.device))
        return process_status_bytes("VmHWM")


@dataclass
class RecomputeChoice:
    """The mode taken and every mode's predicted peak (GB) at the run's batch size."""

    mode: str
    predicted_gb: dict[str, float]

    def describe(self, budget_gb: float) -> str:
        peaks = ", ".join(f"{m} {gb:.2f}" for m, gb in self.predicted_gb.items())
        return (f"--max_memory {budget_gb:g}: --recompute {self.mode} (predicted peak per step, GB: {peaks}; "
                f"measured at batches {PROBE_BATCHES[0]} and {PROBE_BATCHES[1]})")


def _probe_batch(engine: SearchEngine, batch_size: int, image_size: int, generator: torch.Generator) -> Batch:
    cfg = engine.config
    views = 1 if cfg.data_mode == "supervised" else 2
    shape = (batch_size, 3, image_size, image_size)
    images = tuple(torch.randn(shape, generator=generator).to(engine.device) for _ in range(views))
    labels = torch.randint(0, 10, (batch_size,), generator=generator).to(engine.device)
    return Batch(images, labels)


def step_peak(engine: SearchEngine, meter: PeakMeter, batch_size: int, image_size: int) -> float:
    """Peak bytes of one weight step and one arch step of ``engine`` at ``batch_size`` (state not restored)."""
    generator = torch.Generator().manual_seed(batch_size)
    meter.reset()
    engine.weight_step(_probe_batch(engine, batch_size, image_size, generator), warmup=False)
    weight = meter.peak()
    meter.reset()
    engine.arch_step(_probe_batch(engine, batch_size, image_size, generator))
    return max(weight, meter.peak())


def choose_recompute(engine: SearchEngine, batch_size: int, image_size: int, budget_gb: float, *,
                     release_free_heap: bool) -> RecomputeChoice:
    """Measure, predict, pick (see the module docstring) and set the mode on ``engine``; a one-line
    :class:`ConfigError` when not even ``cell`` fits. ``release_free_heap``: give the C heap's free pages back to
    the system before each probe (:class:`PeakMeter`); on CPU the probes' peaks are only measured apart with it,
    and it acts on the whole process, so the caller says (the search command does under ``--max_memory``)."""
    meter = PeakMeter(engine.device, release_free_heap)
    if not meter.resettable:
        raise ConfigError("--max_memory measures the peak resident set through /proc/self/clear_refs, which this "
                          "system does not allow; run without --max_memory (--recompute auto predicts it instead)")
    saved = copy.deepcopy(engine.state_dict())
    small, large = PROBE_BATCHES
    predicted: dict[str, float] = {}
    try:
        for mode in MODES_FASTEST_FIRST:
            engine.net.recompute = mode
            low = step_peak(engine, meter, small, image_size)
            high = step_peak(engine, meter, large, image_size)
            predicted[mode] = (high + (high - low) / (large - small) * (batch_size - large)) / GB
            if predicted[mode] * HEADROOM <= budget_gb:
                return RecomputeChoice(mode, predicted)
    finally:
        engine.load_state_dict(saved)
    raise ConfigError(f"--max_memory {budget_gb:g}: even --recompute cell needs about {predicted['cell']:.1f} GB "
                      f"per step at --batch_size {batch_size} (plus a {HEADROOM - 1:.0%} margin); lower --batch_size "
                      f"or raise --max_memory")
