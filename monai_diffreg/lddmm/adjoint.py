"""The gradient of a function of the final inverse map by the continuous adjoint system (backward in time).

For the shooting state ``s = (v, u)`` with ``ds/dt = R(s)`` (:func:`~.shooting.geodesic_rates`) and a
functional ``Phi(u_1)`` of the final inverse map, the adjoint ``lambda = (lambda_v, lambda_u)`` solves

    d lambda / dt = -(dR/ds)^T lambda,   lambda(1) = (0, dPhi/du_1)

backward from ``t = 1`` to 0, and ``dPhi/dv_0 = lambda_v(0)``. This is the Jacobi-field computation of
FLASH (eq. 9 of Wang & Zhang) written for the joint (velocity, map) state: ``lambda_v`` and ``lambda_u``
play the roles of their adjoint variables, and ``(dR/ds)^T lambda`` is evaluated as a vector-Jacobian
product of the rates at the forward state. :func:`flash_register` uses automatic differentiation
through the discrete shooting instead (the exact gradient of what it computes, and cheaper: no second
integration); the two agree to the time-discretisation error (``tests/lddmm/test_adjoint.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..validation import check_integer
from .shooting import BandOperators, geodesic_rates, rk4_step

__all__ = ["adjoint_gradient"]


def _rates(state: tuple[torch.Tensor, torch.Tensor], operators: BandOperators) -> tuple[torch.Tensor, torch.Tensor]:
    return geodesic_rates(state[0], state[1], operators)


def adjoint_gradient(initial_velocity: torch.Tensor, operators: BandOperators,
                     functional: Callable[[torch.Tensor], torch.Tensor],
                     num_steps: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """``Phi(u_1)`` and ``dPhi/dv_0`` by integrating the adjoint system backward (RK4, ``num_steps`` steps).

    The forward trajectory is integrated with RK4 on a grid of half steps (the backward RK4 stages need
    the state at ``t``, ``t - h/2`` and ``t - h``) and kept in memory.

    Args:
        initial_velocity: ``v_0`` ``(B, D, *band)`` complex.
        operators: :func:`~.shooting.band_operators` of the grid.
        functional: ``Phi``: band coefficients of ``u_1 = phi_1^-1 - id`` -> a real scalar tensor (differentiable).
        num_steps: backward time steps (the forward uses ``2 num_steps`` half steps).

    Returns:
        ``(Phi(u_1), dPhi/dv_0)``, the gradient ``(B, D, *band)`` in autograd's convention for complex tensors.
    """
    check_integer(num_steps, "num_steps", "adjoint_gradient", minimum=1)
    h = 1.0 / num_steps
    state = (initial_velocity.detach(), torch.zeros_like(initial_velocity))
    trajectory = [state]
    with torch.no_grad():
        for _ in range(2 * num_steps):
            state = rk4_step(state, lambda s, _: _rates(s, operators), 0.5 * h)
            trajectory.append(state)
    with torch.enable_grad():
        final_map = trajectory[-1][1].detach().requires_grad_(True)
        value = functional(final_map)
        (final_gradient,) = torch.autograd.grad(value, final_map)

    def transposed_jacobian(index: int):
        """``lambda -> (dR/ds)^T lambda`` at the forward state ``trajectory[index]``."""
        with torch.enable_grad():
            v, u = (x.detach().requires_grad_(True) for x in trajectory[index])
            rates = _rates((v, u), operators)

        def apply(adjoint):
            return torch.autograd.grad(rates, (v, u), grad_outputs=adjoint, retain_graph=True)
        return apply

    # backward in time, tau = 1 - t: d lambda / d tau = +(dR/ds)^T lambda, stages at t, t - h/2, t - h
    adjoint = (torch.zeros_like(initial_velocity), final_gradient)
    for step in range(num_steps, 0, -1):
        at = {0.0: transposed_jacobian(2 * step), 0.5: transposed_jacobian(2 * step - 1), 1.0: transposed_jacobian(2 * step - 2)}
        adjoint = rk4_step(adjoint, lambda lam, offset: at[offset](lam), h)
    return value.detach(), adjoint[0]
