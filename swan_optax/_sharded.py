"""Per-matrix operators on a device mesh: whole matrices per device, explicit all-to-alls.

On a mesh, a matrix leaf is split over the mesh axes that shard its matrix
dimensions (``S``, e.g. fsdp on ``d_model`` and tensor on heads) and repeated
over the axes that do not shard it at all (``F``, e.g. data). An operator that
needs whole matrices (whitening) then runs as in layer-sharded Muon (Essential
AI; microsoft/dion's ``megabatch_orthogonalize_async``; Megatron-LM):

1. same-shape blocks of all leaves are stacked and padded with zero matrices to
   a multiple of ``|S| |F|``;
2. one ``all_to_all`` over ``S`` gives each device ``1/|S|`` of the matrices,
   whole;
3. each device of an ``F`` group keeps ``1/|F|`` of those and applies the
   operator, so no device repeats another's work;
4. one ``all_to_all`` over ``S`` sends the blocks back, and one ``all_gather``
   over ``F`` restores the repetition.

Per device, as a fraction of the leaf (``|B|``: the size of the axes sharding
its batch axes), the all-to-alls move ``(1 + 1/|F|) / (|S| |B|)`` when ``S`` is
not empty, the all-gather ``1 / (|S| |B|)`` when ``F`` is not empty, and
nothing moves when the leaf's batch axes already split it over every axis.
"""

import collections
import itertools
import math
import warnings
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental.shard_alike import shard_alike
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from swan_optax import _matrix

AxisNames = tuple[str, ...]
# A tree like the updates (or a callable of them) of NamedSharding or PartitionSpec.
ShardingsSpec = Any | Callable[[Any], Any] | None


class Layout(NamedTuple):
  """Where one leaf's matrices live on the mesh."""

  view: _matrix.MatrixView
  matrix_axes: tuple[AxisNames, ...]  # mesh axes of each matrix dimension (transposed order)
  local_matrix: tuple[int, ...]  # per-device sizes of the matrix dimensions (transposed order)
  local_batch: int  # matrices per device before any communication
  num_fan_in: int  # how many of the matrix dimensions form fan_in
  spread: AxisNames  # F: mesh axes the leaf is repeated over

  @property
  def sharded(self) -> AxisNames:
    """S: the mesh axes splitting the matrices, in all-to-all order."""
    return sum(self.matrix_axes, ())

  @property
  def strategy(self) -> str:
    """``'all-to-all'`` over S, ``'replicated + all-gather'`` over F, both, or ``'local'``."""
    parts = ("all-to-all",) * bool(self.sharded) + ("replicated + all-gather",) * bool(self.spread)
    return " + ".join(parts) or "local"


def _dim_axes(spec: PartitionSpec, ndim: int) -> tuple[AxisNames, ...]:
  entries = tuple(spec) + (None,) * (ndim - len(spec))
  return tuple((a,) if isinstance(a, str) else tuple(a or ()) for a in entries)


def leaf_spec(leaf: Any) -> PartitionSpec:
  """The leaf's ``PartitionSpec``, as far as the leaf itself shows it.

  Concrete arrays and ``jax.ShapeDtypeStruct`` carry their sharding; traced
  values carry it in their type only on Explicit mesh axes. Under ``jit``, a
  dimension sharded over Auto axes reads as unsharded, so the partitioner
  gathers it before the all-to-alls (correct, but it moves more): there the
  layout comes from ``shardings``.
  """
  concrete = not isinstance(leaf, jax.core.Tracer)
  sharding = getattr(leaf, "sharding", None) if concrete else None
  if isinstance(sharding, NamedSharding):
    return sharding.spec
  typed = jax.typeof(leaf).sharding
  explicit = set(typed.mesh.explicit_axes) if typed.mesh.axis_names else set()
  keep = lambda axes: tuple(a for a in axes if a in explicit) or None
  return PartitionSpec(*(keep(axes) for axes in _dim_axes(typed.spec, jnp.ndim(leaf))))


