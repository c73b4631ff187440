"""SWAN and SinkGD on device meshes: Explicit, Auto and mixed axes, 1 and 8 devices, ``mesh=``."""

import functools
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import swan_optax
from models import configs
from models import llama
from swan_optax import MatrixDimensionNumbers
from train import optimizer
from train.bench import hlo

AXES = ("data", "fsdp", "tensor")
MESHES = ((8, 1, 1), (1, 8, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8))
AXIS_TYPES = {
  "explicit": (AxisType.Explicit,) * 3,
  "auto": (AxisType.Auto,) * 3,
  "mixed": (AxisType.Auto, AxisType.Explicit, AxisType.Explicit),
}
# The default whitening (Polar Express) multiplies bf16 inputs, and the iteration amplifies
# their rounding along a random matrix's near-zero singular values: sharded and unsharded
# updates, whose float32 sums run in different orders, then differ by up to a quarter of
# their RMS in single entries. Layouts are checked at float32 matmuls, where they agree to
# 2e-5; the default precision by relative error (test_default_precision_...).
FLOAT32 = jax.lax.Precision.HIGHEST
OPTIMIZERS = {
  "swan": functools.partial(swan_optax.swan, precision=FLOAT32),
  "sinkgd": swan_optax.sinkgd,
}
# tiny, with 8 heads so that every mesh above splits it (tensor=8).
CONFIG = configs.get_config("tiny", num_heads=8, head_dim=16)


def _mesh(shape, types="explicit", devices=None):
  devices = jax.devices()[: np.prod(shape)] if devices is None else devices
  return jax.make_mesh(shape, AXES, axis_types=AXIS_TYPES[types], devices=devices)


def _grads():
  abstract = llama.abstract_params(CONFIG)
  keys = iter(jax.random.split(jax.random.key(0), len(jax.tree.leaves(abstract))))
  return jax.tree.map(lambda a: jax.random.normal(next(keys), a.shape, a.dtype), abstract)


def _shardings(mesh):
  is_spec = lambda x: isinstance(x, P)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), llama.param_specs(CONFIG), is_leaf=is_spec)


def _place(tree, mesh):
  return jax.device_put(tree, _shardings(mesh))


def _update(name, mesh, grads, *, jit=True):
  # SR-Sinkhorn needs no mesh: it all-reduces norm vectors in the gradients' own layout.
  on_mesh = {"mesh": mesh} if name == "swan" else {}
  tx = OPTIMIZERS[name](1e-2, dimension_numbers=optimizer.dimension_numbers(CONFIG), **on_mesh)
  update = lambda g: tx.update(g, tx.init(g), g)[0]
  return (jax.jit(update) if jit else update)(grads)


def _check_matches_and_keeps_layout(updates, expected, grads):
  chex.assert_trees_all_close(updates, expected, atol=2e-5)
  for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads), strict=True):
    assert u.sharding.is_equivalent_to(g.sharding, g.ndim), (u.sharding, g.sharding)
    assert jax.typeof(u).sharding.spec == jax.typeof(g).sharding.spec, (
      jax.typeof(u),
      jax.typeof(g),
    )


@pytest.fixture(scope="module")
def reference():
  grads = _grads()
  return grads, {name: _update(name, None, grads) for name in OPTIMIZERS}


@pytest.mark.parametrize("types", AXIS_TYPES)
@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("with_mesh", [False, True], ids=["mesh=None", "mesh=mesh"])
def test_sharded_matches_unsharded_on_2x2x2(reference, types, name, with_mesh):
  grads, expected = reference
  mesh = _mesh((2, 2, 2), types)
  sharded = _place(grads, mesh)
  with _warns_of_hidden_layout(name == "swan" and with_mesh and _auto_axes((2, 2, 2), types)):
    updates = _update(name, mesh if with_mesh else None, sharded)
  _check_matches_and_keeps_layout(updates, expected[name], sharded)


