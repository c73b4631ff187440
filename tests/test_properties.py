"""Property-based tests: random shapes, dtypes, scales and sparsity never break the operators."""

import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import swan_optax

# The smallest and largest scales each dtype can hold with room for a Gaussian's tail.
SCALE_EXPONENTS = {"float32": (-30, 30), "bfloat16": (-30, 30), "float16": (-3, 3)}


@st.composite
def gradients(draw):
  """A (fan_in, fan_out) gradient: any shape down to 1-wide, dtype, scale, sparsity."""
  fan_in = draw(st.integers(1, 24))
  fan_out = draw(st.integers(1, 24))
  dtype = draw(st.sampled_from(sorted(SCALE_EXPONENTS)))
  low, high = SCALE_EXPONENTS[dtype]
  scale = 10.0 ** draw(st.integers(low, high))
  density = draw(st.sampled_from([0.0, 0.1, 1.0]))
  rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
  x = rng.standard_normal((fan_in, fan_out)) * (rng.random((fan_in, fan_out)) < density)
  return jnp.asarray(x * scale, dtype)


def _apply(tx: optax.GradientTransformation, g: jnp.ndarray) -> np.ndarray:
  state = tx.init(g)
  updates, new_state = tx.update(g, state)
  assert state == new_state == optax.EmptyState()
  assert updates.shape == g.shape and updates.dtype == g.dtype
  out = np.asarray(updates, np.float64)
  assert np.isfinite(out).all()
  return out


def _rms(x: np.ndarray) -> float:
  return float(np.sqrt(np.mean(np.square(x))))


def _tolerance(dtype) -> float:
  return {"float32": 1e-4, "bfloat16": 2e-2, "float16": 2e-3}[jnp.dtype(dtype).name]


PROPERTY_SETTINGS = settings(max_examples=40, deadline=None)


@PROPERTY_SETTINGS
@given(gradients())
def test_gradnorm_properties(g):
  out = _apply(swan_optax.gradnorm(), g)
  axis = 0 if g.shape[0] >= g.shape[1] else 1
  x = np.asarray(g, np.float64)
  varying = x.std(axis) > 0
  tol = _tolerance(g.dtype)
  # Every unit that varies is standardized; a constant unit (incl. all-zero) maps to 0.
  assert np.abs(out.mean(axis)[varying]).max(initial=0) < tol
  assert np.abs(out.std(axis)[varying] - 1).max(initial=0) < 10 * tol
  assert np.abs(np.take(out, np.flatnonzero(~varying), axis=1 - axis)).max(initial=0) == 0


@PROPERTY_SETTINGS
@given(gradients(), st.sampled_from(["newton_schulz", "polar_express", "eigh"]))
def test_whiten_properties(g, method):
  out = _apply(swan_optax.whiten(method=method), g)
  x = np.asarray(g, np.float64)
  if not x.any():
    assert not out.any()
    return
  assert abs(_rms(out) - 1) < 10 * _tolerance(g.dtype)
  s = np.linalg.svd(x, compute_uv=False)
  if method == "eigh" and s[-1] > 1e-2 * s[0] and g.dtype == jnp.float32:
    # Full rank: the update is a multiple of an orthogonal map on the short side.
    short = out @ out.T if out.shape[0] <= out.shape[1] else out.T @ out
    expected = np.eye(len(short)) * out.size / len(short)
    np.testing.assert_allclose(short, expected, atol=1e-3 * out.size / len(short))


@PROPERTY_SETTINGS
@given(gradients())
def test_sinkhorn_properties(g):
  out = _apply(swan_optax.sinkhorn(scale_rule="unit_rms"), g)
  x = np.asarray(g, np.float64)
  nonzero_rows = np.abs(x).sum(axis=1) > 0
  row_norms = np.linalg.norm(out, axis=1)
  # After any round, every nonzero input unit has norm sqrt(fan_out); zero rows stay zero.
  np.testing.assert_allclose(
    row_norms[nonzero_rows], np.sqrt(g.shape[1]), rtol=10 * _tolerance(g.dtype)
  )
  assert not row_norms[~nonzero_rows].any()
