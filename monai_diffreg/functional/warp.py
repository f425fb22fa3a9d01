"""Pull-back warping of images by displacement fields (MONAI ``Warp`` convention)."""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from ..validation import NonFiniteError, all_finite, check_choice, check_field, check_spatial_tensor
from .grid import tracing

__all__ = ["warp", "WARP_MODES", "PADDING_MODES", "DISPLACEMENT_GRADIENTS", "voxel_to_sampling_coordinates"]

WARP_MODES = ("bilinear", "nearest")
PADDING_MODES = ("border", "zeros", "reflection")
#: how :func:`warp` differentiates with respect to the displacement (its docstring)
DISPLACEMENT_GRADIENTS = ("exact", "symmetric")
#: ``"symmetric"``: half the distance, in voxels, between the two sampling positions whose derivatives are averaged
_SYMMETRIC_OFFSET = 1e-3


def voxel_to_sampling_coordinates(locations: torch.Tensor, spatial_shape: tuple[int, ...]) -> torch.Tensor:
    """Voxel coordinates ``(..., D)`` (tensor axis order) -> ``grid_sample`` coordinates ``(..., D)``.

    The result is normalised to ``[-1, 1]`` for ``align_corners=True``, with the last axis in
    ``grid_sample``'s (x, y[, z]) order, i.e. spatial axes reversed.
    """
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in spatial_shape], device=locations.device, dtype=locations.dtype)
    return (locations * scale - 1.0).flip(-1)


@lru_cache(maxsize=16)
def _sampling_axes(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
                   ) -> tuple[tuple[torch.Tensor, ...], tuple[float, ...]]:
    """Per spatial axis ``k``: the ``grid_sample`` coordinate of each voxel index, shaped to broadcast against
    ``(B, *S)`` (``(1, .., n_k, .., 1)``), and the scale from voxels, so that axis ``k``'s sampling coordinate
    is ``coordinate_k + scale_k * u_k`` (cached; never modify)."""
    scales = tuple(2.0 / max(n - 1, 1) for n in shape)
    coordinates = tuple((torch.arange(n, device=device, dtype=dtype) * scales[k] - 1.0).view(
        1, *(n if j == k else 1 for j in range(len(shape)))) for k, n in enumerate(shape))
    return coordinates, scales


def warp(image: torch.Tensor, ddf: torch.Tensor, mode: str = "bilinear", padding_mode: str = "border",
         displacement_gradient: str = "exact") -> torch.Tensor:
    """Warp ``image`` by ``ddf``: ``warped(x) = image(x + ddf(x))``.

    Args:
        image: ``(B, C, *spatial)``, 2D or 3D.
        ddf: ``(B, D, *spatial)`` displacement in voxels on the same grid (see package conventions).
        mode: ``"bilinear"`` (linear in 2D/3D, differentiable) or ``"nearest"`` (label maps).
        padding_mode: value outside the image: ``"border"`` (nearest edge value), ``"zeros"``
            or ``"reflection"``.
        displacement_gradient: the derivative with respect to ``ddf`` (bilinear mode; the value and the
            derivative with respect to ``image`` are the same either way). ``"exact"``: that of the linear
            interpolation as ``grid_sample`` gives it, one-sided where a sampling position is at a voxel (a
            kink), e.g. everywhere at the identity, where float rounding of the sampling coordinates makes it
            a forward difference at some voxels and a backward one at others: an optimisation started at the
            identity then depends on the orientation of the images. ``"symmetric"``: at a kink the mean of
            the two one-sided derivatives (the central difference at a voxel), elsewhere the exact one; the
            mean of the exact derivatives at the positions moved by +-1e-3 voxel along every axis (inside a
            cell the exact one: in 2D exactly, the interpolant being linear along each axis there; in 3D to
            1e-6 times a mixed third difference).

    Returns:
        ``(B, C, *spatial)`` warped image, same dtype as ``image``.
    """
    check_spatial_tensor(image, "image", "warp")
    check_field(ddf, "ddf", "warp", like=image)
    check_choice(mode, "mode", "warp", WARP_MODES)
    check_choice(padding_mode, "padding_mode", "warp", PADDING_MODES)
    check_choice(displacement_gradient, "displacement_gradient", "warp", DISPLACEMENT_GRADIENTS)
    if ddf.device.type == "cpu" and not tracing() and not all_finite(ddf):
        # grid_sample's CPU kernels index memory with non-finite coordinates unchecked (a crash, not an error)
        raise NonFiniteError("warp(): 'ddf' has non-finite values (NaN or Inf): the computation that produced "
                                 "it diverged")
    coordinates, scales = (_sampling_axes.__wrapped__ if tracing() else _sampling_axes)(
        tuple(ddf.shape[2:]), ddf.device, image.dtype)
    # the grid from per-axis identity coordinates (broadcast, nothing of the grid's size read) and the
    # field's components, stacked in grid_sample's reversed axis order: one pass over the field (the image
    # is left contiguous: grid_sample's backward is about twice slower on a permuted input)
    ddf = ddf.to(image.dtype)
    grid = torch.stack([torch.add(coordinates[k], ddf[:, k], alpha=scales[k]) for k in reversed(range(ddf.shape[1]))],
                       dim=-1)
    if displacement_gradient == "exact" or mode != "bilinear" or not grid.requires_grad:
        return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=True)
    offset = grid.new_tensor([_SYMMETRIC_OFFSET * scales[k] for k in reversed(range(ddf.shape[1]))])
    # sampling positions within twice the offset of a voxel plane: those where ddf (voxels) is near an integer
    near_plane = ((ddf.detach() + 2 * _SYMMETRIC_OFFSET).remainder_(1.0) <= 4 * _SYMMETRIC_OFFSET).any(1)  # (B, *S)
    return _SymmetricBilinearSample.apply(image, grid, padding_mode, offset, near_plane)


