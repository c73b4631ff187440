"""The swan() and sinkgd() optimizers: routing, statelessness, updates and convergence."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import swan_optax
from swan_optax import MatrixDimensionNumbers

OPTIMIZERS = {"swan": swan_optax.swan, "sinkgd": swan_optax.sinkgd}


def _params():
  """A small transformer-like tree: a scanned (layers, in, out) stack and Adam leaves."""
  keys = jax.random.split(jax.random.key(0), 6)
  return {
    "embed": {"embedding": jax.random.normal(keys[0], (50, 16))},
    "layers": {
      "attn_norm": {"scale": jnp.ones((2, 16))},
      "mlp": {"up": {"kernel": jax.random.normal(keys[1], (2, 16, 40))}},
    },
    "proj": {"kernel": jax.random.normal(keys[2], (16, 24)), "bias": jnp.zeros(24)},
    "lm_head": {"kernel": jax.random.normal(keys[3], (16, 50))},
  }


def _stack_dims(params):
  """Dimension numbers for ``_params``: the scanned stack has a leading layer axis."""
  by_rank = {2: MatrixDimensionNumbers(0, 1), 3: MatrixDimensionNumbers(1, 2)}
  return jax.tree.map(lambda p: by_rank.get(p.ndim), params)


def _state_bytes(state) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def test_default_routing_by_path_and_shape():
  labels = swan_optax.param_labels(_params(), dimension_numbers=_stack_dims)
  assert labels == {
    "embed": {"embedding": "adam"},
    "layers": {"attn_norm": {"scale": "adam"}, "mlp": {"up": {"kernel": "matrix"}}},
    "proj": {"kernel": "matrix", "bias": "adam"},
    "lm_head": {"kernel": "adam"},
  }


def test_rank_3_leaf_without_dimension_numbers_raises_naming_it():
  with pytest.raises(ValueError, match=r"'layers/mlp/up/kernel' with shape \(2, 16, 40\)"):
    swan_optax.param_labels(_params())
  with pytest.raises(ValueError, match=r"'layers/mlp/up/kernel'"):
    swan_optax.swan(1e-3).init(_params())


def test_routing_overrides():
  params = _params()
  # A label tree (here: everything to Adam but proj).
  labels = jax.tree.map(lambda _: "adam", params)
  labels["proj"]["kernel"] = "matrix"
  tx = swan_optax.swan(1e-3, param_labels=labels)
  state = tx.init(params)
  assert jax.tree.leaves(state.inner_states["matrix"]) == []
  # A custom pattern sends the stack to Adam too.
  assert swan_optax.param_labels(params, adam_pattern=r"embed|lm_head|norm|bias|layers") == {
    **labels,
    "proj": {"kernel": "matrix", "bias": "adam"},
  }


def test_routing_table_lists_every_leaf():
  table = swan_optax.routing_table(_params(), dimension_numbers=_stack_dims)
  print(table)
  lines = table.splitlines()
  assert len(lines) == 2 + len(jax.tree.leaves(_params()))
  assert any(
    "layers/mlp/up/kernel" in ln and "matrix" in ln and "2 x 16 x 40" in ln for ln in lines
  )
  assert any("lm_head/kernel" in ln and "adam" in ln for ln in lines)
  # Abstract params work too: no allocation needed for big models.
  abstract = jax.eval_shape(_params)
  assert swan_optax.routing_table(abstract, dimension_numbers=_stack_dims) == table


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_matrix_group_is_stateless_and_state_bytes_are_adams_for_adam_leaves(name):
  params = _params()
  tx = OPTIMIZERS[name](1e-3, dimension_numbers=_stack_dims)
  state = tx.init(params)
  assert jax.tree.leaves(state.inner_states["matrix"]) == []
  labels = swan_optax.param_labels(params, dimension_numbers=_stack_dims)
  adam_params = sum(
    p.size
    for p, label in zip(jax.tree.leaves(params), jax.tree.leaves(labels), strict=True)
    if label == "adam"
  )
  adam_state = optax.adam(1e-3).init(params)
  # mu and nu in float32 for the Adam leaves, plus Adam's int32 step counter.
  assert _state_bytes(state) == 8 * adam_params + 4
  assert _state_bytes(state) < _state_bytes(adam_state)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_adafactor_on_non_matrix_leaves_is_nearly_stateless(name):
  params = _params()
  adafactor = functools.partial(optax.adafactor, min_dim_size_to_factor=8)
  tx = OPTIMIZERS[name](
    1e-3, adam_learning_rate=1e-3, dimension_numbers=_stack_dims, non_matrix=adafactor
  )
  state = tx.init(params)
  # Factored second moments: a row and a column vector per (50, 16) matrix, not 50 x 16.
  assert _state_bytes(state) < 0.2 * 8 * (50 * 16 * 2)
  assert jax.tree.leaves(state.inner_states["matrix"]) == []
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = jax.jit(tx.update)(grads, state, params)
  expected, _ = optax.adafactor(1e-3).update(
    {"e": grads["embed"]["embedding"]},
    optax.adafactor(1e-3).init({"e": params["embed"]["embedding"]}),
    {"e": params["embed"]["embedding"]},
  )
  np.testing.assert_allclose(updates["embed"]["embedding"], expected["e"], rtol=1e-6)


@pytest.mark.parametrize("lr", [1e-3, optax.constant_schedule(1e-3)], ids=["float", "schedule"])
@pytest.mark.parametrize("rule", ["unit_rms", "spectral"])
@pytest.mark.parametrize("name", ["swan", "sinkgd"])
def test_one_step_moves_each_group_by_its_scale_rule(name, rule, lr):
  """Matrices step by RMS lr x ``shape_scale``; the Adam group (by default) by lr times the
  optimizer's ratio for the rule, ``swan_optax.defaults.ADAM_LR_RATIO``."""
  params = _params()
  tx = OPTIMIZERS[name](lr, scale_rule=rule, dimension_numbers=_stack_dims)
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(7), p.shape), params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  for u in (updates["proj"]["kernel"], updates["layers"]["mlp"]["up"]["kernel"]):
    expected = 1e-3 * swan_optax.inspect.shape_scale(rule, *u.shape[-2:])
    np.testing.assert_allclose(jnp.sqrt(jnp.mean(jnp.square(u))), expected, rtol=1e-4)
  # Adam's first step is lr * sign(g) elementwise.
  adam_lr = 1e-3 * swan_optax.defaults.ADAM_LR_RATIO[name, rule]
  np.testing.assert_allclose(jnp.abs(updates["embed"]["embedding"]), adam_lr, rtol=1e-4)


