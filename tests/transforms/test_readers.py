"""IsalNibabelReader: the same arrays and metadata as MONAI's NibabelReader, faster inflation."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import LoadImage

from monai_diffreg.transforms.readers import IsalNibabelReader
from monai_diffreg.transforms.spatial import load_channel_first


def _write(path, kind, shape=(5, 6, 7)):
    data = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    affine = np.array([[-1.5, 0, 0, 10], [0, 1.2, 0.1, -4], [0, 0, 2.0, 3], [0, 0, 0, 1]])
    kind(data, affine).to_filename(str(path))
    return data


@pytest.mark.parametrize("kind, name", [(nib.Nifti1Image, "a.nii.gz"), (nib.Nifti2Image, "b.nii.gz"),
                                        (nib.Nifti1Image, "c.nii")])
def test_same_image_and_metadata_as_monai_nibabel_reader(tmp_path, kind, name):
    data = _write(tmp_path / name, kind)
    ours = LoadImage(reader=IsalNibabelReader(), image_only=True)(tmp_path / name)
    monai = LoadImage(reader="NibabelReader", image_only=True)(tmp_path / name)
    np.testing.assert_array_equal(ours.numpy(), data)
    assert torch.equal(ours.as_tensor(), monai.as_tensor())
    assert torch.equal(ours.affine, monai.affine)
    assert {k for k in monai.meta if str(ours.meta[k]) != str(monai.meta[k])} == set()


def test_load_channel_first_reads_gzip_with_it_and_reports_corrupt_files(tmp_path):
    data = _write(tmp_path / "a.nii.gz", nib.Nifti1Image)
    np.testing.assert_array_equal(load_channel_first(tmp_path / "a.nii.gz", "fixed", "register")[0].numpy(), data)
    (tmp_path / "bad.nii.gz").write_bytes(gzip.compress(b"not a nifti header")[:10])
    with pytest.raises(ValueError, match=r"register\(\): could not read 'fixed' from .*bad\.nii\.gz"):
        load_channel_first(tmp_path / "bad.nii.gz", "fixed", "register")
