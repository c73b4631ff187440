"""The stateless transform that applies a per-matrix operator to every matrix leaf."""

from collections.abc import Callable

import jax
import optax

from swan_optax import _matrix
from swan_optax import _sharded


def stateless_matrix_transform(
  operator: Callable[[jax.Array], jax.Array],
  dimension_numbers: _matrix.DimensionNumbersSpec,
  *,
  name: str,
  whole_matrices: bool = False,
  mesh: jax.sharding.Mesh | None = None,
  shardings: _sharded.ShardingsSpec = None,
) -> optax.GradientTransformation:
  """A stateless transform applying ``operator`` to each ``(fan_in, fan_out)`` matrix.

  With ``whole_matrices`` (an operator that needs whole matrices, e.g. whitening)
  and on a mesh (:func:`swan_optax._sharded.mesh_layout`: ``mesh``, the one of
  ``shardings``, or the gradients' Explicit mesh), every device applies
  ``operator`` to its share of whole matrices, received and returned by
  explicit all-to-alls (:func:`swan_optax._sharded.map_matrices_on_mesh`).
  Otherwise the partitioner lays out each leaf's computation, which for
  operators that only reduce along one side moves norm vectors, not matrices.
  """

  def update_fn(updates, state, params=None):
    del params
    dims = _matrix.resolve_dimension_numbers(updates, dimension_numbers, name=name)
    on_mesh = whole_matrices and _sharded.mesh_layout(updates, mesh, shardings, name=name)
    if not on_mesh:
      return jax.tree.map(
        lambda g, d: _matrix.map_matrices(operator, g, d),
        updates,
        dims,
        is_leaf=_matrix.is_dimension_numbers,
      ), state
    leaves, treedef = jax.tree.flatten(updates)
    dims = jax.tree.leaves(dims, is_leaf=_matrix.is_dimension_numbers)
    leaves = _sharded.map_matrices_on_mesh(operator, leaves, dims, *on_mesh)
    return jax.tree.unflatten(treedef, leaves), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)
