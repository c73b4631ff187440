"""The queue: its stages in priority order, each training only what it is asked to."""

import json
import pathlib

from train.bench import harness
from train.bench.convergence import protocol
from train.bench.convergence import report
from train.bench.convergence import search
from train.bench.convergence.store import Store

STAGES = ("sweep", "seeds", "ablations", "small", "timing", "report")


def run_stages(store: Store, stages, out: pathlib.Path, reps: int) -> None:
  """Runs the queue's ``stages`` in priority order, then (for ``report``) writes the results.

  A stage not asked for only reads what exists, so a later stage can start from
  the best settings of finished earlier ones.
  """
  read_only = store.read_only()
  at = lambda stage: store if stage in stages else read_only
  best = search.best_lrs(search.sweep(at("sweep")))
  for runs in zip(*protocol.seed_runs(best).values(), strict=True):
    list(map(at("seeds").get, runs))
  if not search.seeds_finished(read_only, best):
    print("the sweep or the seeds are not finished: no ablations or small runs yet")
  else:
    adam = search.adam_reference(read_only, best)
    for *_, runs in protocol.ablation_runs(best, adam).values():
      list(map(at("ablations").get, runs))
    small = search.small_sweep(at("small"), best, adam)
    list(map(at("small").get, search.small_ablations(best, adam, small).values()))
  if "timing" in stages:
    timing = {size: median_step_times(size, reps) for size in ("tiny", "small")}
    out.mkdir(parents=True, exist_ok=True)
    machine = harness.machine()
    (out / "timing.json").write_text(json.dumps({"reps": reps, "machine": machine, **timing}))
  if "report" in stages:
    report.report(read_only, out)


def median_step_times(size: str, reps: int) -> dict[str, float]:
  """Median seconds of each optimizer's compiled train step, interleaved in this process.

  A step's cost depends on neither the learning rate nor beta2, so each optimizer
  is timed at its grid's centre.
  """
  setups = {}
  for variant in ("adam-b2_0.999", "swan", "sinkgd", "muon"):
    run = protocol.grid_run(size, variant, protocol.GRID[variant][2], 0)
    config = protocol.train_config(run, protocol.STEPS, pathlib.Path("runs/timing"))
    setups[run.optimizer.name] = harness.Stepper(harness.experiment(config)).setup
  return harness.interleaved_medians(setups, reps)
