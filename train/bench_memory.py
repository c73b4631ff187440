"""Memory benchmark: optimizer state and training state of Adam, SWAN and SinkGD per LLaMA size.

Run: ``python -m train.bench_memory``. Byte counts come from the real state
trees built with ``jax.eval_shape`` (nothing is allocated, so the 1b model is
fine): optimizer state, and training state = params + grads + optimizer state,
all float32. They are checked against the spec's memory model (Adam: 8 bytes
per parameter; SWAN/SinkGD: 8 bytes per Adam-routed parameter). "+ adafactor"
rows route the non-matrix leaves to ``optax.adafactor`` instead of Adam (the
nearly stateless mode). For the configs given in ``--measure``, each optimizer
also trains a few steps in a fresh subprocess whose peak resident memory is
reported. Writes ``train/results/bench_memory.md``.
"""

import argparse
import functools
import json
import pathlib
import resource
import subprocess
import sys

import jax

import swan_optax
from models import configs
from models import llama
from train import step as step_lib
from train.bench_ops import RESULTS

CONFIGS = ("60m", "130m", "350m", "1b")
VARIANTS = {
  "adam": step_lib.OptimizerConfig(name="adam"),
  "swan": step_lib.OptimizerConfig(name="swan"),
  "sinkgd": step_lib.OptimizerConfig(name="sinkgd"),
  "swan + adafactor": step_lib.OptimizerConfig(name="swan", non_matrix="adafactor"),
  "sinkgd + adafactor": step_lib.OptimizerConfig(name="sinkgd", non_matrix="adafactor"),
}
MIB = 2**20


def state_bytes(name: str) -> dict[str, dict[str, int]]:
  """Per variant: param, optimizer-state and Adam-routed-param bytes, from abstract trees."""
  config = configs.get_config(name)
  params = llama.abstract_params(config)
  labels = jax.tree.leaves(
    swan_optax.param_labels(params, dimension_numbers=llama.dimension_numbers)
  )
  adam_routed = sum(
    p.size for p, label in zip(jax.tree.leaves(params), labels, strict=True) if label == "adam"
  )
  result = {}
  for variant, opt_config in VARIANTS.items():
    tx = step_lib.make_optimizer(opt_config)
    opt_state = jax.eval_shape(tx.init, params)
    result[variant] = {
      "params": step_lib.state_bytes(params),
      "opt_state": step_lib.state_bytes(opt_state),
      "adam_routed_params": adam_routed,
      "num_params": config.num_params,
    }
  return result


def measure_peak_rss(name: str, variant: str, steps: int = 3) -> int:
  """Peak RSS (bytes) of a fresh process that trains ``steps`` steps of ``name``."""
  code = f"import sys; sys.argv = ['x']; from train.bench_memory import _train_and_report; " \
         f"_train_and_report({name!r}, {variant!r}, {steps})"  # fmt: skip
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss"]


def _train_and_report(name: str, variant: str, steps: int) -> None:
  """In the subprocess: a few train steps on random tokens, then print the peak RSS as JSON."""
  import numpy as np  # noqa: PLC0415
  from jax.sharding import NamedSharding  # noqa: PLC0415

  from models import sharding  # noqa: PLC0415
  from train import mesh as mesh_lib  # noqa: PLC0415

  config = configs.get_config(name, max_seq_len=256)
  mesh = mesh_lib.make_mesh(None)
  graphdef, params = llama.init_params(config, mesh, seed=0)
  tx = step_lib.make_optimizer(VARIANTS[variant])
  state, shardings = step_lib.create_state(params, tx, mesh)
  del params
  batch_sharding = NamedSharding(mesh, sharding.batch_spec())
  train_step = step_lib.jit_train_step(
    functools.partial(llama.apply, graphdef), tx, shardings, batch_sharding
  )
  tokens = np.random.default_rng(0).integers(0, config.vocab_size, (2, 257)).astype(np.int32)
  batch = jax.device_put({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}, batch_sharding)
  for _ in range(steps):
    state, metrics = train_step(state, batch)
  jax.block_until_ready(metrics)
  print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def to_markdown(rows: dict[str, dict], measured: dict[tuple[str, str], int]) -> str:
  lines = [
    "Bytes from the initialized state trees (`jax.eval_shape`), float32. Training state = params "
    "+ grads + optimizer state (activations excluded). Spec model: Adam 8 B/param; SWAN/SinkGD "
    "8 B per Adam-routed param.",
    "",
    "| config | params | optimizer | optimizer state MiB | x Adam | spec model MiB "
    "| training state MiB | x Adam | peak RSS MiB (measured, batch 2x256) |",
    "|---|---:|---|---:|---:|---:|---:|---:|---:|",
  ]
  for name, variants in rows.items():
    adam = variants["adam"]
    adam_total = 2 * adam["params"] + adam["opt_state"]
    for variant, b in variants.items():
      model = 8 * (b["num_params"] if variant == "adam" else b["adam_routed_params"])
      model_cell = f"{model / MIB:,.1f}" if "adafactor" not in variant else "–"
      total = 2 * b["params"] + b["opt_state"]
      rss = measured.get((name, variant))
      lines.append(
        f"| {name} | {b['num_params']:,} | {variant} | {b['opt_state'] / MIB:,.1f} | "
        f"{b['opt_state'] / adam['opt_state']:.3f} | {model_cell} | {total / MIB:,.1f} | "
        f"{total / adam_total:.3f} | {'' if rss is None else f'{rss / MIB:,.0f}'} |"
      )
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default=",".join(CONFIGS))
  parser.add_argument("--measure", default="60m", help="configs whose peak RSS is measured")
  parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "bench_memory.md")
  args = parser.parse_args()
  rows = {name: state_bytes(name) for name in args.configs.split(",")}
  measured = {}
  for name in filter(None, args.measure.split(",")):
    for variant in VARIANTS:
      print(f"measuring peak RSS of {name} / {variant} ...", flush=True)
      measured[(name, variant)] = measure_peak_rss(name, variant)
  table = to_markdown(rows, measured)
  print(table)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(table)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
