"""Checks every stateless transform goes through: jit, vmap, state, dtypes, sharding, errors."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import swan_optax
from swan_optax import MatrixDimensionNumbers

# The default whitening (gram_polar_express) in float32: these checks are of the transform
# machinery; its default bfloat16 matmul inputs are held to the exact polar factor in
# test_precision.py and to the float32 result on meshes in test_sharding.py.
_whiten_f32 = functools.partial(swan_optax.whiten, precision=jax.lax.Precision.HIGHEST)
# Agreement of one update computed two ways (jit and eager, sharded and not) on these unit-RMS
# updates: float32 reassociation through the whitening's 5-8 polynomial steps moves elements by
# up to 8e-6 in the direct form and 2e-5 in the Gram form (it squares the condition number;
# measured over 3 seeds); a machinery error moves them by O(1).
ATOL = 5e-5
TRANSFORMS = {
  "gradnorm": swan_optax.gradnorm,
  "whiten": _whiten_f32,
  "whiten_newton_schulz": functools.partial(swan_optax.whiten, method="newton_schulz"),
  "sinkhorn": functools.partial(swan_optax.sinkhorn, scale_rule="unit_rms"),
  "whiten_spectral": functools.partial(_whiten_f32, scale_rule="spectral"),
  "sinkhorn_spectral": swan_optax.sinkhorn,  # the default rule
}

DIMS = {
  "dense": MatrixDimensionNumbers(0, 1),
  "stack": MatrixDimensionNumbers(1, 2),
  "q": MatrixDimensionNumbers(0, (1, 2)),
  "o": MatrixDimensionNumbers((0, 1), 2),
}


def _grads(dtype=jnp.float32, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  shapes = {"dense": (32, 48), "stack": (4, 32, 64), "q": (64, 4, 8), "o": (4, 8, 64)}
  return {
    name: jax.random.normal(key, shape, dtype)
    for key, (name, shape) in zip(keys, shapes.items(), strict=True)
  }


# (fan_in, fan_out) of each leaf's matrices under DIMS.
FANS = {"dense": (32, 48), "stack": (32, 64), "q": (64, 32), "o": (32, 64)}


def _expected_rms(name, leaf):
  """Unit RMS, or ``shape_scale('spectral', ...)`` of the leaf's matrices."""
  rule = "spectral" if name.endswith("_spectral") else "unit_rms"
  return swan_optax.inspect.shape_scale(rule, *FANS[leaf])


@pytest.fixture(params=TRANSFORMS)
def name(request):
  return request.param


@pytest.fixture
def tx(name):
  return TRANSFORMS[name](dimension_numbers=DIMS)


def test_init_holds_no_arrays(tx):
  state = tx.init(_grads())
  assert jax.tree.leaves(state) == []
  assert isinstance(state, optax.EmptyState)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_update_preserves_shape_dtype_and_rms_of_its_scale_rule(name, tx, dtype):
  grads = _grads(dtype)
  updates, state = tx.update(grads, tx.init(grads))
  chex.assert_trees_all_equal_shapes_and_dtypes(updates, grads)
  assert jax.tree.leaves(state) == []
  for leaf, u in updates.items():
    rms = float(jnp.sqrt(jnp.mean(jnp.square(u.astype(jnp.float32)))))
    assert abs(rms / _expected_rms(name, leaf) - 1.0) < 2e-2, (leaf, rms)


class JitMatchesEagerTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*TRANSFORMS)
  def test_variant_matches_python_loop(self, name):
    tx = TRANSFORMS[name](dimension_numbers=DIMS)
    grads = _grads()
    with jax.disable_jit():
      expected, _ = tx.update(grads, tx.init(grads))
    updates, _ = self.variant(tx.update)(grads, tx.init(grads))
    chex.assert_trees_all_close(updates, expected, atol=ATOL)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_vmap_over_a_leading_axis_matches_separate_calls(name):
  tx = TRANSFORMS[name]()
  stacked = jax.random.normal(jax.random.key(1), (3, 24, 40))
  vmapped, _ = jax.vmap(lambda g: tx.update(g, optax.EmptyState()))(stacked)
  for i in range(3):
    single, _ = tx.update(stacked[i], optax.EmptyState())
    chex.assert_trees_all_close(vmapped[i], single, atol=ATOL)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_chains_with_optax(name):
  tx = optax.chain(
    optax.clip_by_global_norm(1.0),
    TRANSFORMS[name](dimension_numbers=DIMS),
    optax.scale_by_learning_rate(0.1),
  )
  params = _grads(seed=3)
  updates, _ = jax.jit(tx.update)(_grads(), tx.init(params), params)
  new_params = optax.apply_updates(params, updates)
  for leaf, p in params.items():
    rms = float(jnp.sqrt(jnp.mean(jnp.square(new_params[leaf] - p))))
    assert abs(rms / (0.1 * _expected_rms(name, leaf)) - 1.0) < 2e-2, (leaf, rms)


