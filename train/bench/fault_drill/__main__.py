"""``python -m train.bench.fault_drill``: every scenario, and the table of what survived.

``python -m train.bench.fault_drill --child FAULT -- FLAGS`` is the child side: one
``python -m train`` with ``FAULT`` injected (``train.bench.fault_drill.faults``).
"""

import pathlib
import signal
import sys
import tempfile

from train.bench import fault_drill
from train.bench import harness
from train.bench.fault_drill import bad_inputs
from train.bench.fault_drill import faults
from train.bench.fault_drill import multi
from train.bench.fault_drill import runs
from train.bench.fault_drill import single


def run_all(work: pathlib.Path) -> list[runs.Outcome]:
  """Every scenario, in order; raises ``DrillFailure`` at the first that does not recover."""
  reference = runs.reference_run(work)
  outcomes = [
    single.kill_during_step(work, reference),
    single.kill_during_save(work, reference),
    single.terminate(work, reference, signal.SIGTERM),
    single.terminate(work, reference, signal.SIGINT),
    single.corrupted_checkpoint(work, reference),
    single.nan_batch_skipped(work, reference),
    single.nan_batch_stops(work, reference),
    single.disk_full(work, reference),
    single.chaos(work, reference),
  ]
  multi_reference = multi.reference_run(work)
  outcomes.append(multi.same_global_batches(work, reference, multi_reference))
  outcomes += multi.faults_in_sequence(work, multi_reference)
  return outcomes + bad_inputs.bad_inputs(work)


def to_markdown(outcomes: list[runs.Outcome]) -> str:
  header = (
    "`python -m train.bench.fault_drill` — tiny LLaMA, SWAN (Newton-Schulz whitening), "
    f"{runs.STEPS} steps, checkpoint every {runs.CHECKPOINT_EVERY}, each run separate "
    "`python -m train` processes (one, or "
    f"{multi.PROCESSES} of {multi.DEVICES_PER_PROCESS} CPU devices each over localhost, "
    "compared with an uninterrupted run of as many); faults injected from outside (signals) "
    f"or by a hook in the child. {len(outcomes)} scenarios, all recovered: nothing lost, "
    "skipped or repeated.\n\n"
  )
  cells = [[o.fault, o.recovery, o.verified] for o in outcomes]
  return header + harness.markdown_table(
    ["fault or bad input", "recovery", "verified"], cells, "lll"
  )


def main() -> None:
  if len(sys.argv) > 2 and sys.argv[1] == "--child":
    faults.child(sys.argv[2], sys.argv[4:])
    return
  harness.simulate_host_devices(8)  # the runs, children included, shard over a real mesh
  parser = harness.parser(fault_drill.__doc__, "fault_drill.md")
  parser.add_argument("--work", type=pathlib.Path, default=None, help="run folders (default: tmp)")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    outcomes = run_all(args.work or pathlib.Path(tmp))
  harness.save(to_markdown(outcomes), args.out)


if __name__ == "__main__":
  main()
