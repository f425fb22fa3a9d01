"""Held-out synthetic validation of a bundle's training checkpoints (choosing a recipe or a checkpoint).

    python -m benchmarks.validate_checkpoints --bundle vxm_prob --checkpoints RUN/checkpoint_*.pt \
        [--seed 999] [--pairs 12] [--output validation.csv]
    python -m benchmarks.validate_checkpoints --bundle mdregnet --checkpoints bundles/mdregnet/models/model.pt \
        --refine-steps 100 [--refine-learning-rate 0.1] [--refine-smoothing-sigma 2]
    python -m benchmarks.validate_checkpoints --bundle mdregnet --checkpoints RUN/checkpoint_*.pt \
        --override smoothing=False      # a run trained with an override of train.json
    python -m benchmarks.validate_checkpoints --bundle vxm_prob --checkpoints RUN/checkpoint_*.pt \
        --held-out-subjects             # real anatomy: only the label maps training holds out
    python -m benchmarks.validate_checkpoints --bundle bundles/synthmorph --config train_affine \
        --checkpoints RUN/checkpoint_*.pt --held-out-subjects   # a bundle still in training; another stage's config

The pairs are items ``0 .. pairs-1`` of the bundle's own ``train.json`` dataset built with
another seed (999; training uses 0): drawn from the training distribution, never trained on.
The labelled evaluation brain (``voxelmorph/test_scan``) is not touched, so choosing with this
tool keeps the benchmark's numbers honest. Every checkpoint's network (``train.json``'s, at the
training resolution) registers every pair; the score is the mean Dice over the non-background
labels of the moving label map warped by ``ddf`` (one-hot channels interpolated linearly, then
argmax) against the fixed label map. Identity (no registration) is the first row.

With ``--refine-steps N`` every pair is registered by the network's test-time refinement
(``network.refine``, minimising ``train.json``'s loss, as the bundles' ``refine_loss`` does)
instead: the held-out check of refinement settings.

``--override KEY=VALUE`` sets a ``train.json`` entry as ``monai.bundle run --KEY VALUE`` did for
the run (the value read as ``monai-diffreg --option`` values are), so that the network is built as trained.

A checkpoint is a training checkpoint (``{"model": state_dict, "iteration": ...}``) or a plain
state dict such as a bundle's ``models/model.pt``.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from benchmarks import DEFAULT_DATA_DIR
from monai_diffreg.cli import parse_option_value
from monai_diffreg.engines.refinement import refine_network
from monai_diffreg.engines.training_data import VALIDATION_LABEL_MAPS, real_label_maps
from monai_diffreg.functional.warp import warp
from monai_diffreg.methods import read_bundle_config
from monai_diffreg.metrics.dice import mean_dice

__all__ = ["train_config", "parse_override", "validation_pairs", "pair_dice", "validate", "main"]



def train_config(bundle: str, data_dir: Path, seed: int, overrides: dict | None = None,
                 held_out_subjects: bool = False, config: str = "train") -> ConfigParser:
    """The bundle's training config (``configs/<config>.json``: ``train``, or e.g. synthmorph's
    ``train_affine``) with its shared data at ``data_dir``, its dataset seed set to ``seed`` and each
    ``overrides`` entry (config id -> value) set. ``bundle`` is a bundle name, or a bundle folder, which
    may be one still in training (no ``inference.json`` yet). ``held_out_subjects``: every pair comes
    from the label maps training holds out (:data:`~monai_diffreg.engines.training_data.VALIDATION_LABEL_MAPS`),
    none from training's."""
    file = Path(bundle) / "configs" / f"{config}.json"
    if file.is_file():
        parser = ConfigParser()
        parser.read_config(file)
    elif Path(bundle).is_dir():
        raise FileNotFoundError(f"train_config: bundle folder {bundle} has no config {file}")
    else:
        parser = read_bundle_config(bundle, config)
    parser["shared_data"] = str(data_dir)
    parser["seed"] = seed
    if held_out_subjects:
        files = real_label_maps(data_dir, held_out=True)
        if len(files) != len(VALIDATION_LABEL_MAPS):
            raise ValueError(f"train_config: held-out label maps {sorted(VALIDATION_LABEL_MAPS)} not all found under "
                             f"{data_dir}")
        parser["dataset#label_maps"] = files
        parser["label_map_probability"] = 1.0
        parser["template_probability"] = 0.0
    for key, value in (overrides or {}).items():
        if key not in parser:
            raise ValueError(f"train_config: override {key!r} is not an entry of {bundle}'s {config}.json")
        parser[key] = value
    return parser


