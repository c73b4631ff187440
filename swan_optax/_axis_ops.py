"""How ops that move, split or merge axes carry the leaf axes each axis of a value holds."""

from collections.abc import Callable

from jax.extend import core

AxisMap = tuple[frozenset[int], ...]  # per axis of a value: the leaf axes it holds

# Ops whose data operands (the first one only for slices) keep their axes.
SLICES = ("slice", "dynamic_slice")
_SAME_AXES = (*SLICES, "split", "concatenate")


def layout_fn(eqn: core.JaxprEqn) -> Callable[[AxisMap], AxisMap] | None:
  """How an op that moves, splits or merges axes maps its data operand's axes to its output's."""
  name, p = eqn.primitive.name, eqn.params
  if name in _SAME_AXES:
    return lambda m: m
  if name == "transpose":
    return lambda m: tuple(m[a] for a in p["permutation"])
  one_index = name == "gather" and len(eqn.outvars[0].aval.shape) == len(
    p["dimension_numbers"].offset_dims
  )
  if name in ("squeeze", "unstack") or one_index:
    # A one-index gather's output is its operand less the collapsed (indexed) axes.
    dropped = dropped_axes(eqn)
    return lambda m: tuple(x for a, x in enumerate(m) if a not in dropped)
  if name == "broadcast_in_dim":
    return lambda m: tuple(
      m[p["broadcast_dimensions"].index(b)] if b in p["broadcast_dimensions"] else frozenset()
      for b in range(len(p["shape"]))
    )
  if name == "reshape":
    # ``dimensions`` transposes the operand first.
    order = p["dimensions"] or range(len(eqn.invars[0].aval.shape))
    shapes = (tuple(eqn.invars[0].aval.shape[a] for a in order), eqn.outvars[0].aval.shape)
    return lambda m: _reshape(tuple(m[a] for a in order), shapes)
  return None


def dropped_axes(eqn: core.JaxprEqn) -> tuple[int, ...]:
  """The axes that ``squeeze``, ``unstack`` or a one-index ``gather`` drop from their operand."""
  name, p = eqn.primitive.name, eqn.params
  if name == "gather":
    return p["dimension_numbers"].collapsed_slice_dims
  return p["dimensions"] if name == "squeeze" else (p["axis"],)


def _reshape(m: AxisMap, shapes: tuple[tuple[int, ...], tuple[int, ...]]) -> AxisMap:
  """Each output axis holds the leaf axes of the input axes it is merged from or split out of.

  Size-1 axes hold nothing: a size-1 input axis that a reshape drops is gone.
  """
  in_shape, out_shape = shapes
  ins = [a for a, size in enumerate(in_shape) if size != 1]
  outs = [b for b, size in enumerate(out_shape) if size != 1]
  held = [frozenset()] * len(out_shape)
  i = j = 0
  while i < len(ins):
    group_in, group_out = [ins[i]], [outs[j]]
    size_in, size_out = in_shape[ins[i]], out_shape[outs[j]]
    i, j = i + 1, j + 1
    while size_in != size_out:
      if size_in < size_out:
        group_in.append(ins[i])
        size_in, i = size_in * in_shape[ins[i]], i + 1
      else:
        group_out.append(outs[j])
        size_out, j = size_out * out_shape[outs[j]], j + 1
    for b in group_out:
      held[b] = frozenset().union(*(m[a] for a in group_in))
  return tuple(held)
