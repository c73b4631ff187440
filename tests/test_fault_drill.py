"""Faults injected into real training processes: every recovery loses, skips and repeats nothing.

Each scenario of ``train.bench.fault_drill`` raises ``DrillFailure`` unless its run,
after the fault and ``--resume``, matches an uninterrupted reference run step
for step (loss and batch CRC32), so these tests fail on any lost, skipped or
repeated update or sample.
"""

import json
import signal

import pytest

from train import metrics
from train.bench import fault_drill

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def work(tmp_path_factory):
  return tmp_path_factory.mktemp("drill")


@pytest.fixture(scope="module")
def reference(work):
  trace = fault_drill.reference_run(work)
  assert sorted(trace) == list(range(1, fault_drill.STEPS + 1))
  assert len({crc for _, crc in trace.values()}) == fault_drill.STEPS  # a new batch every step
  return trace


def test_sigkill_during_a_step(work, reference):
  outcome = fault_drill.kill_during_step(work, reference)
  assert "re-run" in outcome.recovery


def test_sigkill_during_a_checkpoint_save(work, reference):
  outcome = fault_drill.kill_during_save(work, reference)
  assert "orbax-checkpoint-tmp" in outcome.recovery
  assert not [p for p in (work / "sigkill-save" / "checkpoints").iterdir() if "tmp" in p.name]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_checkpoint_and_exit_cleanly(work, reference, sig):
  fault_drill.terminate(work, reference, sig)


def test_corrupted_latest_checkpoint_falls_back_to_the_previous(work, reference):
  fault_drill.corrupted_checkpoint(work, reference)
  names = sorted(p.name for p in (work / "corrupted" / "checkpoints").iterdir())
  assert names[-1].startswith(f"{fault_drill.STEPS}.unreadable-")  # kept, set aside


def test_nan_batch_is_skipped_and_counted(work, reference):
  fault_drill.nan_batch_skipped(work, reference)
  records = metrics.read_jsonl(work / "nan-skip" / "metrics.jsonl")
  skipped = {r["step"]: r["skipped"] for r in records if r["kind"] == "train"}
  assert skipped[14] == 0 and skipped[15] == 1 and skipped[fault_drill.STEPS] == 1


def test_nan_batch_stops_with_the_last_checkpoint_intact(work, reference):
  fault_drill.nan_batch_stops(work, reference)


def test_bad_inputs_are_refused_in_one_line(work, reference):
  outcomes = fault_drill.bad_inputs(work)
  assert len(outcomes) == 12
  assert all(o.verified.startswith("`") and "Traceback" not in o.verified for o in outcomes)


def test_the_checks_can_fail(work, reference, tmp_path):
  """A changed loss, a different batch, a missing or a repeated step is each caught."""
  loss, crc = reference[7]
  for changed in ({7: (loss + 1e-6, crc)}, {7: (loss, crc + 1)}):
    with pytest.raises(fault_drill.DrillFailure, match="differ from the reference"):
      fault_drill._assert_identical(work / "reference", {**reference, **changed})
  records = metrics.read_jsonl(work / "reference" / "metrics.jsonl")
  train = [r for r in records if r["kind"] == "train"]
  for name, kept in (("missing", train[:5] + train[6:]), ("repeated", train + train[-1:])):
    (tmp_path / name).mkdir()
    (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    with pytest.raises(fault_drill.DrillFailure, match="never ran|more than once"):
      fault_drill._assert_identical(tmp_path / name, reference)
