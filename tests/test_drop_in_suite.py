"""The drop-in suite: one small LM per framework, layouts from ``dimension_numbers_from_fn`` alone.

Each model's traced layouts are checked leaf by leaf against hand-written ones, then it trains 20
steps with ``swan`` and with ``sinkgd``. Linen: ``nn.scan`` blocks, a fused q/k/v kernel, a tied
embedding. NNX: a masked token mixer and a mixture of experts. Equinox: PyTorch-style ``(out, in)``
weights. Haiku: ``hk.MultiHeadAttention``. A plain function: a flat fused q/k/v kernel and an
``x @ w.T`` weight. Then every misuse the drop-in guide lists, asserted on its message.
"""

import equinox as eqx
import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import swan_optax

M = swan_optax.MatrixDimensionNumbers
VOCAB, D, HEADS, HEAD_DIM, FFN = 40, 16, 2, 8, 32
LAYERS, EXPERTS, SEQ, BATCH, STEPS = 2, 3, 8, 4, 20
LR = 1e-2
TOKENS = jax.ShapeDtypeStruct((BATCH, SEQ), jnp.int32)
OPTIMIZERS = {
  "swan": lambda dims: swan_optax.swan(LR, dimension_numbers=dims),
  "sinkgd": lambda dims: swan_optax.sinkgd(LR, adam_learning_rate=LR, dimension_numbers=dims),
}
IN_OUT, OUT_IN = M((0,), (1,)), M((1,), (0,))
_normal = nn.initializers.normal(0.1)


def _batches():
  """Tokens counting up from random starts; the next token is the target."""
  starts = jax.random.randint(jax.random.key(0), (STEPS, BATCH, 1), 0, VOCAB)
  tokens = (starts + jnp.arange(SEQ)) % VOCAB
  return [(t, (t + 1) % VOCAB) for t in tokens]


def _by_key(tree):
  """``{path: layout}`` of a layout tree, paths as ``routing_table`` prints them."""
  is_leaf = lambda x: x is None or isinstance(x, M)
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
  return {jax.tree_util.keystr(path, simple=True, separator="/"): x for path, x in flat}


def _trains(logits_fn, params, layouts, name):
  """20 steps of the optimizer: the loss falls and every matrix leaf moves."""
  tx = OPTIMIZERS[name](layouts)

  def loss_fn(params, tokens, targets):
    logits = logits_fn(params, tokens)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  @jax.jit
  def step(params, state, tokens, targets):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens, targets)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  state, before, losses = tx.init(params), params, []
  for tokens, targets in _batches():
    params, state, loss = step(params, state, tokens, targets)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses)), losses
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3, losses
  labels = jax.tree.leaves(swan_optax.param_labels(before, dimension_numbers=layouts))
  moved = [
    not np.allclose(a, b)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(params), strict=True)
  ]
  assert all(m for m, label in zip(moved, labels, strict=True) if label == "matrix")


def _assert_routes(params, layouts, to_adam):
  """The heads named in ``to_adam`` go to Adam by name, whatever their traced layout."""
  labels = _by_key(swan_optax.param_labels(params, dimension_numbers=layouts))
  assert {key for key, label in labels.items() if label == "adam"} >= set(to_adam)
  assert "a layout" not in swan_optax.routing_table(params, dimension_numbers=layouts)


# Linen: scanned blocks, a fused (d, 3, heads, head_dim) q/k/v kernel, a tied embedding.


class _LinenBlock(nn.Module):
  @nn.compact
  def __call__(self, x_BxTxD, _):
    y_BxTxD = nn.RMSNorm(name="attn_norm")(x_BxTxD)
    qkv = nn.DenseGeneral((3, HEADS, HEAD_DIM), use_bias=False, kernel_init=_normal, name="qkv")
    q, k, v = jnp.unstack(qkv(y_BxTxD), axis=2)
    attn_BxTxHxK = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    out = nn.DenseGeneral(D, axis=(-2, -1), use_bias=False, kernel_init=_normal, name="out")
    x_BxTxD = x_BxTxD + out(attn_BxTxHxK)
    y_BxTxD = nn.RMSNorm(name="mlp_norm")(x_BxTxD)
    h_BxTxF = nn.gelu(nn.Dense(FFN, kernel_init=_normal, name="up")(y_BxTxD))
    return x_BxTxD + nn.Dense(D, kernel_init=_normal, name="down")(h_BxTxF), None


