"""Matrix views of parameter leaves: dimension numbers, reshapes and resolution.

Every operator in this package acts on a batch of matrices ``X[b]`` of shape
``(fan_in, fan_out)``. ``MatrixDimensionNumbers`` says which axes of a leaf are
fan_in (reduction) and fan_out (output); all other axes are batch axes. The
semantics are those of ``optax.contrib.MuonDimensionNumbers``.
"""

import math
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental.shard_alike import shard_alike

Axes = int | Sequence[int]


class MatrixDimensionNumbers(NamedTuple):
  """Which axes of a leaf are the matrix's fan_in and fan_out.

  A Flax ``(in, out)`` kernel is ``MatrixDimensionNumbers(0, 1)`` (the default).
  A scanned stack ``(layers, in, out)`` is ``MatrixDimensionNumbers(1, 2)``; an
  attention query kernel ``(d_model, heads, head_dim)`` is
  ``MatrixDimensionNumbers(0, (1, 2))``. Axes not named are batch axes: each
  batch entry is an independent matrix.
  """

  reduction_axes: Axes = 0
  output_axes: Axes = 1


DimensionNumbersTree = Any
DimensionNumbersSpec = (
  MatrixDimensionNumbers | DimensionNumbersTree | Callable[[Any], DimensionNumbersTree] | None
)


def is_dimension_numbers(x: Any) -> bool:
  return isinstance(x, MatrixDimensionNumbers)


def normalize_axes(axes: Axes, ndim: int) -> tuple[int, ...]:
  axes = (axes,) if isinstance(axes, int) else tuple(axes)
  bad = [ax for ax in axes if not -ndim <= ax < ndim]
  if bad:
    raise ValueError(f"axes {bad} out of range for a leaf of rank {ndim}")
  return tuple(ax % ndim for ax in axes)


class MatrixView(NamedTuple):
  """How to go from a leaf to its ``(batch, fan_in, fan_out)`` view and back."""

  transpose: tuple[int, ...]
  flat_shape: tuple[int, int, int]
  unflat_shape: tuple[int, ...]

  @property
  def fan_in(self) -> int:
    return self.flat_shape[1]

  @property
  def fan_out(self) -> int:
    return self.flat_shape[2]

  def to_matrices(self, x: jax.Array) -> jax.Array:
    return jnp.transpose(x, self.transpose).reshape(self.flat_shape)

  def from_matrices(self, x: jax.Array) -> jax.Array:
    inverse = tuple(sorted(range(len(self.transpose)), key=self.transpose.__getitem__))
    return jnp.transpose(x.reshape(self.unflat_shape), inverse)


def matrix_view(shape: Sequence[int], dims: MatrixDimensionNumbers) -> MatrixView:
  """The batch-of-matrices view of a leaf of ``shape`` under ``dims``."""
  ndim = len(shape)
  if ndim < 2:
    raise ValueError(f"a matrix leaf needs rank >= 2, got shape {tuple(shape)}")
  reduction = normalize_axes(dims.reduction_axes, ndim)
  output = normalize_axes(dims.output_axes, ndim)
  if not reduction or not output:
    raise ValueError(f"{dims} names no reduction or no output axis")
  if len(set(reduction + output)) != len(reduction) + len(output):
    raise ValueError(f"{dims} names an axis twice (shape {tuple(shape)})")
  batch = tuple(ax for ax in range(ndim) if ax not in reduction + output)
  transpose = batch + reduction + output
  sizes = lambda axes: tuple(shape[ax] for ax in axes)
  flat = (math.prod(sizes(batch)), math.prod(sizes(reduction)), math.prod(sizes(output)))
  return MatrixView(transpose, flat, sizes(transpose))