class _SymmetricBilinearSample(torch.autograd.Function):
    """``grid_sample`` (bilinear, ``align_corners``) whose grid derivative is the mean of the exact ones at
    ``grid + offset`` and ``grid - offset`` (``warp``'s ``displacement_gradient="symmetric"``); the value and the
    image derivative are ``grid_sample``'s. Once differentiable.

    The two agree except where a kink (a voxel plane) lies within the offset of a sampling position: the backward
    takes the exact derivative everywhere (one pass) and the mean of the two only at the positions ``near_plane``
    ``(B, *S)`` marks (within twice the offset), unless they are most of them (e.g. at the identity), where it
    takes the mean everywhere."""

    @staticmethod
    def forward(ctx, image, grid, padding_mode, offset, near_plane):
        ctx.save_for_backward(image, grid, offset, near_plane)
        ctx.padding = {"zeros": 0, "border": 1, "reflection": 2}[padding_mode]  # grid_sample's enumeration
        return F.grid_sample(image, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)

    @staticmethod
    def backward(ctx, grad_output):
        image, grid, offset, near_plane = ctx.saved_tensors
        sampler_backward = (torch.ops.aten.grid_sampler_2d_backward if image.ndim == 4
                            else torch.ops.aten.grid_sampler_3d_backward)
        grad_output = grad_output.contiguous()
        image_too = bool(ctx.needs_input_grad[0])

        def gradients(out, source, positions, mask):  # (d/d image, d/d grid); interpolation 0 = bilinear
            return sampler_backward(out, source, positions, 0, ctx.padding, True, mask)

        def symmetric(out, source, positions):
            return 0.5 * (gradients(out, source, positions + offset, [False, True])[1]
                          + gradients(out, source, positions - offset, [False, True])[1])

        if float(near_plane.float().mean()) > 0.5:
            grad_image = gradients(grad_output, image, grid, [True, False])[0] if image_too else None
            return grad_image, symmetric(grad_output, image, grid), None, None, None
        grad_image, grad_grid = gradients(grad_output, image, grid, [image_too, True])
        ndim, trailing = grid.shape[-1], (1,) * (image.ndim - 3)  # the near positions as a (1, K, 1[, 1]) grid
        for b in range(grid.shape[0]):
            index = near_plane[b].flatten().nonzero().squeeze(1)
            count = index.numel()
            if count:
                positions = grid[b].reshape(-1, ndim).index_select(0, index).view(1, count, *trailing, ndim)
                out = grad_output[b].flatten(1).index_select(1, index).view(1, -1, count, *trailing)
                grad_grid[b].view(-1, ndim).index_copy_(0, index, symmetric(out, image[b:b + 1], positions).view(count, ndim))
        return (grad_image if image_too else None), grad_grid, None, None, None
