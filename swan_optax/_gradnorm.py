"""GradNorm: per-unit standardization of each gradient matrix (SWAN Algorithm 3)."""

import jax
import jax.numpy as jnp
import optax

from swan_optax import _matrix
from swan_optax import _transform


def standardize(x: jax.Array, eps: jax.typing.ArrayLike = 1e-8) -> jax.Array:
  r"""Standardizes one ``(fan_in, fan_out)`` matrix along its longer side.

  With ``a = 0`` if ``fan_in >= fan_out`` else ``1`` (the paper's ``m <= n``
  orientation):

  .. math::
    \tilde X = (X - \mathrm{mean}_a X) / \max(\mathrm{std}_a X, \epsilon)

  with the population standard deviation. Reducing along the longer side keeps
  the short-side Gram matrix used by whitening full rank.
  """
  axis = 0 if x.shape[0] >= x.shape[1] else 1
  # Shifting by the first entry first makes a constant unit exactly zero (a
  # rounded mean would leave noise above eps) and steadies the variance.
  shifted = x - jax.lax.index_in_dim(x, 0, axis)
  centered = shifted - jnp.mean(shifted, axis=axis, keepdims=True)
  std = jnp.sqrt(jnp.mean(jnp.square(centered), axis=axis, keepdims=True))
  return centered / jnp.maximum(std, eps)


def gradnorm(
  *,
  eps: jax.typing.ArrayLike = 1e-8,
  dimension_numbers: _matrix.DimensionNumbersSpec = None,
) -> optax.GradientTransformation:
  r"""GradNorm: standardize every gradient matrix along its longer side.

  Each unit (an output unit when ``fan_in >= fan_out``, else an input unit) is
  shifted to mean 0 and scaled to unit population std, so the update has
  ``\|\tilde X\|_F = \sqrt{fan_{in} fan_{out}}`` (unit RMS). A constant unit maps
  to zeros; a zero gradient gives a zero update. Computed in float32 and cast
  back to the gradient's dtype. Stateless.

  Args:
    eps: lower clamp of the standard deviation, ``max(std, eps)``.
    dimension_numbers: how each leaf is viewed as a batch of matrices: ``None``
      (every leaf is a 2-D ``(fan_in, fan_out)`` kernel), one
      :class:`MatrixDimensionNumbers`, a tree of them, or a callable returning a
      tree from the updates.

  Returns:
    A stateless ``optax.GradientTransformation``.

  References:
    Ma et al., `SWAN: SGD with Normalization and Whitening Enables Stateless LLM
    Training <https://arxiv.org/abs/2412.13148>`_, 2024 (Algorithm 3).
  """
  return _transform.stateless_matrix_transform(
    lambda x: standardize(x, eps), dimension_numbers, name="gradnorm"
  )
