"""Two memory savers for the trainer; both leave the trained weights exactly as the normal path makes them.

``TwoPassClippedStep`` -- the optimizer step inside the backward pass, with the recipe's global grad-norm clip.
Normally every ControlNet gradient (1.36 GiB in fp32 for the full-size model) lives until the clip knows the total
norm and the optimizer has stepped. Here each gradient is used the moment it is complete and then freed:

1. the loss is differentiated down to the ControlNet's outputs only (the residuals), which frees the UNet's graph;
2. *norm pass*: backward through the ControlNet; each parameter's gradient is reduced to its norm and dropped;
3. the clip coefficient ``min(1, max_norm / (total_norm + 1e-6))`` is computed as ``clip_grad_norm_`` does;
4. *step pass*: backward through the ControlNet again; each gradient is scaled by the coefficient and its parameter
   stepped at once (AdamW updates every parameter independently, so stepping one at a time is the same arithmetic).

The price is one more ControlNet backward per step (the UNet's backward runs once). Without clipping the norm pass
is skipped. Single process, no accumulation, no fp16 loss scaling (those need the gradients to outlive the backward).

``limit_heap_fragmentation`` (``--compact-heap``) -- glibc raises its mmap threshold after large frees, after which
the step's many 1-8 MiB temporaries are carved out of the heap, which fragments: a full-size CPU step then peaks ~1.1
GiB above its live tensors. A fixed 1 MiB threshold gives every larger block its own mapping, returned to the system
when freed -- at the price of fresh zeroed pages for each (measured: 4.5 M page faults and ~20 s of system CPU time
per step instead of 0.8 M and 5 s, ~25 % more wall time; with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` set before
the process starts the fresh pages are transparent huge pages: 1.0 M faults, 6 s, 26.8 -> 22.2 s per step).
Process-wide and irreversible, so it is opt-in.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

import torch

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
_MMAP_THRESHOLD_BYTES = 1 << 20


def limit_heap_fragmentation() -> bool:
    """Fix glibc's mmap threshold (Linux only; elsewhere nothing happens). Returns whether it was set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False


def _grad_norm(grad: torch.Tensor) -> torch.Tensor:
    # the per-tensor norm exactly as torch.nn.utils.clip_grad_norm_ computes it on this device
    if grad.device.type in ("cuda", "xpu"):
        return torch._foreach_norm([grad], 2.0)[0]
    return torch.linalg.vector_norm(grad, 2.0)


class TwoPassClippedStep:
    """Steps ``optimizer`` inside the backward of ``params`` (see the module docstring).

    ``optimizer`` must skip parameters whose ``.grad`` is None (every torch optimizer and bitsandbytes' do): a call
    to its ``step()`` while one parameter holds a gradient then updates that parameter alone."""

    def __init__(self, params, optimizer, max_grad_norm: float):
        self.params = [p for p in params if p.requires_grad]
        self.optimizer = optimizer
        self.max_grad_norm = float(max_grad_norm)
        self._phase = None
        self._norms: dict[int, torch.Tensor] = {}
        self._coef = None
        self._handles = [p.register_post_accumulate_grad_hook(self._on_grad) for p in self.params]

    def _on_grad(self, param: torch.Tensor) -> None:
        if self._phase == "norm":
            self._norms[id(param)] = _grad_norm(param.grad)
        elif self._phase == "step":
            if self._coef is not None:
                param.grad.mul_(self._coef.to(param.grad.device))
            self.optimizer.step()
        else:  # a backward outside step(): keep the usual behaviour (the gradient stays)
            return
        param.grad = None

    def step(self, outputs, output_grads) -> None:
        """Backward from ``outputs`` (given their gradients) through the trained model, stepping as it goes."""
        if any(p.grad is not None for p in self.params):
            raise RuntimeError("TwoPassClippedStep needs the gradients cleared before it runs")
        try:
            self._coef = None
            if self.max_grad_norm > 0:
                self._phase, self._norms = "norm", {}
                torch.autograd.backward(outputs, output_grads, retain_graph=True)
                norms = [self._norms[id(p)] for p in self.params if id(p) in self._norms]
                if norms:
                    first = norms[0].device
                    total = torch.linalg.vector_norm(torch.stack([n.to(first) for n in norms]), 2.0)
                    self._coef = torch.clamp(self.max_grad_norm / (total + 1e-6), max=1.0)
                self._norms = {}
            self._phase = "step"
            torch.autograd.backward(outputs, output_grads)
        finally:
            self._phase = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
