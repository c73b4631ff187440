"""Where the axes of each parameter leaf go in a jaxpr: the dot_generals and other ops they reach.

Every jaxpr value computed from a leaf by layout ops (reshapes, transposes,
casts, slices, scalar scaling) holds, per axis, the set of leaf axes it came
from. A ``dot_general`` fed by such a value gives the leaf its roles: axes
contracted with the other operand are fan_in, the operand's batch dimensions
are batch axes, its free dimensions fan_out. The dot's output is followed too,
for three questions: whether one of those fan_out axes is then indexed away
entry by entry (``q, k, v = qkv_einsum(x)``), which makes it a fused axis;
whether it meets another kernel's axis as a batch dimension of a later
``dot_general`` (the expert axis of a mixture of experts' up projection, met by
its down projection), which makes it a batch axis; and whether it is cut into
blocks (``jnp.split`` of a flat fused q/k/v projection), which a layout cannot
express.

A leaf passes through an elementwise op when every other operand is another
leaf, a scalar or a constant, i.e. computed from no argument of the function (a
mask built from ``iota`` as in ``jnp.tril``, a closed-over array); combined with
anything else (an activation), it ends there, as a norm scale or a bias does.
"""

import collections
import dataclasses
import math
from collections.abc import Sequence
from typing import Any
from typing import Literal

from jax.extend import core

from swan_optax import _axis_ops

Source = tuple[Literal["leaf", "output"], int]  # a leaf, or the outputs of its dot_generals
Tracked = dict[Source, _axis_ops.AxisMap]


def _per_leaf(kind: type) -> Any:
  return dataclasses.field(default_factory=lambda: collections.defaultdict(kind))


@dataclasses.dataclass
class Uses:
  """What the leaves of a jaxpr reach, by leaf index; filled by :func:`walk`."""

  names: Sequence[str]
  layouts: dict[int, list[tuple[frozenset[int], frozenset[int]]]] = _per_leaf(list)
  indexed: dict[int, set[int]] = _per_leaf(set)  # fan_out axes indexed away: fused axes
  experts: dict[int, set[int]] = _per_leaf(set)  # fan_out axes met by another kernel's batch axis
  blocks: dict[int, set[int]] = _per_leaf(set)  # fan_out axes cut into blocks after the dot
  slices: dict[int, dict[int, set[tuple[int, int]]]] = _per_leaf(
    lambda: collections.defaultdict(set)
  )
  problems: dict[int, list[str]] = _per_leaf(list)  # why the leaf has no layout
  adam: dict[int, set[str]] = _per_leaf(set)  # ops that end it and mean Adam (gather, bias add)
  unknown: dict[int, set[str]] = _per_leaf(set)  # ops that end it and are not followed


def leaf_axes(leaf: int, ndim: int) -> Tracked:
  """A leaf's own value: its axis ``a`` holds leaf axis ``a``."""
  return {("leaf", leaf): tuple(frozenset({a}) for a in range(ndim))}


def walk(
  jaxpr: core.Jaxpr,
  inputs: Sequence[Tracked | None],
  uses: Uses,
  constant: Sequence[bool] | None = None,
) -> list[Tracked | None]:
  """Follows the tracked ``inputs`` of ``jaxpr`` to its outputs, recording uses on the way.

  ``constant`` flags the inputs computed from no argument of the traced function.
  """
  env = {var: tracked for var, tracked in zip(jaxpr.invars, inputs, strict=True) if tracked}
  flags = constant or [False] * len(jaxpr.invars)
  const = {*jaxpr.constvars, *(v for v, c in zip(jaxpr.invars, flags, strict=True) if c)}
  read = lambda v: None if isinstance(v, core.Literal) else env.get(v)
  for eqn in jaxpr.eqns:
    tracked = [read(v) for v in eqn.invars]
    consts = [isinstance(v, core.Literal) or v in const for v in eqn.invars]
    if all(consts):
      const.update(eqn.outvars)
    elif any(tracked):
      for var, out in zip(eqn.outvars, _equation(eqn, tracked, consts, uses), strict=False):
        if out:
          env[var] = out
  return [read(v) for v in jaxpr.outvars]