def mesh_layout(
  updates: Any, mesh: Mesh | None, shardings: ShardingsSpec, *, name: str
) -> tuple[Mesh, list[PartitionSpec]] | None:
  """The mesh and each leaf's ``PartitionSpec`` on it, in ``jax.tree.leaves`` order.

  With ``shardings`` the specs come from it (matched to leaves by key path,
  with or without Flax's trailing ``value`` box) and the mesh is ``mesh``, else
  the one of its ``NamedSharding`` entries. Without, the specs come from the
  leaves (:func:`leaf_spec`) and the mesh is ``mesh``, else the gradients' own
  when their types carry one whose axes (of size > 1) are all Explicit.

  Returns:
    ``None`` (the partitioner lays out each leaf) when there is no mesh, or
    when ``mesh`` is given but some leaf's layout on it is not visible (Auto
    axes inside ``jit``): that warns, naming the leaf and the fix, since
    guessed layouts would gather before the all-to-alls.

  Raises:
    ValueError: naming what to pass, when ``shardings`` misses a leaf, holds
      ``PartitionSpec`` entries without ``mesh`` or several meshes, or a spec
      names axes the mesh does not have.
  """
  if shardings is not None:
    return _given_layout(updates, mesh, shardings)
  flat = jax.tree_util.tree_flatten_with_path(updates)[0]
  leaves = [x for _, x in flat]
  mesh = _typed_mesh(leaves) if mesh is None else mesh
  if mesh is None:
    return None
  hidden = [(path, x, axes) for path, x in flat if (axes := _hidden_axes(x, mesh))]
  if hidden:
    _warn_hidden(hidden, name)
    return None
  return mesh, [checked_spec(leaf_spec(x), x, mesh) for x in leaves]


def _typed_mesh(leaves: list) -> jax.sharding.AbstractMesh | None:
  """The mesh in the leaves' types, if they share one whose non-trivial axes are all Explicit."""
  meshes = {getattr(jax.typeof(x), "sharding", None) for x in leaves}
  meshes = {s.mesh for s in meshes if s is not None}
  if len(meshes) != 1:
    return None
  (mesh,) = meshes
  axes = [a for a in mesh.axis_names if mesh.shape[a] > 1]
  return mesh if axes and set(axes) <= set(mesh.explicit_axes) else None


def _hidden_axes(leaf: Any, mesh: Mesh) -> AxisNames:
  """The axes of ``mesh`` (size > 1) along which a traced leaf's layout is not in its type."""
  if not isinstance(leaf, jax.core.Tracer):
    return ()
  typed = jax.typeof(leaf).sharding.mesh
  explicit = set(typed.explicit_axes) if typed.axis_names else set()
  return tuple(a for a in mesh.axis_names if mesh.shape[a] > 1 and a not in explicit)


def _warn_hidden(hidden: list, name: str) -> None:
  path, leaf, axes = hidden[0]
  mib = math.prod(jnp.shape(leaf)) * jnp.dtype(leaf.dtype).itemsize / 2**20
  others = f" (and {len(hidden) - 1} more leaves)" if len(hidden) > 1 else ""
  warnings.warn(
    f"swan_optax.{name}: inside jit, the layout of leaf '{_matrix.path_str(path)}' "
    f"({mib:.2f} MiB){others} along mesh axes {list(axes)} is not in its type (Auto axes), "
    "so the partitioner lays out each leaf instead, as with mesh=None, which may gather "
    "every matrix on every device; pass shardings=<the params' shardings, the tree given to "
    "jax.jit's in_shardings> to whiten whole matrices with all-to-alls",
    stacklevel=2,
  )


def _given_layout(
  updates: Any, mesh: Mesh | None, shardings: ShardingsSpec
) -> tuple[Mesh, list[PartitionSpec]]:
  """The mesh and specs of ``mesh_layout`` from a user's ``shardings``."""
  is_leaf = lambda x: isinstance(x, NamedSharding | PartitionSpec)
  shardings = _matrix.tree_or_call(shardings, updates, is_leaf)
  by_path = _matrix.by_unboxed_path(shardings, is_leaf=is_leaf, name="shardings")
  meshes = {s.mesh for s in by_path.values() if isinstance(s, NamedSharding)}
  if mesh is None and len(meshes) != 1:
    raise ValueError(
      f"shardings holds {len(meshes)} meshes: give a tree of NamedSharding on one mesh, or "
      "PartitionSpecs with mesh=..."
    )
  mesh = meshes.pop() if mesh is None else mesh
  specs = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(updates)[0]:
    entry = by_path.get(_matrix.unboxed_key(path))
    if entry is None:
      raise ValueError(
        f"shardings has no entry for leaf '{_matrix.path_str(path)}' with shape "
        f"{tuple(jnp.shape(leaf))}: pass the params' shardings (the tree given to jit's "
        "in_shardings), a tree like the params"
      )
    spec = entry.spec if isinstance(entry, NamedSharding) else entry
    specs.append(checked_spec(spec, leaf, mesh))
  return mesh, specs


