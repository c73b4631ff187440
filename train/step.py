"""Optimizers, the train state and the pure, jitted train and eval steps."""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any
from typing import Literal
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

import swan_optax
from models import llama

OptimizerName = Literal["swan", "sinkgd", "adam", "adamw"]
# Peak learning rates of the benchmark protocol (SPEC 5 and 7.2).
DEFAULT_LR: dict[str, float] = {"swan": 1e-3, "sinkgd": 0.02, "adam": 1e-3, "adamw": 1e-3}
# Mesh axes SWAN spreads layer stacks over to whiten whole matrices (longest dividing prefix).
WHOLE_MATRIX_AXES = ("fsdp", "data", "tensor")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  name: OptimizerName = "swan"
  lr: float | None = None  # None: DEFAULT_LR[name]
  steps: int = 1000
  warmup_fraction: float = 0.1
  final_lr_fraction: float = 0.1
  weight_decay: float = 0.0
  max_grad_norm: float | None = None
  # swan/sinkgd: the non-matrix leaves' optimizer; "adafactor" makes the whole state tiny.
  non_matrix: Literal["adam", "adafactor"] = "adam"
  # swan on a mesh: whiten whole matrices, the layer stacks spread over these mesh axes
  # (() keeps each matrix in its parameter's layout: gathered where it is sharded).
  whiten_over: tuple[str, ...] = WHOLE_MATRIX_AXES

  @property
  def peak_lr(self) -> float:
    return DEFAULT_LR[self.name] if self.lr is None else self.lr


def make_optimizer(
  config: OptimizerConfig, mesh: jax.sharding.Mesh | None = None
) -> optax.GradientTransformation:
  """The named optimizer with linear warmup and cosine decay to ``final_lr_fraction``.

  ``mesh``: the device mesh the params live on (for SWAN's whole-matrix layout).
  """
  peak = config.peak_lr
  schedule = optax.warmup_cosine_decay_schedule(
    0.0,
    peak,
    max(1, int(config.warmup_fraction * config.steps)),
    max(config.steps, 2),
    config.final_lr_fraction * peak,
  )
  if config.name in ("swan", "sinkgd"):
    stateless = {"swan": swan_optax.swan, "sinkgd": swan_optax.sinkgd}[config.name]
    extra = {}
    if config.non_matrix == "adafactor":
      # Absolute step sizes, like Adam's (not relative to each parameter's RMS).
      extra["non_matrix_optimizer"] = optax.adafactor(
        schedule, multiply_by_parameter_scale=False, weight_decay_rate=config.weight_decay or None
      )
    if config.name == "swan" and mesh is not None and config.whiten_over:
      spec = jax.sharding.PartitionSpec(config.whiten_over)
      extra["whole_matrix_sharding"] = jax.sharding.NamedSharding(mesh, spec)
    tx = stateless(
      schedule,
      dimension_numbers=llama.dimension_numbers,
      weight_decay=config.weight_decay,
      adam_weight_decay=config.weight_decay,
      **extra,
    )
  elif config.name == "adam":
    tx = optax.adam(schedule)
  elif config.name == "adamw":
    tx = optax.adamw(schedule, weight_decay=config.weight_decay)
  else:
    raise ValueError(f"unknown optimizer {config.name!r}; choose swan, sinkgd, adam or adamw")
  if config.max_grad_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), tx)
  return tx


class TrainState(NamedTuple):
  step: jax.Array  # int32 scalar
  params: Any
  opt_state: Any
  skipped: jax.Array  # int32 scalar: updates skipped for non-finite loss or gradients


def init_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
  zero = jnp.zeros((), jnp.int32)
  return TrainState(zero, params, tx.init(params), zero)


