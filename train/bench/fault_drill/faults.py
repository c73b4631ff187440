"""The child side of the drill: ``python -m train`` with a fault injected through its hooks."""

import errno
import os
import signal
from collections.abc import Callable

from train import cli
from train import loop


def kill_during_save(step: int) -> loop.Hooks:
  """SIGKILLs the process when every array of checkpoint ``step`` is written, before its commit."""

  def kill(saving: int) -> None:
    if saving == step:
      os.kill(os.getpid(), signal.SIGKILL)

  return loop.Hooks(before_commit=kill)


def nan_batch(step: int) -> loop.Hooks:
  """Token ids past the vocabulary in the batch of step ``step``: a NaN loss."""
  poison = lambda done, batch: {**batch, "inputs": batch["inputs"] + 10**6}
  return loop.Hooks(batch=lambda done, batch: poison(done, batch) if done == step else batch)


def disk_full(step: int) -> loop.Hooks:
  """The disk is full from checkpoint ``step`` on: every commit fails with ``ENOSPC``."""

  def refuse(saving: int) -> None:
    if saving >= step:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"checkpoint {saving}")

  return loop.Hooks(before_commit=refuse)


FAULTS: dict[str, Callable[[int], loop.Hooks]] = {
  "kill-in-save": kill_during_save,
  "nan-batch": nan_batch,
  "disk-full": disk_full,
}


def child(fault: str, train_argv: list[str]) -> None:
  """Trains as ``train_argv`` says, with ``fault`` (``NAME:STEP``, or ``none``) injected."""
  hooks = loop.NO_HOOKS
  if fault != "none":
    name, step = fault.split(":")
    hooks = FAULTS[name](int(step))
  cli.main(train_argv, hooks)
