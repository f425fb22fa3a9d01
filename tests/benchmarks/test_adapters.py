"""benchmarks.adapters.PackageMethod calls a package method as register() does: forward field only, RAS inputs."""

from __future__ import annotations

import torch

from benchmarks.adapters import PackageMethod
from monai_diffreg.methods import register_method, unregister_method


class _Shift:
    """A test-only method: a constant shift along the first axis; records whether the inverse was asked for."""

    calls: list[bool] = []

    def __call__(self, fixed: torch.Tensor, moving: torch.Tensor, inverse: bool = True) -> dict[str, torch.Tensor]:
        _Shift.calls.append(inverse)
        ddf = torch.zeros(1, fixed.ndim - 2, *fixed.shape[2:])
        ddf[:, 0] = 1.5
        out = {"ddf": ddf}
        if inverse:
            out["inverse_ddf"] = -ddf
        return out


def test_package_method_asks_for_the_forward_field_only_and_maps_it_back():
    register_method("test_shift_adapter", _Shift, "test-only shift")
    try:
        _Shift.calls.clear()
        adapter = PackageMethod("test_shift_adapter", torch.device("cpu"), 1, {})
        image = torch.rand(1, 1, 6, 5, 4)
        adapter.prepare(image, image, "LAS")  # first axis flipped against RAS
        adapter.register()
        ddf = adapter.result()["ddf"]
    finally:
        unregister_method("test_shift_adapter")
    assert _Shift.calls == [False]
    # +1.5 voxels along R in RAS is -1.5 along the case's first (L) axis
    torch.testing.assert_close(ddf[:, 0], torch.full((1, 6, 5, 4), -1.5))
    torch.testing.assert_close(ddf[:, 1:], torch.zeros(1, 2, 6, 5, 4))
