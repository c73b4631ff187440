"""Routing of parameter leaves between the stateless matrix group and Adam."""

import re
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import numpy as np

from swan_optax import _matrix

MATRIX = "matrix"
ADAM = "adam"
# Embeddings, the output head, norms and biases go to Adam, as in both papers. A head is a leaf,
# or the module holding it, named as in GPT-2, nanoGPT, MaxText, levanter, Llama and common
# equinox and haiku code; BERT's 'attention/output/dense/kernel' stays a matrix.
DEFAULT_ADAM_PATTERN = (
  r"embed|lm_head|norm|bias|(^|/)(head|output|unembed|logits|logits_dense|wte|wpe)(/[^/]+)?$"
)

LabelsSpec = Any | Callable[[Any], Any] | None


class LeafGroup(NamedTuple):
  """Where one leaf goes: its group and matrix view, or why it cannot be routed."""

  key: str
  shape: tuple[int, ...]
  group: str | None
  dims: _matrix.MatrixDimensionNumbers | None
  problem: _matrix.LayoutError | None
  assumed: bool = False  # a 2-D matrix given no dimension_numbers: read as (in, out)


def leaf_groups(
  params: Any,
  dimension_numbers: _matrix.DimensionNumbersSpec,
  adam_pattern: str,
  labels: LabelsSpec = None,
) -> list[LeafGroup]:
  """The group of every leaf of ``params``, in ``jax.tree.leaves`` order.

  Groups come from ``labels`` when given, else from ``adam_pattern`` and the
  leaf's rank and dimension numbers; every matrix leaf gets its dimension
  numbers, or the reason it has none.
  """
  resolver = _matrix.dimension_numbers_resolver(params, dimension_numbers)
  pattern = re.compile(adam_pattern)
  flat, _ = jax.tree_util.tree_flatten_with_path(params)
  given = [None] * len(flat) if labels is None else jax.tree.leaves(_label_tree(params, labels))

  def group(path, leaf, label):
    key, shape = _matrix.path_str(path), tuple(np.shape(leaf))
    to_adam = pattern.search(key.lower()) or pattern.search(_matrix.unboxed_key(path).lower())
    if label == ADAM or (label is None and (to_adam or len(shape) < 2)):
      return LeafGroup(key, shape, ADAM, None, None)
    try:
      dims = resolver(path, leaf)
    except _matrix.LayoutError as e:
      return LeafGroup(key, shape, None, None, e)
    if dims is None and label == MATRIX:
      where = f"leaf '{key}' with shape {shape}"
      return LeafGroup(
        key, shape, MATRIX, None, _matrix.LayoutError(where, "has None dimension numbers")
      )
    group = ADAM if dims is None else MATRIX
    return LeafGroup(key, shape, group, dims, None, dimension_numbers is None and group == MATRIX)

  return [group(path, leaf, label) for (path, leaf), label in zip(flat, given, strict=True)]


def _label_tree(params: Any, labels: LabelsSpec) -> Any:
  return _matrix.tree_or_call(labels, params, lambda x: isinstance(x, str))


def param_labels(
  params: Any,
  *,
  dimension_numbers: _matrix.DimensionNumbersSpec = None,
  adam_pattern: str = DEFAULT_ADAM_PATTERN,
) -> Any:
  """Labels every leaf ``'matrix'`` (stateless group) or ``'adam'``.

  A leaf goes to Adam if its lower-cased key path matches ``adam_pattern``
  (with or without Flax's trailing ``value`` box, so ``r'kernel$'`` matches
  ``'dense/kernel/value'``) or it has fewer than 2 dimensions. Otherwise, with
  ``dimension_numbers=None``, a 2-D leaf is a matrix and a leaf of rank >= 3 is
  an error; with a tree (or a callable returning one) of
  :class:`MatrixDimensionNumbers`, a leaf is a matrix when it has some, goes to
  Adam when its entry is ``None``, and is an error when it has no entry; one
  ``MatrixDimensionNumbers`` applies to every leaf not sent to Adam.

  Raises:
    ValueError: naming the path and shape of every leaf of rank >= 2 that has
      no dimension numbers (or ones that do not fit it).
  """
  groups = checked_leaf_groups(params, dimension_numbers, adam_pattern)
  return jax.tree.unflatten(jax.tree.structure(params), [g.group for g in groups])


def checked_leaf_groups(
  params: Any, dimension_numbers: _matrix.DimensionNumbersSpec, adam_pattern: str
) -> list[LeafGroup]:
  """:func:`leaf_groups`, raising a ValueError naming the first leaf that has no layout."""
  groups = leaf_groups(params, dimension_numbers, adam_pattern)
  problems = [g.problem for g in groups if g.problem is not None]
  if problems:
    others = f" ({len(problems) - 1} more leaves need one too)" if len(problems) > 1 else ""
    raise ValueError(f"{problems[0]}{others}")
  return groups


def resolve_labels(params: Any, labels: LabelsSpec, **routing: Any) -> Any:
  """The label tree of an optimizer: ``labels`` (a tree or a callable) or the default routing.

  Raises:
    ValueError: if a label is not ``'matrix'`` or ``'adam'``, or the params have
      leaves and none is a matrix (every leaf would silently train with Adam).
  """
  if labels is None:
    tree = param_labels(params, **routing)
  else:
    tree = _label_tree(params, labels)
  found = jax.tree.leaves(tree)
  bad = sorted({repr(x) for x in found if x not in (MATRIX, ADAM)})
  if bad:
    raise ValueError(
      f"param_labels holds {', '.join(bad)}; every label must be '{MATRIX}' or '{ADAM}' "
      "(under optax.inject_hyperparams, a callable param_labels needs static_args='param_labels')"
    )
  # An empty tree (e.g. optax.tree_map_params' placeholder) has nothing to route.
  if found and MATRIX not in found:
    raise ValueError(
      "no leaf is routed to the stateless matrix group, so every leaf would train with Adam: "
      "check dimension_numbers, adam_pattern and param_labels against "
      "print(swan_optax.routing_table(params, dimension_numbers=...))"
    )
  return tree
