"""Faults injected into real training processes: every recovery loses, skips and repeats nothing.

Each scenario of ``train.bench.fault_drill`` raises ``DrillFailure`` unless its run,
after the fault and ``--resume``, matches an uninterrupted reference run step
for step (loss, global batch CRC32 and validation losses), so these tests fail on any
lost, skipped or repeated update or sample. The SIGINT and the separate SIGKILL-in-a-step
scenarios run in the drill only: SIGINT shares SIGTERM's handler, the chaos kills mid-step.
"""

import json
import signal

import pytest

from train import metrics
from train.bench.fault_drill import bad_inputs
from train.bench.fault_drill import multi
from train.bench.fault_drill import runs
from train.bench.fault_drill import single

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("fault_drill")]


@pytest.fixture(scope="session")
def work(tmp_path_factory):
  return tmp_path_factory.mktemp("drill")


@pytest.fixture(scope="session")
def reference(work):
  trace = runs.reference_run(work)
  assert sorted(trace) == list(range(1, runs.STEPS + 1))
  assert len({crc for _, crc, _ in trace.values()}) == runs.STEPS  # a new batch every step
  assert [s for s, (*_, val) in trace.items() if val is not None] == [20, 40]
  return trace


def test_sigkills_at_random_moments(work, reference):
  outcome = single.chaos(work, reference)
  assert outcome.fault.count(" s after ") == 3


def test_sigkill_during_a_checkpoint_save(work, reference):
  outcome = single.kill_during_save(work, reference)
  assert "orbax-checkpoint-tmp" in outcome.recovery
  assert not [p for p in (work / "sigkill-save" / "checkpoints").iterdir() if "tmp" in p.name]


def test_sigterm_checkpoints_and_exits_cleanly(work, reference):
  single.terminate(work, reference, signal.SIGTERM)


def test_corrupted_latest_checkpoint_falls_back_to_the_previous(work, reference):
  single.corrupted_checkpoint(work, reference)
  names = sorted(p.name for p in (work / "corrupted" / "checkpoints").iterdir())
  assert names[-1].startswith(f"{runs.STEPS}.unreadable-")  # kept, set aside


def test_nan_batch_is_skipped_and_counted(work, reference):
  single.nan_batch_skipped(work, reference)
  records = metrics.read_jsonl(work / "nan-skip" / "metrics.jsonl")
  skipped = {r["step"]: r["skipped"] for r in records if r["kind"] == "train"}
  assert skipped[14] == 0 and skipped[15] == 1 and skipped[runs.STEPS] == 1


def test_nan_batch_stops_with_the_last_checkpoint_intact(work, reference):
  single.nan_batch_stops(work, reference)


def test_a_full_disk_warns_then_stops_with_the_last_checkpoint_intact(work, reference):
  outcome = single.disk_full(work, reference)
  assert "warnings at 20, 30" in outcome.recovery


def test_bad_inputs_are_refused_in_one_line(work, reference):
  outcomes = bad_inputs.bad_inputs(work)
  assert len(outcomes) == 12
  assert all(o.verified.startswith("`") and "Traceback" not in o.verified for o in outcomes)


def test_multi_process_faults(work, reference):
  """2 processes x 4 devices: the same global batches as 1 x 8, then a lost peer (process 1,
  and process 0, which hosts JAX's coordination service) and preemption (of one, of all)."""
  multi_reference = multi.reference_run(work)
  same = multi.same_global_batches(work, reference, multi_reference)
  assert "global batch CRC32 equal" in same.verified
  outcomes = multi.faults_in_sequence(work, multi_reference)
  assert "exit 75 after" in outcomes[0].recovery
  assert "checkpoint 10 intact" in outcomes[0].recovery
  assert all("exit 0" in o.recovery for o in outcomes[1:3])
  assert "JAX ends it" in outcomes[3].recovery
  assert json.loads((work / "multi-faults" / "summary.json").read_text())["completed"]


def test_the_checks_can_fail(work, reference, tmp_path):
  """A changed loss, batch or validation loss, a missing or a repeated step is each caught."""
  loss, crc, val = reference[20]
  for changed in ((loss + 1e-6, crc, val), (loss, crc + 1, val), (loss, crc, val + 1e-6)):
    with pytest.raises(runs.DrillFailure, match="differ from the reference"):
      runs.assert_identical(work / "reference", {**reference, 20: changed})
  records = metrics.read_jsonl(work / "reference" / "metrics.jsonl")
  train = [r for r in records if r["kind"] == "train"]
  for name, kept in (("missing", train[:5] + train[6:]), ("repeated", train + train[-1:])):
    (tmp_path / name).mkdir()
    (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    with pytest.raises(runs.DrillFailure, match="never ran|more than once"):
      runs.assert_identical(tmp_path / name, reference)
