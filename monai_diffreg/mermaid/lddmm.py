"""LDDMM by geodesic shooting of the initial vector momentum, in the spatial domain (Mermaid's LDDMM shooting).

The geodesic is determined by its initial momentum ``m_0`` ``(B, D, *S)`` (units of ``spacing``,
like vSVF's). The momentum follows EPDiff and the velocity is ``v_t = K * m_t`` (a Fourier multiplier,
the multi-Gaussian kernel of :mod:`.kernels`)::

    dm/dt = -( (Dv)^T m + div(m (x) v) ),   ((Dv)^T m)_i = sum_j d_i v_j m_j,   div(m (x) v)_i = sum_j d_j (m_i v_j)

and the maps follow the flow of ``v_t``: ``phi_1`` (``d phi_t / dt = v_t o phi_t``) and the inverse map
``phi_1^-1`` (what warps the moving image: ``moving o phi_1^-1``), both by following the characteristics of
the velocities at the time steps, each step a short flow composed by interpolation
(:func:`semi_lagrangian_maps`).

Derivatives are periodic central differences in the units of ``spacing`` (the kernel is a periodic
convolution too): they are skew-adjoint, so this semi-discrete system conserves ``<m_t, v_t>``
exactly and its drift measures the time integrator's error only. The same equation as FLASH
(:mod:`monai_diffreg.lddmm.shooting`, same central-difference symbols), without its band truncation:
products are taken voxel by voxel on the image grid. Time: ``num_steps`` steps of RK4 or Euler
(:func:`~monai_diffreg.lddmm.shooting.integrate_geodesic`). :func:`shoot` can also transport the inverse map
in Eulerian form, ``du/dt = -v - (Du) v`` with ``u_t = phi_t^-1 - id`` and ``((Du) v)_i = sum_j d_j u_i v_j``
(FLASH's way), jointly with the momentum; the registration does not use it: central differences of the
map are dispersive where the velocity is rough, and folded 0.03 % of the voxels of an MNI -> subject
registration where the maps along the characteristics converge to the exact flow as the steps shrink
(tests; docs).

The energy minimised over ``m_0`` (:mod:`._momentum`, the same as vSVF's with another map) is::

    E(m_0) = image_term(moving o phi_1^-1, fixed) + regularization_weight * <m_0, K m_0>

with ``<m_0, K m_0>`` the mean over voxels of ``m_0 . v_0`` (:func:`~.kernels.kernel_energy`), the
geodesic's (conserved) kinetic energy; the gradient is taken by automatic differentiation through
the shooting. Note the sign against vSVF: vSVF warps by ``exp(v)``, this model by the inverse of the
flow of ``v``, so the same momentum moves the image the opposite way.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch

from ..engines._optim_common import EngineSettings, ProgressReporter, check_pair
from ..functional.compose import compose_ddf
from ..functional.warp import warp
from ..lddmm.shooting import INTEGRATORS, integrate_geodesic
from ..validation import check_choice, check_integer
from ._momentum import check_momentum_settings, momentum_energy, register_momentum, to_voxels
from .kernels import apply_kernel
from .vsvf import DEFAULT_ITERATIONS, DEFAULT_LEARNING_RATE, DEFAULT_SIGMAS

#: lddmm_register's regularisation weight and time steps, chosen on validation cases (docs).
DEFAULT_REGULARIZATION_WEIGHT = 0.002
DEFAULT_NUM_STEPS = 5

__all__ = ["central_difference", "epdiff_force", "advection", "epdiff_rates", "shoot", "lddmm_fields", "lddmm_energy", "lddmm_register",
           "LDDMMRegistration"]


def central_difference(field: torch.Tensor, axis: int, spacing: Sequence[float]) -> torch.Tensor:
    """``(f(x + e_axis) - f(x - e_axis)) / (2 h_axis)`` of ``(B, C, *S)`` along spatial ``axis``, periodic."""
    dim = 2 + axis
    return (field.roll(-1, dim) - field.roll(1, dim)) / (2 * spacing[axis])


def epdiff_force(momentum: torch.Tensor, velocity: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """EPDiff's right-hand side ``-( (Dv)^T m + div(m (x) v) )`` for ``m``, ``v`` ``(B, D, *S)`` (module docstring)."""
    d = momentum.shape[1]
    transpose = torch.stack([(central_difference(velocity, i, spacing) * momentum).sum(1) for i in range(d)], dim=1)
    divergence = sum(central_difference(momentum * velocity[:, j:j + 1], j, spacing) for j in range(d))
    return -(transpose + divergence)


