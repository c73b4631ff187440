"""Pretrain a Flax LLaMA with SWAN, SinkGD or Adam on a device mesh.

``python -m train --config tiny --optimizer swan`` trains the tiny model on the
shipped Shakespeare corpus; ``python -m train --help`` lists every flag.
"""

import argparse
import contextlib
import json
import math
import os
import pathlib
import signal
import sys
import time
import zlib
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from tqdm import tqdm

from models import configs
from models import llama
from models import sharding
from train import checkpoint
from train import data
from train import mesh as mesh_lib
from train import metrics
from train import step as step_lib


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    prog="python -m train",
    description=__doc__.splitlines()[0],
    formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  p.add_argument("--config", default="tiny", choices=sorted(configs.CONFIGS), help="model size")
  p.add_argument(
    "--optimizer",
    default="swan",
    choices=["swan", "sinkgd", "adam", "adamw"],
    help="swan/sinkgd: stateless on attention and MLP kernels, Adam on the rest",
  )
  p.add_argument(
    "--non-matrix",
    default="adam",
    choices=["adam", "adafactor"],
    help="swan/sinkgd: optimizer of embeddings, lm_head and norms (adafactor: nearly stateless)",
  )
  p.add_argument(
    "--whiten-layout",
    default="whole",
    choices=["whole", "param"],
    help="swan on a mesh: whiten whole matrices, layer stacks spread over the devices (whole), "
    "or in each parameter's sharded layout, gathering it on every device (param)",
  )
  p.add_argument("--steps", type=int, default=300, help="optimizer steps")
  p.add_argument("--batch-size", type=int, default=16, help="global batch, in sequences")
  p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence")
  p.add_argument(
    "--lr",
    type=float,
    default=None,
    help="peak learning rate; None: the optimizer's, "
    + ", ".join(f"{k} {v:g}" for k, v in step_lib.DEFAULT_LR.items()),
  )
  p.add_argument("--warmup", type=float, default=0.1, help="linear warmup, fraction of --steps")
  p.add_argument("--weight-decay", type=float, default=0.0, help="decoupled weight decay")
  p.add_argument("--max-grad-norm", type=float, default=None, help="global gradient clipping")
  p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
  p.add_argument("--bf16", action="store_true", help="bfloat16 activations (params stay float32)")
  p.add_argument("--eval-every", type=int, default=50, help="steps between validation runs")
  p.add_argument("--eval-batches", type=int, default=8, help="validation batches per run")
  p.add_argument("--log-every", type=int, default=10, help="steps between train-metric records")
  p.add_argument(
    "--tensorboard", action="store_true", help="also log metrics to OUT/tensorboard (tensorboardX)"
  )
  p.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
  p.add_argument("--keep-checkpoints", type=int, default=3, help="checkpoints kept")
  p.add_argument("--out", type=pathlib.Path, default=None, help="run folder (runs/CONFIG-OPT)")
  p.add_argument(
    "--data", default=str(data.DEFAULT_CORPUS), help="text files / globs, or hf:NAME[:CONFIG]"
  )
  p.add_argument("--tokenizer", default=None, help="tokenizer.json or sentencepiece .model")
  p.add_argument(
    "--mesh", default=None, help="e.g. data=2,fsdp=2,tensor=2; None: every device on data"
  )
  p.add_argument("--seed", type=int, default=0, help="init and data-order seed")
  p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
  p.add_argument(
    "--on-nonfinite",
    choices=["skip", "stop"],
    default="skip",
    help="a NaN/Inf loss or gradient: skip that update, or stop (last checkpoint kept)",
  )
  p.add_argument(
    "--coordinator",
    default=None,
    help="multi-process: HOST:PORT of process 0, or 'auto' to detect SLURM, Open MPI, "
    "Kubernetes or Cloud TPU (also started when JAX_COORDINATOR_ADDRESS is set)",
  )
  p.add_argument("--num-processes", type=int, default=None, help="multi-process: processes")
  p.add_argument("--process-id", type=int, default=None, help="multi-process: this process")
  args = p.parse_args(argv)
  positive = ["steps", "batch_size", "seq_len", "grad_accum", "eval_every", "eval_batches",
              "log_every", "checkpoint_every", "keep_checkpoints"]  # fmt: skip
  for name in positive:
    if getattr(args, name) < 1:
      p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
  if args.lr is not None and not (args.lr > 0 and math.isfinite(args.lr)):
    p.error(f"--lr must be a positive number, got {args.lr}")
  if not 0 <= args.warmup < 1:
    p.error(f"--warmup must be in [0, 1), got {args.warmup}")
  if not 0 <= args.weight_decay < math.inf:
    p.error(f"--weight-decay must be a number >= 0, got {args.weight_decay}")
  if args.max_grad_norm is not None and not 0 < args.max_grad_norm < math.inf:
    p.error(f"--max-grad-norm must be a positive number, got {args.max_grad_norm}")
  if args.out is None:
    args.out = pathlib.Path("runs") / f"{args.config}-{args.optimizer}"
  return args


