"""A LLaMA in Flax NNX: pre-norm blocks of causal RoPE attention and a SwiGLU MLP.

Layers are stacked (one parameter array per weight, layer axis first) and run
with ``nnx.scan``, so compile time does not grow with depth. Every parameter
carries logical axis names (``out_sharding`` metadata) that
``models/sharding.py`` maps to mesh axes.

Training code uses the pure-function view: ``init_params`` returns the graph
definition and a plain dict of (sharded) arrays, and ``apply(graphdef, params,
tokens)`` computes logits, so optax sees an ordinary pytree.
"""

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh
from jax.sharding import NamedSharding

from models import sharding
from models.configs import LlamaConfig


def _init(config: LlamaConfig, *logical_axes: str | None) -> nnx.Initializer:
  """Normal(0, init_std) initializer annotated with logical axis names."""
  return nnx.with_partitioning(nnx.initializers.normal(config.init_std), logical_axes)


def _dtypes(config: LlamaConfig) -> dict[str, jnp.dtype]:
  """A layer's ``dtype`` (of its computation) and ``param_dtype`` (of its params and gradients)."""
  return {"dtype": jnp.dtype(config.dtype), "param_dtype": jnp.dtype(config.param_dtype)}


def rope(x_BxLxHxK: jax.Array, theta: float) -> jax.Array:
  """Rotary position embedding (LLaMA's half-split pairing), in float32.

  Pairs ``(x_i, x_{i+K/2})`` are rotated by angle ``p * theta^{-2i/K}`` at
  position ``p``, so ``<rope(q)_p, rope(k)_s>`` depends on ``p - s`` only.
  """
  length, head_dim = x_BxLxHxK.shape[1], x_BxLxHxK.shape[-1]
  freqs_K2 = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  angles_LxK2 = jnp.arange(length, dtype=jnp.float32)[:, None] * freqs_K2[None, :]
  cos, sin = jnp.cos(angles_LxK2)[:, None, :], jnp.sin(angles_LxK2)[:, None, :]
  x1, x2 = jnp.split(x_BxLxHxK.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  return rotated.astype(x_BxLxHxK.dtype)


class Attention(nnx.Module):
  """Causal multi-head self-attention with rotary embeddings."""

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    d, h, k = config.dim, config.num_heads, config.head_dim
    dtypes = _dtypes(config)
    qkv = functools.partial(
      nnx.Einsum,
      "BLD,DHK->BLHK",
      (d, h, k),
      **dtypes,
      rngs=rngs,
      kernel_init=_init(config, "embed", "heads", "head_dim"),
    )
    self.q, self.k, self.v = qkv(), qkv(), qkv()
    self.o = nnx.Einsum(
      "BLHK,HKD->BLD",
      (h, k, d),
      **dtypes,
      rngs=rngs,
      kernel_init=_init(config, "heads", "head_dim", "embed"),
    )
    self.rope_theta = config.rope_theta

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    q_BxLxHxK = rope(self.q(x_BxLxD), self.rope_theta)
    k_BxLxHxK = rope(self.k(x_BxLxD), self.rope_theta)
    out_BxLxHxK = jax.nn.dot_product_attention(
      q_BxLxHxK, k_BxLxHxK, self.v(x_BxLxD), is_causal=True
    )
    return self.o(out_BxLxHxK)


class Mlp(nnx.Module):
  """SwiGLU: ``down(silu(gate(x)) * up(x))``."""

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    d, f = config.dim, config.ffn_dim
    linear = functools.partial(nnx.Linear, use_bias=False, **_dtypes(config), rngs=rngs)
    self.gate = linear(d, f, kernel_init=_init(config, "embed", "mlp"))
    self.up = linear(d, f, kernel_init=_init(config, "embed", "mlp"))
    self.down = linear(f, d, kernel_init=_init(config, "mlp", "embed"))

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    return self.down(nnx.silu(self.gate(x_BxLxD)) * self.up(x_BxLxD))


def _rms_norm(config: LlamaConfig, rngs: nnx.Rngs) -> nnx.RMSNorm:
  return nnx.RMSNorm(
    config.dim,
    epsilon=config.norm_eps,
    **_dtypes(config),
    scale_init=nnx.with_partitioning(nnx.initializers.ones, ("norm",)),
    rngs=rngs,
  )


class Block(nnx.Module):
  """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    self.attn_norm = _rms_norm(config, rngs)
    self.attn = Attention(config, rngs=rngs)
    self.mlp_norm = _rms_norm(config, rngs)
    self.mlp = Mlp(config, rngs=rngs)

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    x_BxLxD = x_BxLxD + self.attn(self.attn_norm(x_BxLxD))
    return x_BxLxD + self.mlp(self.mlp_norm(x_BxLxD))


_STACKED = {nnx.PARTITION_NAME: "layers"}


class Llama(nnx.Module):
  """Token embedding, ``num_layers`` scanned blocks, final RMSNorm, untied lm_head."""

  def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
    dtypes = _dtypes(config)
    self.embed = nnx.Embed(
      config.vocab_size,
      config.dim,
      **dtypes,
      rngs=rngs,
      embedding_init=_init(config, "vocab", "embed"),
    )

    @nnx.split_rngs(splits=config.num_layers)
    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata=_STACKED)
    def stacked_blocks(rngs: nnx.Rngs) -> Block:
      return Block(config, rngs=rngs)

    self.layers = stacked_blocks(rngs)
    self.final_norm = _rms_norm(config, rngs)
    self.lm_head = nnx.Linear(
      config.dim,
      config.vocab_size,
      use_bias=False,
      **dtypes,
      rngs=rngs,
      kernel_init=_init(config, "embed", "vocab"),
    )

  def __call__(self, tokens_BxL: jax.Array) -> jax.Array:
    """Logits ``(batch, length, vocab)`` for int tokens ``(batch, length)``."""

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry, transform_metadata=_STACKED)
    def run_layers(x_BxLxD, block: Block):
      return block(x_BxLxD)

    x_BxLxD = run_layers(self.embed(tokens_BxL), self.layers)
    return self.lm_head(self.final_norm(x_BxLxD))


def _build(config: LlamaConfig, seed: int) -> Llama:
  # Placement comes from jit's out_shardings, not from a mesh in context.
  with nnx.use_eager_sharding(False):
    return Llama(config, rngs=nnx.Rngs(seed))


def abstract_model(config: LlamaConfig) -> Llama:
  """The model with ``jax.ShapeDtypeStruct`` params, allocating nothing."""
  return nnx.eval_shape(lambda: _build(config, 0))


def abstract_params(config: LlamaConfig) -> Any:
  """The params as ``jax.ShapeDtypeStruct`` (a dict like ``init_params``'), allocating nothing."""
  return nnx.to_pure_dict(nnx.state(abstract_model(config), nnx.Param))


def param_specs(config: LlamaConfig) -> Any:
  """Mesh ``PartitionSpec`` of every parameter (a dict like the params), without allocating."""
  with nnx.logical_axis_rules(sharding.RULES):
    specs = nnx.get_partition_spec(nnx.state(abstract_model(config), nnx.Param))
  return nnx.to_pure_dict(specs)


def init_params(config: LlamaConfig, mesh: Mesh, seed: int = 0) -> tuple[nnx.GraphDef, Any]:
  """Initializes the model directly into its shardings on ``mesh``.

  Returns:
    ``(graphdef, params)``: the static graph definition for :func:`apply` and a
    plain nested dict of ``jax.Array`` placed with ``NamedSharding``.
  """
  specs = param_specs(config)
  _check_divisible(abstract_params(config), specs, mesh, config)
  shardings = jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs)

  @functools.partial(jax.jit, out_shardings=shardings)
  def init():
    return nnx.to_pure_dict(nnx.state(_build(config, seed), nnx.Param))

  return nnx.graphdef(abstract_model(config)), init()


def abstract_init(config: LlamaConfig, mesh: Mesh) -> tuple[nnx.GraphDef, Any]:
  """Like :func:`init_params`, allocating nothing: ``jax.ShapeDtypeStruct`` params, sharded."""
  specs = param_specs(config)
  abstract = abstract_params(config)
  _check_divisible(abstract, specs, mesh, config)
  params = jax.tree.map(
    lambda x, spec: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec)),
    abstract,
    specs,
  )
  return nnx.graphdef(abstract_model(config)), params


def _check_divisible(abstract_params: Any, specs: Any, mesh: Mesh, config: LlamaConfig) -> None:
  """Raises a ValueError naming the parameter if a sharded dimension does not divide."""

  def check(path, leaf, spec):
    for size, axes in zip(leaf.shape, spec, strict=False):
      axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
      shards = math.prod(mesh.shape[a] for a in axes)
      if size % shards:
        raise ValueError(
          f"parameter '{jax.tree_util.keystr(path, simple=True, separator='/')}' of shape "
          f"{leaf.shape} ({config.dim=}, {config.num_heads=}, {config.ffn_dim=}, "
          f"{config.vocab_size=}) has a dimension of {size} that does not split over mesh axes "
          f"{axes} of size {shards} (mesh {dict(mesh.shape)}): choose a mesh whose fsdp and "
          "tensor sizes divide the model's dimensions"
        )

  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
  jax.tree_util.tree_map_with_path(check, abstract_params, specs, is_leaf=is_spec)


def apply(graphdef: nnx.GraphDef, params: Any, tokens_BxL: jax.Array) -> jax.Array:
  """Logits of the model ``graphdef`` with parameters ``params`` (a plain dict)."""
  return nnx.merge(graphdef, nnx.State(params))(tokens_BxL)
