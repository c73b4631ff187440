"""The parent side of the drill: launching ``python -m train`` children, signalling them,
and checking a run against an uninterrupted reference step for step."""

import dataclasses
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from train import checkpoint
from train import metrics

STEPS = 40
CHECKPOINT_EVERY = 10
# Newton-Schulz whitening at lr 1e-3: the drill holds a 2-process run to a 1-process one within
# 1e-5 of loss. Its float32-class matmuls keep the two reduction orders' difference at that
# level; the default Polar Express, on bf16 matmuls, amplifies it to 4.6e-4 in 40 steps, and the
# default lr 2e-3 to 1.1e-5 (both measured).
FLAGS = tuple(
  f"--config tiny --seq-len 64 --batch-size 8 --eval-batches 2 --steps {STEPS} "
  f"--checkpoint-every {CHECKPOINT_EVERY} --keep-checkpoints 3 --log-every 1 --eval-every 20 "
  "--optimizer swan --whiten-method newton_schulz --lr 1e-3".split()
)
TIMEOUT_S = 300
LOG = "drill.log"


class DrillFailure(AssertionError):
  """A scenario did not recover as it must."""


@dataclasses.dataclass(frozen=True)
class Outcome:
  fault: str
  recovery: str
  verified: str


# Step -> (train loss, global batch CRC32, validation loss if evaluated at that step, else None).
Trace = dict[int, tuple[float, int, float | None]]


def command(out: pathlib.Path, flags: Sequence[str], fault: str = "none") -> list[str]:
  child = [sys.executable, "-m", "train.bench.fault_drill", "--child", fault, "--"]
  return [*child, *FLAGS, "--out", str(out), *flags]


def launch(
  out: pathlib.Path, *flags: str, fault: str = "none", log: str = LOG, env: dict | None = None
) -> subprocess.Popen:
  """Starts a child training into ``out``, its output appended to ``out / log``.

  Children share JAX's persistent compilation cache in ``out``'s parent, so a relaunch loads
  the programs the reference compiled (half of a child's start-up time here) instead of
  compiling them again; an unreadable entry is recompiled by JAX, with a warning."""
  out.mkdir(parents=True, exist_ok=True)
  env = {
    **(os.environ if env is None else env),
    "JAX_COMPILATION_CACHE_DIR": str(out.parent / "jax-cache"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
  }
  with (out / log).open("a") as output:
    return subprocess.Popen(
      command(out, flags, fault), stdout=output, stderr=subprocess.STDOUT, env=env
    )


def wait(
  process: subprocess.Popen, out: pathlib.Path, expect_code: int | None, log: str = LOG
) -> str:
  """Waits for ``process``; returns its output, raising unless it exited with ``expect_code``
  (``None``: any non-zero code)."""
  try:
    code = process.wait(TIMEOUT_S)
  except subprocess.TimeoutExpired:
    process.kill()
    raise DrillFailure(f"{out.name}: still running after {TIMEOUT_S} s") from None
  output = (out / log).read_text()
  if code == 0 if expect_code is None else code != expect_code:
    raise DrillFailure(f"{out.name}: exit code {code}, expected {expect_code}:\n{output[-3000:]}")
  return output


def train(out: pathlib.Path, *flags: str, fault: str = "none", expect_code: int = 0) -> str:
  return wait(launch(out, *flags, fault=fault), out, expect_code)


def wait_for_step(out: pathlib.Path, step: int, processes: Sequence[subprocess.Popen]) -> None:
  """Returns once step ``step`` is logged; raises if a process ends or it takes too long."""
  deadline = time.monotonic() + TIMEOUT_S
  while last_step(out) < step:
    if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
      for p in processes:
        p.kill()
      raise DrillFailure(f"{out.name}: the run ended or hung before step {step}")
    time.sleep(0.05)


def signal_after(out: pathlib.Path, sig: signal.Signals, step: int, expect_code: int) -> int:
  """Starts a run, sends ``sig`` once step ``step`` is logged; returns the last step logged."""
  process = launch(out)
  wait_for_step(out, step, [process])
  process.send_signal(sig)
  wait(process, out, expect_code)
  return last_step(out)


def last_step(out: pathlib.Path) -> int:
  path = out / "metrics.jsonl"
  records = metrics.read_jsonl(path) if path.exists() else []
  return max((r["step"] for r in records if r["kind"] == "train"), default=0)


def trace(out: pathlib.Path) -> Trace:
  """The run in ``out``, step by step; each step must be logged exactly once."""
  records = metrics.read_jsonl(out / "metrics.jsonl")
  steps = [r["step"] for r in records if r["kind"] == "train"]
  if len(steps) != len(set(steps)):
    raise DrillFailure(f"{out.name}: steps logged more than once: {sorted(steps)}")
  val = {r["step"]: r["val_loss"] for r in records if r["kind"] == "eval"}
  return {
    r["step"]: (r["loss"], r["batch_crc32"], val.get(r["step"]))
    for r in records
    if r["kind"] == "train"
  }


def checkpoints(out: pathlib.Path) -> list[int]:
  return checkpoint.published_steps(out / "checkpoints")


def assert_identical(out: pathlib.Path, reference: Trace, steps: range | None = None) -> None:
  run = trace(out)
  steps = steps or range(1, STEPS + 1)
  missing = [s for s in steps if s not in run]
  if missing:
    raise DrillFailure(f"{out.name}: steps {missing} never ran")
  different = [(s, run[s], reference[s]) for s in steps if run[s] != reference[s]]
  if different:
    raise DrillFailure(f"{out.name}: (loss, batch CRC) differ from the reference: {different[:3]}")


IDENTICAL = (
  f"steps 1-{STEPS}: every loss and batch CRC32, and the validation losses, equal to the "
  "uninterrupted run"
)


def resumed_identical(out: pathlib.Path, reference: Trace, fault: str, recovery: str) -> Outcome:
  """Resumes the run in ``out`` to the end; it must then equal the reference step for step."""
  train(out, "--resume")
  assert_identical(out, reference)
  return Outcome(fault, recovery, IDENTICAL)


def reference_run(work: pathlib.Path) -> Trace:
  """The uninterrupted run every single-process scenario is compared with."""
  out = work / "reference"
  train(out)
  return trace(out)


def device_env(devices: int) -> dict[str, str]:
  """This environment with ``devices`` simulated CPU devices per process."""
  flags = os.environ.get("XLA_FLAGS", "").split()
  flags = [f for f in flags if not f.startswith("--xla_force_host_platform_device_count")]
  flags.append(f"--xla_force_host_platform_device_count={devices}")
  return {**os.environ, "XLA_FLAGS": " ".join(flags)}
