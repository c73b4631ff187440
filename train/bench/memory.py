"""Memory benchmark: optimizer state and training state of Adam, SWAN and SinkGD per LLaMA size.

Run: ``python -m train.bench.memory``. Byte counts come from the real state
trees of ``build(..., abstract=True)`` (nothing is allocated, so the 1b model
is fine): optimizer state, and training state = params + grads + optimizer
state, all float32. They are checked against the memory model of the papers
(Adam: 8 bytes per parameter; SWAN/SinkGD: 8 bytes per Adam-routed parameter).
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
from models import llama
from train import build
from train import mesh as mesh_lib
from train import step as step_lib
from train.bench import harness
from train.config import OptimizerConfig
from train.config import TrainConfig
from train.data import DataConfig

CONFIGS = ("60m", "130m", "350m", "1b")
VARIANTS = {
  "adam": OptimizerConfig(name="adam"),
  "swan": OptimizerConfig(name="swan"),
  "sinkgd": OptimizerConfig(name="sinkgd"),
  "swan + adafactor": OptimizerConfig(name="swan", non_matrix="adafactor"),
  "sinkgd + adafactor": OptimizerConfig(name="sinkgd", non_matrix="adafactor"),
}
MIB = 2**20


def _config(name: str, variant: str, batch_size: int = 2) -> TrainConfig:
  return TrainConfig(model=name, optimizer=VARIANTS[variant], batch_size=batch_size,
                     steps=1000, data=DataConfig(seq_len=256))  # fmt: skip


def state_bytes(name: str) -> dict[str, dict[str, int]]:
  """Per variant: param, optimizer-state and Adam-routed-param bytes, from abstract trees."""
  mesh = mesh_lib.make_mesh(None, jax.devices()[:1])
  result = {}
  for variant in VARIANTS:
    exp = build.build(_config(name, variant), mesh, abstract=True)
    params = exp.state.params
    labels = swan_optax.param_labels(
      params, dimension_numbers=llama.dimension_numbers(exp.model_config)
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
  code = f"from train.bench.memory import _train_and_report; " \
         f"_train_and_report({name!r}, {variant!r}, {steps})"  # fmt: skip
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss"]


def _train_and_report(name: str, variant: str, steps: int) -> None:
  """In the subprocess: a few train steps on random tokens, then print the peak RSS as JSON."""
  exp = build.build(_config(name, variant), mesh_lib.make_mesh(None))
  batch, state = exp.random_batch(), exp.state
  for _ in range(steps):
    state, metrics = exp.train_step(state, batch)
  jax.block_until_ready(metrics)
  print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def to_markdown(rows: dict[str, dict], measured: dict[tuple[str, str], int]) -> str:
  header = (
    "Bytes from the initialized state trees (`jax.eval_shape`), float32. Training state = params "
    "+ grads + optimizer state (activations excluded). Spec model: Adam 8 B/param; SWAN/SinkGD "
    "8 B per Adam-routed param.\n\n"
  )
  cells = []
  for name, variants in rows.items():
    adam = variants["adam"]
    adam_total = 2 * adam["params"] + adam["opt_state"]
    for variant, b in variants.items():
      model = 8 * (b["num_params"] if variant == "adam" else b["adam_routed_params"])
      total = 2 * b["params"] + b["opt_state"]
      rss = measured.get((name, variant))
      cells.append([
        name, f"{b['num_params']:,}", variant, f"{b['opt_state'] / MIB:,.1f}",
        f"{b['opt_state'] / adam['opt_state']:.3f}",
        f"{model / MIB:,.1f}" if "adafactor" not in variant else "–", f"{total / MIB:,.1f}",
        f"{total / adam_total:.3f}", "" if rss is None else f"{rss / MIB:,.0f}",
      ])  # fmt: skip
  columns = ["config", "params", "optimizer", "optimizer state MiB", "x Adam", "spec model MiB",
             "training state MiB", "x Adam", "peak RSS MiB (measured, batch 2x256)"]  # fmt: skip
  return header + harness.markdown_table(columns, cells, "lrlrrrrrr")


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
