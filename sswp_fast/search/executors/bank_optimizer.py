"""The weight optimizer step of the device executor: SGD or Adam on the parameter banks, masked by the ops that ran.

On the PyTorch executor an op that did not run has no gradient, so ``torch.optim`` leaves it (its weights and its
optimizer state) untouched. On the device executor every bank gets a gradient, zero in the rows of the ops that
did not run, so a plain step would still decay and move them. :class:`MaskedBankUpdate` steps

* every parameter outside the banks (stems, preprocessing, head) with the ``torch.optim`` optimizer itself (the
  per-edge parameters have no gradient there, so it skips them), and
* the banks' flat weights (:class:`~sswp_fast.search.executors.banks.NetworkBanks`) with the same update rule, written
  out elementwise over the flat tensors, committed only where the element's op ran: a mask gathered on the device
  from the sampled path, a fixed handful of launches per step whatever was sampled, no host synchronisation.

The optimizer state of the banks is flat too, and the ``torch.optim`` optimizer's state of every per-edge
parameter is a view of it: its ``state_dict`` has the keys and layout the PyTorch executor writes, so a checkpoint
of either executor resumes under the other. A never-run op has zero momentum (SGD) or a zero step count and
moments (Adam): what ``torch.optim`` creates on its first step, so the results are the same.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sswp_fast.search.executors.banks import NetworkBanks
from sswp_fast.search.sampling import one_hot


def _state_dtype() -> torch.dtype:
    """The dtype ``torch.optim.Adam`` keeps its step counts in."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class MaskedBankUpdate:
    """``step(active)``: the ``optimizer`` step of the device executor (see the module docstring)."""

    def __init__(self, banks: NetworkBanks, optimizer: torch.optim.Optimizer):
        if len(optimizer.param_groups) != 1:
            raise ValueError("MaskedBankUpdate needs an optimizer with one parameter group")
        if not isinstance(optimizer, torch.optim.SGD | torch.optim.Adam):
            raise TypeError(f"MaskedBankUpdate supports SGD and Adam, not {type(optimizer).__name__}")
        group = optimizer.param_groups[0]
        if isinstance(optimizer, torch.optim.SGD) and (group["nesterov"] or group["dampening"] or group["maximize"]):
            raise ValueError("MaskedBankUpdate's SGD has no nesterov, dampening or maximize")
        if isinstance(optimizer, torch.optim.Adam) and (group["amsgrad"] or group["maximize"]):
            raise ValueError("MaskedBankUpdate's Adam has no amsgrad or maximize")
        self.banks = banks
        self.optimizer = optimizer
        self.adam = isinstance(optimizer, torch.optim.Adam)
        w = banks.weights
        if self.adam:
            self.state = {"exp_avg": torch.zeros_like(w), "exp_avg_sq": torch.zeros_like(w)}
            self.steps = torch.zeros(len(banks.params) + 1, device=w.device, dtype=_state_dtype())
        elif group["momentum"] != 0:
            self.state = {"momentum_buffer": torch.zeros_like(w)}
        else:
            self.state = {}
        self.adopt_state()

    def adopt_state(self) -> None:
        """Make the optimizer's state of every per-edge parameter a view of the flat state, keeping its values:
        call it after ``optimizer.load_state_dict`` (which replaces the state tensors)."""
        state = self.optimizer.state
        with torch.no_grad():
            for i, p in enumerate(self.banks.params):
                entry = state[p]
                for name, flat in self.state.items():
                    view = self.banks.view_of(flat, i)
                    view.copy_(entry[name]) if name in entry else view.zero_()
                    entry[name] = view
                if self.adam:
                    step = self.steps[i]
                    step.copy_(entry["step"]) if "step" in entry else step.zero_()
                    entry["step"] = step

    @property
    def param_groups(self) -> list[dict]:
        """Every tensor whose gradient a step reads, the optimizer's parameters and the banks, as one group: what
        :class:`torch.amp.GradScaler` unscales and checks for infs (``--amp fp16``), so that an overflow anywhere
        skips the whole step, as on the PyTorch executor. ``scaler.step(update, active)`` calls :meth:`step`."""
        return [{"params": [*self.optimizer.param_groups[0]["params"], *self.banks.leaves()]}]

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        for leaf in self.banks.leaves():
            leaf.grad = None

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        """One optimizer step; the banks' elements change only where their op is ``active`` ``[cells, 14]``."""
        self.optimizer.step()
        banks, group = self.banks, self.optimizer.param_groups[0]
        ran = F.pad(one_hot(active).flatten(), (0, 1))[banks.param_op]  # per parameter; the last one: scratch
        mask = ran.bool()[banks.element_param]
        w, grad = banks.weights, banks.flat_grad()
        lr, wd = group["lr"], group["weight_decay"]
        if wd:
            grad = grad.add(w, alpha=wd)
        if self.adam:
            new_w = self._adam(w, grad, ran, mask, group)
        else:
            if "momentum_buffer" in self.state:
                buf = self.state["momentum_buffer"]
                grad = buf.mul(group["momentum"]).add_(grad)
                buf.copy_(torch.where(mask, grad, buf))
            new_w = w.add(grad, alpha=-lr)
        w.copy_(torch.where(mask, new_w, w))

    def _adam(self, w: torch.Tensor, grad: torch.Tensor, ran: torch.Tensor, mask: torch.Tensor,
              group: dict) -> torch.Tensor:
        """Adam's new weights (the moments and step counts already committed where ``mask``)."""
        beta1, beta2 = group["betas"]
        self.steps.add_(ran.to(self.steps.dtype))
        step = self.steps[self.banks.element_param].to(w.dtype)
        exp_avg, exp_avg_sq = self.state["exp_avg"], self.state["exp_avg_sq"]
        exp_avg.copy_(torch.where(mask, exp_avg.lerp(grad, 1 - beta1), exp_avg))
        exp_avg_sq.copy_(torch.where(mask, exp_avg_sq.mul(beta2).addcmul_(grad, grad, value=1 - beta2), exp_avg_sq))
        bias_correction1 = 1 - torch.pow(beta1, step)
        bias_correction2_sqrt = (1 - torch.pow(beta2, step)).sqrt()
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(group["eps"])
        return w.addcdiv(exp_avg, denom * bias_correction1, value=-group["lr"])
