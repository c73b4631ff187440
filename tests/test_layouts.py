"""Layouts derived from models and einsums, and routing that never falls back to Adam silently."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import swan_optax
from models import configs
from models import llama
from swan_optax import MatrixDimensionNumbers as Dims
from train import optimizer


def _normalized(dims):
  """Axes as tuples, so ``Dims(1, 2)`` equals ``Dims((1,), (2,))``."""
  as_tuple = lambda axes: (axes,) if isinstance(axes, int) else tuple(axes)
  return None if dims is None else Dims(as_tuple(dims[0]), as_tuple(dims[1]))


@pytest.mark.parametrize(
  ("einsum_str", "kwargs", "expected"),
  [
    ("BLD,DHK->BLHK", {}, Dims(0, (1, 2))),  # attention q (d, heads, head_dim)
    ("BLHK,HKD->BLD", {}, Dims((0, 1), 2)),  # attention o
    ("...D,DF->...F", {}, Dims(0, 1)),  # a dense layer
    ("BLD,DHK->BLHK", {"stacked_axes": 1}, Dims(1, (2, 3))),  # nnx.vmap-stacked q
    ("BNTH,NHK->BNTK", {}, Dims(1, 2)),  # per-head projection: heads are a batch axis
    ("BSD,CKDH->CBSKH", {}, Dims(2, (1, 3))),  # gemma fused k/v: two matrices
    ("BTD,SNDH->SBTNH", {}, Dims(2, (1, 3))),  # gemma fused q/k/v: three matrices
    ("BSD,CKDH->CBSKH", {"fused": "fan_out"}, Dims(2, (0, 1, 3))),
    ("BTD,DNH->NBTH", {}, Dims(0, (1, 2))),  # heads first in the output, not a fused axis
  ],
)
def test_dimension_numbers_from_einsum(einsum_str, kwargs, expected):
  dims = swan_optax.dimension_numbers_from_einsum(einsum_str, **kwargs)
  assert _normalized(dims) == _normalized(expected)


@pytest.mark.parametrize(
  ("einsum_str", "message"),
  [
    ("BLD,DHK", "explicit output"),
    ("BLD,DHK,K->BLH", "explicit output"),
    ("BLD,DDK->BLK", "distinct axis letters"),
    ("BLD,D->BL", "no fan_in or no fan_out"),
    ("BLD,DZK->BLK", "reaches neither"),
  ],
)
def test_bad_einsum_raises(einsum_str, message):
  with pytest.raises(ValueError, match=message):
    swan_optax.dimension_numbers_from_einsum(einsum_str)


class _Block(nnx.Module):
  def __init__(self, rngs):
    self.norm = nnx.RMSNorm(8, rngs=rngs)
    self.q = nnx.Einsum("BTD,NDH->BTNH", (2, 8, 4), rngs=rngs)
    self.kv = nnx.Einsum("BSD,CKDH->CBSKH", (2, 1, 8, 4), rngs=rngs)
    self.qkv = nnx.Einsum("BTD,SNDH->SBTNH", (3, 2, 8, 4), rngs=rngs)
    self.up = nnx.Linear(8, 16, rngs=rngs)
    self.down = nnx.LinearGeneral((2, 4), 8, axis=(-2, -1), rngs=rngs)
    self.heads = nnx.LinearGeneral(8, (2, 4), batch_axis={0: 3}, axis=-1, rngs=rngs)


class _Model(nnx.Module):
  def __init__(self, rngs, stacked: bool):
    self.embed = nnx.Embed(10, 8, rngs=rngs)
    if stacked:
      blocks = nnx.vmap(lambda r: _Block(r), in_axes=0, out_axes=0)
      self.block = nnx.split_rngs(splits=3)(blocks)(rngs)
    else:
      self.block = _Block(rngs)


@pytest.mark.parametrize("stacked", [False, True])
def test_dimension_numbers_from_model_matches_hand_derived(stacked):
  s = int(stacked)  # nnx.vmap puts the layer axis first
  dims = swan_optax.dimension_numbers_from_model(_Model(nnx.Rngs(0), stacked))
  block = jax.tree.map(_normalized, dims["block"], is_leaf=lambda x: isinstance(x, Dims))
  expected = {
    "q": Dims(1 + s, (s, 2 + s)),
    "kv": Dims(2 + s, (1 + s, 3 + s)),
    "qkv": Dims(2 + s, (1 + s, 3 + s)),
    "up": Dims(s, 1 + s),
    "down": Dims((s, 1 + s), 2 + s),
    "heads": Dims(1 + s, (2 + s, 3 + s)),  # its batch_axis (size 3) leads the kernel
  }
  assert {k: block[k]["kernel"] for k in expected} == jax.tree.map(
    _normalized, expected, is_leaf=lambda x: isinstance(x, Dims)
  )
  assert dims["embed"] == {"embedding": None}
  assert block["norm"] == {"scale": None}  # (3, 8) when stacked: rank 2, still Adam
  assert block["up"]["bias"] is None and block["heads"]["bias"] is None
  params = nnx.to_pure_dict(nnx.state(_Model(nnx.Rngs(0), stacked), nnx.Param))
  assert jax.tree.structure(params) == jax.tree.structure(
    dims, is_leaf=lambda x: x is None or isinstance(x, Dims)
  )


def test_dimension_numbers_from_model_fused_fan_out_is_one_argument_away():
  dims = swan_optax.dimension_numbers_from_model(_Model(nnx.Rngs(0), False), fused="fan_out")
  assert _normalized(dims["block"]["kv"]["kernel"]) == Dims((2,), (0, 1, 3))


class _WithCustomParam(nnx.Module):
  def __init__(self, rngs):
    self.mix = nnx.Param(jnp.ones((3, 4, 5)))
    self.out = nnx.Linear(5, 5, rngs=rngs)


def test_unknown_param_raises_naming_it_and_overrides_give_it():
  model = _WithCustomParam(nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"param 'mix' with shape \(3, 4, 5\).*overrides="):
    swan_optax.dimension_numbers_from_model(model)
  dims = swan_optax.dimension_numbers_from_model(model, overrides={"mix": Dims(1, 2)})
  assert dims["mix"] == Dims(1, 2)
  with pytest.raises(ValueError, match=r"\['nope'\], which are not params"):
    swan_optax.dimension_numbers_from_model(model, overrides={"nope": None})


# Our LLaMA's stacked kernels, derived by hand: the layer axis is a batch axis, heads merge
# into fan_out for q/k/v (d, H, hd) and into fan_in for o (H, hd, d).
_LLAMA_BY_HAND = {
  ("attn", "q"): Dims(1, (2, 3)),
  ("attn", "k"): Dims(1, (2, 3)),
  ("attn", "v"): Dims(1, (2, 3)),
  ("attn", "o"): Dims((1, 2), 3),
  ("mlp", "gate"): Dims(1, 2),
  ("mlp", "up"): Dims(1, 2),
  ("mlp", "down"): Dims(1, 2),
}


def test_llama_layouts_from_the_model_match_the_hand_derived_ones():
  config = configs.get_config("60m")
  derived = optimizer.dimension_numbers(config)
  for (layer, name), expected in _LLAMA_BY_HAND.items():
    got = derived["layers"][layer][name]["kernel"]
    assert _normalized(got) == _normalized(expected), (layer, name)
  labels = swan_optax.param_labels(llama.abstract_params(config), dimension_numbers=derived)
  matrices = {
    swan_optax._matrix.path_str(path)
    for path, label in jax.tree_util.tree_flatten_with_path(labels)[0]
    if label == "matrix"
  }
  assert matrices == {f"layers/{layer}/{name}/kernel" for layer, name in _LLAMA_BY_HAND}


def _params():
  return {
    "attn": {"q": {"kernel": jnp.ones((8, 2, 4))}, "o": {"kernel": jnp.ones((2, 4, 8))}},
    "mlp": {"kernel": jnp.ones((8, 16)), "bias": jnp.ones(16)},
  }


def _layouts():
  return {
    "attn": {"q": {"kernel": Dims(0, (1, 2))}, "o": {"kernel": Dims((0, 1), 2)}},
    "mlp": {"kernel": Dims(0, 1), "bias": None},
  }


@pytest.mark.parametrize("name", ["swan", "sinkgd"])
def test_a_kernel_missing_from_the_layout_tree_raises_naming_it(name):
  layouts = _layouts()
  del layouts["attn"]["o"]
  tx = getattr(swan_optax, name)(1e-3, dimension_numbers=layouts)
  with pytest.raises(
    ValueError, match=r"leaf 'attn/o/kernel' with shape \(2, 4, 8\) is missing"
  ) as e:
    tx.init(_params())
  # The hint names the tracer; inject_hyperparams is not involved, so it says nothing of it.
  assert "dimension_numbers_from_fn" in str(e.value) and "inject" not in str(e.value)
  with pytest.raises(ValueError, match="'attn/o/kernel'"):
    swan_optax.param_labels(_params(), dimension_numbers=layouts)
  # Explicit None is how a kernel goes to Adam.
  layouts["attn"]["o"] = {"kernel": None}
  labels = swan_optax.param_labels(_params(), dimension_numbers=layouts)
  assert labels["attn"] == {"q": {"kernel": "matrix"}, "o": {"kernel": "adam"}}


@pytest.mark.parametrize("level", ["above", "below"])
def test_layouts_one_level_off_say_so(level):
  """Layouts traced on a linen variables dict {'params': ...}, used on the inner params."""
  params, layouts = _params(), _layouts()
  if level == "above":
    layouts = {"params": layouts}
  else:
    params = {"params": params}
  key = "attn/o/kernel" if level == "above" else "params/attn/o/kernel"
  found = "params/attn/o/kernel" if level == "above" else "attn/o/kernel"
  with pytest.raises(
    ValueError, match=rf"leaf '{key}' .* which has '{found}': the layouts are one level {level}"
  ):
    swan_optax.swan(1e-3, dimension_numbers=layouts).init(params)


def _boxed(tree):
  """Like linen's ``nn.Partitioned`` params: every leaf behind a trailing ``value``."""
  return jax.tree.map(lambda x: nn.Partitioned(x, names=(None,) * x.ndim), tree)


