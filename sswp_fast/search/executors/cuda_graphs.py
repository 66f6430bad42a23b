"""CUDA graphs of the search steps (``--cuda_graphs``): each kind of step is captured once and then replayed.

A step of the device executor (:mod:`sswp_fast.search.executors.device`) is one fixed sequence of launches whatever
path it samples, it never waits for the host, and it updates its state (weights, banks, BatchNorm statistics, optimizer
moments, alphas) in place. So the whole step, from sampling the path to the optimizer updates, can be captured as
one CUDA graph and replayed: a replay costs the host one call instead of thousands of launches.

What the host still decides is a graph's *key*; a new key means a new capture:

* the kind of step (weight or arch) and the frozen cells (an arch step's autograd starts at the lowest unfrozen
  cell);
* a weight step's learning rate, warm-up sampling and drop probabilities, Python numbers baked into launches;
* the batch's shapes.

Only the latest graph of each kind is kept: a search changes key once an epoch (the learning rate) and once per
pruning step (the frozen cells). The first step of a key runs eagerly on a side stream (it compiles the Triton
kernels and creates lazily made state); the second is captured, then replayed; the later ones are replayed. A
batch with fewer rows than a full one (the last of an epoch) runs eagerly, so that the shapes stay static. The
engine's random stream of the sampled paths is registered with every graph, so a replay draws fresh paths as an
eager step would.

Every graph keeps a memory pool of its own: the activations of a weight step and of an arch step both stay
allocated while their graphs live, where eager steps reuse each other's memory.

With ``--cuda_graphs auto`` a capture that fails says why once and the run goes on with eager steps; with
``--cuda_graphs on`` it stops the run.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

from sswp_fast.search.engine import Batch, StepResult

Step = Callable[[Batch], StepResult]


@dataclass
class _Captured:
    """A captured step: its key, the graph, the static inputs it reads and the ``[3]`` loss/top-1/top-5 it writes."""

    key: Hashable
    graph: torch.cuda.CUDAGraph
    inputs: Batch
    metrics: torch.Tensor
    rows: int


def _shapes(batch: Batch) -> tuple:
    tensors = (*batch.views, *(() if batch.labels is None else (batch.labels,)))
    return tuple((tuple(t.shape), t.dtype) for t in tensors)


def _copy_into(static: Batch, batch: Batch) -> None:
    for into, view in zip(static.views, batch.views, strict=True):
        into.copy_(view)
    if static.labels is not None:
        static.labels.copy_(batch.labels)


class StepGraphs:
    """Captures and replays the steps of one engine (see the module docstring); :meth:`run` is the only entry."""

    def __init__(self, generator: torch.Generator, full_rows: int, strict: bool):
        """``generator``: the engine's random stream of paths, on its CUDA device; ``full_rows``: the rows of a
        full batch (smaller ones run eagerly); ``strict``: a failed capture raises instead of falling back."""
        self.generator = generator
        self.full_rows = full_rows
        self.strict = strict
        self.enabled = True
        self.warmed: dict[str, Hashable] = {}
        self.graphs: dict[str, _Captured] = {}
        self.captures = 0
        self.replays = 0

    def run(self, kind: str, key: Hashable, batch: Batch, step: Step) -> StepResult:
        """``step(batch)``, eagerly or by replaying the graph of ``(kind, key)`` and the batch's shapes."""
        if not self.enabled or batch.views[0].shape[0] != self.full_rows:
            return step(batch)
        key = (key, _shapes(batch))
        captured = self.graphs.get(kind)
        if captured is not None and captured.key == key:
            _copy_into(captured.inputs, batch)
            return self._replay(captured)
        if self.warmed.get(kind) != key:
            self.graphs.pop(kind, None)  # frees the old graph's memory pool
            self.warmed[kind] = key
            return self._warm_up(step, batch)
        try:
            captured = self._capture(key, batch, step)
        except RuntimeError as error:
            if self.strict:
                raise
            warnings.warn(f"--cuda_graphs auto: capturing the {kind} step failed ({str(error).splitlines()[0]}); "
                          "the run goes on with eager steps", stacklevel=2)
            self.enabled = False
            self.graphs.clear()
            return step(batch)
        self.graphs[kind] = captured
        self.captures += 1
        return self._replay(captured)

    def _warm_up(self, step: Step, batch: Batch) -> StepResult:
        """An eager step on a side stream, as capture needs before its first graph (PyTorch's CUDA-graph notes)."""
        stream = torch.cuda.Stream(batch.views[0].device)
        stream.wait_stream(torch.cuda.current_stream(batch.views[0].device))
        with torch.cuda.stream(stream):
            result = step(batch)
        torch.cuda.current_stream(batch.views[0].device).wait_stream(stream)
        return result

    def _capture(self, key: Hashable, batch: Batch, step: Step) -> _Captured:
        """The graph of ``step`` on static copies of ``batch``; nothing runs until it is replayed."""
        inputs = Batch(tuple(view.clone() for view in batch.views),
                       None if batch.labels is None else batch.labels.clone())
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self.generator)
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # other threads (data loading) may run
            result = step(inputs)
            metrics = torch.stack([result.loss.float(), result.top1.float(), result.top5.float()])
        return _Captured(key, graph, inputs, metrics, result.rows)

    def _replay(self, captured: _Captured) -> StepResult:
        """Replay, and copy the metrics out of the graph's output, which the next replay overwrites."""
        captured.graph.replay()
        self.replays += 1
        metrics = captured.metrics.clone()
        return StepResult(metrics[0], metrics[1], metrics[2], captured.rows)
