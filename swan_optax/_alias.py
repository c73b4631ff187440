"""Ready-made optimizers: SWAN and SinkGD, stateless on matrices and Adam elsewhere."""

from collections.abc import Callable
from typing import Any
from typing import Literal

import jax
import optax

from swan_optax import _gradnorm
from swan_optax import _labels
from swan_optax import _matrix
from swan_optax import _scale
from swan_optax import _sharded
from swan_optax import _sinkhorn
from swan_optax import _whiten
from swan_optax import defaults

# The optimizer of the non-matrix leaves, built from their learning rate (or schedule).
NonMatrix = Callable[[optax.ScalarOrSchedule], optax.GradientTransformation]
# SWAN's matrix operators: both (SWAN), or one alone (the paper's ablations).
SwanOperators = Literal["both", "gradnorm", "whiten"]


def stateless_partition(
  matrix_update: optax.GradientTransformation,
  learning_rate: optax.ScalarOrSchedule,
  *,
  adam_learning_rate: optax.ScalarOrSchedule | None = None,
  dimension_numbers: _matrix.DimensionNumbersSpec = None,
  param_labels: _labels.LabelsSpec = None,
  non_matrix: NonMatrix | None = None,
  weight_decay: jax.typing.ArrayLike = 0.0,
  weight_decay_mask: Any = None,
) -> optax.GradientTransformation:
  r"""A stateless update on the matrices and Adam on everything else.

  An ``optax.partition`` of two groups. Each matrix leaf steps by
  ``matrix_update`` (e.g. ``gradnorm -> whiten`` for :func:`swan`), with no
  optimizer state of its own:

  .. math::
    W \leftarrow W - \eta_t \, (\mathrm{update}(G) + \lambda W)

  and the other leaves (embeddings, lm_head, norms, biases, vectors; see
  :func:`param_labels`) are trained by ``non_matrix(adam_learning_rate)``.
  :func:`swan` and :func:`sinkgd` are this function around their operators
  (SWAN's ablations: ``swan(operators='gradnorm')``). Clip gradients with
  ``optax.chain(optax.clip_by_global_norm(c), ...)``; a scale-invariant
  ``matrix_update`` leaves only the Adam group changed.

  Args:
    matrix_update: the stateless transform of the matrix group's gradients.
    learning_rate: learning rate (or optax schedule) of the matrix group.
    adam_learning_rate: learning rate (or schedule) of the other leaves;
      ``None``: ``learning_rate`` (an operator of unknown scale has no tuned ratio).
    dimension_numbers: how each matrix leaf is a batch of ``(fan_in, fan_out)``
      matrices: ``None`` (2-D kernels; a leaf of rank >= 3 raises), one
      :class:`MatrixDimensionNumbers`, a tree of them (``None`` sends a leaf to
      Adam, a rank >= 2 leaf missing from the tree raises) such as
      :func:`dimension_numbers_from_fn` returns, or a callable returning
      such a tree from the params. It routes the leaves; pass the same value
      to the operators in ``matrix_update``.
    param_labels: replaces the routing: a tree of ``'matrix'`` / ``'adam'``
      labels, or a callable returning one from the params, e.g.
      ``functools.partial(swan_optax.param_labels, adam_pattern=...)``.
    non_matrix: called with ``adam_learning_rate``, the optimizer of the
      non-matrix leaves, e.g. ``functools.partial(optax.adamw, b2=0.95,
      weight_decay=0.1)``, or ``optax.adafactor`` for a nearly stateless
      optimizer; ``None``: ``optax.adam`` (the papers'). Under
      ``optax.inject_hyperparams`` pass it in ``static_args``, as any callable
      that is not a schedule.
    weight_decay: decoupled weight decay ``lambda`` of the matrix group; the
      step is ``learning_rate * weight_decay * W``, as in ``optax.contrib.muon``.
    weight_decay_mask: tree or callable of booleans restricting
      ``weight_decay``.

  Returns:
    An ``optax.GradientTransformation``: an ``optax.partition`` whose
    ``'matrix'`` group holds no state.
  """
  matrix = optax.chain(
    matrix_update,
    optax.add_decayed_weights(weight_decay, weight_decay_mask),
    optax.scale_by_learning_rate(learning_rate),
  )
  make_other = optax.adam if non_matrix is None else non_matrix
  other = make_other(learning_rate if adam_learning_rate is None else adam_learning_rate)
  labels = lambda params: _labels.resolve_labels(
    params, param_labels, dimension_numbers=dimension_numbers
  )
  return optax.partition({_labels.MATRIX: matrix, _labels.ADAM: other}, labels)


