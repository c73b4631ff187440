"""GPU benchmark: Adam, SWAN, SinkGD and Muon at the largest batch that fits one device; whitening.

Run on a machine with one accelerator:
``XLA_PYTHON_CLIENT_MEM_FRACTION=.95 python -m train.bench.gpu`` (JAX takes 75%
of the device's memory otherwise; the table states the fraction in force).

* **Training.** For each config (60m, 350m) and optimizer, bf16 params and
  activations (the papers' setting; the optimizer computes in float32), sequence
  length 256: the batch doubles from ``--start-batch`` until building or running
  the train step fails with an out-of-memory error (``RESOURCE_EXHAUSTED``) or
  the next batch would pass ``--max-batch`` (512, the papers' batch). At each
  batch that fits, the compiled train step (built by ``train.build``, state
  donated) is timed over ``--reps`` steps; the table keeps the largest: step
  time (median), tokens/s, XLA's planned memory of the step and the optimizer
  state. Only an out-of-memory error ends the search early; any other error is
  raised.
* **Whitening.** ``swan_optax.whiten`` on a Gaussian gradient of every stacked
  kernel shape of the config (layers x fan_in x fan_out), for each method
  (``newton_schulz``, ``polar_express``, ``quintic``) and matmul precision (the
  ``jax.lax.DotAlgorithmPreset`` f32, TF32, 3-pass bf16 and bf16, and the
  backend's ``DEFAULT``): median time, as a ratio to f32, and the cosine of
  layer 0's update to its exact polar factor ``U V^T`` (float64 SVD). A
  precision the backend does not offer is shown as such.

Every tried batch is one compile of the train step (up to 6 per config and
optimizer with the defaults); ``--configs 60m`` and ``--configs 350m`` with
their own ``--out`` split a run that would not fit one session.

``--smoke``: the tiny config at batch 2, sequence length 16, one whitening
shape, 2 rounds: every code path, in about a minute on two CPU cores (tested in
CI; its other flags are ignored). Writes ``train/bench/results/gpu.md``.
"""

import dataclasses
import gc
import math
import os
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import jax
import numpy as np
import optax

import swan_optax
from models import configs
from models import llama
from train import optimizer
from train import step as step_lib
from train.bench import harness
from train.config import ParamDtype
from train.config import TrainConfig
from train.data import DataConfig
from train.optimizers import optimizer_config

METHODS = ("newton_schulz", "polar_express", "quintic")
PRESET = jax.lax.DotAlgorithmPreset
PRECISIONS: dict[str, jax.lax.PrecisionLike] = {
  "f32": PRESET.F32_F32_F32,
  "tf32": PRESET.TF32_TF32_F32,
  "bf16 x3": PRESET.BF16_BF16_F32_X3,
  "bf16": PRESET.BF16_BF16_F32,
  "DEFAULT": jax.lax.Precision.DEFAULT,
}
STEPS = 1000  # the schedule's length; only a few steps run


@dataclasses.dataclass(frozen=True)
class Settings:
  """What one benchmark run measures."""

  configs: tuple[str, ...] = ("60m", "350m")
  seq_len: int = 256
  start_batch: int = 16
  max_batch: int = 512
  reps: int = 5
  param_dtype: ParamDtype = "bfloat16"
  whiten_shapes: int | None = None  # the first N shapes of each config; None: all


SMOKE = Settings(configs=("tiny",), seq_len=16, start_batch=2, max_batch=2, reps=2, whiten_shapes=1)


def is_out_of_memory(error: BaseException) -> bool:
  """Whether ``error``, or an error it was raised from, is XLA running out of device memory."""
  while error is not None:
    message = str(error).lower()
    if isinstance(error, jax.errors.JaxRuntimeError) and (
      "resource_exhausted" in message or "out of memory" in message
    ):
      return True
    error = error.__cause__ or error.__context__
  return False


class Fit(NamedTuple):
  """The largest batch that ran, what it measured, and why no larger batch was tried."""

  batch: int | None  # None: not even the first batch fits
  result: Any
  stop: str


