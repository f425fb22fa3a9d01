"""real_anatomy_dataset: the one definition of the bundles' real-anatomy training data (their train.json ``dataset``)."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_diffreg.bundle_workflow import real_anatomy_dataset
from monai_diffreg.engines.training_data import (
    VALIDATION_LABEL_MAPS,
    SyntheticPairDataset,
    real_label_maps,
    shared_data_folder,
)
from monai_diffreg.methods import read_bundle_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_shared_data(tmp_path):
    """A shared data folder with two training maps and two held-out ones (small nested aseg structures, 2 mm)."""
    codes = np.zeros((30, 34, 28), dtype=np.float32)
    codes[4:26, 4:30, 4:24] = 24  # CSF
    codes[6:24, 6:28, 6:22] = 3  # cortex
    codes[9:21, 9:25, 9:19] = 2  # white matter
    codes[13:17, 14:20, 12:16] = 4  # ventricle
    for relative in ("synthseg_label_maps/training_seg_01.nii.gz", "synthseg_label_maps/training_seg_19.nii.gz",
                     "synthsr_label_maps/brain1_labels.nii.gz", "synthsr_label_maps/brain5_labels.nii.gz"):
        (tmp_path / relative).parent.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(codes, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / relative)
    return tmp_path


def test_shared_data_folder_is_the_data_folder_of_the_shared_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("MONAI_DIFFREG_SHARED", raising=False)
    assert shared_data_folder() == "../shared/data"  # relative to the working directory, as train.json had it
    monkeypatch.setenv("MONAI_DIFFREG_SHARED", "/somewhere")
    assert shared_data_folder() == "/somewhere/data"
    assert shared_data_folder(tmp_path) == str(tmp_path)


def test_real_label_maps_hold_out_the_validation_maps(fake_shared_data, tmp_path_factory):
    assert VALIDATION_LABEL_MAPS == ("training_seg_19.nii.gz", "training_seg_20.nii.gz", "brain5_labels.nii.gz")
    training = real_label_maps(fake_shared_data)
    assert training == [str(fake_shared_data / "synthseg_label_maps" / "training_seg_01.nii.gz"),
                        str(fake_shared_data / "synthsr_label_maps" / "brain1_labels.nii.gz")]
    held_out = real_label_maps(fake_shared_data, held_out=True)
    assert [Path(p).name for p in held_out] == ["training_seg_19.nii.gz", "brain5_labels.nii.gz"]
    assert real_label_maps(tmp_path_factory.mktemp("empty")) == []


def test_real_anatomy_dataset_uses_the_training_maps_and_passes_settings_through(fake_shared_data):
    dataset = real_anatomy_dataset((16, 16, 16), seed=3, shared_data=fake_shared_data, label_map_probability=1.0,
                                   template_probability=0.0, label_map_spacing=4.0, max_displacement=(0.0, 1.0))
    assert dataset.subject_maps.shape[0] == 2 and dataset.template is None  # the two training maps, no template
    assert (dataset.seed, dataset.label_map_probability, dataset.num_label_channels) == (3, 1.0, 19)
    assert dataset.max_displacement == (0.0, 1.0) and dataset.control_spacing == (8.0, 16.0)
    held_out = real_anatomy_dataset((16, 16, 16), shared_data=fake_shared_data, label_map_probability=1.0,
                                    template_probability=0.0, label_map_spacing=4.0,
                                    label_maps=real_label_maps(fake_shared_data, held_out=True))
    assert not torch.equal(held_out.subject_maps, torch.zeros_like(held_out.subject_maps))
    item = held_out[0]
    assert item["moving"].shape == (1, 16, 16, 16) and item["moving_labels"].shape == (19, 16, 16, 16)


def test_without_label_maps_and_template_no_data_is_needed(tmp_path):
    dataset = real_anatomy_dataset((16, 16, 16), shared_data=tmp_path / "absent", label_map_probability=0,
                                   template_probability=0)
    assert dataset.subject_maps is None and dataset.template is None
    assert dataset[0]["moving"].shape == (1, 16, 16, 16)


@pytest.mark.parametrize("probabilities,message", [
    ({}, "no label maps found under"),
    ({"label_map_probability": 0}, "the MNI template folder"),
])
def test_a_missing_data_folder_is_one_line_naming_it(tmp_path, capsys, probabilities, message):
    with pytest.raises(SystemExit) as stop:
        real_anatomy_dataset((16, 16, 16), shared_data=tmp_path / "absent", **probabilities)
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert message in line and str(tmp_path / "absent") in line and "MONAI_DIFFREG_SHARED" in line


def _dataset_as_train_json_had_it(spatial_size, seed):
    """train.json's ``dataset`` before real_anatomy_dataset (monai_diffreg 0.3.0), spelled out."""
    shared_data = os.environ.get("MONAI_DIFFREG_SHARED", "../shared") + "/data"
    label_map_files = sorted(glob.glob(shared_data + "/synthseg_label_maps/*.nii.gz")
                             + glob.glob(shared_data + "/synthsr_label_maps/*.nii.gz"))
    validation_label_maps = ["training_seg_19.nii.gz", "training_seg_20.nii.gz", "brain5_labels.nii.gz"]
    label_maps = [p for p in label_map_files if os.path.basename(p) not in validation_label_maps]
    return SyntheticPairDataset(spatial_size, seed=seed, template_folder=shared_data + "/mni152_2009a",
                                template_probability=0.2, template_scale=0.5, orientation="RAS",
                                control_spacing=[8.0, 16.0], max_displacement=[0.0, 5.0], label_maps=label_maps,
                                label_map_probability=0.6, num_label_channels=19)


