"""Mesh-layout benchmark: where the optimizers communicate, and what it costs, on 8 devices.

Run: ``python -m train.bench_mesh`` (it simulates 8 CPU devices unless more
exist). For the mesh layouts (data, fsdp, tensor) = (8,1,1), (2,4,1), (2,2,2),
each optimizer's update (``tx.update`` + ``apply_updates``, params and state in
their training shardings) is compiled alone and its HLO searched for
collectives: the bytes each kind moves (result shapes) show where SWAN's
whitening gathers matrices. SWAN is run in both layouts: ``param`` (each matrix
whitened in its parameter's sharded layout) and ``whole`` (the layer stacks
spread over the devices, whole matrices per device; the default). Reported:
median update time as a ratio to Adam's on the same mesh and, for the configs
given with ``--step-configs``, the full train step's time as a ratio to Adam's
on (8,1,1). Writes ``train/results/bench_mesh.md``.
"""

import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  ).strip()

import argparse  # noqa: E402 - XLA_FLAGS must be set before JAX starts
import collections  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402

from models import configs  # noqa: E402
from models import llama  # noqa: E402
from models import sharding  # noqa: E402
from train import mesh as mesh_lib  # noqa: E402
from train import step as step_lib  # noqa: E402
from train.bench_ops import RESULTS  # noqa: E402
from train.bench_ops import _time  # noqa: E402

MESHES = ("data=8", "data=2,fsdp=4", "data=2,fsdp=2,tensor=2")
VARIANTS = {  # name -> (optimizer, whiten_over)
  "adam": ("adam", ()),
  "sinkgd": ("sinkgd", ()),
  "swan (param layout)": ("swan", ()),
  "swan (whole matrices)": ("swan", step_lib.WHOLE_MATRIX_AXES),
}
COLLECTIVES = ("all-gather", "all-to-all", "all-reduce", "reduce-scatter", "collective-permute")
_OP = re.compile(r"= (\(?[^=]*?\)?) (" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_SHAPE = re.compile(r"\b(pred|[subf]\d+|bf16)\[([\d,]*)\]")


def collective_bytes(hlo: str) -> dict[str, int]:
  """Bytes of the results of each kind of collective in a compiled (per-device) HLO module."""
  moved = collections.Counter()
  for op in _OP.finditer(hlo):
    for dtype, dims in _SHAPE.findall(op.group(1)):
      itemsize = 1 if dtype == "pred" else int(re.sub(r"\D", "", dtype) or 16) // 8
      moved[op.group(2)] += itemsize * int(np.prod([int(d) for d in dims.split(",") if d]))
  return dict(moved)


def bench(name: str, mesh_spec: str, reps: int, with_step: bool, batch: int, seq: int) -> list:
  config = configs.get_config(name, max_seq_len=seq)
  mesh = mesh_lib.make_mesh(mesh_spec)
  graphdef, params = llama.init_params(config, mesh, seed=0)
  param_shardings = jax.tree.map(lambda x: x.sharding, params)
  grads = jax.tree.map(lambda p: p + 0.01, params)  # any gradient-shaped, sharded arrays
  apply_fn = lambda p, tokens: llama.apply(graphdef, p, tokens)
  batch_sharding = NamedSharding(mesh, sharding.batch_spec())
  tokens = np.random.default_rng(0).integers(0, config.vocab_size, (batch, seq), np.int32)
  batch_arrays = jax.device_put({"inputs": tokens, "targets": tokens}, batch_sharding)
  runs = {}
  for variant, (opt, over) in VARIANTS.items():
    tx = step_lib.make_optimizer(
      step_lib.OptimizerConfig(name=opt, steps=1000, whiten_over=over), mesh
    )
    state, shardings = step_lib.create_state(params, tx, mesh)

    def update(g, s, p, tx=tx):
      updates, s = tx.update(g, s, p)
      return optax.apply_updates(p, updates), s

    compiled = (
      jax.jit(
        update,
        in_shardings=(param_shardings, shardings.opt_state, param_shardings),
        out_shardings=(param_shardings, shardings.opt_state),
      )
      .lower(grads, state.opt_state, params)
      .compile()
    )
    run = {"update": compiled, "opt_state": state.opt_state, "update_s": [], "step_s": []}
    run["collectives"] = collective_bytes(compiled.as_text())
    if with_step:
      run["step"] = step_lib.jit_train_step(apply_fn, tx, shardings, batch_sharding)
      fresh = jax.tree.map(lambda x: x.copy(), state)  # the step donates its input
      run["state"], _ = run["step"](fresh, batch_arrays)  # compile and warm up
    jax.block_until_ready(compiled(grads, state.opt_state, params))
    runs[variant] = run
  for _ in range(reps):
    for run in runs.values():
      run["update_s"].append(_time(lambda run=run: run["update"](grads, run["opt_state"], params)))
      if with_step:
        run["step_s"].append(_time(lambda run=run: _advance(run, batch_arrays)))
  adam_update = statistics.median(runs["adam"]["update_s"])
  return [
    {
      "config": name,
      "mesh": tuple(mesh.shape.values()),
      "variant": variant,
      "collectives": run["collectives"],
      "update_vs_adam": statistics.median(run["update_s"]) / adam_update,
      "step_s": statistics.median(run["step_s"]) if with_step else None,
    }
    for variant, run in runs.items()
  ]


def _advance(run: dict, batch: dict) -> jax.Array:
  run["state"], metrics = run["step"](run["state"], batch)
  return metrics["loss"]


def to_markdown(rows: list[dict], reps: int, batch: int, seq: int) -> str:
  device = f"{jax.device_count()} {jax.devices()[0].platform} devices, {platform.machine()}"
  lines = [
    f"`python -m train.bench_mesh` — one process, {device} on {os.cpu_count()} cores, jax "
    f"{jax.__version__}; medians of {reps} interleaved rounds. Collectives: bytes of the "
    "results of each kind of collective in the compiled update (per device). Step: full train "
    f"step ({batch}x{seq} tokens), as a ratio to Adam's step on mesh (8, 1, 1).",
    "",
    "| config | mesh (data, fsdp, tensor) | optimizer | collectives in the update | "
    "update x Adam (same mesh) | step x Adam (8,1,1) |",
    "|---|---|---|---|---:|---:|",
  ]
  for config in dict.fromkeys(r["config"] for r in rows):
    base = [r for r in rows if r["config"] == config and r["variant"] == "adam"][0]["step_s"]
    for r in (r for r in rows if r["config"] == config):
      moved = ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in sorted(r["collectives"].items()))
      step = "–" if r["step_s"] is None else f"{r['step_s'] / base:.2f}"
      lines.append(
        f"| {config} | {r['mesh']} | {r['variant']} | {moved or 'none'} | "
        f"{r['update_vs_adam']:.2f} | {step} |"
      )
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default="tiny,60m")
  parser.add_argument("--step-configs", default="tiny", help="configs whose full step is timed")
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--seq-len", type=int, default=128)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "bench_mesh.md")
  args = parser.parse_args()
  rows = []
  for name in args.configs.split(","):
    for spec in MESHES:
      print(f"benchmarking {name} on mesh {spec} ...", flush=True)
      with_step = name in args.step_configs.split(",")
      rows += bench(name, spec, args.reps, with_step, args.batch_size, args.seq_len)
  table = to_markdown(rows, args.reps, args.batch_size, args.seq_len)
  print(table)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(table)


if __name__ == "__main__":
  main()