def swan(
  learning_rate: optax.ScalarOrSchedule = defaults.LEARNING_RATE["swan"],
  *,
  operators: SwanOperators = "both",
  method: _whiten.WhiteningMethod = _whiten.DEFAULT_METHOD,
  ns_steps: int | None = None,
  ns_beta: jax.typing.ArrayLike = 0.5,
  eps: jax.typing.ArrayLike = 1e-8,
  precision: jax.lax.PrecisionLike | None = None,
  scale_rule: _scale.ScaleRule = defaults.SCALE_RULE["swan"],
  mesh: jax.sharding.Mesh | None = None,
  shardings: _sharded.ShardingsSpec = None,
  adam_learning_rate: optax.ScalarOrSchedule | None = None,
  dimension_numbers: _matrix.DimensionNumbersSpec = None,
  param_labels: _labels.LabelsSpec = None,
  non_matrix: NonMatrix | None = None,
  weight_decay: jax.typing.ArrayLike = 0.0,
  weight_decay_mask: Any = None,
) -> optax.GradientTransformation:
  r"""SWAN: SGD with GradNorm and GradWhitening; stateless on matrices.

  Each matrix leaf steps by the whitened, standardized gradient, with no
  optimizer state:

  .. math::
    W \leftarrow W - \eta_t \, s(m, n) \, \mathrm{whiten}(\mathrm{gradnorm}(G))

  ``learning_rate`` is the step as a user reads it: under ``scale_rule=
  'unit_rms'`` every matrix update has RMS ``learning_rate`` (Adam's scale,
  the paper's), under ``'spectral'`` spectral norm ``learning_rate *
  sqrt(fan_out / fan_in)`` (muP's); :func:`swan_optax.inspect.shape_scale` is
  ``s``. Everything else (embeddings, lm_head, norms, biases, vectors; see
  :func:`param_labels`) is trained by ``non_matrix`` (Adam) at
  ``adam_learning_rate``, by default a tuned multiple of ``learning_rate``
  (:mod:`swan_optax.defaults`; the paper's setting is
  ``adam_learning_rate=learning_rate``).

  Args:
    learning_rate: the matrix step (or an optax schedule of it).
    operators: ``'both'``: GradNorm, then whitening (SWAN); ``'gradnorm'`` or
      ``'whiten'``: that operator alone (an ablation of the paper's), its
      Adam group at SWAN's default. ``scale_rule`` scales the whitening only.
    method: how :func:`whiten` computes the polar factor: ``'gram_polar_express'``
      (default: Polar Express at 5 steps, on the short-side Gram where that takes
      fewer FLOPs), ``'polar_express'`` (directly on ``X``, 8 steps: more accurate,
      1.6x Muon's FLOPs), ``'newton_schulz'`` (the paper's coupled iteration),
      ``'quintic'`` (Muon's, approximate), ``'svd'`` or ``'eigh'`` (exact, slow).
    ns_steps: iterations of every iterative method (``None``: the method's, see
      :func:`whiten`).
    ns_beta: step factor of ``'newton_schulz'``; only 0.5 is the exact inverse
      square root.
    eps: lower clamp of GradNorm's standard deviation and of every norm in a
      denominator of the whitening.
    precision: the whitening's matmul precision (``None``: the method's, see
      :func:`whiten`).
    scale_rule: the matrix step's size per shape: ``'unit_rms'`` or ``'spectral'``.
    mesh: the device mesh the params live on, if any: each device then whitens
      its share of whole matrices, exchanged by explicit all-to-alls over the
      mesh axes that shard them (see :func:`whiten`); the result is the same.
      ``None`` finds it in the gradients' types on Explicit mesh axes.
    shardings: the params' (hence the gradients') layout, a tree of
      ``NamedSharding`` or ``PartitionSpec`` as given to ``jax.jit``; needed
      inside ``jit`` on Auto mesh axes, where the gradients do not show it
      (see :func:`whiten`).
    adam_learning_rate: learning rate (or schedule) of the non-matrix leaves;
      ``None``: :func:`swan_optax.defaults.adam_learning_rate`.
    dimension_numbers: the matrix layouts, as in :func:`stateless_partition`.
    param_labels: replaces the routing, as in :func:`stateless_partition`.
    non_matrix: the other leaves' optimizer, as in :func:`stateless_partition`.
    weight_decay: the matrices' decoupled weight decay.
    weight_decay_mask: tree or callable of booleans restricting ``weight_decay``.

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
    >>> solver = swan_optax.swan(learning_rate=0.1, adam_learning_rate=0.1)
    >>> opt_state = solver.init(params)
    >>> jax.tree.leaves(opt_state.inner_states['matrix'])  # stateless
    []
    >>> print(f'Objective function: {f(params):.1f}')
    Objective function: 2.4
    >>> for _ in range(3):
    ...   updates, opt_state = solver.update(jax.grad(f)(params), opt_state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> print(f'Objective function: {f(params):.1f}')  # bf16 whitening: rounding varies by CPU
    Objective function: 1.4

  References:
    Ma et al., `SWAN: SGD with Normalization and Whitening Enables Stateless LLM
    Training <https://arxiv.org/abs/2412.13148>`_, 2024.
  """
  if operators not in ("both", "gradnorm", "whiten"):
    raise ValueError(f"operators must be 'both', 'gradnorm' or 'whiten', got {operators!r}")
  if operators == "gradnorm" and scale_rule != "unit_rms":
    raise ValueError(
      f"scale_rule={scale_rule!r} scales the whitening, which operators='gradnorm' drops: "
      "pass scale_rule='unit_rms'"
    )
  chosen = {
    "gradnorm": _gradnorm.gradnorm(eps=eps, dimension_numbers=dimension_numbers),
    "whiten": _whiten.whiten(
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
  }
  if operators != "both":
    chosen = {operators: chosen[operators]}
  return stateless_partition(
    optax.chain(*chosen.values()),
    learning_rate,
    adam_learning_rate=_adam_learning_rate("swan", learning_rate, adam_learning_rate, scale_rule),
    dimension_numbers=dimension_numbers,
    param_labels=param_labels,
    non_matrix=non_matrix,
    weight_decay=weight_decay,
    weight_decay_mask=weight_decay_mask,
  )


def sinkgd(
  learning_rate: optax.ScalarOrSchedule = defaults.LEARNING_RATE["sinkgd"],
  *,
  num_iters: jax.typing.ArrayLike = 5,
  eps: jax.typing.ArrayLike = 1e-8,
  scale_rule: _scale.ScaleRule = defaults.SCALE_RULE["sinkgd"],
  adam_learning_rate: optax.ScalarOrSchedule | None = None,
  dimension_numbers: _matrix.DimensionNumbersSpec = None,
  param_labels: _labels.LabelsSpec = None,
  non_matrix: NonMatrix | None = None,
  weight_decay: jax.typing.ArrayLike = 0.0,
  weight_decay_mask: Any = None,
) -> optax.GradientTransformation:
  r"""SinkGD: SGD on SR-Sinkhorn-normalized gradients; stateless on matrices.

  Each matrix leaf steps by its SR-Sinkhorn-normalized gradient (unit RMS),
  scaled by its shape's ``s``:

  .. math::
    W \leftarrow W - \eta_t \, s(m, n) \, \mathrm{sinkhorn}(G)

  ``learning_rate`` is the step as in :func:`swan`: under ``scale_rule=
  'unit_rms'`` every matrix update has RMS ``learning_rate`` (the paper's,
  whose ``0.02`` global lr times its ``alpha = 0.05`` is ``1e-3``), under
  ``'spectral'`` (default) the update a polar factor of its shape with
  spectral norm ``learning_rate * sqrt(fan_out / fan_in)`` would take, i.e. RMS
  ``learning_rate * sqrt(fan_out / fan_in) / sqrt(max(fan_in, fan_out))``.
  Everything else is trained by ``non_matrix`` (Adam) at ``adam_learning_rate``.

  Args:
    learning_rate: the matrix step (or an optax schedule of it).
    num_iters: SR-Sinkhorn rounds ``L`` (see :func:`sinkhorn`).
    eps: SR-Sinkhorn's lower clamp of every row and column norm.
    scale_rule: the matrix step's size per shape: ``'spectral'`` or ``'unit_rms'``.
    adam_learning_rate: learning rate (or schedule) of the non-matrix leaves;
      ``None``: :func:`swan_optax.defaults.adam_learning_rate` (the paper's:
      ``20 * learning_rate`` under unit RMS).
    dimension_numbers: the matrix layouts, as in :func:`stateless_partition`.
    param_labels: replaces the routing, as in :func:`stateless_partition`.
    non_matrix: the other leaves' optimizer, as in :func:`stateless_partition`.
    weight_decay: the matrices' decoupled weight decay.
    weight_decay_mask: tree or callable of booleans restricting ``weight_decay``.

  Returns:
    The optimizer: Adam on the non-matrix leaves, and no optimizer state at
    all on the matrix leaves.

  Examples:
    A scanned ``(layers, in, out)`` stack is one matrix per layer; under unit
    RMS every matrix steps by an RMS of exactly ``learning_rate``:

    >>> import jax
    >>> import jax.numpy as jnp
    >>> import swan_optax
    >>> params = {'stack': jnp.ones((2, 8, 4)), 'norm': jnp.ones(4)}
    >>> grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(0), p.shape), params)
    >>> dims = {'stack': swan_optax.MatrixDimensionNumbers(1, 2), 'norm': None}
    >>> solver = swan_optax.sinkgd(1e-3, scale_rule='unit_rms', dimension_numbers=dims)
    >>> updates, _ = solver.update(grads, solver.init(params), params)
    >>> [round(float(jnp.sqrt(jnp.mean(u**2))), 6) for u in updates['stack']]
    [0.001, 0.001]

  References:
    Scetbon et al., `Gradient Multi-Normalization for Efficient LLM Training
    <https://arxiv.org/abs/2502.06742>`_, 2025.
  """
  operator = _sinkhorn.sinkhorn(
    num_iters=num_iters, eps=eps, dimension_numbers=dimension_numbers, scale_rule=scale_rule
  )
  return stateless_partition(
    operator,
    learning_rate,
    adam_learning_rate=_adam_learning_rate("sinkgd", learning_rate, adam_learning_rate, scale_rule),
    dimension_numbers=dimension_numbers,
    param_labels=param_labels,
    non_matrix=non_matrix,
    weight_decay=weight_decay,
    weight_decay_mask=weight_decay_mask,
  )


def _adam_learning_rate(
  name: defaults.Optimizer,
  learning_rate: optax.ScalarOrSchedule,
  adam_learning_rate: optax.ScalarOrSchedule | None,
  scale_rule: _scale.ScaleRule,
) -> optax.ScalarOrSchedule:
  if adam_learning_rate is not None:
    return adam_learning_rate
  return defaults.adam_learning_rate(name, learning_rate, scale_rule)
