"""Which whitening SWAN should run by default: Newton-Schulz or Polar Express, each at its own lr.

Run: ``python -m train.bench.whitening [--only sweep|seeds|cheaper|timing|report]``. SWAN on
tiny and on the width ladder's ``tiny-w64`` (``train.bench.transfer``, whose Polar Express runs it
shares) under the convergence protocol (and its run store), its Adam group at ``GROUP_RATIO`` x
the matrix lr (the Adam-group grid's best ratio, ``adam_group.md``), whitening by the paper's
10 coupled Newton-Schulz steps or by 8 Polar Express steps. On each size, each method's matrix
lr is swept on a 5-point 2x grid (widened while its best sits at an edge), then ``SEEDS`` run at
its best lr; both compiled train steps of tiny and small are timed side by side (interleaved
medians). The ``CHEAPER`` whitenings (``whitening_cost``'s frontier) run on tiny at the seeds
and best lr of 8 Polar Express steps. Writes ``OUT/whitening.md``, ``.json`` and ``OUT/cheaper.md``.
"""

import dataclasses
import json
import pathlib
import statistics

from swan_optax import primitives
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
STAGES = ("sweep", "seeds", "cheaper", "timing", "report")
SEEDS = {"tiny": protocol.SEEDS, "tiny-w64": (0, 1)}  # size -> seeds at each method's best lr
# Cheaper whitening (``whitening_cost``'s frontier): (method, steps), on tiny at the seeds and lr
# of 8 Polar Express steps.
CHEAPER = (("polar_express", 5), ("gram_polar_express", 5), ("gram_polar_express", 6))


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


def steps_run(size: str, method: str, steps: int, lr: float, seed: int) -> protocol.Run:
  """:func:`method_run` whitening by ``steps`` of ``method``, named ``swan_METHODSTEPS``."""
  run = method_run(size, method, lr, seed)
  optimizer = dataclasses.replace(run.optimizer, whiten_steps=steps)
  variant = run.variant.replace(method, f"{method}{steps}", 1)
  return dataclasses.replace(run, variant=variant, optimizer=optimizer)


def cheaper_runs(store: Store) -> dict[str, list[protocol.Run]]:
  """Label -> tiny runs at the seeds and best lr of 8 Polar Express steps: those, then each of
  ``CHEAPER``."""
  losses = search.sweep(store.read_only(), "tiny", GRID, protocol.GRID_ORDER, method_run)
  lr = search.best_lrs(losses)["polar_express"]
  default = primitives.DEFAULT_STEPS["polar_express"]
  seeds = SEEDS["tiny"]
  runs = {f"polar_express {default}": [method_run("tiny", "polar_express", lr, s) for s in seeds]}
  for method, steps in CHEAPER:
    runs[f"{method} {steps}"] = [steps_run("tiny", method, steps, lr, s) for s in seeds]
  return runs


def cheaper_text(store: Store) -> str:
  """The cheaper whitenings' final losses against 8 Polar Express steps', and their spreads."""
  rows, base = [], None
  for label, runs in cheaper_runs(store).items():
    losses = [store.final(r) for r in runs]
    done = [x for x in losses if x is not None]
    mean = statistics.mean(done) if done else None
    base = mean if base is None else base
    rows.append(
      [
        label,
        " / ".join("-" if x is None else f"{x:.3f}" for x in losses),
        "" if mean is None else f"{mean:.3f}",
        f"{max(done) - min(done):.3f}" if len(done) > 1 else "",
        "" if mean is None or base is None else f"{mean - base:+.3f}",
      ]
    )
  header = ["whitening", "final loss, seed 0 / 1 / 2", "mean", "spread", "mean - 8 steps'"]
  return (
    f"Tiny, {protocol.STEPS} steps, at the best lr and seeds of 8 Polar Express steps (spread: "
    "max - min):\n\n" + harness.markdown_table(header, rows, "lrrrr")
  )


def seed_runs(size: str, best: dict[str, float]) -> dict[str, list[protocol.Run]]:
  return {m: [method_run(size, m, lr, s) for s in SEEDS[size]] for m, lr in best.items()}


