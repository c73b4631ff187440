"""Pretrain a Flax LLaMA with SWAN, SinkGD or Adam on a device mesh.

``python -m train --config tiny --optimizer swan`` trains the tiny model on the
shipped Shakespeare corpus; ``python -m train --help`` lists every flag. The
flags only override fields of ``train.config.TrainConfig``, whose defaults
they show.
"""

import argparse
import os
import pathlib
import sys
from typing import NamedTuple
from typing import get_args

import jax

import swan_optax
from models import configs
from train import build
from train import config as config_lib
from train import loop
from train.config import DEFAULT_LR
from train.config import OptimizerConfig
from train.config import TrainConfig
from train.config import model_data

_RUN = TrainConfig()
_OPT = _RUN.optimizer


class Launch(NamedTuple):
  """Multi-process settings: how this process joins the others (not part of the run)."""

  coordinator: str | None
  num_processes: int | None
  process_id: int | None


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m train",
    description=__doc__.splitlines()[0],
    formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  add = p.add_argument
  add("--config", default=_RUN.model, choices=sorted(configs.CONFIGS), help="model size")
  add(
    "--optimizer",
    default=_OPT.name,
    choices=get_args(config_lib.OptimizerName),
    help="swan/sinkgd: stateless on attention and MLP kernels, Adam on the rest",
  )
  add(
    "--non-matrix",
    default=_OPT.non_matrix,
    choices=get_args(config_lib.NonMatrix),
    help="swan/sinkgd: optimizer of embeddings, lm_head and norms (adafactor: nearly stateless)",
  )
  add(
    "--whiten-layout",
    default=_OPT.whiten_layout,
    choices=get_args(config_lib.WhitenLayout),
    help="swan on a mesh: each device whitens its share of whole matrices, exchanged by "
    "all-to-alls (whole: swan(mesh=...)), or XLA lays out each parameter's whitening (param)",
  )
  add(
    "--whiten-method",
    default=_OPT.whiten_method,
    choices=get_args(swan_optax.WhiteningMethod),
    help="swan: how the polar factor is computed (newton_schulz: the paper's 10 coupled steps; "
    "polar_express: closer to the polar factor on ill-conditioned gradients)",
  )
  add("--steps", type=int, default=_RUN.steps, help="optimizer steps")
  add("--batch-size", type=int, default=_RUN.batch_size, help="global batch, in sequences")
  add("--seq-len", type=int, default=_RUN.data.seq_len, help="tokens per sequence")
  add(
    "--lr",
    type=float,
    default=_OPT.lr,
    help="peak learning rate; None: the optimizer's, "
    + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()),
  )
  add(
    "--warmup", type=float, default=_OPT.warmup_fraction, help="linear warmup, fraction of --steps"
  )
  add("--weight-decay", type=float, default=_OPT.weight_decay, help="decoupled weight decay")
  add("--max-grad-norm", type=float, default=_OPT.max_grad_norm, help="global gradient clipping")
  add("--adam-b2", type=float, default=_OPT.adam_b2, help="Adam's second-moment decay")
  add("--grad-accum", type=int, default=_RUN.grad_accum, help="micro-batches per step")
  add("--bf16", action="store_true", help="bfloat16 activations")
  add(
    "--param-dtype",
    default=_RUN.param_dtype,
    choices=["float32", "bfloat16"],
    help="params and gradients (bfloat16 with --bf16: the papers' setting); the optimizer "
    "computes and keeps its state in float32",
  )
  add("--eval-every", type=int, default=_RUN.eval_every, help="steps between validation runs")
  add("--eval-batches", type=int, default=_RUN.eval_batches, help="validation batches per run")
  add("--log-every", type=int, default=_RUN.log_every, help="steps between train-metric records")
  add(
    "--tensorboard", action="store_true", help="also log metrics to OUT/tensorboard (tensorboardX)"
  )
  add(
    "--checkpoint-every", type=int, default=_RUN.checkpoint_every, help="steps between checkpoints"
  )
  add("--keep-checkpoints", type=int, default=_RUN.keep_checkpoints, help="checkpoints kept")
  add("--out", type=pathlib.Path, default=_RUN.out, help="run folder (runs/CONFIG-OPT)")
  add("--data", default=_RUN.data.data, help="text files / globs, or hf:NAME[:CONFIG]")
  add("--tokenizer", default=_RUN.data.tokenizer, help="tokenizer.json or sentencepiece .model")
  add("--mesh", default=_RUN.mesh, help="e.g. data=2,fsdp=2,tensor=2; None: every device on data")
  add("--seed", type=int, default=_RUN.seed, help="init and data-order seed")
  add("--resume", action="store_true", help="continue from the last checkpoint")
  add(
    "--on-nonfinite",
    choices=get_args(config_lib.OnNonFinite),
    default=_RUN.on_nonfinite,
    help="a NaN/Inf loss or gradient: skip that update, or stop (last checkpoint kept)",
  )
  add(
    "--coordinator",
    default=None,
    help="multi-process: HOST:PORT of process 0, or 'auto' to detect SLURM, Open MPI, "
    "Kubernetes or Cloud TPU (also started when JAX_COORDINATOR_ADDRESS is set)",
  )
  add("--num-processes", type=int, default=None, help="multi-process: processes")
  add("--process-id", type=int, default=None, help="multi-process: this process")
  return p  # fmt: skip


def to_config(args: argparse.Namespace) -> TrainConfig:
  """The ``TrainConfig`` the parsed flags describe; raises ``ValueError`` naming a bad flag."""
  optimizer = OptimizerConfig(
    name=args.optimizer,
    lr=args.lr,
    warmup_fraction=args.warmup,
    weight_decay=args.weight_decay,
    max_grad_norm=args.max_grad_norm,
    adam_b2=args.adam_b2,
    non_matrix=args.non_matrix,
    whiten_layout=args.whiten_layout,
    whiten_method=args.whiten_method,
  )
  return TrainConfig(
    model=args.config,
    bf16=args.bf16,
    param_dtype=args.param_dtype,
    data=model_data(args.config, data=args.data, tokenizer=args.tokenizer, seq_len=args.seq_len),
    optimizer=optimizer,
    **{name: getattr(args, name) for name in _RUN_FLAGS},
  )


_RUN_FLAGS = ("steps", "batch_size", "grad_accum", "eval_every", "eval_batches", "log_every",
              "checkpoint_every", "keep_checkpoints", "out", "tensorboard", "mesh", "seed",
              "resume", "on_nonfinite")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, Launch]:
  """Flags -> the run's ``TrainConfig`` and this process's ``Launch``; exits 2 on a bad flag."""
  parser = _parser()
  args = parser.parse_args(argv)
  try:
    config = to_config(args)
  except ValueError as e:
    parser.error(str(e))
  return config, Launch(args.coordinator, args.num_processes, args.process_id)


def init_distributed(launch: Launch) -> None:
  """Joins a multi-process run when flags, ``JAX_COORDINATOR_ADDRESS`` or ``auto`` say so."""
  if launch.coordinator == "auto":
    jax.distributed.initialize()  # cluster auto-detection
  elif launch.coordinator or launch.num_processes or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(launch.coordinator, launch.num_processes, launch.process_id)


def main(argv: list[str] | None = None, hooks: loop.Hooks = loop.NO_HOOKS) -> None:
  """``python -m train``: a one-line error and exit code 2 for anything the user can fix."""
  config, launch = parse_args(argv)
  try:
    init_distributed(launch)
    loop.train(config, hooks)
  except (ValueError, FileNotFoundError, ImportError, FloatingPointError, build.StartupError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
