"""Train-step benchmark: Adam vs SWAN vs SinkGD on the LLaMA configs, side by side.

Run: ``python -m train.bench_step``. For each config, the three optimizers'
train steps (forward, backward, update; donated buffers) are compiled and then
timed in interleaved rounds in this one process, on random tokens. Reported:
median step time as a ratio to Adam's, the optimizer's share of the step (a
separately jitted ``tx.update`` + ``apply_updates`` on the same gradients), the
compiled step's peak memory as XLA plans it (arguments + outputs + temporaries,
from ``memory_analysis``), and the optimizer-state bytes against Adam's. Writes
``train/results/bench_step.md``.
"""

import argparse
import os
import pathlib
import platform
import statistics

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding

from models import configs
from models import llama
from models import sharding
from train import mesh as mesh_lib
from train import step as step_lib
from train.bench_ops import RESULTS
from train.bench_ops import _time

OPTIMIZERS = ("adam", "swan", "sinkgd")
# Batches small enough for 2 CPU cores; the ratios, not the absolute times, are the result.
DEFAULT_BATCH = {"tiny": 16, "60m": 2}


def _compiled_bytes(compiled) -> int:
  """Peak memory XLA plans for one call: arguments + outputs + temporaries - aliased (donated)."""
  m = compiled.memory_analysis()
  return (
    m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
  )


def bench_config(name: str, batch_size: int, seq_len: int, reps: int) -> list[dict]:
  config = configs.get_config(name, max_seq_len=seq_len)
  mesh = mesh_lib.make_mesh(None)
  graphdef, params = llama.init_params(config, mesh, seed=0)
  apply_fn = lambda p, tokens: llama.apply(graphdef, p, tokens)
  batch_sharding = NamedSharding(mesh, sharding.batch_spec())
  tokens = np.random.default_rng(0).integers(0, config.vocab_size, (batch_size, seq_len + 1))
  batch = jax.device_put(
    {"inputs": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32)},
    batch_sharding,
  )
  loss_fn = lambda p: step_lib.next_token_loss(apply_fn(p, batch["inputs"]), batch["targets"])
  grads = jax.jit(jax.grad(loss_fn))(params)

  runs = {}
  for opt in OPTIMIZERS:
    tx = step_lib.make_optimizer(step_lib.OptimizerConfig(name=opt, steps=1000), mesh)
    state, shardings = step_lib.create_state(params, tx, mesh)
    train_step = step_lib.jit_train_step(apply_fn, tx, shardings, batch_sharding)
    compiled = train_step.lower(state, batch).compile()

    def update(grads, opt_state, params, tx=tx):
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    update = jax.jit(update, donate_argnums=(1, 2))
    state, _ = train_step(state, batch)  # warm up
    runs[opt] = {
      "train_step": train_step,
      "update": update,
      "state": state,
      "step_bytes": _compiled_bytes(compiled),
      "state_bytes": step_lib.state_bytes(state.opt_state),
      "step_s": [],
      "update_s": [],
    }
    params_copy = jax.tree.map(lambda x: x.copy(), params)
    jax.block_until_ready(update(grads, tx.init(params_copy), params_copy))  # compile

  for _ in range(reps):
    for run in runs.values():
      state = run["state"]
      run["step_s"].append(_time(lambda run=run, state=state: _advance(run, state, batch)))
      fresh_params = jax.tree.map(lambda x: x.copy(), run["state"].params)
      fresh_opt = jax.tree.map(lambda x: x.copy(), run["state"].opt_state)
      jax.block_until_ready((fresh_params, fresh_opt))
      run["update_s"].append(
        _time(lambda run=run, o=fresh_opt, p=fresh_params: run["update"](grads, o, p))
      )

  adam_step = statistics.median(runs["adam"]["step_s"])
  adam_bytes = runs["adam"]["state_bytes"]
  rows = []
  for opt, run in runs.items():
    step_s, update_s = statistics.median(run["step_s"]), statistics.median(run["update_s"])
    rows.append({
      "config": name,
      "params": config.num_params,
      "tokens": batch_size * seq_len,
      "optimizer": opt,
      "step_ms": 1e3 * step_s,
      "step_vs_adam": step_s / adam_step,
      "optimizer_share": update_s / step_s,
      "step_peak_mib": run["step_bytes"] / 2**20,
      "state_mib": run["state_bytes"] / 2**20,
      "state_vs_adam": run["state_bytes"] / adam_bytes,
    })  # fmt: skip
  return rows


def _advance(run: dict, state, batch):
  """One train step; the new state replaces the donated one."""
  run["state"], metrics = run["train_step"](state, batch)
  return metrics["loss"]


def to_markdown(rows: list[dict], reps: int, seq_len: int) -> str:
  device = f"{jax.device_count()} {jax.devices()[0].platform} device(s), {platform.machine()}"
  header = (
    f"Median of {reps} interleaved rounds, one process, {device}, {os.cpu_count()} cores, "
    f"jax {jax.__version__}; float32, sequence length {seq_len}, random tokens. "
    "'optimizer share' = jitted update + apply_updates time / full step time; 'step peak' = "
    "XLA's planned memory of the compiled step (arguments + outputs + temporaries - donated).\n\n"
    "| config | params | tokens/step | optimizer | step ms | step x Adam | optimizer share "
    "| step peak MiB | optimizer state MiB | state x Adam |\n"
    "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|\n"
  )
  lines = [
    f"| {r['config']} | {r['params']:,} | {r['tokens']:,} | {r['optimizer']} | {r['step_ms']:.1f} "
    f"| {r['step_vs_adam']:.2f} | {100 * r['optimizer_share']:.1f}% | {r['step_peak_mib']:.1f} "
    f"| {r['state_mib']:.2f} | {r['state_vs_adam']:.3f} |"
    for r in rows
  ]
  return header + "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default="tiny,60m", help="comma-separated model configs")
  parser.add_argument("--seq-len", type=int, default=256)
  parser.add_argument("--reps", type=int, default=5, help="timed rounds per optimizer")
  parser.add_argument(
    "--out", type=pathlib.Path, default=RESULTS / "bench_step.md", help="Markdown table to write"
  )
  args = parser.parse_args()
  rows = []
  for name in args.configs.split(","):
    print(f"benchmarking {name} ...", flush=True)
    rows += bench_config(name, DEFAULT_BATCH.get(name, 2), args.seq_len, args.reps)
  table = to_markdown(rows, args.reps, args.seq_len)
  print(table)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(table)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