def map_matrices(
  fn: Callable[[jax.Array], jax.Array], x: jax.Array, dims: MatrixDimensionNumbers
) -> jax.Array:
  """Applies ``fn`` to every ``(fan_in, fan_out)`` matrix of ``x``, in float32.

  Each matrix is first divided by its largest absolute entry. Every operator
  here is invariant to a positive scale of the matrix, and this keeps their
  squares and Gram matrices finite for gradients of any finite magnitude. The
  result is cast back to ``x.dtype`` and reshaped to ``x.shape``, in ``x``'s
  sharding. The partitioner lays out the reshapes: on Explicit mesh axes they
  run as Auto axes (an Explicit-typed reshape of a sharded leaf is ambiguous).
  """
  view = matrix_view(x.shape, dims)

  def apply(x):
    result = view.from_matrices(transform_matrices(fn, view.to_matrices(x)))
    # The reshapes and matmuls may leave another layout; keep the leaf's.
    _, result = shard_alike(x, result)
    return result

  sharding = jax.typeof(x).sharding
  explicit = tuple(sharding.mesh.explicit_axes) if sharding.mesh.axis_names else ()
  if not explicit:
    return apply(x)
  return jax.sharding.auto_axes(apply, axes=explicit, out_sharding=sharding)(x)


def transform_matrices(fn: Callable[[jax.Array], jax.Array], matrices: jax.Array) -> jax.Array:
  """``fn`` on each matrix of a ``(batch, m, n)`` stack, in float32, divided by its max |entry|."""
  upcast = matrices.astype(jnp.promote_types(matrices.dtype, jnp.float32))
  return jax.vmap(lambda m: fn(_divide_by_max_abs(m)))(upcast).astype(matrices.dtype)


def _divide_by_max_abs(x: jax.Array) -> jax.Array:
  max_abs = jnp.max(jnp.abs(x))
  return x / jnp.where(max_abs > 0, max_abs, 1)


def path_str(path: tuple[Any, ...]) -> str:
  return jax.tree_util.keystr(path, simple=True, separator="/")


def unboxed_key(path: tuple[Any, ...]) -> str:
  """The key path as ``'a/b/c'`` without Flax's trailing ``value`` box.

  ``nn.Partitioned`` (linen) and ``nnx.Variable`` (in ``nnx.Optimizer``) leaves
  add a trailing ``/value`` to a path; the unboxed path is the same with or
  without them.
  """
  key = path_str(path)
  return "" if key == "value" else key.removesuffix("/value")


class LayoutError(ValueError):
  """A leaf has no dimension numbers, or ones that do not fit its shape."""

  def __init__(self, where: str, reason: str, advice: str = ""):
    super().__init__(f"{where} {reason}{advice}")
    self.reason = reason


# optax.inject_hyperparams calls every callable argument with the step count, so a callable
# spec arrives as what it returned for a scalar: dimension numbers that fit no leaf.
_INJECT_HINT = (
  "if dimension_numbers is a callable under optax.inject_hyperparams, pass "
  "static_args='dimension_numbers'"
)
_LAYOUT_HINT = (
  "swan_optax.dimension_numbers_from_fn(forward, params, example_input) for any model, "
  "swan_optax.dimension_numbers_from_model(model) for an NNX model, "
  "swan_optax.dimension_numbers_from_einsum('BLD,DHK->BLHK') for an einsum kernel, "
  "MatrixDimensionNumbers(1, 2) for a (layers, in, out) stack, or None in the tree to train it "
  "with Adam"
)


def tree_or_call(spec: Any, tree: Any, is_entry: Callable[[Any], bool]) -> Any:
  """A user's tree of entries, or the tree a callable ``spec`` returns for ``tree``.

  A callable that holds entries is a tree (an equinox module is both).
  """
  if not callable(spec) or is_entry(spec):
    return spec
  leaves = jax.tree.leaves(spec, is_leaf=lambda x: x is None or is_entry(x))
  return spec if any(is_entry(x) for x in leaves) else spec(tree)


def by_unboxed_path(tree: Any, *, is_leaf: Callable[[Any], bool], name: str) -> dict[str, Any]:
  """``{unboxed key path: entry}`` of a user's tree named ``name``; two paths may not collide."""
  by_path = {}
  for path, entry in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]:
    key = unboxed_key(path)
    if key in by_path:
      raise ValueError(
        f"{name} names '{path_str(path)}' twice (with and without a trailing 'value')"
      )
    by_path[key] = entry
  return by_path


