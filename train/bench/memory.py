"""Memory benchmark: optimizer state and training state of Adam, SWAN, SinkGD, Muon per LLaMA size.

Run: ``python -m train.bench.memory``. Byte counts come from the real state
trees of ``build(..., abstract=True)`` (nothing is allocated, so the 1b model
is fine): optimizer state, and training state = params + grads + optimizer
state, all float32. They are checked against the memory model of the papers
(Adam: 8 bytes per parameter; SWAN/SinkGD: 8 bytes per Adam-routed parameter; Muon: those
and its momentum, 4 bytes per matrix parameter).
"+ adafactor" rows route the non-matrix leaves to ``optax.adafactor`` instead
of Adam (the nearly stateless mode). For the configs given in ``--measure``,
each optimizer also trains a few steps in a fresh subprocess whose peak
resident memory is reported. Writes ``train/bench/results/memory.md``.
"""

import json
import resource
import subprocess
import sys

import jax

import swan_optax
from train import optimizer
from train import step as step_lib
from train.bench import harness
from train.config import TrainConfig
from train.data import DataConfig
from train.optimizers import optimizer_config

CONFIGS = ("60m", "130m", "350m", "1b")
VARIANTS = {
  **{name: optimizer_config(name) for name in harness.OPTIMIZERS},
  "swan + adafactor": optimizer_config("swan", non_matrix="adafactor"),
  "sinkgd + adafactor": optimizer_config("sinkgd", non_matrix="adafactor"),
}
MIB = 2**20
COLUMNS: tuple[harness.Column, ...] = (
  ("config", "config", "", "l"),
  ("params", "params", ",", "r"),
  ("optimizer", "optimizer", "", "l"),
  ("state_mib", "optimizer state MiB", ",.1f", "r"),
  ("state_vs_adam", "x Adam", ".3f", "r"),
  ("spec_mib", "spec model MiB", ",.1f", "r"),
  ("training_mib", "training state MiB", ",.1f", "r"),
  ("training_vs_adam", "x Adam", ".3f", "r"),
  ("rss_mib", "peak RSS MiB (measured, batch 2x256)", ",.0f", "r"),
)


def _config(name: str, variant: str, batch_size: int = 2) -> TrainConfig:
  return TrainConfig(
    model=name,
    optimizer=VARIANTS[variant],
    batch_size=batch_size,
    steps=1000,
    data=DataConfig(seq_len=256),
  )


def state_bytes(name: str) -> dict[str, dict[str, int]]:
  """Per variant: param, optimizer-state and Adam-routed-param bytes, from abstract trees."""
  result = {}
  for variant in VARIANTS:
    exp = harness.experiment(_config(name, variant), abstract=True)
    params = exp.state.params
    labels = swan_optax.param_labels(
      params, dimension_numbers=optimizer.dimension_numbers(exp.model_config)
    )
    adam_routed = sum(
      p.size
      for p, label in zip(jax.tree.leaves(params), jax.tree.leaves(labels), strict=True)
      if label == "adam"
    )
    result[variant] = {
      "params": step_lib.state_bytes(params),
      "opt_state": step_lib.state_bytes(exp.state.opt_state),
      "adam_routed_params": adam_routed,
      "num_params": exp.model_config.num_params,
    }
  return result


def measure_peak_rss(name: str, variant: str, steps: int = 3) -> int:
  """Peak RSS (bytes) of a fresh process that trains ``steps`` steps of ``name``."""
  code = f"from train.bench import memory; memory.train_and_report({name!r}, {variant!r}, {steps})"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss"]


def train_and_report(name: str, variant: str, steps: int) -> None:
  """In the subprocess: a few train steps on random tokens, then print the peak RSS as JSON."""
  exp = harness.experiment(_config(name, variant))
  batch, state = exp.random_batch(), exp.state
  for _ in range(steps):
    state, metrics = exp.train_step(state, batch)
  jax.block_until_ready(metrics)
  print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def spec_bytes(variant: str, num_params: int, adam_routed: int) -> int:
  """The papers' memory model: Adam's two moments (8 B) for every parameter it trains, and
  Muon's momentum (4 B) for every matrix parameter."""
  if variant == "adam":
    return 8 * num_params
  return 8 * adam_routed + (4 * (num_params - adam_routed) if variant == "muon" else 0)


def to_markdown(rows: dict[str, dict], measured: dict[tuple[str, str], int]) -> str:
  header = (
    "Bytes from the initialized state trees (`jax.eval_shape`), float32. Training state = params "
    "+ grads + optimizer state (activations excluded). Spec model: Adam 8 B/param; SWAN/SinkGD "
    "8 B per Adam-routed param; Muon those and 4 B per matrix param (its momentum).\n\n"
  )
  table = []
  for name, variants in rows.items():
    adam = variants["adam"]
    adam_total = 2 * adam["params"] + adam["opt_state"]
    for variant, b in variants.items():
      spec = spec_bytes(variant, b["num_params"], b["adam_routed_params"])
      total = 2 * b["params"] + b["opt_state"]
      rss = measured.get((name, variant))
      table.append(
        {
          "config": name,
          "params": b["num_params"],
          "optimizer": variant,
          "state_mib": b["opt_state"] / MIB,
          "state_vs_adam": b["opt_state"] / adam["opt_state"],
          "spec_mib": "–" if "adafactor" in variant else spec / MIB,
          "training_mib": total / MIB,
          "training_vs_adam": total / adam_total,
          "rss_mib": None if rss is None else rss / MIB,
        }
      )
  return header + harness.table(COLUMNS, table)


def main() -> None:
  parser = harness.parser(__doc__, "memory.md")
  parser.add_argument("--configs", default=",".join(CONFIGS))
  parser.add_argument("--measure", default="60m", help="configs whose peak RSS is measured")
  args = parser.parse_args()
  rows = {name: state_bytes(name) for name in args.configs.split(",")}
  measured = {}
  for name in filter(None, args.measure.split(",")):
    for variant in VARIANTS:
      print(f"measuring peak RSS of {name} / {variant} ...", flush=True)
      measured[(name, variant)] = measure_peak_rss(name, variant)
  harness.save(to_markdown(rows, measured), args.out)


if __name__ == "__main__":
  main()
