"""Every ATen operator a block of code runs, and which of them synchronise with the host."""

from __future__ import annotations

from torch.utils._python_dispatch import TorchDispatchMode


class OpTrace(TorchDispatchMode):
    """Records every ATen operator; host synchronisations are the ones that turn a tensor into a Python number."""

    SYNCS = ("aten._local_scalar_dense", "aten.item", "aten.nonzero", "aten.equal", "aten.is_nonzero")

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))

    def syncs(self) -> list[str]:
        return [op for op in self.ops if op.startswith(self.SYNCS)]
