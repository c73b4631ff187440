"""Settings that carry across sizes: learning-rate grids along a width ladder and a depth ladder.

Run: ``python -m train.bench.transfer [--only width|depth|group|report] [--widths 64 128 256]``.
One model family, the tiny LLaMA with only its width (``tiny-w64``, ``tiny`` = 128,
``tiny-w256``, ``tiny-w512``) or only its depth (``tiny-l2``, ``tiny`` = 4 layers,
``tiny-l8``) changed; vocabulary 2048, head_dim 32 and ffn = 43/16 d are kept. Every run
follows the convergence benchmark's protocol (240 steps x 16 x 256 tokens, warmup 10%, cosine
to 10%, clipping 1.0, seed 0) and shares its run store, so the ``tiny`` point reuses the
convergence sweep's runs. For each optimizer variant and scale rule, a 5-point 2x lr grid per
size, widened 2x while the best sits at an edge; ``group``: at each width's best lr, SWAN's
and SinkGD's Adam group over a 2x grid around its ratio, to see whether the group's lr
transfers too. Writes ``OUT/transfer.md``, ``.json`` and ``.png``: final loss against lr, one
curve per size, one panel per variant, and each size's best lr (and best group lr) with its
drift per doubling.
"""

import json
import math
import pathlib
import statistics

from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

import swan_optax
from train import loop
from train.bench import harness
from train.bench.convergence import protocol
from train.bench.convergence import search
from train.bench.convergence import store as store_lib
from train.bench.convergence.store import Store

WIDTHS = {64: "tiny-w64", 128: "tiny", 256: "tiny-w256", 512: "tiny-w512"}
DEPTHS = {2: "tiny-l2", 4: "tiny", 8: "tiny-l8"}
# The spectral variants pair their Adam group's lr with their matrix lr as the unit-RMS ones
# do at width 128, where both rules step alike (1 / sqrt(128) of the unit-RMS ratio).
_PAIRED = 128**-0.5
# Variant -> (its optimizer fields, its Adam group's lr over its lr (None: Adam), the centre of
# its grid: the best tiny lr, or for the spectral rule the best tiny unit-RMS lr / _PAIRED).
# SWAN runs Polar Express, its Adam group at 50x (train.bench.whitening and adam_group); SinkGD
# its Adam group at 20x, the paper's (its global lr).
VARIANTS: dict[str, tuple[dict, float | None, float]] = {
  "adam-b2_0.999": (protocol.VARIANTS["adam-b2_0.999"], None, 2e-3),
  "swan": ({"name": "swan", "whiten_method": "polar_express"}, 50.0, 4e-3),
  "swan-spectral": (
    {"name": "swan", "whiten_method": "polar_express", "scale_rule": "spectral"},
    50.0 * _PAIRED,
    0.05,
  ),
  "sinkgd": (protocol.VARIANTS["sinkgd"], 20.0, 2.5e-3),
  "sinkgd-spectral": ({"name": "sinkgd", "scale_rule": "spectral"}, 20.0 * _PAIRED, 2.5e-2),
  # optax's Muon at its own shape scaling and defaults: its Adam group at its lr.
  "muon": ({"name": "muon"}, 1.0, 0.02),
}
GRID = {
  v: tuple(centre * 2.0**k for k in (-2, -1, 0, 1, 2)) for v, (*_, centre) in VARIANTS.items()
}
LADDERS = {"width": WIDTHS, "depth": DEPTHS}
TINY = {"width": 128, "depth": 4}  # each ladder's rung that is the tiny model


def default_variant(name: str) -> str:
  """The variant of optimizer ``name`` at the trainer's defaults: swan and sinkgd at their
  default scale rule, muon at its own shape scaling."""
  if name == "muon":
    return name
  rule = swan_optax.defaults.SCALE_RULE[name]
  return name if rule == "unit_rms" else f"{name}-{rule}"


# The Adam group's lr across the width ladder: at each width's best lr, the group at these
# factors x its variant's ratio (1: the ladder's own point).
GROUP_VARIANTS = tuple(map(default_variant, swan_optax.defaults.SCALE_RULE))
GROUP_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


