"""Limited-memory BFGS steps on band-limited initial velocities, preconditioned by a diagonal metric.

FLASH's Sobolev step ``v_0 - s K grad / prod(N)`` is steepest descent in the
prior's metric: Newton's step for the prior term alone. Where the image term dominates (a small noise ``sigma``,
e.g. the ``sigma sqrt(tau)`` of the evidence estimate on brains) that metric is badly conditioned and the steps
crawl. L-BFGS (Nocedal & Wright, Algorithm 7.4) corrects it with the curvature pairs ``(s, y)`` (step, change of
gradient) of the last steps, each two-loop recursion starting from the diagonal metric scaled by
``s.y / y.(metric y)`` of the newest pair. Vectors are complex band coefficients ``(B, D, *band)`` with the real
inner product ``Re sum conj(a) b`` (autograd's gradient of a real function of complex coefficients is the gradient
in that inner product); gradients are projected on Hermitian coefficients (real fields), so every direction is one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..validation import NonFiniteError
from .fourier import hermitian_part

__all__ = ["CurvatureMemory", "real_inner", "lbfgs_direction", "lbfgs_step"]


def real_inner(a: torch.Tensor, b: torch.Tensor) -> float:
    """``Re sum conj(a) b``: the inner product of complex coefficients as real vectors."""
    return float((a.conj() * b).real.sum())


@dataclass
class CurvatureMemory:
    """The last ``size`` curvature pairs ``(s, y)`` of an L-BFGS descent, oldest first (pairs with ``s.y <= 0``,
    which would make the metric indefinite, are skipped)."""

    size: int = 10
    steps: list = field(default_factory=list)
    changes: list = field(default_factory=list)

    def remember(self, step: torch.Tensor, change: torch.Tensor) -> None:
        """Keep the pair (dropping the oldest beyond ``size``) if its curvature ``s.y`` is positive."""
        if self.size > 0 and real_inner(step, change) > 0:
            self.steps, self.changes = (self.steps + [step])[-self.size:], (self.changes + [change])[-self.size:]

    def forget(self) -> None:
        """Drop every pair (the next direction is the metric's steepest descent)."""
        self.steps, self.changes = [], []


def lbfgs_direction(gradient: torch.Tensor, metric: torch.Tensor, memory: CurvatureMemory) -> torch.Tensor:
    """``-H grad`` by the two-loop recursion, ``H`` the L-BFGS inverse-Hessian estimate from ``memory`` started at
    ``metric`` (a diagonal inverse metric broadcastable to ``gradient``, e.g. ``K / prod(N)``), scaled by the newest
    pair's ``s.y / y.(metric y)``; without pairs ``-metric grad``."""
    q = gradient
    coefficients = []
    for s, y in zip(reversed(memory.steps), reversed(memory.changes)):
        rho = 1.0 / real_inner(y, s)
        a = rho * real_inner(s, q)
        coefficients.append((a, rho))
        q = q - a * y
    scale = 1.0
    if memory.steps:
        s, y = memory.steps[-1], memory.changes[-1]
        scale = real_inner(s, y) / real_inner(y, metric * y)
    r = scale * metric * q
    for (s, y), (a, rho) in zip(zip(memory.steps, memory.changes), reversed(coefficients)):
        r = r + (a - rho * real_inner(y, r)) * s
    return -r


def _gradient(evaluation: dict) -> torch.Tensor:
    """The Hermitian part of ``d loss / d velocity`` (computed once, by backward)."""
    velocity = evaluation["velocity"]
    if velocity.grad is None:
        evaluation["loss"].backward()
    return hermitian_part(velocity.grad)


def lbfgs_step(current: dict, evaluate: Callable[[torch.Tensor], dict], metric: torch.Tensor, memory: CurvatureMemory,
               *, sufficient_decrease: float = 1e-4, min_step: float = 1e-6) -> tuple[dict | None, float]:
    """One L-BFGS step from ``current`` with a backtracking (Armijo) line search from the full step.

    Args:
        current: ``{"velocity": v_0 (a leaf that requires grad), "loss": scalar tensor of it, ...}``; its gradient is
            computed here if ``backward`` has not been called.
        evaluate: ``v_0 -> dict`` of the same form (the graph kept); may raise
            :class:`~monai_diffreg.validation.NonFiniteError` (a diverged shooting: a step too long).
        metric: the diagonal inverse metric the recursion starts from (:func:`lbfgs_direction`).
        memory: updated in place with the accepted step's pair; when the direction is not a descent direction
            (stale pairs of an objective that has changed) it is forgotten and the metric's steepest descent used.
        sufficient_decrease: Armijo's constant; min_step: give up below this fraction of the full step, or once the
            decrease the step predicts, ``-step * slope``, is below the loss's float resolution ``8 eps |loss|``
            (no evaluation could tell such a decrease from rounding: near a minimum in float32 the search would
            otherwise halve about 20 times for nothing).

    Returns:
        ``(accepted evaluation, its gradient computed, or None; the step fraction used)``.
    """
    gradient = _gradient(current)
    direction = lbfgs_direction(gradient, metric, memory)
    slope = real_inner(gradient, direction)
    if not slope < 0:
        memory.forget()
        direction = -metric * gradient
        slope = real_inner(gradient, direction)
        if not slope < 0:  # a zero gradient: at a minimum
            return None, 0.0
    value, start = float(current["loss"].detach()), current["velocity"].detach()
    resolution = 8 * torch.finfo(current["loss"].dtype).eps * abs(value)
    step = 1.0
    while step >= min_step and -step * slope > resolution:
        try:
            trial = evaluate(start + step * direction)
        except NonFiniteError:  # the shooting diverged: a step too long
            trial = None
        if trial is not None and float(trial["loss"].detach()) <= value + sufficient_decrease * step * slope:
            memory.remember(step * direction, _gradient(trial) - gradient)
            return trial, step
        step *= 0.5
    return None, step