@pytest.mark.parametrize("types", ["explicit", "auto"])
def test_default_precision_sharded_is_close_to_unsharded(types):
  """At the default bf16 matmuls, each sharded update is within 2% (Frobenius) of the unsharded."""
  grads = _grads()
  mesh = _mesh((2, 2, 2), types)
  dims = optimizer.dimension_numbers(CONFIG)

  def update(grads, **where):
    tx = swan_optax.swan(1e-2, dimension_numbers=dims, **where)
    return jax.jit(lambda g: tx.update(g, tx.init(g), g)[0])(grads)

  sharded = update(_place(grads, mesh), shardings=_shardings(mesh))
  for u, e in zip(jax.tree.leaves(sharded), jax.tree.leaves(update(grads)), strict=True):
    assert jnp.linalg.norm(u - e) <= 0.02 * jnp.linalg.norm(e)


def _auto_axes(shape, types) -> bool:
  """Whether the mesh has an Auto axis of size > 1 (a layout jit does not show)."""
  return any(n > 1 and t == AxisType.Auto for n, t in zip(shape, AXIS_TYPES[types], strict=True))


def _warns_of_hidden_layout(expected: bool):
  """``mesh=`` inside jit on Auto axes, without ``shardings=``: one warning naming the fix."""
  if not expected:
    return warnings.catch_warnings(action="error", category=UserWarning)
  return pytest.warns(UserWarning, match=r"layout of leaf '.*' .* pass shardings=")


@pytest.mark.slow
@pytest.mark.parametrize("types", ["explicit", "auto"])  # mixed: on 2x2x2, above
@pytest.mark.parametrize("shape", MESHES, ids=str)
def test_swan_on_every_mesh_matches_unsharded(reference, shape, types):
  grads, expected = reference
  mesh = _mesh(shape, types)
  sharded = _place(grads, mesh)
  for optimizer_mesh in (None, mesh):
    with _warns_of_hidden_layout(optimizer_mesh is not None and _auto_axes(shape, types)):
      updates = _update("swan", optimizer_mesh, sharded)
    _check_matches_and_keeps_layout(updates, expected["swan"], sharded)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_one_device_explicit_mesh_eager_and_jit(reference, name):
  """The ``jax.make_mesh`` default (Explicit axes), as in flax's examples, on one device."""
  grads, expected = reference
  mesh = _mesh((1, 1, 1), devices=jax.devices()[:1])
  sharded = _place(grads, mesh)
  for optimizer_mesh in (None, mesh):
    for jit in (True, False):
      updates = _update(name, optimizer_mesh, sharded, jit=jit)
      _check_matches_and_keeps_layout(updates, expected[name], sharded)


@pytest.mark.slow
def test_eager_with_mesh(reference):
  """Outside jit the layout is read from the arrays' shardings, on Auto and Explicit axes."""
  grads, expected = reference
  mesh = _mesh((2, 2, 2), "mixed")
  sharded = _place(grads, mesh)
  updates = _update("swan", mesh, sharded, jit=False)
  _check_matches_and_keeps_layout(updates, expected["swan"], sharded)


def test_each_device_whitens_an_equal_share_of_whole_matrices():
  """q, k, v (3 x 4 layers) are stacked and padded to 16: two whole 128 x 128 Grams per device."""
  mesh = _mesh((2, 2, 2))
  dims = {k: MatrixDimensionNumbers(1, (2, 3)) for k in "qkv"}
  grads = {k: jax.random.normal(jax.random.key(i), (4, 128, 8, 16)) for i, k in enumerate("qkv")}
  sharded = jax.device_put(grads, NamedSharding(mesh, P(None, "fsdp", "tensor", None)))
  tx = swan_optax.whiten(dimension_numbers=dims, mesh=mesh, precision=FLOAT32)
  plain = swan_optax.whiten(dimension_numbers=dims, precision=FLOAT32)
  update = jax.jit(lambda g: tx.update(g, tx.init(g))[0])
  chex.assert_trees_all_close(update(sharded), jax.jit(plain.update)(grads, ())[0], atol=2e-5)
  text = update.lower(sharded).compile().as_text()
  assert "f32[2,128,128]" in text and "f32[12,128,128]" not in text
  route = swan_optax.inspect.whitening_plan(sharded, dims, mesh)["q"]
  assert route.strategy == "all-to-all + replicated + all-gather"
  assert route.sharded_axes == ("fsdp", "tensor") and route.spread_axes == ("data",)
  assert route.group_size == 3


