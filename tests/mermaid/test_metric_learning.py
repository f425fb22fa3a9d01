"""Global metric learning: weights on the simplex, the OMT pull, smooth vs fine populations, the energy,
gradients, bad inputs, and the learned weights used by vSVF (API, method contract, CLI)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import monai_diffreg as md
from monai_diffreg.cli import main, parse_option_value
from monai_diffreg.functional import gaussian_smooth, warp
from monai_diffreg.io import save_image
from monai_diffreg.mermaid import learn_global_weights, omt_penalty, population_energy, vsvf_register


def _population(scale, amplitude, n=4, shape=(32, 32), seed=0):
    """Textured images, each moved by a random displacement smoothed at ``scale`` voxels, largest ``amplitude`` voxels."""
    gen = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(n):
        image = gaussian_smooth(torch.rand(1, 1, *shape, generator=gen), 1.0)
        image = (image - image.min()) / (image.max() - image.min())
        field = gaussian_smooth(torch.randn(1, 2, *shape, generator=gen), scale)
        pairs.append((image, warp(image, amplitude * field / field.abs().amax())))
    return pairs


SIGMAS = (1.0, 2.0, 4.0)
SETTINGS = dict(sigmas=SIGMAS, regularization_weight=0.1, omt_weight=0.05, image_loss="mse", image_sigma=0.1,
                iterations=60, learning_rate=0.1, weights_learning_rate=0.05)


def _on_simplex(w):
    return bool((w >= 0).all()) and abs(float(w.sum()) - 1.0) < 1e-6


def test_smooth_population_learns_wider_kernels_than_a_fine_one():
    """The paper's point, small: large-scale deformations keep weight on the widest Gaussian, fine-scale ones
    move it to the narrowest; the weights stay on the simplex and the joint energy decreases."""
    smooth = learn_global_weights(_population(8.0, 2.0), **SETTINGS)
    fine = learn_global_weights(_population(1.5, 2.0), **SETTINGS)
    for out in (smooth, fine):
        assert len(out["history"]) == 60 and len(out["momenta"]) == 4 and out["momenta"][0].shape == (1, 2, 32, 32)
        assert all(_on_simplex(step["weights"]) for step in out["history"]) and _on_simplex(out["weights"])
        assert out["history"][-1]["loss"] < 0.6 * out["history"][0]["loss"]
        assert out["history"][-1]["image"] < 0.5 * out["history"][0]["image"]
    assert float(smooth["weights"][-1]) > float(fine["weights"][-1]) + 0.15, (smooth["weights"], fine["weights"])
    assert float(omt_penalty(smooth["weights"], SIGMAS)) + 0.15 < float(omt_penalty(fine["weights"], SIGMAS))


def test_large_omt_weight_moves_the_weights_to_the_widest_gaussian():
    """With the OMT term dominating, its minimiser (all weight on the widest Gaussian) is approached from any start."""
    pairs = _population(1.5, 2.0, n=2, shape=(16, 16))
    seen = []
    out = learn_global_weights(pairs, sigmas=SIGMAS, initial_weights=(0.6, 0.3, 0.1), omt_weight=10.0,
                               iterations=40, weights_learning_rate=0.2, callback=lambda *args: seen.append(args))
    assert [args[:2] for args in seen] == [(0, i) for i in range(40)]
    torch.testing.assert_close(out["history"][0]["weights"], torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64))
    assert float(out["weights"][-1]) > 0.95 and _on_simplex(out["weights"])
    omt = [step["omt"] for step in out["history"]]
    assert omt[-1] < 0.05 * omt[0]


def test_level_runs_on_a_coarser_grid_3d():
    pairs = [(torch.rand(1, 1, 12, 10, 8), torch.rand(1, 1, 12, 10, 8))]
    out = learn_global_weights(pairs, sigmas=(2.0, 4.0), iterations=2, level=2, spacing=(1.0, 1.0, 2.0))
    assert out["momenta"][0].shape == (1, 3, 8, 8, 8)  # level grids keep at least 8 voxels per axis
    assert out["weights"].shape == (2,) and _on_simplex(out["weights"])


def test_population_energy_gradient_wrt_logits_float64():
    """Autograd through the softmax, the kernel, scaling and squaring, the warp and the OMT term."""
    gen = torch.Generator().manual_seed(0)
    shape, spacing = (7, 6), (1.0, 1.5)
    fixed = torch.rand(2, 1, *shape, dtype=torch.float64, generator=gen)
    moving = torch.rand(2, 1, *shape, dtype=torch.float64, generator=gen)
    momentum = 0.5 * torch.randn(2, 2, *shape, dtype=torch.float64, generator=gen)
    logits = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64, requires_grad=True)

    def energy(theta):
        return population_energy(theta, momentum, fixed, moving, spacing, sigmas=(1.5, 3.0, 6.0),
                                 regularization_weight=0.1, omt_weight=0.5, image_loss="mse", num_steps=3)["total"]

    assert torch.autograd.gradcheck(energy, (logits,), eps=1e-6, atol=1e-6)
    out = population_energy(logits, momentum, fixed, moving, spacing, sigmas=(1.5, 3.0, 6.0), regularization_weight=0.1,
                            omt_weight=0.5, image_loss="mse", num_steps=3)
    torch.testing.assert_close(out["weights"], torch.softmax(logits, 0))
    torch.testing.assert_close(out["total"], out["image"] + 0.1 * out["prior"] + 0.5 * out["omt"])


def _blob(shape, centre, width=3.0):
    grids = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    return np.exp(-sum((g - c) ** 2 for g, c in zip(grids, centre)) / (2 * width**2)).astype(np.float32)


def test_learned_weights_are_used_by_vsvf_api_method_and_cli(tmp_path, capsys):
    """``vsvf_register(weights=tensor)``, ``register(bundle="vsvf", weights=[...])`` and ``--option weights=[...]``."""
    shape = (16, 14, 12)
    fixed, moving = _blob(shape, (8, 7, 6)), _blob(shape, (9, 7, 6))
    weights = learn_global_weights([(torch.from_numpy(fixed)[None, None], torch.from_numpy(moving)[None, None])],
                                   iterations=3)["weights"]
    fast = dict(levels=[1], iterations=[5])
    out = vsvf_register(torch.from_numpy(fixed)[None, None], torch.from_numpy(moving)[None, None], weights=weights, **fast)
    assert out["ddf"].shape == (1, 3, *shape)

    text = "[" + ", ".join(repr(float(w)) for w in weights) + "]"
    parsed = parse_option_value(text)
    assert isinstance(parsed, list) and math.isclose(sum(parsed), 1.0, abs_tol=1e-9)
    result = md.register(fixed, moving, bundle="vsvf", weights=parsed, **fast)
    assert result.info["method"] == "vsvf"
    with pytest.raises(ValueError, match=r"'weights' must be 4 numbers >= 0 summing to 1"):
        md.register(fixed, moving, bundle="vsvf", weights=[0.5, 0.5], **fast)

    paths = {name: str(save_image(data, np.eye(4), tmp_path / f"{name}.nii.gz")) for name, data in
             (("fixed", fixed), ("moving", moving))}
    argv = ["register", "--fixed", paths["fixed"], "--moving", paths["moving"], "--bundle", "vsvf", "--no-qc",
            "--option", "levels=[1]", "--option", "iterations=[5]"]
    assert main(argv + ["--output-dir", str(tmp_path / "ok"), "--option", f"weights={text}"]) == 0
    assert (tmp_path / "ok" / "ddf.nii.gz").exists()
    capsys.readouterr()
    assert main(argv + ["--output-dir", str(tmp_path / "bad"), "--option", "weights=[0.5, 0.6, 0, 0]"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'weights' must be 4 numbers >= 0 summing to 1" in err[0]


_PAIR = (torch.rand(1, 1, 10, 10), torch.rand(1, 1, 10, 10))


@pytest.mark.parametrize("pairs, options, match", [
    ([], {}, r"'pairs' must be a non-empty sequence of \(fixed, moving\) tensors"),
    ([_PAIR[0]], {}, r"'pairs' must be a non-empty sequence of \(fixed, moving\) tensors, got list of 1 items"),
    ([_PAIR, (torch.rand(1, 1, 12, 10), torch.rand(1, 1, 12, 10))], {}, r"pair 1 must have the shape of pair 0"),
    ([(torch.rand(2, 1, 10, 10), torch.rand(2, 1, 10, 10))], {}, r"pair 0 must hold \(1, C, \*S\) tensors"),
    ([(_PAIR[0], torch.rand(1, 1, 10, 9))], {}, r"'moving' must have the shape of 'fixed'"),
    ([_PAIR], {"sigmas": (2.0, 2.0)}, r"'sigmas' must hold at least two distinct widths"),
    ([_PAIR], {"sigmas": (1.0, 2.0), "initial_weights": (1.0, 0.0)}, r"'initial_weights' must all be > 0"),
    ([_PAIR], {"sigmas": (1.0, 2.0), "initial_weights": (0.5, 0.6)}, r"'initial_weights' must be 2 numbers >= 0 summing to 1"),
    ([_PAIR], {"omt_weight": -1.0}, r"'omt_weight' must be a finite number >= 0"),
    ([_PAIR], {"omt_power": 0.0}, r"'omt_power' must be"),
    ([_PAIR], {"iterations": 2.5}, r"'iterations' must be an integer >= 0"),
    ([_PAIR], {"weights_learning_rate": 0.0}, r"'weights_learning_rate' must be"),
    ([_PAIR], {"level": 0.5}, r"'level' must be a downsampling factor >= 1"),
    ([_PAIR], {"image_loss": "mi"}, r"'image_loss' must be one of"),
    ([_PAIR], {"spacing": (1.0,)}, r"'spacing' must be 2 voxel sizes > 0"),
])
def test_bad_inputs(pairs, options, match):
    with pytest.raises(ValueError, match=r"learn_global_weights(\[pair \d\])?\(\): " + match):
        learn_global_weights(pairs, **options)
