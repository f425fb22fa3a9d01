"""Command line: ``monai-diffreg register ...``, ``evaluate``, ``export``, ``methods`` and ``estimate-regularization``.

Examples::

    monai-diffreg register --sample --bundle svf_optim --output-dir outputs/demo
    monai-diffreg register --fixed atlas.nii.gz --moving s1.nii.gz s2.nii.gz \\
        --moving-labels s1_seg.nii.gz s2_seg.nii.gz --fixed-labels atlas_seg.nii.gz \\
        --bundle vxm_prob --affine --output-dir results
    monai-diffreg methods
    monai-diffreg export --bundle vxm_prob --output vxm_prob.pt2 --size 160 192 160
    monai-diffreg estimate-regularization --fixed f.nii.gz --moving m.nii.gz
    monai-diffreg sweep --bundle flash --name alpha --values 0.5 1 3 10 --fixed f.nii.gz --moving m.nii.gz \
        --fixed-labels fl.nii.gz --moving-labels ml.nii.gz --output-dir sweep [--select dice]

Several moving images form a batch: each is registered to the fixed image into its own
sub-folder of ``--output-dir`` (named after the moving file), with a progress bar. User
errors (bad files, bad options) print one line on stderr and exit with status 1 (argument
errors: 2) without a traceback; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import signal
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .errors import USER_ERRORS

__all__ = ["main", "build_parser", "register_pairs", "evaluate_and_report"]

_PROG = "monai-diffreg"
# MONAI's LoadImage instantiates its DICOM reader, which complains about an optional GPU codec
_NOISE = ("NvImgCodecPydicomReader", "nvImageCodec is not available")
# api.AFFINE_METRICS, spelt out so that building the parser imports no torch (tests/test_cli.py checks they agree)
_AFFINE_METRICS = ("ncc", "mi", "mse")
# sweep.SELECTION_RULES' names, spelt out for the same reason (tests/test_sweep.py checks they agree)
_SWEEP_SELECT = ("dice",)


class _UserError(Exception):
    """A problem with the command line itself, reported like argparse errors."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(prog=_PROG, description="Diffeomorphic image registration with MONAI.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{register,evaluate,export,methods,estimate-regularization,sweep,monailabel-app}")

    reg = sub.add_parser("register", help="register moving image(s) to a fixed image and write the results",
                         description="Register moving image(s) to a fixed image. Writes warped.nii.gz, ddf.nii.gz "
                                     "(ITK displacement field), warped_labels.nii.gz, summary.json and qc.png.")
    reg.add_argument("--fixed", metavar="F", help="fixed image file (NIfTI, NRRD, MHA, ...)")
    reg.add_argument("--moving", metavar="M", nargs="+", help="moving image file(s); several = a batch")
    reg.add_argument("--fixed-labels", metavar="L", help="fixed label map (for Dice)")
    reg.add_argument("--moving-labels", metavar="L", nargs="+", help="moving label map(s), one per moving image")
    reg.add_argument("--bundle", default="vxm_prob", metavar="NAME",
                     help="method: a built-in name, a bundle name or a bundle folder (default: vxm_prob; "
                          "see `monai-diffreg methods`)")
    reg.add_argument("--output-dir", required=True, metavar="DIR", help="output folder (one sub-folder per pair in a batch)")
    reg.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    reg.add_argument("--affine", action="store_true", help="run the affine stage before the deformable method")
    reg.add_argument("--affine-metric", default="ncc", choices=_AFFINE_METRICS,
                     help="similarity of the affine stage (mi for different contrasts)")
    reg.add_argument("--orientation", default="RAS",
                     help="axis codes of the grid the method works on, or 'none' for the fixed file's axes (default: RAS)")
    reg.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="method option (built-in: constructor argument; bundle: config id), VALUE parsed as JSON "
                          "when possible; repeatable")
    reg.add_argument("--sample", action="store_true",
                     help="use the built-in MNI152 sample as fixed/moving/labels (reports the field error)")
    reg.add_argument("--no-qc", action="store_true", help="do not write qc.png")
    reg.add_argument("--inverse", action="store_true",
                     help="also write inverse_ddf.nii.gz (moving -> fixed), when the method gives it")
    reg.add_argument("--debug", action="store_true", help="show tracebacks")

    ev = sub.add_parser("evaluate", help="register a list of pairs and write their metrics to a CSV")
    ev.add_argument("--pairs", metavar="FILE",
                    help="CSV or JSON with columns fixed, moving[, fixed_labels, moving_labels] (default: the built-in sample)")
    ev.add_argument("--bundle", default="vxm_prob", metavar="NAME", help="method name or bundle folder (default vxm_prob)")
    ev.add_argument("--output-csv", required=True, metavar="FILE", help="CSV to write, one row per pair")
    ev.add_argument("--device", metavar="D", help="cpu, cuda, cuda:1, ... (default: the method's)")
    ev.add_argument("--affine", action="store_true", help="run the affine stage first")
    ev.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="method option (JSON value), repeatable")

    exp = sub.add_parser("export", help="export a bundle's network to a torch.export .pt2 file",
                         description="Export a bundle's network (with its weights) as a torch.export program "
                                     "(moving, fixed) -> (ddf, inverse_ddf) for images of one spatial size, "
                                     "normalised as at inference; checks it against the eager network.")
    exp.add_argument("--bundle", default="vxm_prob", metavar="NAME", help="bundle name or folder (default vxm_prob)")
    exp.add_argument("--output", metavar="FILE", help="the .pt2 file to write (default outputs/<bundle>.pt2)")
    exp.add_argument("--size", type=int, nargs="+", metavar="N",
                     help="spatial size of the images the program takes (default 160 192 160, 1 mm)")
    exp.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="bundle config override (JSON value), repeatable")
    exp.add_argument("--debug", action="store_true", help="show tracebacks")

    met = sub.add_parser("methods", help="list the available registration methods")
    met.add_argument("--json", action="store_true", help="print JSON instead of a table")
    est = sub.add_parser("estimate-regularization", help="estimate FLASH's regularisation alpha for a pair (prints JSON)",
                         description="Estimate the regularisation parameter alpha of FLASH (L = (alpha A + 1)^3) for a pair "
                                     "by MAP / evidence maximisation (monai_diffreg.lddmm.estimate_regularization) and "
                                     "print {\"alpha\": ..., ...} as JSON. The moving image is resampled onto the fixed grid.")
    est.add_argument("--fixed", required=True, metavar="F", help="fixed image file")
    est.add_argument("--moving", required=True, metavar="M", help="moving image file")
    est.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    est.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                     help="FLASH setting (sigma, truncation, num_steps, integrator, iterations) or estimation={...} "
                          "(the estimate's own settings, e.g. {\"estimate_scale\": false} for the paper's fixed "
                          "prior scale), JSON value; repeatable")
    est.add_argument("--debug", action="store_true", help="show tracebacks")
    swp = sub.add_parser("sweep", help="register one pair once per value of a method option; CSV and plot",
                         description="Register one pair once per value of one method option (e.g. a HyperMorph "
                                     "model's reg_weight, FLASH's alpha) and write sweep.csv (metrics per value) and "
                                     "sweep.png (mean Dice and SDlogJ against the value, folding) into --output-dir. "
                                     "--select dice also chooses the value for this pair (the best Dice without "
                                     "folding, ties within 0.002 Dice to the smoother field; both label maps needed), "
                                     "prints it and writes its registration outputs into DIR/selected/ and "
                                     "DIR/selected.json.")
    swp.add_argument("--bundle", required=True, metavar="NAME", help="method name or bundle folder")
    swp.add_argument("--name", required=True, metavar="OPTION", help="the option to sweep (constructor argument or config id)")
    swp.add_argument("--values", required=True, nargs="+", metavar="V", help="its values (JSON each, e.g. 0.1 1 true)")
    swp.add_argument("--fixed", required=True, metavar="F")
    swp.add_argument("--moving", required=True, metavar="M")
    swp.add_argument("--fixed-labels", metavar="L")
    swp.add_argument("--moving-labels", metavar="L")
    swp.add_argument("--output-dir", required=True, metavar="DIR")
    swp.add_argument("--device", default=None)
    swp.add_argument("--affine", action="store_true", help="run the affine stage first")
    swp.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="other method option, repeatable")
    swp.add_argument("--select", choices=_SWEEP_SELECT, default=None,
                     help="choose a value by this rule (monai_diffreg.sweep.SELECTION_RULES) and write its outputs")
    swp.add_argument("--debug", action="store_true", help="show tracebacks")
    sub.add_parser("monailabel-app", help="print the MONAI Label app folder (for monailabel start_server --app)")
    return parser


