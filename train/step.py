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

  An optimizer-state leaf mirrors a parameter when its key path ends with that
  parameter's key path (the longest such, so ``mu/b/a/kernel`` is ``b/a/kernel``'s,
  not ``a/kernel``'s) and it has the parameter's shape (Adam's ``mu`` and ``nu``,
  Muon's momentum, inside any ``optax.partition`` or ``chain``); it takes that
  parameter's sharding. Every other leaf (counters, Adafactor's factored row and
  column statistics) is replicated. Paths, unlike ``optax.tree_map_params``, need no
  call of the optimizer's ``init`` on a placeholder, which ``optax.contrib.muon``'s
  labels cannot take.
  """
  abstract = jax.eval_shape(functools.partial(init_state, tx=tx), params)
  flat_params, _ = jax.tree_util.tree_flatten_with_path(params)
  by_path = {tuple(map(str, path)): param for path, param in flat_params}

  def follow(path, leaf):
    keys = tuple(map(str, path))
    for start in range(len(keys)):
      param = by_path.get(keys[start:])
      if param is not None:
        return param.sharding if param.shape == leaf.shape else replicated
    return replicated

  opt_state = jax.tree_util.tree_map_with_path(follow, abstract.opt_state)
  return TrainState(replicated, jax.tree.map(lambda p: p.sharding, params), opt_state, replicated)
