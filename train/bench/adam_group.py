"""The Adam group's learning rate, tuned jointly with the rest (tiny, seed 0; checked on small).

Run: ``python -m train.bench.adam_group [--only swan|sinkgd|adam-b2_0.999|small|report]``.
For SWAN and SinkGD a grid of ``lr`` (the matrices') x ``adam_group_lr`` (embeddings, lm_head,
norms); for Adam, of ``lr`` (every other parameter) x the embedding and lm_head lr, so the
baseline gets the same freedom. A 4 x 4 window of rates spaced 2x, slid until the best pair
sits inside it; the convergence protocol and its run store (the points where both rates are
equal are the convergence sweep's runs). ``small``: each variant whose window is complete, on
small at the convergence benchmark's best small lr, with the group at the tiny best ratio.
Writes ``OUT/adam_group.md``, ``.json`` and ``.png``: each grid's final losses, the best pair
and its ratio ``k = group lr / lr``, and the small check against the papers' pairing (Adam:
equal rates; SWAN's Adam group at its lr, SinkGD's at 20x, its global lr).
"""

import json
import math
import pathlib

from matplotlib.figure import Figure

from train import loop
from train.bench import harness
from train.bench.convergence import protocol
from train.bench.convergence import search
from train.bench.convergence import store as store_lib
from train.bench.convergence.store import Store

GROUP_LRS = (0.0125, 0.025, 0.05, 0.1)
# Variant -> (its lr axis, the best lr of the convergence sweep: its points run first).
LRS: dict[str, tuple[tuple[float, ...], float]] = {
  "swan": ((0.001, 0.002, 0.004, 0.008), 0.004),
  "sinkgd": ((1.25e-3, 2.5e-3, 5e-3, 1e-2), 2.5e-3),
  "adam-b2_0.999": ((0.001, 0.002, 0.004, 0.008), 0.002),
}
Grid = dict[tuple[float, float], float | None]  # (lr, group lr) -> final loss (None: not run)


def joint_run(
  variant: str, lr: float, group_lr: float, seed: int = 0, size: str = "tiny"
) -> protocol.Run:
  """``variant`` on ``size`` at ``lr``, its Adam group (Adam: embeddings) at ``group_lr``; at
  the papers' pairing (Adam: equal rates) the convergence sweep's run."""
  paired = lr if variant.startswith("adam") else protocol.paper_adam_lr(variant, lr)
  if math.isclose(group_lr, paired):
    return protocol.grid_run(size, variant, lr, seed)
  if variant.startswith("adam"):
    return protocol.embed_lr_run(size, variant, lr, group_lr, seed)
  run = protocol.grid_run(size, variant, lr, seed, adam_group_lr=group_lr)
  return protocol.Run(run.size, f"{variant}+adam_lr{group_lr:g}", run.optimizer, run.seed)


def small_checks(store: Store) -> dict[str, tuple[protocol.Run, protocol.Run]]:
  """Variant -> (small at its best small lr with the group at the tiny best ratio, small at
  that lr at the papers' pairing), for each variant whose tiny window is complete. The best small lr
  is the convergence benchmark's small sweep's."""
  read_only = store.read_only()
  best = search.best_lrs(search.sweep(read_only))
  adam = search.adam_reference(read_only, best)
  small = search.best_lrs(search.small_sweep(read_only, best, adam)) if adam else {}
  checks = {}
  for variant in LRS:
    tiny = summarize(variant, sweep(read_only, variant))
    if tiny["complete"] and (lr := small.get(variant)) is not None:
      recipe = joint_run(variant, lr, tiny["ratio"] * lr, size="small")
      checks[variant] = (recipe, protocol.grid_run("small", variant, lr, 0))
  return checks


def sweep(store: Store, variant: str) -> Grid:
  """The finished points near the grid, and those run while a 4 x 4 window of the 2x lattice
  slides to the best pair (``None``: a point of the window not run, with a read-only store).

  The window starts at ``LRS[variant]`` x ``GROUP_LRS``; it then holds the best pair so far
  and both its neighbours on each axis, one more step out on the side of the better
  neighbour. Points run nearest the best first, so a window that slides leaves its far side
  unrun. Every run already in the store counts, however it came to be run.
  """
  centre, read_only = LRS[variant][1], store.read_only()
  nearby = [(centre * 2.0**i, GROUP_LRS[0] * 2.0**j) for i in range(-4, 5) for j in range(-4, 8)]
  finals = {p: read_only.final(joint_run(variant, *p)) for p in nearby}
  losses: Grid = {p: x for p, x in finals.items() if x is not None}
  while missing := [p for p in window(variant, losses) if p not in losses]:
    best = _best(losses) or missing[0]
    distance = lambda p, best=best: sum(abs(math.log(a / b)) for a, b in zip(p, best, strict=True))
    nearest = min(missing, key=distance)
    losses[nearest] = store.final(joint_run(variant, *nearest))
  return dict(sorted(losses.items()))


