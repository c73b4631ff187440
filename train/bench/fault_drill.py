"""Fault drill: the faults of a long multi-host run, injected, and what survives them.

Run ``python -m train.bench.fault_drill``. Each scenario trains the tiny LLaMA
with ``python -m train`` in a child process, injects one fault (a signal from
outside, or one of the trainer's fault hooks, ``train.loop.Hooks``, in the
child), recovers the way a user would (``--resume``), and checks the run
against an uninterrupted reference: every step's loss and batch fingerprint
(CRC32 of its tokens) identical, so no update and no sample was lost, skipped
or repeated. Bad inputs are tried in-process: each must end in a one-line
error. Prints and saves ``train/bench/results/fault_drill.md``;
``tests/test_fault_drill.py`` runs the same scenarios.
"""

import contextlib
import dataclasses
import io
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from collections.abc import Sequence

from train import cli
from train import loop
from train import metrics
from train.bench import harness

STEPS = 40
CHECKPOINT_EVERY = 10
FLAGS = tuple(
  f"--config tiny --seq-len 64 --batch-size 8 --eval-batches 2 --steps {STEPS} "
  f"--checkpoint-every {CHECKPOINT_EVERY} --keep-checkpoints 3 --log-every 1 --eval-every 20 "
  "--optimizer swan".split()
)
TIMEOUT_S = 300


class DrillFailure(AssertionError):
  """A scenario did not recover as it must."""


@dataclasses.dataclass(frozen=True)
class Outcome:
  fault: str
  recovery: str
  verified: str


Trace = dict[int, tuple[float, int]]  # step -> (train loss, batch CRC32)


# ---------------------------------------------------------------------------
# Child side: faults injected through the trainer's hooks.


def _kill_during_save(step: int):
  """SIGKILLs the process when every array of checkpoint ``step`` is written, before its commit."""

  def kill(saving: int) -> None:
    if saving == step:
      os.kill(os.getpid(), signal.SIGKILL)

  return loop.Hooks(before_commit=kill)


def _nan_batch(step: int):
  """Token ids past the vocabulary in the batch of step ``step``: a NaN loss."""
  poison = lambda done, batch: {**batch, "inputs": batch["inputs"] + 10**6}
  return loop.Hooks(batch=lambda done, batch: poison(done, batch) if done == step else batch)


FAULTS: dict[str, Callable] = {"kill-in-save": _kill_during_save, "nan-batch": _nan_batch}


def _child(fault: str, train_argv: list[str]) -> None:
  hooks = loop.NO_HOOKS
  if fault != "none":
    name, step = fault.split(":")
    hooks = FAULTS[name](int(step))
  cli.main(train_argv, hooks)


# ---------------------------------------------------------------------------
# Parent side: launching, signalling and checking runs.


def _command(out: pathlib.Path, flags: Sequence[str], fault: str) -> list[str]:
  child = [sys.executable, "-m", "train.bench.fault_drill", "--child", fault, "--"]
  return [*child, *FLAGS, "--out", str(out), *flags]


def _launch(out: pathlib.Path, *flags: str, fault: str = "none") -> subprocess.Popen:
  out.mkdir(parents=True, exist_ok=True)
  log = (out / "drill.log").open("a")
  return subprocess.Popen(_command(out, flags, fault), stdout=log, stderr=subprocess.STDOUT)


def _wait(process: subprocess.Popen, out: pathlib.Path, expect_code: int) -> str:
  """Waits for ``process``; returns its output, raising unless it exited with ``expect_code``."""
  try:
    code = process.wait(TIMEOUT_S)
  except subprocess.TimeoutExpired:
    process.kill()
    raise DrillFailure(f"{out.name}: still running after {TIMEOUT_S} s") from None
  output = (out / "drill.log").read_text()
  if code != expect_code:
    raise DrillFailure(f"{out.name}: exit code {code}, expected {expect_code}:\n{output[-3000:]}")
  return output


def _train(out: pathlib.Path, *flags: str, fault: str = "none", expect_code: int = 0) -> str:
  return _wait(_launch(out, *flags, fault=fault), out, expect_code)


