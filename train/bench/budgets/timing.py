"""Each optimizer's train-step time per width, side by side in one process (``--only timing``).

The wall-clock fractions are token fractions times these step-time ratios to Adam's. Runs
on shared cores are timed under whatever else runs there; these are medians of interleaved
rounds in one process, so machine noise hits every optimizer alike.
"""

from train.bench import harness
from train.bench.budgets import protocol
from train.bench.budgets.protocol import Point
from train.bench.budgets.runner import Runner


def step_times(runner: Runner, size: str, reps: int) -> dict[str, float]:
  """Median seconds of each optimizer's compiled train step on ``size`` at the budget runs'
  settings. A step costs the same at every lr, group and seed: each is timed at its grid's
  first point."""
  steps = runner.steps_of(size, protocol.BUDGETS[size][0])
  setups = {}
  for variant, spec in protocol.VARIANTS.items():
    point = Point(size, variant, spec.lrs[protocol.GRID_ORDER[0]])
    config = runner.config(point, steps, "wsd", f"timing-{point.tag}")
    setups[variant] = harness.Stepper(harness.experiment(config)).setup
  return harness.interleaved_medians(setups, reps)