def window(variant: str, losses: Grid) -> list[tuple[float, float]]:
  """The 4 x 4 window around the best finished point of ``losses`` (see ``sweep``)."""
  best = _best(losses)
  if best is None:
    return [(lr, g) for lr in LRS[variant][0] for g in GROUP_LRS]
  axes = []
  for axis in (0, 1):
    step = lambda k, axis=axis: tuple(x * 2.0**k if i == axis else x for i, x in enumerate(best))
    below, above = (losses.get(step(k)) for k in (-1, 1))
    up = above is not None and (below is None or above < below)
    axes.append([step(k)[axis] for k in ((-1, 0, 1, 2) if up else (-2, -1, 0, 1))])
  return [(lr, g) for lr in axes[0] for g in axes[1]]


def _best(losses: Grid) -> tuple[float, float] | None:
  """The finished point of least loss (a diverged run's NaN counts as infinite)."""
  done = {k: x if math.isfinite(x) else math.inf for k, x in losses.items() if x is not None}
  return min(done, key=done.get) if done else None


def summarize(variant: str, grid: Grid) -> dict:
  best = _best(grid)
  return {
    "losses": [[lr, g, x] for (lr, g), x in grid.items()],
    "best": None if best is None else {"lr": best[0], "group_lr": best[1], "loss": grid[best]},
    "ratio": None if best is None else best[1] / best[0],
    "complete": all(grid.get(p) is not None for p in window(variant, grid)),
  }


def report_text(summaries: dict[str, dict]) -> str:
  parts = []
  for variant, s in summaries.items():
    grid = {(lr, g): x for lr, g, x in s["losses"]}
    lrs, groups = sorted({k[0] for k in grid}), sorted({k[1] for k in grid})
    cell = lambda lr, g, grid=grid: "" if grid.get((lr, g)) is None else f"{grid[lr, g]:.3f}"
    rows = [[f"{lr:g}", *(cell(lr, g) for g in groups)] for lr in lrs]
    header = ["lr \\ group lr", *(f"{g:g}" for g in groups)]
    best = s["best"]
    verdict = (
      "nothing ran yet"
      if best is None
      else f"best so far: lr {best['lr']:g}, group lr {best['group_lr']:g} (k = "
      f"{s['ratio']:.3g}), loss {best['loss']:.3f}"
      + ("" if s["complete"] else "; the grid is still open")
    )
    parts.append(
      f"#### {variant}\n\n{harness.markdown_table(header, rows, 'l' + 'r' * len(groups))}\n"
      f"{verdict}.{_small_line(s.get('small'))}\n"
    )
  return "\n".join(parts)


def _small_line(small: dict | None) -> str:
  """On small: the tiny best ratio at the small sweep's best lr, against the papers' pairing."""
  if small is None:
    return ""
  loss = lambda x: "not run yet" if x is None else f"{x:.3f}"
  return (
    f" On small, at the small sweep's best lr {small['lr']:g}: group lr {small['group_lr']:g} "
    f"(the same k) reaches {loss(small['loss'])}, the papers' pairing "
    f"{loss(small['equal_rates_loss'])}."
  )


def plot(summaries: dict[str, dict], path: pathlib.Path) -> None:
  """Final loss against the group lr, one curve per lr, one panel per variant."""
  fig = Figure(figsize=(4 * len(summaries), 3.2))
  for ax, (variant, s) in zip(fig.subplots(1, len(summaries)), summaries.items(), strict=True):
    for lr in sorted({lr for lr, _, _ in s["losses"]}):
      done = sorted((g, x) for r, g, x in s["losses"] if r == lr and x is not None)
      if done:
        ax.plot(*zip(*done, strict=True), "o-", label=f"lr {lr:g}")
    ax.set(xscale="log", xlabel="Adam-group lr", ylabel="final val loss", title=variant)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def report(store: Store, out: pathlib.Path) -> None:
  """Writes ``adam_group.md``, ``.json`` and ``.png`` from the run JSONs alone."""
  read_only = store.read_only()
  summaries = {v: summarize(v, sweep(read_only, v)) for v in LRS}
  for variant, (recipe, equal) in small_checks(read_only).items():
    summaries[variant]["small"] = {
      "lr": recipe.optimizer.lr,
      "group_lr": recipe.optimizer.lr * summaries[variant]["ratio"],
      "loss": read_only.final(recipe),
      "equal_rates_loss": read_only.final(equal),
    }
  text = report_text(summaries)
  harness.save(
    f"### Adam group (`python -m train.bench.adam_group`)\n\n{text}", out / "adam_group.md"
  )
  (out / "adam_group.json").write_text(json.dumps(summaries, indent=1))
  plot(summaries, out / "adam_group.png")


def main() -> None:
  parser = harness.parser(__doc__, "adam_group")
  parser.add_argument("--only", choices=(*LRS, "small", "report"), action="append")
  parser.add_argument("--work", type=pathlib.Path, default=pathlib.Path("runs/adam_group"))
  store_lib.add_runs_flag(parser)
  args = parser.parse_args()
  store = Store(args.runs, args.work, protocol.STEPS, protocol.STEPS, loop.train)
  for name in args.only or (*LRS, "small", "report"):
    if name == "report":
      args.out.mkdir(parents=True, exist_ok=True)
      report(store, args.out)
    elif name == "small":
      for runs in small_checks(store).values():
        list(map(store.get, runs))
    else:
      sweep(store, name)


if __name__ == "__main__":
  main()