@pytest.mark.parametrize(
  ("shape", "spec", "strategy"),
  [
    ((1, 8, 1), P(None, "fsdp", None), "all-to-all"),
    ((8, 1, 1), P(None, None, None), "replicated + all-gather"),
    ((8, 1, 1), P("data", None, None), "local"),
  ],
)
def test_plan_strategies_and_bytes(shape, spec, strategy):
  mesh = _mesh(shape)
  leaf = jax.ShapeDtypeStruct((8, 64, 32), jnp.float32, sharding=NamedSharding(mesh, spec))
  route = swan_optax.inspect.whitening_plan({"w": leaf}, MatrixDimensionNumbers(1, 2), mesh)["w"]
  assert route.strategy == strategy
  assert route.leaf_bytes == 8 * 64 * 32 * 4
  expected = {"all-to-all": 2 / 8, "replicated + all-gather": 1.0, "local": 0.0}[strategy]
  assert route.bytes_per_device == expected * route.leaf_bytes


@pytest.mark.parametrize("scale_rule", ["unit_rms", "spectral"])
def test_vmap_with_mesh_matches_plain(scale_rule):
  mesh = _mesh((2, 2, 2))
  dims = MatrixDimensionNumbers(1, 2)
  x = jax.random.normal(jax.random.key(0), (3, 4, 32, 64))
  sharded = jax.device_put(x, NamedSharding(mesh, P(None, None, "fsdp", "tensor")))
  whiten = functools.partial(swan_optax.whiten, dimension_numbers=dims, precision=FLOAT32)
  on_mesh = whiten(mesh=mesh, scale_rule=scale_rule)
  plain = whiten(scale_rule=scale_rule)
  vmapped = lambda tx: jax.jit(jax.vmap(lambda g: tx.update(g, ())[0]))
  chex.assert_trees_all_close(vmapped(on_mesh)(sharded), vmapped(plain)(x), atol=2e-5)


def test_gradients_on_another_mesh_raise():
  mesh = _mesh((2, 2, 2))
  other = jax.make_mesh((8,), ("x",))
  g = jax.device_put(jnp.ones((4, 32, 64)), NamedSharding(other, P(None, "x")))
  tx = swan_optax.whiten(dimension_numbers=MatrixDimensionNumbers(1, 2), mesh=mesh)
  with pytest.raises(ValueError, match=r"mesh axes \['x'\].*pass the mesh the params live on"):
    tx.update(g, ())


@pytest.mark.parametrize(
  ("types", "given"), [("auto", "NamedSharding"), ("mixed", "PartitionSpec")]
)
def test_shardings_show_auto_axes_to_the_update_inside_jit(reference, types, given):
  """``jax.jit(in_shardings=...)`` on Auto axes: only the planned all-to-alls move."""
  grads, expected = reference
  mesh = _mesh((2, 2, 2), types)
  shardings = _shardings(mesh)
  dims = optimizer.dimension_numbers(CONFIG)
  if given == "NamedSharding":
    tx = OPTIMIZERS["swan"](1e-2, dimension_numbers=dims, shardings=shardings)
  else:
    tx = OPTIMIZERS["swan"](
      1e-2, dimension_numbers=dims, mesh=mesh, shardings=llama.param_specs(CONFIG)
    )
  update = jax.jit(lambda g: tx.update(g, tx.init(g), g)[0], in_shardings=(shardings,))
  sharded = _place(grads, mesh)
  _check_matches_and_keeps_layout(update(sharded), expected["swan"], sharded)
  moved = hlo.collective_bytes(update.lower(sharded).compile().as_text())
  plan = swan_optax.inspect.whitening_plan(sharded, dims, mesh)
  planned = sum(r.bytes_per_device for r in plan.values())
  assert moved.get("all-to-all", 0) > 0
  assert sum(moved.values()) <= 1.01 * planned + 2**16, (moved, planned)


