"""The device mesh: the named axes of ``models.sharding.MESH_AXES`` over all devices."""

import math
from collections.abc import Sequence

import jax
from jax.sharding import Mesh

from models import sharding

AXES = sharding.MESH_AXES


def parse_mesh(spec: str | None, num_devices: int) -> dict[str, int]:
  """``'data=2,fsdp=2,tensor=2'`` -> axis sizes; missing axes are 1, ``None``: all on the first."""
  sizes = dict.fromkeys(AXES, 1)
  if not spec:
    return {**sizes, AXES[0]: num_devices}
  seen = set()
  example = ",".join(f"{a}=2" for a in AXES)
  for part in spec.split(","):
    name, sep, value = part.partition("=")
    name = name.strip()
    valid = sep and name in AXES and value.strip().isdecimal() and int(value) >= 1
    if not valid or name in seen:
      raise ValueError(
        f"--mesh {spec!r}: expected comma-separated AXIS=SIZE, each AXIS of {AXES} at most once "
        f"and SIZE >= 1, e.g. --mesh {example}"
      )
    seen.add(name)
    sizes[name] = int(value)
  if math.prod(sizes.values()) != num_devices:
    raise ValueError(
      f"--mesh {spec!r} has {math.prod(sizes.values())} devices but {num_devices} are available: "
      "make the sizes multiply to the device count"
    )
  return sizes


def make_mesh(spec: str | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over ``devices`` (default: all devices of all processes), GSPMD (auto) axis types."""
  devices = jax.devices() if devices is None else devices
  sizes = parse_mesh(spec, len(devices))
  # make_mesh orders devices by the hardware topology (ICI/NVLink first).
  return jax.make_mesh(
    tuple(sizes[a] for a in AXES),
    AXES,
    axis_types=(jax.sharding.AxisType.Auto,) * len(AXES),
    devices=devices,
  )
