"""What the bundles' configs call: their own folder, a check of the run's options, and the registration run.

Every bundle's ``inference.json`` / ``evaluate.json`` / ``train.json`` assembles package
components; the few expressions they share live here, once:

* :func:`bundle_root`: the folder of the bundle being run (the parent of the ``configs`` folder
  that ``monai.bundle run --config_file`` read), so a copied or fine-tuned bundle runs its own
  weights, never those of a bundle of the same name elsewhere.
* :func:`check_run`: the configs' ``initialize`` step. It rejects an option of
  ``python -m monai.bundle run`` that names no id of the config (a misspelled ``--refine_stepz 5``
  would otherwise be ignored silently) and makes errors of this package one line on stderr
  (MONAI's config parser wraps them in several pages of tracebacks); ``MONAI_DIFFREG_TRACEBACK=1``
  restores the full traceback.
* :func:`run_registration` / :func:`run_evaluation`: the configs' ``run`` step, with the config's
  ``method`` object (no second parse of the config, no command line); :func:`rank_device` gives
  ``evaluate.json`` one GPU per ``torchrun`` process.
"""

from __future__ import annotations

import ast
import difflib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import USER_ERRORS

__all__ = ["bundle_root", "check_run", "check_training_data", "real_anatomy_dataset", "rank_device", "run_registration", "run_evaluation"]

# arguments of ``monai.bundle run`` itself (monai.bundle.scripts.run), not config overrides
_RUN_ARGUMENTS = {"config_file", "meta_file", "logging_file", "args_file", "run_id", "init_id", "final_id",
                  "tracking", "workflow_type", "properties_path"}


def _running_workflow():
    """The ``monai.bundle`` ``ConfigWorkflow`` whose expressions are being evaluated, or None."""
    from monai.bundle import ConfigWorkflow

    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, ConfigWorkflow):
            return candidate
        frame = frame.f_back
    return None


def bundle_root() -> str:
    """The folder of the bundle whose config is running: the parent of its ``configs`` folder.

    Raises:
        ValueError: not called while a ``monai.bundle`` workflow runs a config (a plain
            ``ConfigParser``: set its ``bundle_root`` id to the bundle folder, as
            :func:`monai_diffreg.methods.load_method` does).
    """
    workflow = _running_workflow()
    if workflow is None:
        raise ValueError("bundle_root(): no monai.bundle workflow is running this config; set the config's "
                         "'bundle_root' to the bundle folder (parser['bundle_root'] = ...)")
    configs = Path(workflow.config_root_path).resolve()
    return str(configs.parent if configs.name == "configs" else configs)


def _ids(config: Any, prefix: str = "") -> set[str]:
    """Every id of a config tree (``a``, ``a#b``, ``a#0``, ...)."""
    ids = set()
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for key, value in items:
        name = f"{prefix}{key}"
        ids.add(name)
        ids |= _ids(value, name + "#")
    return ids


