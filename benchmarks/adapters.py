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
    (``ants.registration`` alone, without interpreter start-up and file I/O). Options:
    ``transform`` (``type_of_transform``) and any other ``ants.registration`` keyword, e.g.
    SyN with cross-correlation: ``--option ants@cc:transform=SyNOnly --option ants@cc:syn_metric=CC
    --option ants@cc:syn_sampling=2 --option 'ants@cc:reg_iterations=[100,70,50,0]'``.
any other name
    :func:`monai_diffreg.methods.load_method` (``"svf_optim"``, bundles such as ``"vxm_prob"``);
    ``method(fixed, moving)["ddf"]`` is timed.

A name may carry a variant label, ``NAME@VARIANT`` (``vxm_prob@fast``, ``ants@cc``): the same
adapter as ``NAME`` with that label's own options (``--option vxm_prob@fast:refine=fast``), so
one run can compare settings of one method side by side.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

__all__ = ["ADAPTERS", "DEFAULT_ANTS_VENV", "REFERENCE", "base_name", "make_adapter", "ants_python", "peer_available"]

REFERENCE = "monai_voxelmorph"
DEFAULT_ANTS_VENV = Path(os.environ.get("ANTS_VENV", "/work/venvs/ants"))
_ANTS_SCRIPT = Path(__file__).resolve().parent / "peers" / "ants_syn.py"


def ants_python() -> Path:
    """The Python of ANTsPy's environment (``$ANTS_VENV``, default ``/work/venvs/ants``)."""
    return Path(os.environ.get("ANTS_VENV", DEFAULT_ANTS_VENV)) / "bin" / "python"


def peer_available(name: str) -> tuple[bool, str]:
    """Whether a peer method can run here, and why not."""
    name = base_name(name)
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


class PackageMethod(_Adapter):
    """A method of :func:`monai_diffreg.methods.load_method` (built-in or bundle), given RAS inputs
    like :func:`monai_diffreg.register` gives them (``axcodes``: the case arrays' orientation).

    :func:`monai_diffreg.register` gives methods their inputs re-oriented to RAS, the orientation
    learned methods are trained in; the benchmark does the same for package methods
    (:func:`monai_diffreg.transforms.to_target_axes`), and maps the returned field back to the
    case's axes (:func:`~monai_diffreg.transforms.to_source_axes`: components permuted, flipped
    ones negated)."""

    def prepare(self, fixed, moving, axcodes: str | None = None):
        from monai_diffreg.methods import load_method
        from monai_diffreg.transforms import axis_mapping, to_target_axes

        super().prepare(fixed, moving)
        self.to_ras = axis_mapping(axcodes, "RAS") if axcodes else None
        if self.to_ras is not None:
            self.fixed, self.moving = to_target_axes(self.fixed, self.to_ras), to_target_axes(self.moving, self.to_ras)
        self.method = load_method(self.name, device=self.device, **self.options)

    def register(self) -> None:
        from monai_diffreg.methods import run_method

        # the call register() makes: the forward field only (the inverse is computed on request)
        self.out = run_method(self.method, self.fixed, self.moving, inverse=False)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def result(self) -> dict:
        from monai_diffreg.transforms import to_source_axes

        ddf = self.out["ddf"]
        return {"ddf": to_source_axes(ddf, self.to_ras, is_field=True) if self.to_ras is not None else ddf}


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
        with tempfile.TemporaryDirectory(prefix="bench_transformix_") as folder:  # it writes deformationField.nii
            field = self.itk.array_from_image(self.itk.transformix_deformation_field(
                self.moving_itk, self.transform, output_directory=folder + os.sep))
        ddf = np.moveaxis(field[..., ::-1], -1, 0).astype(np.float32)
        return {"ddf": torch.as_tensor(ddf.copy())[None]}


class AntsSyN(_Adapter):
    def prepare(self, fixed, moving):
        self.tmp = Path(tempfile.mkdtemp(prefix="bench_ants_"))
        np.save(self.tmp / "fixed.npy", fixed[0, 0].cpu().numpy())
        np.save(self.tmp / "moving.npy", moving[0, 0].cpu().numpy())

    def register(self) -> None:
        env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(self.threads))
        keywords = {k: v for k, v in self.options.items() if k != "transform"}
        cmd = [str(ants_python()), str(_ANTS_SCRIPT), "--fixed", str(self.tmp / "fixed.npy"),
               "--moving", str(self.tmp / "moving.npy"), "--out", str(self.tmp),
               "--transform", str(self.options.get("transform", "SyN")), "--keywords", json.dumps(keywords)]
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


def base_name(name: str) -> str:
    """The method of a ``NAME@VARIANT`` label (module docstring): ``NAME``."""
    return name.partition("@")[0]


def make_adapter(name: str, device: str, threads: int, options: dict) -> _Adapter:
    """The adapter of method ``name`` (``NAME`` or ``NAME@VARIANT``, module docstring), with method ``options``."""
    base = base_name(name)
    return ADAPTERS.get(base, PackageMethod)(base, torch.device(device), threads, options)

