"""Pretrain a Flax LLaMA with SWAN, SinkGD or Adam on a device mesh.

``python -m train --config tiny --optimizer swan`` trains the tiny model on the
shipped Shakespeare corpus; ``python -m train --help`` lists every flag. Each
field of ``train.config.TrainConfig`` (nested ones flattened) and of ``Launch``
is a flag, derived with its default and doc by ``train/flags.py``.
"""

import dataclasses
import os
import sys

import jax

from train import build
from train import flags
from train import loop
from train.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class Launch:
  """How this process joins the others of a multi-process run (not part of the run).

  Attributes:
    coordinator: HOST:PORT of process 0, or ``auto`` to detect SLURM, Open MPI, Kubernetes
      or Cloud TPU (a run also starts multi-process when JAX_COORDINATOR_ADDRESS is set).
    num_processes: processes in the run.
    process_id: this process's index among them.
  """

  coordinator: str | None = None
  num_processes: int | None = None
  process_id: int | None = None


def _parser() -> flags.ConfigParser:
  parser = flags.ConfigParser(prog="python -m train", description=__doc__.splitlines()[0])
  parser.add_config(TrainConfig, "run")
  parser.add_config(Launch, "multi-process")
  return parser


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, Launch]:
  """Flags -> the run's ``TrainConfig`` and this process's ``Launch``; exits 2 on a bad flag."""
  parser = _parser()
  args = parser.parse_args(argv)
  return parser.config(TrainConfig, args), parser.config(Launch, args)


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
