"""Every figure of the report from the run JSONs: token fractions against Adam, per seed and
per setting."""

import numpy as np

from train.bench.convergence import protocol
from train.bench.convergence import search
from train.bench.convergence.store import Store


def tokens_to_reach(evals: list[dict], target_loss: float) -> float | None:
  """Tokens at which the validation loss first reaches ``target_loss`` (linear interpolation)."""
  previous = (0, float("inf"))
  for r in evals:
    if r["val_loss"] <= target_loss:
      t0, l0 = previous
      if not np.isfinite(l0):
        return float(r["tokens"])
      return t0 + (r["tokens"] - t0) * (l0 - target_loss) / (l0 - r["val_loss"])
    previous = (r["tokens"], r["val_loss"])
  return None


NOT_REACHED = "not reached"


def token_fraction(record: dict | None, adam: dict | None) -> float | str | None:
  """Fraction of Adam's tokens ``record`` needs to reach Adam's final loss (same seed).

  ``None`` while either run is missing; ``NOT_REACHED`` if ``record`` never gets there.
  """
  if record is None or adam is None:
    return None
  reached = tokens_to_reach(record["evals"], adam["evals"][-1]["val_loss"])
  return NOT_REACHED if reached is None else reached / adam["evals"][-1]["tokens"]


def collect(store: Store, timing: dict) -> dict:
  """Every figure of the report, from the run JSONs (``None`` where a run is missing).

  While a grid is open or seeds are missing, the main rows are at the best lr so
  far and marked provisional; ablations and the small size need them all.
  """
  losses = search.sweep(store)
  final, best = search.best_lrs(losses), search.best_so_far(losses)
  adam = search.adam_reference(store, best)
  done = search.seeds_finished(store, final)
  out = {
    "sweep": {v: {f"{lr:g}": loss for lr, loss in ls.items()} for v, ls in losses.items()},
    "best_lr": best,
    "final": done,
    "adam": adam,
    "main": [],
    "ablations": [],
    "small": [],
  }
  if adam is None:
    return out
  seeds = protocol.seed_runs(best)
  adam_seeds = [store.get(r) for r in seeds[adam]]
  for variant, runs in seeds.items():
    records = [store.get(r) for r in runs]
    row = _row(variant, best[variant], records, adam_seeds, timing.get("tiny"))
    grid = "grid brackets it" if variant in final else "grid still open"
    out["main"].append({**row, "status": f"{grid}, {sum(map(bool, records))} of 3 seeds"})
  if done:
    for name, (base, question, runs) in protocol.ablation_runs(best, adam).items():
      row = _row(name, runs[0].optimizer.lr, [store.get(r) for r in runs], adam_seeds, None)
      base_row = next(r for r in out["main"] if r["variant"] == base)
      out["ablations"].append(
        {**row, "question": question, "base": base, "base_losses": base_row["final_loss"][:2]}
      )
    out["small"] = _small(store, best, adam, timing.get("small"))
  return out


def _row(variant, lr, records, adam_seeds, step_times) -> dict:
  """One optimizer setting: final losses and token fractions per seed, wall-clock fraction."""
  fractions = [
    token_fraction(r, a) for r, a in zip(records, adam_seeds[: len(records)], strict=True)
  ]
  name = next((r["optimizer"]["name"] for r in records if r), None)
  timed = step_times and name in step_times  # not timed yet: no wall-clock fraction
  ratio = step_times[name] / step_times["adam"] if timed else None
  done = [f for f in fractions if isinstance(f, float)]
  return {
    "variant": variant,
    "lr": lr,
    "final_loss": [None if r is None else r["evals"][-1]["val_loss"] for r in records],
    "token_fraction": fractions,
    "step_time_ratio": ratio,
    "wall_fraction": [wall_fraction(f, ratio) for f in fractions],
    "token_fraction_mean": float(np.mean(done)) if done and len(done) == len(records) else None,
  }


def wall_fraction(fraction: float | str | None, ratio: float | None) -> float | str | None:
  """The wall-clock fraction of a token fraction; ``None`` without a step-time ratio."""
  if ratio is None or fraction is None:
    return None
  return fraction * ratio if isinstance(fraction, float) else fraction


def _small(store: Store, best: dict[str, float], adam: str, step_times) -> list[dict]:
  """The small model's runs, token fractions against its best Adam run; the ablation last."""
  lrs = search.small_sweep(store, best, adam)
  ablations = search.small_ablations(best, adam, lrs)
  runs = [protocol.grid_run("small", v, lr, 0) for v, ls in lrs.items() for lr in ls]
  runs += ablations.values()
  base = {run.variant: variant for variant, run in ablations.items()}
  records = {r.tag: store.get(r) for r in runs}
  adam_runs = [r for r in runs if r.variant == adam and records[r.tag] is not None]
  final_loss = lambda record: record["evals"][-1]["val_loss"]
  ref = min((records[r.tag] for r in adam_runs), key=final_loss, default=None)
  rows = []
  for run in runs:
    row = _row(run.variant, run.optimizer.lr, [records[run.tag]], [ref], step_times)
    tiny_best_lr = best[base.get(run.variant, run.variant)]
    rows.append({**row, "tiny_best_lr": tiny_best_lr, "base": base.get(run.variant)})
  return rows
