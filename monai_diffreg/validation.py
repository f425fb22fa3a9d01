"""Input checks shared by every public entry point.

Errors name the callable, the argument, what was expected and what was received
(DESIGN.md 3.7), e.g. ``"warp(): 'ddf' must have shape (2, 3, 8, 8, 8), got (2, 2, 8, 8, 8)"``.
Shape checks are cheap and run everywhere; value checks (NaN/Inf, constant images) read
every element and run only where user data enters (API, transforms, losses on request).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "NonFiniteError",
    "check_spatial_tensor",
    "check_field",
    "check_finite",
    "check_not_constant",
    "check_choice",
    "check_positive",
]


class NonFiniteError(FloatingPointError, ValueError):
    """NaN or Inf where a computation needs finite values (e.g. a diverged optimisation's field): a numerical
    failure, and a ValueError so that the CLI and the bundles report it in one line like any bad value."""


def _shape(x: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in x.shape)


def check_spatial_tensor(
    x: object,
    name: str,
    caller: str,
    *,
    spatial_dims: int | Sequence[int] | None = None,
    channels: int | None = None,
) -> int:
    """Check that ``x`` is a batched image tensor ``(B, C, *spatial)`` with 2 or 3 spatial axes.

    Args:
        x: the value to check.
        name: the argument's name, for the message.
        caller: the public callable's name, for the message (e.g. ``"warp"``).
        spatial_dims: required number of spatial axes (or allowed numbers); default 2 or 3.
        channels: required channel count, if any.

    Returns:
        the number of spatial axes.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{caller}(): '{name}' must be a torch.Tensor, got {type(x).__name__}")
    allowed = (2, 3) if spatial_dims is None else (spatial_dims,) if isinstance(spatial_dims, int) else tuple(spatial_dims)
    ndim = x.ndim - 2
    if ndim not in allowed:
        expected = " or ".join(f"{d + 2}D (B, C, {', '.join('*' * d)})" for d in allowed)
        raise ValueError(f"{caller}(): '{name}' must be {expected}, got shape {_shape(x)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{caller}(): '{name}' must have {channels} channel(s) on axis 1, got shape {_shape(x)}")
    if any(s == 0 for s in x.shape):
        raise ValueError(f"{caller}(): '{name}' is empty, got shape {_shape(x)}")
    return ndim


def check_field(field: object, name: str, caller: str, *, like: torch.Tensor | None = None) -> int:
    """Check that ``field`` is a displacement/velocity field ``(B, D, *spatial)`` with D = len(spatial).

    Args:
        field: the value to check.
        name: the argument's name.
        caller: the public callable's name.
        like: an image ``(B, C, *spatial)`` whose batch size and spatial shape the field must match.

    Returns:
        the number of spatial axes D.
    """
    ndim = check_spatial_tensor(field, name, caller)
    if field.shape[1] != ndim:  # type: ignore[union-attr]
        raise ValueError(
            f"{caller}(): '{name}' must have {ndim} channels (one per spatial axis) for a {ndim}D field, "
            f"got shape {_shape(field)}"  # type: ignore[arg-type]
        )
    if like is not None:
        expected = (like.shape[0], ndim, *like.shape[2:])
        if like.ndim != field.ndim or tuple(field.shape) != tuple(expected):  # type: ignore[union-attr]
            raise ValueError(
                f"{caller}(): '{name}' must have shape {tuple(int(s) for s in expected)} to match the image, "
                f"got {_shape(field)}"  # type: ignore[arg-type]
            )
    return ndim


def all_finite(x: torch.Tensor) -> bool:
    """Whether ``x`` holds no NaN or Inf, in one min/max pass (NaN and Inf reach the extremes)."""
    if x.numel() == 0 or not x.is_floating_point():
        return True
    low, high = torch.aminmax(x.as_subclass(torch.Tensor))  # a plain view: no MetaTensor bookkeeping
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def check_finite(x: torch.Tensor, name: str, caller: str) -> None:
    """Raise if ``x`` holds NaN or Inf (:func:`all_finite`)."""
    if not all_finite(x):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{caller}(): '{name}' contains {n_bad} NaN/Inf value(s) out of {x.numel()}")


def check_not_constant(x: torch.Tensor, name: str, caller: str) -> None:
    """Raise if ``x`` is constant (an empty or blank image cannot be registered)."""
    if x.numel() == 0 or bool(torch.eq(*torch.aminmax(x.as_subclass(torch.Tensor)))):
        value = float(x.flatten()[0]) if x.numel() else "n/a"
        raise ValueError(f"{caller}(): '{name}' is constant (every voxel = {value}); nothing to register")


def check_choice(value: object, name: str, caller: str, choices: Sequence[str]) -> str:
    """Validate a string option against its allowed values and return it."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{caller}(): '{name}' must be one of {list(choices)}, got {value!r}")
    return value


def check_positive(value: float, name: str, caller: str, *, allow_zero: bool = False) -> float:
    """Validate a positive (or non-negative) finite number and return it as float."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf")
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{caller}(): '{name}' must be a finite number {bound}, got {value!r}")
    return float(value)


def check_flag(value: object, name: str, caller: str) -> bool:
    """Validate a boolean option (True or False, not a truthy stand-in) and return it."""
    if not isinstance(value, bool):
        raise ValueError(f"{caller}(): '{name}' must be True or False, got {value!r}")
    return value


def check_integer(value: object, name: str, caller: str, minimum: int = 0) -> int:
    """Validate an integer ``>= minimum`` (bools refused) and return it."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{caller}(): '{name}' must be an integer >= {minimum}, got {value!r}")
    return value
