"""The faults of one process: signals, a kill mid-save, a corrupted checkpoint, a NaN batch,
a full disk, and a chaos of kills at random moments."""

import json
import pathlib
import random
import shutil
import signal
import time

from train.bench.fault_drill import runs
from train.bench.fault_drill.runs import CHECKPOINT_EVERY
from train.bench.fault_drill.runs import STEPS
from train.bench.fault_drill.runs import DrillFailure
from train.bench.fault_drill.runs import Outcome
from train.bench.fault_drill.runs import Trace


def kill_during_step(work: pathlib.Path, reference: Trace) -> Outcome:
  out = work / "sigkill-step"
  killed_at = runs.signal_after(out, signal.SIGKILL, 15, expect_code=-signal.SIGKILL)
  start = max(runs.checkpoints(out))
  fault = f"SIGKILL while training (after step {killed_at} was logged)"
  recovery = f"`--resume` from checkpoint {start}; steps {start + 1}-{killed_at} re-run"
  return runs.resumed_identical(out, reference, fault, recovery)


def kill_during_save(work: pathlib.Path, reference: Trace) -> Outcome:
  out = work / "sigkill-save"
  step = 2 * CHECKPOINT_EVERY
  runs.train(out, fault=f"kill-in-save:{step}", expect_code=-signal.SIGKILL)
  leftovers = sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.isdigit())
  if runs.checkpoints(out) != [CHECKPOINT_EVERY] or not leftovers:
    found = sorted(p.name for p in (out / "checkpoints").iterdir())
    raise DrillFailure(f"{out.name}: expected {CHECKPOINT_EVERY} and a partial one, found {found}")
  return runs.resumed_identical(
    out,
    reference,
    f"SIGKILL while checkpoint {step} was being committed",
    f"partial `{leftovers[0]}` ignored; `--resume` from checkpoint {CHECKPOINT_EVERY}",
  )


