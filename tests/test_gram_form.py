"""Polar Express on the short-side Gram: the same polynomial as the direct form, counted exactly."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from swan_optax import _whiten
from train.bench import gram_form

exact = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("shape", [(24, 64), (64, 24), (32, 32)])
@pytest.mark.parametrize("restart", gram_form.RESTARTS)
def test_the_gram_form_is_the_direct_polynomial_in_exact_arithmetic(shape, restart):
  x = jax.random.normal(jax.random.key(0), shape, jnp.float32)
  x64 = np.asarray(x, np.float64)
  with jax.enable_x64():
    direct = _whiten.polar_factor(jnp.asarray(x64), "polar_express", 8, 0.5, 1e-8, exact)
    gram = gram_form.gram_polar_express(jnp.asarray(x64), exact, exact, restart)
  np.testing.assert_allclose(gram, direct, atol=1e-9)


def test_matmul_flops_counts_every_product_once_per_loop_trip():
  m, n = 16, 40
  x = jax.ShapeDtypeStruct((m, n), jnp.float32)
  step = 2 * m * m * n + 2 * m**3 + 2 * m * m * n  # A = X X^T, A^2, (b A + c A^2) X
  for steps in (1, 8):
    fn = lambda x, steps=steps: _whiten.polar_factor(x, "polar_express", steps, 0.5, 1e-8, exact)
    assert gram_form.matmul_flops(fn, x) == steps * step
  y = jax.ShapeDtypeStruct((m, m), jnp.float32)
  cond = lambda y: jax.lax.cond(y[0, 0] > 0, lambda: y @ y @ y, lambda: y @ y)
  assert gram_form.matmul_flops(cond, y) == 2 * 2 * m**3  # the costlier branch
  loop = lambda y: jax.lax.while_loop(lambda c: c[0, 0] < 1, lambda c: c @ c, y)
  with pytest.raises(ValueError, match="trip count"):
    gram_form.matmul_flops(loop, y)