class _LinenLM(nn.Module):
  @nn.compact
  def __call__(self, tokens_BxT):
    embed = nn.Embed(VOCAB, D, embedding_init=_normal, name="embed")
    blocks = nn.scan(
      _LinenBlock, variable_axes={"params": 0}, split_rngs={"params": True}, length=LAYERS
    )
    x_BxTxD, _ = blocks(name="blocks")(embed(tokens_BxT), None)
    return embed.attend(nn.RMSNorm(name="final_norm")(x_BxTxD))


def _linen():
  model = _LinenLM()
  params = model.init(jax.random.key(0), jnp.zeros((1, SEQ), jnp.int32))["params"]
  # (layers, ...) kernels: the layer axis is a batch axis, and so is the q/k/v axis.
  want = {
    "embed/embedding": OUT_IN,  # tied: gathered, and the logits are x @ E.T
    "final_norm/scale": None,
    "blocks/attn_norm/scale": None,
    "blocks/qkv/kernel": M((1,), (3, 4)),
    "blocks/out/kernel": M((1, 2), (3,)),
    "blocks/mlp_norm/scale": None,
    "blocks/up/kernel": M((1,), (2,)),
    "blocks/up/bias": None,
    "blocks/down/kernel": M((1,), (2,)),
    "blocks/down/bias": None,
  }
  return lambda p, tokens: model.apply({"params": p}, tokens), params, want, ["embed/embedding"]


# NNX: a causal token mixer (a masked (T, T) kernel) and a mixture of experts.


class _Experts(nnx.Module):
  def __init__(self, rngs):
    self.router = nnx.Linear(D, EXPERTS, use_bias=False, rngs=rngs)
    self.up = nnx.Param(_normal(rngs.params(), (EXPERTS, D, FFN)))
    self.down = nnx.Param(_normal(rngs.params(), (EXPERTS, FFN, D)))

  def __call__(self, x_BxTxD):
    gates_BxTxE = jax.nn.softmax(self.router(x_BxTxD))
    h_BxExTxF = jax.nn.gelu(jnp.einsum("btd,edf->betf", x_BxTxD, self.up[...]))
    y_BxExTxD = jnp.einsum("betf,efd->betd", h_BxExTxF, self.down[...])
    return jnp.einsum("betd,bte->btd", y_BxExTxD, gates_BxTxE)


