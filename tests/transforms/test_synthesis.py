"""SynthMorph-style synthesis: ranges, replay, analytic per-label intensities, labels untouched."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from monai_diffreg.transforms.array import SynthesizeImageFromLabels
from monai_diffreg.functional import warp
from monai_diffreg.transforms.dictionary import RandLabelMapd, RandSmoothDeformationd, RandSynthesizeImaged
from monai_diffreg.transforms.synthesis import (
    add_gaussian_noise,
    apply_gamma,
    bias_field_from_coefficients,
    gaussian_blur,
    label_intensity_image,
    random_label_map,
    sample_synthesis_params,
    synthesize_image,
)

SHAPES = [(40, 36), (20, 24, 18)]
NO_TEXTURE = {"std_range": (0.0, 0.0), "max_blur_sigma": 0.0, "max_bias_std": 0.0, "max_noise_std": 0.0}


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape", SHAPES)
def test_random_label_map(shape):
    labels = random_label_map(shape, num_labels=5, blob_spacing=6.0, generator=_gen(0))
    assert labels.shape == (1, 1, *shape) and labels.dtype == torch.int64
    values, counts = labels.unique(return_counts=True)
    assert set(values.tolist()) <= set(range(5)) and len(values) >= 3
    assert torch.equal(labels, random_label_map(shape, 5, 6.0, generator=_gen(0)))
    assert not torch.equal(labels, random_label_map(shape, 5, 6.0, generator=_gen(1)))
    # smooth blobs, not salt and pepper: most neighbours along axis 0 share a label
    assert float((labels[:, :, 1:] == labels[:, :, :-1]).float().mean()) > 0.8
    unwarped = random_label_map(shape, 5, 6.0, max_displacement=0.0, generator=_gen(0))
    assert unwarped.shape == labels.shape and not torch.equal(unwarped, labels)


@pytest.mark.parametrize("shape", SHAPES)
def test_synthesis_range_and_replay(shape):
    labels = random_label_map(shape, 6, generator=_gen(2))
    params = sample_synthesis_params(labels.unique(), shape, generator=_gen(3))
    image = synthesize_image(labels, params)
    assert image.shape == labels.shape and image.dtype == torch.float32
    assert bool(torch.isfinite(image).all()) and float(image.min()) == 0.0 and float(image.max()) == 1.0
    assert torch.equal(image, synthesize_image(labels, params))
    other = synthesize_image(labels, sample_synthesis_params(labels.unique(), shape, generator=_gen(4)))
    assert not torch.equal(image, other)


@pytest.mark.parametrize("shape", SHAPES)
def test_without_noise_and_bias_each_label_has_its_own_intensity(shape):
    labels = random_label_map(shape, 4, generator=_gen(5)) * 10 + 3  # arbitrary label values
    params = sample_synthesis_params(labels.unique(), shape, **NO_TEXTURE, generator=_gen(6))
    image = synthesize_image(labels, params)
    means = params["means"]
    expected_levels = ((means - means.min()) / (means.max() - means.min())) ** params["gamma"]
    for value, level in zip(params["label_values"].tolist(), expected_levels.tolist()):
        region = image[labels == value]
        torch.testing.assert_close(region, torch.full_like(region, level), atol=1e-5, rtol=0)
    assert len(set(round(v, 4) for v in expected_levels.tolist())) == len(expected_levels)


def test_step_functions_analytic():
    labels = torch.tensor([[[[0, 2], [5, 2]]]])
    image = label_intensity_image(labels, torch.tensor([0, 2, 5]), torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3))
    assert torch.equal(image, torch.tensor([[[[1.0, 2.0], [3.0, 2.0]]]]))
    torch.testing.assert_close(apply_gamma(torch.tensor([[[[0.25, 1.0]]]]), 0.5), torch.tensor([[[[0.5, 1.0]]]]))
    # a constant log-bias c gives the bias exp(c) everywhere
    torch.testing.assert_close(bias_field_from_coefficients(torch.full((1, 1, 2, 2), 0.5), (6, 5)),
                               torch.full((1, 1, 6, 5), float(torch.exp(torch.tensor(0.5)))))
    assert torch.equal(add_gaussian_noise(image, 0.0), image)
    noisy = add_gaussian_noise(torch.zeros(1, 1, 64, 64), 0.5, _gen(0))
    assert abs(float(noisy.std()) - 0.5) < 0.03
    ramp = torch.arange(10.0).view(1, 1, 1, 10).expand(1, 1, 4, 10)
    assert torch.equal(gaussian_blur(ramp, (0.0, 0.0)), ramp)
    blurred = gaussian_blur(ramp, (0.0, 1.0))
    torch.testing.assert_close(blurred[..., 3:7], ramp[..., 3:7])  # a linear ramp is invariant inside
    impulse = torch.zeros(1, 1, 9, 9)
    impulse[0, 0, 4, 4] = 1.0
    assert torch.equal(gaussian_blur(impulse, (1.0, 0.0))[0, 0, :, 3], torch.zeros(9))  # axis 1 untouched


def test_synthesis_bad_input():
    labels = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    with pytest.raises(ValueError, match=r"label_intensity_image\(\): 'labels' holds value\(s\) \[7\] missing"):
        label_intensity_image(labels + 7, torch.tensor([0, 1]), torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="'labels' must hold integers"):
        synthesize_image(labels.float(), sample_synthesis_params([0], (8, 8)))
    with pytest.raises(ValueError, match="'params' were drawn for 3D images"):
        synthesize_image(labels, sample_synthesis_params([0], (8, 8, 8)))
    with pytest.raises(ValueError, match="'params' must be a dict with keys"):
        synthesize_image(labels, {"means": 1})
    with pytest.raises(ValueError, match="'mean_range' must be \\(low, high\\)"):
        sample_synthesis_params([0, 1], (8, 8), mean_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="'label_values' must be a non-empty set of integers"):
        sample_synthesis_params([0.5], (8, 8))
    with pytest.raises(ValueError, match="'num_labels' must be an integer >= 1"):
        random_label_map((8, 8), 0)


@pytest.mark.parametrize("shape", SHAPES)
def test_array_transform(shape):
    affine = torch.diag(torch.tensor([2.0] * len(shape) + [1.0]))
    labels = MetaTensor(random_label_map(shape, 5, generator=_gen(7))[0].float(), affine=affine)
    before = labels.clone()
    synth = SynthesizeImageFromLabels().set_random_state(0)
    image = synth(labels)
    assert torch.equal(labels, before)  # labels untouched
    assert image.shape == labels.shape and image.dtype == torch.float32
    assert torch.equal(image.affine, labels.affine)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert torch.equal(synth.apply_params(labels, synth.params), image)
    assert torch.equal(synth(labels, randomize=False), image)
    assert torch.equal(SynthesizeImageFromLabels().set_random_state(0)(labels), image)
    assert not torch.equal(synth(labels), image)
    with pytest.raises(ValueError, match=r"must be a label map of integer values, got \d+ non-integer"):
        synth(labels + 0.5)
    with pytest.raises(ValueError, match="'labels' must have 1 channel"):
        synth(torch.zeros(2, *shape, dtype=torch.long))


def test_dictionary_transform_independent_and_shared():
    labels = random_label_map((32, 28), 5, generator=_gen(8))[0]
    data = {"fixed_labels": labels, "moving_labels": labels.clone()}
    synth = RandSynthesizeImaged(("fixed_labels", "moving_labels"), ("fixed", "moving")).set_random_state(1)
    out = synth(data)
    assert torch.equal(out["fixed_labels"], labels) and set(synth.params) == {"fixed", "moving"}
    assert not torch.equal(out["fixed"], out["moving"])  # own contrast per key
    assert torch.equal(synth.synthesizer.apply_params(labels, synth.params["moving"]), out["moving"])
    with pytest.raises(ValueError, match="'image_keys' must name one output per label key"):
        RandSynthesizeImaged(("fixed_labels", "moving_labels"), "fixed")
    with pytest.raises(TypeError, match=r"SynthesizeImageFromLabels\(\): unknown setting"):
        RandSynthesizeImaged("fixed_labels", "fixed", noise=0.1)
    with pytest.raises(ValueError, match="'max_noise_std' must be a finite number >= 0"):
        SynthesizeImageFromLabels(max_noise_std=-1.0)
    shared = RandSynthesizeImaged(("fixed_labels", "moving_labels"), ("fixed", "moving"), independent=False,
                                  **NO_TEXTURE).set_random_state(1)(data)
    assert torch.equal(shared["fixed"], shared["moving"])


def test_label_free_synthmorph_pair_carries_its_ground_truth():
    pipeline = Compose([
        RandLabelMapd(("fixed_labels", "moving_labels"), (32, 28), num_labels=6, blob_spacing=6.0),
        RandSmoothDeformationd("fixed_labels", mode="nearest", max_displacement=3.0, ddf_key="true_ddf"),
        RandSynthesizeImaged(("fixed_labels", "moving_labels"), ("fixed", "moving")),
    ]).set_random_state(0)
    sample = pipeline({})
    fixed_labels, moving_labels = sample["fixed_labels"].as_tensor(), sample["moving_labels"].as_tensor()
    assert fixed_labels.shape == (1, 32, 28) and fixed_labels.dtype == torch.int64
    assert not torch.equal(fixed_labels, moving_labels)
    # the stored displacement maps the moving labels exactly onto the fixed labels
    warped = warp(moving_labels[None].float(), sample["true_ddf"][None], mode="nearest")[0]
    assert torch.equal(warped.long(), fixed_labels)
    for key in ("fixed", "moving"):
        assert sample[key].shape == (1, 32, 28) and float(sample[key].min()) >= 0.0 and float(sample[key].max()) <= 1.0
    again = pipeline.set_random_state(0)({})
    assert torch.equal(again["fixed"].as_tensor(), sample["fixed"].as_tensor())
    with pytest.raises(ValueError, match=r"RandLabelMapd\(\): 'spatial_shape' must be 2 or 3 positive integers"):
        RandLabelMapd("labels", (32,))