def _check_batch(args: argparse.Namespace, mesh: jax.sharding.Mesh) -> None:
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  per_step = args.batch_size // args.grad_accum
  if args.batch_size % args.grad_accum or per_step % shards:
    raise ValueError(
      f"--batch-size {args.batch_size} must split into --grad-accum {args.grad_accum} "
      f"micro-batches each divisible by the {shards} data-parallel shards (data x fsdp) of the "
      f"mesh: use a multiple of {args.grad_accum * shards}"
    )


def _place_batch(batch: dict, batch_sharding: NamedSharding) -> dict:
  """This process's rows of a global batch -> one global array per field."""
  return {
    k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v))
    for k, v in batch.items()
  }


def evaluate(eval_step, params, batches, batch_sharding) -> dict:
  """Mean token loss and perplexity (exp of the mean) over the validation batches."""
  total, count = 0.0, 0.0
  for batch in batches:
    loss_sum, n = eval_step(params, _place_batch(batch, batch_sharding))
    total, count = total + float(loss_sum), count + float(n)
  mean = total / count
  return {"val_loss": mean, "val_ppl": math.exp(mean)}


class _StopRequested(contextlib.AbstractContextManager):
  """While active, SIGTERM/SIGINT set a flag: the loop saves a checkpoint and exits cleanly."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __enter__(self):
    self.requested = False
    self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
    return self

  def __exit__(self, *exc_info):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame):
    del frame
    self.requested = True
    print(f"\nreceived {signal.Signals(signum).name}: saving a checkpoint and stopping", flush=True)


class StartupError(RuntimeError):
  """The model, optimizer state or train step could not be built on the mesh."""


@contextlib.contextmanager
def _naming_config_and_mesh(args: argparse.Namespace, mesh: jax.sharding.Mesh):
  """Re-raises XLA errors at start-up (out of memory, shapes) naming the config and mesh."""
  try:
    yield
  except (jax.errors.JaxRuntimeError, TypeError) as e:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise StartupError(
      f"building --config {args.config} (batch {args.batch_size}x{args.seq_len}, "
      f"--optimizer {args.optimizer}) on mesh {dict(mesh.shape)} over {jax.device_count()} "
      f"{jax.devices()[0].platform} device(s) failed: {reason}. A smaller --config, "
      "--batch-size or --seq-len, more --grad-accum, or more fsdp/tensor sharding in --mesh "
      "may fit."
    ) from e


def _batch_fingerprint(batch: dict) -> int:
  """CRC32 of this process's input tokens: logged to audit the data order across restarts."""
  return zlib.crc32(np.ascontiguousarray(batch["inputs"]).tobytes())


def _init_distributed(args: argparse.Namespace) -> None:
  """Joins a multi-process run when flags, ``JAX_COORDINATOR_ADDRESS`` or ``auto`` say so."""
  if args.coordinator == "auto":
    jax.distributed.initialize()  # cluster auto-detection
  elif args.coordinator or args.num_processes or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)


