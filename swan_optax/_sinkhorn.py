"""SR-Sinkhorn: alternating output-unit / input-unit normalization (SinkGD Algorithm 3)."""

import jax
import jax.numpy as jnp
import optax

from swan_optax import _matrix
from swan_optax import _scale
from swan_optax import _transform


def _rescaled(scale: jax.Array, norm_without_scale: jax.Array, target, eps) -> jax.Array:
  """``target * scale / max(scale * norm, eps)``; 0 where the unit is all zeros."""
  new_scale = target * scale / jnp.maximum(scale * norm_without_scale, eps)
  return jnp.where(norm_without_scale > 0, new_scale, 0.0)


def sr_sinkhorn(
  x: jax.Array, num_iters: jax.typing.ArrayLike = 5, eps: jax.typing.ArrayLike = 1e-8
) -> jax.Array:
  r"""SR-Sinkhorn on one ``(fan_in, fan_out)`` matrix.

  Repeats ``num_iters`` times, output units first:

  .. math::
    X_{:,j} \leftarrow \sqrt{fan_{in}} X_{:,j} / \max(\|X_{:,j}\|_2, \epsilon), \quad
    X_{i,:} \leftarrow \sqrt{fan_{out}} X_{i,:} / \max(\|X_{i,:}\|_2, \epsilon).

  Every step only rescales rows or columns, so ``X = diag(r) X_0 diag(c)``
  throughout and the norms follow from matrix-vector products with
  ``S = X_0 \odot X_0``: the loop touches ``S`` once per half-step and never
  materializes an intermediate ``X`` (Sinkhorn-Knopp on ``S``).
  """
  fan_in, fan_out = x.shape
  squares = jnp.square(x)

  def body(_, scales):
    r, c = scales
    c = _rescaled(c, jnp.sqrt(jnp.square(r) @ squares), jnp.sqrt(fan_in), eps)
    r = _rescaled(r, jnp.sqrt(squares @ jnp.square(c)), jnp.sqrt(fan_out), eps)
    return r, c

  ones = (jnp.ones(fan_in, x.dtype), jnp.ones(fan_out, x.dtype))
  r, c = jax.lax.fori_loop(0, num_iters, body, ones)
  return r[:, None] * x * c[None, :]


def sinkhorn(
  *,
  num_iters: jax.typing.ArrayLike = 5,
  eps: jax.typing.ArrayLike = 1e-8,
  dimension_numbers: _matrix.DimensionNumbersSpec = None,
  scale_rule: _scale.ScaleRule = "spectral",
) -> optax.GradientTransformation:
  r"""SR-Sinkhorn normalization of every gradient matrix (SinkGD).

  After any ``num_iters >= 1`` every input-unit norm is ``\sqrt{fan_{out}}``, so
  the update has unit RMS; as ``num_iters`` grows the output-unit norms tend to
  ``\sqrt{fan_{in}}`` (the Sinkhorn-Knopp fixed point of ``X \odot X``, signs
  kept). Zero rows and columns stay zero. Computed in float32 and cast back to
  the gradient's dtype. Stateless; O(num_iters * fan_in * fan_out) work, no
  matmul. On a mesh it needs no layout change: each half-step reduces over one
  axis, so in the gradients' own layout the partitioner all-reduces one vector
  of norms per matrix (``fan_in`` or ``fan_out`` floats) and moves no matrix.

  Args:
    num_iters: number of (output-unit, input-unit) normalization rounds ``L``.
    eps: lower clamp of every norm, ``max(norm, eps)``.
    dimension_numbers: how each leaf is viewed as a batch of matrices (see
      :func:`gradnorm`).
    scale_rule: the update's size per matrix shape
      (:func:`swan_optax.inspect.shape_scale`): ``'spectral'`` (as
      :func:`sinkgd`: the factor that gives a polar factor of the same shape
      spectral norm ``sqrt(fan_out / fan_in)``) or ``'unit_rms'`` (the paper's).

  Returns:
    A stateless ``optax.GradientTransformation``.

  References:
    Scetbon et al., `Gradient Multi-Normalization for Efficient LLM Training
    <https://arxiv.org/abs/2502.06742>`_, 2025 (Algorithm 3).
  """
  operator = _scale.scaled(lambda x: sr_sinkhorn(x, num_iters, eps), scale_rule)
  return _transform.stateless_matrix_transform(operator, dimension_numbers, name="sinkhorn")