@pytest.mark.parametrize("name", ["swan", "sinkgd"])
def test_defaults_are_declared_once_in_swan_optax_defaults(name):
  """``swan()`` and ``sinkgd()`` step at ``defaults.LEARNING_RATE`` under
  ``defaults.SCALE_RULE``, their Adam group at the rule's ratio; the papers' settings are
  one keyword away; an unknown rule raises before any default is derived from it."""
  params = _params()
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(7), p.shape), params)
  tx = OPTIMIZERS[name](dimension_numbers=_stack_dims)
  default, _ = tx.update(grads, tx.init(params), params)
  lr, rule = swan_optax.defaults.LEARNING_RATE[name], swan_optax.defaults.SCALE_RULE[name]
  explicit = OPTIMIZERS[name](
    lr,
    scale_rule=rule,
    adam_learning_rate=lr * swan_optax.defaults.ADAM_LR_RATIO[name, rule],
    dimension_numbers=_stack_dims,
  )
  expected, _ = explicit.update(grads, explicit.init(params), params)
  jax.tree.map(np.testing.assert_allclose, default, expected)
  paper = OPTIMIZERS[name](1e-3, adam_learning_rate=1e-3, dimension_numbers=_stack_dims)
  updates, _ = paper.update(grads, paper.init(params), params)
  np.testing.assert_allclose(jnp.abs(updates["embed"]["embedding"]), 1e-3, rtol=1e-4)
  with pytest.raises(ValueError, match="unknown scale_rule 'mup'"):
    OPTIMIZERS[name](1e-3, scale_rule="mup")


def test_sinkhorn_alone_is_sinkgds_matrix_step():
  """``chain(sinkhorn(), scale_by_learning_rate(lr))`` is what ``sinkgd(lr)`` does to a matrix."""
  params = {"w": jax.random.normal(jax.random.key(1), (32, 16))}
  grads = {"w": jax.random.normal(jax.random.key(2), (32, 16))}
  tx = swan_optax.sinkgd(0.5)
  updates, _ = tx.update(grads, tx.init(params), params)
  reference = optax.chain(swan_optax.sinkhorn(), optax.scale_by_learning_rate(0.5))
  expected, _ = reference.update(grads, reference.init(params))
  chex.assert_trees_all_close(updates, expected, atol=1e-7)


def test_swan_matrix_update_is_whitened_gradnorm():
  params = {"w": jax.random.normal(jax.random.key(1), (32, 16))}
  grads = {"w": jax.random.normal(jax.random.key(2), (32, 16))}
  tx = swan_optax.swan(0.5)
  updates, _ = tx.update(grads, tx.init(params), params)
  reference = optax.chain(swan_optax.gradnorm(), swan_optax.whiten(), optax.scale(-0.5))
  expected, _ = reference.update(grads, reference.init(params))
  chex.assert_trees_all_close(updates, expected, atol=1e-6)


