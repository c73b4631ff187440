"""The report's figure: token fraction against budget, final loss against lr."""

import pathlib

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator

from train.bench.budgets import protocol


def plot(all_summaries: dict[str, dict[float, dict]], path: pathlib.Path) -> None:
  """Top: token fraction of tuned Adam's (solid) and of plain Adam's (dashed) against budget,
  one line per optimizer, one panel per width, the legend in the row's last panel; open
  triangles are bounds beyond the budgets measured. Below, a row per width: final loss against lr
  per budget, one panel per optimizer."""
  sizes = list(all_summaries)
  columns = max(len(sizes) + 1, len(protocol.VARIANTS))
  fig = Figure(figsize=(4 * columns, 3.5 * (1 + len(sizes))))
  axes = fig.subplots(1 + len(sizes), columns, squeeze=False)
  for ax in axes[0][len(sizes) : -1]:
    ax.set_visible(False)
  references = (("adam+embed", "-", "of tuned Adam's"), ("adam", "--", "of Adam's"))
  legend = [
    Line2D([], [], color=f"C{i}", marker="o", label=label)
    for i, label in enumerate(protocol.LABELS.values())
  ]
  legend += [Line2D([], [], color="gray", ls=style, label=of) for _, style, of in references]
  legend.append(Line2D([], [], color="gray", ls="", marker="v", fillstyle="none", label="a bound"))
  for ax, size in zip(axes[0], sizes, strict=False):
    for ref, style, _ in references:
      for i, name in enumerate(protocol.LABELS):
        fractions = [
          (b, s["rows"][name][f"tokens_vs_{ref}"])
          for b, s in all_summaries[size].items()
          if name != ref and name in s["rows"] and s["rows"][name].get(f"tokens_vs_{ref}")
        ]
        exact = [(b, f) for b, (kind, f) in fractions if not kind]
        if exact:
          ax.plot(*zip(*exact, strict=True), "o" + style, color=f"C{i}")
        for b, (kind, f) in fractions:
          if kind:
            ax.plot(b, f, "v" if kind == "<" else "^", color=f"C{i}", fillstyle="none")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set(xscale="log", xlabel="budget (x Chinchilla)", ylabel="token fraction", title=size)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(list(all_summaries[size]), [f"{b:g}x" for b in all_summaries[size]])
    ax.grid(alpha=0.3)
  axes[0][-1].legend(
    handles=legend, loc="center", fontsize=9, title="token fraction, per optimizer"
  )
  axes[0][-1].set_axis_off()
  for row, size in zip(axes[1:], sizes, strict=True):
    for ax in row[len(protocol.VARIANTS) :]:
      ax.set_visible(False)
    for ax, variant in zip(row, protocol.VARIANTS, strict=False):
      lrs = set()
      for budget, s in all_summaries[size].items():
        done = sorted((lr, x) for lr, x in s["grids"][variant].items() if x is not None)
        if done:
          ax.plot(*zip(*done, strict=True), "o-", label=f"{budget:g}x")
          lrs.update(lr for lr, _ in done)
      ax.set(xscale="log", xlabel="peak lr", ylabel="final val loss", title=f"{size} {variant}")
      ax.xaxis.set_minor_locator(NullLocator())  # ticks at the grid's lrs only
      ax.set_xticks(sorted(lrs), [f"{lr:g}" for lr in sorted(lrs)])
      ax.grid(alpha=0.3)
      if lrs:
        ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