def parse_override(text: str) -> tuple[str, object]:
    """``"KEY=VALUE"`` -> ``(KEY, value)``, the value read as the CLI's ``--option`` values are (``False``, ``0.2``, text)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--override: expected KEY=VALUE, got {text!r}")
    return key, parse_option_value(value)


def validation_pairs(config: ConfigParser, pairs: int = 12) -> list[dict[str, torch.Tensor]]:
    """Items ``0 .. pairs-1`` of the config's training dataset, each batched ``(1, ...)``."""
    dataset = config.get_parsed_content("dataset")
    return [{key: value[None] for key, value in dataset[i].items()} for i in range(pairs)]


def pair_dice(moving_labels: torch.Tensor, fixed_labels: torch.Tensor, ddf: torch.Tensor | None) -> float:
    """Mean Dice (non-background labels) of one-hot ``moving_labels`` ``(1, L, *S)`` warped by ``ddf`` against ``fixed_labels``."""
    warped = moving_labels if ddf is None else warp(moving_labels, ddf)
    return float(mean_dice(warped.argmax(1, keepdim=True), fixed_labels.argmax(1, keepdim=True))[0])


def _load_state(path: Path, network: torch.nn.Module) -> tuple[dict, int | None]:
    """The state dict and iteration of a checkpoint file, checked to load into ``network`` (ValueError if not)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt files
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({err!r})") from None
    iteration = None
    if isinstance(state, dict) and "model" in state:
        state, iteration = state["model"], state.get("iteration")
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, expected a state dict or a training checkpoint")
    try:
        keys = network.load_state_dict(state, strict=False)
        problem = "; ".join(f"{len(names)} {kind} keys (e.g. {names[0]!r})" for kind, names in
                            (("missing", keys.missing_keys), ("unexpected", keys.unexpected_keys)) if names)
    except RuntimeError as err:  # shapes that differ
        problem = str(err).splitlines()[-1].strip()
    if problem:
        raise ValueError(f"{path} does not fit the network of train.json (another bundle's, or a run with an "
                         f"--override?): {problem}")
    return state, iteration


def _row(name: str, iteration: int | None, dice: list[float]) -> dict:
    return {"name": name, "iteration": iteration, "mean_dice": statistics.fmean(dice), "dice": dice}


def validate(bundle: str, checkpoints: list[Path], data_dir: Path, seed: int = 999, pairs: int = 12,
             progress=None, refine: dict | None = None, overrides: dict | None = None,
             held_out_subjects: bool = False, config: str = "train") -> list[dict]:
    """One row per checkpoint (after the identity row): ``name``, ``iteration``, ``mean_dice``, ``dice`` (per pair).

    ``refine``: keyword arguments of :func:`~monai_diffreg.engines.refinement.refine_network` (``steps``, ``learning_rate``,
    ``smoothing_sigma``) to score its test-time refinement with ``train.json``'s loss; None scores the network.
    ``overrides``: ``train.json`` entries set as for the training run (``{"smoothing": False}``).
    ``held_out_subjects``: pairs from the held-out real label maps only (:func:`train_config`).
    ``config``: the training config whose network, data and loss are used (:func:`train_config`).
    Raises ValueError (before any pair is built) for an unknown override or a checkpoint that is
    unreadable or does not fit the network.
    """
    config = train_config(bundle, data_dir, seed, overrides, held_out_subjects, config)
    network = config.get_parsed_content("network_def").eval()
    states = [(path, *_load_state(path, network)) for path in checkpoints]
    data = validation_pairs(config, pairs)
    rows = [_row("identity", None, [pair_dice(p["moving_labels"], p["fixed_labels"], None) for p in data])]
    loss = config.get_parsed_content("loss") if refine is not None else None

    def ddf(pair):
        if refine is not None:
            return refine_network(network, pair["moving"], pair["fixed"], loss, **refine)["ddf"]
        with torch.no_grad():
            return network(pair["moving"], pair["fixed"])["ddf"]

    for path, state, iteration in states:
        network.load_state_dict(state)
        scores = [pair_dice(p["moving_labels"], p["fixed_labels"], ddf(p)) for p in data]
        rows.append(_row(str(path), iteration, scores))
        if progress is not None:
            progress(rows[-1])
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", required=True,
                        help="bundle name or folder, also one still in training (its configs/train.json is used)")
    parser.add_argument("--config", default="train",
                        help="the training config of the checkpoints (configs/CONFIG.json; e.g. train_affine)")
    parser.add_argument("--checkpoints", required=True, nargs="+", type=Path)
    parser.add_argument("--seed", type=int, default=999, help="dataset seed of the held-out pairs (training: 0)")
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="the shared data folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--override", type=parse_override, action="append", default=[], metavar="KEY=VALUE",
                        help="set a train.json entry as the training run did (e.g. smoothing=False); repeatable")
    parser.add_argument("--output", type=Path, help="CSV file: name, iteration, mean_dice, dice per pair")
    parser.add_argument("--held-out-subjects", action="store_true",
                        help="pairs from the real label maps training holds out (VALIDATION_LABEL_MAPS) only")
    parser.add_argument("--refine-steps", type=int, default=0, help="score the network's test-time refinement (steps)")
    parser.add_argument("--refine-learning-rate", type=float, default=0.1)
    parser.add_argument("--refine-smoothing-sigma", type=float, default=None,
                        help="Gaussian smoothing of the refinement's updates (velocity voxels); default the network's")
    args = parser.parse_args(argv)
    if not args.data_dir.is_dir():
        sys.exit(f"validate_checkpoints: {args.data_dir} not found (set --data-dir or $MONAI_DIFFREG_SHARED)")
    missing = [str(p) for p in args.checkpoints if not p.is_file()]
    if missing:
        sys.exit(f"validate_checkpoints: checkpoint files not found: {', '.join(missing)}")
    torch.set_num_threads(args.threads)

    def show(row):
        print(f"{row['name']}: iteration {row['iteration']}, mean Dice {row['mean_dice']:.4f}", flush=True)

    refine = None if args.refine_steps == 0 else {"steps": args.refine_steps, "learning_rate": args.refine_learning_rate,
                                                  "smoothing_sigma": args.refine_smoothing_sigma}
    try:
        rows = validate(args.bundle, args.checkpoints, args.data_dir, args.seed, args.pairs, progress=show,
                        refine=refine, overrides=dict(args.override), held_out_subjects=args.held_out_subjects,
                        config=args.config)
    except (ValueError, FileNotFoundError) as error:  # a bad override, checkpoint or config name
        sys.exit(f"validate_checkpoints: {error}")
    print(f"identity: mean Dice {rows[0]['mean_dice']:.4f} ({args.pairs} pairs, dataset seed {args.seed})")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        partial = args.output.with_name(args.output.name + ".partial")
        with partial.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["name", "iteration", "mean_dice", *[f"pair_{i}" for i in range(args.pairs)]])
            for row in rows:
                writer.writerow([row["name"], row["iteration"], f"{row['mean_dice']:.4f}",
                                 *[f"{d:.4f}" for d in row["dice"]]])
        partial.replace(args.output)


if __name__ == "__main__":
    main()