def test_unboxed_layouts_fit_boxed_params():
  """A tree built from ``nn.unbox(params)`` routes the boxed params the same way."""
  boxed = _boxed(_params())
  labels = swan_optax.param_labels(boxed, dimension_numbers=_layouts())
  assert [label for label in jax.tree.leaves(labels)] == ["matrix", "matrix", "adam", "matrix"]
  tx = swan_optax.swan(1e-3, dimension_numbers=_layouts(), precision=jax.lax.Precision.HIGHEST)
  grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(0), p.shape), boxed)
  updates, _ = jax.jit(tx.update)(grads, tx.init(boxed), boxed)
  expected, _ = tx.update(nn.unbox(grads), tx.init(_params()), _params())
  np.testing.assert_allclose(
    updates["attn"]["q"]["kernel"].value, expected["attn"]["q"]["kernel"], rtol=1e-4, atol=1e-7
  )


def test_adam_pattern_matches_with_and_without_the_value_box():
  for params in (_params(), _boxed(_params())):
    labels = swan_optax.param_labels(
      params, dimension_numbers=_layouts(), adam_pattern=r"o/kernel$"
    )
    assert jax.tree.leaves(labels)[:2] == ["adam", "matrix"]  # attn/o, attn/q


def test_an_empty_matrix_group_raises():
  everything_to_adam = functools.partial(swan_optax.param_labels, adam_pattern=r".")
  tx = swan_optax.swan(1e-3, param_labels=everything_to_adam)
  with pytest.raises(ValueError, match="no leaf is routed to the stateless matrix group"):
    tx.init(_params())
  labels = jax.tree.map(lambda _: "adam", _params())
  with pytest.raises(ValueError, match="no leaf is routed"):
    swan_optax.sinkgd(param_labels=labels).init(_params())


