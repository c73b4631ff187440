"""The train step, optimizer factory, state shardings and mesh parsing, on a toy model."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import swan_optax
from train import build
from train import mesh as mesh_lib
from train import optimizer
from train import step as step_lib
from train.bench import hlo
from train.config import TrainConfig
from train.optimizers import optimizer_config

VOCAB, DIM = 12, 8
# The toy's stacked kernel is one (in, out) matrix per layer; embed and lm_head go to Adam.
TOY_DIMS = {
  "embed": {"embedding": None},
  "layers": {"mlp": {"up": {"kernel": swan_optax.MatrixDimensionNumbers(1, 2)}}},
  "lm_head": {"kernel": None},
}


def _toy_params():
  k1, k2 = jax.random.split(jax.random.key(0))
  return {
    "embed": {"embedding": jax.random.normal(k1, (VOCAB, DIM)) * 0.1},
    "layers": {"mlp": {"up": {"kernel": jax.random.normal(k2, (1, DIM, DIM)) * 0.1}}},
    "lm_head": {"kernel": jnp.zeros((DIM, VOCAB))},
  }


def _toy_apply(params, tokens_BxL):
  x_BxLxD = params["embed"]["embedding"][tokens_BxL]
  x_BxLxD = jnp.tanh(x_BxLxD @ params["layers"]["mlp"]["up"]["kernel"][0])
  return x_BxLxD @ params["lm_head"]["kernel"]


def _batch(seed=0, rows=8, length=6):
  tokens = jax.random.randint(jax.random.key(seed), (rows, length + 1), 0, VOCAB)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}


# SinkGD's lr is global: under its default spectral rule, its Adam group steps at 2 lr / sqrt(128).
@pytest.mark.parametrize(
  ("name", "lr"), [("swan", 0.05), ("sinkgd", 0.5), ("adam", 0.05), ("adamw", 0.05)]
)
def test_loss_decreases_with_every_optimizer(name, lr):
  tx = optimizer.make_optimizer(optimizer_config(name, lr=lr), 40, dimension_numbers=TOY_DIMS)
  state = step_lib.init_state(_toy_params(), tx)
  train_step = jax.jit(step_lib.make_train_step(_toy_apply, tx))
  batch = _batch()
  losses = []
  for _ in range(40):
    state, metrics = train_step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.8 * losses[0], losses
  assert int(state.step) == 40


def _swan(lr: float):
  return optimizer.make_optimizer(optimizer_config("swan", lr=lr), 10, dimension_numbers=TOY_DIMS)


def test_gradient_accumulation_matches_full_batch():
  tx = optimizer.make_optimizer(optimizer_config("swan", lr=0.01), 10, dimension_numbers=TOY_DIMS)
  state = step_lib.init_state(_toy_params(), tx)
  full, m_full = step_lib.make_train_step(_toy_apply, tx)(state, _batch())
  accum, m_accum = step_lib.make_train_step(_toy_apply, tx, grad_accum=4)(state, _batch())
  np.testing.assert_allclose(m_full["loss"], m_accum["loss"], rtol=1e-6)
  chex.assert_trees_all_close(full.params, accum.params, atol=1e-6)


def test_non_finite_step_is_skipped_and_counted():
  tx = optimizer.make_optimizer(optimizer_config("swan", lr=0.01), 10, dimension_numbers=TOY_DIMS)
  params = _toy_params()
  state = step_lib.init_state(params, tx)
  bad = jax.tree.map(lambda x: x, params)
  bad["lm_head"]["kernel"] = bad["lm_head"]["kernel"].at[0, 0].set(jnp.nan)
  bad_state = state._replace(params=bad)
  new_state, metrics = jax.jit(step_lib.make_train_step(_toy_apply, tx))(bad_state, _batch())
  assert not bool(metrics["finite"])
  assert int(new_state.skipped) == 1 and int(new_state.step) == 1
  chex.assert_trees_all_equal(new_state.params, bad)
  chex.assert_trees_all_equal(new_state.opt_state, state.opt_state)


def _sharded(params, specs, mesh):
  return jax.device_put(params, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))


@pytest.mark.parametrize("name", ["adam", "swan", "sinkgd", "muon"])
def test_state_shardings_follow_params(name):
  mesh = mesh_lib.make_mesh("data=2,fsdp=2,tensor=2")
  specs = {
    "embed": {"embedding": P("tensor", "fsdp")},
    "layers": {"mlp": {"up": {"kernel": P(None, "fsdp", "tensor")}}},
    "lm_head": {"kernel": P("fsdp", "tensor")},
  }
  params = _sharded(_toy_params(), specs, mesh)
  tx = optimizer.make_optimizer(
    optimizer_config(name),
    10,
    dimension_numbers=TOY_DIMS,
    shardings=jax.tree.map(lambda x: x.sharding, params),
  )
  replicated = NamedSharding(mesh, P())
  shardings = step_lib.state_shardings(tx, params, replicated)
  state = jax.jit(lambda p: step_lib.init_state(p, tx), out_shardings=shardings)(params)
  (mu,) = [x.mu for x in jax.tree.leaves(state.opt_state, is_leaf=_is_adam) if _is_adam(x)]
  assert mu["embed"]["embedding"].sharding.spec == P("tensor", "fsdp")
  assert mu["lm_head"]["kernel"].sharding.spec == P("fsdp", "tensor")
  if name == "adam":  # swan and sinkgd keep no moments for the stacked matrices
    assert mu["layers"]["mlp"]["up"]["kernel"].sharding.spec == P(None, "fsdp", "tensor")
  if name == "muon":  # its momentum of the stacked kernel, its Adam's of the rest
    (momentum,) = [x.mu for x in jax.tree.leaves(state.opt_state, is_leaf=_is_muon) if _is_muon(x)]
    assert momentum["layers"]["mlp"]["up"]["kernel"].sharding.spec == P(None, "fsdp", "tensor")
    assert isinstance(mu["layers"]["mlp"]["up"]["kernel"], optax.MaskedNode)
    assert isinstance(momentum["lm_head"]["kernel"], optax.MaskedNode)
  assert state.step.sharding.spec == P() and shardings.step.spec == P()


def _is_adam(x):
  return isinstance(x, optax.ScaleByAdamState)


def _is_muon(x):
  return isinstance(x, optax.contrib.MuonState)


def test_state_shardings_pair_moments_with_their_own_param():
  """A parameter path that is a suffix of another's (``a/kernel``, ``b/a/kernel``) is no match."""
  mesh = mesh_lib.make_mesh("data=2,fsdp=2,tensor=2")
  ones = jnp.ones((8, 8))
  specs = {"a": {"kernel": P("fsdp", None)}, "b": {"a": {"kernel": P(None, "tensor")}}}
  params = _sharded({"a": {"kernel": ones}, "b": {"a": {"kernel": ones}}}, specs, mesh)
  tx = optax.adam(1e-3)
  shardings = step_lib.state_shardings(tx, params, NamedSharding(mesh, P()))
  for moments in (shardings.opt_state[0].mu, shardings.opt_state[0].nu):
    assert moments["a"]["kernel"].spec == P("fsdp", None)
    assert moments["b"]["a"]["kernel"].spec == P(None, "tensor")
  assert shardings.opt_state[0].count.spec == P()


