"""The learning-rate schedule and the named optimizers of ``OptimizerConfig``."""

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import optax

import swan_optax
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

  It computes and keeps its state in float32 whatever the param dtype (:func:`in_float32`).

  Args:
    config: the optimizer's settings.
    steps: the run's optimizer steps (the schedule's length).
    mesh: the device mesh the params live on (SWAN whitens whole matrices there).
    dimension_numbers: swan/sinkgd: the params' matrix layouts (e.g.
      ``models.llama.dimension_numbers(model_config)``); ``None``: 2-D kernels only.
  """
  lr = schedule(config, steps)
  if config.name == "swan" and config.swan_operators != "both":
    tx = _swan_one_operator(config, lr, steps, mesh, dimension_numbers)
  elif config.name in ("swan", "sinkgd"):
    stateless = {"swan": swan_optax.swan, "sinkgd": swan_optax.sinkgd}[config.name]
    tx = stateless(
      lr,
      dimension_numbers=dimension_numbers,
      weight_decay=config.weight_decay,
      non_matrix_optimizer=_adam_group(config, steps),
      **_whitening(config, mesh),
    )
  else:
    if config.name == "adam":
      tx = optax.adam(lr, b2=config.adam_b2)
    else:
      tx = optax.adamw(lr, b2=config.adam_b2, weight_decay=config.weight_decay)
    if config.embed_lr_scale != 1:
      tx = optax.chain(tx, optax.masked(optax.scale(config.embed_lr_scale), _embed_mask))
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


def _adam_group(config: OptimizerConfig, steps: int) -> optax.GradientTransformation:
  """swan/sinkgd's optimizer of the non-matrix leaves: AdamW, or Adafactor (absolute steps)."""
  lr = schedule(dataclasses.replace(config, lr=config.adam_group_lr or config.peak_lr), steps)
  if config.non_matrix == "adafactor":
    return optax.adafactor(
      lr, multiply_by_parameter_scale=False, weight_decay_rate=config.weight_decay or None
    )
  return optax.adamw(lr, b2=config.adam_b2, weight_decay=config.weight_decay)


def _swan_one_operator(
  config: OptimizerConfig,
  lr: optax.Schedule,
  steps: int,
  mesh: jax.sharding.Mesh | None,
  dims: Any,
) -> optax.GradientTransformation:
  """SWAN with only GradNorm or only whitening on the matrices (an ablation), ``_adam_group`` else.

  ``W <- W - eta_t (op(G) + lambda W)`` with ``op`` one of the two unit-RMS operators.
  """
  if config.swan_operators == "gradnorm":
    operator = swan_optax.gradnorm(dimension_numbers=dims)
  else:
    operator = swan_optax.whiten(dimension_numbers=dims, **_whitening(config, mesh))
  matrix = optax.chain(
    operator, optax.add_decayed_weights(config.weight_decay), optax.scale_by_learning_rate(lr)
  )
  labels = lambda params: swan_optax.param_labels(params, dimension_numbers=dims)
  return optax.partition({"matrix": matrix, "adam": _adam_group(config, steps)}, labels)


def _embed_mask(params) -> object:
  """True on the embedding and lm_head leaves."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: bool(re.search(r"embed|lm_head", jax.tree_util.keystr(path).lower())), params
  )


def _whitening(config: OptimizerConfig, mesh: jax.sharding.Mesh | None) -> dict:
  """swan's whitening keywords: its method, and ``mesh`` for ``--whiten-layout whole`` (whole
  matrices per device, by all-to-alls)."""
  if config.name != "swan":
    return {}
  whole = config.whiten_layout == "whole"
  return {"method": config.whiten_method, "mesh": mesh if whole else None}