def ladder_run(
  size: str, variant: str, lr: float, seed: int, group_factor: float = 1.0
) -> protocol.Run:
  """The run of ``variant`` at ``lr`` on ``size``, its Adam group at ``group_factor`` x its
  ratio x ``lr``, named as the other benchmarks name the same run."""
  fields, ratio, _ = VARIANTS[variant]
  if ratio is None:
    if group_factor != 1.0:
      raise ValueError(f"{variant} has no Adam group to scale; group_factor must be 1")
    return protocol.Run(size, variant, protocol.optimizer_config(lr, **fields), seed)
  group = group_factor * ratio * lr
  name = (
    variant.replace("swan", f"swan_{fields['whiten_method']}")
    if "whiten_method" in fields
    else variant
  )
  # A SinkGD variant's own ratio is the paper's pairing, Muon's optax's default: their factor-1
  # runs have the plain name.
  paired = variant.startswith(("sinkgd", "muon")) and group_factor == 1
  name += "" if paired else f"+adam_lr{group:g}"
  return protocol.Run(
    size, name, protocol.optimizer_config(lr, **fields, adam_group_lr=group), seed
  )


def sweep_ladder(
  store: Store, sizes: dict[int, str], order: tuple[int, ...] = protocol.GRID_ORDER
) -> dict[int, search.Losses]:
  """Seed-0 losses of every variant's grid at each size, smallest size first.

  ``order``: the grid points (indices) to run; only the full ``GRID_ORDER`` widens a grid
  whose best sits at an edge. ``main`` runs every size's three central points before any
  size's outer ones, so a partial ladder spans all sizes.
  """
  if len(order) < len(protocol.GRID_ORDER):
    for _, size in sorted(sizes.items()):
      for i in order:
        for variant, lrs in GRID.items():
          store.get(ladder_run(size, variant, lrs[i], 0))
    store = store.read_only()
  return {
    n: search.sweep(store, size, GRID, order, ladder_run) for n, size in sorted(sizes.items())
  }


def sweep_group(
  store: Store, sizes: dict[int, str], losses: dict[int, search.Losses]
) -> dict[str, dict[int, dict[float, float | None]]]:
  """Per ``GROUP_VARIANTS`` variant and size: its Adam group's lr -> seed-0 final loss, at that
  size's best lr in ``losses`` (best so far while its grid is open), the group at
  ``GROUP_FACTORS`` x the variant's ratio, widened 2x while the best sits at an edge."""
  groups: dict[str, dict[int, dict[float, float | None]]] = {v: {} for v in GROUP_VARIANTS}
  for n, size in sorted(sizes.items()):
    for variant in GROUP_VARIANTS:
      lr = search.best_so_far({variant: losses[n][variant]}).get(variant)
      if lr is None:
        continue
      run = lambda size, v, factor, seed, lr=lr: ladder_run(size, v, lr, seed, factor)
      by_factor = search.sweep(store, size, {variant: GROUP_FACTORS}, make_run=run)[variant]
      groups[variant][n] = {
        run(size, variant, f, 0).optimizer.adam_group_lr: x for f, x in by_factor.items()
      }
  return groups


def drift_per_doubling(best: dict[int, float]) -> float | None:
  """The factor by which the best lr moves per doubling of the size (a least-squares slope in
  log2 space); ``None`` with fewer than two sizes."""
  if len(best) < 2:
    return None
  x = [math.log2(n) for n in best]
  y = [math.log2(lr) for lr in best.values()]
  mx, my = sum(x) / len(x), sum(y) / len(y)
  slope = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sum(
    (a - mx) ** 2 for a in x
  )
  return 2.0**slope


