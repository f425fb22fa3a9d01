"""L-BFGS steps on band coefficients: the two-loop recursion against the dense BFGS update, the memory's rules,
convergence on an ill-conditioned quadratic, and the line search's failure modes."""

import torch

from monai_diffreg.lddmm import band_operators, flash_energy
from monai_diffreg.lddmm.fourier import hermitian_part
from monai_diffreg.lddmm.lbfgs import CurvatureMemory, lbfgs_direction, lbfgs_step, real_inner
from monai_diffreg.validation import NonFiniteError


def _random(generator, shape=(1, 2, 5, 5)):
    return torch.complex(torch.randn(*shape, generator=generator, dtype=torch.float64),
                         torch.randn(*shape, generator=generator, dtype=torch.float64))


def _real(x):
    return torch.view_as_real(x).flatten()


def test_two_loop_recursion_is_the_dense_bfgs_inverse_update():
    """``lbfgs_direction`` equals ``-H g`` with ``H`` built densely by the BFGS update
    ``H <- (I - rho s y^T) H (I - rho y s^T) + rho s s^T`` over the pairs, oldest first, from the scaled metric."""
    generator = torch.Generator().manual_seed(0)
    metric = torch.rand(1, 2, 5, 5, generator=generator, dtype=torch.float64) + 0.5
    memory = CurvatureMemory(size=3)
    for _ in range(5):
        s = _random(generator)
        memory.remember(s, s * (1.5 + torch.rand(1, 2, 5, 5, generator=generator, dtype=torch.float64)))
    assert len(memory.steps) == 3  # the last three kept
    gradient = _random(generator)
    n = _real(gradient).numel()
    s, y = _real(memory.steps[-1]), _real(memory.changes[-1])
    metric_real = _real(torch.complex(metric, metric)).clone()  # the metric scales real and imaginary parts alike
    h = torch.diag(metric_real) * (s @ y) / (y @ (metric_real * y))
    for s_c, y_c in zip(memory.steps, memory.changes):
        s, y = _real(s_c), _real(y_c)
        rho = 1 / (y @ s)
        left = torch.eye(n, dtype=torch.float64) - rho * torch.outer(s, y)
        h = left @ h @ left.T + rho * torch.outer(s, s)
    expected = -(h @ _real(gradient))
    assert torch.allclose(_real(lbfgs_direction(gradient, metric, memory)), expected, atol=1e-10)


def test_memory_skips_pairs_of_non_positive_curvature_and_size_zero_keeps_none():
    generator = torch.Generator().manual_seed(1)
    s = _random(generator)
    memory = CurvatureMemory(size=2)
    memory.remember(s, -s)
    assert memory.steps == []
    memory.remember(s, 2 * s)
    assert len(memory.steps) == 1 and real_inner(memory.steps[0], memory.changes[0]) > 0
    empty = CurvatureMemory(size=0)
    empty.remember(s, 2 * s)
    assert empty.steps == [] and torch.equal(lbfgs_direction(s, torch.ones(()), empty), -s)


def _quadratic(curvature, target):
    """``1/2 sum c |v - t|^2`` over Hermitian coefficients, in the form ``lbfgs_step`` evaluates."""
    def evaluate(v):
        v = v.detach().requires_grad_(True)
        return {"velocity": v, "loss": 0.5 * (curvature * (v - target).abs() ** 2).sum()}
    return evaluate


def test_lbfgs_solves_an_ill_conditioned_quadratic_that_steepest_descent_does_not():
    """Curvatures spread over four decades: in 60 steps from the identity metric, L-BFGS with 10 pairs lowers the
    loss by more than 5 decades, steepest descent (no pairs) by less than 3; a metric equal to the inverse curvature
    solves it in one step."""
    generator = torch.Generator().manual_seed(2)
    exponent = 4 * torch.rand(1, 2, 5, 5, generator=generator, dtype=torch.float64)
    curvature = 10 ** (0.5 * (exponent + exponent.flip(-1, -2)))  # even in k, as the band's operators
    target = hermitian_part(_random(generator))
    evaluate = _quadratic(curvature, target)
    start, losses = float(evaluate(torch.zeros_like(target))["loss"].detach()), {}
    for size in (0, 10):
        current, memory = evaluate(torch.zeros_like(target)), CurvatureMemory(size)
        for _ in range(60):
            trial, _ = lbfgs_step(current, evaluate, torch.ones(()), memory)
            if trial is None:
                break
            current = trial
        losses[size] = float(current["loss"].detach()) / start
    assert losses[10] < 1e-5 and losses[0] > 1e-3  # measured 1.4e-6 and 5.5e-3
    exact, step = lbfgs_step(evaluate(torch.zeros_like(target)), evaluate, 1 / curvature, CurvatureMemory())
    assert step == 1.0 and torch.allclose(exact["velocity"].detach(), target, atol=1e-12)


