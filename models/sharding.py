"""Mesh axis names, logical axis names, and the one table that maps the second to the first.

Nothing else in the code names mesh axes: models annotate logical axes, and
these rules place them on the ``('data', 'fsdp', 'tensor')`` mesh of
``train/mesh.py``: parameters are sharded over ``fsdp`` (ZeRO-3 style) and
``tensor`` (Megatron style: heads and MLP hidden units), batches over
``data x fsdp``.
"""

import math

from jax.sharding import Mesh
from jax.sharding import PartitionSpec

# The mesh axes, in mesh order; a mesh given no sizes puts every device on the first.
MESH_AXES = ("data", "fsdp", "tensor")

RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
  ("batch", ("data", "fsdp")),
  ("vocab", "tensor"),
  ("embed", "fsdp"),
  ("heads", "tensor"),
  ("mlp", "tensor"),
  ("head_dim", None),
  ("layers", None),
  ("norm", None),
  ("length", None),
)


def logical_to_mesh(logical_axes: tuple[str | None, ...]) -> PartitionSpec:
  """The mesh ``PartitionSpec`` of an array whose axes have these logical names."""
  rules = dict(RULES)
  unknown = [a for a in logical_axes if a is not None and a not in rules]
  if unknown:
    raise ValueError(f"logical axes {unknown} have no rule in models.sharding.RULES")
  return PartitionSpec(*(None if a is None else rules[a] for a in logical_axes))


def batch_spec() -> PartitionSpec:
  """Token batches ``(batch, length)``: rows split over the data-parallel axes."""
  return logical_to_mesh(("batch", "length"))


def batch_shards(mesh: Mesh) -> int:
  """Number of data-parallel shards a batch's rows are split into on ``mesh``."""
  (axes, _) = batch_spec()
  return math.prod(mesh.shape[a] for a in axes)
