"""SWAN's update on a mesh of 8 devices, compiled only: FLOPs and collective bytes per device.

Run: ``python -m train.bench.sharded_update`` (simulates 8 CPU devices; allocates nothing,
so 350m and 1b fit). For each config and mesh (data, fsdp, tensor), SWAN's
update (``tx.update`` with the LLaMA's dimension numbers, gradients and params
as ``jax.ShapeDtypeStruct`` in the ``models/sharding.py`` layout) is compiled
the ways a user runs it (``MODES``): on Auto axes with ``mesh=None`` (the
partitioner lays out each leaf's whitening), on Explicit axes with and without
``mesh=``, and inside ``jit`` on Auto axes (how MaxText-style code runs) with
``shardings=`` and with ``mesh=`` alone (which warns). Reported per device:
XLA's FLOPs as a ratio to the single-device FLOPs / 8, and the bytes of the
results of each kind of collective (:func:`train.bench.hlo.collective_bytes`)
as a ratio to M, the bytes of all whitened matrices; plus the bytes that
``swan_optax.inspect.whitening_plan`` predicts. The rows labelled ``3afe9a0`` are
recorded from ``results/sharded_update_recorded.json``: the library before ``mesh=``,
with the trainer's then default whole-matrix layout, measured the same way
once. Writes ``train/bench/results/sharded_update.md``.
"""

import json
import math
import time
import warnings

import jax
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

import swan_optax
from models import configs
from models import llama
from train import optimizer
from train.bench import harness
from train.bench import hlo

AXES = ("data", "fsdp", "tensor")
MESHES = ((8, 1, 1), (1, 8, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8))
DEVICES = 8
RECORDED = harness.RESULTS / "sharded_update_recorded.json"
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


# Label -> (mesh axis types, swan's mesh keywords given the mesh and the params' shardings,
# whether it whitens whole matrices by all-to-alls).
MODES = {
  "Auto, mesh=None": (AxisType.Auto, lambda mesh, shardings: {}, False),
  "Explicit, mesh=None": (AxisType.Explicit, lambda mesh, shardings: {}, True),
  "Explicit, mesh=mesh": (AxisType.Explicit, lambda mesh, shardings: {"mesh": mesh}, True),
  "Auto, shardings=": (AxisType.Auto, lambda mesh, shardings: {"shardings": shardings}, True),
  "Auto, mesh=mesh (warns)": (AxisType.Auto, lambda mesh, shardings: {"mesh": mesh}, False),
}


def compile_update(config, shape: tuple[int, ...], mode: str):
  """SWAN's update (``tx.update`` from fresh state) in ``mode``, compiled for abstract params."""
  axis_type, keywords, _ = MODES[mode]
  mesh = jax.make_mesh(shape, AXES, axis_types=(axis_type,) * len(AXES))
  params = abstract_inputs(config, mesh)
  shardings = jax.tree.map(lambda p: p.sharding, params)  # the updates in the params' layout
  dims = optimizer.dimension_numbers(config)
  tx = swan_optax.swan(1e-3, dimension_numbers=dims, **keywords(mesh, shardings))
  update = lambda grads, params: tx.update(grads, tx.init(params), params)[0]
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    compiled = jax.jit(update, out_shardings=shardings).lower(params, params).compile()
  return compiled, params, mesh, bool(caught)


def measure(name: str) -> list[dict]:
  config = configs.get_config(name)
  dims = optimizer.dimension_numbers(config)
  single, params, single_mesh, _ = compile_update(config, (1, 1, 1), "Auto, mesh=None")
  plan = swan_optax.inspect.whitening_plan(params, dims, single_mesh)
  base_flops, m = hlo.flops(single), sum(r.leaf_bytes for r in plan.values())
  recorded = {tuple(r["mesh"]): r for r in json.loads(RECORDED.read_text()) if r["config"] == name}
  rows = []
  for shape in MESHES:
    if shape in recorded:
      rows.append(
        recorded[shape] | {"mesh": shape, "variant": RECORDED_LABEL, "m": m, "planned": None}
      )
    for mode in MODES:
      start = time.perf_counter()
      compiled, params, mesh, warned = compile_update(config, shape, mode)
      plan = swan_optax.inspect.whitening_plan(params, dims, mesh)
      rows.append(
        {
          "config": name,
          "mesh": shape,
          "variant": mode + (", warned" if warned else ""),
          "flops_vs_ideal": hlo.flops(compiled) / (base_flops / 8),
          "collectives": hlo.collective_bytes(compiled.as_text()),
          "m": m,
          "planned": sum(r.bytes_per_device for r in plan.values()) if MODES[mode][2] else None,
          "strategies": sorted({r.strategy for r in plan.values()}),
        }
      )
      print(f"{name} {shape} {mode}: {time.perf_counter() - start:.0f} s", flush=True)
  return rows


