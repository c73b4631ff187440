"""The learning-rate schedule, the model's matrix layouts and the optimizer of a config."""

from typing import Any

import jax.numpy as jnp
import optax

import swan_optax
from models import llama
from models.configs import LlamaConfig
from train.optimizers import OptimizerConfig


def schedule(config: OptimizerConfig, steps: int, peak: float | None = None) -> optax.Schedule:
  """Linear warmup from 0 over ``W`` steps, then the decay of ``config.schedule`` to the floor.

  ``lr(t) = peak * t / W`` for ``t < W``, with ``W = warmup_steps`` or ``warmup_fraction *
  steps``; then with ``floor = final_lr_fraction * peak``, ``cosine``: ``floor + (peak -
  floor) (1 + cos(pi (t - W) / (T - W))) / 2``; ``wsd``: ``peak`` until ``D = (1 -
  decay_fraction) T``, then linear to ``floor`` at ``T``. ``peak`` defaults to
  ``config.lr``. A WSD run is the same as every longer one until its own decay starts.
  """
  peak = config.lr if peak is None else peak
  floor = config.final_lr_fraction * peak
  total = max(steps, 2)
  warmup = config.warmup_steps
  warmup = max(1, int(config.warmup_fraction * steps)) if warmup is None else max(1, warmup)
  if config.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total, floor)
  decay_start = max(warmup, round((1 - config.decay_fraction) * total))
  return optax.join_schedules(
    [
      optax.linear_schedule(0.0, peak, warmup),
      optax.constant_schedule(peak),
      optax.linear_schedule(peak, floor, max(1, total - decay_start)),
    ],
    [warmup, decay_start],
  )


def dimension_numbers(model_config: LlamaConfig) -> Any:
  """The params' matrix layouts, derived from the model's own layers.

  A dict like the params, for ``dimension_numbers=`` of ``swan_optax.swan`` or
  ``sinkgd``. ``nnx.vmap``'s layer axis is a batch axis, so every stacked
  kernel is one matrix per layer; the einsums put q/k/v's heads into fan_out
  (``BLD,DHK->BLHK``) and o's into fan_in (``BLHK,HKD->BLD``). The embedding
  and norms get ``None``; the lm_head gets ``(0, 1)`` and the default
  ``adam_pattern`` sends it to Adam.
  """
  return swan_optax.dimension_numbers_from_model(llama.abstract_model(model_config))


def make_optimizer(
  config: OptimizerConfig,
  steps: int,
  *,
  dimension_numbers: Any = None,
  shardings: Any = None,
) -> optax.GradientTransformation:
  """The optimizer of ``config`` on its schedule (each group at its peak), clipped if
  ``max_grad_norm`` is set.

  It computes and keeps its state in float32 whatever the param dtype (:func:`in_float32`).

  Args:
    config: the optimizer's settings.
    steps: the run's optimizer steps (the schedule's length).
    dimension_numbers: the params' matrix layouts (e.g. :func:`dimension_numbers` of the
      model config); ``None``: 2-D kernels only (muon needs them).
    shardings: the params' ``NamedSharding`` tree: on their mesh, SWAN whitens
      whole matrices (``whiten_layout='whole'``).
  """
  at_peak = lambda peak: schedule(config, steps, peak)
  tx = config.make(at_peak, dimension_numbers, shardings)
  if config.max_grad_norm is not None:
    tx = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), tx)
  return in_float32(tx)


def in_float32(tx: optax.GradientTransformation) -> optax.GradientTransformation:
  """``tx`` computing in float32, with float32 state, whatever the dtype of the params.

  With bfloat16 params (``--param-dtype bfloat16``) the gradients are bfloat16;
  they are upcast, and the float32 update is rounded to the param dtype once,
  by ``optax.apply_updates`` (``(p + u).astype(p.dtype)``). Adam's moments
  stay float32, as in the memory model of docs/algorithms.md section 6: in
  bfloat16 (8 significant bits) ``nu <- 0.999 nu + 0.001 g^2`` rounds
  ``0.999 nu`` back to ``nu``, so
  the second moment never decays (measured: after the gradient scale drops
  10x, bfloat16 ``nu`` stays at 4x the float32 value 1,900 steps later), and
  ``optax.adam``'s ``mu_dtype`` covers the first moment only. SWAN and SinkGD
  whiten and balance in float32 either way. The identity for float32 params.
  """
  as_float32 = lambda tree: optax.tree.cast(tree, jnp.float32)

  def init_fn(params):
    return tx.init(as_float32(params))

  def update_fn(updates, state, params=None):
    return tx.update(as_float32(updates), state, as_float32(params))

  return optax.GradientTransformation(init_fn, update_fn)
