"""Ready-made optimizers: SWAN and SinkGD, stateless on matrices and Adam elsewhere."""

import inspect
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


# The keywords swan and sinkgd hand on unchanged to _stateless_partition.
_PARTITION_KEYWORDS = tuple(inspect.signature(_stateless_partition).parameters)[2:]


def _partition(
  matrix_operator: optax.GradientTransformation,
  learning_rate: optax.ScalarOrSchedule,
  arguments: dict[str, Any],
) -> optax.GradientTransformation:
  """:func:`_stateless_partition` with the pass-through keywords taken from ``arguments``."""
  options = {name: arguments[name] for name in _PARTITION_KEYWORDS}
  return _stateless_partition(matrix_operator, learning_rate, **options)


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

  Each matrix leaf steps by the whitened, standardized gradient, with no
  optimizer state (docs/algorithms.md, sections 2, 3 and 5):

  .. math::
    W \leftarrow W - \eta_t \, \mathrm{whiten}(\mathrm{gradnorm}(G))

  The update has unit RMS, Adam's scale, so to replace AdamW at learning rate
  ``X`` use ``swan(X)`` with the same schedule. Everything else (embeddings,
  lm_head, norms, biases, vectors) is trained with AdamW; see
  :func:`param_labels` for the routing.

  Args:
    learning_rate: learning rate (or optax schedule) of both groups: the
      matrix step is ``learning_rate`` times a unit-RMS update.
    adam_learning_rate: learning rate of the Adam group, if it should differ
      from ``learning_rate``.
    method: how :func:`whiten` computes the polar factor: ``'newton_schulz'``
      (the paper's coupled iteration), ``'polar_express'``, ``'quintic'``
      (Muon's, approximate), ``'svd'`` or ``'eigh'`` (exact, slow).
    ns_steps: iterations of the iterative methods (``None``: 10, 8 and 5).
    ns_beta: step factor of ``'newton_schulz'``; only 0.5 is the exact inverse
      square root.
    eps: lower clamp of GradNorm's standard deviation and of every norm in a
      denominator of the whitening.
    dimension_numbers: how each matrix leaf is a batch of ``(fan_in, fan_out)``
      matrices: ``None`` (2-D kernels; a leaf of rank >= 3 raises), one
      :class:`MatrixDimensionNumbers`, a tree of them (``None`` sends a leaf to
      Adam, a rank >= 2 leaf missing from the tree raises) such as
      :func:`dimension_numbers_from_model` returns, or a callable returning
      such a tree from the params.
    mesh: the device mesh the params live on, if any: each device then whitens
      its share of whole matrices, exchanged by explicit all-to-alls over the
      mesh axes that shard them (see :func:`whiten`); the result is the same.
    param_labels: replaces the routing: a tree of ``'matrix'`` / ``'adam'``
      labels, or a callable returning one from the params.
    adam_pattern: regex searched in each lower-cased key path (with and
      without Flax's trailing ``/value``); a match trains the leaf with Adam.
    weight_decay: decoupled weight decay of the matrix group; the step is
      ``learning_rate * weight_decay * W``, as in ``optax.contrib.muon``.
    weight_decay_mask: tree or callable of booleans restricting
      ``weight_decay``.
    adam_b1: Adam's first-moment decay.
    adam_b2: Adam's second-moment decay.
    adam_eps: Adam's epsilon.
    adam_weight_decay: AdamW's decoupled weight decay on the Adam group.
    max_grad_norm: if set, clip the global gradient norm first; only the Adam
      group changes, since every matrix operator is scale invariant.
    non_matrix_optimizer: an optax transform used instead of AdamW (and the
      ``adam_*`` options) on the non-matrix leaves, e.g. ``optax.adafactor``
      for a nearly stateless optimizer.

  Returns:
    An ``optax.GradientTransformation``: an ``optax.partition`` whose
    ``'matrix'`` group holds no state.

  Examples:
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import swan_optax
    >>> x = jax.random.normal(jax.random.key(0), (32, 4))
    >>> y = x @ jax.random.normal(jax.random.key(1), (4, 3))
    >>> def f(p): return jnp.mean((x @ p['w'] + p['b'] - y) ** 2)
    >>> params = {'w': jnp.zeros((4, 3)), 'b': jnp.zeros(3)}
    >>> solver = swan_optax.swan(learning_rate=0.1)
    >>> opt_state = solver.init(params)
    >>> jax.tree.leaves(opt_state.inner_states['matrix'])  # stateless
    []
    >>> for _ in range(3):
    ...   updates, opt_state = solver.update(jax.grad(f)(params), opt_state, params)
    ...   params = optax.apply_updates(params, updates)
    ...   print(f'Objective function: {f(params):.2E}')
    Objective function: 2.03E+00
    Objective function: 1.67E+00
    Objective function: 1.38E+00

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
  return _partition(operator, learning_rate, locals())


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

  Each matrix leaf steps by its SR-Sinkhorn-normalized gradient scaled by
  ``matrix_scale`` (docs/algorithms.md, sections 4 and 5):

  .. math::
    W \leftarrow W - \eta_t \, \alpha \, \mathrm{sinkhorn}(G)

  and everything else is trained with AdamW at ``learning_rate`` itself.
  ``learning_rate`` is therefore a global rate, not the matrix step: with the
  defaults the matrix step is ``0.02 * 0.05 = 1e-3`` while Adam's is 0.02 (the
  paper's setting). To replace AdamW at learning rate ``X`` with the same
  schedule, use ``sinkgd(X, matrix_scale=1.0)``: matrix steps of ``X`` times a
  unit-RMS update (as :func:`swan`'s) and Adam unchanged at ``X``.
  ``sinkgd(X)`` alone would step the matrices at ``X / 20``.

  Args:
    learning_rate: global learning rate (or optax schedule): the Adam group's
      rate, and the matrix group's before ``matrix_scale``.
    matrix_scale: factor ``alpha`` on the normalized matrix updates; the
      matrix step is ``learning_rate * matrix_scale`` (1.0 makes
      ``learning_rate`` the matrix step).
    num_iters: SR-Sinkhorn rounds ``L`` (see :func:`sinkhorn`).
    eps: SR-Sinkhorn's lower clamp of every row and column norm.
    mesh: accepted as in :func:`swan`; SR-Sinkhorn needs no layout change on
      a mesh (it all-reduces one norm vector per step, see :func:`sinkhorn`).
    adam_learning_rate: Adam group's learning rate, if it should differ from
      ``learning_rate``.
    dimension_numbers: matrix views of the matrix leaves, as for
      :func:`swan`: ``None`` (2-D kernels), one
      :class:`MatrixDimensionNumbers`, a tree of them (``None`` entries train
      with Adam, missing rank >= 2 entries raise; see
      :func:`dimension_numbers_from_model`) or a callable of the params.
    param_labels: a tree, or a callable of the params, of ``'matrix'`` and
      ``'adam'`` labels overriding the default routing.
    adam_pattern: regex on lower-cased key paths, searched with and without a
      trailing Flax ``/value``; matching leaves go to Adam.
    weight_decay: decoupled matrix-group weight decay, stepping by
      ``learning_rate * weight_decay * W`` (not scaled by ``matrix_scale``).
    weight_decay_mask: which leaves ``weight_decay`` applies to (a boolean
      tree or callable).
    adam_b1: first-moment decay of the Adam group.
    adam_b2: second-moment decay of the Adam group.
    adam_eps: epsilon of the Adam group.
    adam_weight_decay: decoupled AdamW weight decay of the Adam group.
    max_grad_norm: global-norm gradient clipping in front (if set); matrix
      updates do not change, SR-Sinkhorn being scale invariant.
    non_matrix_optimizer: any optax transform to train the non-matrix leaves
      in place of AdamW and its ``adam_*`` options (``optax.adafactor`` makes
      the optimizer nearly stateless).

  Returns:
    The optimizer: AdamW on the non-matrix leaves, and no optimizer state at
    all on the matrix leaves.

  Examples:
    A scanned ``(layers, in, out)`` stack is one matrix per layer; with
    ``matrix_scale=1.0`` every matrix steps by an RMS of exactly
    ``learning_rate``:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import swan_optax
    >>> params = {'stack': jnp.ones((2, 8, 4)), 'norm': jnp.ones(4)}
    >>> grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(0), p.shape), params)
    >>> dims = {'stack': swan_optax.MatrixDimensionNumbers(1, 2), 'norm': None}
    >>> solver = swan_optax.sinkgd(1e-3, matrix_scale=1.0, dimension_numbers=dims)
    >>> updates, _ = solver.update(grads, solver.init(params), params)
    >>> [round(float(jnp.sqrt(jnp.mean(u**2))), 6) for u in updates['stack']]
    [0.001, 0.001]

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
  return _partition(operator, learning_rate, locals())
