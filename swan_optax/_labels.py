"""Routing of parameter leaves between the stateless matrix group and Adam."""

import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from swan_optax import _matrix

MATRIX = "matrix"
ADAM = "adam"
# Embeddings, the output head, norms and biases go to Adam (SPEC 5, after GaLore).
DEFAULT_ADAM_PATTERN = r"embed|lm_head|norm|bias"

LabelsSpec = Any | Callable[[Any], Any] | None


def param_labels(
  params: Any,
  *,
  dimension_numbers: _matrix.DimensionNumbersSpec = None,
  adam_pattern: str = DEFAULT_ADAM_PATTERN,
) -> Any:
  """Labels every leaf ``'matrix'`` (stateless group) or ``'adam'``.

  A leaf goes to Adam if its lower-cased key path matches ``adam_pattern`` or it
  has fewer than 2 dimensions. Otherwise, with ``dimension_numbers=None``, a
  2-D leaf is a matrix and a leaf of rank >= 3 is an error; with a tree (or a
  callable returning one) of :class:`MatrixDimensionNumbers`, a leaf is a matrix
  exactly when it has some (``None`` sends it to Adam); one
  ``MatrixDimensionNumbers`` applies to every leaf not sent to Adam.

  Raises:
    ValueError: naming the path and shape of a leaf of rank >= 3 that has no
      dimension numbers.
  """
  explicit = _explicit_dimension_numbers(params, dimension_numbers)
  pattern = re.compile(adam_pattern)

  def label(path, leaf):
    key = _matrix.path_str(path)
    if pattern.search(key.lower()) or np.ndim(leaf) < 2:
      return ADAM
    if explicit is not None:
      return MATRIX if explicit(key) is not None else ADAM
    if np.ndim(leaf) == 2:
      return MATRIX
    raise ValueError(
      f"leaf '{key}' with shape {np.shape(leaf)} has rank {np.ndim(leaf)} and no "
      "dimension numbers: pass dimension_numbers (e.g. MatrixDimensionNumbers(1, 2) for a "
      "(layers, in, out) stack) or route it with param_labels / adam_pattern."
    )

  return jax.tree_util.tree_map_with_path(label, params)


def _explicit_dimension_numbers(params, spec) -> Callable[[str], Any] | None:
  """Path -> dimension numbers lookup for a user spec, ``None`` for the 2-D default."""
  if spec is None:
    return None
  if _matrix.is_dimension_numbers(spec):
    return lambda key: spec
  tree = spec(params) if callable(spec) else spec
  return _matrix.lookup_by_path(tree).get


def resolve_labels(params: Any, labels: LabelsSpec, **routing: Any) -> Any:
  """The label tree: ``labels`` (a tree or a callable of params) or the default routing."""
  if labels is None:
    return param_labels(params, **routing)
  return labels(params) if callable(labels) else labels


def routing_table(
  params: Any,
  labels: LabelsSpec = None,
  *,
  dimension_numbers: _matrix.DimensionNumbersSpec = None,
  adam_pattern: str = DEFAULT_ADAM_PATTERN,
) -> str:
  """A printable table of every leaf: path, shape, group and matrix view.

  Works on concrete or abstract (``jax.eval_shape``) params. Example::

    print(swan_optax.routing_table(params))
  """
  label_tree = resolve_labels(
    params, labels, dimension_numbers=dimension_numbers, adam_pattern=adam_pattern
  )
  explicit = _explicit_dimension_numbers(params, dimension_numbers)
  rows = [("path", "shape", "group", "matrices (batch x fan_in x fan_out)")]
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  for (path, leaf), label in zip(leaves, jax.tree.leaves(label_tree), strict=True):
    key = _matrix.path_str(path)
    view = ""
    if label == MATRIX:
      default = _matrix.MatrixDimensionNumbers() if np.ndim(leaf) == 2 else None
      dims = explicit(key) if explicit is not None else default
      view = (
        "{} x {} x {}".format(*_matrix.matrix_view(np.shape(leaf), dims).flat_shape)
        if dims is not None
        else "needs dimension_numbers"
      )
    rows.append((key, str(tuple(np.shape(leaf))), str(label), view))
  widths = [max(len(row[i]) for row in rows) for i in range(4)]
  pad = lambda row: "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
  lines = [pad(row).rstrip() for row in rows]
  lines.insert(1, pad(["-" * w for w in widths]))
  return "\n".join(lines)