def dimension_numbers_resolver(
  tree: Any, spec: DimensionNumbersSpec
) -> Callable[[tuple[Any, ...], Any], MatrixDimensionNumbers | None]:
  """The one reading of a ``dimension_numbers`` spec: ``(path, leaf) -> dims``.

  ``spec`` is ``None`` (2-D leaves are ``(fan_in, fan_out)``), one
  ``MatrixDimensionNumbers`` for every leaf, a tree of them (``None`` marks a
  leaf that is not a matrix), or a callable returning such a tree from ``tree``.
  Tree entries are matched to leaves by key path, with or without Flax's
  trailing ``value`` box, so the tree may be built from unboxed params and may
  hold ``optax.MaskedNode`` entries where ``optax.partition`` masked leaves out.

  Returns:
    A function of a leaf's key path and the leaf, returning its dimension
    numbers, or ``None`` where the tree says the leaf is not a matrix.

  Raises:
    LayoutError: (from the returned function) naming the leaf's path and shape
      when the spec gives it no dimension numbers (a leaf that is not 2-D under
      ``None``, a leaf absent from the tree) or ones that do not fit its shape.
  """
  spec = tree_or_call(spec, tree, is_dimension_numbers)
  is_leaf = lambda x: x is None or is_dimension_numbers(x)
  by_path = None
  if spec is not None and not is_dimension_numbers(spec):
    by_path = by_unboxed_path(spec, is_leaf=is_leaf, name="dimension_numbers")
    # The same path one level down: layouts of a variables dict {'params': ...}.
    inner = {below: key for key in by_path if (below := key.partition("/")[2])}

  def resolve(path, leaf):
    where = f"leaf '{path_str(path)}' with shape {tuple(jnp.shape(leaf))}"
    key = unboxed_key(path)
    if by_path is not None and key not in by_path:
      reason, below = "is missing from dimension_numbers", key.partition("/")[2]
      found = inner.get(key) or (below if below in by_path else None)
      if found:
        level = "above" if key in inner else "below"
        raise LayoutError(
          where,
          reason,
          f", which has '{found}': the layouts are one level {level} the params (one of them "
          "is a variables dict {'params': ...}?): trace and train the same tree, e.g. "
          "variables['params'] for both.",
        )
      raise LayoutError(where, reason, f": give it {_LAYOUT_HINT}.")
    if by_path is not None:
      dims = by_path[key]
    elif spec is None and jnp.ndim(leaf) != 2:
      reason = "is not a 2-D matrix and has no dimension numbers"
      raise LayoutError(where, reason, f": pass {_LAYOUT_HINT}.")
    else:
      dims = spec if spec is not None else MatrixDimensionNumbers()
    if dims is not None:
      try:
        matrix_view(jnp.shape(leaf), dims)
      except ValueError as e:
        advice = f" ({_INJECT_HINT})"
        raise LayoutError(where, f"does not fit its dimension numbers: {e}", advice) from None
    return dims

  return resolve


def resolve_dimension_numbers(
  updates: Any, spec: DimensionNumbersSpec, *, name: str
) -> DimensionNumbersTree:
  """A tree like ``updates`` with a ``MatrixDimensionNumbers`` at every leaf.

  ``spec`` is read by :func:`dimension_numbers_resolver`; every leaf must be a
  matrix.

  Raises:
    ValueError: prefixed by ``name``, naming the leaf's path and shape, if a
      leaf has no dimension numbers or they do not fit its shape.
  """
  resolver = dimension_numbers_resolver(updates, spec)

  def resolve(path, leaf):
    try:
      dims = resolver(path, leaf)
    except LayoutError as e:
      raise ValueError(f"{name}: {e}") from None
    if dims is None:
      raise ValueError(
        f"{name}: leaf '{path_str(path)}' with shape {tuple(jnp.shape(leaf))} has no "
        "MatrixDimensionNumbers in dimension_numbers; give it some or route it to another "
        "transform with optax.partition."
      )
    return dims

  return jax.tree_util.tree_map_with_path(resolve, updates)