def _source(seed, index):
    """Which source item ``index`` draws (SyntheticPairDataset.__getitem__'s first draw, train.json's probabilities)."""
    draw = float(torch.rand((), generator=torch.Generator().manual_seed((seed * 2**32 + index) % 2**63)))
    return "template" if draw < 0.2 else "subjects" if draw < 0.8 else "shapes"


@pytest.mark.slow
def test_train_json_dataset_is_bit_identical_to_the_one_it_replaced(shared_data, monkeypatch):
    """A run started with the old train.json resumes with this one: same maps, same template, same pairs."""
    monkeypatch.setenv("MONAI_DIFFREG_SHARED", str(shared_data.parent))
    configs = {b: json.loads((REPO / "bundles" / b / "configs" / "train.json").read_text()) for b in ("vxm_prob", "mdregnet")}
    shared = ("dataset", "seed", "shared_data", "label_map_probability", "template_probability", "patch_size")
    assert all(configs["vxm_prob"][key] == configs["mdregnet"][key] for key in shared)  # one recipe for both
    size, seed = (40, 48, 40), 0  # the patch size is passed through unchanged; a small one keeps the test short
    parser = read_bundle_config("vxm_prob", "train")
    parser["patch_size"] = list(size)
    new = parser.get_parsed_content("dataset")
    old = _dataset_as_train_json_had_it(size, seed)
    assert type(new) is SyntheticPairDataset
    plain = {k: v for k, v in vars(old).items() if k not in ("subject_maps", "template")}
    assert {k: v for k, v in vars(new).items() if k not in ("subject_maps", "template")} == plain
    assert new.subject_maps.shape[0] == 22 and torch.equal(new.subject_maps, old.subject_maps)
    assert all(torch.equal(new.template[k], old.template[k]) for k in ("image", "labels"))
    first = {}
    for index in range(40):
        first.setdefault(_source(seed, index), index)
    assert set(first) == {"template", "subjects", "shapes"}
    for index in sorted({0, 1, *first.values()}):
        a, b = new[index], old[index]
        assert all(torch.equal(a[key], b[key]) for key in ("moving", "fixed", "moving_labels", "fixed_labels")), index