def _signal_after(out: pathlib.Path, sig: signal.Signals, step: int, expect_code: int) -> int:
  """Starts a run, sends ``sig`` once step ``step`` is logged; returns the last step logged."""
  process = _launch(out)
  deadline = time.monotonic() + TIMEOUT_S
  while _last_step(out) < step:
    if process.poll() is not None or time.monotonic() > deadline:
      process.kill()
      raise DrillFailure(f"{out.name}: the run ended or hung before step {step}")
    time.sleep(0.05)
  process.send_signal(sig)
  _wait(process, out, expect_code)
  return _last_step(out)


def _last_step(out: pathlib.Path) -> int:
  path = out / "metrics.jsonl"
  records = metrics.read_jsonl(path) if path.exists() else []
  return max((r["step"] for r in records if r["kind"] == "train"), default=0)


def _trace(out: pathlib.Path) -> Trace:
  """Step -> (loss, batch CRC32) of the run in ``out``; each step must appear exactly once."""
  records = [r for r in metrics.read_jsonl(out / "metrics.jsonl") if r["kind"] == "train"]
  steps = [r["step"] for r in records]
  if len(steps) != len(set(steps)):
    raise DrillFailure(f"{out.name}: steps logged more than once: {sorted(steps)}")
  return {r["step"]: (r["loss"], r["batch_crc32"]) for r in records}


def _checkpoints(out: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())


def _assert_identical(out: pathlib.Path, reference: Trace, steps: range | None = None) -> None:
  trace = _trace(out)
  steps = steps or range(1, STEPS + 1)
  missing = [s for s in steps if s not in trace]
  if missing:
    raise DrillFailure(f"{out.name}: steps {missing} never ran")
  different = [(s, trace[s], reference[s]) for s in steps if trace[s] != reference[s]]
  if different:
    raise DrillFailure(f"{out.name}: (loss, batch CRC) differ from the reference: {different[:3]}")


IDENTICAL = f"steps 1-{STEPS}: every loss and batch CRC32 equal to the uninterrupted run"


def _resumed_identical(out: pathlib.Path, reference: Trace, fault: str, recovery: str) -> Outcome:
  """Resumes the run in ``out`` to the end; it must then equal the reference step for step."""
  _train(out, "--resume")
  _assert_identical(out, reference)
  return Outcome(fault, recovery, IDENTICAL)


def reference_run(work: pathlib.Path) -> Trace:
  """The uninterrupted run every scenario is compared with."""
  out = work / "reference"
  _train(out)
  return _trace(out)


def kill_during_step(work: pathlib.Path, reference: Trace) -> Outcome:
  out = work / "sigkill-step"
  killed_at = _signal_after(out, signal.SIGKILL, 15, expect_code=-signal.SIGKILL)
  start = max(_checkpoints(out))
  fault = f"SIGKILL while training (after step {killed_at} was logged)"
  recovery = f"`--resume` from checkpoint {start}; steps {start + 1}-{killed_at} re-run"
  return _resumed_identical(out, reference, fault, recovery)


def kill_during_save(work: pathlib.Path, reference: Trace) -> Outcome:
  out = work / "sigkill-save"
  step = 2 * CHECKPOINT_EVERY
  _train(out, fault=f"kill-in-save:{step}", expect_code=-signal.SIGKILL)
  leftovers = sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.isdigit())
  if _checkpoints(out) != [CHECKPOINT_EVERY] or not leftovers:
    found = sorted(p.name for p in (out / "checkpoints").iterdir())
    raise DrillFailure(f"{out.name}: expected {CHECKPOINT_EVERY} and a partial one, found {found}")
  return _resumed_identical(
    out,
    reference,
    f"SIGKILL while checkpoint {step} was being committed",
    f"partial `{leftovers[0]}` ignored; `--resume` from checkpoint {CHECKPOINT_EVERY}",
  )


