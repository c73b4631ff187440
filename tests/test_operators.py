"""The three operators against exact float64 numpy math (docs/algorithms.md section 8)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import swan_optax
from swan_optax import MatrixDimensionNumbers

SHAPES = [(64, 256), (256, 64), (128, 128), (1, 17), (17, 1)]


def _apply(tx: optax.GradientTransformation, x) -> np.ndarray:
  updates, _ = tx.update(jnp.asarray(x), tx.init(x))
  return np.asarray(updates, np.float64)


def _gaussian(shape, seed=0, dtype=np.float32):
  return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _scaled_gaussian(shape, seed=0):
  """Gaussian with row and column scales of e^{+-3}: a hard Sinkhorn input."""
  rng = np.random.default_rng(seed)
  rows = np.exp(rng.uniform(-3, 3, (shape[0], 1)))
  cols = np.exp(rng.uniform(-3, 3, (1, shape[1])))
  return (rows * rng.standard_normal(shape) * cols).astype(np.float32)


def _numpy_gradnorm(x, eps=1e-8):
  x = np.asarray(x, np.float64)
  a = 0 if x.shape[0] >= x.shape[1] else 1
  return (x - x.mean(a, keepdims=True)) / np.maximum(x.std(a, keepdims=True), eps)


def _pseudo_polar(x, rtol=1e-6):
  """Rescaled pseudo-polar factor U_r V_r^T from a float64 SVD."""
  u, s, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
  d = (u * (s > rtol * s[0])) @ vt
  return np.sqrt(x.size) * d / np.linalg.norm(d)


def _cosine(a, b):
  return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


# SR-Sinkhorn's own normalization, without the spectral rule's shape factor (sinkhorn's default).
_unit_sinkhorn = functools.partial(swan_optax.sinkhorn, scale_rule="unit_rms")


def _numpy_sinkhorn(x, num_iters, eps=1e-8):
  x = np.asarray(x, np.float64)
  fan_in, fan_out = x.shape
  for _ in range(num_iters):
    x = np.sqrt(fan_in) * x / np.maximum(np.linalg.norm(x, axis=0, keepdims=True), eps)
    x = np.sqrt(fan_out) * x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)
  return x


def _sinkhorn_residuals(x):
  fan_in, fan_out = x.shape
  r_out = np.abs(np.linalg.norm(x, axis=0) / np.sqrt(fan_in) - 1).max()
  r_in = np.abs(np.linalg.norm(x, axis=1) / np.sqrt(fan_out) - 1).max()
  return r_out, r_in


# GradNorm


@pytest.mark.parametrize("shape", SHAPES)
def test_gradnorm_matches_numpy(shape):
  x = _gaussian(shape) * 3.0 + 1.5
  got = _apply(swan_optax.gradnorm(), x)
  np.testing.assert_allclose(got, _numpy_gradnorm(x), atol=1e-5)


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (128, 128)])
def test_gradnorm_standardizes_units_along_longer_side(shape):
  got = _apply(swan_optax.gradnorm(), _gaussian(shape) * 5 - 2)
  axis = 0 if shape[0] >= shape[1] else 1
  assert np.abs(got.mean(axis)).max() < 1e-5
  assert np.abs(got.std(axis) - 1).max() < 1e-4
  np.testing.assert_allclose(np.linalg.norm(got), np.sqrt(got.size), rtol=1e-5)


def test_gradnorm_constant_unit_is_zero_and_units_are_shift_scale_invariant():
  x = _gaussian((64, 16))
  x[:, 3] = 7.0
  y = x.copy()
  y[:, 5] = 4.0 * y[:, 5] - 9.0
  out_x, out_y = _apply(swan_optax.gradnorm(), x), _apply(swan_optax.gradnorm(), y)
  np.testing.assert_array_equal(out_x[:, 3], 0.0)
  np.testing.assert_allclose(out_x, out_y, atol=1e-5)


# Whitening


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (512, 1376), (1376, 512)])
@pytest.mark.parametrize("method", ["newton_schulz", "polar_express", "svd", "eigh"])
def test_whiten_matches_polar_factor_on_rectangular(shape, method):
  x = _numpy_gradnorm(_gaussian(shape)).astype(np.float32)
  # Exactness in float32 matmuls; the default precisions are held to it in test_precision.py.
  got = _apply(swan_optax.whiten(method=method, precision=jax.lax.Precision.HIGHEST), x)
  ref = _pseudo_polar(x)
  assert _cosine(got, ref) >= 0.9999
  # Every nonzero singular value equals sqrt(fan_in * fan_out / r).
  s = np.linalg.svd(got, compute_uv=False)
  np.testing.assert_allclose(s, np.sqrt(x.size / min(shape)), rtol=1e-2)


@pytest.mark.parametrize("method", ["svd", "eigh"])
def test_exact_methods_match_reference_within_1e_4(method):
  x = _gaussian((96, 160))
  np.testing.assert_allclose(
    _apply(swan_optax.whiten(method=method), x), _pseudo_polar(x), atol=1e-4
  )


@pytest.mark.parametrize(
  ("ns_steps", "precision", "min_cosine"),
  [(10, None, 0.98), (20, jax.lax.Precision.HIGHEST, 0.9999)],
)
def test_newton_schulz_on_square_gradnormed_input(ns_steps, precision, min_cosine):
  # Square: GradNorm's centering leaves one null direction; the target is the
  # pseudo-polar factor and K = 10 is within ~1% (docs/algorithms.md section 3.2).
  x = _numpy_gradnorm(_gaussian((128, 128))).astype(np.float32)
  tx = swan_optax.whiten(method="newton_schulz", ns_steps=ns_steps, precision=precision)
  assert _cosine(_apply(tx, x), _pseudo_polar(x)) >= min_cosine


def test_quintic_is_approximate_as_documented():
  x = _gaussian((64, 256))
  cosine = _cosine(_apply(swan_optax.whiten(method="quintic"), x), _pseudo_polar(x))
  assert 0.97 < cosine < 0.999


@pytest.mark.parametrize("method", ["polar_express", "newton_schulz"])
def test_whiten_identities(method):
  x = _gaussian((48, 80))
  tx = swan_optax.whiten(method=method, precision=jax.lax.Precision.HIGHEST)
  base = _apply(tx, x)
  np.testing.assert_allclose(_apply(tx, x.T), base.T, atol=1e-4)
  np.testing.assert_allclose(_apply(tx, 123.0 * x), base, atol=1e-4)
  rng = np.random.default_rng(1)
  p, _ = np.linalg.qr(rng.standard_normal((48, 48)))
  q, _ = np.linalg.qr(rng.standard_normal((80, 80)))
  rotated = _apply(tx, (p @ x @ q).astype(np.float32))
  np.testing.assert_allclose(rotated, p @ base @ q, atol=2e-4)


@pytest.mark.parametrize("method", ["newton_schulz", "polar_express", "quintic", "svd", "eigh"])
def test_whiten_zero_and_rank_deficient_inputs(method):
  tx = swan_optax.whiten(method=method)
  zero = _apply(tx, np.zeros((8, 12), np.float32))
  np.testing.assert_array_equal(zero, 0.0)
  # Rank 2 matrix: finite, unit RMS, and (for the exact methods) rank 2.
  rng = np.random.default_rng(0)
  low_rank = (rng.standard_normal((32, 2)) @ rng.standard_normal((2, 48))).astype(np.float32)
  got = _apply(tx, low_rank)
  assert np.isfinite(got).all()
  np.testing.assert_allclose(np.sqrt(np.mean(got**2)), 1.0, rtol=1e-4)
  if method in ("svd", "eigh", "newton_schulz", "polar_express"):
    assert _cosine(got, _pseudo_polar(low_rank)) >= 0.999


def test_whiten_rejects_unknown_method():
  with pytest.raises(ValueError, match="unknown whitening method 'nsds'"):
    swan_optax.whiten(method="nsds")


# Scale rules


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (128, 128)])
def test_spectral_rule_whitens_to_spectral_norm_sqrt_fan_out_over_fan_in(shape):
  x = _gaussian(shape)
  got = _apply(swan_optax.whiten(method="svd", scale_rule="spectral"), x)
  fan_in, fan_out = shape
  u, _, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
  np.testing.assert_allclose(got, np.sqrt(fan_out / fan_in) * (u @ vt), atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(got, 2), np.sqrt(fan_out / fan_in), rtol=1e-5)


@pytest.mark.parametrize("name", ["whiten", "sinkhorn"])
@pytest.mark.parametrize(
  ("shape", "dims", "fan_in", "fan_out"),
  [
    ((64, 256), MatrixDimensionNumbers(0, 1), 64, 256),
    ((3, 96, 32), MatrixDimensionNumbers(1, 2), 96, 32),
    ((32, 4, 8), MatrixDimensionNumbers(0, (1, 2)), 32, 32),
  ],
)
def test_spectral_rule_is_unit_rms_times_the_shape_factor(name, shape, dims, fan_in, fan_out):
  x = _gaussian(shape)
  unit = _apply(OPERATORS[name](dimension_numbers=dims), x)
  spectral = _apply(OPERATORS[name](dimension_numbers=dims, scale_rule="spectral"), x)
  factor = np.sqrt(fan_out / fan_in) / np.sqrt(max(fan_in, fan_out))
  assert swan_optax.inspect.shape_scale("spectral", fan_in, fan_out) == pytest.approx(factor)
  assert swan_optax.inspect.shape_scale("unit_rms", fan_in, fan_out) == 1.0
  np.testing.assert_allclose(spectral, factor * unit, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["whiten", "sinkhorn"])
def test_unknown_scale_rule_raises(name):
  with pytest.raises(ValueError, match=r"unknown scale_rule 'mup'; choose one of \('unit_rms'"):
    OPERATORS[name](scale_rule="mup")


# SR-Sinkhorn


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (512, 1376)])
def test_sinkhorn_fixed_point(shape):
  x = _scaled_gaussian(shape)
  for num_iters, max_r_out in [(1, None), (5, 1e-3), (50, 1e-5)]:
    got = _apply(_unit_sinkhorn(num_iters=num_iters), x)
    r_out, r_in = _sinkhorn_residuals(got)
    assert r_in < 1e-5
    np.testing.assert_allclose(np.sqrt(np.mean(got**2)), 1.0, rtol=1e-5)
    if max_r_out is not None:
      assert r_out < max_r_out, (num_iters, r_out)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("num_iters", [1, 2, 5])
def test_sinkhorn_matches_numpy_loop(shape, num_iters):
  x = _scaled_gaussian(shape)
  got = _apply(_unit_sinkhorn(num_iters=num_iters), x)
  np.testing.assert_allclose(got, _numpy_sinkhorn(x, num_iters), rtol=1e-4, atol=1e-5)


def test_sinkhorn_limit_is_invariant_to_diagonal_rescaling():
  x = _gaussian((64, 96))
  rng = np.random.default_rng(3)
  d1, d2 = np.exp(rng.uniform(-2, 2, (64, 1))), np.exp(rng.uniform(-2, 2, (1, 96)))
  tx = _unit_sinkhorn(num_iters=50)
  np.testing.assert_allclose(_apply(tx, (d1 * x * d2).astype(np.float32)), _apply(tx, x), atol=1e-4)


def test_sinkhorn_keeps_zero_rows_and_columns_zero():
  x = _gaussian((16, 24))
  x[3, :] = 0.0
  x[:, 7] = 0.0
  got = _apply(_unit_sinkhorn(num_iters=20), x)
  assert np.isfinite(got).all()
  np.testing.assert_array_equal(got[3], 0.0)
  np.testing.assert_array_equal(got[:, 7], 0.0)


# Shared: dtypes, batched leaves, scale range.

# whiten in float32: bf16 matmul inputs (the default's) round the normalized input differently
# at each scale; their accuracy is held to the polar factor in test_precision.py.
OPERATORS = {
  "gradnorm": swan_optax.gradnorm,
  "whiten": functools.partial(swan_optax.whiten, precision=jax.lax.Precision.HIGHEST),
  "sinkhorn": _unit_sinkhorn,
}


@pytest.mark.parametrize("name", OPERATORS)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_input_matches_float32_path(name, dtype):
  x = jnp.asarray(_numpy_gradnorm(_gaussian((64, 160))), dtype)
  tx = OPERATORS[name]()
  low, _ = tx.update(x, tx.init(x))
  full, _ = tx.update(x.astype(jnp.float32), tx.init(x))
  assert low.dtype == dtype
  # Same computation in float32; only the final cast differs.
  chex.assert_trees_all_close(low.astype(jnp.float32), full.astype(dtype).astype(jnp.float32))


@pytest.mark.parametrize("name", OPERATORS)
@pytest.mark.parametrize(
  ("shape", "dims", "as_matrices"),
  [
    ((3, 64, 96), MatrixDimensionNumbers(1, 2), lambda x: list(x)),
    ((32, 4, 8), MatrixDimensionNumbers(0, (1, 2)), lambda x: [x.reshape(32, 32)]),
    ((4, 8, 32), MatrixDimensionNumbers((0, 1), 2), lambda x: [x.reshape(32, 32)]),
    ((96, 3, 64), MatrixDimensionNumbers(-1, 0), lambda x: [m.T for m in x.transpose(1, 0, 2)]),
  ],
)
def test_batched_leaf_matches_separate_matrices(name, shape, dims, as_matrices):
  x = _gaussian(shape)
  tx_batched, tx_single = OPERATORS[name](dimension_numbers=dims), OPERATORS[name]()
  got = _apply(tx_batched, x)
  for got_m, x_m in zip(as_matrices(got), as_matrices(x), strict=True):
    np.testing.assert_allclose(got_m, _apply(tx_single, np.ascontiguousarray(x_m)), atol=1e-5)


@pytest.mark.parametrize("name", OPERATORS)
@pytest.mark.parametrize("scale", [1e-30, 1e-10, 1.0, 1e10, 1e30])
def test_output_is_scale_invariant_and_finite(name, scale):
  x = _numpy_gradnorm(_gaussian((32, 48))).astype(np.float32)
  tx = OPERATORS[name]()
  got = _apply(tx, (x * scale).astype(np.float32))
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got, _apply(tx, x), atol=1e-4)


@pytest.mark.parametrize("name", OPERATORS)
def test_zero_gradient_gives_zero_update(name):
  tx = OPERATORS[name](dimension_numbers=MatrixDimensionNumbers(1, 2))
  np.testing.assert_array_equal(_apply(tx, np.zeros((3, 16, 8), np.float32)), 0.0)


@pytest.mark.parametrize("name", OPERATORS)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_gradient_stays_non_finite_and_local(name, bad):
  """A NaN/Inf is never turned into a finite update; other matrices are unaffected."""
  x = _gaussian((2, 16, 8))
  x[0, 4, 5] = bad
  tx = OPERATORS[name](dimension_numbers=MatrixDimensionNumbers(1, 2))
  got = _apply(tx, x)
  assert not np.isfinite(got[0]).all()
  # A batch of two and one matrix alone may block their matmuls differently: float32 rounding.
  np.testing.assert_allclose(got[1], _apply(OPERATORS[name](), x[1]), atol=1e-5)
