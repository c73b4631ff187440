"""The train state and the pure train and eval steps; the state's shardings."""

import functools
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

ApplyFn = Callable[[Any, jax.Array], jax.Array]  # (params, tokens_BxL) -> logits_BxLxV


class TrainState(NamedTuple):
  step: jax.Array  # int32 scalar
  params: Any
  opt_state: Any
  skipped: jax.Array  # int32 scalar: updates skipped for non-finite loss or gradients


def init_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
  zero = jnp.zeros((), jnp.int32)
  return TrainState(zero, params, tx.init(params), zero)


def token_losses(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> jax.Array:
  """Next-token cross entropy ``-log softmax(logits)[target]`` of every token, in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(
    logits_BxLxV.astype(jnp.float32), targets_BxL
  )


def next_token_loss(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> jax.Array:
  """Mean next-token cross entropy, in float32."""
  return jnp.mean(token_losses(logits_BxLxV, targets_BxL))


def make_loss_fn(apply_fn: ApplyFn) -> Callable[[Any, dict], jax.Array]:
  """``loss_fn(params, batch)``: mean cross entropy of ``batch['targets']`` given its inputs."""
  return lambda params, batch: next_token_loss(apply_fn(params, batch["inputs"]), batch["targets"])


def apply_optimizer(
  tx: optax.GradientTransformation, grads: Any, opt_state: Any, params: Any
) -> tuple[Any, Any]:
  """One optimizer update: ``(params + tx.update(grads), new opt_state)``."""
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def make_train_step(
  apply_fn: ApplyFn,
  tx: optax.GradientTransformation,
  *,
  grad_accum: int = 1,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """``train_step(state, batch) -> (state, metrics)``.

  The batch is split into ``grad_accum`` micro-batches whose gradients are
  averaged in float32 (a ``lax.scan``, so activations of one micro-batch at a
  time). A step whose loss or gradients are not finite leaves params and
  optimizer state unchanged and counts it in ``skipped``; ``metrics['finite']``
  tells the caller, whose policy decides whether to stop.
  """
  loss_fn = make_loss_fn(apply_fn)
  update = functools.partial(apply_optimizer, tx)

  def micro_batches(batch):
    return jax.tree.map(lambda x: x.reshape(grad_accum, -1, *x.shape[1:]), batch)

  def accumulate(params, batch):
    def body(acc, micro):
      loss, grads = jax.value_and_grad(loss_fn)(params, micro)
      return jax.tree.map(jnp.add, acc, (loss, grads)), None

    # Summed in float32: bfloat16 sums of micro-batch gradients would round at every add.
    zeros = jax.tree.map(lambda x: jnp.zeros_like(x, jnp.float32), (0.0, params))
    (loss, grads), _ = jax.lax.scan(body, zeros, micro_batches(batch))
    return jax.tree.map(lambda x: x / grad_accum, (loss, grads))

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    if grad_accum == 1:
      loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
    else:
      loss, grads = accumulate(state.params, batch)
    params, opt_state = update(grads, state.opt_state, state.params)
    grad_norm = optax.tree.norm(optax.tree.cast(grads, jnp.float32))
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = TrainState(
      step=state.step + 1,
      params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state),
      skipped=state.skipped + (~finite).astype(jnp.int32),
    )
    return new_state, {"loss": loss, "grad_norm": grad_norm, "finite": finite}

  return train_step


def make_eval_step(apply_fn: ApplyFn) -> Callable[[Any, dict], tuple[jax.Array, jax.Array]]:
  """``eval_step(params, batch) -> (summed token loss, token count)``."""

  def eval_step(params, batch):
    losses = token_losses(apply_fn(params, batch["inputs"]), batch["targets"])
    return jnp.sum(losses), jnp.asarray(losses.size, jnp.float32)

  return eval_step


def state_bytes(tree: Any) -> int:
  """Bytes held by the arrays of a (possibly abstract) tree."""
  return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def state_shardings(
  tx: optax.GradientTransformation, params: Any, replicated: jax.sharding.Sharding
) -> TrainState:
  """Shardings of ``init_state(params, tx)``: optimizer leaves follow the params they mirror.

  ``optax.tree_map_params`` pairs each optimizer-state leaf that mirrors a
  parameter (Adam's ``mu`` and ``nu``) with that parameter, by position in the
  state's structure; such a leaf takes the parameter's sharding unless its
  shape differs (Adafactor's factored row/column statistics), and every other
  leaf (counters, factored statistics) is replicated.
  """
  abstract = jax.eval_shape(functools.partial(init_state, tx=tx), params)

  def follow(leaf, param):
    if isinstance(leaf, optax.MaskedNode):  # a parameter routed to another optimizer
      return leaf
    return param.sharding if leaf.shape == param.shape else replicated

  opt_state = optax.tree_map_params(
    tx,
    follow,
    abstract.opt_state,
    params,
    transform_non_params=lambda _: replicated,
    is_leaf=lambda x: isinstance(x, optax.MaskedNode),
  )
  return TrainState(replicated, jax.tree.map(lambda p: p.sharding, params), opt_state, replicated)
