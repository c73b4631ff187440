"""The learning-rate schedule, the model's matrix layouts and the named optimizers."""

import functools
import re
from typing import Any

import jax
import jax.numpy as jnp
import optax

import swan_optax
from models import llama
from models.configs import LlamaConfig
from train.config import OptimizerConfig


def schedule(config: OptimizerConfig, steps: int, peak: float | None = None) -> optax.Schedule:
  """Linear warmup from 0 over ``W`` steps, then the decay of ``config.schedule`` to the floor.

  ``lr(t) = peak * t / W`` for ``t < W``, with ``W = warmup_steps`` or ``warmup_fraction *
  steps``; then with ``floor = final_lr_fraction * peak``, ``cosine``: ``floor + (peak -
  floor) (1 + cos(pi (t - W) / (T - W))) / 2``; ``wsd``: ``peak`` until ``D = (1 -
  decay_fraction) T``, then linear to ``floor`` at ``T``. ``peak`` defaults to
  ``config.peak_lr``. A WSD run is the same as every longer one until its own decay starts.
  """
  peak = config.peak_lr if peak is None else peak
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
  """The named optimizer on ``schedule(config, steps)``, clipped if ``max_grad_norm`` is set.

  It computes and keeps its state in float32 whatever the param dtype (:func:`in_float32`).

  Args:
    config: the optimizer's settings.
    steps: the run's optimizer steps (the schedule's length).
    dimension_numbers: swan/sinkgd: the params' matrix layouts (e.g.
      :func:`dimension_numbers` of the model config); ``None``: 2-D kernels only.
    shardings: the params' ``NamedSharding`` tree: on their mesh, SWAN whitens
      whole matrices (``whiten_layout='whole'``).
  """
  lr = schedule(config, steps)
  if config.name in ("swan", "sinkgd"):
    tx = _stateless(config, lr, steps, dimension_numbers, shardings)
  elif config.name == "muon":
    tx = _muon(config, lr, steps, dimension_numbers)
  elif config.name == "adam":
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


def _stateless(
  config: OptimizerConfig,
  lr: optax.Schedule,
  steps: int,
  dims: Any,
  shardings: Any,
) -> optax.GradientTransformation:
  """swan or sinkgd through their public keywords, the Adam group at the library's default
  unless ``adam_group_lr`` is set; a one-operator SWAN (an ablation) is
  ``swan_optax.stateless_partition`` around that operator, its Adam group at SWAN's."""
  if config.non_matrix == "adafactor":
    non_matrix = functools.partial(
      optax.adafactor,
      multiply_by_parameter_scale=False,
      weight_decay_rate=config.weight_decay or None,
    )
  else:
    non_matrix = functools.partial(optax.adamw, b2=config.adam_b2, weight_decay=config.weight_decay)
  adam_lr = _set_adam_group_schedule(config, steps)
  group = dict(
    dimension_numbers=dims,
    non_matrix=non_matrix,
    weight_decay=config.weight_decay,
  )
  rule = config.effective_scale_rule
  if config.name == "sinkgd":
    return swan_optax.sinkgd(lr, scale_rule=rule, adam_learning_rate=adam_lr, **group)
  whitening = {
    "scale_rule": rule,
    "method": config.whiten_method,
    "shardings": shardings if config.whiten_layout == "whole" else None,
  }
  if config.swan_operators == "both":
    return swan_optax.swan(lr, **whitening, adam_learning_rate=adam_lr, **group)
  if config.swan_operators == "gradnorm":
    operator = swan_optax.gradnorm(dimension_numbers=dims)
  else:
    operator = swan_optax.whiten(dimension_numbers=dims, **whitening)
  adam_lr = schedule(config, steps, config.adam_group_peak_lr)
  return swan_optax.stateless_partition(operator, lr, adam_learning_rate=adam_lr, **group)


def _muon(
  config: OptimizerConfig, lr: optax.Schedule, steps: int, dims: Any
) -> optax.GradientTransformation:
  """``optax.contrib.muon`` on the leaves swan and sinkgd would route to their matrix group.

  Its own defaults otherwise: Nesterov momentum 0.95, 5 quintic Newton-Schulz steps, updates
  scaled by ``sqrt(max(1, fan_out / fan_in))``; its Adam group (AdamW with Nesterov) at
  ``adam_group_lr`` (``None``: muon's ``lr``, optax's default). ``dims`` must be a tree:
  muon's labels read its structure.
  """
  if dims is None or callable(dims):
    raise ValueError("muon needs the params' dimension numbers as a tree, e.g. dimension_numbers()")
  adam_lr = _set_adam_group_schedule(config, steps)
  return optax.contrib.muon(
    lr,
    beta=0.95,
    weight_decay=config.weight_decay,
    adam_b2=config.adam_b2,
    adam_weight_decay=config.weight_decay,
    adam_learning_rate=adam_lr,
    muon_weight_dimension_numbers=muon_dimension_numbers(dims),
  )


def _set_adam_group_schedule(config: OptimizerConfig, steps: int) -> optax.Schedule | None:
  """The Adam group's schedule when ``adam_group_lr`` is set; ``None`` leaves the library's."""
  if config.adam_group_lr is None:
    return None
  return schedule(config, steps, config.adam_group_lr)


def muon_dimension_numbers(dims: Any) -> Any:
  """``dims`` (a tree of ``swan_optax.MatrixDimensionNumbers``) as optax muon's: a leaf keeps
  its layout where swan and sinkgd would whiten or balance it, and is ``None`` (muon's Adam)
  where its layout is ``None`` or its key path matches ``swan_optax.DEFAULT_ADAM_PATTERN``
  (the embedding, lm_head and norms)."""
  pattern = re.compile(swan_optax.DEFAULT_ADAM_PATTERN)
  is_dims = lambda x: x is None or isinstance(x, swan_optax.MatrixDimensionNumbers)

  def to_muon(path, d):
    if d is None or pattern.search(jax.tree_util.keystr(path).lower()):
      return None
    return optax.contrib.MuonDimensionNumbers(d.reduction_axes, d.output_axes)

  return jax.tree_util.tree_map_with_path(to_muon, dims, is_leaf=is_dims)


def _embed_mask(params) -> object:
  """True on the embedding and lm_head leaves."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: bool(re.search(r"embed|lm_head", jax.tree_util.keystr(path).lower())), params
  )