def test_routing_table_flags_every_leaf_that_needs_a_layout():
  table = swan_optax.routing_table(_params())
  lines = table.splitlines()
  print(table)
  assert sum("NEEDS LAYOUT" in line for line in lines) == 2
  assert any(line.startswith("attn/o/kernel") and "NEEDS LAYOUT" in line for line in lines)
  assert lines[-2].startswith("2 leaves need a layout")
  assert len(lines) == 2 + len(jax.tree.leaves(_params())) + 2


def test_routing_table_says_which_layouts_were_assumed():
  """A 2-D leaf given no layout is read as (in, out): the table says so; given layouts are not."""
  params = {"mlp": {"kernel": jnp.ones((8, 32))}}
  (row, footer) = swan_optax.routing_table(params).splitlines()[2:]
  assert row.endswith("1 x 8 x 32, assumed (in, out)")
  assert footer.startswith("1 layout assumed (in, out): trace with")
  layouts = {"mlp": {"kernel": Dims(1, 0)}}  # a PyTorch-style (out, in) weight, traced or given
  (row,) = swan_optax.routing_table(params, dimension_numbers=layouts).splitlines()[2:]
  assert row.endswith("1 x 32 x 8")


HEADS = [
  "head/kernel",  # nanoGPT ports, minGPT
  "lm_head/kernel",  # GPT-2 (Hugging Face), levanter
  "output/weight",  # Llama
  "unembed/w",  # haiku, equinox examples
  "decoder/logits_dense/kernel",  # MaxText
  "logits/kernel",
  "transformer/wte/weight",  # nanoGPT's tied embedding (PyTorch names)
  "transformer/wpe/weight",
  "token_embedder/embedding",  # MaxText
  "embeddings/token_embeddings/weight",  # levanter
]
NOT_HEADS = [
  "encoder/layer/0/attention/output/dense/kernel",  # BERT's attention output
  "attn/output_proj/weight",  # equinox MultiheadAttention
  "attn/heads/kernel",
  "multi_head_attention/query/w",  # haiku
]


