"""Which whitening SWAN should run by default: Newton-Schulz or Polar Express, each at its own lr.

Run: ``python -m train.bench.whitening [--only sweep|seeds|timing|report]``. SWAN on tiny
under the convergence protocol (and its run store), its Adam group at ``GROUP_RATIO`` x the
matrix lr (the Adam-group grid's best ratio, ``adam_group.md``), whitening by the paper's
10 coupled Newton-Schulz steps or by 8 Polar Express steps. Each method's matrix lr is swept
on a 5-point 2x grid (widened while its best sits at an edge), then seeds 0-2 run at its best
lr, and both compiled train steps of tiny and small are timed side by side (interleaved
medians). Writes
``OUT/whitening.md`` and ``.json``.
"""

import dataclasses
import json
import pathlib
import statistics

from train import loop
from train.bench import adam_group
from train.bench import harness
from train.bench.convergence import protocol
from train.bench.convergence import search
from train.bench.convergence import store as store_lib
from train.bench.convergence.store import Store

GROUP_RATIO = 50.0
METHODS = ("newton_schulz", "polar_express")
GRID = {m: tuple(4e-3 * 2.0**k for k in (-2, -1, 0, 1, 2)) for m in METHODS}
STAGES = ("sweep", "seeds", "timing", "report")


def method_run(size: str, method: str, lr: float, seed: int) -> protocol.Run:
  """SWAN whitening by ``method`` at ``lr``, its Adam group at ``GROUP_RATIO * lr``."""
  return with_method(adam_group.joint_run("swan", lr, GROUP_RATIO * lr, seed, size), method)


def with_method(run: protocol.Run, method: str) -> protocol.Run:
  """A protocol SWAN ``run`` (Newton-Schulz) whitening by ``method``, named ``swan_METHOD``."""
  if method == "newton_schulz":
    return run
  optimizer = dataclasses.replace(run.optimizer, whiten_method=method)
  variant = run.variant.replace("swan", f"swan_{method}", 1)
  return dataclasses.replace(run, variant=variant, optimizer=optimizer)


def seed_runs(best: dict[str, float]) -> dict[str, list[protocol.Run]]:
  return {m: [method_run("tiny", m, lr, s) for s in protocol.SEEDS] for m, lr in best.items()}


def step_times(size: str, reps: int) -> dict[str, float]:
  """Median seconds of each method's compiled train step on ``size``, interleaved in this
  process."""
  setups = {}
  for method in METHODS:
    run = method_run(size, method, GRID[method][2], 0)
    config = protocol.train_config(run, protocol.STEPS, pathlib.Path("runs/timing"))
    setups[method] = harness.Stepper(harness.experiment(config)).setup
  return harness.interleaved_medians(setups, reps)


def summarize(store: Store, timing: dict) -> dict[str, dict]:
  """Per method: the seed-0 lr grid, its best lr, the seeds' final losses there, step time."""
  losses = search.sweep(store, "tiny", GRID, protocol.GRID_ORDER, method_run)
  best = search.best_lrs(losses)
  so_far = search.best_so_far(losses)
  summary = {}
  for method in METHODS:
    lr = best.get(method, so_far.get(method))
    seeds = [] if lr is None else [store.final(r) for r in seed_runs({method: lr})[method]]
    summary[method] = {
      "losses": losses[method],
      "best_lr": lr,
      "bracketed": method in best,
      "seeds": seeds,
      "step_s": {size: steps[method] for size, steps in timing.get("steps", {}).items()},
    }
  return summary


def report_text(summary: dict[str, dict], timing: dict) -> str:
  sizes = list(timing.get("steps", {}))
  header = ["method", "best lr", "final loss, seeds 0-2", "mean", "spread"]
  header += [f"{size} step ms (x NS)" for size in sizes]
  rows, ns_step = [], summary["newton_schulz"]["step_s"]
  for method, s in summary.items():
    done = [x for x in s["seeds"] if x is not None]
    lr = "" if s["best_lr"] is None else f"{s['best_lr']:g}" + ("" if s["bracketed"] else " ~")
    steps = [f"{1e3 * s['step_s'][n]:.0f} ({s['step_s'][n] / ns_step[n]:.2f})" for n in sizes]
    seeds = " / ".join("-" if x is None else f"{x:.3f}" for x in s["seeds"])
    mean = f"{statistics.mean(done):.3f}" if done else ""
    spread = f"{max(done) - min(done):.3f}" if len(done) > 1 else ""
    rows.append([method, lr, seeds, mean, spread, *steps])
  grid_header = ["lr", *METHODS]
  lrs = sorted({lr for s in summary.values() for lr in s["losses"]})
  cell = lambda m, lr: (
    "" if summary[m]["losses"].get(lr) is None else f"{summary[m]['losses'][lr]:.3f}"
  )
  grid_rows = [[f"{lr:g}", *(cell(m, lr) for m in METHODS)] for lr in lrs]
  measured = (
    f"{timing['reps']} interleaved rounds in one process ({timing['machine']})"
    if timing
    else "not measured yet (`--only timing`)"
  )
  return (
    f"SWAN on tiny, {protocol.STEPS} steps, its Adam group at {GROUP_RATIO:g} x the matrix lr. "
    "Best lr: the lowest seed-0 final validation loss of a grid that brackets it (`~`: the grid "
    f"is still open). Step times: {measured}.\n\n"
    + harness.markdown_table(header, rows, "llrrr" + "r" * len(sizes))
    + "\nSeed-0 final validation loss per matrix lr:\n\n"
    + harness.markdown_table(grid_header, grid_rows, "lrr")
  )


def main() -> None:
  parser = harness.parser(__doc__, "whitening")
  parser.add_argument("--only", choices=STAGES, action="append")
  parser.add_argument("--reps", type=int, default=20, help="timing rounds")
  parser.add_argument("--work", type=pathlib.Path, default=pathlib.Path("runs/whitening"))
  store_lib.add_runs_flag(parser)
  args = parser.parse_args()
  stages = args.only or STAGES
  store = Store(args.runs, args.work, protocol.STEPS, protocol.STEPS, loop.train)
  at = lambda stage: store if stage in stages else store.read_only()
  best = search.best_lrs(search.sweep(at("sweep"), "tiny", GRID, protocol.GRID_ORDER, method_run))
  for runs in seed_runs(best).values():
    list(map(at("seeds").get, runs))
  if "timing" in stages:
    steps = {size: step_times(size, args.reps) for size in ("tiny", "small")}
    harness.save_step_times(args.out, args.reps, steps)
  if "report" in stages:
    timing = harness.load_step_times(args.out)
    summary = summarize(store.read_only(), timing)
    text = report_text(summary, timing)
    harness.save(
      f"### Whitening (`python -m train.bench.whitening`)\n\n{text}", args.out / "whitening.md"
    )
    (args.out / "whitening.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
  main()