def _kinds(collectives: dict[str, int], m: int) -> str:
  return ", ".join(f"{k} {v / 2**20:.1f} MiB ({v / m:.2f})" for k, v in sorted(collectives.items()))


def to_markdown(rows: list[dict]) -> str:
  lines = [
    f"`python -m train.bench.sharded_update` — compiled only, {jax.device_count()} simulated "
    f"{jax.devices()[0].platform} devices, jax {jax.__version__}. SWAN's update "
    "(`tx.update`, LLaMA dimension numbers, params in the `models/sharding.py` layout; a mesh "
    "axis that does not divide a dimension, 1b's ffn 5461 over tensor, is "
    "left off that dimension). Layouts: `Auto, mesh=None`: the partitioner lays out each "
    "leaf's whitening; `Explicit, mesh=None`: the mesh found in the gradients' types; "
    "`Explicit, mesh=mesh`: given; `Auto, shardings=`: inside `jit` on Auto axes with the "
    "params' shardings; `Auto, mesh=mesh (warns)`: the layout hidden by `jit`, laid out per "
    "leaf as with `mesh=None`. FLOPs: "
    "XLA's per-device count / (single-device count / 8). Collectives: bytes of the results of "
    "each kind, per device, / M (M = bytes of all whitened kernels); planned: what "
    "`swan_optax.inspect.whitening_plan` predicts for whole matrices by all-to-alls.",
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


SUMMARY_MODES = (RECORDED_LABEL, "Auto, mesh=None", "Explicit, mesh=None", "Auto, shardings=")


def summary_table(rows: list[dict]) -> str:
  """One line per config and mesh: FLOPs vs ideal and collectives / M in ``SUMMARY_MODES``."""
  by_key = {(r["config"], tuple(r["mesh"]), r["variant"]): r for r in rows}
  keys = dict.fromkeys((r["config"], tuple(r["mesh"])) for r in rows)
  modes = " / ".join(f"`{m}`" if m != RECORDED_LABEL else m for m in SUMMARY_MODES)
  lines = [
    f"| config | mesh (data, fsdp, tensor) | FLOPs vs ideal: {modes} | collectives / M: {modes} |",
    "|---|---|---:|---:|",
  ]
  for config, shape in keys:
    found = [by_key.get((config, shape, m)) for m in SUMMARY_MODES]
    flops = " / ".join("–" if r is None else f"{r['flops_vs_ideal']:.2f}" for r in found)
    moved = " / ".join(
      "–" if r is None else f"{sum(r['collectives'].values()) / r['m']:.2f}" for r in found
    )
    lines.append(f"| {config} | {shape} | {flops} | {moved} |")
  return "\n".join(lines) + "\n"


def main() -> None:
  harness.simulate_host_devices(DEVICES)
  parser = harness.parser(__doc__, "sharded_update.md")
  parser.add_argument("--configs", default="60m,350m,1b")
  args = parser.parse_args()
  if jax.device_count() != DEVICES:
    raise SystemExit(
      f"{DEVICES} devices needed, {jax.device_count()} {jax.devices()[0].platform} found: run "
      "`JAX_PLATFORMS=cpu python -m train.bench.sharded_update`, which simulates them on the CPU"
    )
  rows = [row for name in args.configs.split(",") for row in measure(name)]
  harness.save(summary_table(rows) + "\n" + to_markdown(rows), args.out)


if __name__ == "__main__":
  main()
