"""swan and sinkgd dropped into two kinds of third-party Flax LMs, layouts derived, not written.

A nanodo-like linen LM (``nn.Partitioned`` params, ``DenseGeneral`` attention,
a flax ``TrainState``) and a gemma-like NNX LM (``nnx.Einsum`` attention with a
fused k/v kernel, ``nnx.vmap``-stacked layers run by ``nnx.scan``,
``nnx.Optimizer``) each train a few steps on the shipped corpus.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
import pytest
from flax import nnx
from flax.training import train_state

import swan_optax
from tests import gemma_like
from train import data

D, HEADS, HEAD_DIM, FFN, LAYERS, SEQ, BATCH, STEPS = 32, 2, 16, 64, 2, 32, 8, 12
LR = 1e-2
OPTIMIZERS = {
  "swan": lambda dims: swan_optax.swan(LR, dimension_numbers=dims),
  # The papers' pairing at AdamW's learning rate: matrix steps of RMS LR, Adam at LR.
  "sinkgd": lambda dims: swan_optax.sinkgd(
    LR, scale_rule="unit_rms", adam_learning_rate=LR, dimension_numbers=dims
  ),
}


@pytest.fixture(scope="module")
def corpus():
  return data.load_corpus(data.DataConfig(seq_len=SEQ))


def _batches(corpus):
  batches = data.train_batches(corpus, batch_size=BATCH, seq_len=SEQ, seed=0)
  return [jax.tree.map(jnp.asarray, next(batches)) for _ in range(STEPS)]


def _cross_entropy(logits_BxLxV, targets_BxL):
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, targets_BxL).mean()


def _assert_learns(losses):
  print([round(x, 3) for x in losses])
  assert all(jnp.isfinite(x) for x in losses)
  assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses


# The nanodo-like linen LM.

_partitioned = lambda *names: nn.with_partitioning(nn.initializers.normal(0.02), names)


class _LinenBlock(nn.Module):
  @nn.compact
  def __call__(self, x_BxLxD):
    heads = functools.partial(
      nn.DenseGeneral,
      (HEADS, HEAD_DIM),
      use_bias=False,
      kernel_init=_partitioned("embed", "heads", "head_dim"),
    )
    y_BxLxD = nn.RMSNorm(name="attn_norm")(x_BxLxD)
    q, k, v = heads(name="query")(y_BxLxD), heads(name="key")(y_BxLxD), heads(name="value")(y_BxLxD)
    out_BxLxHxK = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    x_BxLxD += nn.DenseGeneral(
      D,
      axis=(-2, -1),
      use_bias=False,
      kernel_init=_partitioned("heads", "head_dim", "embed"),
      name="attn_out",
    )(out_BxLxHxK)
    y_BxLxD = nn.RMSNorm(name="mlp_norm")(x_BxLxD)
    h_BxLxF = nn.gelu(
      nn.Dense(FFN, kernel_init=_partitioned("embed", "mlp"), name="mlp_in")(y_BxLxD)
    )
    return x_BxLxD + nn.Dense(D, kernel_init=_partitioned("mlp", "embed"), name="mlp_out")(h_BxLxF)


class _LinenLM(nn.Module):
  vocab_size: int

  @nn.compact
  def __call__(self, tokens_BxL):
    embed = nn.Embed(self.vocab_size, D, embedding_init=_partitioned("vocab", "embed"))
    x_BxLxD = embed(tokens_BxL)
    for i in range(LAYERS):
      x_BxLxD = _LinenBlock(name=f"block_{i}")(x_BxLxD)
    return embed.attend(nn.RMSNorm(name="final_norm")(x_BxLxD))


# Each linen layer's einsum: the user's own code states them, the layouts follow.
_LINEN_EINSUMS = {
  "query": "BLD,DHK->BLHK",
  "key": "BLD,DHK->BLHK",
  "value": "BLD,DHK->BLHK",
  "attn_out": "BLHK,HKD->BLD",
  "mlp_in": "BLD,DF->BLF",
  "mlp_out": "BLF,FD->BLD",
}


def _linen_layouts(params):
  """Layouts of the boxed linen params, built on ``nn.unbox`` (paths without ``/value``)."""

  def dims(path, leaf):
    *_, module, name = (k.key for k in path)
    if name != "kernel":
      return None
    return swan_optax.dimension_numbers_from_einsum(_LINEN_EINSUMS[module])

  return jax.tree_util.tree_map_with_path(dims, nn.unbox(params))


@pytest.mark.slow
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_nanodo_like_linen_lm_trains(corpus, name):
  model = _LinenLM(corpus.tokenizer.vocab_size)
  params = model.init(jax.random.key(0), jnp.zeros((1, SEQ), jnp.int32))["params"]
  assert isinstance(params["block_0"]["query"]["kernel"], nn.Partitioned)
  tx = OPTIMIZERS[name](_linen_layouts(params))
  print(swan_optax.routing_table(params, dimension_numbers=_linen_layouts(params)))
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  @functools.partial(jax.jit, donate_argnums=0)
  def step(state, batch):
    def loss_fn(params):
      return _cross_entropy(state.apply_fn({"params": params}, batch["inputs"]), batch["targets"])

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss

  losses = []
  for batch in _batches(corpus):
    state, loss = step(state, batch)
    losses.append(float(loss))
  _assert_learns(losses)
  assert isinstance(state.params["block_0"]["query"]["kernel"], nn.Partitioned)


# The gemma-like NNX LM.


@pytest.mark.slow
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_gemma_like_nnx_lm_trains(corpus, name):
  shape = gemma_like.Shape(corpus.tokenizer.vocab_size, D, HEADS, HEAD_DIM, FFN, LAYERS)
  model = gemma_like.GemmaLikeLM(shape, nnx.Rngs(0))
  dims = swan_optax.dimension_numbers_from_model(model)
  assert dims["layers"]["attn"]["kv_einsum"]["kernel"] == swan_optax.MatrixDimensionNumbers(
    (3,), (2, 4)
  )  # (layers, 2, K, D, H): the layer and k/v axes are batch axes
  optimizer = nnx.Optimizer(model, OPTIMIZERS[name](dims), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, batch):
    loss_fn = lambda model: _cross_entropy(model(batch["inputs"]), batch["targets"])
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  _assert_learns([float(step(model, optimizer, batch)) for batch in _batches(corpus)])
