"""Normalised mutual information: contrast-independent, 1 for independent images, 2 for identical ones."""

import pytest
import torch

from monai_diffreg.metrics import normalized_mutual_information


def test_nmi_is_two_for_an_image_with_itself_or_any_inverted_contrast():
    image = torch.rand(20, 22, 18)
    assert normalized_mutual_information(image, image) == pytest.approx(2.0, abs=1e-9)
    # T1 vs "T2": bin edges of the inverted image fall a hair apart, so a few voxels change bin
    assert normalized_mutual_information(image, 1.0 - image) == pytest.approx(2.0, abs=5e-3)


def test_nmi_falls_to_one_for_independent_images_and_orders_misalignment():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.rand(40, 40, 40, generator=generator), torch.rand(40, 40, 40, generator=generator)
    assert normalized_mutual_information(a, b) < 1.02
    smooth = torch.nn.functional.avg_pool3d(a[None, None], 5, 1, 2)[0, 0]
    shifted_1, shifted_4 = (torch.roll(smooth, s, dims=0) for s in (1, 4))
    assert normalized_mutual_information(smooth, shifted_1) > normalized_mutual_information(smooth, shifted_4)


def test_nmi_constant_and_bad_input():
    assert normalized_mutual_information(torch.zeros(5, 5), torch.rand(5, 5)) == 1.0
    with pytest.raises(ValueError, match="must have one shape"):
        normalized_mutual_information(torch.rand(4, 4), torch.rand(4, 5))
