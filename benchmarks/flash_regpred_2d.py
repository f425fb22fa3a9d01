"""The 2D experiment of Wang & Zhang's alpha predictor: MAP labels of bull's-eye pairs, then the CNN trained on them.

``data``: pair ``i`` is the bull's-eye of :mod:`benchmarks.flash_bullseye` deformed by a prior sample
(seed ``i``) of a true alpha drawn log-uniformly in [``ALPHA_RANGE``]; its label is the evidence estimate
of :func:`monai_diffreg.lddmm.estimate_regularization` (start alpha 1), as the paper labels its training
pairs. One JSON line per pair is appended to ``labels.jsonl`` (resumable: finished pairs are skipped; the
images are rebuilt from the seed). ``data --start S`` labels the same pairs from another starting alpha into
``labels_start<S>.jsonl`` and reports how far those estimates lie from the labels (:func:`label_repeatability`):
the labels' own repeatability, which bounds what a predictor of them can reach.
``train``: :class:`monai_diffreg.lddmm.RegularizationPredictor` (2D),
L2 on log alpha, Adam from ``--lr`` (the paper's 5e-4) with a cosine decay to 0 over ``--epochs``, each training
batch of ``--batch-size`` pairs (the paper's 16; both images) in one of the 8 symmetries of the square
(:func:`square_symmetry`: the periodic band, its operators and the image term are invariant under them, so the
pair's MAP label is too). The last
``--test`` pairs are held out for the report; of the rest, the last ``--validation`` pairs choose the epoch
(the weights with the lowest validation loss, evaluated every 5 epochs) and the others train. ``--difference-gain``
sets the predictor's ``difference_gain`` (``balanced``: :func:`monai_diffreg.lddmm.balanced_difference_gain` of the
training pairs). The batch
norms' running statistics are recomputed over the training pairs before each evaluation
(:func:`monai_diffreg.lddmm.recalibrate_batch_norm`); with ``--freeze-norm-after E`` they are recomputed once at epoch
``E`` and used, fixed, in training from then on. Reported: the chosen weights' predictions on the
held-out pairs against their labels and true alphas, the prediction time and a plot. ``train --folds F``
cross-validates instead: F trainings, each holding out one block of the pairs (:func:`fold_split`), so every pair
is predicted once by a network that never saw it (``fold_<k>/`` and ``cross_validation.json``; a run cut short
resumes: folds finished with the same pairs and settings are reused): one block of 40
pairs decided as much as the data did in runs 3 and 4. ``symmetric --folds F`` evaluates those folds' predictors
again with their log alpha averaged over the square's 8 symmetries (:func:`symmetric_log_alpha`), on the validation
pairs (which may choose it) and the held-out ones (``symmetric.json``, ``symmetric.png``).

    python -m benchmarks.flash_regpred_2d data --output DIR --pairs 300 [--workers 2]
    python -m benchmarks.flash_regpred_2d data --output DIR --pairs 20 --start 3   # the labels' repeatability
    python -m benchmarks.flash_regpred_2d train --output DIR [--test 40 --validation 40 --epochs 150 --lr 5e-4 --norm batch]
    python -m benchmarks.flash_regpred_2d train --output DIR --folds 5 [--validation 40 --epochs 40 ...]
    python -m benchmarks.flash_regpred_2d symmetric --output DIR --folds 5 [--validation 40]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import math
import multiprocessing
import time
from pathlib import Path

import torch

from benchmarks import make_output_folder, positive_number_or
from benchmarks.flash_bullseye import TRUNCATION, bullseye, deformed
from monai_diffreg.io import atomic_path, save_png
from monai_diffreg.lddmm import (PREDICTOR_FUSIONS, PREDICTOR_NORMS, RegularizationPredictor, balanced_difference_gain,
                                 estimate_regularization, log_alpha_loss, predicted_alpha, recalibrate_batch_norm)

ALPHA_RANGE = (1.0, 30.0)


def true_alpha(index: int) -> float:
    """The true alpha of pair ``index`` (log-uniform in :data:`ALPHA_RANGE`, its own generator)."""
    u = float(torch.rand(1, generator=torch.Generator().manual_seed(10_000 + index)))
    low, high = (math.log(a) for a in ALPHA_RANGE)
    return math.exp(low + u * (high - low))


def pair(index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(target, source)`` of pair ``index``, ``(1, 1, 100, 100)`` each."""
    source = bullseye()
    return deformed(source, true_alpha(index), index)[0], source