def _nested(key, leaf):
  *outer, last = key.split("/")
  for name in reversed(outer):
    leaf, last = {last: leaf}, name
  return {last: leaf}


@pytest.mark.parametrize("key", HEADS + NOT_HEADS)
def test_the_default_adam_pattern_knows_the_common_head_and_embedding_names(key):
  labels = swan_optax.param_labels(_nested(key, jnp.ones((16, 8))))
  assert jax.tree.leaves(labels) == ["adam" if key in HEADS else "matrix"]
  assert jax.tree.leaves(swan_optax.param_labels(_boxed(_nested(key, jnp.ones((16, 8)))))) == (
    ["adam" if key in HEADS else "matrix"]
  )


def test_routing_table_flags_a_vocabulary_sized_matrix():
  """An output head under a name the pattern misses still stands out."""
  params = {"tok_embed": jnp.ones((64, 8)), "proj": jnp.ones((8, 64)), "mlp": jnp.ones((8, 16))}
  lines = swan_optax.routing_table(params).splitlines()
  assert next(ln for ln in lines if ln.startswith("proj")).endswith(
    "1 x 8 x 64, assumed (in, out), (vocab, d): an output head?"
  )
  assert "output head" not in next(ln for ln in lines if ln.startswith("mlp"))
  assert lines[-1].startswith("1 matrix leaf has an axis as long as the vocabulary (64)")


def test_inject_hyperparams_with_a_layout_tree_and_a_layout_callable():
  params, grads = _params(), jax.tree.map(jnp.ones_like, _params())
  grads["attn"]["q"]["kernel"] = jax.random.normal(jax.random.key(1), (8, 2, 4))
  tx = optax.inject_hyperparams(swan_optax.swan)(learning_rate=1e-3, dimension_numbers=_layouts())
  state = tx.init(params)
  state.hyperparams["learning_rate"] = jnp.asarray(2e-3)
  updates, _ = jax.jit(tx.update)(grads, state, params)
  rms = jnp.sqrt(jnp.mean(jnp.square(updates["attn"]["q"]["kernel"])))
  np.testing.assert_allclose(rms, 2e-3, rtol=1e-4)
  # A callable is a schedule to inject_hyperparams: the error says what to do.
  layouts_of = lambda p: jax.tree.map(lambda x: Dims(0, tuple(range(1, x.ndim))), p)
  wrapped = optax.inject_hyperparams(swan_optax.sinkgd)
  with pytest.raises(ValueError, match=r"static_args='dimension_numbers'"):
    wrapped(learning_rate=1e-3, dimension_numbers=layouts_of).init(params)
  tx = optax.inject_hyperparams(swan_optax.sinkgd, static_args="dimension_numbers")(
    learning_rate=1e-3, dimension_numbers=layouts_of
  )
  jax.jit(tx.update)(grads, tx.init(params), params)


def test_nnx_optimizer_with_derived_layouts():
  """``nnx.Optimizer`` hands ``nnx.State`` (paths ending in ``value``) to the optimizer."""
  model = _Model(nnx.Rngs(0), stacked=True)
  dims = swan_optax.dimension_numbers_from_model(model)
  nnx_optimizer = nnx.Optimizer(model, swan_optax.swan(1e-2, dimension_numbers=dims), wrt=nnx.Param)
  before = nnx.to_pure_dict(nnx.clone(nnx.state(model, nnx.Param)))

  def loss(model):
    x = model.embed(jnp.arange(6).reshape(2, 3))
    q = jax.vmap(lambda b: b.q(x))(model.block)
    return jnp.mean(jnp.square(q - 1.0))

  nnx_optimizer.update(model, nnx.grad(loss)(model))
  after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  moved = after["block"]["q"]["kernel"] - before["block"]["q"]["kernel"]
  # Three stacked layers, each one matrix of RMS step 1e-2.
  np.testing.assert_allclose(jnp.sqrt(jnp.mean(moved**2, axis=(1, 2, 3))), 1e-2, rtol=1e-4)
  leaves = jax.tree.leaves(
    nnx_optimizer.opt_state, is_leaf=lambda x: isinstance(x, optax.MaskedNode)
  )
  assert any(isinstance(x, optax.MaskedNode) for x in leaves)
