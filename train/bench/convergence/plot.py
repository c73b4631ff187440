"""The report's plot: validation loss against tokens at each optimizer's best lr."""

import pathlib

import numpy as np
from matplotlib.figure import Figure

from models import configs
from train.bench.convergence import protocol
from train.bench.convergence.store import Store


def plot(store: Store, summary: dict, path: pathlib.Path) -> None:
  """Validation loss against tokens at the best settings: tiny (mean, min–max band), small."""
  fig = Figure(figsize=(12, 4.5))  # drawn off screen: no pyplot, no backend to choose
  axes = fig.subplots(1, 2)
  best = summary["best_lr"]
  for variant, runs in protocol.seed_runs(best).items():
    records = [r for r in map(store.get, runs) if r is not None]
    if records:
      _band(axes[0], records, f"{variant} lr {best[variant]:g} ({len(records)} seeds)", variant)
  small = [r for r in summary["small"] if r["variant"] in best and r["final_loss"][0] is not None]
  for variant in dict.fromkeys(r["variant"] for r in small):
    lr = min((r for r in small if r["variant"] == variant), key=lambda r: r["final_loss"][0])["lr"]
    record = store.get(protocol.grid_run("small", variant, lr, 0))
    _band(axes[1], [record], f"{variant} lr {lr:g} (1 seed)", variant)
  for ax, size in zip(axes, ("tiny", "small"), strict=True):
    params = configs.get_config(size).num_params
    title = f"{size} LLaMA ({params / 1e6:.1f}M params), each at its best lr"
    ax.set(xlabel="training tokens", ylabel="validation loss", title=title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
      low, high = ax.get_ylim()
      ax.set_ylim(low, min(high, 6.5))  # the first evaluations would squash the rest
    else:
      ax.text(0.5, 0.5, "not run yet", ha="center", transform=ax.transAxes)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def _band(ax, records: list[dict], label: str, variant: str) -> None:
  """Mean and min–max of the records' curves, in the variant's colour on both panels."""
  color = f"C{list(protocol.GRID).index(variant)}"
  tokens = np.array([e["tokens"] for e in records[0]["evals"]])
  loss = np.array([[e["val_loss"] for e in r["evals"]] for r in records])
  ax.plot(tokens, loss.mean(0), "o-", ms=2, label=label, color=color)
  ax.fill_between(tokens, loss.min(0), loss.max(0), alpha=0.25, color=color)