def summarize(losses: dict[int, search.Losses], reference: int) -> dict[str, dict]:
  """Per variant: each size's losses, best lr (bracketed or not yet), best loss, drift, and
  the cost of transfer: the loss at ``reference``'s best lr minus the best loss, per size."""
  summary = {}
  for variant in dict.fromkeys(v for ls in losses.values() for v in ls):
    per_size = {n: ls[variant] for n, ls in losses.items() if variant in ls}
    bracketed = {n: search.best_lrs({variant: ls}).get(variant) for n, ls in per_size.items()}
    so_far = {n: search.best_so_far({variant: ls}).get(variant) for n, ls in per_size.items()}
    best = {n: lr for n, lr in bracketed.items() if lr is not None}
    best_loss = {n: per_size[n][lr] for n, lr in so_far.items() if lr is not None}
    transferred = so_far.get(reference)
    summary[variant] = {
      "losses": {n: {lr: x for lr, x in ls.items()} for n, ls in per_size.items()},
      "best_lr": bracketed,
      "best_so_far": so_far,
      "best_loss": best_loss,
      "drift_per_doubling": drift_per_doubling(best),
      "transfer_cost": {
        n: ls[transferred] - best_loss[n]
        for n, ls in per_size.items()
        if ls.get(transferred) is not None
      },
    }
  return summary


def minutes_per_run(
  store: Store, sizes: dict[int, str], losses: dict[int, search.Losses]
) -> dict[int, list[float]]:
  """Each size's finished runs' wall-clock minutes, as their JSONs record them (runs adopted
  from a folder have none)."""
  minutes = {}
  for n, per_variant in losses.items():
    records = (
      store.get(ladder_run(sizes[n], variant, lr, 0))
      for variant, ls in per_variant.items()
      for lr, x in ls.items()
      if x is not None
    )
    minutes[n] = [r["wall_time_s"] / 60 for r in records if r["wall_time_s"] is not None]
  return minutes


def lr_table(summary: dict[str, dict], what: str) -> str:
  """Each variant's best ``what`` and its loss per size, and the drift, as Markdown."""
  sizes = sorted({n for s in summary.values() for n in s["losses"]})
  header = ["variant", *[f"best {what} at {n}" for n in sizes], "drift / doubling"]
  header += [f"loss at {n}" for n in sizes]
  rows = []
  for variant, s in summary.items():
    lr = lambda n, s=s: _lr_cell(s["best_lr"].get(n), s["best_so_far"].get(n))
    drift = s["drift_per_doubling"]
    loss = lambda n, s=s: _loss_cell(s["best_loss"].get(n), s["transfer_cost"].get(n))
    drift_cell = "" if drift is None else f"x{drift:.2f}"
    rows.append([variant, *map(lr, sizes), drift_cell, *map(loss, sizes)])
  return harness.markdown_table(header, rows, "l" + "r" * (len(header) - 1))


def report_text(
  ladder: str, summary: dict[str, dict], minutes: dict[int, list[float]], steps: int
) -> str:
  """The Markdown table of one ladder: best lr and loss per size, the drift, and what the
  runs took."""
  sizes = sorted({n for s in summary.values() for n in s["losses"]})
  tokens = steps * protocol.BATCH * protocol.SEQ_LEN
  took = "; ".join(
    f"{n}: {statistics.median(m):.1f} min a run, {sum(m) / 60:.1f} h for {len(m)}"
    for n, m in sorted(minutes.items())
    if m
  )
  return (
    f"#### {ladder} ladder ({', '.join(map(str, sizes))}; {steps} steps, {tokens:,} tokens)\n\n"
    + lr_table(summary, "lr")
    + "\nBest lr: the lowest seed-0 final validation loss of a grid that brackets it; "
    "`~x` while the grid is open (best so far), empty while nothing ran. Drift: the factor "
    "the best lr moves per doubling (least squares in log2; 1.00 transfers exactly). "
    f"`(+x)`: the loss lost at this size with the best lr of {TINY[ladder]} (the tiny model). "
    f"Wall clock on these 2 CPU cores, often shared with other work: {took or 'nothing ran'}.\n"
  )


def group_report_text(summary: dict[str, dict]) -> str:
  """The Markdown table of the Adam group's best lr per width."""
  factors = ", ".join(f"{f:g}" for f in GROUP_FACTORS)
  return (
    "#### the Adam group across widths\n\n"
    + lr_table(summary, "group lr")
    + f"\nAt each width's best lr (best so far while its grid is open), the Adam group at "
    f"{factors} x the variant's ratio, widened 2x while the best sits at an edge; best group "
    "lr and drift as above.\n"
  )