@pytest.mark.parametrize(
  ("spec", "message"),
  [
    ("data=3", "has 3 devices but 8 are available"),
    ("data=2,model=4", "expected comma-separated AXIS=SIZE"),
    ("data=two", "expected comma-separated AXIS=SIZE"),
    ("data=0,fsdp=8", "expected comma-separated AXIS=SIZE"),
  ],
)
def test_bad_mesh_spec(spec, message):
  with pytest.raises(ValueError, match=message):
    mesh_lib.parse_mesh(spec, 8)


def test_mesh_spec_defaults():
  assert mesh_lib.parse_mesh(None, 8) == {"data": 8, "fsdp": 1, "tensor": 1}
  assert mesh_lib.parse_mesh("fsdp=4,tensor=2", 8) == {"data": 1, "fsdp": 4, "tensor": 2}


def test_update_on_auto_axes_moves_only_the_planned_all_to_alls():
  """The trainer's Auto mesh hides layouts inside jit; ``shardings=`` shows them to the update."""
  mesh = mesh_lib.make_mesh("data=2,fsdp=2,tensor=2")
  config = TrainConfig(model="tiny", batch_size=8, mesh="data=2,fsdp=2,tensor=2")
  exp = build.build(config, mesh, abstract=True)
  states = exp.state_sharding
  update = functools.partial(step_lib.apply_optimizer, exp.tx)
  compiled = (
    jax.jit(update, out_shardings=(states.params, states.opt_state))
    .lower(exp.state.params, exp.state.opt_state, exp.state.params)
    .compile()
  )
  moved = hlo.collective_bytes(compiled.as_text())
  plan = swan_optax.inspect.whitening_plan(
    exp.state.params, optimizer.dimension_numbers(exp.model_config), mesh
  )
  planned = sum(route.bytes_per_device for route in plan.values())
  assert moved.get("all-to-all", 0) > 0
  assert sum(moved.values()) <= 1.01 * planned + 2**16, (moved, planned)
