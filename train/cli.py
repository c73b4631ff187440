"""Pretrain a Flax LLaMA with SWAN, SinkGD or Adam on a device mesh.

``python -m train --config tiny --optimizer swan`` trains the tiny model on the
shipped Shakespeare corpus; ``python -m train --help`` lists every flag. Each
field of ``train.config.TrainConfig`` (nested ones flattened) and of ``Launch``
is a flag, derived with its default and doc by ``train/flags.py``.
"""

import contextlib
import dataclasses
import math
import os
import sys

import jax

from train import build
from train import checkpoint
from train import flags
from train import loop
from train import peers
from train.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class Launch:
  """How this process joins the others of a multi-process run (not part of the run).

  Attributes:
    coordinator: HOST:PORT of process 0, or ``auto`` to detect SLURM, Open MPI, Kubernetes
      or Cloud TPU (a run also starts multi-process when JAX_COORDINATOR_ADDRESS is set).
    num_processes: processes in the run.
    process_id: this process's index among them.
    peer_timeout: seconds a process may send no heartbeat before the others count it lost,
      print which one and the last checkpoint, and exit with code 75 (relaunch all with
      ``--resume``).
  """

  coordinator: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  peer_timeout: float = 60.0

  def __post_init__(self):
    if not self.peer_timeout > 0:
      raise flags.ConfigError(self, "peer_timeout", f"must be > 0 seconds, got {self.peer_timeout}")


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
  """Joins a multi-process run when flags, ``JAX_COORDINATOR_ADDRESS`` or ``auto`` say so.

  JAX's own heartbeat timeout is twice ``peer_timeout``, so that ``peers.Watchdog``
  reports a lost peer (naming it) before JAX aborts the survivors.
  """
  heartbeat = {"heartbeat_timeout_seconds": math.ceil(2 * launch.peer_timeout)}
  if launch.coordinator == "auto":
    jax.distributed.initialize(**heartbeat)  # cluster auto-detection
  elif launch.coordinator or launch.num_processes or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize(
      launch.coordinator, launch.num_processes, launch.process_id, **heartbeat
    )


def main(argv: list[str] | None = None, hooks: loop.Hooks = loop.NO_HOOKS) -> None:
  """``python -m train``: a one-line error and exit code 2 for anything the user can fix."""
  config, launch = parse_args(argv)
  try:
    init_distributed(launch)
    with _watching_peers(config, launch):
      loop.train(config, hooks)
  except (
    ValueError,
    FileNotFoundError,
    ImportError,
    FloatingPointError,
    build.StartupError,
    checkpoint.SaveError,
  ) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def _watching_peers(config: TrainConfig, launch: Launch) -> contextlib.AbstractContextManager:
  """In a multi-process run, ``peers.watching``; nothing to watch in one process."""
  if jax.process_count() == 1:
    return contextlib.nullcontext()
  checkpoints = config.run_dir.absolute() / "checkpoints"
  return peers.watching(launch.peer_timeout, lambda: checkpoint.describe_latest(checkpoints))
