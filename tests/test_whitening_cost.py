"""The whitening frontier: computed Polar Express schedules, the Gram form, exact FLOPs."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import swan_optax
from swan_optax import MatrixDimensionNumbers
from swan_optax import _polar_express
from swan_optax import _whiten
from train.bench import hlo
from train.bench import whitening_cost

exact = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
# Amsel et al. 2025 (arXiv 2505.16932), the published degree-5 coefficients, before safety.
PUBLISHED = (
  (8.28721201814563, -23.595886519098837, 17.300387312530933),
  (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
  (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
  (3.3184196573706015, -2.488488024314874, 0.51004894012372),
  (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
)


def test_the_computed_schedule_is_the_papers_and_its_last_step_is_not_damped():
  s = 1.01
  expected = [(a / s, b / s**3, c / s**5) for a, b, c in PUBLISHED[:4]] + [PUBLISHED[4]]
  np.testing.assert_allclose(_polar_express.polar_express_coefficients(5), expected, rtol=1e-12)
  eight = _polar_express.polar_express_coefficients(8)
  np.testing.assert_allclose(eight[:4], expected[:4], rtol=1e-12)
  assert eight[4] != expected[4]  # damped: not the last step of 8


def _worst_error(coeffs, sigma):
  for a, b, c in coeffs:
    sigma = a * sigma + b * sigma**3 + c * sigma**5
  return np.max(np.abs(sigma - 1))


def test_more_steps_bring_every_singular_value_in_range_closer_to_one():
  sigma = np.geomspace(_polar_express.POLAR_EXPRESS_LOWER, 1.0, 2001) / 1.01
  errors = [_worst_error(_polar_express.polar_express_coefficients(n), sigma) for n in range(1, 9)]
  assert all(e1 > e2 for e1, e2 in zip(errors, errors[1:], strict=False))
  assert errors[-1] < 1e-2
  assert errors[4] < _worst_error([(3.4445, -4.7750, 2.0315)] * 5, sigma * 1.01)  # Muon's


@pytest.mark.parametrize("shape", [(24, 64), (64, 24), (32, 32)])
@pytest.mark.parametrize(("steps", "restarts"), [(4, ()), (5, (2,)), (8, (1, 5))])
def test_the_gram_form_is_the_direct_polynomial_in_exact_arithmetic(shape, steps, restarts):
  x = np.asarray(jax.random.normal(jax.random.key(0), shape, jnp.float32), np.float64)
  coeffs = _polar_express.polar_express_coefficients(steps)
  with jax.enable_x64():
    direct = _whiten.polar_factor(jnp.asarray(x), "polar_express", steps, 0.5, 1e-8, exact)
    gram = _polar_express.gram_odd_polynomial(jnp.asarray(x), coeffs, restarts, 1e-8, exact)
  np.testing.assert_allclose(gram, direct, atol=1e-9)


def test_matmul_flops_counts_every_product_once_per_loop_trip():
  m, n = 16, 40
  x = jax.ShapeDtypeStruct((m, n), jnp.float32)
  step = 2 * m * m * n + 2 * m**3 + 2 * m * m * n  # A = X X^T, A^2, (b A + c A^2) X
  for steps in (1, 5, 8):
    fn = lambda x, steps=steps: _whiten.polar_factor(x, "polar_express", steps, 0.5, 1e-8, exact)
    assert whitening_cost.matmul_flops(fn, x) == steps * step
  assert whitening_cost.muon_flops((m, n)) == whitening_cost.muon_flops((n, m)) == 5 * step
  y = jax.ShapeDtypeStruct((m, m), jnp.float32)
  cond = lambda y: jax.lax.cond(y[0, 0] > 0, lambda: y @ y @ y, lambda: y @ y)
  assert whitening_cost.matmul_flops(cond, y) == 2 * 2 * m**3  # the costlier branch
  loop = lambda y: jax.lax.while_loop(lambda c: c[0, 0] < 1, lambda c: c @ c, y)
  with pytest.raises(ValueError, match="trip count"):
    whitening_cost.matmul_flops(loop, y)


@pytest.mark.parametrize(("steps", "restarts", "big", "small"), [(5, (), 2, 17), (5, (2,), 4, 14)])
def test_the_gram_form_costs_its_m_by_n_and_k_by_k_products(steps, restarts, big, small):
  m, n = 16, 40
  coeffs = _polar_express.polar_express_coefficients(steps)
  fn = lambda x: _polar_express.gram_odd_polynomial(x, coeffs, restarts, 1e-8, exact)
  flops = whitening_cost.matmul_flops(fn, jax.ShapeDtypeStruct((n, m), jnp.float32))
  assert flops == big * 2 * m * m * n + small * 2 * m**3


def test_a_smoke_run_of_the_frontier(tmp_path):
  x = np.random.default_rng(0).normal(size=(12, 32))
  inputs = {"tiny gate 12x32": x, "tiny up 12x32": x[::-1]}
  names = ["Muon quintic 5", "Gram PE 4, restart before step 3"]
  methods = whitening_cost.methods()
  result = whitening_cost.cosines(inputs, {n: methods[n] for n in names})
  assert 0.9 < result["Muon quintic 5"]["f32"]["tiny gate 12x32"] < 1
  rows = whitening_cost.summarize(result, {"gate": (12, 32), "up": (12, 32), "q": (12, 12)})
  text = whitening_cost.table(result, rows)
  assert "| Muon quintic 5 | bf16 | 1.00 | 1.00 | 2/2 |" in text
  whitening_cost.plot(rows, tmp_path / "frontier.png")
  assert (tmp_path / "frontier.png").stat().st_size > 0


@pytest.mark.parametrize("shape", [(16, 16), (16, 24), (16, 25), (40, 16)])
@pytest.mark.parametrize(("steps", "restarts"), [(3, ()), (5, (2,)), (5, (1, 3))])
def test_gram_is_cheaper_says_which_form_counts_fewer_flops(shape, steps, restarts):
  coeffs = _polar_express.polar_express_coefficients(steps)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  gram = lambda x: _polar_express.gram_odd_polynomial(x, coeffs, restarts, 1e-8, exact)
  direct = lambda x: _whiten.polar_factor(x, "polar_express", steps, 0.5, 1e-8, exact)
  cheaper = whitening_cost.matmul_flops(gram, x) < whitening_cost.matmul_flops(direct, x)
  assert _polar_express.gram_is_cheaper(shape, steps, restarts) == cheaper


def test_gram_polar_express_takes_the_cheaper_form_of_the_same_polynomial():
  coeffs = _polar_express.polar_express_coefficients(5)
  for shape, form in (((16, 16), "direct"), ((16, 40), "gram")):
    x = jax.random.normal(jax.random.key(1), shape, jnp.float32)
    got = _whiten.polar_factor(x, "gram_polar_express", 5, 0.5, 1e-8, exact)
    if form == "gram":
      want = _polar_express.gram_odd_polynomial(
        x, coeffs, _polar_express.GRAM_RESTARTS, 1e-8, exact
      )
    else:
      want = _whiten.polar_factor(x, "polar_express", 5, 0.5, 1e-8, exact)
    np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_gram_polar_express_on_a_mesh_matches_and_moves_what_polar_express_moves():
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
  dims = {"stack": MatrixDimensionNumbers(1, 2), "tall": MatrixDimensionNumbers(0, 1)}
  specs = {"stack": P(None, "fsdp", "tensor"), "tall": P("fsdp", "tensor")}
  keys = jax.random.split(jax.random.key(0))
  grads = {
    "stack": jax.random.normal(keys[0], (4, 32, 64)),
    "tall": jax.random.normal(keys[1], (96, 32)),
  }
  shardings = {k: NamedSharding(mesh, s) for k, s in specs.items()}
  sharded = jax.device_put(grads, shardings)
  moved = {}
  for method in ("polar_express", "gram_polar_express"):
    tx = swan_optax.whiten(
      method=method,
      precision=jax.lax.Precision.HIGHEST,
      dimension_numbers=dims,
      shardings=shardings,  # the whole-matrix path: each device whitens whole matrices
    )
    update = jax.jit(lambda g, tx=tx: tx.update(g, tx.init(g))[0])
    chex.assert_trees_all_close(update(sharded), update(grads), atol=1e-4)
    moved[method] = hlo.collective_bytes(update.lower(sharded).compile().as_text())
  assert moved["gram_polar_express"] == moved["polar_express"] != {}
