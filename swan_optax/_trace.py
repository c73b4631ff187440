"""Dimension numbers traced from a model's function: any framework, no layer list."""

import warnings
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import jax
from flax import linen
from flax import nnx

from swan_optax import _axes_flow
from swan_optax import _layouts
from swan_optax import _matrix


def dimension_numbers_from_fn(
  fn: Callable[..., Any],
  params: Any,
  *example_args: Any,
  fused: _layouts.FusedAxis = "batch",
  overrides: Mapping[str, _matrix.MatrixDimensionNumbers | None] | None = None,
  **example_kwargs: Any,
) -> Any:
  """Dimension numbers for every leaf of ``params``, read from how ``fn`` uses it.

  ``fn(params, *example_args, **example_kwargs)`` is traced to a jaxpr with
  abstract values (nothing is computed or allocated), and each leaf is
  followed through reshapes, transposes, casts, slices, ``scan`` (a leaf
  scanned over loses its leading axis), ``while``, ``cond``, ``jit``,
  ``remat``, ``custom_jvp``, ``custom_vjp``, functions of params alone
  (``2 * w``) and masks (``jnp.tril(w)``, ``w * mask``, ``jnp.where(mask, w,
  0)`` with a mask computed in ``fn`` or closed over, not passed as an
  argument) to the ``dot_general`` ops it feeds. There,
  ``y[b, f, o] = sum_i x[b, f, i] W[b, i, o]`` (``x @ W``, ``x @ W.T``,
  ``W @ x``, any einsum; ``vmap`` adds batch dimensions ``b``): the axes ``i``
  of ``W`` contracted with the input are fan_in, the axes ``o`` that reach the
  output alone are fan_out, and every other axis (a batch dimension ``b``, a
  scanned or indexed layer axis) is a batch axis, so that ``W[b]`` is an
  independent ``(fan_in, fan_out)`` matrix, as in
  :class:`MatrixDimensionNumbers`. Two fan_out axes become batch axes:

  * an expert axis: one that a later ``dot_general`` pairs, as a batch
    dimension, with another kernel's axis (``'btd,edf->betf'`` then
    ``'betf,efd->betd'``, or ``vmap`` over both kernels of the experts), so
    every expert is its own matrix, as in the capacity form ``'ebd,edf->ebf'``
    and in ``jax.lax.ragged_dot`` (whose kernel's group axis is a batch axis);
  * a fused axis, as in :func:`dimension_numbers_from_einsum`: one along which
    the output is then split entry by entry (``q, k, v = qkv_einsum(x)`` for a
    ``'BSD,CKDH->CBSKH'`` kernel); with ``fused='fan_out'`` it stays fan_out.

  A fan_out axis whose output is cut into blocks (``jnp.split(x @ w, 3, -1)``
  for a flat fused q/k/v kernel ``(d, 3 d)``) cannot be split by a layout: the
  kernel stays one matrix and a warning says how to change that.

  A leaf gets ``None`` (Adam) if it has rank < 2, if its ``dot_general`` gives
  it no fan_in or no fan_out axis (a batch of vectors), or if it reaches no
  ``dot_general`` and ends in a gather (an embedding lookup) or in an
  elementwise op with a value computed from the arguments (a norm scale, a
  bias). A leaf that reaches a ``dot_general`` takes its layout from there
  whatever else it reaches: a tied embedding, gathered and used for the logits
  as ``x @ E.T``, is ``MatrixDimensionNumbers(1, 0)`` (the default
  ``adam_pattern`` of :func:`swan` sends ``embed`` paths to Adam anyway).

  Args:
    fn: the model's function, params first: ``lambda p, x: model.apply({'params': p}, x)``
      (linen), ``lambda s, x: nnx.merge(graphdef, s)(x)`` (NNX), ``lambda p, x:
      eqx.combine(p, static)(x)`` (equinox), ``lambda p, x: net.apply(p, None, x)``
      (haiku). Close over arguments that are not arrays.
    params: the params (arrays or ``jax.ShapeDtypeStruct``), boxed or not.
    *example_args: the other arguments of ``fn``: arrays or
      ``jax.ShapeDtypeStruct`` of the shapes it is called with.
    fused: how a fused axis (see above) enters the matrix view.
    overrides: ``{path: dims or None}``, paths as :func:`routing_table` prints
      them (with or without a trailing ``value``); they replace what is
      traced, and the leaves they name raise no error.
    **example_kwargs: keyword arguments of ``fn``, as ``example_args``.

  Returns:
    A tree like ``params`` (the same structure: boxes, ``nnx.State``) of
    :class:`MatrixDimensionNumbers` or ``None``, for ``dimension_numbers=`` of
    :func:`swan`, :func:`sinkgd` and :func:`param_labels`. For params holding
    equinox modules, which are callable (a function to ``dimension_numbers=``,
    a schedule to ``optax.inject_hyperparams``), nested dicts with the same
    paths: ``layouts['up']['weight']``.

  Warns:
    UserWarning: naming the leaf and the ``overrides`` that keeps it one
      matrix, for a kernel whose output is cut into blocks along its fan_out.

  Raises:
    ValueError: naming the leaf's path and shape, for a leaf of rank >= 2 that
      two ``dot_general`` ops use in different roles (or one, in pieces of an
      axis merged or split by a reshape), that feeds a convolution, that is
      multiplied with another param, that reaches no ``dot_general`` and ends
      in an op not followed here (a reduction, a pad), or that ``fn`` does not
      use; ``overrides`` settles each.

  Examples:
    >>> import jax.numpy as jnp
    >>> import swan_optax
    >>> def attention_out(params, x_BxLxHxK):
    ...   return jnp.einsum('BLHK,HKD->BLD', x_BxLxHxK, params['out'])
    >>> params = {'out': jnp.zeros((2, 8, 16))}
    >>> swan_optax.dimension_numbers_from_fn(attention_out, params, jnp.zeros((1, 4, 2, 8)))
    {'out': MatrixDimensionNumbers(reduction_axes=(0, 1), output_axes=(2,))}
  """
  if fused not in ("batch", "fan_out"):
    raise ValueError(f"fused={fused!r}: choose 'batch' or 'fan_out'")
  if isinstance(fn, linen.Module):
    raise TypeError(
      f"dimension_numbers_from_fn got the linen module {type(fn).__name__}, not a function of "
      "the params: pass e.g. lambda p, x: model.apply({'params': p}, x), with params = "
      "variables['params']"
    )
  paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  overrides = _by_path(overrides or {}, paths)
  jaxpr = jax.make_jaxpr(fn)(params, *example_args, **example_kwargs).jaxpr
  shapes = [tuple(v.aval.shape) for v in jaxpr.invars[: len(paths)]]
  inputs = [_axes_flow.leaf_axes(n, len(shape)) for n, shape in enumerate(shapes)]
  uses = _axes_flow.Uses([_matrix.path_str(path) for path in paths])
  _axes_flow.walk(jaxpr, inputs + [None] * (len(jaxpr.invars) - len(paths)), uses)
  layouts, errors = [], []
  for n, shape in enumerate(shapes):
    try:
      layouts.append(overrides[n] if n in overrides else _layout(n, shape, uses, fused))
    except ValueError as e:
      errors.append(e)
  if errors:
    more = len(errors) - 1
    others = (
      f" ({more} more {'leaf needs' if more == 1 else 'leaves need'} them too)" if more else ""
    )
    raise ValueError(f"{errors[0]}{others}")
  return _tree_like(params, paths, layouts)


