"""Ready-made optimizers: SWAN and SinkGD, stateless on matrices and Adam elsewhere."""

from typing import Any

import jax
import optax

from swan_optax import _gradnorm
from swan_optax import _labels
from swan_optax import _matrix
from swan_optax import _sinkhorn
from swan_optax import _whiten


def _stateless_partition(
  matrix_operator: optax.GradientTransformation,
  learning_rate: optax.ScalarOrSchedule,
  *,
  adam_learning_rate: optax.ScalarOrSchedule | None,
  dimension_numbers: _matrix.DimensionNumbersSpec,
  param_labels: _labels.LabelsSpec,
  adam_pattern: str,
  weight_decay: jax.typing.ArrayLike,
  weight_decay_mask: Any,
  adam_b1: jax.typing.ArrayLike,
  adam_b2: jax.typing.ArrayLike,
  adam_eps: jax.typing.ArrayLike,
  adam_weight_decay: jax.typing.ArrayLike,
  max_grad_norm: jax.typing.ArrayLike | None,
  non_matrix_optimizer: optax.GradientTransformation | None,
) -> optax.GradientTransformation:
  """``optax.partition`` of a stateless ``'matrix'`` group and an ``'adam'`` group."""
  matrix = optax.chain(
    matrix_operator,
    optax.add_decayed_weights(weight_decay, weight_decay_mask),
    optax.scale_by_learning_rate(learning_rate),
  )
  adam = non_matrix_optimizer or optax.adamw(
    learning_rate if adam_learning_rate is None else adam_learning_rate,
    b1=adam_b1,
    b2=adam_b2,
    eps=adam_eps,
    weight_decay=adam_weight_decay,
  )
  labels = lambda params: _labels.resolve_labels(
    params, param_labels, dimension_numbers=dimension_numbers, adam_pattern=adam_pattern
  )
  tx = optax.partition({_labels.MATRIX: matrix, _labels.ADAM: adam}, labels)
  if max_grad_norm is None:
    return tx
  return optax.chain(optax.clip_by_global_norm(max_grad_norm), tx)


_COMMON_ARGS = """\
    adam_learning_rate: learning rate of the Adam group (default:
      ``learning_rate``).
    dimension_numbers: matrix views of the stateless leaves: ``None`` (2-D
      kernels; a non-Adam leaf of rank >= 3 raises), one
      :class:`MatrixDimensionNumbers`, a tree of them (``None`` = Adam), or a
      callable returning such a tree from the params.
    param_labels: overrides the routing: a tree of ``'matrix'`` / ``'adam'``
      labels or a callable returning one from the params.
    adam_pattern: regex on the lower-cased key path of leaves sent to Adam.
    weight_decay: decoupled weight decay of the matrix group, multiplied by the
      learning rate as in ``optax.contrib.muon``.
    weight_decay_mask: mask (tree or callable) for ``weight_decay``.
    adam_b1, adam_b2, adam_eps: Adam's moment decays and epsilon.
    adam_weight_decay: AdamW weight decay of the Adam group.
    max_grad_norm: if set, clip the global gradient norm first (only changes the
      Adam group: the matrix operators are scale invariant).
    non_matrix_optimizer: replaces AdamW (and the ``adam_*`` options) on the
      non-matrix leaves, e.g. ``optax.adafactor(lr)`` (factored second
      moments) for a nearly stateless optimizer.
"""


def _with_common_args(fn):
  """Puts the argument docs shared by both optimizers into ``fn``'s docstring."""
  fn.__doc__ = fn.__doc__.replace("    COMMON_ARGS\n", _COMMON_ARGS)
  return fn


