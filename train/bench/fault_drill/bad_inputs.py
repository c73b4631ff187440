"""Bad input: each must end in a one-line error, in-process and quickly."""

import contextlib
import io
import pathlib
import shutil

from train import cli
from train.bench.fault_drill import runs
from train.bench.fault_drill.runs import DrillFailure
from train.bench.fault_drill.runs import Outcome


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
      cli.main([*runs.FLAGS, "--out", str(work / "bad-run"), *flags])
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
    for step in runs.checkpoints(out):
      for file in (out / "checkpoints" / str(step)).rglob("*"):
        if file.is_file():
          file.write_bytes(b"\0" * file.stat().st_size)
  return out