def advection(field: torch.Tensor, velocity: torch.Tensor, spacing: Sequence[float],
              gradients: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """``(Df) v``, i.e. ``sum_j d_j f v_j``, of any ``(B, C, *S)`` field ``f`` by ``v`` ``(B, D, *S)``.

    ``gradients``: the ``D`` central differences ``d_j f`` when the caller has them (else computed).
    """
    if gradients is None:
        gradients = [central_difference(field, j, spacing) for j in range(velocity.shape[1])]
    return sum(gradient * velocity[:, j:j + 1] for j, gradient in enumerate(gradients))


def epdiff_rates(momentum: torch.Tensor, displacement: torch.Tensor | None, multiplier: torch.Tensor,
                 spacing: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Time derivatives of the momentum (EPDiff) and of the inverse map's displacement (module docstring).

    Args:
        momentum: ``m_t`` ``(B, D, *S)``; displacement: ``u_t = phi_t^-1 - id`` ``(B, D, *S)`` or None
            (momentum only), both in the units of ``spacing``.
        multiplier: ``K``'s Fourier multiplier (:func:`~.kernels.kernel_multiplier` of the grid).
        spacing: voxel size per axis.

    Returns:
        ``(dm/dt, du/dt)`` (``du/dt`` None when ``displacement`` is None).
    """
    velocity = apply_kernel(momentum, multiplier)
    momentum_rate = epdiff_force(momentum, velocity, spacing)
    if displacement is None:
        return momentum_rate, None
    return momentum_rate, -velocity - advection(displacement, velocity, spacing)


def shoot(momentum: torch.Tensor, multiplier: torch.Tensor, spacing: Sequence[float], num_steps: int = 10,
          integrator: str = "rk4", *, with_map: bool = True, return_path: bool = False):
    """Integrate EPDiff from ``m_0`` ``(B, D, *S)`` over ``t in [0, 1]`` (and ``u_t = phi_t^-1 - id`` from 0).

    Returns:
        ``(m_1, u_1)`` in the units of ``spacing`` (``u_1`` None without ``with_map``), plus
        ``[m_0, m_dt, ..., m_1]`` when ``return_path``.
    """
    return integrate_geodesic(partial(epdiff_rates, multiplier=multiplier, spacing=spacing), momentum, num_steps,
                              integrator, with_map=with_map, return_path=return_path, caller="shoot")


def semi_lagrangian_maps(velocities: Sequence[torch.Tensor], forward: bool = True
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``phi_1^-1 - id`` and (with ``forward``) ``phi_1 - id`` of the flow of ``v_t``, along the characteristics.

    ``velocities`` ``[v_0, v_h, ..., v_1]`` (``(B, D, *S)`` each, in voxels, equal steps ``h``) are the
    nodes of the path. Step ``k``'s flow ``psi_k`` (from ``t_k`` to ``t_k + h``) follows the midpoint
    velocity ``w_k = (v_{t_k} + v_{t_k + h}) / 2`` along its characteristic, second order in ``h``::

        psi_k(y) - y = h w_k(y + h/2 w_k(y)),      psi_k^-1(y) - y = -h w_k(y - h/2 w_k(y))
        phi_1 = psi_{N-1} o ... o psi_0,          phi_1^-1 = psi_0^-1 o ... o psi_{N-1}^-1

    Each map is built by following the points: the grid points are moved step by step (``psi_0`` first
    for ``phi_1``, ``psi_{N-1}^-1`` first for ``phi_1^-1``) and only the smooth one-step fields are
    interpolated (linear, border extension; :func:`~monai_diffreg.functional.compose.compose_ddf`),
    never the accumulated map, so interpolation errors do not pile up with the number of steps. No
    spatial derivative of the map is taken, unlike the Eulerian transport by central differences.

    Returns:
        ``(phi_1^-1 - id, phi_1 - id)`` in voxels (the second None without ``forward``).
    """
    h = 1.0 / (len(velocities) - 1)
    middles = [0.5 * (start + end) for start, end in zip(velocities[:-1], velocities[1:])]
    inverse_map = torch.zeros_like(velocities[0])
    for middle in reversed(middles):
        inverse_map = compose_ddf(-h * warp(middle, -0.5 * h * middle), inverse_map)
    if not forward:
        return inverse_map, None
    forward_map = torch.zeros_like(velocities[0])
    for middle in middles:
        forward_map = compose_ddf(h * warp(middle, 0.5 * h * middle), forward_map)
    return inverse_map, forward_map


def lddmm_fields(momentum: torch.Tensor, velocity: torch.Tensor, multiplier: torch.Tensor, spacing: Sequence[float],
                 inverse: bool, *, num_steps: int = 10, integrator: str = "rk4") -> dict[str, torch.Tensor]:
    """The fields of the geodesic from ``m_0`` (``velocity`` ``v_0 = K * m_0``; units of ``spacing``), in voxels:
    ``"ddf"`` ``phi_1^-1 - id``, ``"initial_velocity"`` ``v_0`` and, with ``inverse``, ``"inverse_ddf"`` ``phi_1 - id``.

    The momentum is shot by EPDiff (:func:`shoot`, ``num_steps`` steps of ``integrator``); the maps follow the
    characteristics of the velocities at those steps (:func:`semi_lagrangian_maps`).
    """
    _, _, path = shoot(momentum, multiplier, spacing, num_steps, integrator, with_map=False, return_path=True)
    velocities = [velocity] + [apply_kernel(m, multiplier) for m in path[1:]]
    inverse_map, forward_map = semi_lagrangian_maps([to_voxels(v, spacing) for v in velocities], forward=inverse)
    out = {"ddf": inverse_map, "initial_velocity": to_voxels(velocity, spacing)}
    if inverse:
        out["inverse_ddf"] = forward_map
    return out


def lddmm_energy(momentum: torch.Tensor, fixed: torch.Tensor, moving: torch.Tensor, multiplier: torch.Tensor,
                 spacing: Sequence[float], *, regularization_weight: float, image_loss: str = "ncc", num_steps: int = 10,
                 integrator: str = "rk4", ncc_window: int = 9, image_sigma: float = 1.0) -> dict[str, torch.Tensor]:
    """The energy of the module docstring at ``m_0`` ``(B, D, *S)`` (physical units) on one grid.

    Returns:
        ``"total"``, ``"image"``, ``"prior"`` (scalars: batch means) and ``"ddf"`` ``(B, D, *S)`` in voxels.
    """
    return momentum_energy(partial(lddmm_fields, num_steps=num_steps, integrator=integrator), momentum, fixed, moving,
                           multiplier, spacing, regularization_weight=regularization_weight, image_loss=image_loss,
                           ncc_window=ncc_window, image_sigma=image_sigma)


def _check_settings(caller: str, *, num_steps, integrator, default_steps=DEFAULT_ITERATIONS, **common) -> tuple:
    """Validate :func:`lddmm_register`'s settings; return the kernel and schedule (:func:`~._momentum.check_momentum_settings`)."""
    checked = check_momentum_settings(caller, default_steps=default_steps, **common)
    check_integer(num_steps, "num_steps", caller, minimum=1)
    check_choice(integrator, "integrator", caller, INTEGRATORS)
    return checked


def lddmm_register(
    fixed: torch.Tensor,
    moving: torch.Tensor,
    *,
    sigmas: Sequence[float] = DEFAULT_SIGMAS,
    weights: Sequence[float] | None = None,
    regularization_weight: float = DEFAULT_REGULARIZATION_WEIGHT,
    image_loss: str = "ncc",
    ncc_window: int = 9,
    image_sigma: float = 1.0,
    levels: Sequence[float] | None = None,
    iterations: Sequence[int] | None = None,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    num_steps: int = DEFAULT_NUM_STEPS,
    integrator: str = "rk4",
    tolerance: float = 1e-4,
    map_factor: float = 2.0,
    spacing: Sequence[float] | None = None,
    initial_momentum: torch.Tensor | None = None,
    inverse: bool = True,
    callback: ProgressReporter | None = None,
    progress: bool = False,
) -> dict:
    """Register ``moving`` to ``fixed`` (same grid) by LDDMM shooting of ``m_0`` (module docstring), coarse to fine.

    The optimisation is vSVF's (:func:`~.vsvf.vsvf_register`: Adam on the momentum in the units of
    ``spacing``, area-downsampled levels, the last level's fields upsampled to the full grid).
    Kernel, levels, Adam steps and learning rate are vSVF's (the energies have the same form and scale);
    the weight (0.002), 5 RK4 time steps and ``map_factor`` 2 were chosen on validation cases (docs).

    Args:
        fixed, moving: ``(B, C, *S)`` images, 2D or 3D, intensities of order 1 (e.g. in [0, 1]).
        sigmas: Gaussian widths of ``K`` in the units of ``spacing``; weights: their weights (>= 0, sum 1;
            None: equal).
        regularization_weight: weight of ``<m_0, K m_0>`` (>= 0; larger is smoother).
        image_loss: ``"ncc"`` (local, ``ncc_window`` voxels) or ``"mse"`` (noise ``image_sigma``).
        levels: downsampling factors, coarsest first; iterations: Adam steps at most, per level (None: vSVF's
            pyramid, :func:`~._momentum.default_schedule`: a full-resolution level added in 2D).
        learning_rate: Adam's step, in the units of ``spacing``.
        num_steps: time steps of the shooting (>= 1); integrator: ``"rk4"`` or ``"euler"``.
        tolerance: a level stops when ten steps lower the energy by less than this fraction of it.
        map_factor: the momentum and maps live on a grid this many times coarser than each level's
            images (>= 1; Mermaid's ``map_low_res_factor`` is its inverse); fields are upsampled.
        spacing: voxel size per axis of the full grid (None: voxel units).
        initial_momentum: optional starting ``m_0`` ``(B, D, *S')`` (any grid; resized).
        inverse: also return ``"inverse_ddf"`` (``phi_1 - id``, along the same path's characteristics).
        callback: ``callback(level, iteration, energy)`` after each step; progress: a progress bar.

    Returns:
        dict with ``"ddf"`` (``phi_1^-1 - id``, fixed to moving, voxels), ``"inverse_ddf"`` (with ``inverse``),
        ``"initial_velocity"`` (``v_0``, voxels), ``"momentum"`` (``m_0``, physical units), ``"warped"``,
        ``"energy"`` (last level) and ``"history"`` (per step: ``level``, ``iteration``, ``loss``, ``image``, ``prior``).
    """
    caller = "lddmm_register"
    check_pair(fixed, moving, caller)
    kernel, factors, counts = _check_settings(caller, sigmas=sigmas, weights=weights,
                                              regularization_weight=regularization_weight, image_loss=image_loss,
                                              levels=levels, iterations=iterations, learning_rate=learning_rate,
                                              num_steps=num_steps, integrator=integrator, tolerance=tolerance,
                                              map_factor=map_factor, ndim=fixed.ndim - 2)
    fields = partial(lddmm_fields, num_steps=num_steps, integrator=integrator)
    return register_momentum(fixed, moving, fields, caller=caller, kernel=kernel, factors=factors, counts=counts,
                             learning_rate=learning_rate, tolerance=tolerance, map_factor=map_factor, spacing=spacing,
                             initial_momentum=initial_momentum, inverse=inverse, callback=callback, progress=progress,
                             regularization_weight=regularization_weight, image_loss=image_loss, ncc_window=ncc_window,
                             image_sigma=image_sigma)


class LDDMMRegistration(EngineSettings):
    """Settings holder for :func:`lddmm_register`: ``LDDMMRegistration(regularization_weight=0.01)(fixed, moving)``.

    Args:
        **settings: any keyword of :func:`lddmm_register` except ``initial_momentum``, ``inverse`` and ``callback``.
    """

    engine = staticmethod(lddmm_register)
    per_call = ("initial_momentum", "callback", "inverse")

    def __init__(self, **settings: object) -> None:
        super().__init__(**settings)
        checked = ("sigmas", "weights", "regularization_weight", "image_loss", "levels", "iterations", "learning_rate",
                   "num_steps", "integrator", "tolerance", "map_factor")
        _check_settings(type(self).__name__, **{k: self.settings[k] for k in checked})  # bad values before any work

    def __call__(self, fixed: torch.Tensor, moving: torch.Tensor, inverse: bool = True,
                 callback: ProgressReporter | None = None) -> dict:
        """Register ``moving`` to ``fixed``; see :func:`lddmm_register`."""
        return lddmm_register(fixed, moving, inverse=inverse, callback=callback, **self.settings)