def largest_batch(run: Callable[[int], Any], start: int, cap: int) -> Fit:
  """Runs ``run(batch)`` for ``batch = start, 2 start, ...`` up to ``cap`` or out of memory.

  Raises:
    ValueError: ``start`` is not in ``[1, cap]``.
    Exception: whatever ``run`` raises that is not an out-of-memory error.
  """
  if not 1 <= start <= cap:
    raise ValueError(f"--start-batch {start} must be in [1, --max-batch {cap}]")
  fit, batch = Fit(None, None, ""), start
  while batch <= cap:
    try:
      fit = Fit(batch, run(batch), "")
    except Exception as e:
      if not is_out_of_memory(e):
        raise
      return fit._replace(stop=f"out of memory at {batch}")
    finally:
      gc.collect()  # the failed or finished run's device buffers go before the next one
    batch *= 2
  return fit._replace(stop=f"cap {cap}")


def train_row(model: str, optimizer: str, batch_size: int, settings: Settings) -> dict:
  """Builds ``model`` with ``optimizer`` at ``batch_size`` on one device and times its step."""
  config = TrainConfig(
    model=model,
    bf16=True,
    param_dtype=settings.param_dtype,
    data=DataConfig(seq_len=settings.seq_len),
    optimizer=optimizer_config(optimizer),
    steps=STEPS,
    batch_size=batch_size,
  )
  exp = harness.experiment(config)
  step_s = harness.interleaved_medians({"step": harness.Stepper(exp).setup}, settings.reps)["step"]
  return {
    "step_ms": 1e3 * step_s,
    "tokens_per_s": config.tokens_per_step / step_s,
    "step_gib": harness.compiled_bytes(exp.train_step) / 2**30,
    "state_mib": step_lib.state_bytes(exp.state.opt_state) / 2**20,
  }


def bench_training(model: str, settings: Settings) -> list[dict]:
  rows = []
  for name in harness.OPTIMIZERS:
    print(f"  {name}: largest batch ...", flush=True)
    run = lambda batch, name=name: train_row(model, name, batch, settings)
    fit = largest_batch(run, settings.start_batch, settings.max_batch)
    rows.append(
      {
        "config": model,
        "optimizer": name,
        "batch": fit.batch,
        "stop": fit.stop,
        **(fit.result or {}),
      }
    )
  return rows


