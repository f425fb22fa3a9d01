"""Registration methods as the benchmark runs them: one adapter per method name.

Every adapter follows three steps so that only the registration itself is timed:

1. ``prepare(fixed, moving)``: untimed set-up on the inputs (format conversion, writing the
   files a peer in another environment reads);
2. ``register()``: **timed** (seconds and peak memory, :func:`benchmarks.memory.measure`);
3. ``result()``: untimed; returns ``{"ddf": (1, D, *S)}`` in the package convention (fixed-grid
   voxels, pull-back ``warped(x) = moving(x + ddf(x))``) and, for peers that time themselves in
   their own process, ``"seconds"``/``"peak_mb"`` replacing the worker's measurement.

Names:

``identity``
    the zero field (the starting point every method must beat).
``monai_voxelmorph``
    the **timing reference**: MONAI's :class:`monai.networks.nets.VoxelMorph` with its default
    backbone (full resolution, default widths, 7 integration steps), random weights, one
    forward pass under ``torch.no_grad()`` on the pair; its field is meaningless and not scored.
``elastix``
    itk-elastix B-spline registration with elastix's default ``"bspline"`` parameter map
    (4 resolutions, 10 mm final grid, Mattes MI + bending energy, 256 iterations).
    Timed: ``elastix_registration_method``; the dense field comes from transformix afterwards.
    Threads: ITK's global default (``itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads``);
    the filter's own ``SetNumberOfThreads`` crashes (segmentation fault, itk-elastix 0.25.4).
``ants``
    ANTsPy SyN (``ants.registration(type_of_transform="SyN")``: its default affine + SyN
    stages) in ANTsPy's own environment (``benchmarks/setup_ants_env.sh``), through
    ``benchmarks/peers/ants_syn.py`` with ``.npy`` files; it reports its own seconds and memory
    (``ants.registration`` alone, without interpreter start-up and file I/O).
any other name
    :func:`monai_diffreg.methods.load_method` (``"svf_optim"``, bundles such as ``"vxm_prob"``);
    ``method(fixed, moving)["ddf"]`` is timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

__all__ = ["ADAPTERS", "DEFAULT_ANTS_VENV", "REFERENCE", "make_adapter", "ants_python", "peer_available"]

REFERENCE = "monai_voxelmorph"
DEFAULT_ANTS_VENV = Path(os.environ.get("ANTS_VENV", "/work/venvs/ants"))
_ANTS_SCRIPT = Path(__file__).resolve().parent / "peers" / "ants_syn.py"


def ants_python() -> Path:
    """The Python of ANTsPy's environment (``$ANTS_VENV``, default ``/work/venvs/ants``)."""
    return Path(os.environ.get("ANTS_VENV", DEFAULT_ANTS_VENV)) / "bin" / "python"


def peer_available(name: str) -> tuple[bool, str]:
    """Whether a peer method can run here, and why not."""
    if name == "elastix":
        try:
            import itk

            itk.ElastixRegistrationMethod  # noqa: B018 (lazy attribute: fails without itk-elastix)
        except (ImportError, AttributeError) as err:
            return False, f"itk-elastix is not installed ({err}); pip install -c .venv/torch-constraint.txt itk-elastix"
    if name == "ants" and not ants_python().is_file():
        return False, f"no ANTsPy environment at {ants_python().parent.parent}; run benchmarks/setup_ants_env.sh"
    return True, ""


class _Adapter:
    """Base: keeps the inputs; subclasses implement ``register`` and ``result``."""

    reference = False

    def __init__(self, name: str, device: torch.device, threads: int, options: dict):
        self.name, self.device, self.threads, self.options = name, device, threads, options

    def prepare(self, fixed: torch.Tensor, moving: torch.Tensor) -> None:
        self.fixed, self.moving = fixed.to(self.device), moving.to(self.device)

    def register(self) -> None:
        raise NotImplementedError

    def result(self) -> dict:
        raise NotImplementedError


class Identity(_Adapter):
    def register(self) -> None:
        self.ddf = torch.zeros((1, self.fixed.ndim - 2, *self.fixed.shape[2:]), device=self.device)

    def result(self) -> dict:
        return {"ddf": self.ddf}


class MonaiVoxelMorph(_Adapter):
    reference = True

    def prepare(self, fixed, moving):
        from monai.networks.nets import VoxelMorph

        super().prepare(fixed, moving)
        self.net = VoxelMorph(spatial_dims=fixed.ndim - 2, **self.options).to(self.device).eval()

    def register(self) -> None:
        with torch.no_grad():
            _, self.ddf = self.net(self.moving, self.fixed)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def result(self) -> dict:
        return {"ddf": self.ddf}