class _NnxLM(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Embed(VOCAB, D, rngs=rngs)
    self.mixer = nnx.Param(_normal(rngs.params(), (SEQ, SEQ)))
    self.norm = nnx.RMSNorm(D, rngs=rngs)
    self.experts = _Experts(rngs)
    self.head = nnx.Linear(D, VOCAB, rngs=rngs)

  def __call__(self, tokens_BxT):
    x_BxTxD = self.embed(tokens_BxT)
    x_BxTxD = x_BxTxD + jnp.einsum("ts,bsd->btd", jnp.tril(self.mixer[...]), x_BxTxD)
    x_BxTxD = x_BxTxD + self.experts(self.norm(x_BxTxD))
    return self.head(x_BxTxD)


def _nnx():
  graphdef, state = nnx.split(_NnxLM(nnx.Rngs(0)))
  want = {
    "embed/embedding": None,
    "mixer": OUT_IN,  # y[t] = sum_s W[t, s] x[s]: s is fan_in
    "norm/scale": None,
    "experts/router/kernel": IN_OUT,
    "experts/up": M((1,), (2,)),  # each expert its own matrix
    "experts/down": M((1,), (2,)),
    "head/kernel": IN_OUT,
    "head/bias": None,
  }
  want = {f"{key}/value": dims for key, dims in want.items()}  # nnx.State boxes every leaf
  return lambda s, tokens: nnx.merge(graphdef, s)(tokens), state, want, ["head/kernel/value"]


# Equinox: (out, in) weights, one sequence per call.


class _EqxLM(eqx.Module):
  embed: eqx.nn.Embedding
  attn: eqx.nn.MultiheadAttention
  norm: eqx.nn.LayerNorm
  up: eqx.nn.Linear
  down: eqx.nn.Linear
  unembed: eqx.nn.Linear

  def __init__(self, key):
    keys = jax.random.split(key, 5)
    self.embed = eqx.nn.Embedding(VOCAB, D, key=keys[0])
    self.attn = eqx.nn.MultiheadAttention(HEADS, D, key=keys[1])
    self.norm = eqx.nn.LayerNorm(D)
    self.up = eqx.nn.Linear(D, FFN, key=keys[2])
    self.down = eqx.nn.Linear(FFN, D, key=keys[3])
    self.unembed = eqx.nn.Linear(D, VOCAB, key=keys[4])

  def __call__(self, tokens_T):
    x_TxD = jax.vmap(self.embed)(tokens_T)
    x_TxD = x_TxD + self.attn(x_TxD, x_TxD, x_TxD, mask=jnp.tril(jnp.ones((SEQ, SEQ), bool)))
    mlp = lambda x_D: x_D + self.down(jax.nn.gelu(self.up(self.norm(x_D))))
    return jax.vmap(lambda x_D: self.unembed(mlp(x_D)))(x_TxD)


def _equinox():
  params, static = eqx.partition(_EqxLM(jax.random.key(0)), eqx.is_array)
  projections = ("query_proj", "key_proj", "value_proj", "output_proj")
  want = {
    "embed/weight": None,
    **{f"attn/{name}/weight": OUT_IN for name in projections},
    "norm/weight": None,
    "norm/bias": None,
    **{
      f"{name}/{leaf}": OUT_IN if leaf == "weight" else None
      for name in ("up", "down", "unembed")
      for leaf in ("weight", "bias")
    },
  }
  forward = lambda p, tokens: jax.vmap(eqx.combine(p, static))(tokens)
  return forward, params, want, ["unembed/weight"]


# Haiku: hk.MultiHeadAttention and hk.Linear, (in, out) kernels.


def _haiku_forward(tokens_BxT):
  x_BxTxD = hk.Embed(VOCAB, D, name="embed")(tokens_BxT)
  y_BxTxD = hk.LayerNorm(-1, create_scale=True, create_offset=True, name="norm")(x_BxTxD)
  attn = hk.MultiHeadAttention(
    HEADS, HEAD_DIM, w_init=hk.initializers.VarianceScaling(), name="attn"
  )
  x_BxTxD = x_BxTxD + attn(y_BxTxD, y_BxTxD, y_BxTxD, mask=jnp.tril(jnp.ones((1, 1, SEQ, SEQ))))
  x_BxTxD = x_BxTxD + hk.Linear(D, name="down")(jax.nn.gelu(hk.Linear(FFN, name="up")(x_BxTxD)))
  return hk.Linear(VOCAB, name="unembed")(x_BxTxD)


def _haiku():
  net = hk.without_apply_rng(hk.transform(_haiku_forward))
  params = net.init(jax.random.key(0), jnp.zeros((1, SEQ), jnp.int32))
  linears = ("attn/query", "attn/key", "attn/value", "attn/linear", "up", "down", "unembed")
  want = {
    "embed/embeddings": None,
    "norm/scale": None,
    "norm/offset": None,
    **{f"{name}/{leaf}": IN_OUT if leaf == "w" else None for name in linears for leaf in "wb"},
  }
  return net.apply, params, want, ["unembed/w"]


# A plain function: a flat fused (d, 3 d) q/k/v kernel, a PyTorch-style (out, in) projection.


def _plain_forward(p, tokens_BxT):
  x_BxTxD = p["embed"][tokens_BxT]
  heads = lambda y_BxTxD: y_BxTxD.reshape(*y_BxTxD.shape[:2], HEADS, HEAD_DIM)
  q, k, v = (heads(y) for y in jnp.split(x_BxTxD @ p["qkv"], 3, axis=-1))
  attn_BxTxD = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(x_BxTxD.shape)
  x_BxTxD = x_BxTxD + attn_BxTxD @ p["proj"].T
  x_BxTxD = x_BxTxD + jax.nn.gelu(x_BxTxD @ p["up"]) @ p["down"]
  return x_BxTxD @ p["head"]


def _plain():
  shapes = {
    "embed": (VOCAB, D),
    "qkv": (D, 3 * D),
    "proj": (D, D),
    "up": (D, FFN),
    "down": (FFN, D),
    "head": (D, VOCAB),
  }
  keys = jax.random.split(jax.random.key(0), len(shapes))
  params = {
    name: _normal(key, shape) for key, (name, shape) in zip(keys, shapes.items(), strict=True)
  }
  want = {"embed": None, "qkv": IN_OUT, "proj": OUT_IN, "up": IN_OUT, "down": IN_OUT}
  return _plain_forward, params, want | {"head": IN_OUT}, ["head"]


MODELS = {"linen": _linen, "nnx": _nnx, "equinox": _equinox, "haiku": _haiku, "plain": _plain}


def _traced(framework):
  forward, params, want, heads = MODELS[framework]()
  if framework == "plain":
    with pytest.warns(UserWarning, match=r"leaf 'qkv' with shape \(16, 48\): its output is cut"):
      layouts = swan_optax.dimension_numbers_from_fn(forward, params, TOKENS)
  else:
    layouts = swan_optax.dimension_numbers_from_fn(forward, params, TOKENS)
  return forward, params, layouts, want, heads


@pytest.mark.parametrize("framework", MODELS)
def test_layouts_leaf_by_leaf(framework):
  _, params, layouts, want, heads = _traced(framework)
  assert nn.unbox(_by_key(layouts)) == want
  _assert_routes(params, layouts, heads)


@pytest.mark.slow
@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("framework", MODELS)
def test_trains_20_steps(framework, name):
  forward, params, layouts, _, _ = _traced(framework)
  _trains(forward, params, layouts, name)


def test_a_pytorch_style_weight_gets_its_own_shape_scaled_step():
  """``x @ w.T`` with ``w`` of shape (out, in) = (32, 8): traced as (out, in), SinkGD's spectral
  step is that of an 8 -> 32 map; assumed (in, out), it would be 4x smaller."""
  linear = eqx.nn.Linear(8, 32, use_bias=False, key=jax.random.key(0))
  params, static = eqx.partition(linear, eqx.is_array)
  layouts = swan_optax.dimension_numbers_from_fn(
    lambda p, x: eqx.combine(p, static)(x), params, jnp.zeros(8)
  )
  assert layouts == {"weight": OUT_IN}
  grads = jax.tree.map(lambda w: jax.random.normal(jax.random.key(1), w.shape), params)

  def rms(dims):
    tx = swan_optax.sinkgd(LR, scale_rule="spectral", dimension_numbers=dims)
    updates, _ = tx.update(grads, tx.init(params), params)
    return float(jnp.sqrt(jnp.mean(jnp.square(updates.weight))))

  np.testing.assert_allclose(rms(layouts), LR * np.sqrt(32 / 8) / np.sqrt(32), rtol=1e-4)
  np.testing.assert_allclose(rms(layouts) / rms(None), 4, rtol=1e-4)
  assert "1 x 32 x 8, assumed (in, out)" in swan_optax.routing_table(params)


# Misuse: each error says what to pass instead.


def test_a_linen_module_instead_of_a_function():
  forward, params, _, _ = _linen()
  with pytest.raises(TypeError, match=r"pass e.g. lambda p, x: model.apply\(\{'params': p\}, x\)"):
    swan_optax.dimension_numbers_from_fn(_LinenLM(), params, TOKENS)
  with pytest.raises(TypeError, match=r"trace it with swan_optax.dimension_numbers_from_fn\("):
    swan_optax.dimension_numbers_from_model(_LinenLM())


def test_layouts_of_the_variables_dict_used_on_the_params():
  model = _LinenLM()
  variables = model.init(jax.random.key(0), jnp.zeros((1, SEQ), jnp.int32))
  layouts = swan_optax.dimension_numbers_from_fn(model.apply, variables, TOKENS)
  message = (
    r"leaf 'blocks/down/kernel' with shape \(2, 32, 16\) is missing from dimension_numbers, "
    r"which has 'params/blocks/down/kernel': the layouts are one level above the params"
  )
  with pytest.raises(ValueError, match=message):
    swan_optax.swan(LR, dimension_numbers=layouts).init(variables["params"])


def test_a_leaf_missing_from_the_layouts_names_the_tracer():
  forward, params, _, _ = _linen()
  layouts = swan_optax.dimension_numbers_from_fn(forward, params, TOKENS)
  del layouts["blocks"]["up"]
  with pytest.raises(ValueError, match="'blocks/up/kernel' with shape") as error:
    swan_optax.sinkgd(LR, dimension_numbers=layouts).init(params)
  assert "swan_optax.dimension_numbers_from_fn(forward, params, example_input)" in str(error.value)
  assert "inject_hyperparams" not in str(error.value)


def test_equinox_layouts_under_inject_hyperparams():
  """Equinox layouts are dicts, not a callable module that a schedule would be taken for."""
  _, params, layouts, _, _ = _traced("equinox")
  assert isinstance(layouts, dict)
  tx = optax.inject_hyperparams(swan_optax.swan)(learning_rate=LR, dimension_numbers=layouts)
  state = tx.init(params)
  assert "dimension_numbers" not in state.hyperparams  # passed on as they are, not a schedule


def test_a_head_under_an_unknown_name_is_flagged():
  forward, params, _, _ = _plain()
  params["proj_out"] = params.pop("head")
  layouts = swan_optax.dimension_numbers_from_fn(
    lambda p, x: forward({**p, "head": p["proj_out"]}, x),
    params,
    TOKENS,
    overrides={"qkv": IN_OUT},
  )
  table = swan_optax.routing_table(params, dimension_numbers=layouts)
  assert "1 x 16 x 40, (vocab, d): an output head?" in table
  assert table.splitlines()[-1].startswith("1 matrix leaf has an axis as long as the vocabulary")
