"""Reading compiled HLO: the bytes each kind of collective moves, and the FLOPs, per device."""

import collections
import math
import re
from typing import Any

COLLECTIVES = ("all-gather", "all-to-all", "all-reduce", "reduce-scatter", "collective-permute")
# One instruction per line: `%name = <result shape> <op>(operands), ...`. The result of a
# tuple-shaped collective holds `/*index=N*/` comments (with an `=`), so the shape is matched
# lazily up to the op name rather than by excluding `=`. Asynchronous pairs are counted once,
# at `-done`, whose result is the collective's result (a `-start` also holds its operands).
_OP = re.compile(
  r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>.+?)\s+(?P<op>"
  + "|".join(COLLECTIVES)
  + r")(?P<suffix>-start|-done)?\(",
  re.MULTILINE,
)
_SHAPE = re.compile(r"\b(pred|s4|u4|[suf]\d+|bf16|f8e\w+)\[([\d,]*)\]")


def _itemsize(dtype: str) -> float:
  if dtype == "pred":
    return 1
  if dtype.startswith(("bf", "f8")):
    return 2 if dtype == "bf16" else 1
  return int(re.sub(r"\D", "", dtype)) / 8


def collective_bytes(hlo: str) -> dict[str, int]:
  """Bytes of the results of each kind of collective in a compiled per-device HLO module.

  Args:
    hlo: ``jax.jit(f).lower(...).compile().as_text()``.

  Returns:
    ``{kind: bytes}`` for the kinds in ``COLLECTIVES`` that occur.
  """
  moved = collections.Counter()
  for op in _OP.finditer(hlo):
    if op.group("suffix") == "-start":
      continue
    for dtype, dims in _SHAPE.findall(op.group("shape")):
      size = math.prod(int(d) for d in dims.split(",") if d)
      moved[op.group("op")] += int(_itemsize(dtype) * size)
  return dict(moved)


def flops(compiled: Any) -> float:
  """Per-device FLOPs that XLA's cost analysis counts in a compiled function."""
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list | tuple) else analysis
  return float(analysis["flops"])
