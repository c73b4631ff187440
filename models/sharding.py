"""Logical axis names and the one table that maps them to mesh axes.

Nothing else in the code names mesh axes: models annotate logical axes, and
these rules place them on the ``('data', 'fsdp', 'tensor')`` mesh of
``train/mesh.py``: parameters are sharded over ``fsdp`` (ZeRO-3 style) and
``tensor`` (Megatron style: heads and MLP hidden units), batches over
``data x fsdp``.
"""

from jax.sharding import PartitionSpec

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