def _command_line_overrides(argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(config files, {override id: text}) of a ``python -m monai.bundle run`` command line."""
    args, key = {}, None
    for item in argv:
        if item.startswith("--"):
            key, sep, value = item[2:].partition("=")
            args[key] = value if sep else ""
            key = None if sep else key
        elif key is not None:
            args[key], key = item, None
    files = args.get("config_file", "")
    files = ast.literal_eval(files) if files.strip().startswith("[") else [files]
    return [str(f) for f in files], {k: v for k, v in args.items() if k not in _RUN_ARGUMENTS}


def _excepthook(default):
    def hook(kind, error, traceback):
        from .methods import user_cause

        cause = user_cause(error, USER_ERRORS)
        if cause is None or os.environ.get("MONAI_DIFFREG_TRACEBACK"):
            default(kind, error, traceback)
            return
        message = cause.args[0] if isinstance(cause, KeyError) and cause.args else cause
        print(f"monai.bundle run: error: {' '.join(str(message).split())} "
              "(MONAI_DIFFREG_TRACEBACK=1 shows the traceback)", file=sys.stderr)
    hook.one_line_errors = True
    return hook


def check_run() -> bool:
    """The configs' ``initialize`` step (module docstring); returns True.

    Raises:
        SystemExit: an option of the command line is no id of the config (one line, status 2).
    """
    if not getattr(sys.excepthook, "one_line_errors", False):
        sys.excepthook = _excepthook(sys.excepthook)
    workflow = _running_workflow()
    argv = sys.argv[1:]
    if workflow is None or not argv or argv[0] != "run":
        return True  # called from Python: overrides are the caller's dict
    from monai.bundle import ConfigParser

    files, overrides = _command_line_overrides(argv[1:])
    known = _ids(ConfigParser.load_config_files(files)) | {"_meta_"} if files else set()
    unknown = [key for key in overrides if key.split("#")[0] != "_meta_" and key not in known]
    if unknown and files:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hints.append(f"'--{key}'" + (f" (did you mean '--{close[0]}'?)" if close else ""))
        top = ", ".join(sorted(k for k in known if "#" not in k and not k.startswith("_")))
        print(f"monai.bundle run: error: {', '.join(hints)} is not an id of {', '.join(files)}; "
              f"its top-level ids: {top}", file=sys.stderr)
        raise SystemExit(2)
    return True


def check_training_data(shared_data: str, label_maps: Sequence[str], label_map_probability: float,
                        template_folder: str | None) -> bool:
    """The check of the training data before training starts (``train.json``'s ``dataset``,
    :func:`real_anatomy_dataset`); returns True.

    Raises:
        SystemExit: label maps are asked for (``label_map_probability`` > 0) but none was found, or
            the template folder is missing: one line naming the folder and how to point at it (status 2).
    """
    hint = ("set MONAI_DIFFREG_SHARED to the folder holding data/ (the project's shared data) or pass "
            "--shared_data DIR")
    if float(label_map_probability) > 0 and not list(label_maps):
        print(f"monai.bundle run: error: no label maps found under {str(Path(shared_data).resolve())!r} "
              f"(label_map_probability {label_map_probability}): {hint}; or train on shapes and the template alone "
              "with --label_map_probability 0", file=sys.stderr)
        raise SystemExit(2)
    if template_folder is not None and not Path(template_folder).is_dir():
        print(f"monai.bundle run: error: the MNI template folder {str(Path(template_folder).resolve())!r} does not "
              f"exist: {hint}; or train without it with --template_probability 0", file=sys.stderr)
        raise SystemExit(2)
    return True


def real_anatomy_dataset(spatial_size: Sequence[int], seed: int = 0, shared_data: str | Path | None = None,
                         label_map_probability: float = 0.6, template_probability: float = 0.2,
                         num_label_channels: int = 19, label_maps: Sequence[str | Path] | None = None,
                         **settings: Any) -> SyntheticPairDataset:
    """The bundles' real-anatomy training data (their ``train.json`` ``dataset``), checked before it is built.

    A :class:`~monai_diffreg.engines.training_data.SyntheticPairDataset` of subject pairs from the real label maps of the shared data
    folder less :data:`~monai_diffreg.engines.training_data.VALIDATION_LABEL_MAPS` (:func:`~monai_diffreg.engines.training_data.real_label_maps`), template pairs from its
    ``mni152_2009a`` (at 2 mm: ``template_scale`` 0.5, reoriented to RAS) and shape pairs for the
    rest, deformed with control-point spacings of 8 to 16 voxels and velocities of up to 5 voxels.

    Args:
        spatial_size: size of every image (3 sizes; the subject maps' canvas, 2 mm voxels).
        seed: base seed of the items (:class:`SyntheticPairDataset`).
        shared_data: the shared data folder (holding ``synthseg_label_maps/``, ``synthsr_label_maps/``
            and ``mni152_2009a/``); None: ``$MONAI_DIFFREG_SHARED/data``, by default ``../shared/data``.
        label_map_probability: probability of a subject pair; 0 needs no label map.
        template_probability: probability of a template pair; 0 needs no template.
        num_label_channels: channels of the one-hot label maps (background + the 18 training structures).
        label_maps: label-map files instead of the training maps of ``shared_data`` (e.g. the
            held-out ones, ``real_label_maps(held_out=True)``).
        settings: further :class:`SyntheticPairDataset` arguments; they replace the recipe's.

    Raises:
        SystemExit: label maps are asked for but none was found, or the template folder is missing
            (:func:`check_training_data`: one line naming the folder).
    """
    from .engines.training_data import TEMPLATE_FOLDER, SyntheticPairDataset, real_label_maps, shared_data_folder

    folder = shared_data_folder(shared_data)
    if label_maps is None:
        label_maps = real_label_maps(folder) if float(label_map_probability) > 0 else []
    template_folder = f"{folder}/{TEMPLATE_FOLDER}" if float(template_probability) > 0 else None
    check_training_data(folder, label_maps, label_map_probability, template_folder)
    recipe: dict[str, Any] = {"template_scale": 0.5, "orientation": "RAS", "control_spacing": (8.0, 16.0),
                              "max_displacement": (0.0, 5.0)}
    recipe.update(settings)
    return SyntheticPairDataset(spatial_size, seed=seed, template_folder=template_folder,
                                template_probability=template_probability, label_maps=list(label_maps),
                                label_map_probability=label_map_probability,
                                num_label_channels=num_label_channels, **recipe)


def rank_device() -> str:
    """``"cuda:<LOCAL_RANK>"`` when CUDA is there (one GPU per ``torchrun`` process; ``cuda:0`` alone), else ``"cpu"``."""
    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"


def _flag(value: Any, name: str) -> bool:
    """A yes/no option as the command line gives it (``--inverse true``: fire passes the text ``"true"``)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    print(f"monai.bundle run: error: --{name} must be true or false, got {value!r}", file=sys.stderr)
    raise SystemExit(2)


def run_registration(method: Any, *, fixed: str | None, moving: str | None,
                     fixed_labels: str | None = None, moving_labels: str | None = None,
                     output_dir: str, affine: bool = False, inverse: bool = False, qc: bool = True) -> None:
    """``inference.json``'s ``run``: register one pair (default: the built-in sample) with ``method``.

    Writes the outputs of :func:`monai_diffreg.register` into ``output_dir`` and prints the
    one-line report of the command line (``monai-diffreg register``).

    Raises:
        SystemExit: with status 1 after a one-line error (bad file, bad option); 2 for a bad combination.
    """
    from .cli import register_pairs

    affine, inverse, qc = (_flag(value, name) for value, name in ((affine, "affine"), (inverse, "inverse"), (qc, "qc")))
    if (fixed is None) != (moving is None):
        missing = "moving" if moving is None else "fixed"
        print(f"monai.bundle run: error: give both --fixed and --moving (or neither, for the built-in sample); "
              f"--{missing} is missing", file=sys.stderr)
        raise SystemExit(2)
    status = register_pairs(method, fixed, [moving] if moving is not None else None,
                            fixed_labels=fixed_labels, moving_labels=[moving_labels] if moving_labels else None,
                            output_dir=output_dir, affine=affine, inverse=inverse, qc=qc)
    if status:
        raise SystemExit(status)


def run_evaluation(method: Any, *, pairs: str | None, output_csv: str, affine: bool = False) -> None:
    """``evaluate.json``'s ``run``: every pair of ``pairs`` (default: the built-in sample) into one CSV.

    Raises:
        SystemExit: with status 1 when a pair failed (each reported in one line; the others still run).
    """
    from .cli import evaluate_and_report

    affine = _flag(affine, "affine")
    status = evaluate_and_report(method, pairs, output_csv, affine=affine)
    if status:
        raise SystemExit(status)
