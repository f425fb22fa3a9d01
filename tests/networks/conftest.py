"""Shared helpers of the network tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def fit_blob_translation():
    """``fit(model, loss_fn, size, fixed_centre, moving_centre, width, steps)`` -> ``(fixed, moving, first)``.

    Two 2D Gaussian blobs ``(1, 1, size, size)`` (``exp(-r^2 / width)``) centred at ``fixed_centre`` and
    ``moving_centre`` (so ``moving(x + moving_centre - fixed_centre) == fixed(x)``); ``steps`` Adam steps
    (learning rate 3e-3) of ``model`` on ``loss_fn(model(moving, fixed))["loss"]``; ``first`` is the
    ``"similarity"`` term before the first step.
    """

    def fit(model, loss_fn, size, fixed_centre, moving_centre, width, steps):
        yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")

        def blob(centre):
            return torch.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / width).view(1, 1, size, size)

        fixed, moving = blob(fixed_centre), blob(moving_centre)
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        first = None
        for _ in range(steps):
            optimizer.zero_grad()
            terms = loss_fn(model(moving, fixed))
            terms["loss"].backward()
            optimizer.step()
            first = float(terms["similarity"].detach()) if first is None else first
        return fixed, moving, first

    return fit