def terminate(work: pathlib.Path, reference: Trace, sig: signal.Signals) -> Outcome:
  out = work / sig.name.lower()
  stopped_at = _signal_after(out, sig, 15, expect_code=0)
  summary = json.loads((out / "summary.json").read_text())
  if max(_checkpoints(out)) != stopped_at or summary["completed"]:
    raise DrillFailure(f"{out.name}: no checkpoint at step {stopped_at}, or marked completed")
  return _resumed_identical(
    out,
    reference,
    f"{sig.name} (after step {stopped_at} was logged)",
    f"clean exit with checkpoint {stopped_at}; `--resume` from it",
  )


def corrupted_checkpoint(work: pathlib.Path, reference: Trace) -> Outcome:
  out = work / "corrupted"
  shutil.copytree(work / "reference", out)
  (out / "metrics.jsonl").write_text("")  # this run's own records only
  latest = out / "checkpoints" / str(STEPS)
  for file in (latest / "state").rglob("*"):
    if file.is_file():
      file.write_bytes(b"\0" * file.stat().st_size)
  output = _train(out, "--resume", "--steps", str(STEPS))
  if f"skipping unreadable checkpoint {latest}" not in output:
    raise DrillFailure(f"{out.name}: no warning naming {latest}:\n{output[-2000:]}")
  previous = STEPS - CHECKPOINT_EVERY
  _assert_identical(out, reference, range(previous + 1, STEPS + 1))
  return Outcome(
    f"checkpoint {STEPS} overwritten with zeros",
    f"warning naming it, set aside as `{STEPS}.unreadable-*`; resumed from checkpoint {previous}",
    f"steps {previous + 1}-{STEPS}: losses and batch CRC32s equal to the uninterrupted run",
  )


def nan_batch_skipped(work: pathlib.Path, reference: Trace) -> Outcome:
  out = work / "nan-skip"
  step = 15
  output = _train(out, "--on-nonfinite", "skip", fault=f"nan-batch:{step}")
  trace, summary = _trace(out), json.loads((out / "summary.json").read_text())
  later = [trace[s][0] for s in range(step + 1, STEPS + 1)]
  if summary["skipped"] != 1 or not all(map(_finite, later + [summary["val_loss"]])):
    raise DrillFailure(f"{out.name}: skipped {summary['skipped']}, later losses {later}")
  if f"non-finite loss or gradient at step {step}: update skipped" not in output:
    raise DrillFailure(f"{out.name}: the skip was not reported")
  _assert_identical(out, reference, range(1, step))
  return Outcome(
    f"NaN loss from a corrupt batch at step {step}, `--on-nonfinite skip`",
    "update skipped and counted (`skipped: 1`), training went on",
    f"steps 1-{step - 1} equal to the reference; every later loss and the final "
    f"validation loss ({summary['val_loss']:.3f}) finite",
  )


def nan_batch_stops(work: pathlib.Path, reference: Trace) -> Outcome:
  out = work / "nan-stop"
  step = 15
  _train(out, "--on-nonfinite", "stop", fault=f"nan-batch:{step}", expect_code=2)
  message = (out / "drill.log").read_text().strip().splitlines()[-1]
  if not message.startswith(f"error: non-finite loss or gradient at step {step}; stopping"):
    raise DrillFailure(f"{out.name}: unclear message {message!r}")
  if _checkpoints(out) != [CHECKPOINT_EVERY]:
    raise DrillFailure(f"{out.name}: checkpoints {_checkpoints(out)}")
  # The data is fixed: resume from the last good checkpoint.
  return _resumed_identical(
    out,
    reference,
    f"NaN loss from a corrupt batch at step {step}, `--on-nonfinite stop`",
    f"exit 2 with `{message[:60]}...`; checkpoint {CHECKPOINT_EVERY} intact; `--resume`",
  )


def _finite(x: float) -> bool:
  return x == x and abs(x) != float("inf")


# ---------------------------------------------------------------------------
# Bad input: each must end in a one-line error, in-process and quickly.