class Reorientation:
    """Axis permutation and flips from a case's array axes (e.g. ``"LIA"``) to RAS, for images and fields.

    :func:`monai_diffreg.register` gives methods their inputs re-oriented to RAS, the orientation
    learned methods are trained in; the benchmark does the same for package methods, and maps
    the returned field back to the case's axes (components permuted, flipped ones negated).
    """

    def __init__(self, axcodes: str):
        import nibabel.orientations as nio

        ornt = nio.ornt_transform(nio.axcodes2ornt(tuple(axcodes)), nio.axcodes2ornt(("R", "A", "S")))
        self.target = [int(t) for t in ornt[:, 0]]  # case axis i becomes RAS axis target[i]
        self.flip = [int(f) for f in ornt[:, 1]]

    def to_ras(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S)`` on the case's axes -> on RAS axes."""
        flipped = [i + 2 for i, f in enumerate(self.flip) if f < 0]
        x = x.flip(flipped) if flipped else x
        order = [self.target.index(t) for t in range(len(self.target))]  # RAS axis t comes from case axis order[t]
        return x.permute(0, 1, *[i + 2 for i in order])

    def field_from_ras(self, ddf: torch.Tensor) -> torch.Tensor:
        """A ``(B, D, *S_ras)`` field in RAS-grid voxels -> the same motion on the case's axes and voxels."""
        moved = ddf.permute(0, 1, *[t + 2 for t in self.target])
        flipped = [i + 2 for i, f in enumerate(self.flip) if f < 0]
        moved = moved.flip(flipped) if flipped else moved
        return torch.stack([self.flip[i] * moved[:, self.target[i]] for i in range(len(self.target))], dim=1)


class PackageMethod(_Adapter):
    """A method of :func:`monai_diffreg.methods.load_method` (built-in or bundle), given RAS inputs
    like :func:`monai_diffreg.register` gives them (``axcodes``: the case arrays' orientation)."""

    def prepare(self, fixed, moving, axcodes: str | None = None):
        from monai_diffreg.methods import load_method

        super().prepare(fixed, moving)
        self.orientation = Reorientation(axcodes) if axcodes else None
        if self.orientation is not None:
            self.fixed, self.moving = self.orientation.to_ras(self.fixed), self.orientation.to_ras(self.moving)
        self.method = load_method(self.name, device=self.device, **self.options)

    def register(self) -> None:
        self.out = self.method(self.fixed, self.moving)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def result(self) -> dict:
        ddf = self.out["ddf"]
        return {"ddf": self.orientation.field_from_ras(ddf) if self.orientation is not None else ddf}


class Elastix(_Adapter):
    """itk-elastix default B-spline. ITK reverses numpy's axis order: field component ``c`` of
    transformix's ``(*S, D)`` array is along array axis ``D - 1 - c`` (unit spacing: mm = voxels)."""

    def prepare(self, fixed, moving):
        import itk

        itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(self.threads)
        self.itk = itk
        self.fixed_itk = itk.GetImageFromArray(np.ascontiguousarray(fixed[0, 0].cpu().numpy(), dtype=np.float32))
        self.moving_itk = itk.GetImageFromArray(np.ascontiguousarray(moving[0, 0].cpu().numpy(), dtype=np.float32))
        self.parameters = itk.ParameterObject.New()
        parameter_map = self.parameters.GetDefaultParameterMap(self.options.get("transform", "bspline"))
        self.parameters.AddParameterMap(parameter_map)

    def register(self) -> None:
        _, self.transform = self.itk.elastix_registration_method(
            self.fixed_itk, self.moving_itk, parameter_object=self.parameters, log_to_console=False
        )

    def result(self) -> dict:
        field = self.itk.array_from_image(self.itk.transformix_deformation_field(self.moving_itk, self.transform))
        ddf = np.moveaxis(field[..., ::-1], -1, 0).astype(np.float32)
        return {"ddf": torch.as_tensor(ddf.copy())[None]}


class AntsSyN(_Adapter):
    def prepare(self, fixed, moving):
        self.tmp = Path(tempfile.mkdtemp(prefix="bench_ants_"))
        np.save(self.tmp / "fixed.npy", fixed[0, 0].cpu().numpy())
        np.save(self.tmp / "moving.npy", moving[0, 0].cpu().numpy())

    def register(self) -> None:
        env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(self.threads))
        cmd = [str(ants_python()), str(_ANTS_SCRIPT), "--fixed", str(self.tmp / "fixed.npy"),
               "--moving", str(self.tmp / "moving.npy"), "--out", str(self.tmp),
               "--transform", str(self.options.get("transform", "SyN"))]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"ANTsPy failed ({done.returncode}): {done.stderr[-2000:]}")

    def result(self) -> dict:
        timing = json.loads((self.tmp / "result.json").read_text())
        ddf = torch.as_tensor(np.load(self.tmp / "ddf.npy"))[None]
        for name in ("fixed.npy", "moving.npy", "ddf.npy", "result.json"):
            (self.tmp / name).unlink()
        self.tmp.rmdir()
        return {"ddf": ddf, "seconds": timing["seconds"], "peak_mb": timing["peak_mb"]}


ADAPTERS = {"identity": Identity, REFERENCE: MonaiVoxelMorph, "elastix": Elastix, "ants": AntsSyN}


def make_adapter(name: str, device: str, threads: int, options: dict) -> _Adapter:
    """The adapter of method ``name`` (module docstring), with method ``options``."""
    return ADAPTERS.get(name, PackageMethod)(name, torch.device(device), threads, options)

