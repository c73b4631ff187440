"""Settings that carry across sizes: learning-rate grids along a width ladder and a depth ladder.

Run: ``python -m train.bench.transfer [--only width|depth|report] [--widths 64 128 256]``.
One model family, the tiny LLaMA with only its width (``tiny-w64``, ``tiny`` = 128,
``tiny-w256``, ``tiny-w512``) or only its depth (``tiny-l2``, ``tiny`` = 4 layers,
``tiny-l8``) changed; vocabulary 2048, head_dim 32 and ffn = 43/16 d are kept. Every run
follows the convergence benchmark's protocol (240 steps x 16 x 256 tokens, warmup 10%, cosine
to 10%, clipping 1.0, seed 0) and shares its run store, so the ``tiny`` point reuses the
convergence sweep's runs. For each optimizer variant and scale rule, a 5-point 2x lr grid per
size, widened 2x while the best sits at an edge. Writes ``OUT/transfer.md``, ``.json`` and
``.png``: final loss against lr, one curve per size, one panel per variant, and each size's
best lr with its drift per doubling.
"""

import json
import math
import pathlib
import statistics

from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from train import loop
from train.bench import harness
from train.bench.convergence import protocol
from train.bench.convergence import search
from train.bench.convergence import store as store_lib
from train.bench.convergence.store import Store

WIDTHS = {64: "tiny-w64", 128: "tiny", 256: "tiny-w256", 512: "tiny-w512"}
DEPTHS = {2: "tiny-l2", 4: "tiny", 8: "tiny-l8"}
# The spectral rule's update RMS at the reference width (128 x 128 matrices): a spectral
# variant's Adam group runs at its ratio x lr x this, so at width 128 it pairs the same matrix
# and Adam-group steps as the unit-RMS one.
REFERENCE_RMS = 1 / math.sqrt(128)
# Variant -> (its optimizer fields, its Adam group's lr over its lr (None: Adam), the centre of
# its grid: the best tiny lr, or for the spectral rule the best tiny unit-RMS lr /
# REFERENCE_RMS). SWAN runs as the trainer's default: Polar Express, its Adam group at 50x
# (train.bench.whitening and adam_group); SinkGD with its Adam group at its global lr.
VARIANTS: dict[str, tuple[dict, float | None, float]] = {
  "adam-b2_0.999": (protocol.VARIANTS["adam-b2_0.999"], None, 2e-3),
  "swan": ({"name": "swan", "whiten_method": "polar_express"}, 50.0, 4e-3),
  "swan-spectral": (
    {"name": "swan", "whiten_method": "polar_express", "scale_rule": "spectral"},
    50.0,
    0.05,
  ),
  "sinkgd": (protocol.VARIANTS["sinkgd"], 1.0, 0.05),
  "sinkgd-spectral": ({"name": "sinkgd", "scale_rule": "spectral"}, 1.0, 0.5),
}
GRID = {
  v: tuple(centre * 2.0**k for k in (-2, -1, 0, 1, 2)) for v, (*_, centre) in VARIANTS.items()
}
LADDERS = {"width": WIDTHS, "depth": DEPTHS}


def ladder_run(size: str, variant: str, lr: float, seed: int) -> protocol.Run:
  """The run of ``variant`` at ``lr`` on ``size``, its Adam group at its ratio x ``lr`` (x
  ``REFERENCE_RMS`` if spectral), named as the other benchmarks name the same run."""
  fields, ratio, _ = VARIANTS[variant]
  if ratio is None:
    return protocol.Run(size, variant, protocol.optimizer_config(lr, **fields), seed)
  group = ratio * lr * (REFERENCE_RMS if fields.get("scale_rule") == "spectral" else 1.0)
  name = (
    variant.replace("swan", f"swan_{fields['whiten_method']}")
    if "whiten_method" in fields
    else variant
  )
  name += "" if ratio == 1 else f"+adam_lr{group:g}"
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


