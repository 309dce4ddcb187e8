"""L-BFGS without a line search, with its history in one preallocated ring buffer.

The algorithm is torch.optim.LBFGS's with ``line_search_fn=None`` and negative tolerances (neural-style's
settings): the first step is ``min(1, 1 / |g|_1) * lr`` along ``-g``, later steps ``lr`` along the two-loop
recursion's direction with ``H_diag = s.y / y.y``, and a pair (s, y) is kept only when ``y.s > 1e-10``.
torch keeps each pair as two new tensors and drops the oldest from a list. Here the ``m`` pairs live in one
``[2, m, N]`` tensor allocated once, so a long run allocates no history after its first step. The buffer is
allocated with ``torch.empty``: on CPU its pages become resident only as pairs are written, so a short run
holds no more than torch's lists would. With ``history_dtype=torch.bfloat16`` the pairs take half the memory;
the dot products and updates still run in float32.

It is a plain class rather than a ``torch.optim.Optimizer``: building the first optimizer of a process
imports about 900 more modules (torch._dynamo and its dependencies), about 150 MiB of resident memory.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

CURVATURE_FLOOR = 1e-10  # torch.optim.LBFGS skips a pair whose y.s is not above this


class RingLBFGS:
    """L-BFGS over one tensor, evaluating ``closure`` at most ``max_iter`` times per ``step`` call.

    Like torch.optim.LBFGS with ``line_search_fn=None`` and tolerances of -1, a step stops early only when
    the search direction's slope ``g.d`` exceeds 1 (not a descent direction).
    """

    def __init__(self, param: Tensor, max_iter: int, history_size: int = 100, lr: float = 1.0,
                 history_dtype: torch.dtype = torch.float32) -> None:
        self.param = param
        self.max_iter = max_iter
        self.history_size = history_size
        self.lr = lr
        numel = param.numel()
        # history[0, slot] contains a step s, history[1, slot] the gradient change y of the same pair
        self.history = torch.empty((2, history_size, numel), dtype=history_dtype, device=param.device)
        self.rho = [0.0] * history_size  # 1 / y.s per slot, as 0-d float32 tensors once written
        self.alpha: list = [None] * history_size
        self.start = 0  # slot of the oldest pair
        self.count = 0
        self.scratch = None if history_dtype == param.dtype else torch.empty(numel, dtype=param.dtype,
                                                                             device=param.device)
        self.iterations_done = 0
        self.direction: Tensor | None = None
        self.step_size = 0.0
        self.previous_gradient: Tensor | None = None
        self.h_diag: Tensor | float = 1

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the parameter's gradient, as ``torch.optim.Optimizer.zero_grad`` does."""
        if set_to_none:
            self.param.grad = None
        elif self.param.grad is not None:
            self.param.grad.zero_()

    def _row(self, kind: int, index: int) -> Tensor:
        """Return the ``index``-th oldest stored s (kind=0) or y (kind=1), in the parameter's dtype."""
        row = self.history[kind, (self.start + index) % self.history_size]
        if self.scratch is None:
            return row
        return self.scratch.copy_(row)

    def _remember(self, s: Tensor, y: Tensor, ys: Tensor) -> None:
        if self.count == self.history_size:
            slot = self.start
            self.start = (self.start + 1) % self.history_size
        else:
            slot = (self.start + self.count) % self.history_size
            self.count += 1
        self.history[0, slot].copy_(s)
        self.history[1, slot].copy_(y)
        self.rho[slot] = 1.0 / ys

    def _direction(self, gradient: Tensor) -> Tensor:
        """Return -H g by the two-loop recursion over the stored pairs, oldest first in the second loop."""
        q = gradient.neg()
        size = self.history_size
        for index in range(self.count - 1, -1, -1):
            slot = (self.start + index) % size
            self.alpha[slot] = self._row(0, index).dot(q) * self.rho[slot]
            q.add_(self._row(1, index), alpha=-self.alpha[slot])
        r = torch.mul(q, self.h_diag)
        for index in range(self.count):
            slot = (self.start + index) % size
            beta = self._row(1, index).dot(r) * self.rho[slot]
            r.add_(self._row(0, index), alpha=self.alpha[slot] - beta)
        return r

    def _gradient(self) -> Tensor:
        grad = self.param.grad
        return grad.reshape(-1) if grad is not None else self.param.new_zeros(self.param.numel())

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor]) -> Tensor:
        with torch.enable_grad():
            first_loss = closure()
        gradient = self._gradient()
        for inner in range(1, self.max_iter + 1):
            self.iterations_done += 1
            if self.iterations_done == 1:
                direction = gradient.neg()
                self.h_diag = 1
            else:
                y = gradient.sub(self.previous_gradient)
                s = self.direction.mul(self.step_size)
                ys = y.dot(s)
                if ys > CURVATURE_FLOOR:
                    self._remember(s, y, ys)
                    self.h_diag = ys / y.dot(y)
                direction = self._direction(gradient)
            self.direction = direction
            if self.previous_gradient is None:
                self.previous_gradient = gradient.clone(memory_format=torch.contiguous_format)
            else:
                self.previous_gradient.copy_(gradient)
            if self.iterations_done == 1:
                self.step_size = min(1.0, 1.0 / gradient.abs().sum()) * self.lr
            else:
                self.step_size = self.lr
            if gradient.dot(direction) > 1:  # torch's "gtd > -tolerance_change" with tolerance_change=-1
                break
            self.param.add_(direction.view_as(self.param), alpha=self.step_size)
            if inner == self.max_iter:
                break
            with torch.enable_grad():
                closure()
            gradient = self._gradient()
        return first_loss
