"""HyperMorph: one diffeomorphic VoxelMorph for every regularisation weight.

Hoopes, Hoffmann, Fischl, Guttag, Dalca: "HyperMorph: amortized hyperparameter learning for
image registration" (IPMI 2021, arXiv 2101.01035). A hypernetwork (a small MLP) maps the
regularisation weight ``lambda in [0, 1]`` to the weights and biases of every convolution of
the registration U-Net. Training minimises ``(1 - lambda) L_sim + lambda L_reg`` with
``lambda`` drawn per batch item (:mod:`monai_diffreg.losses.hypermorph`); at test time
``lambda`` is an input, so one trained model covers the whole accuracy / smoothness trade-off.

Here the registration network is the diffeomorphic VoxelMorph of
:class:`~monai_diffreg.networks.prob_voxelmorph.ProbabilisticVoxelMorph` without the variance
head (the HyperMorph paper's setting): the same U-Net topology (:class:`HyperVxmUNet`, widths
and ``int_downsize`` of :class:`~monai_diffreg.networks.vxm_unet.VxmUNet`), a velocity head,
scaling and squaring on the velocity grid, upsampling with vector rescaling to the input grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..functional.warp import warp
from ..validation import check_integer, check_spatial_tensor
from .pair_geometry import VelocityGridGeometry, check_registration_pair, crop_spatial
from .vxm_unet import VxmUNet

__all__ = ["hyper_conv", "HyperConv", "HyperNetwork", "HyperVxmUNet", "HyperMorph", "check_reg_weight"]


def check_reg_weight(reg_weight: object, batch: int, caller: str, *, like: torch.Tensor) -> torch.Tensor:
    """``reg_weight`` as a ``(batch, 1)`` tensor on ``like``'s device and dtype, after checking it.

    Args:
        reg_weight: a number, or a tensor of shape ``()``, ``(batch,)`` or ``(batch, 1)``, every value in
            ``[0, 1]`` (NaN refused). A tensor keeps its autograd history (``d output / d lambda`` works).
        batch: the batch size ``B``.
        caller: the public callable's name, for the message.
        like: a tensor whose device and floating dtype the result takes.
    """
    if isinstance(reg_weight, bool) or not isinstance(reg_weight, (int, float, torch.Tensor)):
        raise ValueError(f"{caller}(): 'reg_weight' must be a number or a tensor in [0, 1], got {type(reg_weight).__name__}")
    if isinstance(reg_weight, torch.Tensor):
        if reg_weight.ndim > 2 or (reg_weight.ndim >= 1 and reg_weight.shape[0] != batch) or (
                reg_weight.ndim == 2 and reg_weight.shape[1] != 1) or not reg_weight.is_floating_point():
            raise ValueError(f"{caller}(): 'reg_weight' must be a floating tensor of shape (), ({batch},) or "
                             f"({batch}, 1), got {reg_weight.dtype} {tuple(reg_weight.shape)}")
        bad = torch.isnan(reg_weight) | (reg_weight < 0) | (reg_weight > 1)
        if bool(bad.any()):
            raise ValueError(f"{caller}(): 'reg_weight' must lie in [0, 1], got {reg_weight.detach().flatten().tolist()}")
        return reg_weight.to(device=like.device, dtype=like.dtype).reshape(-1, 1).expand(batch, 1)
    if not 0.0 <= float(reg_weight) <= 1.0:  # NaN fails both comparisons
        raise ValueError(f"{caller}(): 'reg_weight' must lie in [0, 1], got {reg_weight!r}")
    return torch.full((batch, 1), float(reg_weight), device=like.device, dtype=like.dtype)


def hyper_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, padding: int = 1) -> torch.Tensor:
    """A convolution with a different kernel for every batch item (stride 1).

    Implemented as one grouped convolution over the batch: ``x`` ``(B, C, *S)`` is viewed as one
    image with ``B * C`` channels and ``groups = B``, so item ``b`` meets only ``weight[b]``. This
    is exact (the same sums as ``B`` separate convolutions) and is a single kernel launch, where a
    Python loop over the items would launch ``B`` small ones (slow on a GPU for the 8-32 item
    batches of 2D training, and no faster on a CPU).

    Args:
        x: ``(B, C_in, *S)``, 2 or 3 spatial axes.
        weight: ``(B, C_out, C_in, *k)`` one kernel per batch item.
        bias: ``(B, C_out)`` or None.
        padding: zero padding on every side.

    Returns:
        ``(B, C_out, *S')``, ``S' = S + 2 padding - k + 1``.
    """
    ndim = check_spatial_tensor(x, "x", "hyper_conv")
    b, c_in = x.shape[:2]
    if weight.ndim != ndim + 3 or weight.shape[0] != b or weight.shape[2] != c_in:
        raise ValueError(f"hyper_conv(): 'weight' must be (B={b}, C_out, C_in={c_in}, {ndim} kernel sizes), "
                         f"got shape {tuple(weight.shape)}")
    c_out = weight.shape[1]
    if bias is not None and tuple(bias.shape) != (b, c_out):
        raise ValueError(f"hyper_conv(): 'bias' must have shape ({b}, {c_out}), got {tuple(bias.shape)}")
    conv = (F.conv2d, F.conv3d)[ndim - 2]
    out = conv(x.reshape(1, b * c_in, *x.shape[2:]), weight.reshape(b * c_out, c_in, *weight.shape[3:]),
               None if bias is None else bias.reshape(b * c_out), padding=padding, groups=b)
    return out.reshape(b, c_out, *out.shape[2:])


class HyperConv(nn.Module):
    """Convolution (kernel 3, padding 1) whose weight and bias a linear layer makes from a hyper-embedding.

    ``[weight_b, bias_b] = A h_b + a`` for the embedding ``h_b`` ``(E,)`` of batch item ``b``, then
    :func:`hyper_conv`. The constant part ``a`` is initialised like a PyTorch convolution
    (uniform in ``+-1/sqrt(fan_in)``), the matrix ``A`` ~ ``N(0, (1/sqrt(fan_in))^2 / E)``, so that
    with an O(1) embedding the generated kernels start at the usual scale and depend on it.
    :meth:`init_as_flow_head` instead gives VoxelMorph's near-zero flow-head start.

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: channel counts.
        embedding_dim: ``E``, the width of the hypernetwork's output.
        kernel_size: odd kernel width (3); padding ``kernel_size // 2`` keeps the size.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, embedding_dim: int,
                 kernel_size: int = 3) -> None:
        super().__init__()
        caller = "HyperConv"
        if spatial_dims not in (2, 3):
            raise ValueError(f"{caller}(): 'spatial_dims' must be 2 or 3, got {spatial_dims!r}")
        self.in_channels = check_integer(in_channels, "in_channels", caller, 1)
        self.out_channels = check_integer(out_channels, "out_channels", caller, 1)
        self.embedding_dim = check_integer(embedding_dim, "embedding_dim", caller, 1)
        if check_integer(kernel_size, "kernel_size", caller, 1) % 2 == 0:
            raise ValueError(f"{caller}(): 'kernel_size' must be odd, got {kernel_size!r}")
        self.spatial_dims = spatial_dims
        self.kernel_size = kernel_size
        self.weight_shape = (out_channels, in_channels) + (kernel_size,) * spatial_dims
        self.num_weights = math.prod(self.weight_shape)
        self.generator = nn.Linear(embedding_dim, self.num_weights + out_channels)
        bound = 1.0 / math.sqrt(in_channels * kernel_size**spatial_dims)
        nn.init.normal_(self.generator.weight, 0.0, bound / math.sqrt(embedding_dim))
        nn.init.uniform_(self.generator.bias, -bound, bound)

    def init_as_flow_head(self, std: float = 1e-5) -> HyperConv:
        """Generated kernels ~ N(0, std) and zero bias for every embedding (the velocity starts at ~0)."""
        nn.init.normal_(self.generator.weight, 0.0, std)
        with torch.no_grad():
            self.generator.bias[: self.num_weights].normal_(0.0, std)
            self.generator.bias[self.num_weights:].zero_()
        return self

    def kernels(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight ``(B, C_out, C_in, *k)`` and bias ``(B, C_out)`` for the embeddings ``(B, E)``."""
        if embedding.ndim != 2 or embedding.shape[1] != self.embedding_dim:
            raise ValueError(f"HyperConv(): 'embedding' must have shape (B, {self.embedding_dim}), "
                             f"got {tuple(embedding.shape)}")
        params = self.generator(embedding)
        weight = params[:, : self.num_weights].reshape(-1, *self.weight_shape)
        return weight, params[:, self.num_weights:]

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, C_in, *S)``, ``embedding`` ``(B, E)`` -> ``(B, C_out, *S)``."""
        check_spatial_tensor(x, "x", "HyperConv", spatial_dims=self.spatial_dims, channels=self.in_channels)
        weight, bias = self.kernels(embedding)
        if weight.shape[0] != x.shape[0]:
            raise ValueError(f"HyperConv(): 'x' and 'embedding' must share the batch size, "
                             f"got {tuple(x.shape)} and {tuple(embedding.shape)}")
        return hyper_conv(x, weight, bias, padding=self.kernel_size // 2)


class HyperNetwork(nn.Sequential):
    """The hypernetwork MLP: ``lambda`` ``(B, 1)`` -> embedding ``(B, hidden[-1])``, Linear + ReLU per layer.

    Default ``hidden=(32, 64, 64)``: three dense layers, the small MLP of the paper (its
    reference code uses dense ReLU layers of 32 and 64 units); the last ReLU makes the embedding
    non-negative, as the paper's hypernetwork features are.
    """

    def __init__(self, hidden: Sequence[int] = (32, 64, 64), in_features: int = 1) -> None:
        widths = [int(h) for h in hidden]
        if not widths or min(widths) < 1:
            raise ValueError(f"HyperNetwork(): 'hidden' must be a non-empty sequence of positive widths, got {tuple(hidden)!r}")
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Linear(in_features, width), nn.ReLU()]
            in_features = width
        super().__init__(*layers)
        self.out_features = widths[-1]


class _HyperBlock(nn.Module):
    """HyperConv + LeakyReLU(0.2), the hyper counterpart of :func:`~monai_diffreg.networks.blocks.conv_block`."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, embedding_dim: int) -> None:
        super().__init__()
        self.conv = HyperConv(spatial_dims, in_channels, out_channels, embedding_dim)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv(x, embedding), 0.2)


class HyperVxmUNet(VxmUNet):
    """:class:`~monai_diffreg.networks.vxm_unet.VxmUNet`'s topology with every convolution a :class:`HyperConv`.

    Same encoder / decoder widths, max pooling, nearest upsampling, skip connections, LeakyReLU
    0.2 and early stop of the decoder at ``1 / int_downsize`` (VxmUNet itself, built with hyper
    blocks); no normalisation (HyperMorph has none). ``forward(x, embedding)``: ``x``
    ``(B, in_channels, *S)`` with every size divisible by :attr:`divisor`, ``embedding`` ``(B, E)``
    from the hypernetwork, output ``(B, dec_channels[-1], *(S // int_downsize))``.
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 2, enc_channels: Sequence[int] = (16, 32, 32, 32),
                 dec_channels: Sequence[int] = (32, 32, 32, 32, 32, 16, 16), int_downsize: int = 2,
                 embedding_dim: int = 64) -> None:
        super().__init__(spatial_dims, in_channels, enc_channels, dec_channels, int_downsize, norm=None,
                         block=lambda dims, cin, cout: _HyperBlock(dims, cin, cout, embedding_dim))

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return super().forward(x, embedding)


class HyperMorph(VelocityGridGeometry, nn.Module):
    """Diffeomorphic VoxelMorph whose convolution weights are functions of the regularisation weight.

    Geometry of :class:`~monai_diffreg.networks.pair_geometry.VelocityGridGeometry` (U-Net divisor
    ``2**len(enc_channels)``): the velocity lives on the grid ``n = ceil(S' / int_downsize)`` of the
    images resampled by ``image_scale`` to ``S'``, its voxels ``int_downsize / image_scale`` input voxels wide.

    ``lambda`` -> :class:`HyperNetwork` -> embedding -> every :class:`HyperConv` of
    :class:`HyperVxmUNet` and of the velocity head. The head starts as VoxelMorph's flow head
    (generated kernels ~ N(0, 1e-5), zero bias), so the velocity is ~0 at initialisation for
    every ``lambda``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of moving + fixed (2 for single-channel images).
        enc_channels, dec_channels: U-Net widths (VoxelMorph's default).
        int_downsize: the velocity grid is ``1 / int_downsize`` of the network's input grid.
        num_steps: scaling-and-squaring steps (7).
        image_scale: resampling factor of the images before the network (1.0: none).
        hyper_hidden: widths of the hypernetwork's dense layers (its last is the embedding size).
        default_reg_weight: the ``lambda`` used when ``forward`` gets none, in ``[0, 1]``.

    ``forward(moving, fixed, reg_weight=None)`` returns (``n`` = velocity grid):

    * ``"ddf"``: ``(B, D, *S)`` displacement of ``exp(velocity)`` (warps moving onto fixed), input voxels.
    * ``"inverse_ddf"``: ``(B, D, *S)`` displacement of ``exp(-velocity)``.
    * ``"velocity"``: ``(B, D, *n)``, in velocity-grid voxels.
    * ``"warped"``: ``(B, C_moving, *S)`` moving warped by ``ddf``.
    * ``"warped_fixed"``: ``(B, C_fixed, *S)`` fixed warped by ``inverse_ddf`` (for bidirectional losses).
    * ``"reg_weight"``: ``(B, 1)`` the ``lambda`` of each item (what the loss weights with).
    """

    def __init__(self, spatial_dims: int = 3, in_channels: int = 2, enc_channels: Sequence[int] = (16, 32, 32, 32),
                 dec_channels: Sequence[int] = (32, 32, 32, 32, 32, 16, 16), int_downsize: int = 2,
                 num_steps: int = 7, image_scale: float = 1.0, hyper_hidden: Sequence[int] = (32, 64, 64),
                 default_reg_weight: float = 0.5) -> None:
        super().__init__()
        caller = "HyperMorph"
        self._init_geometry(spatial_dims, in_channels, int_downsize, image_scale, num_steps)
        if isinstance(default_reg_weight, bool) or not isinstance(default_reg_weight, (int, float)) or \
                not 0.0 <= default_reg_weight <= 1.0:
            raise ValueError(f"{caller}(): 'default_reg_weight' must be a number in [0, 1], got {default_reg_weight!r}")
        self.default_reg_weight = float(default_reg_weight)
        self.hypernetwork = HyperNetwork(hyper_hidden)
        embedding_dim = self.hypernetwork.out_features
        self.unet = HyperVxmUNet(spatial_dims, in_channels, enc_channels, dec_channels, int_downsize, embedding_dim)
        self.flow_head = HyperConv(spatial_dims, self.unet.out_channels, spatial_dims, embedding_dim).init_as_flow_head()

    def extra_repr(self) -> str:
        """The ``lambda`` used without an explicit one (what a registration's summary records)."""
        return f"reg_weight={self.default_reg_weight}"

    def velocity(self, moving: torch.Tensor, fixed: torch.Tensor,
                 reg_weight: float | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocity ``(B, D, *n)`` for the pair at ``reg_weight``, and that weight as ``(B, 1)``."""
        caller = "HyperMorph"
        check_registration_pair(caller, moving, fixed, self.spatial_dims, self.in_channels)
        x = torch.cat([moving, fixed], dim=1)
        lam = check_reg_weight(self.default_reg_weight if reg_weight is None else reg_weight, x.shape[0], caller,
                               like=x if x.is_floating_point() else x.float())
        embedding = self.hypernetwork(lam)
        features = self._unet_features(x, embedding)
        return crop_spatial(self.flow_head(features, embedding), self.velocity_size(moving.shape[2:])), lam

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor,
                reg_weight: float | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Register ``moving`` ``(B, C_m, *S)`` to ``fixed`` at ``reg_weight`` (None: ``default_reg_weight``)."""
        velocity, lam = self.velocity(moving, fixed, reg_weight)
        out = self._displacements(velocity, moving.shape[2:], inverse=True)
        return {**out, "velocity": velocity, "warped": warp(moving, out["ddf"]),
                "warped_fixed": warp(fixed, out["inverse_ddf"]), "reg_weight": lam}

    def displacements(self, moving: torch.Tensor, fixed: torch.Tensor, inverse: bool = True,
                      reg_weight: float | torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Only ``"ddf"`` and (``inverse``) ``"inverse_ddf"`` at ``reg_weight`` (inference without warped images)."""
        velocity, _ = self.velocity(moving, fixed, reg_weight)
        return self._displacements(velocity, moving.shape[2:], inverse)