def summarize(losses: dict[int, search.Losses]) -> dict[str, dict]:
  """Per variant: each size's losses, best lr (bracketed or not yet), best loss and drift."""
  summary = {}
  for variant in VARIANTS:
    per_size = {n: ls[variant] for n, ls in losses.items()}
    bracketed = {n: search.best_lrs({variant: ls}).get(variant) for n, ls in per_size.items()}
    so_far = {n: search.best_so_far({variant: ls}).get(variant) for n, ls in per_size.items()}
    best = {n: lr for n, lr in bracketed.items() if lr is not None}
    summary[variant] = {
      "losses": {n: {lr: x for lr, x in ls.items()} for n, ls in per_size.items()},
      "best_lr": bracketed,
      "best_so_far": so_far,
      "best_loss": {n: per_size[n][lr] for n, lr in so_far.items() if lr is not None},
      "drift_per_doubling": drift_per_doubling(best),
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


def report_text(
  ladder: str, summary: dict[str, dict], minutes: dict[int, list[float]], steps: int
) -> str:
  """The Markdown table of one ladder: best lr and loss per size, the drift, and what the
  runs took."""
  sizes = sorted({n for s in summary.values() for n in s["losses"]})
  header = ["variant", *[f"best lr at {n}" for n in sizes], "drift / doubling"]
  header += [f"loss at {n}" for n in sizes]
  rows = []
  for variant, s in summary.items():
    lr = lambda n, s=s: _lr_cell(s["best_lr"].get(n), s["best_so_far"].get(n))
    drift = s["drift_per_doubling"]
    loss = lambda n, s=s: "" if n not in s["best_loss"] else f"{s['best_loss'][n]:.3f}"
    drift_cell = "" if drift is None else f"x{drift:.2f}"
    rows.append([variant, *map(lr, sizes), drift_cell, *map(loss, sizes)])
  align = "l" + "r" * (len(header) - 1)
  tokens = steps * protocol.BATCH * protocol.SEQ_LEN
  took = "; ".join(
    f"{n}: {statistics.median(m):.1f} min a run, {sum(m) / 60:.1f} h for {len(m)}"
    for n, m in sorted(minutes.items())
    if m
  )
  return (
    f"#### {ladder} ladder ({', '.join(map(str, sizes))}; {steps} steps, {tokens:,} tokens)\n\n"
    + harness.markdown_table(header, rows, align)
    + "\nBest lr: the lowest seed-0 final validation loss of a grid that brackets it; "
    "`~x` while the grid is open (best so far), empty while nothing ran. Drift: the factor "
    "the best lr moves per doubling (least squares in log2; 1.00 transfers exactly). "
    f"Wall clock on these 2 CPU cores, often shared with other work: {took or 'nothing ran'}.\n"
  )


def _lr_cell(bracketed: float | None, so_far: float | None) -> str:
  if bracketed is not None:
    return f"{bracketed:g}"
  return "" if so_far is None else f"~{so_far:g}"


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
  summaries = {name: summarize(ls) for name, ls in losses.items()}
  text = "\n".join(
    report_text(
      name, summaries[name], minutes_per_run(read_only, ladders[name], ls), store.tiny_steps
    )
    for name, ls in losses.items()
  )
  harness.save(f"## Transfer (`python -m train.bench.transfer`)\n\n{text}", out / "transfer.md")
  (out / "transfer.json").write_text(json.dumps(summaries, indent=1, default=str))
  plot(summaries, out / "transfer.png")


def main() -> None:
  parser = harness.parser(__doc__, "transfer")
  parser.add_argument("--only", choices=(*LADDERS, "report"), action="append")
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
  for name in args.only or (*LADDERS, "report"):
    if name == "report":
      report(store, ladders, args.out)
    else:
      for order in (protocol.GRID_ORDER[:3], protocol.GRID_ORDER):
        sweep_ladder(store, ladders[name], order)


if __name__ == "__main__":
  main()
