"""The peer watchdog's verdicts, on a fake coordination service (the real one: the fault drill)."""

import threading
import time

import jax
import pytest

from train import cli
from train import peers

TIMEOUT_S = 0.6


class FakeClient:
  """The key-value calls of JAX's coordination client, in memory."""

  def __init__(self):
    self.store: dict[str, str] = {}
    self.lock = threading.Lock()

  def key_value_set(self, key: str, value: str, allow_overwrite: bool = False) -> None:
    with self.lock:
      assert allow_overwrite or key not in self.store
      self.store[key] = value

  def key_value_dir_get(self, prefix: str) -> list[tuple[str, str]]:
    with self.lock:
      return [(k, v) for k, v in self.store.items() if k.startswith(prefix)]


def _watchdog(client, process: int, count: int = 3):
  exits = []
  watchdog = peers.Watchdog(
    TIMEOUT_S,
    lambda: "The last checkpoint is step 10 in RUN",
    client=client,
    process_index=process,
    process_count=count,
    exit_process=exits.append,
  )
  return watchdog.start(), exits


def _until(condition, seconds: float = 5.0) -> None:
  deadline = time.monotonic() + seconds
  while not condition():
    assert time.monotonic() < deadline, "timed out"
    time.sleep(0.01)


def test_a_silent_peer_is_declared_lost_by_every_survivor(capfd):
  client = FakeClient()
  (chief, chief_exits), (other, other_exits) = _watchdog(client, 0), _watchdog(client, 1)
  client.key_value_set(f"{peers.PREFIX}2", "0", allow_overwrite=True)  # beats once, then dies
  start = time.monotonic()
  _until(lambda: chief_exits and other_exits)
  assert TIMEOUT_S < time.monotonic() - start < TIMEOUT_S + 1.0
  assert chief_exits[0] == other_exits[0] == peers.EXIT_PEER_LOST
  err = capfd.readouterr().err
  assert "error: process 2 of 3 sent no heartbeat for 0.6 s" in err
  assert "process 0 stops" in err and "process 1 stops" in err
  assert "The last checkpoint is step 10 in RUN: relaunch every process with --resume." in err
  for watchdog in (chief, other):
    watchdog.stop()


def test_live_and_finished_peers_are_not_lost():
  client = FakeClient()
  watchdogs = [_watchdog(client, i) for i in range(3)]
  time.sleep(TIMEOUT_S / 2)
  watchdogs[2][0].stop()  # finished: silent from now on, but not lost
  time.sleep(3 * TIMEOUT_S)
  assert client.store[f"{peers.PREFIX}2"] == peers.DONE
  assert not any(exits for _, exits in watchdogs)
  for watchdog, _ in watchdogs[:2]:
    watchdog.stop()


def test_a_failed_peer_is_reported_at_once(capfd):
  client = FakeClient()
  (chief, exits), (failing, _) = _watchdog(client, 0, 2), _watchdog(client, 1, 2)
  failing.stop(failed=True)
  start = time.monotonic()
  _until(lambda: exits)
  assert time.monotonic() - start < TIMEOUT_S
  assert "error: process 1 of 2 failed with an error (see its log)" in capfd.readouterr().err
  chief.stop()


def test_one_process_agrees_with_itself():
  assert peers.processes_stopping(True) == (0,)
  assert peers.processes_stopping(False) == ()


@pytest.mark.parametrize("timeout", [0, -1, float("nan")])
def test_the_timeout_must_be_positive(timeout):
  with pytest.raises(ValueError, match="peer_timeout"):
    cli.Launch(peer_timeout=timeout)


class FlakyClient(FakeClient):
  """Drops the first few heartbeats of process 1, as a congested network would."""

  def __init__(self, drops: int):
    super().__init__()
    self.drops = drops

  def key_value_set(self, key: str, value: str, allow_overwrite: bool = False) -> None:
    if key == f"{peers.PREFIX}1" and value.isdigit() and int(value) > 0 and self.drops:
      self.drops -= 1
      raise jax.errors.JaxRuntimeError("UNAVAILABLE: dropped")
    super().key_value_set(key, value, allow_overwrite)


def test_a_dropped_heartbeat_is_retried_and_reported(capfd):
  client = FlakyClient(drops=2)
  (chief, exits), (flaky, _) = _watchdog(client, 0, 2), _watchdog(client, 1, 2)
  _until(lambda: client.drops == 0)
  time.sleep(2 * TIMEOUT_S)
  assert not exits and client.store[f"{peers.PREFIX}1"] not in ("0", peers.DONE)
  assert "warning: heartbeat 1 of process 1 failed: UNAVAILABLE: dropped" in capfd.readouterr().err
  for watchdog in (chief, flaky):
    watchdog.stop()
