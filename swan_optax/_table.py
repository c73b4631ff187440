"""The routing table: every leaf's group, matrix view and, on a mesh, SWAN's whitening layout."""

from typing import Any

import jax

from swan_optax import _labels
from swan_optax import _matrix
from swan_optax import _sharded


def routing_table(
  params: Any,
  labels: _labels.LabelsSpec = None,
  *,
  dimension_numbers: _matrix.DimensionNumbersSpec = None,
  adam_pattern: str = _labels.DEFAULT_ADAM_PATTERN,
  mesh: jax.sharding.Mesh | None = None,
) -> str:
  """A printable table of every leaf: path, shape, group and matrix view.

  Never raises for a missing layout: such a leaf's group reads ``NEEDS
  LAYOUT`` and a last line counts them. Works on concrete or abstract
  (``jax.eval_shape``) params. With ``mesh`` (and params that carry their
  shardings) a last column says how ``swan(..., mesh=mesh)`` whitens each
  matrix leaf there and the bytes it moves per device (:func:`whitening_plan`).

  Examples:
    >>> import jax.numpy as jnp
    >>> import swan_optax
    >>> params = {'w': jnp.ones((4, 3)), 'stack': jnp.ones((2, 4, 3)), 'b': jnp.ones(3)}
    >>> print(swan_optax.routing_table(params))
    path   shape      group         matrices (batch x fan_in x fan_out)
    -----  ---------  ------------  ------------------------------------------------
    b      (3,)       adam
    stack  (2, 4, 3)  NEEDS LAYOUT  is not a 2-D matrix and has no dimension numbers
    w      (4, 3)     matrix        1 x 4 x 3
    1 leaf needs a layout: pass dimension_numbers for it (or send it to Adam).
  """
  routes = _labels._routes(params, dimension_numbers, adam_pattern, labels)
  header = ("path", "shape", "group", "matrices (batch x fan_in x fan_out)")
  rows = [(r.key, str(r.shape), r.group or "NEEDS LAYOUT", _view(r)) for r in routes]
  if mesh is not None:
    plan = _sharded.whitening_plan(params, dimension_numbers, mesh, adam_pattern=adam_pattern)
    header += ("swan on the mesh (per device)",)
    rows = [row + (_on_mesh(plan.get(r.key)),) for row, r in zip(rows, routes, strict=True)]
  rows.insert(0, header)
  widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
  pad = lambda row: "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
  lines = [pad(row).rstrip() for row in rows]
  lines.insert(1, pad(["-" * w for w in widths]))
  missing = sum(r.problem is not None for r in routes)
  if missing:
    lines.append(
      f"{missing} leaf needs a layout" if missing == 1 else f"{missing} leaves need a layout"
    )
    lines[-1] += ": pass dimension_numbers for it (or send it to Adam)."
  return "\n".join(lines)


def _view(route: _labels._Route) -> str:
  """The ``batch x fan_in x fan_out`` cell of a routing-table row."""
  if route.problem is not None:
    return route.problem.reason
  if route.group != _labels.MATRIX:
    return ""
  return "{} x {} x {}".format(*_matrix.matrix_view(route.shape, route.dims).flat_shape)


def _on_mesh(route: _sharded.Route | None) -> str:
  """The mesh cell: strategy, axes and bytes moved per device."""
  if route is None:
    return ""
  axes = "/".join(route.sharded_axes + route.spread_axes)
  return (
    f"{route.strategy}{f' over {axes}' if axes else ''}, {route.bytes_per_device / 2**20:.2f} MiB"
  )
