"""SWAN's update on a mesh of 8 devices, compiled only: FLOPs and collective bytes per device.

Run: ``python -m train.bench.mesh`` (simulates 8 CPU devices; allocates nothing,
so 350m and 1b fit). For each config and mesh (data, fsdp, tensor), SWAN's
update (``tx.update`` with the LLaMA's dimension numbers, gradients and params
as ``jax.ShapeDtypeStruct`` in the ``models/sharding.py`` layout on an Explicit
mesh) is compiled twice: ``before`` with ``mesh=None`` (the partitioner lays
out every whitening) and ``after`` with ``mesh=mesh`` (whole matrices by
explicit all-to-alls). Reported per device: XLA's FLOPs as a ratio to the
single-device FLOPs / 8, and the bytes of the results of each kind of
collective (:func:`train.bench.hlo.collective_bytes`) as a ratio to M, the
bytes of all whitened matrices; plus, for ``after``, the bytes that
``swan_optax.whitening_plan`` predicts. The rows labelled ``3afe9a0`` are
recorded from ``results/mesh_recorded.json``: the library before ``mesh=``,
with the trainer's then default whole-matrix layout (``whole_matrix_sharding=
NamedSharding(mesh, P(('fsdp', 'data', 'tensor')))``, Auto mesh), measured
the same way once. Writes ``train/bench/results/mesh.md``.
"""

import json
import math
import time

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

import swan_optax
from models import configs
from models import llama
from train.bench import harness
from train.bench import hlo

AXES = ("data", "fsdp", "tensor")
MESHES = ((8, 1, 1), (1, 8, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8))
DEVICES = 8
RECORDED = harness.RESULTS / "mesh_recorded.json"
RECORDED_LABEL = "3afe9a0"  # the library's last commit without mesh=, as the tables name it


def fitting_spec(shape: tuple[int, ...], spec: PartitionSpec, mesh) -> PartitionSpec:
  """``spec`` without the mesh axes of a dimension they do not divide (1b's ffn 5461)."""
  entries = tuple(spec) + (None,) * (len(shape) - len(spec))
  size = lambda axes: math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes))
  return PartitionSpec(
    *(a if a is None or n % size(a) == 0 else None for n, a in zip(shape, entries, strict=True))
  )


def abstract_inputs(config, mesh) -> dict:
  """The params as ``ShapeDtypeStruct`` in their ``models/sharding.py`` layout on ``mesh``."""
  is_spec = lambda x: isinstance(x, PartitionSpec)

  def place(leaf, spec):
    spec = fitting_spec(leaf.shape, spec, mesh)
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=NamedSharding(mesh, spec))

  return jax.tree.map(
    place, llama.abstract_params(config), llama.param_specs(config), is_leaf=is_spec
  )


def compile_update(config, mesh, optimizer_mesh):
  """SWAN's update (``tx.update`` from fresh state), compiled for abstract params on ``mesh``."""
  dims = harness.dimension_numbers(config)
  tx = swan_optax.swan(1e-3, dimension_numbers=dims, mesh=optimizer_mesh)
  params = abstract_inputs(config, mesh)
  update = lambda grads, params: tx.update(grads, tx.init(params), params)[0]
  shardings = jax.tree.map(lambda p: p.sharding, params)  # the updates in the params' layout
  return jax.jit(update, out_shardings=shardings).lower(params, params).compile(), params


def measure(name: str) -> list[dict]:
  config = configs.get_config(name)
  dims = harness.dimension_numbers(config)
  single_mesh = jax.make_mesh((1, 1, 1), AXES, devices=jax.devices()[:1])
  single, params = compile_update(config, single_mesh, None)
  plan = swan_optax.whitening_plan(params, dims, single_mesh)
  base_flops, m = hlo.flops(single), sum(r.leaf_bytes for r in plan.values())
  recorded = {tuple(r["mesh"]): r for r in json.loads(RECORDED.read_text()) if r["config"] == name}
  rows = []
  for shape in MESHES:
    if shape in recorded:
      rows.append(
        recorded[shape] | {"mesh": shape, "variant": RECORDED_LABEL, "m": m, "planned": None}
      )
    mesh = jax.make_mesh(shape, AXES)
    for variant, optimizer_mesh in (("before", None), ("after", mesh)):
      start = time.perf_counter()
      compiled, params = compile_update(config, mesh, optimizer_mesh)
      plan = swan_optax.whitening_plan(params, dims, mesh)
      rows.append(
        {
          "config": name,
          "mesh": shape,
          "variant": variant,
          "flops_vs_ideal": hlo.flops(compiled) / (base_flops / 8),
          "collectives": hlo.collective_bytes(compiled.as_text()),
          "m": m,
          "planned": sum(r.bytes_per_device for r in plan.values()) if optimizer_mesh else None,
          "strategies": sorted({r.strategy for r in plan.values()}),
        }
      )
      print(f"{name} {shape} {variant}: {time.perf_counter() - start:.0f} s", flush=True)
  return rows


def _kinds(collectives: dict[str, int], m: int) -> str:
  return ", ".join(f"{k} {v / 2**20:.1f} MiB ({v / m:.2f})" for k, v in sorted(collectives.items()))


def to_markdown(rows: list[dict]) -> str:
  lines = [
    f"`python -m train.bench.mesh` — compiled only, {jax.device_count()} simulated "
    f"{jax.devices()[0].platform} devices, jax {jax.__version__}. SWAN's update "
    "(`tx.update`, LLaMA dimension numbers, params in the `models/sharding.py` layout on an "
    "Explicit mesh; a mesh axis that does not divide a dimension, 1b's ffn 5461 over tensor, is "
    "left off that dimension). **before**: `mesh=None` (the partitioner lays out each "
    "whitening; the library's path before `mesh=`). **after**: `swan(..., mesh=mesh)`. FLOPs: "
    "XLA's per-device count / (single-device count / 8). Collectives: bytes of the results of "
    "each kind, per device, / M (M = bytes of all whitened kernels); planned: what "
    "`swan_optax.whitening_plan` predicts.",
    "",
    "| config | mesh (data, fsdp, tensor) | layout | FLOPs vs ideal | collectives / M | "
    "planned / M | by kind: MiB (/ M) | strategies |",
    "|---|---|---|---:|---:|---:|---|---|",
  ]
  for r in rows:
    total = sum(r["collectives"].values()) / r["m"]
    planned = "–" if r["planned"] is None else f"{r['planned'] / r['m']:.2f}"
    strategies = "–" if r["planned"] is None else "; ".join(r["strategies"])
    lines.append(
      f"| {r['config']} | {r['mesh']} | {r['variant']} | {r['flops_vs_ideal']:.2f} | "
      f"{total:.2f} | {planned} | {_kinds(r['collectives'], r['m']) or 'none'} | {strategies} |"
    )
  return "\n".join(lines) + "\n"


def main() -> None:
  harness.simulate_host_devices(DEVICES)
  parser = harness.parser(__doc__, "mesh.md")
  parser.add_argument("--configs", default="60m,350m,1b")
  args = parser.parse_args()
  if jax.device_count() != DEVICES:
    raise SystemExit(
      f"{DEVICES} devices needed, {jax.device_count()} {jax.devices()[0].platform} found: run "
      "`JAX_PLATFORMS=cpu python -m train.bench.mesh`, which simulates them on the CPU"
    )
  rows = [row for name in args.configs.split(",") for row in measure(name)]
  harness.save(to_markdown(rows), args.out)


if __name__ == "__main__":
  main()