def whitening_shapes(config: configs.LlamaConfig) -> list[tuple[int, int, int]]:
  """``(layers, fan_in, fan_out)`` of every kernel SWAN whitens, from the model's own layouts."""
  params = llama.abstract_params(config)
  layouts = optimizer.dimension_numbers(config)
  labels = jax.tree.leaves(swan_optax.param_labels(params, dimension_numbers=layouts))
  is_dims = lambda x: x is None or isinstance(x, swan_optax.MatrixDimensionNumbers)
  dims = jax.tree.leaves(layouts, is_leaf=is_dims)
  shapes = set()
  for leaf, leaf_dims, label in zip(jax.tree.leaves(params), dims, labels, strict=True):
    if label == "matrix":
      size = lambda axes, shape=leaf.shape: math.prod(shape[a] for a in np.atleast_1d(axes))
      fan_in, fan_out = size(leaf_dims.reduction_axes), size(leaf_dims.output_axes)
      shapes.add((leaf.size // (fan_in * fan_out), fan_in, fan_out))
  return sorted(shapes)


def _compiled_whitening(method: str, precision, grads: jax.Array) -> Callable | str:
  """``grads -> whitened`` compiled for ``precision``, or why the backend refuses it."""
  tx = swan_optax.whiten(
    method=method, precision=precision, dimension_numbers=swan_optax.MatrixDimensionNumbers(1, 2)
  )
  try:
    return jax.jit(lambda g: tx.update(g, optax.EmptyState())[0]).lower(grads).compile()
  except ValueError as e:  # "The precision 'TF32_TF32_F32' is not supported by dot_general on CPU"
    if "not supported" not in str(e):
      raise
    return f"not offered: {str(e).splitlines()[0]}"


def whitening_rows(model: str, shape: tuple[int, ...], reps: int) -> list[dict]:
  """Every method and precision whitening a Gaussian gradient of ``shape``, timed interleaved."""
  grads = jax.random.normal(jax.random.key(0), shape)
  ops = {(m, p): _compiled_whitening(m, PRECISIONS[p], grads) for m in METHODS for p in PRECISIONS}
  runnable = {key: op for key, op in ops.items() if callable(op)}
  medians = harness.interleaved_medians(
    {key: (lambda op=op: lambda: op(grads)) for key, op in runnable.items()}, reps
  )
  rows = []
  for (method, precision), op in ops.items():
    row = {
      "config": model,
      "shape": "x".join(map(str, shape)),
      "method": method,
      "precision": precision,
      "note": "" if callable(op) else op,
    }
    if callable(op):
      row["ms"] = 1e3 * medians[(method, precision)]
      row["vs_f32"] = medians[(method, precision)] / medians[(method, "f32")]
      row["cosine"] = harness.cosine_to_polar(op(grads)[0], grads[0])
    rows.append(row)
  return rows


TRAIN_COLUMNS: tuple[harness.Column, ...] = (
  ("config", "config", "", "l"),
  ("optimizer", "optimizer", "", "l"),
  ("batch", "largest batch", "", "r"),
  ("stop", "stop", "", "l"),
  ("step_ms", "step ms", ".1f", "r"),
  ("tokens_per_s", "tokens/s", ",.0f", "r"),
  ("step_gib", "step GiB", ".2f", "r"),
  ("state_mib", "optimizer state MiB", ".1f", "r"),
)
WHITEN_COLUMNS: tuple[harness.Column, ...] = (
  ("config", "config", "", "l"),
  ("shape", "layers x fan_in x fan_out", "", "l"),
  ("method", "method", "", "l"),
  ("precision", "precision", "", "l"),
  ("ms", "ms", ".3f", "r"),
  ("vs_f32", "x f32", ".2f", "r"),
  ("cosine", "cosine", ".5f", "r"),
  ("note", "note", "", "l"),
)


def to_markdown(train_rows: list[dict], whiten_rows: list[dict], settings: Settings) -> str:
  device = jax.devices()[0]
  limit = (device.memory_stats() or {}).get("bytes_limit")
  header = (
    f"`python -m train.bench.gpu` on {device.device_kind} ({harness.machine(devices=1)}); "
    f"memory JAX may use: {'not reported' if limit is None else f'{limit / 2**30:.1f} GiB'} "
    f"(XLA_PYTHON_CLIENT_MEM_FRACTION={os.environ.get('XLA_PYTHON_CLIENT_MEM_FRACTION', 'unset')})"
    f".\n\nTraining: params {settings.param_dtype}, activations bfloat16, optimizer in float32; "
    f"sequence length {settings.seq_len}, random tokens; batch doubled from "
    f"{settings.start_batch} up to {settings.max_batch} sequences until out of memory "
    f"('stop'); median of {settings.reps} steps at the largest batch that ran. 'step GiB': XLA's "
    "planned memory of the compiled step.\n\n"
  )
  whiten_intro = (
    f"\nWhitening one stacked kernel (Gaussian gradient, float32 in and out): median of "
    f"{settings.reps} interleaved rounds per matmul precision; cosine of layer 0 to its exact "
    "polar factor U V^T.\n\n"
  )
  return (
    header
    + harness.table(TRAIN_COLUMNS, train_rows)
    + whiten_intro
    + harness.table(WHITEN_COLUMNS, whiten_rows)
  )


def main(argv: list[str] | None = None) -> None:
  parser = harness.parser(__doc__, "gpu.md")
  default = Settings()
  parser.add_argument("--configs", default=",".join(default.configs), help="model configs")
  parser.add_argument("--seq-len", type=int, default=default.seq_len)
  parser.add_argument("--start-batch", type=int, default=default.start_batch)
  parser.add_argument("--max-batch", type=int, default=default.max_batch)
  parser.add_argument("--reps", type=int, default=default.reps, help="timed steps / rounds")
  parser.add_argument("--param-dtype", default=default.param_dtype, choices=["bfloat16", "float32"])
  parser.add_argument(
    "--smoke", action="store_true", help="tiny config, batch 2, one shape: a minute on a CPU"
  )
  args = parser.parse_args(argv)
  settings = SMOKE
  if not args.smoke:
    settings = Settings(
      configs=tuple(args.configs.split(",")),
      seq_len=args.seq_len,
      start_batch=args.start_batch,
      max_batch=args.max_batch,
      reps=args.reps,
      param_dtype=args.param_dtype,
    )
  train_rows, whiten_rows = [], []
  for model in settings.configs:
    print(f"benchmarking {model} ...", flush=True)
    train_rows += bench_training(model, settings)
    for shape in whitening_shapes(configs.get_config(model))[: settings.whiten_shapes]:
      whiten_rows += whitening_rows(model, shape, settings.reps)
  harness.save(to_markdown(train_rows, whiten_rows, settings), args.out)


if __name__ == "__main__":
  main()