def next_token_loss(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> jax.Array:
  """Mean next-token cross entropy, in float32."""
  losses = optax.softmax_cross_entropy_with_integer_labels(
    logits_BxLxV.astype(jnp.float32), targets_BxL
  )
  return jnp.mean(losses)


def make_train_step(
  apply_fn: Callable[[Any, jax.Array], jax.Array],
  tx: optax.GradientTransformation,
  *,
  grad_accum: int = 1,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """``train_step(state, batch) -> (state, metrics)``.

  ``apply_fn(params, tokens_BxL) -> logits_BxLxV``. The batch is split into
  ``grad_accum`` micro-batches whose gradients are averaged (a ``lax.scan``, so
  activations of one micro-batch at a time). A step whose loss or gradients are
  not finite leaves params and optimizer state unchanged and counts it in
  ``skipped``; ``metrics['finite']`` tells the caller, whose policy decides
  whether to stop.
  """

  def loss_fn(params, batch):
    return next_token_loss(apply_fn(params, batch["inputs"]), batch["targets"])

  def micro_batches(batch):
    return jax.tree.map(lambda x: x.reshape(grad_accum, -1, *x.shape[1:]), batch)

  def accumulate(params, batch):
    def body(acc, micro):
      loss, grads = jax.value_and_grad(loss_fn)(params, micro)
      return jax.tree.map(jnp.add, acc, (loss, grads)), None

    zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    (loss, grads), _ = jax.lax.scan(body, zeros, micro_batches(batch))
    return jax.tree.map(lambda x: x / grad_accum, (loss, grads))

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    if grad_accum == 1:
      loss, grads = jax.value_and_grad(loss_fn)(state.params, batch)
    else:
      loss, grads = accumulate(state.params, batch)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    new_state = TrainState(
      step=state.step + 1,
      params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state),
      skipped=state.skipped + (~finite).astype(jnp.int32),
    )
    metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite}
    return new_state, metrics

  return train_step


def create_state(
  params: Any, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh
) -> tuple[TrainState, Any]:
  """The initial train state placed on ``mesh``, and its shardings (moments follow their params)."""
  init = functools.partial(init_state, tx=tx)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  shardings = state_shardings(jax.eval_shape(init, params), params, replicated)
  return jax.jit(init, out_shardings=shardings)(params), shardings


def jit_train_step(
  apply_fn: Callable[[Any, jax.Array], jax.Array],
  tx: optax.GradientTransformation,
  state_sharding: Any,
  batch_sharding: jax.sharding.NamedSharding,
  *,
  grad_accum: int = 1,
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The train step compiled with explicit shardings; the old state's buffers are donated."""
  replicated = jax.sharding.NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec())
  return jax.jit(
    make_train_step(apply_fn, tx, grad_accum=grad_accum),
    in_shardings=(state_sharding, batch_sharding),
    out_shardings=(state_sharding, replicated),
    donate_argnums=0,
  )


def make_eval_step(apply_fn: Callable[[Any, jax.Array], jax.Array]) -> Callable:
  """``eval_step(params, batch) -> (summed token loss, token count)``."""

  def eval_step(params, batch):
    logits = apply_fn(params, batch["inputs"])
    losses = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), batch["targets"]
    )
    return jnp.sum(losses), jnp.asarray(losses.size, jnp.float32)

  return eval_step


def state_bytes(tree: Any) -> int:
  """Bytes held by the arrays of a (possibly abstract) tree."""
  return sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def state_shardings(abstract_state: Any, params: Any, replicated: jax.sharding.Sharding) -> Any:
  """Shardings for a state tree: each leaf shaped like a parameter shares its sharding.

  Optimizer moments sit at paths ending in their parameter's path (e.g.
  ``...mu['layers']['attn']['q']['kernel']``); everything else (counters,
  scalars) is replicated.
  """
  by_path = [
    (jax.tree_util.keystr(path), p.shape, p.sharding)
    for path, p in jax.tree_util.tree_flatten_with_path(params)[0]
  ]

  def pick(path, leaf):
    key = jax.tree_util.keystr(path)
    for param_key, shape, sharding in by_path:
      if key.endswith(param_key) and leaf.shape == shape:
        return sharding
    return replicated

  return jax.tree_util.tree_map_with_path(pick, abstract_state)