def _loss_cell(best: float | None, cost: float | None) -> str:
  if best is None:
    return ""
  return f"{best:.3f}" + ("" if not cost else f" (+{cost:.3f})")


def _lr_cell(bracketed: float | None, so_far: float | None) -> str:
  if bracketed is not None:
    return f"{bracketed:.3g}"
  return "" if so_far is None else f"~{so_far:.3g}"


def plot(summaries: dict[str, dict[str, dict]], path: pathlib.Path) -> None:
  """Final loss against lr, one curve per size, one panel per (ladder, variant)."""
  panels = [(ladder, v) for ladder, summary in summaries.items() for v in summary]
  fig = Figure(figsize=(3.6 * len(VARIANTS), 3.2 * len(summaries)))
  axes = fig.subplots(len(summaries), len(VARIANTS), squeeze=False).ravel()
  for ax, (ladder, variant) in zip(axes, panels, strict=True):
    for n, ls in sorted(summaries[ladder][variant]["losses"].items()):
      done = sorted((lr, x) for lr, x in ls.items() if x is not None)
      if done:
        ax.plot(*zip(*done, strict=True), "o-", label=f"{ladder} {n}")
    ax.set(xscale="log", xlabel="peak lr", ylabel="final val loss", title=variant)
    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap within a decade
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def report(store: Store, ladders: dict[str, dict[int, str]], out: pathlib.Path) -> None:
  """Writes ``transfer.md``, ``.json`` and ``.png`` from the run JSONs alone."""
  read_only = store.read_only()
  losses = {name: sweep_ladder(read_only, sizes) for name, sizes in ladders.items()}
  summaries = {name: summarize(ls, TINY[name]) for name, ls in losses.items()}
  groups = sweep_group(read_only, ladders["width"], losses["width"])
  group_summary = summarize(_by_size(groups), TINY["width"])
  text = "\n".join(
    report_text(
      name, summaries[name], minutes_per_run(read_only, ladders[name], ls), store.tiny_steps
    )
    for name, ls in losses.items()
  )
  text += "\n" + group_report_text(group_summary)
  harness.save(f"## Transfer (`python -m train.bench.transfer`)\n\n{text}", out / "transfer.md")
  (out / "transfer.json").write_text(
    json.dumps({**summaries, "width_group": group_summary}, indent=1, default=str)
  )
  plot(summaries, out / "transfer.png")


def _by_size(groups: dict[str, dict[int, dict]]) -> dict[int, search.Losses]:
  """``groups`` by size, keeping the grids where more than the ladder's own point ran."""
  by_size: dict[int, search.Losses] = {}
  for variant, per_size in groups.items():
    for n, ls in per_size.items():
      if sum(x is not None for x in ls.values()) > 1:
        by_size.setdefault(n, {})[variant] = ls
  return by_size


def main() -> None:
  parser = harness.parser(__doc__, "transfer")
  parser.add_argument("--only", choices=(*LADDERS, "group", "report"), action="append")
  parser.add_argument("--widths", type=int, nargs="+", default=(64, 128, 256), choices=WIDTHS)
  parser.add_argument("--depths", type=int, nargs="+", default=(2, 4, 8), choices=DEPTHS)
  parser.add_argument("--work", type=pathlib.Path, default=pathlib.Path("runs/transfer"))
  parser.add_argument("--steps", type=int, default=protocol.STEPS, help="steps of every run")
  store_lib.add_runs_flag(parser)
  args = parser.parse_args()
  store = Store(args.runs, args.work, args.steps, args.steps, loop.train)
  ladders = {
    "width": {n: WIDTHS[n] for n in args.widths},
    "depth": {n: DEPTHS[n] for n in args.depths},
  }
  for name in args.only or (*LADDERS, "group", "report"):
    if name == "report":
      report(store, ladders, args.out)
    elif name == "group":
      sweep_group(store, ladders["width"], sweep_ladder(store.read_only(), ladders["width"]))
    else:
      for order in (protocol.GRID_ORDER[:3], protocol.GRID_ORDER):
        sweep_ladder(store, ladders[name], order)


if __name__ == "__main__":
  main()
