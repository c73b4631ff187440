"""Train-step benchmark: Adam vs SWAN vs SinkGD vs Muon on the LLaMA configs, side by side.

Run: ``python -m train.bench.step_time``. For each config, the three optimizers'
train steps (forward, backward, update; donated buffers) are compiled and then
timed in interleaved rounds in this one process, on random tokens. Reported:
median step time as a ratio to Adam's, the optimizer's share of the step (a
separately jitted ``tx.update`` + ``apply_updates`` on the same gradients), the
compiled step's peak memory as XLA plans it (arguments + outputs + temporaries,
from ``memory_analysis``), and the optimizer-state bytes against Adam's. Writes
``train/bench/results/step_time.md``.
"""

import argparse
import dataclasses
import functools

import jax

from train import build
from train import step as step_lib
from train.bench import harness
from train.config import TrainConfig
from train.data import DataConfig
from train.optimizers import optimizer_config

# Batches small enough for 2 CPU cores; the ratios, not the absolute times, are the result.
DEFAULT_BATCH = {"tiny": 16, "60m": 2}
STEPS = 1000  # the schedule's length; only a few steps run
COLUMNS: tuple[harness.Column, ...] = (
  ("config", "config", "", "l"),
  ("params", "params", ",", "r"),
  ("tokens", "tokens/step", ",", "r"),
  ("optimizer", "optimizer", "", "l"),
  ("step_ms", "step ms", ".1f", "r"),
  ("step_vs_adam", "step x Adam", ".2f", "r"),
  ("optimizer_share", "optimizer share", ".1%", "r"),
  ("step_peak_mib", "step peak MiB", ".1f", "r"),
  ("state_mib", "optimizer state MiB", ".2f", "r"),
  ("state_vs_adam", "state x Adam", ".3f", "r"),
)


class _Runner:
  """One optimizer's train step, advancing its own state, and its jitted update."""

  def __init__(self, exp: build.Experiment, batch: dict, grads):
    self.stepper, self.grads = harness.Stepper(exp, batch), grads
    self.update = jax.jit(
      functools.partial(step_lib.apply_optimizer, exp.tx), donate_argnums=(1, 2)
    )
    jax.block_until_ready(self.setup_update()())  # compile, on inputs like the timed ones

  def setup_update(self):
    """The update on fresh copies of the current params and optimizer state (donated)."""
    state = self.stepper.state
    params, opt_state = jax.tree.map(lambda x: x.copy(), (state.params, state.opt_state))
    jax.block_until_ready((params, opt_state))
    return lambda: self.update(self.grads, opt_state, params)


def bench_config(name: str, batch_size: int, seq_len: int, reps: int) -> list[dict]:
  config = TrainConfig(
    model=name, batch_size=batch_size, steps=STEPS, data=DataConfig(seq_len=seq_len)
  )
  runners = {}
  for opt in harness.OPTIMIZERS:
    exp = harness.experiment(dataclasses.replace(config, optimizer=optimizer_config(opt)))
    if not runners:  # the same params, batch and gradients for every optimizer
      batch = exp.random_batch()
      grads = jax.jit(jax.grad(step_lib.make_loss_fn(exp.apply)))(exp.state.params, batch)
    step_bytes = harness.compiled_bytes(exp.train_step)
    runners[opt] = (_Runner(exp, batch, grads), step_bytes)
  setups = {}
  for opt, (runner, _) in runners.items():
    setups[f"{opt} step"] = runner.stepper.setup
    setups[f"{opt} update"] = runner.setup_update
  medians = harness.interleaved_medians(setups, reps)
  adam_bytes = step_lib.state_bytes(runners["adam"][0].stepper.state.opt_state)
  rows = []
  for opt, (runner, step_bytes) in runners.items():
    step_s, update_s = medians[f"{opt} step"], medians[f"{opt} update"]
    state_bytes = step_lib.state_bytes(runner.stepper.state.opt_state)
    rows.append(
      {
        "config": name,
        "params": config.model_config.num_params,
        "tokens": config.tokens_per_step,
        "optimizer": opt,
        "step_ms": 1e3 * step_s,
        "step_vs_adam": step_s / medians["adam step"],
        "optimizer_share": update_s / step_s,
        "step_peak_mib": step_bytes / 2**20,
        "state_mib": state_bytes / 2**20,
        "state_vs_adam": state_bytes / adam_bytes,
      }
    )
  return rows


def to_markdown(rows: list[dict], args: argparse.Namespace) -> str:
  """The table, after a header saying how it was measured (``args``: the command line)."""
  header = (
    f"Median of {args.reps} interleaved rounds, one process, {harness.machine()}; float32, "
    f"sequence length {args.seq_len}, random tokens. 'optimizer share' = jitted update + "
    "apply_updates time / full step time; 'step peak' = XLA's planned memory of the compiled "
    "step (arguments + outputs + temporaries - donated).\n\n"
  )
  return header + harness.table(COLUMNS, rows)


def main() -> None:
  parser = harness.parser(__doc__, "step_time.md")
  parser.add_argument("--configs", default="tiny,60m", help="comma-separated model configs")
  parser.add_argument("--seq-len", type=int, default=256)
  parser.add_argument("--reps", type=int, default=5, help="timed rounds per optimizer")
  args = parser.parse_args()
  rows = []
  for name in args.configs.split(","):
    print(f"benchmarking {name} ...", flush=True)
    rows += bench_config(name, DEFAULT_BATCH.get(name, 2), args.seq_len, args.reps)
  harness.save(to_markdown(rows, args), args.out)


if __name__ == "__main__":
  main()
