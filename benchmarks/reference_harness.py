"""Drive the public SSWP-NAS reference (LzVv123456/SSWP-NAS) step by step, unchanged, for side-by-side benchmarks.

The reference is never vendored: point ``SSWP_REFERENCE`` at a checkout of it (``git clone
https://github.com/LzVv123456/SSWP-NAS``). Its files are imported as they are; only the process around them is
adapted, and only while the reference runs:

* ``tensorboardX`` (imported by the reference's ``utils/__init__.py``) is stubbed during the import when it is not
  installed; nothing here writes TensorBoard events.
* On a CPU, ``Tensor.cuda`` / ``Module.cuda`` become the identity and ``torch.cuda.is_available`` answers True,
  inside :func:`cuda_shim` only (the reference's ``info_nce_loss`` calls ``.cuda()`` on every call); everything is
  restored when the block ends. On a CUDA device nothing is patched and the reference really runs on the GPU.
* Its top-level module names (``utils``, ``operations``, ``genotypes``, ``mixed_edge``, ``model_search``) are
  generic, so any same-named module already imported is set aside during the import and put back afterwards.

:class:`ReferenceStepper` performs exactly the per-step sequence of the reference's ``search_cifar.py:train``
(SimCLR data mode, the single-device ``model.module`` path), see the comments in its methods.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import random
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

ENV_VAR = "SSWP_REFERENCE"
_REFERENCE_MODULES = ("utils", "operations", "genotypes", "mixed_edge", "model_search")
_loaded: ReferenceModules | None = None


def reference_path() -> Path | None:
    """The reference checkout named by ``$SSWP_REFERENCE``, or None when unset."""
    value = os.environ.get(ENV_VAR)
    return Path(value).expanduser().resolve() if value else None


def skip_reason() -> str | None:
    """Why reference comparisons cannot run here, or None when they can."""
    path = reference_path()
    if path is None:
        return (f"{ENV_VAR} is not set; point it at a checkout of the reference "
                "(git clone https://github.com/LzVv123456/SSWP-NAS)")
    if not (path / "model_search.py").is_file() or not (path / "utils" / "pytorch_utils.py").is_file():
        return f"{ENV_VAR}={path} does not look like an SSWP-NAS checkout (no model_search.py / utils/)"
    return None


@contextlib.contextmanager
def cuda_shim(enabled: bool = True) -> Iterator[None]:
    """While active: ``.cuda()`` on tensors and modules returns them unchanged and ``torch.cuda.is_available()``
    is True. Everything is restored on exit, even on error. ``enabled=False`` makes it a no-op (real CUDA)."""
    if not enabled:
        yield
        return
    saved = (torch.Tensor.cuda, nn.Module.cuda, torch.cuda.is_available)

    def tensor_cuda(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return self

    def module_cuda(self: nn.Module, *args: object, **kwargs: object) -> nn.Module:
        return self

    torch.Tensor.cuda = tensor_cuda  # type: ignore[method-assign]
    nn.Module.cuda = module_cuda  # type: ignore[method-assign]
    torch.cuda.is_available = lambda: True  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.Tensor.cuda, nn.Module.cuda, torch.cuda.is_available = saved  # type: ignore[method-assign]


@contextlib.contextmanager
def _tensorboardx_stub() -> Iterator[None]:
    """Make ``from tensorboardX import SummaryWriter`` work during the import if the package is missing."""
    try:
        importlib.import_module("tensorboardX")
        yield
        return
    except ImportError:
        pass
    stub = types.ModuleType("tensorboardX")

    class SummaryWriter:  # never used by the harness; the reference only needs the name
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def add_scalar(self, *args: object, **kwargs: object) -> None:
            pass

        def close(self) -> None:
            pass

    stub.SummaryWriter = SummaryWriter  # type: ignore[attr-defined]
    sys.modules["tensorboardX"] = stub
    try:
        yield
    finally:
        if sys.modules.get("tensorboardX") is stub:
            del sys.modules["tensorboardX"]


def _is_reference_module(name: str) -> bool:
    return any(name == top or name.startswith(top + ".") for top in _REFERENCE_MODULES)


@dataclass
class ReferenceModules:
    """The reference's imported modules and the entry points the harness uses."""

    path: Path
    model_search: types.ModuleType
    mixed_edge: types.ModuleType
    utils: types.ModuleType
    pytorch_utils: types.ModuleType

    @property
    def Network(self) -> type:  # noqa: N802 - the reference's class name
        return self.model_search.Network

    @property
    def NetworkImageNet(self) -> type:  # noqa: N802
        return self.model_search.NetworkImageNet

    def info_nce_loss(self, features: torch.Tensor, *, device: torch.device | str = "cpu"
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """``utils.pytorch_utils.info_nce_loss`` (it moves its labels and mask with ``.cuda()``)."""
        with cuda_shim(torch.device(device).type != "cuda"):
            return self.pytorch_utils.info_nce_loss(features)


def load_reference(path: str | os.PathLike[str] | None = None) -> ReferenceModules:
    """Import the reference from ``path`` (default ``$SSWP_REFERENCE``) without touching its files; cached."""
    global _loaded
    root = Path(path).expanduser().resolve() if path is not None else reference_path()
    if root is None:
        raise RuntimeError(skip_reason())
    if _loaded is not None:
        if _loaded.path != root:
            raise RuntimeError(f"reference already loaded from {_loaded.path}, not {root}")
        return _loaded
    # Set aside same-named modules that are not the reference's, so that its imports resolve to its own files.
    shadowed = {name: mod for name, mod in sys.modules.items() if _is_reference_module(name)}
    for name in shadowed:
        del sys.modules[name]
    sys.path.insert(0, str(root))
    try:
        with _tensorboardx_stub():
            model_search = importlib.import_module("model_search")
            mixed_edge = importlib.import_module("mixed_edge")
            utils = importlib.import_module("utils")
            pytorch_utils = importlib.import_module("utils.pytorch_utils")
    finally:
        sys.path.remove(str(root))
        if shadowed:  # hand the names back; the reference's modules keep their own references to each other
            for name in [n for n in sys.modules if _is_reference_module(n)]:
                del sys.modules[name]
            sys.modules.update(shadowed)
    _loaded = ReferenceModules(root, model_search, mixed_edge, utils, pytorch_utils)
    return _loaded


# ---- per-edge architecture state ------------------------------------------------------------------------

def reference_edges(net: nn.Module) -> list[list[nn.Module]]:
    """``[cell][edge]`` MixedEdge modules of a reference ``Network`` / ``NetworkImageNet``."""
    return [list(cell.edges) for cell in net.cells]


@torch.no_grad()
def set_reference_alphas(net: nn.Module, alpha: torch.Tensor) -> None:
    """Copy an ``[L, 14, 7]`` logits tensor into the reference's per-edge ``alpha`` parameters."""
    edges = reference_edges(net)
    if tuple(alpha.shape) != (len(edges), len(edges[0]), edges[0][0].n_choices):
        raise ValueError(f"alpha shape {tuple(alpha.shape)} does not match the reference network")
    for c, row in enumerate(edges):
        for e, edge in enumerate(row):
            edge.alpha.data.copy_(alpha[c, e])


def reference_alphas(net: nn.Module) -> torch.Tensor:
    """The reference's per-edge alphas stacked into ``[L, 14, 7]``."""
    return torch.stack([torch.stack([edge.alpha.detach() for edge in row]) for row in reference_edges(net)])


# ---- the stepper ----------------------------------------------------------------------------------------

class ReferenceStepper:
    """The reference's search network and optimizers, stepped exactly as ``search_cifar.py:train`` does.

    Construction follows ``search_cifar.py:main``: ``Network(C, 10, layers, net_mode, 'SimCLR', 'forward',
    False, 2, 2)``, SGD over ``weight_params()`` (lr 0.025, momentum 0.9, weight decay 4e-5) and Adam over
    ``alpha_params()`` (lr 1e-3, betas (0.0, 0.999) as floats: current PyTorch rejects the int 0 the reference
    passes by default). ``DataParallel`` is left out: with one device it only calls ``model.module``.
    """

    def __init__(self, layers: int, C: int, batch_size: int, net_mode: str = "two",  # noqa: N803
                 device: torch.device | str = "cpu", seed: int = 2, num_classes: int = 10,
                 weight_skip_drop_prob: float = 0.2, weight_pool_drop_prob: float = 0.0,
                 arch_skip_drop_prob: float = 0.0, arch_pool_drop_prob: float = 0.0, grad_clip: float = 5.0,
                 metrics: bool = True):
        self.ref = load_reference()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.shim = self.device.type != "cuda"
        self.weight_skip_drop_prob = weight_skip_drop_prob
        self.weight_pool_drop_prob = weight_pool_drop_prob
        self.arch_skip_drop_prob = arch_skip_drop_prob
        self.arch_pool_drop_prob = arch_pool_drop_prob
        self.grad_clip = grad_clip
        self.metrics = metrics
        # the reference seeds torch and Python's `random` (utils.init_exp); binarize draws from both
        torch.manual_seed(seed)
        random.seed(seed)
        self.model = self.ref.Network(C, num_classes, layers, net_mode, "SimCLR", "forward", False, 2, 2)
        self.model = self.model.to(self.device)
        self.criterion = nn.CrossEntropyLoss()
        self.weight_optimizer = torch.optim.SGD(self.model.weight_params(), 0.025, momentum=0.9,
                                                weight_decay=4e-5)
        self.arch_optimizer = torch.optim.Adam(self.model.alpha_params(), lr=1e-3, weight_decay=0.0,
                                               betas=(0.0, 0.999))
        self.model.train()

    def set_alphas(self, alpha: torch.Tensor) -> None:
        set_reference_alphas(self.model, alpha.to(self.device))

    def freeze(self, cells: list[int]) -> None:
        """``Network.freeze_one_cell`` for each cell (as ``progressive_prune`` does); needs one backward first,
        because the reference's ``MixedEdge.freeze`` zeroes ``binary_gates.grad``."""
        for idx in cells:
            self.model.freeze_one_cell(idx)

    def _images(self, x: torch.Tensor | tuple[torch.Tensor, ...] | list[torch.Tensor]) -> torch.Tensor:
        # search_cifar.py:train (SimCLR): `images = torch.cat(images, dim=0)` then `.cuda()`
        if isinstance(x, (tuple, list)):
            x = torch.cat(list(x), dim=0)
        return x.to(self.device)

    def _simclr_loss(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # search_cifar.py:train, SimCLR branch: features = model(images); utils.info_nce_loss; criterion
        features = self.model(images)
        # info_nce_loss moves its labels and mask with .cuda(): the only place the shim is needed per step
        # (optimizer steps must run outside it: with is_available() True they probe the CUDA driver)
        with cuda_shim(self.shim):
            logits, labels = self.ref.pytorch_utils.info_nce_loss(features)
        return self.criterion(logits, labels), logits, labels

    def weight_step(self, x: torch.Tensor | tuple[torch.Tensor, ...], warmup: bool = False) -> float:
        """One weight step: the body of the ``for step, (images, labels) in enumerate(train_queue)`` loop of
        ``search_cifar.py:train`` up to ``model.module.unused_ops_back()`` (TensorBoard writes left out)."""
        images = self._images(x)
        model = self.model
        # Network.reset_binary_gates -> MixedEdge.binarize per edge (sample a path), then unused_ops_off
        model.reset_binary_gates(self.weight_skip_drop_prob, self.weight_pool_drop_prob, warmup=warmup)
        model.unused_ops_off()
        loss, logits, labels = self._simclr_loss(images)
        if self.metrics:  # the reference's per-step meters: utils.accuracy top-1/top-5 and .item() syncs
            prec1, prec5 = self.ref.utils.accuracy(logits, labels, topk=(1, 5))
            prec1.item(), prec5.item()
        value = loss.item()
        # weight_optimizer.zero_grad(); loss.backward(); clip_grad_norm_(weight_params(), grad_clip); step()
        self.weight_optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.weight_params(), self.grad_clip)
        self.weight_optimizer.step()
        model.unused_ops_back()
        return value

    def arch_step(self, x: torch.Tensor | tuple[torch.Tensor, ...]) -> float:
        """One architecture step: the body of the ``for j in range(arch_update_scheduler.get(step, 0))`` loop of
        ``search_cifar.py:train`` (post-warm-up, SimCLR)."""
        images = self._images(x)
        model = self.model
        model.train()
        # reset_binary_gates(arch_skip_drop_prob, arch_pool_drop_prob, warmup=False) (the loop only runs
        # when epoch > warmup_epochs), then unused_ops_off
        model.reset_binary_gates(self.arch_skip_drop_prob, self.arch_pool_drop_prob, warmup=False)
        model.unused_ops_off()
        loss, _, _ = self._simclr_loss(images)
        # arch_optimizer.zero_grad(); loss.backward(); set_arch_param_grad(); arch_optimizer.step();
        # rescale_updated_arch_param(); unused_ops_back()
        self.arch_optimizer.zero_grad()
        loss.backward()
        model.set_arch_param_grad()
        self.arch_optimizer.step()
        model.rescale_updated_arch_param()
        model.unused_ops_back()
        return loss.item()