def _equation(
  eqn: core.JaxprEqn, tracked: list[Tracked | None], constant: list[bool], uses: Uses
) -> list[Tracked]:
  name = eqn.primitive.name
  if name in ("dot_general", "ragged_dot_general"):
    return [_dot(eqn, tracked, uses)]
  layout = _axis_ops.layout_fn(eqn)
  if layout is not None:
    data = [t for t in (tracked[:1] if name in (*_axis_ops.SLICES, "gather") else tracked) if t]
    out = _merge([{s: layout(m) for s, m in t.items()} for t in data])
    _record_indexed(data, [out], uses)
    _record_blocks(eqn, data, uses)
    return [out] * len(eqn.outvars)
  called = _call(eqn, tracked, constant, uses)
  if called is not None:
    return called
  if _is_elementwise(eqn):
    return [_elementwise(eqn, tracked, constant, uses)]
  for t in tracked:
    for kind, leaf in t or ():
      if kind == "leaf" and name == "conv_general_dilated":
        uses.problems[leaf].append("feeds a convolution, which has no matrix layout here")
      elif kind == "leaf":
        (uses.adam if name == "gather" else uses.unknown)[leaf].add(name)
  return []


def _dot(eqn: core.JaxprEqn, tracked: list[Tracked | None], uses: Uses) -> Tracked:
  """Records the roles of the leaves in one operand; tracks their fan_out axes in the output.

  A ``ragged_dot_general`` (``jax.lax.ragged_dot``: tokens sorted by expert) multiplies each
  group of rows by one entry of the kernel's group axes, which are batch axes.
  """
  ragged = eqn.params.get("ragged_dot_dimension_numbers")
  numbers = ragged.dot_dimension_numbers if ragged else eqn.params["dimension_numbers"]
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = numbers
  groups = tuple(ragged.rhs_group_dimensions) if ragged else ()
  leaves, outputs = (
    [{leaf: m for (k, leaf), m in (t or {}).items() if k == kind} for t in tracked]
    for kind in ("leaf", "output")
  )
  # A kernel's axis as a batch dimension opposite another kernel's fan_out axis: experts.
  for pair in zip(lhs_batch, rhs_batch, strict=True):
    for side in (0, 1):
      if any(m[pair[side]] for m in leaves[side].values()):
        for leaf, m in outputs[1 - side].items():
          uses.experts[leaf] |= m[pair[1 - side]]
  if leaves[0] and leaves[1]:
    names = sorted({uses.names[leaf] for side in leaves[:2] for leaf in side})
    for leaf in {**leaves[0], **leaves[1]}:
      uses.problems[leaf].append(f"is multiplied with another param by a dot_general ({names})")
    return {}
  out_ndim = len(eqn.outvars[0].aval.shape)
  offset = len(lhs_batch)
  result = {}
  for var, side, contract, batch in zip(
    eqn.invars[:2],
    leaves[:2],
    (lhs_contract, rhs_contract),
    (lhs_batch, (*rhs_batch, *groups)),
    strict=True,
  ):
    shape = var.aval.shape
    free = [a for a in range(len(shape)) if a not in (*contract, *batch)]
    for leaf, m in side.items():
      held = lambda axes, m=m: frozenset().union(*(m[a] for a in axes))
      fan_in, fan_out = held(contract), held(free)
      clash = (fan_in & fan_out) | ((fan_in | fan_out) & held(batch))
      if clash:
        uses.problems[leaf].append(
          f"has axes {sorted(clash)} merged or split so that one dot_general gives their pieces "
          "different roles"
        )
      else:
        uses.layouts[leaf].append((fan_in, fan_out))
      fused = {offset + i: m[a] for i, a in enumerate(free) if shape[a] > 1 and m[a]}
      if fused:
        result[("output", leaf)] = tuple(fused.get(b, frozenset()) for b in range(out_ndim))
    offset += len(free)
  return result


def _call(
  eqn: core.JaxprEqn, tracked: list[Tracked | None], constant: list[bool], uses: Uses
) -> list[Tracked | None] | None:
  """Walks the inner jaxprs of control flow and calls (jit, remat, custom_vjp, ...).

  A loop's carry counts as computed from the arguments.
  """
  name, p = eqn.primitive.name, eqn.params
  if name == "scan":
    split = p["num_consts"] + p["num_carry"]
    # A scanned operand loses its leading axis in the body: one step per entry.
    xs = [{s: m[1:] for s, m in t.items()} if t else None for t in tracked[split:]]
    _record_indexed([t for t in tracked[split:] if t], [x for x in xs if x], uses)
    flags = [*constant[: p["num_consts"]], *[False] * p["num_carry"], *constant[split:]]
    outs = walk(p["jaxpr"].jaxpr, [*tracked[:split], *xs], uses, flags)
    ys = [
      {s: (frozenset(), *m) for s, m in t.items()} if t else None for t in outs[p["num_carry"] :]
    ]
    return [*outs[: p["num_carry"]], *ys]
  if name == "while":
    cond, body = p["cond_nconsts"], p["cond_nconsts"] + p["body_nconsts"]
    carry, loose = tracked[body:], [False] * len(tracked[body:])
    walk(p["cond_jaxpr"].jaxpr, [*tracked[:cond], *carry], uses, [*constant[:cond], *loose])
    return walk(p["body_jaxpr"].jaxpr, tracked[cond:], uses, [*constant[cond:body], *loose])
  if name == "cond":
    branches = [walk(b.jaxpr, tracked[1:], uses, constant[1:]) for b in p["branches"]]
    return [_merge([t for t in outs if t]) for outs in zip(*branches, strict=True)]
  inner = list(core.jaxprs_in_params(p))
  if len(inner) == 1 and len(inner[0].invars) == len(eqn.invars):
    return walk(inner[0], tracked, uses, constant)
  return None