def bad_inputs(work: pathlib.Path) -> list[Outcome]:
  files = work / "bad-data"
  files.mkdir(parents=True, exist_ok=True)
  (files / "empty.txt").write_text("")
  (files / "tiny.txt").write_text("To be, or not to be.\n")
  (files / "latin1.txt").write_bytes("Caf\xe9 na\xefve r\xe9sum\xe9.\n".encode("latin1") * 99)
  cases = [
    ("missing data file", ["--data", str(files / "missing.txt")], "no file matches"),
    ("empty corpus", ["--data", str(files / "empty.txt")], "corpus is empty"),
    ("one-line corpus", ["--data", str(files / "tiny.txt")], "too few"),
    ("non-UTF-8 file", ["--data", str(files / "latin1.txt")], "is not UTF-8"),
    ("--seq-len longer than the corpus", ["--seq-len", "100000"], "--seq-len"),
    ("unknown --config", ["--config", "7b"], "invalid choice"),
    ("--steps -3", ["--steps", "-3"], "--steps must be >= 1"),
    ("--lr inf", ["--lr", "inf"], "--lr must be a positive number"),
    (
      "--batch-size 3 in 2 micro-batches",
      ["--batch-size", "3", "--grad-accum", "2"],
      "must split into --grad-accum 2",
    ),
    ("--mesh data=1000", ["--mesh", "data=1000"], "has 1000 devices"),
    ("--mesh pipeline=2", ["--mesh", "pipeline=2"], "pipeline"),
    (
      "--resume with only unreadable checkpoints",
      ["--resume", "--out", str(_broken_run(work))],
      "could be restored",
    ),
  ]
  outcomes = []
  for what, flags, expected in cases:
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.suppress(SystemExit):
      cli.main([*FLAGS, "--out", str(work / "bad-run"), *flags])
    lines = stderr.getvalue().strip().splitlines()
    if not lines or expected not in lines[-1] or "Traceback" in stderr.getvalue():
      raise DrillFailure(f"{what}: expected one line with {expected!r}, got {lines}")
    message = lines[-1].replace(str(work), "WORK").replace("`", "'").replace("|", "\\|")
    outcomes.append(Outcome(what, "refused before training", f"`{message}`"))
  return outcomes


def _broken_run(work: pathlib.Path) -> pathlib.Path:
  """A run folder whose only checkpoint has zeroed files."""
  out = work / "broken-run"
  if not out.exists():
    shutil.copytree(work / "reference", out)
    for step in _checkpoints(out):
      for file in (out / "checkpoints" / str(step)).rglob("*"):
        if file.is_file():
          file.write_bytes(b"\0" * file.stat().st_size)
  return out


def run_all(work: pathlib.Path) -> list[Outcome]:
  """Every scenario, in order; raises ``DrillFailure`` at the first that does not recover."""
  reference = reference_run(work)
  outcomes = [
    kill_during_step(work, reference),
    kill_during_save(work, reference),
    terminate(work, reference, signal.SIGTERM),
    terminate(work, reference, signal.SIGINT),
    corrupted_checkpoint(work, reference),
    nan_batch_skipped(work, reference),
    nan_batch_stops(work, reference),
  ]
  return outcomes + bad_inputs(work)


def to_markdown(outcomes: list[Outcome]) -> str:
  header = (
    f"`python -m train.bench.fault_drill` — tiny LLaMA, SWAN, {STEPS} steps, checkpoint every "
    f"{CHECKPOINT_EVERY}, each run a separate `python -m train` process; faults injected "
    f"from outside (signals) or by a hook in the child. "
    f"{len(outcomes)} scenarios, all recovered: nothing lost, skipped or repeated.\n\n"
  )
  cells = [[o.fault, o.recovery, o.verified] for o in outcomes]
  return header + harness.markdown_table(
    ["fault or bad input", "recovery", "verified"], cells, "lll"
  )


def main() -> None:
  if len(sys.argv) > 2 and sys.argv[1] == "--child":
    _child(sys.argv[2], sys.argv[4:])
    return
  harness.simulate_host_devices(8)  # the runs, children included, shard over a real mesh
  parser = harness.parser(__doc__, "fault_drill.md")
  parser.add_argument("--work", type=pathlib.Path, default=None, help="run folders (default: tmp)")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    outcomes = run_all(args.work or pathlib.Path(tmp))
  table = to_markdown(outcomes)
  harness.save(table, args.out)


if __name__ == "__main__":
  main()