def run(args: argparse.Namespace) -> dict[str, Any]:
  """Trains as ``args`` say; returns the final metrics."""
  _init_distributed(args)
  mesh = mesh_lib.make_mesh(args.mesh)
  _check_batch(args, mesh)
  model_config = configs.get_config(
    args.config, max_seq_len=args.seq_len, dtype="bfloat16" if args.bf16 else "float32"
  )
  corpus = data.load_corpus(
    data.DataConfig(
      data=args.data,
      tokenizer=args.tokenizer,
      vocab_size=model_config.vocab_size,
      seq_len=args.seq_len,
    )
  )
  if corpus.vocab_size > model_config.vocab_size:
    raise ValueError(
      f"the tokenizer has {corpus.vocab_size} tokens but --config "
      f"{args.config} has vocab_size {model_config.vocab_size}: use a smaller tokenizer"
    )

  tx = step_lib.make_optimizer(
    step_lib.OptimizerConfig(
      name=args.optimizer,
      lr=args.lr,
      steps=args.steps,
      warmup_fraction=args.warmup,
      weight_decay=args.weight_decay,
      max_grad_norm=args.max_grad_norm,
      non_matrix=args.non_matrix,
      whiten_over=step_lib.WHOLE_MATRIX_AXES if args.whiten_layout == "whole" else (),
    ),
    mesh,
  )
  batch_sharding = NamedSharding(mesh, sharding.batch_spec())
  with _naming_config_and_mesh(args, mesh):
    graphdef, params = llama.init_params(model_config, mesh, args.seed)
    apply_fn = lambda p, tokens: llama.apply(graphdef, p, tokens)
    state, shardings = step_lib.create_state(params, tx, mesh)
    tokens_spec = jax.ShapeDtypeStruct((args.batch_size, args.seq_len), np.int32,
                                       sharding=batch_sharding)  # fmt: skip
    train_step = (
      step_lib.jit_train_step(apply_fn, tx, shardings, batch_sharding, grad_accum=args.grad_accum)
      .lower(state, {"inputs": tokens_spec, "targets": tokens_spec})
      .compile()
    )
  eval_step = jax.jit(step_lib.make_eval_step(apply_fn))

  batches = data.train_batches(
    corpus,
    batch_size=args.batch_size,
    seq_len=args.seq_len,
    seed=args.seed,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  val_batches = data.eval_batches(
    corpus,
    batch_size=args.batch_size,
    seq_len=args.seq_len,
    max_batches=args.eval_batches,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  args.out.mkdir(parents=True, exist_ok=True)
  ckpt = checkpoint.manager(args.out / "checkpoints", keep=args.keep_checkpoints)
  if args.resume:
    restored = checkpoint.restore_latest(ckpt, checkpoint.abstract_like(state))
    if restored is None:
      print(f"--resume: no checkpoint in {args.out / 'checkpoints'} yet, starting from step 0")
    else:
      start, state, data_state = restored
      batches.set_state(data_state)
      if jax.process_index() == 0:
        metrics.drop_records_after(args.out / "metrics.jsonl", start)
      print(f"resumed from step {start}")

  is_main = jax.process_index() == 0
  tensorboard_dir = args.out / "tensorboard" if args.tensorboard else None
  writer = metrics.MetricsWriter(args.out / "metrics.jsonl", tensorboard_dir) if is_main else None
  opt_bytes = step_lib.state_bytes(state.opt_state)
  param_bytes = step_lib.state_bytes(state.params)
  tokens_per_step = args.batch_size * args.seq_len
  header = {
    "kind": "run",
    "args": {k: str(v) for k, v in vars(args).items()},
    "params": sum(x.size for x in jax.tree.leaves(state.params)),
    "param_bytes": param_bytes,
    "optimizer_state_bytes": opt_bytes,
    "mesh": dict(mesh.shape),
    "devices": jax.device_count(),
    "processes": jax.process_count(),
  }
  if writer:
    writer.write(header)
    print(
      f"{args.config} LLaMA, {header['params']:,} params, optimizer {args.optimizer}: "
      f"state {opt_bytes / 2**20:.1f} MiB (params {param_bytes / 2**20:.1f} MiB), "
      f"mesh {dict(mesh.shape)}, {tokens_per_step:,} tokens/step"
    )

  with _StopRequested() as stop:
    first = int(state.step)
    last_eval: dict = {}
    progress = tqdm(range(first, args.steps), initial=first, total=args.steps, disable=not is_main)
    window_start, window_steps = time.perf_counter(), 0
    for step in progress:
      local_batch = next(batches)
      batch = _place_batch(local_batch, batch_sharding)
      state, step_metrics = train_step(state, batch)
      window_steps += 1
      done = step + 1
      if not bool(step_metrics["finite"]):
        message = f"non-finite loss or gradient at step {done}"
        if args.on_nonfinite == "stop":
          raise FloatingPointError(
            f"{message}; stopping (--on-nonfinite stop). The last good checkpoint is in "
            f"{args.out / 'checkpoints'}."
          )
        progress.write(f"{message}: update skipped ({int(state.skipped)} so far)")
      if done % args.log_every == 0 or done == args.steps:
        loss = float(step_metrics["loss"])
        elapsed = time.perf_counter() - window_start
        record = {
          "kind": "train",
          "step": done,
          "tokens": done * tokens_per_step,
          "loss": loss,
          "grad_norm": float(step_metrics["grad_norm"]),
          "step_time_s": elapsed / window_steps,
          "tokens_per_s": window_steps * tokens_per_step / elapsed,
          "skipped": int(state.skipped),
          "batch_crc32": _batch_fingerprint(local_batch),
        }
        window_start, window_steps = time.perf_counter(), 0
        progress.set_postfix(loss=f"{loss:.3f}", **{k: f"{v:.2f}" for k, v in last_eval.items()})
        if writer:
          writer.write(record)
      if done % args.eval_every == 0 or done == args.steps:
        last_eval = evaluate(eval_step, state.params, val_batches, batch_sharding)
        progress.write(
          f"step {done}: val loss {last_eval['val_loss']:.4f}, val ppl {last_eval['val_ppl']:.2f}"
        )
        if writer:
          tokens = done * tokens_per_step
          writer.write({"kind": "eval", "step": done, "tokens": tokens, **last_eval})
      if done % args.checkpoint_every == 0 or done == args.steps or stop.requested:
        checkpoint.save(ckpt, done, state, batches.get_state())
      if stop.requested:
        break
  ckpt.close()
  if writer:
    writer.close()
    records = metrics.read_jsonl(args.out / "metrics.jsonl")
    metrics.plot_losses(records, args.out / "loss.png", f"{args.config} LLaMA, {args.optimizer}")
    summary = {
      "step": int(state.step),
      "completed": int(state.step) == args.steps,
      "skipped": int(state.skipped),
      **last_eval,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"done: {summary}; metrics, loss.png and checkpoints in {args.out}")
  return {"step": int(state.step), **last_eval}


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  try:
    run(args)
  except (ValueError, FileNotFoundError, ImportError, FloatingPointError, StartupError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