@pytest.mark.parametrize(
  ("operators", "reference"),
  [("gradnorm", swan_optax.gradnorm()), ("whiten", swan_optax.whiten())],
)
def test_swan_ablations_keep_one_operator(operators, reference):
  """``swan(operators=...)``: one operator on the matrices, the Adam group as SWAN's."""
  params = {"w": jax.random.normal(jax.random.key(1), (32, 16)), "b": jnp.zeros(16)}
  grads = {"w": jax.random.normal(jax.random.key(2), (32, 16)), "b": jnp.ones(16)}
  tx, full = swan_optax.swan(0.5, operators=operators), swan_optax.swan(0.5)
  updates, _ = tx.update(grads, tx.init(params), params)
  step, matrix = optax.chain(reference, optax.scale(-0.5)), {"w": grads["w"]}
  expected, _ = step.update(matrix, step.init(matrix))
  chex.assert_trees_all_close(updates["w"], expected["w"], atol=1e-6)
  chex.assert_trees_all_close(updates["b"], full.update(grads, full.init(params), params)[0]["b"])
  with pytest.raises(ValueError, match="operators='gradnorm' drops: pass scale_rule='unit_rms'"):
    swan_optax.swan(operators="gradnorm", scale_rule="spectral")
  with pytest.raises(ValueError, match="operators must be 'both', 'gradnorm' or 'whiten'"):
    swan_optax.swan(operators="sinkhorn")


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_schedules_weight_decay_and_clipping(name):
  params = {"w": jnp.ones((8, 8)), "b": jnp.ones(8)}
  grads = {"w": jax.random.normal(jax.random.key(3), (8, 8)), "b": 100.0 * jnp.ones(8)}
  schedule = optax.linear_schedule(0.0, 1.0, 10)
  tx = optax.chain(
    optax.clip_by_global_norm(1.0),
    OPTIMIZERS[name](
      schedule,
      adam_learning_rate=schedule,
      weight_decay=0.5,
      weight_decay_mask={"w": True, "b": False},
    ),
  )
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)  # step 0: lr 0
  chex.assert_trees_all_close(updates, jax.tree.map(jnp.zeros_like, updates))
  updates, state = tx.update(jax.tree.map(jnp.zeros_like, grads), state, params)
  # Zero gradient: the matrix update is only the decay, -lr * wd * w.
  np.testing.assert_allclose(updates["w"], -0.1 * 0.5 * params["w"], rtol=1e-5)


def test_inject_hyperparams_changes_learning_rate():
  params = {"w": jnp.ones((8, 8))}
  grads = {"w": jax.random.normal(jax.random.key(4), (8, 8))}
  tx = optax.inject_hyperparams(swan_optax.swan)(learning_rate=1e-3)
  state = tx.init(params)
  state.hyperparams["learning_rate"] = jnp.asarray(2e-3)
  updates, _ = jax.jit(tx.update)(grads, state, params)
  np.testing.assert_allclose(jnp.sqrt(jnp.mean(updates["w"] ** 2)), 2e-3, rtol=1e-4)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_non_finite_gradient_is_never_hidden(name):
  """A NaN gradient gives a NaN update for its matrix, so apply_if_finite can skip it."""
  params = {"w": jnp.ones((8, 8)), "v": jnp.ones((8, 8))}
  grads = {"w": jnp.ones((8, 8)).at[0, 0].set(jnp.nan), "v": jnp.eye(8)}
  tx = OPTIMIZERS[name](1e-3)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert not jnp.isfinite(updates["w"]).all()
  assert jnp.isfinite(updates["v"]).all()
  safe = optax.apply_if_finite(OPTIMIZERS[name](1e-3), max_consecutive_errors=3)
  updates, state = safe.update(grads, safe.init(params), params)
  chex.assert_trees_all_close(updates, jax.tree.map(jnp.zeros_like, params))
  assert int(state.notfinite_count) == 1


def _mlp_loss(params, x, y):
  h = jax.nn.gelu(x @ params["hidden"]["kernel"] + params["hidden"]["bias"])
  return jnp.mean((h @ params["out"]["kernel"] - y) ** 2)


def _train(tx, steps=150):
  keys = jax.random.split(jax.random.key(0), 5)
  x = jax.random.normal(keys[0], (256, 32))
  teacher = jax.random.normal(keys[1], (32, 8)) / jnp.sqrt(32)
  y = jnp.tanh(x @ teacher)
  params = {
    "hidden": {"kernel": jax.random.normal(keys[2], (32, 64)) / 6, "bias": jnp.zeros(64)},
    "out": {"kernel": jax.random.normal(keys[3], (64, 8)) / 8},
  }
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    loss, grads = jax.value_and_grad(_mlp_loss)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  losses = []
  for _ in range(steps):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  return losses


def test_convergence_comparable_to_adam():
  schedule = lambda peak: optax.warmup_cosine_decay_schedule(0.0, peak, 15, 150, 0.1 * peak)
  adam = _train(optax.adam(schedule(1e-2)))
  swan = _train(swan_optax.swan(schedule(1e-2)))
  sinkgd = _train(swan_optax.sinkgd(schedule(0.2)))
  print(f"final loss adam {adam[-1]:.4f} swan {swan[-1]:.4f} sinkgd {sinkgd[-1]:.4f}")
  for losses in (adam, swan, sinkgd):
    assert losses[-1] < 0.2 * losses[0]
  assert swan[-1] < 3 * adam[-1]
  assert sinkgd[-1] < 3 * adam[-1]
