"""The faults of a multi-process run (2 processes x 4 CPU devices over localhost): a lost
peer, a preempted host, every host preempted at slightly different moments."""

import pathlib
import signal
import socket
import subprocess
import time

from train import metrics
from train import peers
from train.bench.fault_drill import runs
from train.bench.fault_drill.runs import DrillFailure
from train.bench.fault_drill.runs import Outcome
from train.bench.fault_drill.runs import Trace

PROCESSES = 2
DEVICES_PER_PROCESS = 4
PEER_TIMEOUT_S = 10
JAX_ABORT = "Terminating process because the JAX distributed service detected fatal errors"


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch_all(out: pathlib.Path, *flags: str) -> list[subprocess.Popen]:
  """Every process of a run, joined through a fresh coordinator port; each launch's output
  goes to its own ``process{i}-{launch}.log``."""
  port, attempt = free_port(), len(list(out.glob("process0-*.log")))
  return [
    runs.launch(
      out,
      *flags,
      *("--coordinator", f"127.0.0.1:{port}", "--num-processes", str(PROCESSES)),
      *("--process-id", str(i), "--peer-timeout", str(PEER_TIMEOUT_S)),
      log=_log(i, attempt),
      env=runs.device_env(DEVICES_PER_PROCESS),
    )
    for i in range(PROCESSES)
  ]


def wait_all(
  out: pathlib.Path, processes: list[subprocess.Popen], codes: list[int | None]
) -> list[str]:
  """Waits for the latest launch's processes; returns their outputs."""
  attempt = len(list(out.glob("process0-*.log"))) - 1
  return [
    runs.wait(p, out, code, _log(i, attempt))
    for i, (p, code) in enumerate(zip(processes, codes, strict=True))
  ]


def _log(process: int, attempt: int) -> str:
  return f"process{process}-{attempt}.log"


def reference_run(work: pathlib.Path) -> Trace:
  """The uninterrupted run of ``PROCESSES`` processes the scenarios are compared with."""
  out = work / "multi-reference"
  wait_all(out, launch_all(out), [0] * PROCESSES)
  return runs.trace(out)


def same_global_batches(work: pathlib.Path, single: Trace, multi: Trace) -> Outcome:
  """The multi-process reference against the one-process one: the same global batch at every
  step (the CRC32s equal), so an elastic resume is checkable from the metrics alone."""
  header = metrics.read_jsonl(work / "multi-reference" / "metrics.jsonl")[0]
  if (header["processes"], header["devices"]) != (PROCESSES, PROCESSES * DEVICES_PER_PROCESS):
    raise DrillFailure(f"multi-reference: ran on {header['processes']} processes")
  crcs = lambda trace: [trace[s][1] for s in sorted(trace)]
  if crcs(multi) != crcs(single):
    raise DrillFailure("multi-reference: the global batch CRC32s differ from one process's")
  worst = max(abs(multi[s][0] / single[s][0] - 1) for s in single)
  if worst > 1e-5:
    raise DrillFailure(f"multi-reference: losses differ from one process's by {worst:.1e}")
  return Outcome(
    f"the same run on {PROCESSES} processes x {DEVICES_PER_PROCESS} devices instead of 1 x "
    f"{PROCESSES * DEVICES_PER_PROCESS}",
    "none needed",
    f"every step's global batch CRC32 equal; losses within {worst:.0e} (reduction order)",
  )


def faults_in_sequence(work: pathlib.Path, reference: Trace) -> list[Outcome]:
  """One run through every multi-process fault in turn, each followed by a relaunch of
  every process with ``--resume``; at the end, every step equal to the reference."""
  out = work / "multi-faults"
  outcomes = [
    _lost(out, launch_all(out), 1, 15),
    _preempted(out, launch_all(out, "--resume"), (1,), 22),
    _preempted(out, launch_all(out, "--resume"), (0, 1), 28),
    _lost(out, launch_all(out, "--resume"), 0, 34),
  ]
  wait_all(out, launch_all(out, "--resume"), [0] * PROCESSES)
  runs.assert_identical(out, reference)
  return outcomes


def _lost(out: pathlib.Path, processes: list[subprocess.Popen], victim: int, step: int):
  """SIGKILL of ``victim`` once ``step`` is logged: the survivor exits by itself, non-zero,
  naming the lost process and the last checkpoint (JAX's message if the victim is process 0,
  whose coordination service goes with it)."""
  runs.wait_for_step(out, step, processes)
  processes[victim].kill()
  killed = time.monotonic()
  survivor = 1 - victim
  codes: list[int | None] = [0] * PROCESSES
  codes[victim], codes[survivor] = -signal.SIGKILL, peers.EXIT_PEER_LOST if victim else None
  output = wait_all(out, processes, codes)[survivor]
  seconds = time.monotonic() - killed
  last = runs.checkpoints(out)[-1]
  if victim:
    expected = f"error: process {victim} of {PROCESSES} sent no heartbeat for {PEER_TIMEOUT_S} s"
    told = [line for line in output.splitlines() if line.startswith(expected)]
    if not told or f"The last checkpoint is step {last} in" not in told[-1]:
      raise DrillFailure(f"{out.name}: no message naming {victim} and {last}:\n{output[-2000:]}")
    how = f"exit {peers.EXIT_PEER_LOST} after {seconds:.0f} s with `{told[-1][:80]}...`"
  else:
    if JAX_ABORT not in output:
      raise DrillFailure(f"{out.name}: process {survivor} did not stop:\n{output[-2000:]}")
    how = f"JAX ends it after {seconds:.0f} s: `{JAX_ABORT}`"
  return Outcome(
    f"{PROCESSES} processes: SIGKILL of process {victim} (after step {step} was logged)",
    f"process {survivor}: {how}; checkpoint {last} intact; all relaunched with `--resume`",
    SEQUENCE_IDENTICAL,
  )


def _preempted(out: pathlib.Path, processes: list[subprocess.Popen], targets, step: int):
  """SIGTERM to ``targets``, 0.5 s apart: every process saves the same step and exits 0."""
  runs.wait_for_step(out, step, processes)
  for i in targets:
    processes[i].send_signal(signal.SIGTERM)
    time.sleep(0.5)
  outputs = wait_all(out, processes, [0] * PROCESSES)
  stopped_at = runs.last_step(out)
  if runs.checkpoints(out)[-1] != stopped_at:
    raise DrillFailure(f"{out.name}: stopped at {stopped_at}, checkpoints {runs.checkpoints(out)}")
  agreed = f"every process saves step {stopped_at}"
  if not all(agreed in output for output in outputs):
    raise DrillFailure(f"{out.name}: not every process says {agreed!r}")
  who = "process 1 only" if targets == (1,) else "every process, 0.5 s apart,"
  return Outcome(
    f"{PROCESSES} processes: SIGTERM to {who} after step {step} was logged",
    f"all agree (an all-gather after each step), save checkpoint {stopped_at} and exit 0; "
    "all relaunched with `--resume`",
    SEQUENCE_IDENTICAL,
  )


SEQUENCE_IDENTICAL = (
  f"after the 4 faults in turn, steps 1-{runs.STEPS}: every loss and batch CRC32, and the "
  f"validation losses, equal to the uninterrupted {PROCESSES}-process run"
)