def checked_spec(spec: PartitionSpec, leaf: Any, mesh: Mesh) -> PartitionSpec:
  """``spec``, if every mesh axis it names is one of ``mesh``'s."""
  unknown = {a for axes in _dim_axes(spec, jnp.ndim(leaf)) for a in axes} - set(mesh.axis_names)
  if unknown:
    raise ValueError(
      f"a gradient of shape {jnp.shape(leaf)} is sharded over mesh axes {sorted(unknown)} that "
      f"the optimizer's mesh {dict(mesh.shape)} does not have: pass the mesh the params live on"
    )
  return spec


def layout(
  shape: tuple[int, ...], dims: _matrix.MatrixDimensionNumbers, spec: PartitionSpec, mesh: Mesh
) -> Layout:
  """The :class:`Layout` of a leaf of ``shape`` with ``spec`` on ``mesh``."""
  view = _matrix.matrix_view(shape, dims)
  ndim = len(shape)
  fan_in_dims = _matrix.normalize_axes(dims.reduction_axes, ndim)
  matrix_dims = fan_in_dims + _matrix.normalize_axes(dims.output_axes, ndim)
  batch_dims = view.transpose[: ndim - len(matrix_dims)]
  dim_axes = _dim_axes(spec, ndim)
  size = lambda axes: sizes(axes, mesh)
  used = {a for axes in dim_axes for a in axes}
  return Layout(
    view=view,
    matrix_axes=tuple(tuple(a for a in dim_axes[d] if mesh.shape[a] > 1) for d in matrix_dims),
    local_matrix=tuple(shape[d] // size(dim_axes[d]) for d in matrix_dims),
    local_batch=math.prod(shape[d] // size(dim_axes[d]) for d in batch_dims),
    num_fan_in=len(fan_in_dims),
    spread=tuple(a for a in mesh.axis_names if a not in used and mesh.shape[a] > 1),
  )


def layouts_and_groups(
  leaves: list, dims: list, specs: list[PartitionSpec], mesh: Mesh
) -> tuple[list[Layout], list[list[int]]]:
  """Each leaf's layout, and the leaves stacked and sent together (e.g. q, k and v).

  Leaves group when their per-device blocks, fan_in/fan_out split, mesh axes
  and dtype agree.
  """
  lays = [layout(jnp.shape(x), d, s, mesh) for x, d, s in zip(leaves, dims, specs, strict=True)]
  groups = collections.defaultdict(list)
  for i, (lay, x) in enumerate(zip(lays, leaves, strict=True)):
    key = (lay.local_matrix, lay.num_fan_in, lay.matrix_axes, lay.spread, jnp.dtype(x.dtype))
    groups[key].append(i)
  return lays, list(groups.values())


def sizes(axes: AxisNames, mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in axes)


def _padded(count: int, lay: Layout, mesh: Mesh) -> int:
  """``count`` rounded up so every device of ``S x F`` gets an equal share."""
  n = sizes(lay.sharded, mesh) * sizes(lay.spread, mesh)
  return -(-count // n) * n


def group_bytes(count: int, lay: Layout, itemsize: int, mesh: Mesh) -> int:
  """Bytes of the collective results, per device, for a group of ``count`` local matrices."""
  local = _padded(count, lay, mesh) * math.prod(lay.local_matrix) * itemsize
  s, f = sizes(lay.sharded, mesh), sizes(lay.spread, mesh)
  return (local + local // f if s > 1 else 0) + (local if f > 1 else 0)


def map_matrices_on_mesh(
  fn: Callable[[jax.Array], jax.Array],
  leaves: list[jax.Array],
  dims: list,
  mesh: Mesh,
  specs: list[PartitionSpec],
) -> list[jax.Array]:
  """Applies ``fn`` to every ``(fan_in, fan_out)`` matrix of ``leaves``, whole, on ``mesh``.

  ``specs`` are the leaves' layouts (:func:`mesh_layout`). Same result as
  :func:`swan_optax._matrix.map_matrices` on each leaf; each device transforms
  its share of the matrices (see the module docstring). The results keep the
  leaves' shardings.
  """
  lays, groups = layouts_and_groups(leaves, dims, specs, mesh)

  def body(*blocks):
    out = [None] * len(blocks)
    for members in groups:
      stacked = [_to_local_matrices(blocks[i], lays[i]) for i in members]
      results = _transform_group(fn, stacked, lays[members[0]], mesh)
      for i, r in zip(members, results, strict=True):
        out[i] = _from_local_matrices(r, lays[i], blocks[i].shape)
    return tuple(out)

  # The operators' loops start from constants (e.g. Z = I); vma checks would reject that.
  specs = tuple(specs)
  mapped = jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=specs, check_vma=False)
  # On Auto axes the partitioner places the results; keep the gradients' layout.
  return [shard_alike(x, y)[1] for x, y in zip(leaves, mapped(*leaves), strict=True)]


def _to_local_matrices(block: jax.Array, lay: Layout) -> jax.Array:
  """``(local batch, *local matrix dims)``: the block transposed, batch axes merged."""
  return jnp.transpose(block, lay.view.transpose).reshape((-1,) + lay.local_matrix)


def _from_local_matrices(x: jax.Array, lay: Layout, block_shape: tuple[int, ...]) -> jax.Array:
  transposed = tuple(block_shape[d] for d in lay.view.transpose)
  inverse = tuple(sorted(range(len(transposed)), key=lay.view.transpose.__getitem__))
  return jnp.transpose(x.reshape(transposed), inverse)


def _transform_group(fn, stacked: list[jax.Array], lay: Layout, mesh: Mesh) -> list[jax.Array]:
  """Steps 1-4 of the module docstring for one group of same-shape local blocks."""
  counts = [x.shape[0] for x in stacked]
  x = jnp.concatenate(stacked)
  total = _padded(x.shape[0], lay, mesh)
  x = jnp.pad(x, [(0, total - x.shape[0])] + [(0, 0)] * len(lay.local_matrix))
  s, f = sizes(lay.sharded, mesh), sizes(lay.spread, mesh)
  if s > 1:
    x = _assemble(jax.lax.all_to_all(x, lay.sharded, 0, 0, tiled=True), lay, mesh)
  share = x.shape[0] // f
  if f > 1:
    x = jax.lax.dynamic_slice_in_dim(x, jax.lax.axis_index(lay.spread) * share, share)
  y = _apply(fn, x, lay)
  if s > 1:
    y = jax.lax.all_to_all(_disassemble(y, lay, mesh), lay.sharded, 0, 0, tiled=True)
  if f > 1:
    y = jax.lax.all_gather(y, lay.spread, axis=0, tiled=False)  # (f, s, share, ...)
    y = jnp.swapaxes(y.reshape((f, s, share) + lay.local_matrix), 0, 1)
  y = y.reshape((total,) + lay.local_matrix)
  return jnp.split(y[: sum(counts)], list(itertools.accumulate(counts))[:-1])


def _apply(fn, x: jax.Array, lay: Layout) -> jax.Array:
  """``fn`` on each whole matrix of ``x`` (``(count, *matrix dims)``)."""
  fan_in = math.prod(x.shape[1 : 1 + lay.num_fan_in])
  return _matrix.transform_matrices(fn, x.reshape(x.shape[0], fan_in, -1)).reshape(x.shape)


def _assemble(x: jax.Array, lay: Layout, mesh: Mesh) -> jax.Array:
  """``(s * c, *local dims)``, block ``j`` from device ``j`` of ``S`` -> ``(c, *whole dims)``."""
  parts = tuple(sizes(axes, mesh) for axes in lay.matrix_axes)
  k = len(parts)
  x = x.reshape(parts + (-1,) + lay.local_matrix)
  order = (k,) + tuple(i for d in range(k) for i in (d, k + 1 + d))
  whole = tuple(p * n for p, n in zip(parts, lay.local_matrix, strict=True))
  return jnp.transpose(x, order).reshape((-1,) + whole)


def _disassemble(y: jax.Array, lay: Layout, mesh: Mesh) -> jax.Array:
  """The inverse of :func:`_assemble`: ``(c, *whole dims)`` -> ``(s * c, *local dims)``."""
  parts = tuple(sizes(axes, mesh) for axes in lay.matrix_axes)
  k = len(parts)
  split = (y.shape[0],) + tuple(
    i for p, n in zip(parts, lay.local_matrix, strict=True) for i in (p, n)
  )
  order = tuple(1 + 2 * d for d in range(k)) + (0,) + tuple(2 + 2 * d for d in range(k))
  return jnp.transpose(y.reshape(split), order).reshape((-1,) + lay.local_matrix)
