"""Quality-control picture of one registration: a single PNG a person can judge at a glance.

Columns: fixed, moving (on the fixed grid), warped moving, a checkerboard of fixed and warped
(edges should continue across tiles), the deformation grid (regular grid lines mapped by
``phi(x) = x + u(x)``) and the Jacobian determinant map (diverging colours centred at 1:
blue = local shrinking, red = expansion, folds ``det J <= 0`` marked in black). Rows: the
central slice of each orthogonal plane in 3D (one row in 2D).

With the fixed image's affine, volumes are shown in RAS orientation with the anatomical
plane names (axial, coronal, sagittal), right to the viewer's right, superior/anterior up,
and the voxel aspect ratio is respected; without it, planes are named by tensor axis.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .functional.jacobian import jacobian_determinant
from .io import save_png, spatial_affine
from .transforms.intensity import percentile

__all__ = ["save_qc_figure", "checkerboard"]

_PLANE_NAMES_RAS = {0: "sagittal", 1: "coronal", 2: "axial"}


def _volume(x: object, name: str, ndim: int) -> torch.Tensor:
    """``(*S)`` float32 tensor from ``(*S)``, ``(1, *S)`` or ``(1, 1, *S)`` with ``ndim`` spatial axes."""
    if isinstance(x, (torch.Tensor, np.ndarray)):
        arr = torch.as_tensor(x).detach().cpu().float().as_subclass(torch.Tensor)  # no MetaTensor bookkeeping
    else:
        raise TypeError(f"save_qc_figure(): '{name}' must be a numpy array or torch tensor, got {type(x).__name__}")
    while arr.ndim > ndim and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != ndim:
        raise ValueError(f"save_qc_figure(): '{name}' must be one {ndim}D image like 'ddf', got shape {tuple(np.shape(x))}")
    return arr


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    """Alternate square tiles of ``a`` and ``b`` (same 2D shape); about ``tiles`` tiles along the longer side."""
    size = max(1, max(a.shape) // tiles)
    idx = np.indices(a.shape) // size
    return np.where(idx.sum(axis=0) % 2 == 0, a, b)


def _subsample(x: torch.Tensor) -> torch.Tensor:
    """Every second voxel along each axis of a 3D volume (display windows need no more), a 2D image whole."""
    return x[::2, ::2, ::2] if x.ndim == 3 else x


def _robust_scale(x: torch.Tensor) -> torch.Tensor:
    """``x`` mapped to [0, 1] between the 1st and 99th percentiles of :func:`_subsample` of it."""
    sample = _subsample(x)
    lo, hi = float(percentile(sample, 1)), float(percentile(sample, 99))
    if hi <= lo:
        lo, hi = float(x.min()), float(x.max()) + 1e-12
    return ((x - lo) / (hi - lo)).clamp(0, 1)


def _orient(volumes: list[torch.Tensor], ddf: torch.Tensor, affine: np.ndarray | None):
    """Reorient ``(*S)`` volumes and the ``(D, *S)`` field (its components too) to RAS, as views where
    possible; return them with the voxel sizes and whether the axes are anatomical."""
    ndim = ddf.shape[0]
    if affine is None or ndim == 2:
        spacing = np.ones(ndim) if affine is None else np.linalg.norm(affine[:ndim, :ndim], axis=0)
        return volumes, ddf, spacing, affine is not None
    import nibabel.orientations as nio

    from .transforms.spatial import axis_mapping, to_target_axes

    mapping = axis_mapping(nio.aff2axcodes(affine), "RAS")  # per input axis: (RAS axis, +1/-1)
    volumes = [to_target_axes(torch.as_tensor(v)[None, None], mapping)[0, 0] for v in volumes]
    out = to_target_axes(torch.as_tensor(ddf)[None], mapping, is_field=True)[0]
    spacing = np.empty(ndim)
    spacing[[i for i, _ in mapping]] = np.linalg.norm(affine[:ndim, :ndim], axis=0)
    return volumes, out, spacing, True


def _planes(shape: tuple[int, ...], anatomical: bool):
    """(name, normal axis or None, slice index, in-plane axes) for each displayed plane."""
    if len(shape) == 2:
        return [("2D image", None, None, (0, 1))]
    order = (2, 1, 0) if anatomical else (0, 1, 2)
    planes = []
    for normal in order:
        axes = tuple(a for a in range(3) if a != normal)
        name = _PLANE_NAMES_RAS[normal] if anatomical else f"axis {normal}"
        planes.append((name, normal, shape[normal] // 2, axes))
    return planes


def _slice(x: torch.Tensor, normal: int | None, index: int | None) -> np.ndarray:
    """The displayed plane of a volume, as a float64 array."""
    return (x if normal is None else x.select(normal, index)).double().numpy()


def _draw_grid(ax, ddf2: np.ndarray, spacing2: np.ndarray, lines: int = 24) -> None:
    """Grid lines of the in-plane axes mapped by phi(x) = x + u(x) (display: x = first axis, y = second)."""
    from matplotlib.collections import LineCollection

    na, nb = ddf2.shape[1:]
    step = max(1, max(na, nb) // lines)
    a, b = np.meshgrid(np.arange(na), np.arange(nb), indexing="ij")
    points = np.stack([a + ddf2[0], b + ddf2[1]], axis=-1)  # (na, nb, 2) display positions
    lines = [*points[::step], *points[:, ::step].transpose(1, 0, 2)]  # one polyline per grid line
    ax.add_collection(LineCollection(lines, colors="tab:blue", linewidths=0.6))  # one artist: fast to draw
    ax.set_xlim(-0.5, na - 0.5)
    ax.set_ylim(-0.5, nb - 0.5)
    ax.set_aspect(spacing2[1] / spacing2[0])


def save_qc_figure(fixed: object, moving: object, warped: object, ddf: object, path: str | os.PathLike,
                   det_jacobian: object | None = None, title: str | None = None,
                   affine: object | None = None) -> Path:
    """Write the QC picture of a registration as one PNG (matplotlib Agg canvas, atomic).

    Args:
        fixed: fixed image ``(*S)``, ``(1, *S)`` or ``(1, 1, *S)``.
        moving: moving image on the fixed grid, same shape.
        warped: warped moving image, same shape.
        ddf: displacement ``(1, D, *S)`` or ``(D, *S)`` in fixed-grid voxels (package convention).
        path: destination PNG.
        det_jacobian: optional ``det J`` map ``(*S)``/``(1, 1, *S)``; computed from ``ddf``
            (central differences) when None.
        title: optional figure title (e.g. the method and the file names).
        affine: optional fixed-grid voxel-to-RAS affine: RAS display orientation, plane
            names and voxel aspect (module docstring).

    Returns:
        the written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap, TwoSlopeNorm
    from matplotlib.figure import Figure

    field = torch.as_tensor(ddf.detach().cpu() if isinstance(ddf, torch.Tensor) else np.asarray(ddf)).float()
    if field.ndim in (3, 4) and field.shape[0] == field.ndim - 1:
        field = field.unsqueeze(0)
    ndim = field.ndim - 2
    if ndim not in (2, 3) or field.shape[0] != 1 or field.shape[1] != ndim:
        raise ValueError(f"save_qc_figure(): 'ddf' must have shape (1, D, *S) or (D, *S), got {tuple(np.shape(ddf))}")
    images = [_volume(x, n, ndim) for x, n in ((fixed, "fixed"), (moving, "moving"), (warped, "warped"))]
    spatial = tuple(field.shape[2:])
    for img, name in zip(images, ("fixed", "moving", "warped")):
        if img.shape != spatial:
            raise ValueError(f"save_qc_figure(): '{name}' must have spatial shape {spatial} like 'ddf', got {img.shape}")
    detj = (jacobian_determinant(field)[0, 0] if det_jacobian is None
            else _volume(det_jacobian, "det_jacobian", ndim))
    aff = None if affine is None else spatial_affine(affine, ndim, "save_qc_figure")
    (fix, mov, wrp, detj), u, spacing, anatomical = _orient([*images, detj], field[0], aff)
    fix, mov, wrp = (_robust_scale(v) for v in (fix, mov, wrp))

    fold_pct = 100.0 * float((detj <= 0).double().mean())
    sample = _subsample(detj)
    span = max(1.0 - float(percentile(sample, 0.5)), float(percentile(sample, 99.5)) - 1.0, 0.05)
    norm = TwoSlopeNorm(vcenter=1.0, vmin=1.0 - span, vmax=1.0 + span)
    fold_cmap = ListedColormap(["black"])

    planes = _planes(fix.shape, anatomical)
    columns = ["fixed", "moving", "warped moving", "checkerboard fixed | warped", "deformation grid",
               f"det J (black: det J <= 0, {fold_pct:.3f}%)"]
    height = 3.2 * len(planes) + 0.8  # inches; the top ones hold the title
    fig = Figure(figsize=(3.0 * len(columns), height), dpi=100)
    FigureCanvasAgg(fig)  # Agg rendering without pyplot: no global backend change, no GUI
    # a fixed layout and panels without axes: a constrained layout and tick machinery take most of the time
    axes = np.atleast_2d(fig.subplots(len(planes), len(columns), squeeze=False, gridspec_kw=dict(
        left=0.02, right=0.97, bottom=0.02 * 4.0 / height, top=1.0 - 0.95 / height, wspace=0.06, hspace=0.12)))
    for row, (name, normal, index, inplane) in enumerate(planes):
        sp2 = spacing[list(inplane)]
        aspect = sp2[1] / sp2[0]
        shown = [_slice(v, normal, index) for v in (fix, mov, wrp)]
        panels = [*shown, checkerboard(shown[0], shown[2])]
        for col, panel in enumerate(panels):
            axes[row, col].imshow(panel.T, cmap="gray", origin="lower", vmin=0, vmax=1, aspect=aspect,
                                  interpolation="nearest")
        u2 = np.stack([_slice(u[a], normal, index) for a in inplane])
        _draw_grid(axes[row, 4], u2, sp2)
        dj = _slice(detj, normal, index)
        im = axes[row, 5].imshow(dj.T, cmap="RdBu_r", norm=norm, origin="lower", aspect=aspect,
                                 interpolation="nearest")
        folds = np.ma.masked_where(dj.T > 0, np.ones_like(dj.T))
        axes[row, 5].imshow(folds, cmap=fold_cmap, origin="lower", aspect=aspect, interpolation="nearest")
        fig.colorbar(im, ax=axes[row, 5], fraction=0.046, pad=0.04, label="det J")
        label = name if normal is None else f"{name} (slice {index})"
        axes[row, 0].text(-0.04, 0.5, label, transform=axes[row, 0].transAxes, rotation=90, ha="right",
                          va="center", fontsize=11)
        for col in range(len(columns)):
            axes[row, col].set_axis_off()
            if row == 0:
                axes[row, col].set_title(columns[col], fontsize=10)
    orientation = "RAS view: patient right on the viewer's right, superior/anterior up" if anatomical else \
        "tensor axes: first in-plane axis to the right, second up"
    fig.suptitle((title + "\n" if title else "") + orientation, fontsize=11)
    return save_png(fig, path, pil_kwargs={"compress_level": 1})