def test_line_search_halves_past_a_diverged_shooting_and_gives_up_at_a_minimum():
    target = hermitian_part(_random(torch.Generator().manual_seed(3)))
    evaluate = _quadratic(torch.ones(()), target)
    tried = []

    def diverging_when_long(v):
        tried.append(v)
        if len(tried) == 1:
            raise NonFiniteError("shooting diverged")
        return evaluate(v)

    trial, step = lbfgs_step(evaluate(torch.zeros_like(target)), diverging_when_long, torch.ones(()), CurvatureMemory())
    assert step == 0.5 and trial is not None and float(trial["loss"].detach()) < float(evaluate(torch.zeros_like(target))["loss"].detach())
    at_minimum = evaluate(target.clone())
    assert lbfgs_step(at_minimum, evaluate, torch.ones(()), CurvatureMemory())[0] is None


def test_steps_on_a_flash_energy_stay_hermitian_and_beat_the_sobolev_metric_alone():
    """On a 2D pair at a small noise level (the regime of the evidence estimate on brains) ten L-BFGS steps lower the
    FLASH energy clearly further than ten steps of the Sobolev metric's steepest descent, and every iterate is a
    real field."""
    n = 24
    x = torch.arange(n, dtype=torch.float32) - n / 2
    radius = torch.sqrt(x[:, None] ** 2 + x[None] ** 2)
    moving = torch.sigmoid(7 - radius)[None, None]
    fixed = torch.sigmoid(6 - torch.sqrt((x[:, None] - 1.5) ** 2 + x[None] ** 2 / 1.3))[None, None]
    ops = band_operators((n, n), 3.0, 7)

    def evaluate(v):
        v = v.detach().requires_grad_(True)
        out = flash_energy(v, fixed, moving, ops, sigma=0.003)
        out["velocity"], out["loss"] = v, out["total"].sum()
        return out

    final = {}
    for size in (0, 10):
        current, memory = evaluate(torch.zeros(1, 2, 7, 7, dtype=torch.complex64)), CurvatureMemory(size)
        for _ in range(10):
            trial, _ = lbfgs_step(current, evaluate, ops.kernel / ops.num_voxels, memory)
            current = current if trial is None else trial
            v = current["velocity"].detach()
            assert torch.allclose(v, hermitian_part(v), atol=1e-6)
        final[size] = float(current["loss"].detach())
    start = float(evaluate(torch.zeros(1, 2, 7, 7, dtype=torch.complex64))["loss"].detach())
    assert final[10] < final[0] < start
    assert final[10] < 0.75 * final[0]  # measured 1711 and 2877 (from 5.8e5)


def test_line_search_stops_below_the_float_resolution_of_the_loss():
    """Near a minimum in float32, where every trial's loss differs from the current one only by rounding, the search
    gives up as soon as the decrease it predicts is below ``8 eps |loss|`` instead of halving down to ``min_step``; a
    predicted decrease above it is searched as before."""
    target = hermitian_part(_random(torch.Generator().manual_seed(4))).to(torch.complex64)
    offset = torch.full((), 1e6)  # a large constant part of the loss, as the image term at a minimum

    def evaluate(v):
        v = v.detach().requires_grad_(True)
        return {"velocity": v, "loss": offset + 0.5 * ((v - target).abs() ** 2).sum()}

    counted = []

    def counting(v):
        counted.append(v)
        return evaluate(v)

    near = evaluate(target + 1e-4 * hermitian_part(_random(torch.Generator().manual_seed(5))).to(torch.complex64))
    assert lbfgs_step(near, counting, torch.ones(()), CurvatureMemory())[0] is None
    assert len(counted) == 0  # predicted 1e-7 x the loss: below its float32 resolution, nothing tried
    counted.clear()
    far = evaluate(target + 1.0)
    trial, step = lbfgs_step(far, counting, torch.ones(()), CurvatureMemory())
    assert trial is not None and step == 1.0 and len(counted) == 1