@_with_common_args
def swan(
  learning_rate: optax.ScalarOrSchedule,
  *,
  adam_learning_rate: optax.ScalarOrSchedule | None = None,
  method: _whiten.WhiteningMethod = "newton_schulz",
  ns_steps: jax.typing.ArrayLike | None = None,
  ns_beta: jax.typing.ArrayLike = 0.5,
  eps: jax.typing.ArrayLike = 1e-8,
  dimension_numbers: _matrix.DimensionNumbersSpec = None,
  mesh: jax.sharding.Mesh | None = None,
  param_labels: _labels.LabelsSpec = None,
  adam_pattern: str = _labels.DEFAULT_ADAM_PATTERN,
  weight_decay: jax.typing.ArrayLike = 0.0,
  weight_decay_mask: Any = None,
  adam_b1: jax.typing.ArrayLike = 0.9,
  adam_b2: jax.typing.ArrayLike = 0.999,
  adam_eps: jax.typing.ArrayLike = 1e-8,
  adam_weight_decay: jax.typing.ArrayLike = 0.0,
  max_grad_norm: jax.typing.ArrayLike | None = None,
  non_matrix_optimizer: optax.GradientTransformation | None = None,
) -> optax.GradientTransformation:
  r"""SWAN: SGD with GradNorm and GradWhitening; stateless on matrices.

  Matrix leaves: ``W <- W - eta_t * whiten(gradnorm(G))`` with no optimizer
  state; everything else (embeddings, lm_head, norms, biases, vectors) is
  trained with Adam(W). Routing is by key path and shape (see
  :func:`param_labels`).

  Args:
    learning_rate: learning rate (or optax schedule) of the matrix group.
    method, ns_steps, ns_beta, eps, mesh: whitening options, see
      :func:`whiten`; ``eps`` is also GradNorm's std clamp.
    COMMON_ARGS

  Returns:
    An ``optax.GradientTransformation`` whose matrix group holds no state.

  References:
    Ma et al., `SWAN: SGD with Normalization and Whitening Enables Stateless LLM
    Training <https://arxiv.org/abs/2412.13148>`_, 2024.
  """
  operator = optax.chain(
    _gradnorm.gradnorm(eps=eps, dimension_numbers=dimension_numbers),
    _whiten.whiten(
      method=method,
      ns_steps=ns_steps,
      ns_beta=ns_beta,
      eps=eps,
      dimension_numbers=dimension_numbers,
      mesh=mesh,
    ),
  )
  return _stateless_partition(
    operator,
    learning_rate,
    adam_learning_rate=adam_learning_rate,
    dimension_numbers=dimension_numbers,
    param_labels=param_labels,
    adam_pattern=adam_pattern,
    weight_decay=weight_decay,
    weight_decay_mask=weight_decay_mask,
    adam_b1=adam_b1,
    adam_b2=adam_b2,
    adam_eps=adam_eps,
    adam_weight_decay=adam_weight_decay,
    max_grad_norm=max_grad_norm,
    non_matrix_optimizer=non_matrix_optimizer,
  )


@_with_common_args
def sinkgd(
  learning_rate: optax.ScalarOrSchedule = 0.02,
  *,
  matrix_scale: jax.typing.ArrayLike = 0.05,
  num_iters: jax.typing.ArrayLike = 5,
  eps: jax.typing.ArrayLike = 1e-8,
  adam_learning_rate: optax.ScalarOrSchedule | None = None,
  dimension_numbers: _matrix.DimensionNumbersSpec = None,
  mesh: jax.sharding.Mesh | None = None,
  param_labels: _labels.LabelsSpec = None,
  adam_pattern: str = _labels.DEFAULT_ADAM_PATTERN,
  weight_decay: jax.typing.ArrayLike = 0.0,
  weight_decay_mask: Any = None,
  adam_b1: jax.typing.ArrayLike = 0.9,
  adam_b2: jax.typing.ArrayLike = 0.999,
  adam_eps: jax.typing.ArrayLike = 1e-8,
  adam_weight_decay: jax.typing.ArrayLike = 0.0,
  max_grad_norm: jax.typing.ArrayLike | None = None,
  non_matrix_optimizer: optax.GradientTransformation | None = None,
) -> optax.GradientTransformation:
  r"""SinkGD: SGD on SR-Sinkhorn-normalized gradients; stateless on matrices.

  Matrix leaves: ``W <- W - eta_t * matrix_scale * sinkhorn(G)`` (with the
  defaults the effective matrix learning rate is ``0.02 * 0.05 = 1e-3``);
  everything else is trained with Adam(W) at ``learning_rate``.

  Args:
    learning_rate: global learning rate (or optax schedule).
    matrix_scale: factor ``alpha`` on the normalized matrix updates.
    num_iters: SR-Sinkhorn rounds, see :func:`sinkhorn`.
    eps: SR-Sinkhorn's norm clamp.
    mesh: the device mesh, as for :func:`swan`; see :func:`sinkhorn`.
    COMMON_ARGS

  Returns:
    An ``optax.GradientTransformation`` whose matrix group holds no state.

  References:
    Scetbon et al., `Gradient Multi-Normalization for Efficient LLM Training
    <https://arxiv.org/abs/2502.06742>`_, 2025.
  """
  operator = optax.chain(
    _sinkhorn.sinkhorn(
      num_iters=num_iters, eps=eps, dimension_numbers=dimension_numbers, mesh=mesh
    ),
    optax.scale(matrix_scale),
  )
  return _stateless_partition(
    operator,
    learning_rate,
    adam_learning_rate=adam_learning_rate,
    dimension_numbers=dimension_numbers,
    param_labels=param_labels,
    adam_pattern=adam_pattern,
    weight_decay=weight_decay,
    weight_decay_mask=weight_decay_mask,
    adam_b1=adam_b1,
    adam_b2=adam_b2,
    adam_eps=adam_eps,
    adam_weight_decay=adam_weight_decay,
    max_grad_norm=max_grad_norm,
    non_matrix_optimizer=non_matrix_optimizer,
  )