def test_shardings_errors_name_the_fix():
  mesh = _mesh((2, 2, 2))
  dims = MatrixDimensionNumbers(1, 2)
  g = {"w": jnp.ones((4, 32, 64)), "v": jnp.ones((4, 32, 64))}
  missing = swan_optax.whiten(dimension_numbers=dims, shardings={"w": NamedSharding(mesh, P())})
  with pytest.raises(ValueError, match=r"shardings has no entry for leaf 'v' with shape"):
    missing.update(g, ())
  specs_only = swan_optax.whiten(dimension_numbers=dims, shardings={"w": P(), "v": P()})
  with pytest.raises(ValueError, match=r"PartitionSpecs with mesh="):
    specs_only.update(g, ())


def _compiled_cost(tx, grads) -> tuple[float, int]:
  """FLOPs and collective bytes per device of the jitted update, compiled without running."""
  compiled = jax.jit(lambda g: tx.update(g, tx.init(g), g)[0]).lower(grads).compile()
  return hlo.flops(compiled), sum(hlo.collective_bytes(compiled.as_text()).values())


def test_explicit_mesh_is_found_in_the_gradients_types():
  """``mesh=None`` on Explicit axes: the same FLOPs and bytes as ``mesh=mesh``."""
  mesh = _mesh((2, 2, 2))
  abstract = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
    llama.abstract_params(CONFIG),
    _shardings(mesh),
  )
  dims = optimizer.dimension_numbers(CONFIG)
  found = _compiled_cost(swan_optax.swan(1e-2, dimension_numbers=dims), abstract)
  given = _compiled_cost(swan_optax.swan(1e-2, dimension_numbers=dims, mesh=mesh), abstract)
  assert found == pytest.approx(given, rel=1e-3)


def test_hidden_layout_moves_no_more_than_mesh_none():
  """Auto axes inside jit, ``mesh=`` without ``shardings=``: a warning, and mesh=None's cost."""
  mesh = _mesh((2, 2, 2), "auto")
  shardings = _shardings(mesh)
  abstract = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
    llama.abstract_params(CONFIG),
    shardings,
  )
  dims = optimizer.dimension_numbers(CONFIG)
  plain = _compiled_cost(swan_optax.swan(1e-2, dimension_numbers=dims), abstract)
  with pytest.warns(
    UserWarning, match=r"'layers/attn/k/kernel' \(0.25 MiB\) \(and 6 more leaves\)"
  ):
    hidden = _compiled_cost(swan_optax.swan(1e-2, dimension_numbers=dims, mesh=mesh), abstract)
  assert hidden == plain


def test_routing_table_on_a_mesh_says_how_each_matrix_is_whitened():
  mesh = _mesh((1, 8, 1))
  grads = _place(_grads(), mesh)
  dims = optimizer.dimension_numbers(CONFIG)
  table = swan_optax.routing_table(grads, dimension_numbers=dims, mesh=mesh)
  plan = swan_optax.inspect.whitening_plan(grads, dims, mesh)
  rows = {line.split()[0]: line for line in table.splitlines()[2:]}
  assert "swan on the mesh (per device)" in table.splitlines()[0]
  for path, route in plan.items():
    assert f"{route.strategy} over fsdp, {route.bytes_per_device / 2**20:.2f} MiB" in rows[path]
  assert rows["lm_head/kernel"].rstrip().endswith("adam")