def square_symmetry(images: torch.Tensor, which: int) -> torch.Tensor:
    """``images`` ``(B, C, N, N)`` under symmetry ``which`` in 0..7 of the square: ``which % 4`` quarter turns,
    then a flip of the last axis if ``which >= 4`` (0 is the identity)."""
    turned = torch.rot90(images, which % 4, dims=(2, 3))
    return turned.flip(3) if which >= 4 else turned


#: the estimator's starting alpha for the training labels (``labels.jsonl``)
LABEL_START = 1.0


def labels_file(output: Path, start: float = LABEL_START) -> Path:
    """``labels.jsonl`` (the training labels), or ``labels_start<S>.jsonl`` for another starting alpha."""
    return output / ("labels.jsonl" if start == LABEL_START else f"labels_start{start:g}.jsonl")


def label(index: int, start: float = LABEL_START) -> dict:
    """The MAP label of pair ``index`` from the starting alpha ``start`` (one line of :func:`labels_file`)."""
    target, source = pair(index)
    tic = time.perf_counter()
    result = estimate_regularization(target, source, alpha=start, truncation=TRUNCATION)
    return {"index": index, "true_alpha": true_alpha(index), "map_alpha": result["alpha"], "start": start,
            "curvature": result["curvature"], "iterations": len(result["history"]),
            "seconds": time.perf_counter() - tic}


def make_labels(output: Path, pairs: int, workers: int = 1, start: float = LABEL_START) -> None:
    """Label pairs ``0 .. pairs - 1`` into :func:`labels_file` (resumable: labelled pairs are skipped)."""
    path = labels_file(output, start)
    done = {json.loads(line)["index"] for line in path.read_text().splitlines()} if path.is_file() else set()
    missing = [index for index in range(pairs) if index not in done]
    # each worker process one thread (the caller's own setting when labelling in this process); spawned, not
    # forked: a fork of a process running threads (torch's, a test runner's) can leave a worker hung for good
    spawn = multiprocessing.get_context("spawn")
    with (spawn.Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) if workers > 1
          else contextlib.nullcontext()) as pool:
        compute = functools.partial(label, start=start)
        for row in (pool.imap_unordered(compute, missing) if pool else map(compute, missing)):
            with path.open("a") as f:  # one whole line per finished pair, written by this process only
                f.write(json.dumps(row) + "\n")
            print(f"pair {row['index']}: true {row['true_alpha']:.2f}, MAP {row['map_alpha']:.2f} "
                  f"({row['seconds']:.0f} s)", flush=True)


