"""Dimension numbers traced from a model's function: any framework, no layer list."""

from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import jax
from flax import linen

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
  ``remat``, ``custom_jvp``, ``custom_vjp`` and elementwise functions of params
  alone (``2 * w``) to the ``dot_general`` ops it feeds. There,
  ``y[b, f, o] = sum_i x[b, f, i] W[b, i, o]`` (``x @ W``, ``W @ x``, any
  einsum; ``vmap`` adds batch dimensions ``b``): the axes ``i`` of ``W``
  contracted with the input are fan_in, the axes ``o`` that reach the output
  alone are fan_out, and every other axis (a batch dimension ``b``, a scanned
  or indexed layer axis) is a batch axis, so that ``W[b]`` is an independent
  ``(fan_in, fan_out)`` matrix, as in :class:`MatrixDimensionNumbers`. Like the fused axis of
  :func:`dimension_numbers_from_einsum`, a fan_out axis along which the output
  is then split entry by entry (``q, k, v = qkv_einsum(x)`` for a
  ``'BSD,CKDH->CBSKH'`` kernel) is a fused axis: a batch axis with
  ``fused='batch'``, fan_out with ``fused='fan_out'``.

  A leaf gets ``None`` (Adam) if it has rank < 2, if its ``dot_general`` gives
  it no fan_in or no fan_out axis (a batch of vectors), or if it reaches no
  ``dot_general`` and ends in a gather (an embedding lookup) or in an
  elementwise op with an activation or a mask (a norm scale, a bias). A leaf
  that reaches a ``dot_general`` takes its layout from there whatever else it
  reaches: a tied embedding, gathered and used for the logits as ``x @ E.T``,
  is ``MatrixDimensionNumbers(1, 0)`` (the default ``adam_pattern`` of
  :func:`swan` sends ``embed`` paths to Adam anyway).

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
    A tree like ``params`` (the same structure: boxes, ``nnx.State``, equinox
    modules) of :class:`MatrixDimensionNumbers` or ``None``, for
    ``dimension_numbers=`` of :func:`swan`, :func:`sinkgd` and
    :func:`param_labels` (an equinox module is callable, so pass
    ``lambda _: layouts`` there).

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
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  names = [_matrix.path_str(path) for path, _ in flat]
  overrides = _by_path(overrides or {}, [path for path, _ in flat])
  jaxpr = jax.make_jaxpr(fn)(params, *example_args, **example_kwargs).jaxpr
  shapes = [tuple(v.aval.shape) for v in jaxpr.invars[: len(flat)]]
  inputs = [_axes_flow.leaf_axes(n, len(shape)) for n, shape in enumerate(shapes)]
  uses = _axes_flow.Uses(names, track_outputs=fused == "batch")
  _axes_flow.walk(jaxpr, inputs + [None] * (len(jaxpr.invars) - len(flat)), uses)
  layouts, errors = [], []
  for n, shape in enumerate(shapes):
    try:
      layouts.append(overrides[n] if n in overrides else _layout(n, shape, uses))
    except ValueError as e:
      errors.append(e)
  if errors:
    more = len(errors) - 1
    others = (
      f" ({more} more {'leaf needs' if more == 1 else 'leaves need'} them too)" if more else ""
    )
    raise ValueError(f"{errors[0]}{others}")
  return jax.tree_util.tree_unflatten(treedef, layouts)


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
  n: int, shape: tuple[int, ...], uses: _axes_flow.Uses
) -> _matrix.MatrixDimensionNumbers | None:
  """The leaf's dimension numbers from its uses, or ``None`` for Adam; raises if it has none."""
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
  # Fused axes, indexed away after the dot, are batch axes.
  fused = uses.indexed[n]
  roles = sorted({(tuple(sorted(i)), tuple(sorted(o - fused))) for i, o in uses.layouts[n]})
  if len(roles) > 1:
    (in_a, out_a), (in_b, out_b) = roles[:2]
    raise ValueError(
      f"{where} has two roles: fan_in axes {in_a} and fan_out axes {out_a} in one dot_general, "
      f"fan_in {in_b} and fan_out {out_b} in another{fix}"
    )
  if roles:
    ((fan_in, fan_out),) = roles
    return _matrix.MatrixDimensionNumbers(fan_in, fan_out) if fan_in and fan_out else None
  if uses.unknown[n]:
    ops = ", ".join(sorted(uses.unknown[n]))
    raise ValueError(f"{where} reaches no dot_general, and ends in {ops}, not followed here{fix}")
  if uses.adam[n]:
    return None
  raise ValueError(f"{where} is not used by fn{fix}")
