"""The routing table and the whitening plan: every leaf's group, matrix view and mesh layout."""

import math
import re
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp

from swan_optax import _labels
from swan_optax import _matrix
from swan_optax import _sharded


class Route(NamedTuple):
  """How a leaf is transformed on a mesh, and what it moves (bytes per device).

  ``strategy`` is ``'local'`` (whole matrices already, each on one device),
  ``'all-to-all'`` (over ``sharded_axes``), ``'replicated + all-gather'``
  (``1/|F|`` per device, then gathered over ``spread_axes``) or both.
  ``bytes_per_device`` is the leaf's share of its group's collective results,
  padding included; ``leaf_bytes`` the size of the whole leaf.
  """

  strategy: str
  sharded_axes: _sharded.AxisNames
  spread_axes: _sharded.AxisNames
  group_size: int
  bytes_per_device: int
  leaf_bytes: int


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
  LAYOUT`` and a last line counts them. A 2-D leaf given no
  ``dimension_numbers`` reads ``assumed (in, out)``: check it is not a PyTorch
  style ``(out, in)`` weight, or derive the layouts with
  :func:`dimension_numbers_from_fn`. A matrix leaf with an axis as long as the
  vocabulary (the longest embedding table's rows) is flagged: an output head
  trains with Adam in both papers. Works on concrete or abstract
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
    w      (4, 3)     matrix        1 x 4 x 3, assumed (in, out)
    1 leaf needs a layout: pass dimension_numbers for it (or send it to Adam).
    1 layout assumed (in, out): trace with swan_optax.dimension_numbers_from_fn if (out, in).
  """
  routes = _labels.leaf_groups(params, dimension_numbers, adam_pattern, labels)
  vocab = _vocab_size(routes)
  heads = [r.group == _labels.MATRIX and vocab in r.shape for r in routes]
  header = ("path", "shape", "group", "matrices (batch x fan_in x fan_out)")
  rows = [
    (r.key, str(r.shape), r.group or "NEEDS LAYOUT", _view(r, head))
    for r, head in zip(routes, heads, strict=True)
  ]
  if mesh is not None:
    plan = whitening_plan(params, dimension_numbers, mesh, adam_pattern=adam_pattern)
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
  assumed = sum(r.assumed for r in routes)
  if assumed:
    lines.append(
      f"{assumed} {'layout' if assumed == 1 else 'layouts'} assumed (in, out): trace with "
      "swan_optax.dimension_numbers_from_fn if (out, in)."
    )
  if any(heads):
    lines.append(
      f"{sum(heads)} matrix {'leaf has' if sum(heads) == 1 else 'leaves have'} an axis as long "
      f"as the vocabulary ({vocab}): output heads train with Adam in both papers; match them "
      "with adam_pattern (or None in dimension_numbers)."
    )
  return "\n".join(lines)


def _vocab_size(routes: list[_labels.LeafGroup]) -> int | None:
  """The rows of the longest 2-D embedding table routed to Adam, if any."""
  rows = [r.shape[0] for r in routes if len(r.shape) == 2 and re.search("embed|wte", r.key.lower())]
  return max(rows, default=None)


def _view(route: _labels.LeafGroup, head: bool) -> str:
  """The ``batch x fan_in x fan_out`` cell of a routing-table row, with its notes."""
  if route.problem is not None:
    return route.problem.reason
  if route.group != _labels.MATRIX:
    return ""
  cell = "{} x {} x {}".format(*_matrix.matrix_view(route.shape, route.dims).flat_shape)
  notes = ["assumed (in, out)"] * route.assumed + ["(vocab, d): an output head?"] * head
  return ", ".join([cell, *notes])


def _on_mesh(route: Route | None) -> str:
  """The mesh cell: strategy, axes and bytes moved per device."""
  if route is None:
    return ""
  axes = "/".join(route.sharded_axes + route.spread_axes)
  return (
    f"{route.strategy}{f' over {axes}' if axes else ''}, {route.bytes_per_device / 2**20:.2f} MiB"
  )


def whitening_plan(
  params: Any,
  dimension_numbers: _matrix.DimensionNumbersSpec,
  mesh: jax.sharding.Mesh,
  *,
  adam_pattern: str = _labels.DEFAULT_ADAM_PATTERN,
) -> dict[str, Route]:
  """How each leaf of the matrix group is whitened on ``mesh``, and the bytes it moves.

  Args:
    params: arrays or ``jax.ShapeDtypeStruct`` with their ``NamedSharding``
      (the gradients have the params' layout).
    dimension_numbers: the layouts, as ``swan(dimension_numbers=...)`` takes
      them.
    mesh: the device mesh.
    adam_pattern: as in ``swan``; leaves it matches are not whitened.

  Returns:
    ``{path: Route}`` for every leaf that ``swan`` whitens, in tree order.
  """
  groups = _labels.checked_leaf_groups(params, dimension_numbers, adam_pattern)
  found = [
    (g, x)
    for g, x in zip(groups, jax.tree.leaves(params), strict=True)
    if g.group == _labels.MATRIX
  ]
  leaves = [x for _, x in found]
  specs = [_sharded.checked_spec(_sharded.leaf_spec(x), x, mesh) for x in leaves]
  dims = [g.dims for g, _ in found]
  lays, stacks = _sharded.layouts_and_groups(leaves, dims, specs, mesh)
  routes = [None] * len(found)
  for members in stacks:
    count = sum(lays[i].local_batch for i in members)
    lay, itemsize = lays[members[0]], jnp.dtype(leaves[members[0]].dtype).itemsize
    total = _sharded.group_bytes(count, lay, itemsize, mesh)
    for i in members:
      share = total * lays[i].local_batch // count
      whole = math.prod(jnp.shape(leaves[i])) * itemsize
      routes[i] = Route(lay.strategy, lay.sharded, lay.spread, len(members), share, whole)
  return {g.key: route for (g, _), route in zip(found, routes, strict=True)}