def _parse_options(items: Sequence[str]) -> dict[str, Any]:
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise _UserError(f"--option must be KEY=VALUE, got {item!r}")
        options[key] = parse_option_value(value)
    return options


def parse_option_value(text: str) -> Any:
    """An ``--option`` value: JSON (``1``, ``0.5``, ``true``, ``[1, 2]``), a Python literal (``True``, ``None``), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _stem(path: str) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".gz"):
        if name.endswith(suffix):
            return name[: -len(suffix)] or name
    return Path(name).stem or name


def _check_args(args: argparse.Namespace) -> None:
    """Argument combinations (argparse cannot express them)."""
    if args.sample:
        if args.fixed or args.moving or args.fixed_labels or args.moving_labels:
            raise _UserError("--sample replaces --fixed/--moving/--fixed-labels/--moving-labels; give one or the other")
        return
    if not args.fixed or not args.moving:
        raise _UserError("register needs --fixed and --moving (or --sample)")
    if args.moving_labels and len(args.moving_labels) != len(args.moving):
        raise _UserError(f"--moving-labels must give one label map per moving image: {len(args.moving)} moving, "
                         f"{len(args.moving_labels)} label maps")


def _pairs(moving: Sequence[str], moving_labels: Sequence[str] | None, output_dir: str | Path) -> list[dict[str, Any]]:
    """[{moving, moving_labels, folder}]: one output folder, or one sub-folder per moving image in a batch."""
    labels = moving_labels or [None] * len(moving)
    out = Path(output_dir)
    pairs, used = [], set()
    for image, image_labels in zip(moving, labels):
        folder = out
        if len(moving) > 1:
            name, k = _stem(image), 2
            while name in used:
                name, k = f"{_stem(image)}_{k}", k + 1
            used.add(name)
            folder = out / name
        pairs.append({"moving": image, "moving_labels": image_labels, "folder": folder})
    return pairs


def _line(message: object) -> str:
    """One line of at most 600 characters."""
    text = " ".join(str(message).split())
    return text if len(text) <= 600 else text[:597] + "..."


def _report(pair: dict[str, Any], result: Any) -> str:
    m = result.metrics
    parts = [f"{pair['moving']} -> {pair['folder']}:"]
    if "dice_after" in m:
        parts.append(f"Dice {m['dice_before']['mean']:.3f} -> {m['dice_after']['mean']:.3f},")
    if "epe_mm" in m:
        parts.append(f"field error {m['epe_before_mm']:.2f} -> {m['epe_mm']:.2f} mm "
                     f"(foreground {m['epe_foreground_before_mm']:.2f} -> {m['epe_foreground_mm']:.2f} mm),")
    parts.append(f"det J <= 0: {m['folding_percent']:.3f}%, SDlogJ {m['sd_log_jacobian']:.3f},")
    parts.append(f"{m['seconds']['total']:.1f} s")
    return " ".join(parts)


def register_pairs(method: Any, fixed: str | None, moving: Sequence[str] | None, *, output_dir: str | Path,
                   fixed_labels: str | None = None, moving_labels: Sequence[str] | None = None,
                   affine: bool = False, affine_metric: str = "ncc", orientation: str | None = "RAS",
                   device: str | None = None, qc: bool = True, inverse: bool = False,
                   options: dict[str, Any] | None = None, debug: bool = False) -> int:
    """Register each moving image onto ``fixed`` and report each pair in one line (the ``register`` command).

    Args:
        method: a method name, bundle folder or method object (:func:`monai_diffreg.register`'s ``bundle``).
        fixed, moving: image files; ``moving`` None: the built-in sample (fixed, moving, labels and true field).
        output_dir: output folder; a batch writes one sub-folder per moving image.
        options: the method's options (names and folders only).
        debug: raise errors instead of reporting them.
        Other arguments: as for :func:`monai_diffreg.register`.

    Returns:
        the exit status: 0, or 1 when a pair failed (each reported on stderr; the others still run).
    """
    from tqdm.auto import tqdm

    from .api import register

    true_ddf = None
    if moving is None:
        from .sample import load_sample

        sample = load_sample()
        paths = sample["paths"]
        fixed, moving = str(paths["fixed"]), [str(paths["moving"])]
        fixed_labels, moving_labels = str(paths["fixed_labels"]), [str(paths["moving_labels"])]
        true_ddf = sample["true_ddf"]
    pairs = _pairs(moving, moving_labels, output_dir)
    failures = 0
    batch = len(pairs) > 1
    progress = tqdm(pairs, desc="registering", unit="pair", disable=not batch, file=sys.stderr)
    for pair in progress:
        caught: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = register(fixed, pair["moving"], method, fixed_labels=fixed_labels,
                                  moving_labels=pair["moving_labels"], affine=affine, affine_metric=affine_metric,
                                  true_ddf=true_ddf, orientation=orientation, device=device,
                                  output_dir=pair["folder"], qc=qc, inverse=inverse, **(options or {}))
        except USER_ERRORS as err:
            if debug:
                raise
            failures += 1
            msg = err.args[0] if isinstance(err, KeyError) and err.args else err
            tqdm.write(f"{_PROG}: error: {_line(msg)}", file=sys.stderr)
            continue
        finally:
            _show_warnings(caught)
        tqdm.write(_report(pair, result), file=sys.stdout)
    if batch:
        print(f"{len(pairs) - failures}/{len(pairs)} pairs registered into {output_dir}", file=sys.stderr)
    return 1 if failures else 0


def _show_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Print what one registration warned, once each: the input and result checks of :func:`register` as one line,
    any other warning as Python shows it. Called outside the recording context (inside it, showing a warning would
    only record it again)."""
    from tqdm.auto import tqdm

    from .api import DissimilarityWarning, MisalignmentWarning, SpacingWarning

    for w in caught:
        if issubclass(w.category, (MisalignmentWarning, DissimilarityWarning, SpacingWarning)):
            tqdm.write(f"{_PROG}: warning: {_line(w.message)}", file=sys.stderr)
        elif not any(noise in str(w.message) for noise in _NOISE):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _register(args: argparse.Namespace) -> int:
    from .methods import find_method

    options = _parse_options(args.option)
    _check_args(args)
    find_method(args.bundle, "register", "bundle")  # fail once, before any work, on an unknown method
    orientation = None if str(args.orientation).lower() == "none" else args.orientation
    return register_pairs(args.bundle, args.fixed, None if args.sample else args.moving, output_dir=args.output_dir,
                          fixed_labels=args.fixed_labels, moving_labels=args.moving_labels, affine=args.affine,
                          affine_metric=args.affine_metric, orientation=orientation, device=args.device,
                          qc=not args.no_qc, inverse=args.inverse, options=options, debug=args.debug)


def evaluate_and_report(method: Any, pairs: str | None, output_csv: str | Path, *, device: str | None = None,
                        affine: bool = False, options: dict[str, Any] | None = None) -> int:
    """Evaluate ``method`` on every pair into ``output_csv`` and report failures in one line each (``evaluate``).

    Under ``torchrun`` every rank registers its share and rank 0 reports for all (:mod:`monai_diffreg.evaluation`).

    Returns:
        the exit status: 0, or 1 when a pair failed.
    """
    import os

    from .evaluation import evaluate_pairs

    rows = evaluate_pairs(pairs, method, output_csv, device=device, affine=affine, **(options or {}))
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 gathered the rows and reports them
    failed = [row for row in rows if "error" in row]
    for row in failed:
        print(f"{_PROG}: error: pair {row['pair']} ({row['moving']}): {row['error']}", file=sys.stderr)
    print(f"{len(rows) - len(failed)}/{len(rows)} pairs evaluated -> {output_csv}", file=sys.stderr)
    return 1 if failed else 0


def _evaluate(args: argparse.Namespace) -> int:
    from .methods import find_method

    options = _parse_options(args.option)
    find_method(args.bundle, "evaluate", "bundle")
    return evaluate_and_report(args.bundle, args.pairs, args.output_csv, device=args.device, affine=args.affine,
                               options=options)


def _export(args: argparse.Namespace) -> int:
    from .export import export_bundle

    options = _parse_options(args.option)
    done = export_bundle(args.bundle, output=args.output, size=args.size, options=options)
    size = "x".join(str(s) for s in done.spatial_size)
    print(f"{args.bundle} -> {done.path}: (moving, fixed) -> (ddf, inverse_ddf) for {size} images (any batch size); "
          f"max |exported - eager| {done.max_abs_difference:.2g} voxels; {done.seconds:.1f} s")
    return 0


def _estimate_regularization(args: argparse.Namespace) -> int:
    from .api import register

    options = _parse_options(args.option)
    if "alpha" in options:
        raise _UserError("estimate-regularization estimates alpha: do not give --option alpha=...")
    for flag, path in (("--fixed", args.fixed), ("--moving", args.moving)):
        if not Path(path).is_file():  # checked here: register() would name itself in the message
            raise FileNotFoundError(f"estimate-regularization: {flag} file not found: {path!r}")
    options.setdefault("progress", sys.stderr.isatty())  # minutes of work: a progress bar where someone watches
    result = register(args.fixed, args.moving, bundle="flash", device=args.device, alpha="map", **options)
    print(json.dumps({**result.info["method_summary"], "fixed": args.fixed, "moving": args.moving,
                      "seconds": round(result.timings["registration"], 3)}))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from .sweep import sweep_option

    values = [parse_option_value(v) for v in args.values]
    rows = sweep_option(args.bundle, args.name, values, args.fixed, args.moving, args.output_dir,
                        fixed_labels=args.fixed_labels, moving_labels=args.moving_labels, device=args.device,
                        affine=args.affine, select=args.select, **_parse_options(args.option))
    for row in rows:
        dice = f"Dice {row['dice_after']:.4f}  " if "dice_after" in row else ""
        print(f"{args.name}={row[args.name]!r}: {dice}SDlogJ {row['sd_log_jacobian']:.4f}  "
              f"folding {row['folding_percent']:.4g}%  {row['seconds_registration']:.1f} s")
    if args.select is None:
        print(f"wrote {Path(args.output_dir) / 'sweep.csv'} and sweep.png")
        return 0
    row = next(row for row in rows if row["selected"])
    print(f"selected ({args.select}): {args.name}={row[args.name]!r}: Dice {row['dice_after']:.4f}  "
          f"SDlogJ {row['sd_log_jacobian']:.4f}  folding {row['folding_percent']:.4g}%")
    print(f"wrote {Path(args.output_dir) / 'sweep.csv'}, sweep.png, selected.json and selected/")
    return 0


def _methods(args: argparse.Namespace) -> int:
    from .methods import available_methods

    infos = available_methods()
    if args.json:
        print(json.dumps([info.__dict__ for info in infos], indent=2))
        return 0
    width = max(len(info.name) for info in infos)
    for info in infos:
        print(f"{info.name:<{width}}  {info.kind:<7}  {info.description}  [{info.location}]")
    return 0


def _terminate_like_interrupt() -> None:
    """SIGTERM (a job scheduler, ``kill``) unwinds like Ctrl-C, so half-written outputs are removed."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. called from a server thread): leave the default
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 1 a pair failed, 2 bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _terminate_like_interrupt()
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=_NOISE[0])
    try:
        if args.command == "methods":
            return _methods(args)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "export":
            return _export(args)
        if args.command == "estimate-regularization":
            return _estimate_regularization(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "monailabel-app":
            from .apps import monailabel_app_dir

            print(monailabel_app_dir())
            return 0
        return _register(args)
    except _UserError as err:
        parser.error(str(err))  # exits with status 2
    except USER_ERRORS as err:
        if getattr(args, "debug", False):
            raise
        print(f"{_PROG}: error: {_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{_PROG}: interrupted", file=sys.stderr)
        return 130
    return 0


def run() -> NoReturn:
    """The ``monai-diffreg`` command: :func:`main`, then the process ends at once with its status.

    Every output is written and flushed when :func:`main` returns; the interpreter's teardown of
    torch and MONAI that a normal exit runs would add about 0.7 s to every command and do nothing
    for it. An uncaught error (``--debug``) still ends the normal way, with its traceback.
    """
    try:
        status = main()
    except SystemExit as done:  # argparse: --help, bad arguments
        status = done.code
    if isinstance(status, str):
        print(status, file=sys.stderr)
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(0 if status is None else int(status))


if __name__ == "__main__":
    run()
