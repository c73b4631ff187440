"""The learning-rate schedule and the named optimizers of ``OptimizerConfig``."""

from typing import Any

import jax
import optax

import swan_optax
from models import sharding
from train.config import OptimizerConfig


def schedule(config: OptimizerConfig, steps: int) -> optax.Schedule:
  """Linear warmup from 0 over ``warmup_fraction * steps``, then cosine decay to the floor.

  ``lr(t) = peak * t / W`` for ``t < W``, then ``floor + (peak - floor) (1 + cos(pi (t - W) /
  (T - W))) / 2`` with ``floor = final_lr_fraction * peak``.
  """
  peak = config.peak_lr
  return optax.warmup_cosine_decay_schedule(
    0.0,
    peak,
    max(1, int(config.warmup_fraction * steps)),
    max(steps, 2),
    config.final_lr_fraction * peak,
  )


def make_optimizer(
  config: OptimizerConfig,
  steps: int,
  mesh: jax.sharding.Mesh | None = None,
  *,
  dimension_numbers: Any = None,
) -> optax.GradientTransformation:
  """The named optimizer on ``schedule(config, steps)``, clipped if ``max_grad_norm`` is set.

  Args:
    config: the optimizer's settings.
    steps: the run's optimizer steps (the schedule's length).
    mesh: the device mesh the params live on (for SWAN's whole-matrix layout).
    dimension_numbers: swan/sinkgd: the params' matrix layouts (e.g.
      ``models.llama.dimension_numbers(model_config)``); ``None``: 2-D kernels only.
  """
  lr = schedule(config, steps)
  if config.name in ("swan", "sinkgd"):
    stateless = {"swan": swan_optax.swan, "sinkgd": swan_optax.sinkgd}[config.name]
    tx = stateless(
      lr,
      dimension_numbers=dimension_numbers,
      weight_decay=config.weight_decay,
      adam_weight_decay=config.weight_decay,
      **_non_matrix(config, lr),
      **_whiten_layout(config, mesh),
    )
  elif config.name == "adam":
    tx = optax.adam(lr)
  else:
    tx = optax.adamw(lr, weight_decay=config.weight_decay)
  if config.max_grad_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), tx)
  return tx


def _non_matrix(config: OptimizerConfig, lr: optax.Schedule) -> dict:
  """swan/sinkgd keyword for ``--non-matrix adafactor``: absolute steps, like Adam's."""
  if config.non_matrix == "adam":
    return {}
  return {
    "non_matrix_optimizer": optax.adafactor(
      lr, multiply_by_parameter_scale=False, weight_decay_rate=config.weight_decay or None
    )
  }


def _whiten_layout(config: OptimizerConfig, mesh: jax.sharding.Mesh | None) -> dict:
  """swan keyword for ``--whiten-layout whole``: whiten whole matrices, stacks over the mesh."""
  if config.name != "swan" or mesh is None or config.whiten_layout == "param":
    return {}
  spec = jax.sharding.PartitionSpec(sharding.WHOLE_MATRIX_AXES)
  return {"whole_matrix_sharding": jax.sharding.NamedSharding(mesh, spec)}