def _is_elementwise(eqn: core.JaxprEqn) -> bool:
  """One output, and every operand is a scalar or broadcasts to it along size-1 axes."""
  if len(eqn.outvars) != 1:
    return False
  shape = eqn.outvars[0].aval.shape
  fits = lambda s: (
    s == () or (len(s) == len(shape) and all(a in (1, b) for a, b in zip(s, shape, strict=True)))
  )
  return all(fits(v.aval.shape) for v in eqn.invars)


def _elementwise(
  eqn: core.JaxprEqn, tracked: list[Tracked | None], constant: list[bool], uses: Uses
) -> Tracked:
  """A leaf passes through casts, scaling, masks and functions of params (``2 * w``, ``w.T + w``,
  ``jnp.where(mask, w, 0)``); combined with a value computed from the arguments (an activation)
  it ends there, as a norm scale or a bias does. Dot outputs pass through either way."""
  has_leaf = [t is not None and any(kind == "leaf" for kind, _ in t) for t in tracked]
  alone = all(
    leaf or const or math.prod(v.aval.shape) == 1
    for v, leaf, const in zip(eqn.invars, has_leaf, constant, strict=True)
  )
  ndim = len(eqn.outvars[0].aval.shape)
  out = {}
  for t, var in zip(tracked, eqn.invars, strict=True):
    # A scalar operand (w[0, 0]) has no axes to pass on.
    full = len(var.aval.shape) == ndim
    for (kind, leaf), m in (t or {}).items():
      if full and (kind == "output" or alone):
        out = _merge([out, {(kind, leaf): m}])
      elif kind == "leaf":
        uses.adam[leaf].add(eqn.primitive.name)
  return out


def _merge(tracked: Sequence[Tracked]) -> Tracked:
  """Values combined into one: each axis holds what the combined axes held."""
  out = {}
  for t in tracked:
    for s, m in t.items():
      out[s] = tuple(a | b for a, b in zip(out[s], m, strict=True)) if s in out else m
  return out


def _record_indexed(before: Sequence[Tracked], after: Sequence[Tracked], uses: Uses) -> None:
  """A dot output's axis that an op drops (``y[0]``, a scan over it) was indexed entry by entry."""
  held = lambda ts, s: frozenset().union(*(a for t in ts for a in t.get(s, ())))
  for kind, leaf in {s for t in before for s in t if s[0] == "output"}:
    source = (kind, leaf)
    uses.indexed[leaf] |= held(before, source) - held(after, source)


def _record_blocks(eqn: core.JaxprEqn, data: Sequence[Tracked], uses: Uses) -> None:
  """A dot output's axis cut into blocks wider than one entry, at its outermost piece.

  By ``split``, by two different slices, or by picking one entry of an axis that
  a reshape split off the front of a fan_out axis (``y.reshape(b, t, 3, d)[:, :, 0]``).
  Cuts of inner pieces (RoPE's halves of a head) are not blocks of the kernel.
  """
  name, p, shape = eqn.primitive.name, eqn.params, eqn.invars[0].aval.shape
  for (_, leaf), m in (x for t in data for x in t.items() if x[0][0] == "output"):
    outer = lambda axis, m=m: m[axis] - frozenset().union(*m[:axis])
    if name == "split" and len(p["sizes"]) > 1 and max(p["sizes"]) > 1:
      uses.blocks[leaf] |= outer(p["axis"])
    elif name == "slice":
      bounds = zip(p["start_indices"], p["limit_indices"], shape, strict=True)
      for axis, (start, limit, size) in enumerate(bounds):
        for a in outer(axis) if 1 < limit - start < size else ():
          uses.slices[leaf][a].add((start, limit))
    elif name in ("squeeze", "unstack", "gather"):
      dropped = _axis_ops.dropped_axes(eqn)
      kept = frozenset().union(*(x for axis, x in enumerate(m) if axis not in dropped))
      for axis in dropped:
        uses.blocks[leaf] |= outer(axis) & kept
