"""Ready-made optimizers: SWAN and SinkGD, stateless on matrices and Adam elsewhere."""

from typing import Any

import jax
import optax

from swan_optax import _gradnorm
from swan_optax import _labels
from swan_optax import _matrix
from swan_optax import _scale
from swan_optax import _sharded
from swan_optax import _sinkhorn
from swan_optax import _whiten


def stateless_partition(
  matrix_update: optax.GradientTransformation,
  learning_rate: optax.ScalarOrSchedule,
  *,
  adam_learning_rate: optax.ScalarOrSchedule | None = None,
  dimension_numbers: _matrix.DimensionNumbersSpec = None,
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
  r"""A stateless update on the matrices and AdamW on everything else.

  An ``optax.partition`` of two groups. Each matrix leaf steps by
  ``matrix_update`` (e.g. ``gradnorm -> whiten`` for :func:`swan`), with no
  optimizer state of its own:

  .. math::
    W \leftarrow W - \eta_t \, (\mathrm{update}(G) + \lambda W)

  and the other leaves (embeddings, lm_head, norms, biases, vectors; see
  :func:`param_labels`) are trained with AdamW. :func:`swan` and
  :func:`sinkgd` are this function around their operators; an ablation that
  keeps one operator is ``stateless_partition(gradnorm(...), lr, ...)``.

  Args:
    matrix_update: the stateless transform of the matrix group's gradients.
    learning_rate: learning rate (or optax schedule) of the matrix group, and
      of the Adam group unless ``adam_learning_rate`` is given.
    adam_learning_rate: learning rate (or schedule) of the Adam group.
    dimension_numbers: how each matrix leaf is a batch of ``(fan_in, fan_out)``
      matrices: ``None`` (2-D kernels; a leaf of rank >= 3 raises), one
      :class:`MatrixDimensionNumbers`, a tree of them (``None`` sends a leaf to
      Adam, a rank >= 2 leaf missing from the tree raises) such as
      :func:`dimension_numbers_from_model` returns, or a callable returning
      such a tree from the params. It routes the leaves; pass the same value
      to the operators in ``matrix_update``.
    param_labels: replaces the routing: a tree of ``'matrix'`` / ``'adam'``
      labels, or a callable returning one from the params.
    adam_pattern: regex searched in each lower-cased key path (with and
      without Flax's trailing ``/value``); a match trains the leaf with Adam.
    weight_decay: decoupled weight decay ``lambda`` of the matrix group; the
      step is ``learning_rate * weight_decay * W``, as in ``optax.contrib.muon``.
    weight_decay_mask: tree or callable of booleans restricting
      ``weight_decay``.
    adam_b1: Adam's first-moment decay.
    adam_b2: Adam's second-moment decay.
    adam_eps: Adam's epsilon.
    adam_weight_decay: AdamW's decoupled weight decay on the Adam group.
    max_grad_norm: if set, clip the global gradient norm first; with a
      scale-invariant ``matrix_update`` only the Adam group changes.
    non_matrix_optimizer: an optax transform used instead of AdamW (and the
      ``adam_*`` options) on the non-matrix leaves, e.g. ``optax.adafactor``
      for a nearly stateless optimizer.

  Returns:
    An ``optax.GradientTransformation``: an ``optax.partition`` whose
    ``'matrix'`` group holds no state (clipped first if ``max_grad_norm``).
  """
  matrix = optax.chain(
    matrix_update,
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


def _adam_learning_rate(
  learning_rate: optax.ScalarOrSchedule,
  adam_learning_rate: optax.ScalarOrSchedule | None,
  scale_rule: _scale.ScaleRule,
) -> optax.ScalarOrSchedule:
  """``adam_learning_rate``, or by default ``learning_rate`` times :func:`reference_rms`."""
  _scale.check_scale_rule(scale_rule)
  if adam_learning_rate is not None:
    return adam_learning_rate
  factor = _scale.reference_rms(scale_rule)
  if factor == 1:
    return learning_rate
  if callable(learning_rate):
    return lambda count: factor * learning_rate(count)
  return factor * learning_rate


def swan(
  learning_rate: optax.ScalarOrSchedule,
  *,
  method: _whiten.WhiteningMethod = "polar_express",
  ns_steps: jax.typing.ArrayLike | None = None,
  ns_beta: jax.typing.ArrayLike = 0.5,
  eps: jax.typing.ArrayLike = 1e-8,
  precision: jax.lax.PrecisionLike | None = None,
  scale_rule: _scale.ScaleRule = "unit_rms",
  mesh: jax.sharding.Mesh | None = None,
  shardings: _sharded.ShardingsSpec = None,
  adam_learning_rate: optax.ScalarOrSchedule | None = None,
  dimension_numbers: _matrix.DimensionNumbersSpec = None,
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
  optimizer state:

  .. math::
    W \leftarrow W - \eta_t \, \mathrm{whiten}(\mathrm{gradnorm}(G))

  The update has unit RMS, Adam's scale, so to replace AdamW at learning rate
  ``X`` use ``swan(X)`` with the same schedule. Everything else (embeddings,
  lm_head, norms, biases, vectors) is trained with AdamW at ``X`` (the
  paper's setting); see :func:`param_labels` for the routing. That group
  wants a far larger rate: tuned jointly with ``X`` on a small LLaMA, the
  best was ``adam_learning_rate`` at about ``50 * X``, worth 0.3 nats over
  ``X`` itself (the README's "The Adam group's lr").

  Args:
    learning_rate: learning rate (or optax schedule) of both groups: the
      matrix step is ``learning_rate`` times a unit-RMS update (times
      :func:`shape_scale`).
    method: how :func:`whiten` computes the polar factor: ``'polar_express'``
      (default), ``'newton_schulz'`` (the paper's coupled iteration),
      ``'quintic'`` (Muon's, approximate), ``'svd'`` or ``'eigh'`` (exact, slow).
    ns_steps: iterations of the iterative methods (``None``: 8, 10 and 5).
    ns_beta: step factor of ``'newton_schulz'``; only 0.5 is the exact inverse
      square root.
    eps: lower clamp of GradNorm's standard deviation and of every norm in a
      denominator of the whitening.
    precision: the whitening's matmul precision (``None``: the method's, see
      :func:`whiten`).
    scale_rule: the matrix step's size per shape (:func:`shape_scale`):
      ``'unit_rms'`` (the paper's) or ``'spectral'`` (muP's spectral norm
      ``sqrt(fan_out / fan_in)``).
    mesh: the device mesh the params live on, if any: each device then whitens
      its share of whole matrices, exchanged by explicit all-to-alls over the
      mesh axes that shard them (see :func:`whiten`); the result is the same.
      ``None`` finds it in the gradients' types on Explicit mesh axes.
    shardings: the params' (hence the gradients') layout, a tree of
      ``NamedSharding`` or ``PartitionSpec`` as given to ``jax.jit``; needed
      inside ``jit`` on Auto mesh axes, where the gradients do not show it
      (see :func:`whiten`).
    adam_learning_rate: learning rate (or schedule) of the Adam group;
      ``None``: ``learning_rate`` times :func:`reference_rms` of ``scale_rule``
      (``learning_rate`` itself under unit RMS).
    dimension_numbers, param_labels, adam_pattern, weight_decay,
      weight_decay_mask, adam_b1, adam_b2, adam_eps, adam_weight_decay,
      max_grad_norm, non_matrix_optimizer: the Adam group, the routing, weight
      decay and clipping, as in :func:`stateless_partition`.

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
      precision=precision,
      dimension_numbers=dimension_numbers,
      mesh=mesh,
      shardings=shardings,
      scale_rule=scale_rule,
    ),
  )
  return stateless_partition(
    operator,
    learning_rate,
    adam_learning_rate=_adam_learning_rate(learning_rate, adam_learning_rate, scale_rule),
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


def sinkgd(
  learning_rate: optax.ScalarOrSchedule = 0.25,
  *,
  matrix_scale: jax.typing.ArrayLike = 0.05,
  num_iters: jax.typing.ArrayLike = 5,
  eps: jax.typing.ArrayLike = 1e-8,
  scale_rule: _scale.ScaleRule = "spectral",
  mesh: jax.sharding.Mesh | None = None,
  adam_learning_rate: optax.ScalarOrSchedule | None = None,
  dimension_numbers: _matrix.DimensionNumbersSpec = None,
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

  Each matrix leaf steps by its SR-Sinkhorn-normalized gradient, scaled by
  ``matrix_scale`` and by its shape's :func:`shape_scale`:

  .. math::
    W \leftarrow W - \eta_t \, \alpha \, s(m, n) \, \mathrm{sinkhorn}(G)

  and everything else is trained with AdamW at ``learning_rate`` times
  :func:`reference_rms` (unless ``adam_learning_rate`` is given).
  ``learning_rate`` is therefore a global rate, not the matrix step.

  The default ``scale_rule='spectral'`` (``s = \sqrt{n / m} / \sqrt{\max(m, n)}``
  for fan-in ``m`` and fan-out ``n``) is the rule whose best lr carried across
  a width ladder (64, 128, 256 wide):
  at lr 0.25, the default, it was best at width 256 and within 0.04 nats of
  the best at 64 and 128, while the paper's unit RMS lost 0.48 nats at width
  256 at its width-128 lr (the README's "Transfer across widths"). At width
  128 the default is the paper's setting within 10%: matrix RMS
  ``0.25 * 0.05 / sqrt(128) = 1.1e-3``, Adam ``0.25 / sqrt(128) = 0.022``.
  The paper's own setting is ``sinkgd(0.02, scale_rule='unit_rms')``: matrix
  step ``0.02 * 0.05 = 1e-3`` times a unit-RMS update, Adam at 0.02. Tuned
  jointly on a small LLaMA, the Adam group was best at about twice its
  default rate, if only by 0.01-0.02 nats (the README's "The Adam group's lr").

  Args:
    learning_rate: global learning rate (or optax schedule): the matrix
      group's before ``matrix_scale`` and :func:`shape_scale`, and the Adam
      group's before :func:`reference_rms`.
    matrix_scale: factor ``alpha`` on the normalized matrix updates; the
      matrix step is ``learning_rate * matrix_scale`` (1.0 makes
      ``learning_rate`` the matrix step). ``weight_decay`` is not scaled by it.
    num_iters: SR-Sinkhorn rounds ``L`` (see :func:`sinkhorn`).
    eps: SR-Sinkhorn's lower clamp of every row and column norm.
    scale_rule: the matrix step's size per shape (:func:`shape_scale`):
      ``'spectral'`` (default) or ``'unit_rms'`` (the paper's).
    mesh: accepted as in :func:`swan`; SR-Sinkhorn needs no layout change on
      a mesh (it all-reduces one norm vector per step, see :func:`sinkhorn`).
    adam_learning_rate: learning rate (or schedule) of the Adam group;
      ``None``: ``learning_rate`` times :func:`reference_rms` of ``scale_rule``
      (``learning_rate`` itself under unit RMS).
    dimension_numbers, param_labels, adam_pattern, weight_decay,
      weight_decay_mask, adam_b1, adam_b2, adam_eps, adam_weight_decay,
      max_grad_norm, non_matrix_optimizer: the Adam group, the routing, weight
      decay and clipping, as in :func:`stateless_partition`.

  Returns:
    The optimizer: AdamW on the non-matrix leaves, and no optimizer state at
    all on the matrix leaves.

  Examples:
    A scanned ``(layers, in, out)`` stack is one matrix per layer; with unit
    RMS and ``matrix_scale=1.0`` every matrix steps by an RMS of exactly
    ``learning_rate``:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import swan_optax
    >>> params = {'stack': jnp.ones((2, 8, 4)), 'norm': jnp.ones(4)}
    >>> grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(0), p.shape), params)
    >>> dims = {'stack': swan_optax.MatrixDimensionNumbers(1, 2), 'norm': None}
    >>> solver = swan_optax.sinkgd(
    ...   1e-3, matrix_scale=1.0, scale_rule='unit_rms', dimension_numbers=dims
    ... )
    >>> updates, _ = solver.update(grads, solver.init(params), params)
    >>> [round(float(jnp.sqrt(jnp.mean(u**2))), 6) for u in updates['stack']]
    [0.001, 0.001]

  References:
    Scetbon et al., `Gradient Multi-Normalization for Efficient LLM Training
    <https://arxiv.org/abs/2502.06742>`_, 2025.
  """
  operator = optax.chain(
    _sinkhorn.sinkhorn(
      num_iters=num_iters,
      eps=eps,
      dimension_numbers=dimension_numbers,
      mesh=mesh,
      scale_rule=scale_rule,
    ),
    optax.scale(matrix_scale),
  )
  return stateless_partition(
    operator,
    learning_rate,
    adam_learning_rate=_adam_learning_rate(learning_rate, adam_learning_rate, scale_rule),
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
