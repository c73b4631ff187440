"""The processes of a multi-process run watching each other.

A lost peer must not hang the others: every process heartbeats through JAX's coordination
service (its key-value store), and process 0 declares a peer lost once its heartbeat has
been silent for ``timeout_s``. Every survivor then prints one line naming the lost process
and the last checkpoint, and exits with ``EXIT_PEER_LOST`` (75, ``EX_TEMPFAIL``: a
scheduler's requeue, SLURM ``--requeue`` or a Kubernetes restart, relaunches the job).
A stop request on any process (SIGTERM of a preempted host) is agreed on collectively
by ``processes_stopping``, so every process saves the same step and exits 0.

When process 0 itself is lost, JAX's coordination service goes with it and JAX
terminates every survivor at once (exit 134, "the JAX distributed service detected fatal
errors"): no hang either, but JAX's message instead of this one.
"""

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable

import jax
import numpy as np
from jax._src import distributed  # the coordination client, as Orbax reaches it
from jax.experimental import multihost_utils

EXIT_PEER_LOST = 75
PREFIX = "swan_optax/heartbeat/"
LOST = "swan_optax/lost/"
DONE, FAILED = "done", "failed"


def processes_stopping(requested: bool) -> tuple[int, ...]:
  """The processes whose stop was requested, the same on every process.

  A collective: every process calls it after every step, so all of them stop at the
  first step after which any of them was asked to.
  """
  if jax.process_count() == 1:
    return (0,) if requested else ()
  flags = multihost_utils.process_allgather(np.int32(requested))
  return tuple(int(i) for i in np.flatnonzero(np.asarray(flags).reshape(-1)))


@contextlib.contextmanager
def watching(timeout_s: float, last_checkpoint: Callable[[], str]):
  """Runs a ``Watchdog`` while the body trains: on a failed collective it first waits for
  the verdict on the peers; on any error it tells the peers this process failed."""
  watchdog = Watchdog(timeout_s, last_checkpoint).start()
  try:
    yield watchdog
  except jax.errors.JaxRuntimeError:
    watchdog.await_verdict()
    watchdog.stop(failed=True)
    raise
  except BaseException:
    watchdog.stop(failed=True)
    raise
  watchdog.stop()


class Watchdog:
  """Heartbeats of this process, and (on process 0) the check that none of its peers is lost.

  Args:
    timeout_s: a peer silent this long is lost.
    last_checkpoint: the message's description of the newest published checkpoint.
    client: JAX's coordination client (default: this run's).
    exit_process: called with ``EXIT_PEER_LOST`` after the message (default ``os._exit``:
      the main thread may be blocked in a collective that will never finish).
  """

  def __init__(
    self,
    timeout_s: float,
    last_checkpoint: Callable[[], str],
    *,
    client=None,
    process_index: int | None = None,
    process_count: int | None = None,
    exit_process: Callable[[int], None] = os._exit,
  ):
    self.timeout_s = timeout_s
    self.interval_s = min(5.0, timeout_s / 6)
    self._last_checkpoint = last_checkpoint
    self._client = client or distributed.global_state.client
    self._me = jax.process_index() if process_index is None else process_index
    self._count = jax.process_count() if process_count is None else process_count
    self._exit = exit_process
    self._stopped = threading.Event()
    self._thread = threading.Thread(target=self._run, name="peer-watchdog", daemon=True)

  def start(self) -> "Watchdog":
    self._client.key_value_set(f"{PREFIX}{self._me}", "0", allow_overwrite=True)
    self._thread.start()
    return self

  def stop(self, failed: bool = False) -> None:
    """Ends the heartbeats, telling the others this process finished (or failed)."""
    self._stopped.set()
    self._thread.join()
    status = FAILED if failed else DONE
    try:
      self._client.key_value_set(f"{PREFIX}{self._me}", status, allow_overwrite=True)
    except jax.errors.JaxRuntimeError as e:  # the coordinator is gone: the peers' timeout tells
      print(f"warning: could not tell the other processes this one {status}: {e}", file=sys.stderr)

  def await_verdict(self) -> None:
    """Waits long enough for a lost peer to be declared (which exits this process).

    For the main thread after a collective failed: a peer killed mid-step fails the
    collectives of the others (on CPUs; on GPUs they hang instead).
    """
    time.sleep(self.timeout_s + 3 * self.interval_s)

  def _run(self) -> None:
    beats, heard = 0, {}  # peer -> (its last heartbeat value, when it changed)
    while not self._stopped.wait(self.interval_s):
      beats += 1
      try:
        self._client.key_value_set(f"{PREFIX}{self._me}", str(beats), allow_overwrite=True)
        if self._me == 0:
          self._check(heard)
        elif (lost := self._announced()) is not None:
          self._lost(*lost)
      except jax.errors.JaxRuntimeError as e:  # a dropped RPC: the next heartbeat retries
        print(f"warning: heartbeat {beats} of process {self._me} failed: {e}", file=sys.stderr)

  def _check(self, heard: dict[int, tuple[str, float]]) -> None:
    now = time.monotonic()
    values = dict(self._client.key_value_dir_get(PREFIX))
    for peer in range(1, self._count):
      value = values.get(f"{PREFIX}{peer}")
      if value == FAILED:
        self._announce(peer, "failed with an error (see its log)")
      if value == DONE:
        continue
      if heard.get(peer, (None,))[0] != value:
        heard[peer] = (value, now)
      elif now - heard[peer][1] > self.timeout_s:
        self._announce(
          peer,
          f"sent no heartbeat for {self.timeout_s:g} s (killed, out of memory, or its host lost)",
        )

  def _announce(self, peer: int, why: str) -> None:
    """Tells the other survivors, gives them two heartbeats to read it, then exits."""
    self._client.key_value_set(f"{LOST}{peer}", why, allow_overwrite=True)
    if self._count > 2:
      time.sleep(2 * self.interval_s)
    self._lost(peer, why)

  def _announced(self) -> tuple[int, str] | None:
    """The peer process 0 declared lost, if any."""
    for key, why in self._client.key_value_dir_get(LOST):
      return int(key.removeprefix(LOST)), why
    return None

  def _lost(self, peer: int, why: str) -> None:
    print(
      f"error: process {peer} of {self._count} {why}; process {self._me} stops (exit "
      f"{EXIT_PEER_LOST}). {self._last_checkpoint()}: relaunch every process with --resume.",
      file=sys.stderr,
      flush=True,
    )
    self._exit(EXIT_PEER_LOST)