def _tree_like(params: Any, paths: list[tuple[Any, ...]], layouts: list[Any]) -> Any:
  """``layouts`` in the structure of ``params``, or as nested dicts of the same paths if
  ``params`` holds callable nodes (equinox modules): a callable tree would be taken for a
  function by ``dimension_numbers=`` and for a schedule by ``optax.inject_hyperparams``."""
  nodes = jax.tree.leaves(params, is_leaf=callable)
  if not any(callable(x) and not isinstance(x, nnx.Variable) for x in nodes):
    return jax.tree.unflatten(jax.tree.structure(params), layouts)
  nested = {}
  for path, dims in zip(paths, layouts, strict=True):
    *outer, last = (_matrix.path_str((key,)) for key in path)
    node = nested
    for key in outer:
      node = node.setdefault(key, {})
    node[last] = dims
  return nested


def _by_path(
  overrides: Mapping[str, _matrix.MatrixDimensionNumbers | None], paths: list[tuple[Any, ...]]
) -> dict[int, _matrix.MatrixDimensionNumbers | None]:
  """``overrides`` by leaf index; a key may be the leaf's path with or without ``/value``."""
  index = {
    key: n
    for n, path in enumerate(paths)
    for key in (_matrix.path_str(path), _matrix.unboxed_key(path))
  }
  unknown = sorted(set(overrides) - set(index))
  if unknown:
    raise ValueError(f"overrides name {unknown}, which are not leaves of params")
  return {index[key]: dims for key, dims in overrides.items()}


