"""Geodesic shooting in the band-limited Fourier space (FLASH, Zhang & Fletcher 2015/2019).

The geodesic is determined by its initial velocity ``v_0`` (band coefficients ``(B, D, *band)``,
:mod:`.fourier`). With the momentum ``m = L v`` the EPDiff equation (eq. 2 of Wang & Zhang) is

    dv/dt = -K [ (Dv)^T m + div(m (x) v) ],   ((Dv)^T m)_i = sum_j d_i v_j m_j,   div(m (x) v)_i = sum_j d_j (m_i v_j)

and the inverse map ``phi_t^-1 = id + u_t`` follows ``d phi_t^-1 / dt = -(D phi_t^-1) v_t`` (eq. 1), i.e.

    du/dt = -v - (Du) v,   ((Du) v)_i = sum_j d_j u_i v_j

Every product is the truncated band product (:func:`~.fourier.band_product`'s padded grid), every
derivative the central-difference symbol. The semi-discrete system conserves ``<L v_t, v_t>``
exactly (the truncated ``ad^dagger`` is the adjoint of the truncated Lie bracket), so the drift of
that energy measures the time integrator's error only.

The forward map ``phi_1`` needs no separate equation: the reversed, negated path ``-v_{1-s}`` is
itself an EPDiff geodesic (the right-hand side is quadratic in ``v``), starting at ``-v_1``, and the
inverse map of that geodesic is ``phi_1`` (:func:`shoot_maps`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch

from ..validation import check_choice, check_integer
from .fourier import (band_shape, derivative_symbols, from_product_grid, laplacian_symbol, product_grid_size,
                      regularization_symbol, to_product_grid)

__all__ = ["BandOperators", "band_operators", "geodesic_rates", "rk4_step", "integrate_geodesic", "geodesic_maps", "shoot",
           "shoot_maps", "INTEGRATORS"]

INTEGRATORS = ("rk4", "euler")


@dataclass(frozen=True)
class BandOperators:
    """The diagonal operators of a band on an image grid (:func:`band_operators`).

    Attributes:
        shape: image grid ``(N_1, ..., N_D)``.
        band: ``(T_1, ..., T_D)``, odd.
        grid: padded product grid (:func:`~.fourier.product_grid_size`).
        laplacian: ``A`` ``(*band)`` real.
        regularization: ``L = (alpha A + 1)^power`` ``(*band)`` real (differentiable in ``alpha``).
        kernel: ``K = 1 / L``.
        derivative: ``(D, *band)`` complex central-difference symbols.
        spacing: voxel size per axis (the unit of velocities and displacements: ``spacing`` 1 = voxels).
    """

    shape: tuple[int, ...]
    band: tuple[int, ...]
    grid: tuple[int, ...]
    laplacian: torch.Tensor
    regularization: torch.Tensor
    kernel: torch.Tensor
    derivative: torch.Tensor
    spacing: tuple[float, ...]

    @property
    def num_voxels(self) -> int:
        """``prod(shape)``: the Parseval factor between band and voxel sums."""
        out = 1
        for n in self.shape:
            out *= n
        return out


def band_operators(shape: Sequence[int], alpha: float | torch.Tensor, truncation: int | Sequence[int] = 15, *,
                   spacing: Sequence[float] | None = None, power: int = 3, device: torch.device | None = None,
                   dtype: torch.dtype = torch.float32) -> BandOperators:
    """Operators of FLASH's band-limited space for an image grid (``L = (alpha A + 1)^power``, ``K = 1 / L``).

    Args:
        shape: image grid ``(N_1, ..., N_D)``, ``D`` = 2 or 3.
        alpha: regularisation parameter (> 0; a tensor keeps the graph, for MAP estimation).
        truncation: frequencies per axis (odd; an even value ``t`` becomes ``t - 1``; at most the grid's).
        spacing: voxel size per axis (None: 1, i.e. velocities and displacements in voxels).
        power: exponent of ``L`` (3 in FLASH).
        dtype: real dtype of the symbols (the fields are the matching complex dtype).
    """
    shape = tuple(int(n) for n in shape)
    band = band_shape(shape, truncation)
    laplacian = laplacian_symbol(shape, band, spacing, device=device, dtype=dtype)
    regularization = regularization_symbol(alpha, laplacian, power)
    return BandOperators(shape, band, product_grid_size(band), laplacian, regularization, 1.0 / regularization,
                         derivative_symbols(shape, band, spacing, device=device, dtype=dtype),
                         (1.0,) * len(shape) if spacing is None else tuple(float(h) for h in spacing))


def _split(values: torch.Tensor, sizes: Sequence[int]) -> list[torch.Tensor]:
    return list(torch.split(values, list(sizes), dim=1))


def geodesic_rates(velocity: torch.Tensor, displacement: torch.Tensor | None,
                   operators: BandOperators) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Time derivatives of the velocity (EPDiff) and of the inverse map's displacement (module docstring).

    Args:
        velocity: ``v_t`` band coefficients ``(B, D, *band)`` complex.
        displacement: ``u_t`` band coefficients of ``phi_t^-1 - id`` ``(B, D, *band)``, or None (velocity only).
        operators: :func:`band_operators` of the grid.

    Returns:
        ``(dv/dt, du/dt)`` (``du/dt`` None when ``displacement`` is None), same layout.
    """
    b, d = velocity.shape[:2]
    band, grid = operators.band, operators.grid
    deriv = operators.derivative
    momentum = operators.regularization * velocity
    grad_v = (deriv[None, :, None] * velocity[:, None]).flatten(1, 2)           # [b, (j, i)] = d_j v_i
    fields = [velocity, momentum, grad_v]
    if displacement is not None:
        fields.append((deriv[None, :, None] * displacement[:, None]).flatten(1, 2))  # d_j u_i
    values = to_product_grid(torch.cat(fields, dim=1), grid)
    parts = _split(values, [d, d, d * d] + ([d * d] if displacement is not None else []))
    v, m = parts[0], parts[1]
    dv = parts[2].unflatten(1, (d, d))
    products = [
        (dv * m[:, None]).sum(2),                       # ((Dv)^T m)_i = sum_j d_i v_j m_j
        (m[:, :, None] * v[:, None]).flatten(1, 2),     # m_i v_j
    ]
    if displacement is not None:
        du = parts[3].unflatten(1, (d, d))
        products.append((du * v[:, :, None]).sum(1))    # ((Du) v)_i = sum_j d_j u_i v_j
    spectra = _split(from_product_grid(torch.cat(products, dim=1), band), [d, d * d] + ([d] if displacement is not None else []))
    divergence = (spectra[1].unflatten(1, (d, d)) * deriv[None, None]).sum(2)  # sum_j d_j (m_i v_j)
    velocity_rate = -operators.kernel * (spectra[0] + divergence)
    displacement_rate = None if displacement is None else -velocity - spectra[2]
    return velocity_rate, displacement_rate


def rk4_step(state: tuple[torch.Tensor, ...], rate, h: float) -> tuple[torch.Tensor, ...]:
    """One classical Runge-Kutta step of a system of tensors: ``rate(state, offset)`` is evaluated at the step's
    start (``offset`` 0), middle (0.5, twice) and end (1), ``offset`` being the fraction of the step."""
    k1 = rate(state, 0.0)
    k2 = rate(tuple(x + 0.5 * h * k for x, k in zip(state, k1)), 0.5)
    k3 = rate(tuple(x + 0.5 * h * k for x, k in zip(state, k2)), 0.5)
    k4 = rate(tuple(x + h * k for x, k in zip(state, k3)), 1.0)
    return tuple(x + (h / 6) * (a + 2 * b + 2 * c + d) for x, a, b, c, d in zip(state, k1, k2, k3, k4))


def integrate_geodesic(rates, initial: torch.Tensor, num_steps: int = 10, integrator: str = "rk4", *,
                       with_map: bool = True, return_path: bool = False, initial_map: torch.Tensor | None = None,
                       caller: str = "integrate_geodesic"):
    """Integrate a geodesic ``x_t`` (and the displacement ``u_t`` of its inverse map, from 0) over ``t in [0, 1]``.

    Shared by the band-limited shooting here (``x = v``, :func:`geodesic_rates`) and the spatial one of
    :mod:`monai_diffreg.mermaid.lddmm` (``x = m``).

    Args:
        rates: ``rates(x, u) -> (dx/dt, du/dt)``, ``u`` and ``du/dt`` None without the map.
        initial: ``x_0``.
        num_steps: time steps; integrator: one of :data:`INTEGRATORS` (the joint system, step by step).
        with_map: also integrate ``u_t`` from ``u_0 = 0``; return_path: also return ``[x_0, x_dt, ..., x_1]``.
        initial_map: ``u_0`` when it is not zeros shaped like ``x_0`` (e.g. ``x`` with more channels than ``u``).
        caller: the public callable, for messages.

    Returns:
        ``(x_1, u_1)`` (``u_1`` None without ``with_map``), plus the path when ``return_path``.
    """
    check_integer(num_steps, "num_steps", caller, minimum=1)
    check_choice(integrator, "integrator", caller, INTEGRATORS)
    h = 1.0 / num_steps
    state = (initial, torch.zeros_like(initial) if initial_map is None else initial_map) if with_map else (initial,)
    path = [initial]

    def rate(s: tuple[torch.Tensor, ...], offset: float) -> tuple[torch.Tensor, ...]:
        dx, du = rates(s[0], s[1] if with_map else None)
        return (dx, du) if with_map else (dx,)

    for _ in range(num_steps):
        if integrator == "euler":
            state = tuple(x + h * k for x, k in zip(state, rate(state, 0.0)))
        else:
            state = rk4_step(state, rate, h)
        path.append(state[0])
    x, u = state[0], (state[1] if with_map else None)
    return (x, u, path) if return_path else (x, u)


def geodesic_maps(rates, initial: torch.Tensor, num_steps: int = 10, integrator: str = "rk4", *, forward: bool = True,
                  caller: str = "geodesic_maps") -> tuple[torch.Tensor, torch.Tensor | None]:
    """``phi_1^-1 - id`` and (with ``forward``) ``phi_1 - id`` of the geodesic from ``x_0 = initial``
    (:func:`integrate_geodesic`).

    ``phi_1`` is the inverse map of the geodesic shot from ``-x_1`` (module docstring; the rates must be
    quadratic in ``x``): exact for the continuous flow, to the integrator's accuracy here.
    """
    final, inverse = integrate_geodesic(rates, initial, num_steps, integrator, caller=caller)
    if not forward:
        return inverse, None
    _, forward_map = integrate_geodesic(rates, -final, num_steps, integrator, caller=caller)
    return inverse, forward_map


def _check_band(initial_velocity: torch.Tensor, operators: BandOperators, caller: str) -> None:
    if tuple(initial_velocity.shape[2:]) != operators.band:
        raise ValueError(f"{caller}(): 'initial_velocity' must have band shape {operators.band}, "
                         f"got {tuple(initial_velocity.shape[2:])}")


def shoot(initial_velocity: torch.Tensor, operators: BandOperators, num_steps: int = 10, integrator: str = "rk4", *,
          with_map: bool = True, return_path: bool = False):
    """Integrate EPDiff from ``v_0`` over ``t in [0, 1]`` (and the inverse map ``phi_t^-1`` with it).

    Args:
        initial_velocity: ``v_0`` band coefficients ``(B, D, *band)`` complex (Hermitian for a real field).
        operators: :func:`band_operators` of the image grid, same band.
        num_steps: time steps (FLASH: 10).
        integrator: ``"rk4"`` (the joint system by classical Runge-Kutta) or ``"euler"`` (the paper's training data).
        with_map: also integrate ``u_t = phi_t^-1 - id`` from ``u_0 = 0``.
        return_path: also return ``[v_0, v_dt, ..., v_1]``.

    Returns:
        ``(v_1, u_1)`` (``u_1`` None without ``with_map``), plus the path when ``return_path``.
    """
    _check_band(initial_velocity, operators, "shoot")
    return integrate_geodesic(partial(geodesic_rates, operators=operators), initial_velocity, num_steps, integrator,
                              with_map=with_map, return_path=return_path, caller="shoot")


def shoot_maps(initial_velocity: torch.Tensor, operators: BandOperators, num_steps: int = 10,
               integrator: str = "rk4", *, forward: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Band coefficients of ``phi_1^-1 - id`` and (with ``forward``) of ``phi_1 - id`` (:func:`geodesic_maps`)."""
    _check_band(initial_velocity, operators, "shoot_maps")
    return geodesic_maps(partial(geodesic_rates, operators=operators), initial_velocity, num_steps, integrator,
                         forward=forward, caller="shoot_maps")