def terminate(work: pathlib.Path, reference: Trace, sig: signal.Signals) -> Outcome:
  out = work / sig.name.lower()
  stopped_at = runs.signal_after(out, sig, 15, expect_code=0)
  summary = json.loads((out / "summary.json").read_text())
  if max(runs.checkpoints(out)) != stopped_at or summary["completed"]:
    raise DrillFailure(f"{out.name}: no checkpoint at step {stopped_at}, or marked completed")
  return runs.resumed_identical(
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
  output = runs.train(out, "--resume", "--steps", str(STEPS))
  if f"skipping unreadable checkpoint {latest}" not in output:
    raise DrillFailure(f"{out.name}: no warning naming {latest}:\n{output[-2000:]}")
  previous = STEPS - CHECKPOINT_EVERY
  runs.assert_identical(out, reference, range(previous + 1, STEPS + 1))
  return Outcome(
    f"checkpoint {STEPS} overwritten with zeros",
    f"warning naming it, set aside as `{STEPS}.unreadable-*`; resumed from checkpoint {previous}",
    f"steps {previous + 1}-{STEPS}: losses and batch CRC32s equal to the uninterrupted run",
  )


def nan_batch_skipped(work: pathlib.Path, reference: Trace) -> Outcome:
  out = work / "nan-skip"
  step = 15
  output = runs.train(out, "--on-nonfinite", "skip", fault=f"nan-batch:{step}")
  trace, summary = runs.trace(out), json.loads((out / "summary.json").read_text())
  later = [trace[s][0] for s in range(step + 1, STEPS + 1)]
  if summary["skipped"] != 1 or not all(map(_finite, later + [summary["val_loss"]])):
    raise DrillFailure(f"{out.name}: skipped {summary['skipped']}, later losses {later}")
  if f"non-finite loss or gradient at step {step}: update skipped" not in output:
    raise DrillFailure(f"{out.name}: the skip was not reported")
  runs.assert_identical(out, reference, range(1, step))
  return Outcome(
    f"NaN loss from a corrupt batch at step {step}, `--on-nonfinite skip`",
    "update skipped and counted (`skipped: 1`), training went on",
    f"steps 1-{step - 1} equal to the reference; every later loss and the final "
    f"validation loss ({summary['val_loss']:.3f}) finite",
  )


def nan_batch_stops(work: pathlib.Path, reference: Trace) -> Outcome:
  out = work / "nan-stop"
  step = 15
  runs.train(out, "--on-nonfinite", "stop", fault=f"nan-batch:{step}", expect_code=2)
  message = _last_line(out)
  if not message.startswith(f"error: non-finite loss or gradient at step {step}; stopping"):
    raise DrillFailure(f"{out.name}: unclear message {message!r}")
  if runs.checkpoints(out) != [CHECKPOINT_EVERY]:
    raise DrillFailure(f"{out.name}: checkpoints {runs.checkpoints(out)}")
  # The data is fixed: resume from the last good checkpoint.
  return runs.resumed_identical(
    out,
    reference,
    f"NaN loss from a corrupt batch at step {step}, `--on-nonfinite stop`",
    f"exit 2 with `{message[:60]}...`; checkpoint {CHECKPOINT_EVERY} intact; `--resume`",
  )


def disk_full(work: pathlib.Path, reference: Trace) -> Outcome:
  """The disk full from checkpoint 20 on: periodic saves warn and training goes on; the
  final save stops the run naming the last checkpoint, from which it resumes."""
  out = work / "disk-full"
  step = 2 * CHECKPOINT_EVERY
  output = runs.train(out, fault=f"disk-full:{step}", expect_code=2)
  refused = range(step, STEPS, CHECKPOINT_EVERY)
  for s in refused:
    if f"warning: checkpoint {s} could not be saved ([Errno 28] No space left" not in output:
      raise DrillFailure(f"{out.name}: no warning for checkpoint {s}:\n{output[-2000:]}")
  message = _last_line(out)
  expected = f"error: checkpoint {STEPS} could not be saved"
  if (
    not message.startswith(expected) or f"last checkpoint is step {CHECKPOINT_EVERY}" not in message
  ):
    raise DrillFailure(f"{out.name}: unclear message {message!r}")
  if runs.checkpoints(out) != [CHECKPOINT_EVERY]:
    raise DrillFailure(f"{out.name}: checkpoints {runs.checkpoints(out)}")
  return runs.resumed_identical(
    out,
    reference,
    f"disk full from checkpoint {step} on: every commit fails with ENOSPC",
    f"warnings at {', '.join(map(str, refused))}, training went on; the final save: exit 2 "
    f"with `{message[:60]}...`; checkpoint {CHECKPOINT_EVERY} intact; `--resume` once freed",
  )


def chaos(work: pathlib.Path, reference: Trace, kills: int = 3, seed: int = 0) -> Outcome:
  """SIGKILLs at seeded random moments, each followed by ``--resume``: the first during
  start-up, the others a random fraction of a second after a random step was logged (in a
  step, an evaluation or a save)."""
  out = work / "chaos"
  rng = random.Random(seed)
  moments = []
  for kill in range(kills):
    process = runs.launch(out, "--resume")
    if kill == 0:
      delay = rng.uniform(1.0, 5.0)
      time.sleep(delay)
      moment = f"{delay:.1f} s after launch (step {runs.last_step(out)} logged)"
    else:
      # Past the last kill's step (the records on disk until the resumed run drops them).
      step = rng.randint(min(runs.last_step(out) + 1, STEPS - 1), STEPS - 1)
      runs.wait_for_step(out, step, [process])
      delay = rng.uniform(0.0, 0.5)
      time.sleep(delay)
      moment = f"{delay:.2f} s after step {step} was logged"
    if process.poll() is not None:
      raise DrillFailure(
        f"{out.name}: the run ended (code {process.returncode}) before kill {kill}"
      )
    process.kill()
    process.wait()
    moments.append(moment)
  return runs.resumed_identical(
    out,
    reference,
    f"{kills} SIGKILLs at seeded random moments (seed {seed}): {'; '.join(moments)}",
    "`--resume` after each kill, then to the end",
  )


def _last_line(out: pathlib.Path) -> str:
  return (out / runs.LOG).read_text().strip().splitlines()[-1]


def _finite(x: float) -> bool:
  return x == x and abs(x) != float("inf")
