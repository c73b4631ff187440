"""Orbax checkpoints of the train state and the data-iterator position."""

import logging
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


class SaveError(RuntimeError):
  """A checkpoint that had to be saved (the last of a run) could not be written."""


def manager(
  directory: pathlib.Path, keep: int = 3, before_commit: Callable[[int], None] | None = None
) -> ocp.CheckpointManager:
  """A manager keeping the last ``keep`` checkpoints under ``directory``.

  Orbax writes each step to a temporary directory and renames it when the
  save is complete, so a crash mid-save never touches the previous checkpoint.
  ``before_commit(step)``, if given, runs when every array of checkpoint
  ``step`` is written and only that commit is left (the fault drill's hook).
  """
  directory = directory.absolute()
  options = ocp.CheckpointManagerOptions(
    preservation_policy=ocp.checkpoint_managers.LatestN(keep),
    enable_async_checkpointing=False,
    cleanup_tmp_directories=True,
    temporary_path_class=None if before_commit is None else _hooked(directory, before_commit),
  )
  return ocp.CheckpointManager(directory, options=options)


def _hooked(directory: pathlib.Path, before_commit: Callable[[int], None]) -> type:
  """Orbax's temporary-path class for ``directory``, calling ``before_commit`` in ``finalize``."""
  base = ocp.path.atomicity_defaults.get_default_temporary_path_class(directory)

  class BeforeCommit(base):
    async def finalize(self, *args, **kwargs):
      if self.get_final().name.isdigit():
        before_commit(int(self.get_final().name))
      return await super().finalize(*args, **kwargs)

  return BeforeCommit


def save(mngr: ocp.CheckpointManager, step: int, state: Any, data_state: dict) -> None:
  mngr.save(
    step,
    args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
    force=True,
  )
  mngr.wait_until_finished()


def restore_latest(
  mngr: ocp.CheckpointManager, abstract_state: Any
) -> tuple[int, Any, dict] | None:
  """Restores the newest readable checkpoint into ``abstract_state``'s shardings.

  A checkpoint that fails to restore (corrupted, partial) is skipped with a
  warning naming it and set aside as ``STEP.unreadable`` (kept for inspection,
  out of the way of the step that will be saved again), falling back to the
  one before. Returns ``None`` only if the directory never held a checkpoint;
  raises if none restores.
  """
  directory = pathlib.Path(mngr.directory)
  steps = sorted(mngr.all_steps(), reverse=True)
  for step in steps:
    try:
      restored = mngr.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
        ),
      )
    except Exception as e:  # any unreadable checkpoint is skipped, loudly
      log.warning("skipping unreadable checkpoint %s: %s", directory / str(step), e)
      _set_aside(directory / str(step))
      continue
    mngr.reload()
    return step, restored.state, restored.data
  mngr.reload()
  unreadable = sorted(p.name for p in directory.glob(f"*{UNREADABLE}-*"))
  if unreadable:
    raise ValueError(
      f"--resume: no checkpoint under {directory} could be restored (unreadable, set aside: "
      f"{', '.join(unreadable)}); remove them, or train from scratch without --resume"
    )
  return None


UNREADABLE = ".unreadable"


def _set_aside(step_dir: pathlib.Path) -> None:
  """Renames an unreadable checkpoint (on process 0, then every process waits for it)."""
  if jax.process_index() == 0:
    step_dir.rename(step_dir.with_name(f"{step_dir.name}{UNREADABLE}-{time.time_ns()}"))
  multihost_utils.sync_global_devices(f"set aside {step_dir}")


def published_steps(directory: pathlib.Path) -> list[int]:
  """The steps of the committed checkpoints under ``directory`` (never a partial one)."""
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def describe_latest(directory: pathlib.Path) -> str:
  """``'The last checkpoint is step N in DIR'``, for messages that tell how to resume."""
  steps = published_steps(directory)
  if not steps:
    return f"No checkpoint is in {directory} yet"
  return f"The last checkpoint is step {steps[-1]} in {directory}"


def abstract_like(state: Any) -> Any:
  """``jax.ShapeDtypeStruct``s with the shardings of ``state``: the restore target."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
