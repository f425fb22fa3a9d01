"""Test-time refinement of a network's velocity for one pair (instance-specific optimisation).

A network states where the refinement starts
(:class:`~monai_diffreg.networks.contract.RefinableNetwork`: the images on its grid, its
velocity, integration settings), the loss states what is minimised
(:class:`RefinementLoss`: normally the training loss, its image term and its prior on the
velocity), and :func:`~monai_diffreg.engines.svf_optim.refine_velocity` optimises. Neither the
network nor the loss knows the optimiser, so each is written once and a new network or loss
joins by offering the two methods.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

import torch

from ..losses.wrappers import BIDIRECTIONAL_REDUCTIONS
from ..networks.contract import RefinableNetwork
from .svf_optim import refine_velocity

__all__ = ["RefinementLoss", "check_refinement", "refine_network"]

ImageTerm = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Regularizer = Callable[[torch.Tensor], torch.Tensor]


@runtime_checkable
class RefinementLoss(Protocol):
    """A loss usable for refinement: ``refinement_terms(context) -> (image_term, regularizer, directions)``.

    ``image_term(warped, target)`` is one direction's weighted dissimilarity (scalar),
    ``regularizer(velocity)`` the weighted prior on the velocity, and ``directions`` how both
    directions are matched: ``None`` (the forward one only) or the loss's bidirectional
    reduction, ``"mean"`` or ``"sum"`` of the two image terms
    (:func:`~monai_diffreg.losses.combine_directions`, the convention its training uses).
    ``context`` is :attr:`~monai_diffreg.networks.contract.VelocityRefinementStart.context`.
    """

    def refinement_terms(self, context: Mapping[str, torch.Tensor]) -> tuple[ImageTerm, Regularizer, str | None]:
        """The image term, the regulariser and how to combine both directions (None: forward only)."""


def check_refinement(network: object, loss: object, caller: str, loss_argument: str = "loss") -> None:
    """Raise a ValueError unless ``network`` offers refinement and ``loss`` its refinement terms."""
    if not isinstance(network, RefinableNetwork):
        raise ValueError(f"{caller}(): {type(network).__name__} does not offer refinement "
                         "(no refinement_start/refined_outputs/refined_displacements methods)")
    if not isinstance(loss, RefinementLoss):
        raise ValueError(f"{caller}(): '{loss_argument}' must offer refinement_terms(context), normally the loss the "
                         f"weights were trained with, got {type(loss).__name__}")


def refine_network(network: RefinableNetwork, moving: torch.Tensor, fixed: torch.Tensor, loss: RefinementLoss,
                   steps: int = 50, *, coarse_steps: int = 0, learning_rate: float = 0.1,
                   smoothing_sigma: float | None = None, tolerance: float | None = None,
                   callback: Callable[[int, float], None] | None = None, displacements_only: bool = False,
                   inverse: bool = True) -> dict[str, torch.Tensor]:
    """Refine ``network``'s velocity for the pair by Adam on ``loss``'s refinement terms.

    Args:
        network: a :class:`~monai_diffreg.networks.contract.RefinableNetwork`.
        moving, fixed: ``(B, C, *S)`` images, as for the network's forward.
        loss: a :class:`RefinementLoss`, normally the one the weights were trained with (its
            balance of image term and prior sets where the refinement converges).
        steps: Adam iterations at the network's resolution (0, with no coarse steps: the network's result).
        coarse_steps: iterations on half-size images first (an eighth of the cost per step in 3D).
        learning_rate: Adam step size, about the largest change of the velocity per step (its voxels).
        smoothing_sigma: Gaussian preconditioning of the updates (velocity voxels, the whole
            Gaussian); None: the network's default (``start.smoothing_sigma``, its kernel size).
        tolerance: stop a stage once its loss stalls (absolute; None: run every step).
        callback: ``callback(iteration, loss)`` after each step.
        displacements_only: return the network's :meth:`refined_displacements` instead (no
            warped images: what a registration method needs).
        inverse: with ``displacements_only``, also ``"inverse_ddf"``.

    Returns:
        the network's :meth:`refined_outputs` (``"ddf"``, ``"inverse_ddf"``, ``"velocity"``,
        ``"warped"``, ...), or its :meth:`refined_displacements`, detached.

    Raises:
        ValueError: the network or the loss does not offer refinement, or bad settings.
    """
    caller = "refine_network"
    check_refinement(network, loss, caller)
    with torch.no_grad():
        start = network.refinement_start(moving, fixed)
    image_term, regularizer, directions = loss.refinement_terms(start.context)
    if directions is not None and directions not in BIDIRECTIONAL_REDUCTIONS:
        raise ValueError(f"{caller}(): {type(loss).__name__}.refinement_terms() must give None or one of "
                         f"{list(BIDIRECTIONAL_REDUCTIONS)} as its third item (how both directions combine), "
                         f"got {directions!r}")
    kernel_size = None  # an explicit sigma gets the whole Gaussian
    if smoothing_sigma is None:
        smoothing_sigma, kernel_size = start.smoothing_sigma, start.smoothing_kernel_size
    velocity, _ = refine_velocity(
        start.fixed, start.moving, start.velocity, steps, loss_fn=image_term, regularizer=regularizer,
        bidirectional=directions is not None, bidirectional_reduction=directions or "mean",
        learning_rate=learning_rate, num_steps=start.num_steps,
        smoothing_sigma=smoothing_sigma, smoothing_kernel_size=kernel_size, int_downsize=start.int_downsize,
        callback=callback, coarse_steps=coarse_steps, tolerance=tolerance,
    )
    with torch.no_grad():
        if displacements_only:
            return network.refined_displacements(moving, fixed, velocity, start, inverse=inverse)
        return network.refined_outputs(moving, fixed, velocity, start)
