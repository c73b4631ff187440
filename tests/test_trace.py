"""dimension_numbers_from_fn against hand-derived layouts: plain JAX, linen, NNX, equinox, haiku,
our LLaMA; the ops a leaf is followed through; the leaves it refuses, by name."""

import functools
import warnings

import equinox as eqx
import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import swan_optax
from models import configs
from models import llama
from tests import gemma_like
from train import mesh as mesh_lib
from train import optimizer

M = swan_optax.MatrixDimensionNumbers
D, HEADS, HEAD_DIM, FFN, LAYERS, VOCAB, SEQ = 8, 2, 4, 16, 2, 11, 5
TOKENS = jax.ShapeDtypeStruct((2, SEQ), jnp.int32)


def _structure(tree):
  """The tree's structure, a ``None`` or ``MatrixDimensionNumbers`` counted as a leaf."""
  return jax.tree.structure(tree, is_leaf=lambda x: x is None or isinstance(x, M))


def _assert_usable(params, dims):
  """The layouts route the params and build swan's state, as ``dimension_numbers=``."""
  labels = jax.tree.leaves(swan_optax.param_labels(params, dimension_numbers=dims))
  assert "matrix" in labels
  assert "a layout" not in swan_optax.routing_table(params, dimension_numbers=dims)
  swan_optax.swan(1e-3, dimension_numbers=dims).init(params)


def test_plain_function():
  params = {
    "embed": jnp.zeros((VOCAB, D)),
    "kernel": jnp.zeros((D, FFN)),
    "q": jnp.zeros((FFN, HEADS, HEAD_DIM)),
    "out": jnp.zeros((HEADS, HEAD_DIM, D)),
    "scale": jnp.zeros((D,)),
    "bias": jnp.zeros((SEQ, D)),
  }

  def fn(p, tokens):
    x = p["embed"][tokens] + p["bias"]
    q = jnp.einsum("BLF,FHK->BLHK", jax.nn.relu(x @ p["kernel"]), p["q"])
    return jnp.einsum("BLHK,HKD->BLD", q, p["out"]) * p["scale"]

  dims = swan_optax.dimension_numbers_from_fn(fn, params, tokens=TOKENS)
  assert dims == {
    "embed": None,
    "kernel": M((0,), (1,)),
    "q": M((0,), (1, 2)),
    "out": M((0, 1), (2,)),
    "scale": None,
    "bias": None,
  }
  _assert_usable(params, dims)


# A nanodo-like linen LM: DenseGeneral attention, nn.Partitioned params, a tied embedding.

_partitioned = lambda *names: nn.with_partitioning(nn.initializers.normal(0.02), names)


class _LinenBlock(nn.Module):
  @nn.compact
  def __call__(self, x_BxLxD):
    heads = functools.partial(
      nn.DenseGeneral, (HEADS, HEAD_DIM), kernel_init=_partitioned("embed", "heads", "head_dim")
    )
    y_BxLxD = nn.RMSNorm(name="attn_norm")(x_BxLxD)
    q, k, v = heads(name="query")(y_BxLxD), heads(name="key")(y_BxLxD), heads(name="value")(y_BxLxD)
    out_BxLxHxK = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    attn_out = nn.DenseGeneral(
      D, axis=(-2, -1), kernel_init=_partitioned("heads", "head_dim", "embed"), name="attn_out"
    )
    x_BxLxD += attn_out(out_BxLxHxK)
    y_BxLxD = nn.RMSNorm(name="mlp_norm")(x_BxLxD)
    h_BxLxF = nn.gelu(
      nn.Dense(FFN, kernel_init=_partitioned("embed", "mlp"), name="mlp_in")(y_BxLxD)
    )
    return x_BxLxD + nn.Dense(D, kernel_init=_partitioned("mlp", "embed"), name="mlp_out")(h_BxLxF)


class _LinenLM(nn.Module):
  @nn.compact
  def __call__(self, tokens_BxL):
    embed = nn.Embed(VOCAB, D, embedding_init=_partitioned("vocab", "embed"))
    x_BxLxD = embed(tokens_BxL)
    for i in range(LAYERS):
      x_BxLxD = _LinenBlock(name=f"block_{i}")(x_BxLxD)
    return embed.attend(nn.RMSNorm(name="final_norm")(x_BxLxD))


