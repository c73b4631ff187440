"""The grids (lr, then the Adam group's), widened while the best sits at an edge; the queue."""

import dataclasses
import time
from collections.abc import Callable

from train.bench.budgets import protocol
from train.bench.budgets.protocol import Point
from train.bench.budgets.runner import Runner

Losses = dict[float, float | None]  # lr or group factor -> final loss (None: not run)


def widened(final: Callable[[float], float | None], grid: tuple[float, ...]) -> Losses:
  """``x -> final(x)`` over ``grid``, one 2x step further while the best sits at an edge;
  the search stops at the first point not run yet (its grid stays open)."""
  losses = {x: final(x) for x in grid}
  while None not in losses.values():
    best = min(losses, key=losses.get)
    if best not in (min(losses), max(losses)):
      break
    edge = best / 2 if best == min(losses) else best * 2
    losses[edge] = final(edge)
  return dict(sorted(losses.items()))


def lr_sweep(runner: Runner, size: str, budget: float) -> dict[str, Losses]:
  """Per variant: its seed-0 lr grid at ``budget`` (group 1), points in ``GRID_ORDER`` with
  every variant in turn, then widened."""
  for i in protocol.GRID_ORDER:
    for variant, spec in protocol.VARIANTS.items():
      runner.get(Point(size, variant, spec.lrs[i]), budget)
  return {
    v: widened(lambda lr, v=v: runner.final(Point(size, v, lr), budget), spec.lrs)
    for v, spec in protocol.VARIANTS.items()
  }


def best(losses: Losses, closed: bool = True) -> float | None:
  """The value of the lowest loss: of a complete grid that brackets it, or (``closed=False``)
  the best so far."""
  done = {x: v for x, v in losses.items() if v is not None}
  if not done or (closed and (len(done) < len(losses) or _at_edge(done))):
    return None
  return min(done, key=done.get)


def _at_edge(done: Losses) -> bool:
  x = min(done, key=done.get)
  return len(done) > 1 and x in (min(done), max(done))


def group_sweep(runner: Runner, size: str, budget: float, variant: str, lr: float) -> Losses:
  """Group factor -> ``variant``'s seed-0 final loss at ``lr`` and ``budget``, widened."""
  grid = protocol.VARIANTS[variant].groups
  return widened(lambda g: runner.final(Point(size, variant, lr, group=g), budget), grid)


def best_points(runner: Runner, size: str, budget: float, closed: bool = True) -> dict[str, Point]:
  """Each optimizer's best seed-0 point at ``budget``: ``adam`` plain Adam at its best lr,
  ``adam+embed`` Adam with its embedding lr tuned at that lr, the others at their best lr
  and group. Only searches that are complete (or, ``closed=False``, the best so far)."""
  points = {}
  for variant, losses in lr_sweep(runner, size, budget).items():
    lr = best(losses, closed)
    if lr is None:
      continue
    groups = group_sweep(runner, size, budget, variant, lr)
    if variant == "adam":
      points["adam"] = Point(size, "adam", lr)
    group = best(groups, closed)
    if group is not None:
      points["adam+embed" if variant == "adam" else variant] = Point(size, variant, lr, group)
  return points


def stage(runner: Runner, size: str, budget: float, seeds: tuple[int, ...], cosine: bool) -> None:
  """One (size, budget): the lr grids, the group grids at the best lrs, the references' best
  points at the size's next budget (a loss below theirs then gets a token fraction, not a
  bound), the seeds at each optimizer's best point and at each trainer default that is not
  one (the defaults are judged on the same seeds: a default outside the grids gets its seed 0
  here too), and (``cosine``) one cosine run at each best point."""
  points = best_points(runner, size, budget)
  larger = [b for b in protocol.BUDGETS[size] if b > budget]
  for name in protocol.REFERENCES:
    if larger and name in points:
      runner.get(points[name], larger[0])
  defaults = [protocol.default_point(size, name) for name in protocol.VARIANTS]
  seeded = [*points.values(), *(p for p in defaults if p not in points.values())]
  for seed in seeds:  # one more seed of every point at a time: a spread for each sooner
    for point in seeded:
      runner.get(dataclasses.replace(point, seed=seed), budget)
  if cosine:
    for point in points.values():
      runner.get(point, budget, "cosine")


def whitening(runner: Runner, size: str = "tiny-w64", budget: float = 1.0) -> None:
  """Each of ``WHITENINGS`` next to the grid's SWAN (8 Polar Express steps) at SWAN's best point
  so far (seed 0's lr and group): seeds 0 and 1 of both, the cheaper one alone at 2x and half
  that lr (it may want another: the grid's runs there are its own), the other seeds of
  ``SEEDS``, then the cheaper one's other seeds at the best of its three lrs, if another."""
  point = best_points(runner.read_only(), size, budget, closed=False)["swan"]
  pair = lambda seed: [
    dataclasses.replace(point, variant=v, seed=seed) for v in ("swan", *protocol.WHITENINGS)
  ]
  runs = [*pair(0), *pair(1)]
  runs += [
    dataclasses.replace(point, variant=v, lr=point.lr * f)
    for f in (2, 0.5)
    for v in protocol.WHITENINGS
  ]
  runs += [run for seed in protocol.SEEDS[size][2:] for run in pair(seed)]
  for run in runs:
    runner.get(run, budget)
  for variant in protocol.WHITENINGS:
    at = lambda lr, seed=0, v=variant: dataclasses.replace(point, variant=v, lr=lr, seed=seed)
    finals = {lr: runner.final(at(lr), budget) for lr in (point.lr / 2, point.lr, point.lr * 2)}
    if None not in finals.values():
      lr = min(finals, key=finals.get)
      for seed in protocol.SEEDS[size][1:]:
        runner.get(at(lr, seed), budget)


# (size, budget, seeds at the best points, the cosine check): in order, so a partial queue
# has every optimizer at 1x on tiny-w64 first, then on tiny at 0.25x (3.7 passes over the
# training split: the fewest of the stages left), then tiny-w64 at 4x (21 passes; a trunk of
# ~100 min on 2 shared cores), tiny at 1x (15 passes) and tiny-w256 at 0.25x (12 passes).
STAGES = (
  ("tiny-w64", 1.0, protocol.SEEDS["tiny-w64"], True),
  ("tiny", 0.25, protocol.SEEDS["tiny"], False),
  ("tiny-w64", 4.0, (0,), False),
  ("tiny", 1.0, protocol.SEEDS["tiny"], False),
  ("tiny-w256", 0.25, (0,), False),
)


def queue(runner: Runner, stages=STAGES, wait_s: float = 60.0) -> None:
  """Runs ``stages`` in order, then again while another process trains a run they need."""
  while True:
    runner.passed_over.clear()
    for size, budget, seeds, cosine in stages:
      stage(runner, size, budget, seeds, cosine)
    if not runner.passed_over:
      return
    print(f"waiting for {sorted(runner.passed_over)} (another process)", flush=True)
    time.sleep(wait_s)