def _layout(
  n: int, shape: tuple[int, ...], uses: _axes_flow.Uses, fused: _layouts.FusedAxis
) -> _matrix.MatrixDimensionNumbers | None:
  """The leaf's dimension numbers from its uses, or ``None`` for Adam; raises if it has none.

  Warns if a fan_out axis is cut into blocks: a layout cannot split an axis.
  """
  key = uses.names[n]
  where = f"leaf '{key}' with shape {shape}"
  fix = (
    f": pass overrides={{'{key}': MatrixDimensionNumbers(...)}} to give its layout "
    "(or None to train it with Adam)"
  )
  if len(shape) < 2:
    return None
  if uses.problems[n]:
    raise ValueError(f"{where} {uses.problems[n][0]}{fix}")
  # Expert axes, and fused axes (indexed away after the dot) by default, are batch axes.
  batch = uses.experts[n] | (uses.indexed[n] if fused == "batch" else set())
  roles = sorted({(tuple(sorted(i)), tuple(sorted(o - batch))) for i, o in uses.layouts[n]})
  if len(roles) > 1:
    (in_a, out_a), (in_b, out_b) = roles[:2]
    raise ValueError(
      f"{where} has two roles: fan_in axes {in_a} and fan_out axes {out_a} in one dot_general, "
      f"fan_in {in_b} and fan_out {out_b} in another{fix}"
    )
  if roles:
    ((fan_in, fan_out),) = roles
    if not fan_in or not fan_out:
      return None
    dims = _matrix.MatrixDimensionNumbers(fan_in, fan_out)
    cut = uses.blocks[n] | {a for a, cuts in uses.slices[n].items() if len(cuts) > 1}
    if fan_out[0] in cut:
      warnings.warn(
        f"{where}: its output is cut into blocks along fan_out axis {fan_out[0]} after its "
        "dot_general (a flat fused projection, split into q, k and v?), which a layout cannot "
        f"express, so it is one {_matrix.matrix_view(shape, dims).flat_shape[1:]} matrix, not "
        "one per block: give the blocks an axis of their own in the kernel (e.g. "
        "nn.DenseGeneral((3, d)) for q, k and v) to transform them separately, or pass "
        f"overrides={{'{key}': {dims}}} to keep one matrix",
        stacklevel=3,
      )
    return dims
  if uses.unknown[n]:
    ops = ", ".join(sorted(uses.unknown[n]))
    raise ValueError(f"{where} reaches no dot_general, and ends in {ops}, not followed here{fix}")
  if uses.adam[n]:
    return None
  raise ValueError(f"{where} is not used by fn{fix}")