def test_linen_lm_as_in_the_readme():
  model = _LinenLM()
  tokens = jnp.zeros((1, SEQ), jnp.int32)
  params = model.init(jax.random.key(0), tokens)["params"]
  layouts = swan_optax.dimension_numbers_from_fn(
    lambda p, x: model.apply({"params": p}, x), params, tokens
  )
  block = {
    "attn_norm": {"scale": None},
    "query": {"kernel": M((0,), (1, 2)), "bias": None},
    "key": {"kernel": M((0,), (1, 2)), "bias": None},
    "value": {"kernel": M((0,), (1, 2)), "bias": None},
    "attn_out": {"kernel": M((0, 1), (2,)), "bias": None},
    "mlp_norm": {"scale": None},
    "mlp_in": {"kernel": M((0,), (1,)), "bias": None},
    "mlp_out": {"kernel": M((0,), (1,)), "bias": None},
  }
  # The embedding is gathered and used for the logits as x @ E.T: the dot's layout wins.
  want = {"Embed_0": {"embedding": M((1,), (0,))}, "final_norm": {"scale": None}}
  want |= {f"block_{i}": block for i in range(LAYERS)}
  assert isinstance(layouts["block_0"]["query"]["kernel"], nn.Partitioned)
  assert _structure(layouts) == _structure(params)
  assert nn.unbox(layouts) == want
  _assert_usable(params, layouts)
  # Overrides name a boxed leaf with or without its trailing 'value'.
  for key in ("Embed_0/embedding", "Embed_0/embedding/value"):
    overridden = swan_optax.dimension_numbers_from_fn(
      lambda p, x: model.apply({"params": p}, x), params, tokens, overrides={key: None}
    )
    assert nn.unbox(overridden) == want | {"Embed_0": {"embedding": None}}


class _LinenScanned(nn.Module):
  @nn.compact
  def __call__(self, x_BxD):
    block = lambda module, x, _: (
      x + nn.DenseGeneral((HEADS, D // HEADS))(x).reshape(x.shape),
      None,
    )
    layers = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True}, length=LAYERS)
    return layers(self, x_BxD, None)[0]


def test_linen_scanned_layers():
  model = _LinenScanned()
  params = model.init(jax.random.key(0), jnp.zeros((1, D)))["params"]
  layouts = swan_optax.dimension_numbers_from_fn(
    lambda p, x: model.apply({"params": p}, x), params, jnp.zeros((3, D))
  )
  # (layers, D, heads, head_dim): the layer axis is a batch axis.
  assert layouts == {"DenseGeneral_0": {"kernel": M((1,), (2, 3)), "bias": None}}


# A gemma-like NNX LM: a fused q/k/v nnx.Einsum, nnx.vmap-stacked layers run by nnx.scan (remat).