def step_times(size: str, reps: int) -> dict[str, float]:
  """Median seconds of each method's compiled train step on ``size``, interleaved in this
  process."""
  setups = {}
  for method in METHODS:
    run = method_run(size, method, GRID[method][2], 0)
    config = protocol.train_config(run, protocol.STEPS, pathlib.Path("runs/timing"))
    setups[method] = harness.Stepper(harness.experiment(config)).setup
  return harness.interleaved_medians(setups, reps)


def summarize(store: Store, timing: dict) -> dict[str, dict[str, dict]]:
  """Per size and method: the seed-0 lr grid, its best lr, the seeds' final losses there; and
  per method its step time per timed size (under ``'step_s'``)."""
  summary = {}
  for size in SEEDS:
    losses = search.sweep(store, size, GRID, protocol.GRID_ORDER, method_run)
    best, so_far = search.best_lrs(losses), search.best_so_far(losses)
    summary[size] = {}
    for method in METHODS:
      lr = best.get(method, so_far.get(method))
      runs = [] if lr is None else seed_runs(size, {method: lr})[method]
      summary[size][method] = {
        "losses": losses[method],
        "best_lr": lr,
        "bracketed": method in best,
        "seeds": [store.final(r) for r in runs],
      }
  steps = timing.get("steps", {})
  summary["step_s"] = {m: {size: s[m] for size, s in steps.items()} for m in METHODS}
  return summary


def report_text(summary: dict[str, dict], timing: dict) -> str:
  sizes = [size for size in summary if size != "step_s"]
  header = ["size", "method", "best lr", "final loss, seed 0 / 1 / ...", "mean", "spread"]
  rows = []
  for size in sizes:
    for method, s in summary[size].items():
      done = [x for x in s["seeds"] if x is not None]
      lr = "" if s["best_lr"] is None else f"{s['best_lr']:g}" + ("" if s["bracketed"] else " ~")
      seeds = " / ".join("-" if x is None else f"{x:.3f}" for x in s["seeds"])
      mean = f"{statistics.mean(done):.3f}" if done else ""
      spread = f"{max(done) - min(done):.3f}" if len(done) > 1 else ""
      rows.append([size, method, lr, seeds, mean, spread])
  grid_header = ["lr", *(f"{size} {m}" for size in sizes for m in METHODS)]
  lrs = sorted({lr for size in sizes for s in summary[size].values() for lr in s["losses"]})
  cell = lambda size, m, lr: (
    "" if summary[size][m]["losses"].get(lr) is None else f"{summary[size][m]['losses'][lr]:.3f}"
  )
  grid_rows = [[f"{lr:g}", *(cell(size, m, lr) for size in sizes for m in METHODS)] for lr in lrs]
  text = (
    f"SWAN, {protocol.STEPS} steps, its Adam group at {GROUP_RATIO:g} x the matrix lr. Best lr: "
    "the lowest seed-0 final validation loss of a grid that brackets it (`~`: the grid is still "
    "open).\n\n"
    + harness.markdown_table(header, rows, "lllrrr")
    + "\nSeed-0 final validation loss per matrix lr:\n\n"
    + harness.markdown_table(grid_header, grid_rows, "l" + "r" * (len(grid_header) - 1))
  )
  if not timing:
    return text + "\nStep times: not measured yet (`--only timing`).\n"
  timed = list(timing["steps"])
  ns_step = summary["step_s"]["newton_schulz"]
  step_rows = [
    [m, *(f"{1e3 * steps[n]:.0f} ({steps[n] / ns_step[n]:.2f})" for n in timed)]
    for m, steps in summary["step_s"].items()
  ]
  return (
    text
    + f"\nStep times: {timing['reps']} interleaved rounds in one process ({timing['machine']}).\n\n"
    + harness.markdown_table(
      ["method", *(f"{n} step ms (x NS)" for n in timed)], step_rows, "l" + "r" * len(timed)
    )
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
  for size in SEEDS:
    losses = search.sweep(at("sweep"), size, GRID, protocol.GRID_ORDER, method_run)
    for runs in seed_runs(size, search.best_lrs(losses)).values():
      list(map(at("seeds").get, runs))
  if "cheaper" in stages:
    for runs in cheaper_runs(store).values():
      list(map(store.get, runs))
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
    harness.save(cheaper_text(store.read_only()), args.out / "cheaper.md")
    (args.out / "whitening.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
  main()
