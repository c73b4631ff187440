"""The Flax LLaMA: shapes, parameter counts, causal masking, RoPE, routing and sharding."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import swan_optax
from models import configs
from models import llama
from train import mesh as mesh_lib
from train import optimizer

# Untied embedding and lm_head, 4 attention and 3 MLP matrices and 2 norms a layer, a final
# norm: total = 2 V d + layers (4 d^2 + 3 d ffn + 2 d) + d.
PARAM_COUNTS = {"60m": 58_073_600, "130m": 134_105_856, "350m": 367_969_280, "1b": 1_339_082_752}


@pytest.fixture(scope="module")
def tiny():
  config = configs.get_config("tiny", max_seq_len=32)
  graphdef, params = llama.init_params(config, mesh_lib.make_mesh("data=8"), seed=0)
  return config, graphdef, params


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_galore_configs_have_the_closed_form_parameter_counts(name):
  config = configs.get_config(name)
  params = llama.abstract_params(config)
  assert sum(x.size for x in jax.tree.leaves(params)) == PARAM_COUNTS[name] == config.num_params


def test_shapes_and_dtypes(tiny):
  config, graphdef, params = tiny
  d, h, k, f, n = config.dim, config.num_heads, config.head_dim, config.ffn_dim, config.num_layers
  chex.assert_shape(params["layers"]["attn"]["q"]["kernel"], (n, d, h, k))
  chex.assert_shape(params["layers"]["attn"]["o"]["kernel"], (n, h, k, d))
  chex.assert_shape(params["layers"]["mlp"]["gate"]["kernel"], (n, d, f))
  chex.assert_shape(params["layers"]["mlp"]["down"]["kernel"], (n, f, d))
  chex.assert_shape(params["embed"]["embedding"], (config.vocab_size, d))
  chex.assert_shape(params["lm_head"]["kernel"], (d, config.vocab_size))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  tokens = jnp.zeros((2, 16), jnp.int32)
  logits = llama.apply(graphdef, params, tokens)
  chex.assert_shape(logits, (2, 16, config.vocab_size))
  chex.assert_tree_all_finite(logits)
  # Layers differ: each was initialized from its own key.
  q = params["layers"]["attn"]["q"]["kernel"]
  assert not np.allclose(q[0], q[1])
  np.testing.assert_allclose(np.std(q), config.init_std, rtol=0.05)


def test_bfloat16_activations_keep_float32_params():
  config = configs.get_config("tiny", dtype="bfloat16")
  graphdef, params = llama.init_params(config, mesh_lib.make_mesh("data=8"), seed=0)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  logits = llama.apply(graphdef, params, jnp.zeros((1, 8), jnp.int32))
  assert logits.dtype == jnp.bfloat16
  chex.assert_tree_all_finite(logits)


def test_bfloat16_params_give_bfloat16_gradients():
  config = configs.get_config("tiny", param_dtype="bfloat16")
  graphdef, params = llama.init_params(config, mesh_lib.make_mesh("data=8"), seed=0)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
  q = np.asarray(params["layers"]["attn"]["q"]["kernel"], np.float32)
  np.testing.assert_allclose(np.std(q), config.init_std, rtol=0.05)
  loss = lambda p: jnp.mean(llama.apply(graphdef, p, jnp.ones((1, 8), jnp.int32)) ** 2)
  grads = jax.grad(loss)(params)
  assert all(g.dtype == jnp.bfloat16 for g in jax.tree.leaves(grads))
  chex.assert_tree_all_finite(grads)


def test_causal_masking(tiny):
  config, graphdef, params = tiny
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, config.vocab_size)
  changed = tokens.at[:, 9].set((tokens[:, 9] + 1) % config.vocab_size)
  before, after = llama.apply(graphdef, params, tokens), llama.apply(graphdef, params, changed)
  np.testing.assert_allclose(before[:, :9], after[:, :9], atol=1e-6)
  assert np.abs(before[:, 9:] - after[:, 9:]).max() > 1e-4  # later positions do see it


def test_rope_is_a_rotation_depending_on_relative_position():
  q_1x16x1x8 = jax.random.normal(jax.random.key(0), (1, 16, 1, 8))
  k_1x16x1x8 = jax.random.normal(jax.random.key(1), (1, 16, 1, 8))
  same_q = jnp.broadcast_to(q_1x16x1x8[:, :1], q_1x16x1x8.shape)
  same_k = jnp.broadcast_to(k_1x16x1x8[:, :1], k_1x16x1x8.shape)
  rq, rk = llama.rope(same_q, 10_000.0), llama.rope(same_k, 10_000.0)
  # Norms are kept; position 0 is unrotated.
  np.testing.assert_allclose(jnp.linalg.norm(rq, axis=-1), jnp.linalg.norm(same_q, axis=-1), 1e-5)
  np.testing.assert_allclose(rq[:, 0], same_q[:, 0], atol=1e-6)
  # <rope(q)_p, rope(k)_s> depends only on p - s.
  scores = jnp.einsum("bphk,bshk->ps", rq, rk)
  for offset in (0, 3, 7):
    np.testing.assert_allclose(
      jnp.diagonal(scores, offset), scores[0, offset], rtol=1e-4, atol=1e-4
    )
  assert not np.allclose(scores[0, 1], scores[0, 0])


def test_routing_of_the_60m_config_stacked_kernels():
  config = configs.get_config("60m")
  params = llama.abstract_params(config)
  table = swan_optax.routing_table(params, dimension_numbers=optimizer.dimension_numbers(config))
  print(table)
  labels = swan_optax.param_labels(params, dimension_numbers=optimizer.dimension_numbers(config))
  groups = {
    "/".join(k.key for k in path): label
    for path, label in jax.tree_util.tree_flatten_with_path(labels)[0]
  }
  for name in ("attn/q", "attn/k", "attn/v", "attn/o", "mlp/gate", "mlp/up", "mlp/down"):
    assert groups[f"layers/{name}/kernel"] == "matrix", name
  for name in (
    "embed/embedding",
    "lm_head/kernel",
    "final_norm/scale",
    "layers/attn_norm/scale",
    "layers/mlp_norm/scale",
  ):
    assert groups[name] == "adam", name
  # Per-layer matrices with heads merged: 8 layers of 512 x 512 attention, 512 x 1376 MLP.
  assert "8 x 512 x 512" in table and "8 x 512 x 1376" in table and "8 x 1376 x 512" in table
  assert len(groups) == 12


def test_parameters_are_sharded_by_the_logical_rules():
  mesh = mesh_lib.make_mesh("data=2,fsdp=2,tensor=2")
  _, params = llama.init_params(configs.get_config("tiny"), mesh, seed=0)
  spec = lambda *path: params_at(params, path).sharding.spec
  params_at = lambda tree, path: (
    tree[path[0]] if len(path) == 1 else params_at(tree[path[0]], path[1:])
  )
  assert spec("layers", "attn", "q", "kernel") == P(None, "fsdp", "tensor", None)
  assert spec("layers", "attn", "o", "kernel") == P(None, "tensor", None, "fsdp")
  assert spec("layers", "mlp", "down", "kernel") == P(None, "tensor", "fsdp")
  assert spec("embed", "embedding") == P("tensor", "fsdp")
  assert spec("lm_head", "kernel") == P("fsdp", "tensor")


def test_same_seed_same_params_on_any_mesh(tiny):
  config, _, params = tiny
  _, sharded = llama.init_params(config, mesh_lib.make_mesh("data=2,fsdp=2,tensor=2"), seed=0)
  chex.assert_trees_all_close(params, sharded)


def test_a_config_that_does_not_divide_over_the_mesh_is_named():
  with pytest.raises(
    ValueError, match=r"layers/attn/.*does not split over mesh axes \('tensor',\)"
  ):
    llama.init_params(configs.get_config("tiny"), mesh_lib.make_mesh("tensor=8"), seed=0)


def test_bad_configs():
  with pytest.raises(ValueError, match="unknown model config 'huge'"):
    configs.get_config("huge")
  with pytest.raises(ValueError, match="positive integers"):
    configs.get_config("tiny", num_layers=0)
  with pytest.raises(ValueError, match="head_dim must be even"):
    configs.get_config("tiny", head_dim=7)
  with pytest.raises(ValueError, match="param_dtype must be 'float32' or 'bfloat16'"):
    configs.get_config("tiny", param_dtype="float16")
