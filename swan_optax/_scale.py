"""Step size across matrix shapes: how large a unit-RMS update becomes for each shape."""

import math
import typing
from collections.abc import Callable
from typing import Literal

import jax

ScaleRule = Literal["unit_rms", "spectral"]


def shape_scale(rule: ScaleRule, fan_in: int, fan_out: int) -> float:
  r"""The factor that takes a unit-RMS ``(fan_in, fan_out)`` update to ``rule``'s size.

  * ``'unit_rms'``: 1. Every matrix steps with Adam's RMS (the papers'
    setting); a polar factor then has spectral norm ``\sqrt{\max(m, n)}``,
    which grows with width. AdamW-RMS matching (Moonlight, optax muon's
    ``consistent_rms``) has the same shape dependence up to a constant.
  * ``'spectral'``: ``\sqrt{fan_{out} / fan_{in}} / \sqrt{\max(m, n)}``, so a
    polar factor has spectral norm ``\sqrt{fan_{out} / fan_{in}}``, the
    spectral condition of muP (Yang, Simon and Bernstein, arXiv 2310.17813):
    width-independent for square matrices, RMS ``1 / \sqrt{d}``.
  """
  if rule == "unit_rms":
    return 1.0
  return math.sqrt(fan_out / fan_in) / math.sqrt(max(fan_in, fan_out))


def check_scale_rule(rule: str) -> None:
  if rule not in typing.get_args(ScaleRule):
    raise ValueError(f"unknown scale_rule {rule!r}; choose one of {typing.get_args(ScaleRule)}")


def scaled(
  operator: Callable[[jax.Array], jax.Array], rule: ScaleRule
) -> Callable[[jax.Array], jax.Array]:
  """``operator`` on a ``(fan_in, fan_out)`` matrix, times :func:`shape_scale` of its shape."""
  check_scale_rule(rule)
  if rule == "unit_rms":
    return operator
  return lambda x: shape_scale(rule, *x.shape) * operator(x)