def test_inject_hyperparams():
  tx = optax.inject_hyperparams(swan_optax.sinkhorn, static_args="dimension_numbers")(
    num_iters=3, eps=1e-8, dimension_numbers=DIMS
  )
  grads = _grads()
  state = tx.init(grads)
  updates, state = jax.jit(tx.update)(grads, state)
  direct, _ = swan_optax.sinkhorn(num_iters=3, dimension_numbers=DIMS).update(
    grads, optax.EmptyState()
  )
  chex.assert_trees_all_close(updates, direct, atol=1e-6)
  state.hyperparams["num_iters"] = jnp.asarray(1)
  updates_1, _ = jax.jit(tx.update)(grads, state)
  direct_1, _ = swan_optax.sinkhorn(num_iters=1, dimension_numbers=DIMS).update(
    grads, optax.EmptyState()
  )
  chex.assert_trees_all_close(updates_1, direct_1, atol=1e-6)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_sharded_matches_unsharded_and_keeps_sharding(name):
  assert len(jax.devices()) >= 8, "conftest sets 8 simulated CPU devices"
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
  specs = {
    "dense": P("fsdp", "tensor"),
    "stack": P(None, "fsdp", "tensor"),
    "q": P("fsdp", "tensor", None),
    "o": P("tensor", None, "fsdp"),
  }
  shardings = {k: NamedSharding(mesh, spec) for k, spec in specs.items()}
  tx = TRANSFORMS[name](dimension_numbers=DIMS)
  grads = _grads()
  sharded_grads = jax.device_put(grads, shardings)
  expected, _ = jax.jit(tx.update)(grads, tx.init(grads))
  for updates in (
    jax.jit(tx.update)(sharded_grads, tx.init(grads))[0],
    tx.update(sharded_grads, tx.init(grads))[0],
  ):
    chex.assert_trees_all_close(updates, expected, atol=ATOL)
    for k, u in updates.items():
      assert u.sharding.is_equivalent_to(shardings[k], u.ndim), (k, u.sharding)


# Bad input: clear errors naming the leaf.


@pytest.mark.parametrize("name", TRANSFORMS)
def test_non_matrix_leaf_raises_naming_path_and_shape(name):
  tx = TRANSFORMS[name]()
  with pytest.raises(ValueError, match=r"leaf 'layer/bias' with shape \(5,\) is not a 2-D"):
    tx.update({"layer": {"bias": jnp.ones(5), "kernel": jnp.ones((5, 5))}}, optax.EmptyState())
  with pytest.raises(ValueError, match=r"'stack' with shape \(2, 3, 4\) is not a 2-D"):
    tx.update({"stack": jnp.ones((2, 3, 4))}, optax.EmptyState())


@pytest.mark.parametrize(
  ("dims", "message"),
  [
    (MatrixDimensionNumbers(0, 0), "names an axis twice"),
    (MatrixDimensionNumbers(0, 3), r"axes \[3\] out of range"),
    (MatrixDimensionNumbers((), 1), "names no reduction"),
    ({"w": None}, "has no MatrixDimensionNumbers"),
  ],
)
def test_bad_dimension_numbers_raise(dims, message):
  tx = swan_optax.gradnorm(dimension_numbers=dims)
  with pytest.raises(ValueError, match=message):
    tx.update({"w": jnp.ones((4, 5, 6))}, optax.EmptyState())


def test_callable_dimension_numbers_and_masked_trees():
  """A callable spec works, and so does a tree masked by ``optax.masked``."""
  grads = {"kernel": jnp.ones((4, 8)) * jnp.arange(8.0), "scale": jnp.ones(8)}
  tx = optax.masked(
    swan_optax.gradnorm(dimension_numbers=lambda g: jax.tree.map(lambda _: DIMS["dense"], g)),
    {"kernel": True, "scale": False},
  )
  updates, _ = tx.update(grads, tx.init(grads))
  np.testing.assert_array_equal(updates["scale"], grads["scale"])
  np.testing.assert_allclose(jnp.std(updates["kernel"], axis=1), 1.0, rtol=1e-5)