@pytest.mark.parametrize("fused", ["batch", "fan_out"])
def test_gemma_like_nnx_lm_equals_dimension_numbers_from_model(fused):
  shape = gemma_like.Shape(
    VOCAB, D, HEADS, HEAD_DIM, FFN, LAYERS, fused_qkv=True, tied=False, remat=True
  )
  model = gemma_like.GemmaLikeLM(shape, nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  layouts = swan_optax.dimension_numbers_from_fn(
    lambda state, tokens: nnx.merge(graphdef, state)(tokens), state, TOKENS, fused=fused
  )
  assert isinstance(layouts, nnx.State)
  assert _structure(layouts) == _structure(state)
  assert nnx.to_pure_dict(layouts) == swan_optax.dimension_numbers_from_model(model, fused=fused)
  # (layers, 3, K, D, H): the layer axis and, by default, the q/k/v axis are batch axes.
  qkv = nnx.to_pure_dict(layouts)["layers"]["attn"]["qkv_einsum"]["kernel"]
  assert qkv == (M((3,), (2, 4)) if fused == "batch" else M((3,), (1, 2, 4)))
  _assert_usable(state, layouts)


# An equinox transformer block and a haiku MLP: weights (out, in) and (in, out).


class _EqxBlock(eqx.Module):
  attn_norm: eqx.nn.LayerNorm
  attn: eqx.nn.MultiheadAttention
  mlp_norm: eqx.nn.LayerNorm
  up: eqx.nn.Linear
  down: eqx.nn.Linear

  def __init__(self, key):
    keys = jax.random.split(key, 3)
    self.attn_norm, self.mlp_norm = eqx.nn.LayerNorm(D), eqx.nn.LayerNorm(D)
    self.attn = eqx.nn.MultiheadAttention(HEADS, D, key=keys[0])
    self.up = eqx.nn.Linear(D, FFN, key=keys[1])
    self.down = eqx.nn.Linear(FFN, D, key=keys[2])

  def __call__(self, x_LxD):
    y_LxD = jax.vmap(self.attn_norm)(x_LxD)
    x_LxD = x_LxD + self.attn(y_LxD, y_LxD, y_LxD)
    mlp = lambda y_D: self.down(jax.nn.gelu(self.up(y_D)))
    return x_LxD + jax.vmap(mlp)(jax.vmap(self.mlp_norm)(x_LxD))


def _by_key(dims):
  flat = jax.tree_util.tree_flatten_with_path(dims, is_leaf=lambda x: isinstance(x, M))[0]
  return {jax.tree_util.keystr(path, simple=True, separator="/"): d for path, d in flat}


def test_equinox_transformer_block():
  params, static = eqx.partition(_EqxBlock(jax.random.key(0)), eqx.is_array)
  layouts = swan_optax.dimension_numbers_from_fn(
    lambda p, x: eqx.combine(p, static)(x), params, jax.ShapeDtypeStruct((SEQ, D), jnp.float32)
  )
  out_in = M((1,), (0,))
  projections = ("query_proj", "key_proj", "value_proj", "output_proj")
  assert _by_key(layouts) == {
    **{f"attn/{name}/weight": out_in for name in projections},
    "up/weight": out_in,
    "down/weight": out_in,
  }
  # Nested dicts, not a callable equinox module: the same paths, no function to call.
  assert layouts["up"]["bias"] is None and layouts["attn_norm"]["weight"] is None
  assert _structure(layouts).num_leaves == len(jax.tree.leaves(params))
  _assert_usable(params, layouts)


def test_haiku_mlp():
  net = hk.transform(lambda x: hk.Linear(D)(jax.nn.relu(hk.Linear(FFN)(x))))
  params = net.init(jax.random.key(0), jnp.zeros((1, D)))
  layouts = swan_optax.dimension_numbers_from_fn(
    lambda p, x: net.apply(p, None, x), params, jnp.zeros((3, D))
  )
  in_out = {"w": M((0,), (1,)), "b": None}
  assert layouts == {"linear": in_out, "linear_1": in_out}
  _assert_usable(params, layouts)


def test_llama_equals_the_trainers_layouts():
  config = configs.get_config("tiny")
  graphdef, params = llama.abstract_init(config, mesh_lib.make_mesh("fsdp=4,tensor=2"))
  layouts = swan_optax.dimension_numbers_from_fn(
    functools.partial(llama.apply, graphdef), params, TOKENS
  )
  assert layouts == optimizer.dimension_numbers(config)


# What a leaf is followed through: (fn, params, layouts).


@jax.custom_vjp
def _matmul(x, w):
  return x @ w


_matmul.defvjp(lambda x, w: (x @ w, (x, w)), lambda res, g: (g @ res[1].T, res[0].T @ g))


def _loop(body):
  return lambda p, x: jax.lax.fori_loop(0, LAYERS, lambda i, x: body(p["w"], i, x), x)


STACKED = {"w": jnp.zeros((LAYERS, D, D))}
KERNEL = {"w": jnp.zeros((D, D))}
_MASK = np.tril(np.ones((D, D), bool))  # closed over: a constant of the jaxpr
FOLLOWED = {
  "checkpoint": (lambda p, x: jax.checkpoint(lambda x: x @ p["w"])(x), KERNEL, M((0,), (1,))),
  "custom_vjp": (lambda p, x: _matmul(x, p["w"]), KERNEL, M((0,), (1,))),
  "transpose, cast and scale": (
    lambda p, x: x.astype(jnp.bfloat16) @ (2 * p["w"].T.astype(jnp.bfloat16)),
    KERNEL,
    M((1,), (0,)),
  ),
  "reshape (split)": (
    lambda p, x: jnp.einsum("LD,DHK->LHK", x, p["w"].reshape(D, HEADS, D // HEADS)),
    KERNEL,
    M((0,), (1,)),
  ),
  "reshape with dimensions": (
    lambda p, x: x @ jax.lax.reshape(p["w"], (D, D), dimensions=(1, 0)),
    KERNEL,
    M((1,), (0,)),
  ),
  "reshape (merge)": (
    lambda p, x: jnp.concatenate([x] * HEADS, -1) @ p["w"].reshape(HEADS * D, D),
    {"w": jnp.zeros((HEADS, D, D))},
    M((0, 1), (2,)),
  ),
  "scan over a stack": (
    lambda p, x: jax.lax.scan(lambda x, w: (x @ w, None), x, p["w"])[0],
    STACKED,
    M((1,), (2,)),
  ),
  "unstack": (lambda p, x: sum(x @ w for w in jnp.unstack(p["w"])), STACKED, M((1,), (2,))),
  "index in a loop": (_loop(lambda w, i, x: x @ w[i]), STACKED, M((1,), (2,))),
  "take in a loop": (_loop(lambda w, i, x: x @ jnp.take(w, i, axis=0)), STACKED, M((1,), (2,))),
  "while": (
    lambda p, x: jax.lax.while_loop(
      lambda c: c[0] < LAYERS, lambda c: (c[0] + 1, c[1] @ p["w"][c[0]]), (0, x)
    )[1],
    STACKED,
    M((1,), (2,)),
  ),
  "cond": (
    lambda p, x: jax.lax.cond(x[0, 0] > 0, lambda: x @ p["w"], lambda: x),
    KERNEL,
    M((0,), (1,)),
  ),
  "vmap over a stack": (
    lambda p, x: jax.vmap(jnp.matmul)(jnp.stack([x] * LAYERS), p["w"]),
    STACKED,
    M((1,), (2,)),
  ),
  "W @ x": (lambda p, x: (p["w"] @ x.T).T, KERNEL, M((1,), (0,))),
  # A PyTorch-style (out, in) weight.
  "x @ W.T": (lambda p, x: x @ p["w"].T, KERNEL, M((1,), (0,))),
  # Masks: constants, computed in fn or closed over.
  "tril": (lambda p, x: x @ jnp.tril(p["w"]), KERNEL, M((0,), (1,))),
  "where with a mask": (lambda p, x: x @ jnp.where(_MASK, p["w"], 0), KERNEL, M((0,), (1,))),
  "times a mask": (
    lambda p, x: (p["w"].T * jnp.tril(jnp.ones((D, D)))) @ x.T,
    KERNEL,
    M((0,), (1,)),
  ),
  # No fan_out axis: a batch of vectors, for Adam.
  "a batch of vectors": (
    lambda p, x: jnp.einsum("LHD,HD->LH", jnp.stack([x] * D, 1), p["w"]),
    KERNEL,
    None,
  ),
}


@pytest.mark.parametrize("name", FOLLOWED)
def test_followed_through(name):
  fn, params, want = FOLLOWED[name]
  layouts = swan_optax.dimension_numbers_from_fn(fn, params, jnp.zeros((3, D)))
  assert layouts == {"w": want}


def test_a_mask_passed_as_an_argument_is_data():
  """Decision: a param combined with an argument before any matmul is a bias or a scale."""
  fn = lambda p, x, mask: x @ jnp.where(mask, p["w"], 0)
  layouts = swan_optax.dimension_numbers_from_fn(fn, KERNEL, jnp.zeros((3, D)), _MASK)
  assert layouts == {"w": None}
  closed = swan_optax.dimension_numbers_from_fn(
    lambda p, x: fn(p, x, _MASK), KERNEL, jnp.zeros((3, D))
  )
  assert closed == {"w": M((0,), (1,))}


# Mixture of experts: every expert its own matrix, whichever form computes them.

EXPERTS, CAPACITY = 3, 4
_EXPERT_PARAMS = {
  "router": jnp.zeros((D, EXPERTS)),
  "up": jnp.zeros((EXPERTS, D, FFN)),
  "down": jnp.zeros((EXPERTS, FFN, D)),
}


def _combine(p, x_BxTxD, y_BxExTxD):
  gates_BxTxE = jax.nn.softmax(x_BxTxD @ p["router"])
  return jnp.einsum("betd,bte->btd", y_BxExTxD, gates_BxTxE)


def _moe_einsum(p, x_BxTxD):
  h_BxExTxF = jax.nn.gelu(jnp.einsum("btd,edf->betf", x_BxTxD, p["up"]))
  return _combine(p, x_BxTxD, jnp.einsum("betf,efd->betd", h_BxExTxF, p["down"]))


def _moe_vmap(p, x_BxTxD):
  expert = lambda up_DxF, down_FxD: jax.nn.gelu(x_BxTxD @ up_DxF) @ down_FxD
  return _combine(p, x_BxTxD, jax.vmap(expert, out_axes=1)(p["up"], p["down"]))


def _moe_capacity(p, x_BxTxD):
  """Tokens dispatched to (expert, capacity) slots, as in MaxText and Switch."""
  choice_BxTxE = jax.nn.one_hot(jnp.argmax(x_BxTxD @ p["router"], -1), EXPERTS)
  dispatch_BxTxExC = choice_BxTxE[..., None] * jnp.ones(CAPACITY)
  x_ExCxD = jnp.einsum("btd,btec->ecd", x_BxTxD, dispatch_BxTxExC)
  h_ExCxF = jax.nn.gelu(jnp.einsum("ecd,edf->ecf", x_ExCxD, p["up"]))
  y_ExCxD = jnp.einsum("ecf,efd->ecd", h_ExCxF, p["down"])
  return jnp.einsum("ecd,btec->btd", y_ExCxD, dispatch_BxTxExC)


def _moe_ragged(p, x_BxTxD):
  """Tokens sorted by expert, each group through its expert: MaxText's megablox, ragged_dot."""
  x_NxD = x_BxTxD.reshape(-1, D)
  sizes_E = jnp.full(EXPERTS, x_NxD.shape[0] // EXPERTS).at[0].add(x_NxD.shape[0] % EXPERTS)
  h_NxF = jax.nn.gelu(jax.lax.ragged_dot(x_NxD, p["up"], sizes_E))
  gates_N = jax.nn.softmax(x_NxD @ p["router"]).max(-1, keepdims=True)
  return (gates_N * jax.lax.ragged_dot(h_NxF, p["down"], sizes_E)).reshape(x_BxTxD.shape)


MOE = {"einsum": _moe_einsum, "vmap": _moe_vmap, "capacity": _moe_capacity, "ragged": _moe_ragged}


@pytest.mark.parametrize("form", MOE)
def test_experts_are_separate_matrices_in_every_form(form):
  layouts = swan_optax.dimension_numbers_from_fn(MOE[form], _EXPERT_PARAMS, jnp.zeros((2, SEQ, D)))
  assert layouts == {"router": M((0,), (1,)), "up": M((1,), (2,)), "down": M((1,), (2,))}


def test_experts_without_a_second_kernel_read_as_one_matrix():
  """Decision: only another kernel's batch axis tells experts from heads, so an expert axis
  combined by the router alone is fan_out (one matrix, as the linear map it is); the drop-in
  guide says so and points to overrides."""
  fn = lambda p, x: _combine(p, x, jnp.einsum("btd,edf->betf", x, p["up"])[..., :D])
  params = {"router": _EXPERT_PARAMS["router"], "up": _EXPERT_PARAMS["up"]}
  layouts = swan_optax.dimension_numbers_from_fn(fn, params, jnp.zeros((2, SEQ, D)))
  assert layouts["up"] == M((1,), (0, 2))


# A flat fused projection cut into blocks: one matrix, and a warning naming the fix.

FLAT = {"qkv": jnp.zeros((D, 3 * D))}
CUT = {
  "split": lambda y: sum(jnp.split(y, 3, -1)),
  "slices": lambda y: y[..., :D] * y[..., D : 2 * D] + y[..., 2 * D :],
  "reshape and unpack": lambda y: sum(jnp.moveaxis(y.reshape(*y.shape[:-1], 3, D), -2, 0)),
}
NOT_CUT = {
  "one slice (a padded vocabulary)": lambda y: y[..., :D],
  "halves of each head (RoPE)": lambda y: sum(jnp.split(y.reshape(*y.shape[:-1], 6, -1), 2, -1)),
}


@pytest.mark.parametrize("name", CUT)
def test_a_flat_fused_projection_warns_naming_the_override(name):
  fn = lambda p, x: CUT[name](x @ p["qkv"])
  with pytest.warns(UserWarning, match=r"leaf 'qkv' with shape \(8, 24\): its output is cut"):
    layouts = swan_optax.dimension_numbers_from_fn(fn, FLAT, jnp.zeros((3, D)))
  assert layouts == {"qkv": M((0,), (1,))}
  overrides = {"qkv": M((0,), (1,))}
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    swan_optax.dimension_numbers_from_fn(fn, FLAT, jnp.zeros((3, D)), overrides=overrides)


@pytest.mark.parametrize("name", NOT_CUT)
def test_cuts_that_are_not_blocks_of_the_kernel_do_not_warn(name):
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    layouts = swan_optax.dimension_numbers_from_fn(
      lambda p, x: NOT_CUT[name](x @ p["qkv"]), FLAT, jnp.zeros((3, D))
    )
  assert layouts == {"qkv": M((0,), (1,))}


# Leaves without a layout: each named, with its shape; overrides settle them.

REFUSED = {
  "two roles": (lambda p, x: x @ p["w"] + (p["w"] @ x.T).T, "has two roles"),
  "convolution": (
    lambda p, x: jax.lax.conv_general_dilated(x[None, None], p["w"][None, None], (1, 1), "SAME"),
    "feeds a convolution",
  ),
  "an axis in two roles": (
    lambda p, x: x @ p["w"].reshape(-1).reshape(D, D),
    r"has axes \[0, 1\] merged or split so that one dot_general gives their pieces different",
  ),
  "unused": (lambda p, x: x, "is not used by fn"),
  "a product of params": (lambda p, x: x @ (p["w"] @ p["w"]), "is multiplied with another param"),
  "an op not followed": (
    lambda p, x: x * jnp.sum(p["w"]),
    "reaches no dot_general, and ends in reduce_sum",
  ),
}


@pytest.mark.parametrize("name", REFUSED)
def test_refused_leaf_is_named(name):
  fn, reason = REFUSED[name]
  with pytest.raises(ValueError, match=rf"leaf 'w' with shape \(8, 8\) {reason}.*overrides="):
    swan_optax.dimension_numbers_from_fn(fn, KERNEL, jnp.zeros((3, D)))
  layouts = swan_optax.dimension_numbers_from_fn(
    fn, KERNEL, jnp.zeros((3, D)), overrides={"w": None}
  )
  assert layouts == {"w": None}


def test_every_refused_leaf_is_counted():
  params = {"v": jnp.zeros((D, D)), "w": jnp.zeros((D, D))}
  with pytest.raises(ValueError, match=r"leaf 'v' .* \(1 more leaf needs them too\)"):
    swan_optax.dimension_numbers_from_fn(lambda p, x: x, params, jnp.zeros((3, D)))


@pytest.mark.parametrize(
  "options, message",
  [({"overrides": {"v": None}}, r"overrides name \['v'\]"), ({"fused": "no"}, "fused")],
)
def test_bad_options_raise(options, message):
  with pytest.raises(ValueError, match=message):
    swan_optax.dimension_numbers_from_fn(
      lambda p, x: x @ p["w"], KERNEL, jnp.zeros((3, D)), **options
    )
