"""The learning-rate searches: each variant's grid widened until it brackets its best, the
Adam reference, and the small model's grid."""

import dataclasses
from collections.abc import Callable

import numpy as np

from train.bench.convergence import protocol
from train.bench.convergence.store import Store

# Variant -> lr -> seed 0's final validation loss (None: not run yet).
Losses = dict[str, dict[float, float | None]]


def sweep(
  store: Store,
  size: str = "tiny",
  grid: dict[str, tuple[float, ...]] = protocol.GRID,
  order: tuple[int, ...] = protocol.GRID_ORDER,
  make_run: Callable[..., protocol.Run] = protocol.grid_run,
) -> Losses:
  """Seed-0 final losses over each variant's grid, widened 2x at an edge holding the best.

  ``order``: the grid points' indices in the order they run, every variant in turn.
  ``make_run(size, variant, lr, seed)``: the run of a grid point.
  """
  seed0 = lambda variant, lr: make_run(size, variant, lr, 0)
  grid = {variant: list(lrs) for variant, lrs in grid.items()}
  for i in order:
    for variant, lrs in grid.items():
      store.get(seed0(variant, lrs[i]))
  losses = {v: {lr: store.final(seed0(v, lr)) for lr in lrs} for v, lrs in grid.items()}
  while widen := [v for v in losses if _edge(losses[v])]:
    for variant in widen:
      lrs = sorted(losses[variant])
      lr = lrs[0] / 2 if _best(losses[variant]) == lrs[0] else lrs[-1] * 2
      # Not run yet (None): the grid stays open at this edge, and is no longer an "edge".
      losses[variant][lr] = store.final(seed0(variant, lr))
  return {v: dict(sorted(ls.items())) for v, ls in losses.items()}


def _best(losses: dict[float, float | None]) -> float | None:
  """The lr of the lowest loss, or ``None`` while some grid point is not run yet."""
  if not losses or any(v is None for v in losses.values()):
    return None
  return min(losses, key=losses.get)


def _edge(losses: dict[float, float | None]) -> bool:
  best = _best(losses)
  return best is not None and best in (min(losses), max(losses))


def best_lrs(losses: Losses) -> dict[str, float]:
  """Each variant's best lr, for variants whose grid is complete and brackets it."""
  bests = {v: _best(ls) for v, ls in losses.items()}
  return {v: lr for v, lr in bests.items() if lr is not None and not _edge(losses[v])}


def best_so_far(losses: Losses) -> dict[str, float]:
  """Each variant's lr of the lowest finished seed-0 loss (provisional while its grid is open)."""
  done = {v: {lr: x for lr, x in ls.items() if x is not None} for v, ls in losses.items()}
  return {v: min(ls, key=ls.get) for v, ls in done.items() if ls}


def adam_reference(store: Store, best: dict[str, float]) -> str | None:
  """The Adam variant (beta2) with the lower mean final loss over its finished seeds at ``best``."""
  means, seeds = {}, protocol.seed_runs(best)
  for variant in ("adam-b2_0.95", "adam-b2_0.999"):
    finals = [x for x in map(store.final, seeds.get(variant, [])) if x is not None]
    if finals:
      means[variant] = np.mean(finals)
  return min(means, key=means.get) if means else None


def seeds_finished(store: Store, best: dict[str, float]) -> bool:
  """Whether every variant's grid brackets its best and all its seeds there are finished."""
  runs = [r for seeds in protocol.seed_runs(best).values() for r in seeds]
  return len(best) == len(protocol.GRID) and all(store.final(r) is not None for r in runs)


def small_sweep(store: Store, best: dict[str, float], adam: str) -> Losses:
  """The small model's seed-0 losses from each best tiny lr and its 2x neighbours, widened 2x
  while the best sits at an edge (as the tiny sweep)."""
  grid = {
    v: tuple(best[v] * f for f in protocol.SMALL_LR_FACTORS) for v in (adam, "swan", "sinkgd")
  }
  return sweep(store, "small", grid, protocol.SMALL_ORDER)


def small_ablations(best: dict[str, float], adam: str, small: Losses) -> dict[str, protocol.Run]:
  """Base variant -> the ablation rerun on small: Adam with the embeddings at SinkGD's best lr
  (the tiny ablation that matched SinkGD), and SWAN whitening by Polar Express at SWAN's best
  small lr (once the small SWAN grid brackets it)."""
  sinkgd_group = protocol.paper_adam_lr("sinkgd", best["sinkgd"])
  runs = {adam: protocol.embed_lr_run("small", adam, best[adam], sinkgd_group, 0)}
  if swan := best_lrs(small).get("swan"):
    polar = protocol.grid_run("small", "swan", swan, 0, whiten_method="polar_express")
    runs["swan"] = dataclasses.replace(polar, variant="swan_polar_express")
  return runs