def label_repeatability(output: Path, start: float) -> dict:
    """|relative difference| between the labels from ``start`` and the training labels, over the pairs both have:
    how far an equally valid start moves the MAP estimate, a floor for any predictor's error against it."""
    rows = {}
    for origin in (LABEL_START, start):
        lines = labels_file(output, origin).read_text().splitlines()
        rows[origin] = {row["index"]: row["map_alpha"] for row in map(json.loads, lines)}
    common = sorted(set(rows[LABEL_START]) & set(rows[start]))
    if not common:
        raise SystemExit(f"flash_regpred_2d: no pair labelled from both starts {LABEL_START:g} and {start:g}")
    differences = sorted(abs(rows[start][i] / rows[LABEL_START][i] - 1) for i in common)
    return {"start": start, "pairs": len(common), "mean_abs_relative_difference": sum(differences) / len(common),
            "median_abs_relative_difference": differences[len(common) // 2], "max": differences[-1]}


def _load(output: Path) -> list[dict]:
    labels_path = output / "labels.jsonl"
    if not labels_path.is_file():
        raise SystemExit(f"flash_regpred_2d: no {labels_path}: run the data step first (the same --output)")
    return sorted((json.loads(line) for line in labels_path.read_text().splitlines()), key=lambda r: r["index"])


def _pair_tensors(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(fixed, moving, labels)`` of the labelled pairs: ``(N, 1, 100, 100)`` twice and the MAP alphas ``(N,)``."""
    images = [pair(r["index"]) for r in rows]
    return (torch.cat([t for t, _ in images]), torch.cat([s for _, s in images]),
            torch.tensor([r["map_alpha"] for r in rows]))


def fold_split(count: int, folds: int, fold: int, validation: int) -> tuple[list[int], list[int], list[int]]:
    """``(train, validation, held_out)`` positions of fold ``fold`` of ``folds`` over ``count`` pairs.

    The held-out pairs are the fold's contiguous block (blocks as equal as possible, every pair held out by exactly
    one fold); the ``validation`` pairs just before the block (cyclically) choose the epoch; the rest train.
    """
    bounds = [round(k * count / folds) for k in range(folds + 1)]
    held = list(range(bounds[fold], bounds[fold + 1]))
    chosen = [(bounds[fold] - 1 - k) % count for k in reversed(range(validation))]
    if len(held) + validation >= count or set(chosen) & set(held):
        raise SystemExit(f"flash_regpred_2d: {count} labelled pairs are too few for {folds} folds with --validation "
                         f"{validation}")
    taken = set(held) | set(chosen)
    return [i for i in range(count) if i not in taken], chosen, held


def train(output: Path, test: int, epochs: int, validation: int = 40, lr: float = 5e-4, norm: str = "batch",
          seed: int = 0, freeze_norm_after: int | None = None, fusion: str = "late", batch_size: int = 16,
          difference_gain: float | str = 1.0) -> dict:
    """Train on all but the last ``test + validation`` pairs; report on the last ``test`` (module docstring)."""
    rows = _load(output)
    if len(rows) <= test + validation:
        raise SystemExit(f"flash_regpred_2d: {len(rows)} labelled pairs, need more than --test {test} + "
                         f"--validation {validation}")
    n_train, n = len(rows) - test - validation, len(rows) - test
    split = (list(range(n_train)), list(range(n_train, n)), list(range(n, len(rows))))
    return fit(rows, _pair_tensors(rows), split, output, epochs, lr, norm, seed, freeze_norm_after, fusion, batch_size,
               difference_gain)


def cross_validate(output: Path, folds: int, epochs: int, validation: int = 40, lr: float = 5e-4, norm: str = "batch",
                   seed: int = 0, freeze_norm_after: int | None = None, fusion: str = "late",
                   batch_size: int = 16, difference_gain: float | str = 1.0) -> dict:
    """Train ``folds`` times, each holding out one block of the pairs (:func:`fold_split`); every pair is predicted
    once by a network that never saw it. Writes ``fold_<k>/`` (as :func:`train`) and ``cross_validation.json``.
    A fold an earlier run finished with the same pairs, labels and settings is reused, not trained again."""
    rows = _load(output)
    tensors = _pair_tensors(rows)  # once for all folds
    held_out, per_fold = [], []
    for fold in range(folds):
        split = fold_split(len(rows), folds, fold, validation)
        folder = output / f"fold_{fold}"
        folder.mkdir(exist_ok=True)
        settings = {"epochs": epochs, "learning_rate": lr, "norm": norm, "fusion": fusion,
                    "freeze_norm_after": freeze_norm_after, "seed": seed, "batch_size": batch_size,
                    "difference_gain": difference_gain}
        result = _finished_fold(folder, rows, split, settings)
        if result is None:
            result = fit(rows, tensors, split, folder, epochs, lr, norm, seed, freeze_norm_after, fusion, batch_size,
                         difference_gain)
        else:
            print(f"fold {fold}: finished by an earlier run with the same pairs and settings, reused", flush=True)
        held_out += [{**r, "fold": fold} for r in result["held_out"]]
        per_fold.append({k: result[k] for k in ("train_pairs", "test_pairs", "chosen_epoch", "training_seconds",
                                                "mean_abs_relative_error_vs_map", "median_abs_relative_error_vs_map",
                                                "constant_predictor_relative_error")})
        print(f"fold {fold}: held-out mean |relative error| vs MAP {result['mean_abs_relative_error_vs_map']:.3f}",
              flush=True)
    errors = sorted(abs(r["predicted_alpha"] / r["map_alpha"] - 1) for r in held_out)
    summary = {"pairs": len(rows), "folds": folds, "validation_pairs": validation, "epochs": epochs,
               "learning_rate": lr,
               "norm": norm, "fusion": fusion, "freeze_norm_after": freeze_norm_after, "batch_size": batch_size,
               "difference_gain": difference_gain,
               "mean_abs_relative_error_vs_map": sum(errors) / len(errors),
               "median_abs_relative_error_vs_map": errors[len(errors) // 2],
               "within_15_percent": sum(e <= 0.15 for e in errors) / len(errors),
               "per_fold": per_fold, "held_out": held_out}
    with atomic_path(output / "cross_validation.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    return summary


def fit(rows: list[dict], tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        split: tuple[list[int], list[int], list[int]], output: Path, epochs: int, lr: float,
        norm: str, seed: int, freeze_norm_after: int | None, fusion: str = "late", batch_size: int = 16,
        difference_gain: float | str = 1.0) -> dict:
    """Train on ``split[0]``, choose the epoch on ``split[1]``, report on ``split[2]`` (positions in ``rows``, whose
    :func:`_pair_tensors` are ``tensors``); ``difference_gain``: the predictor's, or ``"balanced"`` for
    :func:`~monai_diffreg.lddmm.balanced_difference_gain` of the training pairs;
    writes ``results.json``, ``predictor_2d.pt`` and ``predictions.png`` into ``output``."""
    train_part, validation_part, test_part = (torch.tensor(part) for part in split)
    fixed, moving, labels = tensors
    n_train, test = len(train_part), len(test_part)
    constant = float(labels[train_part].log().mean())  # the best constant log alpha in L2: the network's start
    gain = (balanced_difference_gain(fixed[train_part], moving[train_part]) if difference_gain == "balanced"
            else float(difference_gain))
    torch.manual_seed(seed)
    net = RegularizationPredictor(2, initial_log_alpha=constant, norm=norm, fusion=fusion, difference_gain=gain)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    history, best, start = [], (math.inf, -1, None), time.perf_counter()
    batch_norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    frozen = False
    for epoch in range(epochs):
        if freeze_norm_after is not None and epoch == freeze_norm_after and batch_norms:
            recalibrate_batch_norm(net, fixed[train_part], moving[train_part])
            frozen = True  # from here on the training optimises the network that is evaluated
        net.train()
        for m in batch_norms if frozen else ():
            m.eval()
        for batch in _batches(train_part[torch.randperm(n_train)], batch_size):
            which = int(torch.randint(8, (1,)))
            optimizer.zero_grad()
            loss = log_alpha_loss(net(square_symmetry(fixed[batch], which), square_symmetry(moving[batch], which)),
                                  labels[batch])
            loss.backward()
            optimizer.step()
        schedule.step()
        if epoch % 5 == 0 or epoch == epochs - 1:
            if batch_norms and not frozen:
                recalibrate_batch_norm(net, fixed[train_part], moving[train_part])  # (leaves it in evaluation mode)
            net.eval()
            with torch.no_grad():
                losses = {name: float(log_alpha_loss(net(fixed[part], moving[part]), labels[part]))
                          for name, part in (("train", train_part), ("validation", validation_part))}
            history.append({"epoch": epoch, **losses})
            if losses["validation"] < best[0]:
                best = (losses["validation"], epoch, {k: v.clone() for k, v in net.state_dict().items()})
            print(f"epoch {epoch}: L2 on log alpha train {losses['train']:.4f}, validation {losses['validation']:.4f}",
                  flush=True)
    training_seconds = time.perf_counter() - start
    net.load_state_dict(best[2])
    net.eval()
    held = [rows[i] for i in split[2]]
    with torch.no_grad():
        net(fixed[test_part[:1]], moving[test_part[:1]])  # warm-up
        tic = time.perf_counter()
        predicted = [float(predicted_alpha(net(fixed[i:i + 1], moving[i:i + 1]))) for i in split[2]]
        per_pair = (time.perf_counter() - tic) / test
    errors = [p / r["map_alpha"] - 1 for p, r in zip(predicted, held)]
    result = {
        "pairs": len(rows), "labels_sha256": _labels_sha256(rows), "train_pairs": n_train,
        "validation_pairs": len(validation_part), "test_pairs": test,
        "epochs": epochs, "learning_rate": lr, "norm": norm, "fusion": fusion, "freeze_norm_after": freeze_norm_after,
        "seed": seed, "batch_size": batch_size, "difference_gain": difference_gain, "difference_gain_value": gain,
        "chosen_epoch": best[1], "alpha_range": ALPHA_RANGE,
        "training_seconds": training_seconds, "prediction_seconds_per_pair": per_pair,
        "map_seconds_per_pair": sum(r["seconds"] for r in held) / test,
        "constant_predictor_relative_error": sum(abs(math.exp(constant) / r["map_alpha"] - 1) for r in held) / test,
        "mean_abs_relative_error_vs_map": sum(abs(e) for e in errors) / test,
        "median_abs_relative_error_vs_map": sorted(abs(e) for e in errors)[test // 2],
        "held_out": [{**r, "predicted_alpha": p} for r, p in zip(held, predicted)],
        "history": history,
    }
    with atomic_path(output / "predictor_2d.pt") as tmp:
        torch.save(net.state_dict(), tmp)
    plot(result, output / "predictions.png")
    with atomic_path(output / "results.json") as tmp:  # last: a fold with results.json is complete
        tmp.write_text(json.dumps(result, indent=1))
    return result


def _batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """``order`` in batches of ``batch_size``; a last batch of one pair joins the one before (batch norm cannot
    train on a single pair)."""
    batches = list(order.split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


def _finished_fold(folder: Path, rows: list[dict], split: tuple[list[int], list[int], list[int]],
                   settings: dict) -> dict | None:
    """The fold's ``results.json`` when an earlier run finished it with these ``settings`` on the same labelled pairs
    and split (so a cross-validation cut short resumes where it stopped); otherwise None."""
    path = folder / "results.json"
    if not path.is_file() or not (folder / "predictor_2d.pt").is_file():
        return None
    result = json.loads(path.read_text())
    same = (all(result.get(k) == v for k, v in settings.items()) and result.get("labels_sha256") == _labels_sha256(rows)
            and [r["index"] for r in result["held_out"]] == [rows[i]["index"] for i in split[2]]
            and result.get("train_pairs") == len(split[0]) and result.get("validation_pairs") == len(split[1]))
    return result if same else None


def _labels_sha256(rows: list[dict]) -> str:
    """Fingerprint of the labelled pairs (indices and MAP labels) a training saw."""
    return hashlib.sha256(json.dumps([(r["index"], r["map_alpha"]) for r in rows]).encode()).hexdigest()


def symmetric_log_alpha(net: torch.nn.Module, fixed: torch.Tensor, moving: torch.Tensor,
                        calibration: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``(B, 1)`` log alpha averaged over the 8 symmetries of the square (:func:`square_symmetry`), under which the
    pair's MAP label is invariant: a test-time average, 8 forward passes.

    ``calibration``: training pairs ``(fixed, moving)``; a batch-normalised ``net``'s running statistics are then
    recomputed in each symmetry before predicting in it (:func:`recalibrate_batch_norm`; the convolutions are not
    rotation-equivariant, so statistics taken in one orientation do not fit another), which leaves ``net``
    calibrated in the last symmetry.
    """
    predictions = []
    for k in range(8):
        if calibration is not None:
            recalibrate_batch_norm(net, *(square_symmetry(x, k) for x in calibration))
        predictions.append(net(square_symmetry(fixed, k), square_symmetry(moving, k)))
    return torch.stack(predictions).mean(0)


def evaluate_symmetric(output: Path, folds: int, validation: int = 40) -> dict:
    """Each fold's saved predictor (``fold_<k>/``, :func:`cross_validate`) evaluated plainly and with
    :func:`symmetric_log_alpha` (batch statistics recomputed on the fold's training pairs in each symmetry):
    validation L2 on log alpha (what may choose between the two) and held-out errors. Writes ``symmetric.json``."""
    rows = _load(output)
    fixed, moving, labels = _pair_tensors(rows)
    summary = {"folds": folds, "validation": {"plain": [], "symmetric": []}, "held_out": []}
    for fold in range(folds):
        train_part, chosen, held = (torch.tensor(part) for part in fold_split(len(rows), folds, fold, validation))
        folder = output / f"fold_{fold}"
        if not (folder / "results.json").is_file() or not (folder / "predictor_2d.pt").is_file():
            raise SystemExit(f"flash_regpred_2d: no trained fold in {folder}: run train --folds {folds} first "
                             f"(the same --output and --validation)")
        settings = json.loads((folder / "results.json").read_text())
        net = RegularizationPredictor(2, norm=settings["norm"], fusion=settings.get("fusion", "late"))
        net.load_state_dict(torch.load(folder / "predictor_2d.pt", weights_only=True))
        net.eval()
        both = torch.cat([chosen, held])
        with torch.no_grad():
            plain = net(fixed[both], moving[both]).flatten()  # with the saved (orientation 0) statistics
            averaged = symmetric_log_alpha(net, fixed[both], moving[both],
                                           calibration=(fixed[train_part], moving[train_part])).flatten()
        for name, predicted in (("plain", plain), ("symmetric", averaged)):
            summary["validation"][name].append(float(log_alpha_loss(predicted[:len(chosen)], labels[chosen])))
        summary["held_out"] += [{"index": rows[i]["index"], "fold": fold, "map_alpha": rows[i]["map_alpha"],
                                 "plain": float(predicted_alpha(a)), "symmetric": float(predicted_alpha(b))}
                                for i, a, b in zip(held.tolist(), plain[len(chosen):], averaged[len(chosen):])]
    for name in ("plain", "symmetric"):
        errors = sorted(abs(r[name] / r["map_alpha"] - 1) for r in summary["held_out"])
        summary[name] = {"validation_l2": sum(summary["validation"][name]) / folds,
                         "mean_abs_relative_error_vs_map": sum(errors) / len(errors),
                         "median_abs_relative_error_vs_map": errors[len(errors) // 2],
                         "within_15_percent": sum(e <= 0.15 for e in errors) / len(errors)}
    with atomic_path(output / "symmetric.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=1))
    plot_pooled(summary, output / "symmetric.png")
    return summary


def plot_pooled(summary: dict, path: Path) -> None:
    """Every pair's held-out prediction (plain and symmetric) against its MAP label, with the +-15 % band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    held = summary["held_out"]
    labels = [r["map_alpha"] for r in held]
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    for name, marker in (("plain", "x"), ("symmetric", "o")):
        ax.scatter(labels, [r[name] for r in held], s=10, marker=marker, alpha=0.6,
                   label=f"{name}: mean |rel. error| {summary[name]['mean_abs_relative_error_vs_map']:.3f}")
    bounds = [min(labels) * 0.8, max(labels) * 1.2]
    ax.plot(bounds, bounds, "k--", lw=0.8)
    ax.fill_between(bounds, [b * 0.85 for b in bounds], [b * 1.15 for b in bounds], color="k", alpha=0.1,
                    label="within 15 %")
    ax.set(xscale="log", yscale="log", xlabel="MAP (evidence) alpha", ylabel="predicted alpha",
           title=f"{summary['folds']}-fold cross-validation: {len(held)} held-out pairs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path, dpi=90)
    plt.close(fig)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    held = result["held_out"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    axes[0].scatter([r["map_alpha"] for r in held], [r["predicted_alpha"] for r in held], s=14, label="predicted")
    axes[0].scatter([r["map_alpha"] for r in held], [r["true_alpha"] for r in held], s=14, marker="x", label="true")
    bounds = [min(r["map_alpha"] for r in held) * 0.8, max(r["map_alpha"] for r in held) * 1.2]
    axes[0].plot(bounds, bounds, "k--", lw=0.8)
    axes[0].set(xscale="log", yscale="log", xlabel="MAP (evidence) alpha", ylabel="alpha",
                title=f"held-out pairs: predicted vs MAP (mean |rel. error| {result['mean_abs_relative_error_vs_map']:.2f})")
    axes[0].legend()
    epochs = [h["epoch"] for h in result["history"]]
    axes[1].plot(epochs, [h["train"] for h in result["history"]], label="training pairs")
    axes[1].plot(epochs, [h["validation"] for h in result["history"]], label="validation pairs")
    axes[1].axvline(result["chosen_epoch"], color="k", lw=0.8, ls=":", label="chosen (lowest validation)")
    axes[1].set(yscale="log", xlabel="epoch", ylabel="L2 on log alpha", title="training")
    axes[1].legend()
    fig.tight_layout()
    save_png(fig, path, dpi=90)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=("data", "train", "symmetric"))
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--pairs", type=int, default=200, help="data: labelled pairs wanted")
    parser.add_argument("--start", type=float, default=LABEL_START,
                        help="data: the estimator's starting alpha; another than the labels' writes "
                             "labels_start<S>.jsonl and reports how far its estimates are from the labels")
    parser.add_argument("--test", type=int, default=40, help="train: held-out pairs (the last ones)")
    parser.add_argument("--folds", type=int, default=None,
                        help="train: cross-validation instead of --test: each of this many blocks held out once")
    parser.add_argument("--validation", type=int, default=40, help="train: pairs choosing the epoch (before the held-out ones)")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16, help="train: pairs per training batch (the paper's 16)")
    parser.add_argument("--lr", type=float, default=5e-4, help="train: Adam's initial learning rate (cosine decay to 0)")
    parser.add_argument("--norm", choices=PREDICTOR_NORMS, default="batch", help="train: the predictor's normalisation")
    parser.add_argument("--fusion", choices=PREDICTOR_FUSIONS, default="late",
                        help="train: the paper's two streams (late) or one stream of the stacked pair (early)")
    parser.add_argument("--freeze-norm-after", type=int, default=None,
                        help="train: from this epoch on, batch norms use their statistics over the training pairs "
                             "(recomputed once then), in training as in evaluation")
    parser.add_argument("--difference-gain", default="1",
                        help="train: the predictor's difference_gain (1: the images as they are, the paper's), or "
                             "'balanced' (balanced_difference_gain of the training pairs)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of this process (data --workers N: 1 per worker)")
    parser.add_argument("--workers", type=int, default=1, help="data: pairs labelled at once (one thread each)")
    args = parser.parse_args(argv)
    for name in ("pairs", "test", "validation", "epochs", "batch_size", "threads", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    args.difference_gain = positive_number_or(parser, "--difference-gain", args.difference_gain, "balanced")
    if args.folds is not None and args.folds < 2:
        parser.error(f"--folds must be at least 2, got {args.folds}")
    if args.batch_size < 2 and args.norm == "batch":
        parser.error("--batch-size must be at least 2 with --norm batch (batch statistics of one pair)")
    if args.freeze_norm_after is not None and not 0 <= args.freeze_norm_after < args.epochs:
        parser.error(f"--freeze-norm-after must be an epoch in [0, --epochs), got {args.freeze_norm_after}")
    if not args.lr > 0:
        parser.error(f"--lr must be positive, got {args.lr}")
    if not args.start > 0:
        parser.error(f"--start must be positive, got {args.start}")
    make_output_folder(parser, args.output)
    torch.set_num_threads(args.threads)
    if args.step == "data":
        make_labels(args.output, args.pairs, args.workers, args.start)
        if args.start != LABEL_START and labels_file(args.output).is_file():
            print(json.dumps(label_repeatability(args.output, args.start)))
    elif args.step == "symmetric":
        if args.folds is None:
            parser.error("symmetric: --folds is needed (the folds of the cross-validation to evaluate)")
        result = evaluate_symmetric(args.output, args.folds, args.validation)
        for name in ("plain", "symmetric"):
            print(f"{name}: validation L2 {result[name]['validation_l2']:.4f}, held-out mean |relative error| vs MAP "
                  f"{result[name]['mean_abs_relative_error_vs_map']:.3f}")
    elif args.folds is not None:
        result = cross_validate(args.output, args.folds, args.epochs, args.validation, args.lr, args.norm,
                                freeze_norm_after=args.freeze_norm_after, fusion=args.fusion, batch_size=args.batch_size,
                                difference_gain=args.difference_gain)
        print(f"cross-validated ({args.folds} folds) mean |relative error| vs MAP "
              f"{result['mean_abs_relative_error_vs_map']:.3f}, "
              f"median {result['median_abs_relative_error_vs_map']:.3f}, "
              f"{result['within_15_percent']:.0%} within 15 %")
    else:
        result = train(args.output, args.test, args.epochs, args.validation, args.lr, args.norm,
                       freeze_norm_after=args.freeze_norm_after, fusion=args.fusion, batch_size=args.batch_size,
                       difference_gain=args.difference_gain)
        print(f"held-out mean |relative error| vs MAP {result['mean_abs_relative_error_vs_map']:.3f} "
              f"(constant predictor {result['constant_predictor_relative_error']:.3f}), "
              f"{result['prediction_seconds_per_pair'] * 1e3:.1f} ms per pair")


if __name__ == "__main__":
    main()
