"""The learned deformable registration pyramid (PWC-Net for 3D medical images).

Gunnarsson, Sjölund and Schön, "Learning a deformable registration pyramid" (Learn2Reg 2020).
A shared (siamese) convolutional pyramid turns the fixed and the moving image into feature
maps at ``1/2, 1/4, ..., 1/2**L``; coarse to fine, each level warps the moving features with
the field of the coarser levels, estimates an affine correction (global average pooling + one
dense layer), correlates the fixed and the warped moving features in a ``(2d+1)^D`` cost volume
and lets a DenseNet ("deform block") estimate a refinement of the field. The paper is the
specification; the public TensorFlow code was not used (its defects are listed below).

Geometry (``L = len(filters)`` levels). The images ``(B, C, *S)`` are resampled by ``image_scale``
(area averaging) to ``S' = scaled_size(S, image_scale)`` (:mod:`~monai_diffreg.networks.pair_geometry`;
``S' = S`` and no resampling at 1.0) and padded at the end of every axis (edge values) to ``P``, a
multiple of ``2**L``; level ``i = 0 .. L-1`` (**coarse to fine**, the order of every output tuple;
the paper and the loss number them ``l = L - 1 - i``, finest first) works on the grid
``n_i = P / 2**(L - i)``, so the finest field lives at half the resolution of ``S'`` (the
pyramid's first block has stride 2). Fields on a level grid are in voxels of that grid (package
convention, :mod:`monai_diffreg.functional`: pull-back, ``warped(x) = moving(x + u(x))``); moving
between grids always goes through :func:`~monai_diffreg.functional.resize.resize_field` (linear,
vectors rescaled). The finest field is upsampled to ``P``, cropped to ``S'`` and resized to ``S``
(the outputs on the input grid); outputs on level grids stay on those (scaled) grids, cropped to
the cells that overlap the image, ``ceil(S' / 2**(L - i))``. ``image_scale`` is for inference at
another resolution than training's (0.5: 1 mm inputs to a network trained on 2 mm images); train
at 1.0 (:class:`~monai_diffreg.losses.reg_pyramid.RegistrationPyramidLoss`'s terms and weights are
set for that geometry: class docstring).

**One level** (``f``, ``m``: the fixed and moving features of the level; ``phi_in``: the coarser
level's transform upsampled, the identity at the coarsest level)::

    A        = affine_head(avgpool([f, m o phi_in]))          the level's affine correction
    phi_a    = phi_in o A                                      A acts on grid positions first
    cv       = local_correlation(f, m o phi_a, d)             (2d+1)^D channels
    delta    = deform([cv, f, u_a])                            u_a: displacement of phi_a (0 at first)
    phi      = phi_a + delta           (diffeomorphic=False: displacements added, the paper)
    phi      = phi_a o exp(delta)      (diffeomorphic=True: delta a velocity, scaling and squaring)

The level loop is not :func:`~monai_diffreg.networks.pyramid.coarse_to_fine` (MDReg-Net's): there
every level sees the *images* warped at full resolution by the coarser fields and adds its field;
here every level warps its own *features* by the incoming field on its grid and composes an affine
before the deformable step, so what the two share is the field upsampling (``resize_field``) and
the warp, both from :mod:`monai_diffreg.functional`.

**How the affine composes with the deformable part, and why.** Every quantity a level
estimates (``A``, then ``delta``) is estimated from the moving features *already warped* by
what came before, so it is a correction ``T`` with ``m o phi_before o T ~ f``: it composes on
the inside, ``phi_before o T`` (:func:`~monai_diffreg.functional.compose.compose_ddf` with
``phi_before`` outer). Hence ``phi_a = phi_in o A`` (the affine is applied to **grid positions**,
``x -> A x``, before the incoming field: its displacement is
:func:`~monai_diffreg.functional.affine.affine_to_ddf`), and the whole transform is
``phi = A_0 o D_0 o A_1 o D_1 o ... o A_{L-1} o D_{L-1}``: at every level *affine o deformable*,
the usual order in which a deformable registration refines an affine pre-alignment. The
displacement version adds ``delta`` to ``u_a`` as the paper does (the first-order form of
``phi_a o (id + delta)``, exact where ``u_a`` is locally a translation); the diffeomorphic version
composes exactly. The affine's input is pooled over ``[f, m o phi_in]`` (before the affine), so the
affine, the cost volume and the deform block see the features in the order they act.

**Affine parameterisation.** The dense layer gives ``D*D + D`` numbers ``[L | t]`` in normalised
coordinates of the *input image* (:func:`~monai_diffreg.functional.affine.affine_from_normalized`: centre 0,
extent ``[-1, 1]``), with ``A_n = I + L`` (displacements) or ``A_n = expm(L)`` (diffeomorphic:
``det A > 0``, so every level's transform stays invertible); it is initialised to zero (weights
and bias), i.e. to the identity. ``"affine_matrices"`` gives each level's ``A`` as a voxel-index
matrix of the input grid ``S`` (:mod:`~monai_diffreg.functional.affine`), the same physical transform on
every grid (:func:`~monai_diffreg.functional.affine.rescale_affine` takes it to the level grid, and from
the network's grid ``S'`` to ``S`` when ``image_scale != 1``).

**Residual refinement.** ``residual=True`` (default) is the paper's intent: each level *refines*
the incoming estimate. ``residual=False`` makes the deform block's output the level's whole
field (``phi = id + delta`` or ``exp(delta)``), the incoming transform and the affine acting only
through the features and the estimate the block sees; that is what the public TF code does, kept
for the ablation.

**Inverse.** Diffeomorphic: ``phi^-1 = exp(-delta_{L-1}) o A_{L-1}^-1 o ... o exp(-delta_0) o A_0^-1``
built level by level (each affine inverted exactly, each factor upsampled like the forward field).
Displacements: :func:`~monai_diffreg.functional.invert.invert_ddf` (fixed-point iteration) of the
finest field on its half-resolution grid, then upsampled; it converges while the field's
Lipschitz constant is below 1, i.e. it is meaningless once the field folds.

**Differences from the paper and from the public TF code.** Paper-faithful: siamese pyramid of
``L`` levels of 3 convolution blocks (first with stride 2), 3x3(x3) kernels, LeakyReLU; affine head
of global average pooling + one dense layer; cost volume with search range 2; DenseNet deform
block (64, 64, 32, 18, 8 filters, each block seeing the concatenation of the inputs and all
previous outputs, then a convolution to ``D`` channels). Choices the paper leaves open or that we
change: the blocks' normalisation is ``norm`` (``None`` by default, or instance norm) instead of
batch normalisation (batch statistics of batch size 1 differ between training and inference);
LeakyReLU slope 0.2 (the package's blocks); the deform block's last convolution is initialised to
zero (so the network starts at exactly the identity); the field is upsampled between levels by
linear interpolation with vector rescaling, without the paper's learned convolution after the
upsampling (a learned layer there would alter the field the coarser level estimated, which
residual refinement is meant to keep); the finest field is upsampled to the input size the same
way. Defects of the public TF code we do not reproduce: it replaces instead of refining the
incoming field at each level (``residual=False`` reproduces it), applies the affine matrix to
displacement vectors instead of positions, and its affine loss pulls the matrix towards ``2I``
(see :class:`~monai_diffreg.losses.reg_pyramid.RegistrationPyramidLoss`). Our default widths give
about 4.8M parameters in 3D; the paper reports 8.6M without the details that would account for the
difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from ..functional.affine import affine_from_normalized, affine_to_ddf, identity_affine, invert_affine, rescale_affine
from ..functional.compose import compose_ddf
from ..functional.correlation import local_correlation, num_correlation_channels
from ..functional.integrate import integrate_velocity
from ..functional.invert import invert_ddf
from ..functional.resize import resize_field, resize_image
from ..functional.warp import warp
from ..validation import check_choice, check_flag, check_integer, check_positive, check_spatial_tensor
from .blocks import NORMS, conv_block, convolution
from .pair_geometry import crop_spatial, pad_to_multiple, scaled_size

__all__ = ["RegistrationPyramid", "FeaturePyramid", "AffineHead", "DenseDeformBlock"]


def _check_widths(value: object, name: str, caller: str, allow_empty: bool) -> tuple[int, ...]:
    ok = isinstance(value, Sequence) and not isinstance(value, str) and (allow_empty or len(value) > 0)
    if ok:
        ok = all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in value)
    if not ok:
        what = "a sequence of integers >= 1" + ("" if allow_empty else " (at least one)")
        raise ValueError(f"{caller}(): '{name}' must be {what}, got {value!r}")
    return tuple(value)


class FeaturePyramid(nn.Module):
    """The siamese feature pyramid: per level three 3x3(x3) convolution blocks, the first with stride 2.

    ``forward(x)``: ``(B, in_channels, *P)`` with ``P`` divisible by ``2**len(filters)`` -> list of
    ``(B, filters[k], *(P / 2**(k + 1)))``, **finest first**.
    """

    def __init__(self, spatial_dims: int, in_channels: int, filters: Sequence[int], norm: str | None = None) -> None:
        super().__init__()
        self.levels = nn.ModuleList()
        channels = in_channels
        for width in filters:
            self.levels.append(nn.Sequential(
                conv_block(spatial_dims, channels, width, norm, stride=2),
                conv_block(spatial_dims, width, width, norm),
                conv_block(spatial_dims, width, width, norm),
            ))
            channels = width

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level in self.levels:
            x = level(x)
            features.append(x)
        return features


class AffineHead(nn.Module):
    """Global average pooling of ``[fixed, warped moving]`` features + one dense layer -> ``D*D + D`` parameters.

    The parameters are those of :func:`~monai_diffreg.functional.affine.affine_from_normalized`;
    the dense layer starts at zero (weights and bias), i.e. at the identity.
    ``forward(fixed, moving)``: two ``(B, C, *n)`` -> ``(B, D*D + D)``.
    """

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        self.dense = nn.Linear(2 * channels, spatial_dims * spatial_dims + spatial_dims)
        nn.init.zeros_(self.dense.weight)
        nn.init.zeros_(self.dense.bias)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> torch.Tensor:
        return self.dense(torch.cat([fixed, moving], dim=1).flatten(2).mean(dim=2))


class DenseDeformBlock(nn.Module):
    """The deform block: a DenseNet of convolution blocks, then a convolution to ``out_channels`` (zero-initialised).

    Block ``j`` sees the concatenation of the input and of the outputs of blocks ``0 .. j-1``; the
    output convolution sees the concatenation of all of them.
    ``forward(x)``: ``(B, in_channels, *n)`` -> ``(B, out_channels, *n)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, filters: Sequence[int], out_channels: int,
                 norm: str | None = None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        channels = in_channels
        for width in filters:
            self.blocks.append(conv_block(spatial_dims, channels, width, norm))
            channels += width
        self.out = convolution(spatial_dims, channels, out_channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = torch.cat([x, block(x)], dim=1)
        return self.out(x)


class _Pass(NamedTuple):
    """One pass through the levels on the padded grid ``P`` (lists coarse to fine)."""

    fields: list[torch.Tensor]  # each level's total displacement on its grid (voxels of that grid)
    increments: list[torch.Tensor]  # each deform block's output (displacement or velocity increment)
    level_matrices: list[torch.Tensor | None]  # each level's affine in voxel indices of its grid (None: affine=False)
    network_matrices: list[torch.Tensor]  # the same affines in voxel indices of S' (identity: affine=False)
    moving: torch.Tensor  # the images resampled to S' and padded to P
    fixed: torch.Tensor


class RegistrationPyramid(nn.Module):
    """Learned deformable registration pyramid (module docstring: levels, composition, inverse, differences).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of **one** image (the pyramid is shared by the moving and the fixed
            image, which must have the same channel count; MDReg-Net's ``in_channels`` is the pair's sum).
        filters: pyramid widths, one per level, finest first (the paper: 16, 32, 32, 32); ``L = len(filters)``.
        search_range: ``d`` of the cost volume, in voxels of each level (2: 125 channels in 3D, 25 in 2D).
        deform_filters: widths of the deform block's DenseNet blocks (64, 64, 32, 18, 8).
        affine: estimate an affine correction at every level (False: the ablation without it).
        diffeomorphic: the deform blocks predict velocity increments, integrated by scaling and
            squaring and composed (False: displacement increments added, the paper).
        normalize_features: normalise the feature vectors before correlating
            (:func:`~monai_diffreg.functional.correlation.local_correlation`'s ``normalize``).
        num_steps: scaling-and-squaring steps of every velocity increment (diffeomorphic only).
        cost_volume: feed the cost volume to the deform block (False: the ablation feeding the
            warped moving features in its place).
        residual: each level refines the incoming field (True, the paper's intent) or replaces it
            (False, the public TF code's behaviour, for the ablation).
        norm: normalisation in every convolution block, ``None`` or ``"instance"``.
        inverse_iterations: fixed-point iterations of the displacement version's inverse.
        image_scale: resampling factor of the images before the pyramid (1.0: none, bit for bit the
            network without the option; 0.5 runs a network trained on 2 mm images on 1 mm inputs).
            Use the network at the scale it was trained at, and train at 1.0 (below).

    ``forward(moving, fixed)`` returns a dict with always the same keys (``S`` the input size,
    ``S' = scaled_size(S, image_scale)`` the size the pyramid sees, ``n_i = ceil(S' / 2**(L - i))``
    the level grids cropped to the image; tuples coarse to fine). **On the input grid** ``S``
    whatever ``image_scale`` (fields brought back with ``resize_field``, images warped from the
    original moving image by the final ``ddf``, never upsampled):

    * ``"ddf"``, ``"inverse_ddf"``: ``(B, D, *S)`` displacement of ``phi`` and of ``phi^-1`` in input
      voxels; ``ddf`` warps the moving image onto the fixed one.
    * ``"warped"``: ``(B, C, *S)`` the moving image warped by ``ddf``.
    * ``"affine_matrices"``: each level's affine correction ``A_i`` ``(B, D, D + 1)`` as a voxel-index
      matrix of the input grid (identities when ``affine=False``).

    **On the level grids** ``n_i`` (of ``S'``: with ``image_scale != 1`` these are the scaled grids,
    their voxels ``2**(L - i) / image_scale`` input voxels wide):

    * ``"level_ddfs"``: each level's **total** displacement ``(B, D, *n_i)`` on its own grid, in voxels
      of that grid (:meth:`level_displacements` gives them on the input grid); the last one, upsampled
      (and resized from ``S'`` to ``S``), is ``"ddf"``.
    * ``"level_increments"``: each deform block's output ``(B, D, *n_i)`` (displacement increments, or
      velocity increments when diffeomorphic).
    * ``"fixed_levels"``, ``"moving_levels"``: the images each level's similarity compares: 2-cell
      averages (of the images resampled to ``S'``) on the grids ``n_0 .. n_{L-2}``, then the input
      images (on ``S``); ``"warped_levels"``: the moving one of each level warped by that level's field
      (on its grid); the last is ``"warped"`` (on ``S``).

    :class:`~monai_diffreg.losses.reg_pyramid.RegistrationPyramidLoss` reads these outputs at any
    ``image_scale`` (the shapes it pairs agree), but its terms and weights are set for the geometry of
    ``image_scale`` 1.0: its finest terms (NCC of ``"warped"``, Dice) on the input grid, its level
    ``l >= 1`` terms on grids ``2^(l+1)`` times coarser. At 0.5 those grids are ``2^(l+2)`` times
    coarser than the input grid, and the NCC window and the smoothness, in voxels of each grid, cover
    twice the extent, so the balance of the terms is not the paper's. Training uses 1.0, as every
    bundle's ``train.json`` does; an inference config sets ``image_scale``.
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 1, filters: Sequence[int] = (16, 32, 32, 32),
                 search_range: int = 2, deform_filters: Sequence[int] = (64, 64, 32, 18, 8), affine: bool = True,
                 diffeomorphic: bool = False, normalize_features: bool = False, num_steps: int = 7,
                 cost_volume: bool = True, residual: bool = True, norm: str | None = None,
                 inverse_iterations: int = 20, image_scale: float = 1.0) -> None:
        super().__init__()
        caller = "RegistrationPyramid"
        if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
            raise ValueError(f"{caller}(): 'spatial_dims' must be 2 or 3, got {spatial_dims!r}")
        self.spatial_dims = spatial_dims
        self.in_channels = check_integer(in_channels, "in_channels", caller, 1)
        self.filters = _check_widths(filters, "filters", caller, allow_empty=False)
        self.search_range = check_integer(search_range, "search_range", caller, 0)
        self.deform_filters = _check_widths(deform_filters, "deform_filters", caller, allow_empty=True)
        self.affine = check_flag(affine, "affine", caller)
        self.diffeomorphic = check_flag(diffeomorphic, "diffeomorphic", caller)
        self.normalize_features = check_flag(normalize_features, "normalize_features", caller)
        self.num_steps = check_integer(num_steps, "num_steps", caller, 0)
        self.cost_volume = check_flag(cost_volume, "cost_volume", caller)
        self.residual = check_flag(residual, "residual", caller)
        self.inverse_iterations = check_integer(inverse_iterations, "inverse_iterations", caller, 0)
        self.image_scale = check_positive(image_scale, "image_scale", caller)
        self.norm = None if norm is None else check_choice(norm, "norm", caller, NORMS)
        self.levels = len(self.filters)
        self.divisor = 2**self.levels
        self.pyramid = FeaturePyramid(spatial_dims, in_channels, self.filters, norm)
        coarse_to_fine = list(reversed(self.filters))
        evidence = num_correlation_channels(spatial_dims, search_range) if cost_volume else None
        self.deform_blocks = nn.ModuleList(
            DenseDeformBlock(spatial_dims, (evidence or width) + width + spatial_dims, self.deform_filters,
                             spatial_dims, norm)
            for width in coarse_to_fine
        )
        self.affine_heads = nn.ModuleList(AffineHead(spatial_dims, width) for width in coarse_to_fine) if affine \
            else nn.ModuleList()

    # ----------------------------------------------------------------------------------------------- the levels
    def _check_pair(self, moving: torch.Tensor, fixed: torch.Tensor) -> None:
        caller = "RegistrationPyramid"
        check_spatial_tensor(moving, "moving", caller, spatial_dims=self.spatial_dims, channels=self.in_channels)
        check_spatial_tensor(fixed, "fixed", caller, spatial_dims=self.spatial_dims, channels=self.in_channels)
        if moving.shape != fixed.shape:
            raise ValueError(f"{caller}(): 'moving' and 'fixed' must have the same shape, "
                             f"got {tuple(moving.shape)} and {tuple(fixed.shape)}")

    def _run(self, moving: torch.Tensor, fixed: torch.Tensor) -> _Pass:
        """Resample by ``image_scale``, pad, build both feature pyramids in one batch, run the levels coarse to fine
        (module docstring). Everything in the returned pass lives on ``S'`` (the resampled grid) or its level grids."""
        self._check_pair(moving, fixed)
        size = self.network_size(moving.shape[2:])
        moving_s, fixed_s = resize_image(moving, size=size, mode="area"), resize_image(fixed, size=size, mode="area")
        moving_p, fixed_p = pad_to_multiple(moving_s, self.divisor), pad_to_multiple(fixed_s, self.divisor)
        padded = tuple(moving_p.shape[2:])
        if self.norm is not None and math.prod(s // self.divisor for s in padded) < 2:
            scaled = "" if size == tuple(moving.shape[2:]) else f" (resampled to {size} by image_scale={self.image_scale})"
            raise ValueError(
                f"RegistrationPyramid(): with norm={self.norm!r} the coarsest features (1/{self.divisor} of the padded "
                f"grid {padded}) need more than one voxel for the normalisation statistics; images of shape "
                f"{tuple(moving.shape)}{scaled} are too small"
            )
        batch = moving.shape[0]
        features = self.pyramid(torch.cat([fixed_p, moving_p], dim=0))[::-1]  # coarse to fine
        field: torch.Tensor | None = None
        fields, increments, level_matrices, network_matrices = [], [], [], []
        for index, level_features in enumerate(features):
            fixed_f, moving_f = level_features[:batch], level_features[batch:]
            grid = tuple(fixed_f.shape[2:])
            incoming = None if field is None else resize_field(field, size=grid)
            warped = moving_f if incoming is None else warp(moving_f, incoming)
            current, matrix = incoming, None
            if self.affine:
                params = self.affine_heads[index](fixed_f, warped)
                matrix_in = affine_from_normalized(params, size, exponential=self.diffeomorphic)  # on S', hence on P
                matrix = rescale_affine(matrix_in, padded, grid)
                affine_ddf = affine_to_ddf(matrix, grid)
                current = affine_ddf if incoming is None else compose_ddf(incoming, affine_ddf)
                warped = warp(moving_f, current)
            else:
                matrix_in = identity_affine(batch, self.spatial_dims, moving_f.dtype, moving_f.device)
            evidence = local_correlation(fixed_f, warped, self.search_range, self.normalize_features) \
                if self.cost_volume else warped
            estimate = fixed_f.new_zeros((batch, self.spatial_dims, *grid)) if current is None else current
            increment = self.deform_blocks[index](torch.cat([evidence, fixed_f, estimate], dim=1))
            step = integrate_velocity(increment, self.num_steps) if self.diffeomorphic else increment
            if not self.residual or current is None:
                field = step
            else:
                field = compose_ddf(current, step) if self.diffeomorphic else current + step
            fields.append(field)
            increments.append(increment)
            level_matrices.append(matrix)
            network_matrices.append(matrix_in)
        return _Pass(fields, increments, level_matrices, network_matrices, moving_p, fixed_p)

    def _inverse_field(self, run: _Pass) -> torch.Tensor:
        """``phi^-1`` on the finest level grid (module docstring, "Inverse")."""
        if not self.diffeomorphic:
            return invert_ddf(run.fields[-1], self.inverse_iterations)
        inverse: torch.Tensor | None = None
        for index in range(self.levels) if self.residual else [self.levels - 1]:
            grid = tuple(run.fields[index].shape[2:])
            if inverse is not None:
                inverse = resize_field(inverse, size=grid)
            matrix = run.level_matrices[index]
            if self.residual and matrix is not None:
                affine_inverse = affine_to_ddf(invert_affine(matrix), grid)
                inverse = affine_inverse if inverse is None else compose_ddf(affine_inverse, inverse)
            step = integrate_velocity(-run.increments[index], self.num_steps)
            inverse = step if inverse is None else compose_ddf(step, inverse)
        return inverse

    # ----------------------------------------------------------------------------------------------- grids
    def network_size(self, spatial_size: Sequence[int]) -> tuple[int, ...]:
        """``S' = scaled_size(S, image_scale)``: the size the pyramid sees for an input of size ``S``."""
        return scaled_size(spatial_size, self.image_scale)

    def level_sizes(self, spatial_size: Sequence[int]) -> list[tuple[int, ...]]:
        """Level grids cropped to the image, ``ceil(S' / 2**(L - i))``, coarse to fine, for an input of size ``S``."""
        size = self.network_size(spatial_size)
        return [tuple(-(-s // 2 ** (self.levels - index)) for s in size) for index in range(self.levels)]

    def _on_input_grid(self, field: torch.Tensor, padded: Sequence[int], size: Sequence[int]) -> torch.Tensor:
        """A displacement on a level grid of the padded grid -> ``(B, D, *S)`` in input voxels (via ``S'``)."""
        ddf = crop_spatial(resize_field(field, size=padded), self.network_size(size))
        return resize_field(ddf, size=size)

    def _input_matrix(self, matrix: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """A voxel-index matrix of ``S'`` -> the same transform as a voxel-index matrix of the input grid ``S``."""
        network = self.network_size(size)
        return matrix if network == tuple(size) else rescale_affine(matrix, network, size)

    # ----------------------------------------------------------------------------------------------- outputs
    def displacements(self, moving: torch.Tensor, fixed: torch.Tensor, inverse: bool = True) -> dict[str, torch.Tensor]:
        """Only ``"ddf"`` and (``inverse``) ``"inverse_ddf"`` ``(B, D, *S)`` (inference without the other outputs)."""
        run = self._run(moving, fixed)
        size, padded = tuple(moving.shape[2:]), run.moving.shape[2:]
        out = {"ddf": self._on_input_grid(run.fields[-1], padded, size)}
        if inverse:
            out["inverse_ddf"] = self._on_input_grid(self._inverse_field(run), padded, size)
        return out

    def level_displacements(self, moving: torch.Tensor, fixed: torch.Tensor) -> list[torch.Tensor]:
        """Every level's total displacement on the input grid ``(B, D, *S)``, coarse to fine (the last is ``"ddf"``)."""
        run = self._run(moving, fixed)
        return [self._on_input_grid(field, run.moving.shape[2:], moving.shape[2:]) for field in run.fields]

    def warped_level_images(self, moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """``(B, L * C, *S)``: the moving image warped by every level's field on the input grid, coarse to fine
        (the paper's Table 2; the last block equals ``"warped"``)."""
        return torch.cat([warp(moving, ddf) for ddf in self.level_displacements(moving, fixed)], dim=1)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict[str, torch.Tensor | tuple[torch.Tensor, ...]]:
        """Register ``moving`` to ``fixed``, both ``(B, in_channels, *S)``; see the class docstring for the keys."""
        run = self._run(moving, fixed)
        size, padded = tuple(moving.shape[2:]), run.moving.shape[2:]
        sizes = self.level_sizes(size)
        ddf = self._on_input_grid(run.fields[-1], padded, size)
        warped = warp(moving, ddf)
        fixed_levels, moving_levels, warped_levels = [], [], []
        for index in range(self.levels - 1):
            field = run.fields[index]
            grid = field.shape[2:]
            moving_l = resize_image(run.moving, size=grid, mode="area")
            fixed_levels.append(crop_spatial(resize_image(run.fixed, size=grid, mode="area"), sizes[index]))
            moving_levels.append(crop_spatial(moving_l, sizes[index]))
            warped_levels.append(crop_spatial(warp(moving_l, field), sizes[index]))
        return {
            "ddf": ddf,
            "inverse_ddf": self._on_input_grid(self._inverse_field(run), padded, size),
            "warped": warped,
            "level_ddfs": tuple(crop_spatial(f, n) for f, n in zip(run.fields, sizes)),
            "level_increments": tuple(crop_spatial(v, n) for v, n in zip(run.increments, sizes)),
            "affine_matrices": tuple(self._input_matrix(matrix, size) for matrix in run.network_matrices),
            "fixed_levels": (*fixed_levels, fixed),
            "moving_levels": (*moving_levels, moving),
            "warped_levels": (*warped_levels, warped),
        }
