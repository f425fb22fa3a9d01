"""Shared set-up of the ``*_properties`` scripts: a bundle's network with its shipped weights, and the
``brain_synthetic`` cases re-oriented to RAS and intensity-normalised as ``register()`` gives them."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from monai_diffreg.engines.network_inference import load_weights
from monai_diffreg.methods import read_bundle_config
from monai_diffreg.transforms.intensity import normalize_intensity_percentile
from monai_diffreg.transforms.spatial import axis_mapping, to_target_axes

from .cases import CASE_AXCODES

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


def bundle_network(bundle: str, **overrides) -> nn.Module:
    """``network_def`` of ``bundles/<bundle>/configs/inference.json`` (after ``overrides`` by id), with the
    weights its ``method`` loads, in eval mode."""
    config = read_bundle_config(BUNDLES / bundle)
    for key, value in overrides.items():
        config[key] = value
    return load_weights(config.get_parsed_content("network_def"), config.get_parsed_content("method#weights")).eval()


def brain_synthetic_case(seed: int, cache_dir: Path) -> dict[str, torch.Tensor]:
    """A cached benchmark case on RAS axes: ``fixed``/``moving`` normalised to [0, 1], label maps, ``labels``."""
    case = torch.load(cache_dir / f"brain_synthetic_s{seed}@1.pt", weights_only=True)
    to_ras = axis_mapping(CASE_AXCODES["brain_synthetic"], "RAS")
    out = {k: to_target_axes(case[k], to_ras) for k in ("fixed", "moving", "fixed_labels", "moving_labels")}
    for key in ("fixed", "moving"):
        out[key] = normalize_intensity_percentile(out[key], name=key, caller="properties")
    out["labels"] = case["labels"]
    return out
