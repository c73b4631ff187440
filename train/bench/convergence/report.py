"""The report: ``convergence.{md,png,json}`` from the run JSONs and the measured step times."""

import json
import pathlib

import numpy as np

from models import configs
from train.bench import harness
from train.bench.convergence import analysis
from train.bench.convergence import plot
from train.bench.convergence import protocol
from train.bench.convergence.store import Store

PAPERS = {"swan": 0.5, "sinkgd": 0.4}  # fraction of Adam's tokens the papers report


def report(store: Store, out: pathlib.Path) -> None:
  """Writes ``convergence.{md,png,json}`` from the run JSONs and ``timing.json``."""
  timing_path = out / "timing.json"
  timing = json.loads(timing_path.read_text()) if timing_path.exists() else {}
  summary = analysis.collect(store, timing)
  summary["timing"] = timing
  out.mkdir(parents=True, exist_ok=True)
  (out / "convergence.json").write_text(json.dumps(summary, indent=1))
  plot.plot(store, summary, out / "convergence.png")
  harness.save(to_markdown(summary, store), out / "convergence.md")


def to_markdown(summary: dict, store: Store) -> str:
  """The report: protocol, main table, sweeps, ablations, sizes, and the papers' ratios."""
  tiny_tokens = store.tiny_steps * protocol.BATCH * protocol.SEQ_LEN
  parts = [
    f"`python -m train.bench.convergence` — shipped Shakespeare corpus, {store.tiny_steps} "
    f"steps x {protocol.BATCH} x {protocol.SEQ_LEN} tokens ({tiny_tokens:,} tokens) on the "
    f"tiny LLaMA ({configs.get_config('tiny').num_params / 1e6:.1f}M params), warmup 10% + "
    f"cosine to 10%, gradient clipping {protocol.MAX_GRAD_NORM:g} and weight decay 0 for every "
    "optimizer (so AdamW = Adam), data seed = init seed = the run's seed; trained on 2 shared "
    "CPU cores. Token fraction: tokens to reach the final validation loss of the best Adam (same "
    "seed), over Adam's tokens; wall-clock fraction: that times the median step-time ratio to "
    "Adam, timed side by side in one process. 'not run yet': the run has no result in "
    "`train/bench/results/convergence/runs/` yet.\n",
    _main_table(summary),
    _timing_line(summary["timing"]),
    _sweep_table(summary),
    _ablation_table(summary),
    _small_table(summary, store),
    _papers(summary),
  ]
  return "\n".join(parts)


def _main_table(summary: dict) -> str:
  adam = summary["adam"]
  if adam is None:
    return "**Best settings (3 seeds):** not run yet (no Adam run has finished).\n"
  cells = [
    [
      r["variant"],
      f"{r['lr']:g}",
      _spread(r["final_loss"], ".3f"),
      _fractions(r["token_fraction"]),
      _spread(r["token_fraction"], ".2f"),
      "not run yet" if r["step_time_ratio"] is None else f"{r['step_time_ratio']:.2f}",
      _wall(r),
      r["status"],
    ]
    for r in summary["main"]
  ]
  columns = [
    "variant",
    "best lr",
    "final val loss, mean (min–max)",
    "token fraction per seed",
    "token fraction, mean (min–max)",
    "step time x Adam",
    "wall-clock fraction, mean (min–max)",
    "status",
  ]
  final = ""
  if not summary["final"]:
    final = (
      " — PROVISIONAL: some grids are still open or seeds are missing, so a 'best lr' below may "
      "still change"
    )
  title = f"**Best settings, 3 seeds each** (Adam reference: `{adam}`){final}\n\n"
  return title + harness.markdown_table(columns, cells, "lrrrrrrl")


def _timing_line(timing: dict) -> str:
  """The measured step times behind the wall-clock fractions."""
  if not timing:
    return "Step times: not measured yet (`--only timing`).\n"
  sizes = "; ".join(
    f"{size}: " + ", ".join(f"{name} {1e3 * timing[size][name]:.0f} ms" for name in timing[size])
    for size in ("tiny", "small")
  )
  return (
    f"Median step times, {timing['reps']} interleaved rounds in one process "
    f"({timing['machine']}; other runs may have shared the cores): {sizes}.\n"
  )


def _wall(row: dict) -> str:
  if row["step_time_ratio"] is None and None not in row["final_loss"]:
    return "timing not run yet"
  return _spread(row["wall_fraction"], ".2f")


def _sweep_table(summary: dict) -> str:
  best = summary["best_lr"]
  width = max(len(ls) for ls in summary["sweep"].values())
  bold = lambda variant, lr, text: f"**{text}**" if best.get(variant) == float(lr) else text
  cells = []
  for variant, losses in summary["sweep"].items():
    row = [
      f"{lr}: " + ("not run yet" if loss is None else bold(variant, lr, f"{loss:.3f}"))
      for lr, loss in losses.items()
    ]
    cells.append([variant, *row, *[""] * (width - len(row))])
  columns = ["variant", *(f"lr {i + 1}" for i in range(width))]
  return (
    "**Learning-rate sweeps** (seed 0, final validation loss; the first and last columns are the "
    "grid's edges, the best in bold — a grid whose best sat at an edge was widened by 2x)\n\n"
    + harness.markdown_table(columns, cells, "l" + "r" * width)
  )


def _ablation_table(summary: dict) -> str:
  if not summary["ablations"]:
    return "**Ablations:** not run yet (they need the best settings of every optimizer).\n"
  cells = [
    [
      f"`{r['variant']}`",
      r["question"],
      f"{r['lr']:g}",
      _spread(r["final_loss"], ".3f"),
      _spread(r["base_losses"], ".3f"),
      _fractions(r["token_fraction"]),
      _reading(r),
    ]
    for r in summary["ablations"]
  ]
  columns = [
    "run",
    "what changes",
    "lr",
    "final val loss (2 seeds)",
    "its base, same seeds",
    "token fraction per seed",
    "reading",
  ]
  return "**Ablations** (best settings, seeds 0 and 1)\n\n" + harness.markdown_table(
    columns, cells, "lllrrrl"
  )


def _reading(row: dict) -> str:
  """One sentence: the change in final loss against its base, and whether the seeds agree."""
  losses, base = row["final_loss"], row["base_losses"]
  if None in losses or None in base:
    return "not run yet"
  deltas = [a - b for a, b in zip(losses, base, strict=True)]
  per_seed = ", ".join(f"{d:+.3f}" for d in deltas)
  if all(d > 0 for d in deltas):
    return f"worse than `{row['base']}` on both seeds ({per_seed} nats)"
  if all(d < 0 for d in deltas):
    return f"better than `{row['base']}` on both seeds ({per_seed} nats)"
  return f"no consistent difference from `{row['base']}` (per seed: {per_seed} nats)"


def _small_table(summary: dict, store: Store) -> str:
  if not summary["small"]:
    return "**Second size (small):** not run yet.\n"
  tokens = store.small_steps * protocol.BATCH * protocol.SEQ_LEN
  variants = list(dict.fromkeys(r["variant"] for r in summary["small"]))
  rows = sorted(summary["small"], key=lambda r: (variants.index(r["variant"]), r["lr"]))
  cells = [
    [
      r["variant"],
      f"{r['lr']:g}",
      f"{r['tiny_best_lr']:g}",
      _spread(r["final_loss"], ".3f"),
      _spread(r["token_fraction"], ".2f"),
      _wall(r),
    ]
    for r in rows
  ]
  columns = [
    "variant",
    "lr",
    "best tiny lr",
    "final val loss",
    "token fraction",
    "wall-clock fraction",
  ]
  params = configs.get_config("small").num_params
  optimizers = [v for v in variants if v in summary["best_lr"]]
  ablations = [v for v in variants if v not in summary["best_lr"]]
  return (
    f"**Second size:** small LLaMA ({params / 1e6:.1f}M params, vocab 4096), seed 0, "
    f"{store.small_steps} steps ({tokens:,} tokens), each optimizer at its best tiny lr and "
    "its 2x neighbours (widened 2x while the best sat at an edge), and two ablations of the "
    "tiny model (Adam with the embeddings at SinkGD's lr, SWAN by Polar Express at its best "
    "small lr); the token fraction is against the best of the Adam runs.\n\n"
    + harness.markdown_table(columns, cells, "lrrrrr")
    + "".join(_size_reading(summary, variant) for variant in optimizers)
    + "".join(_small_ablation_reading(summary, ablation) for ablation in ablations)
    + "\n"
  )


def _size_reading(summary: dict, variant: str) -> str:
  """One line: does ``variant``'s best tiny lr transfer, and does its token fraction near 1?"""
  rows = sorted((r for r in summary["small"] if r["variant"] == variant), key=lambda r: r["lr"])
  if any(None in r["final_loss"] for r in rows):
    return f"\n* {variant}: not run yet."
  best = min(rows, key=lambda r: r["final_loss"][0])
  tiny_lr = best["tiny_best_lr"]
  if best["lr"] == tiny_lr:
    transfer = f"the best tiny lr {tiny_lr:g} is also the best of {len(rows)} on small"
  else:
    edge = " (an edge of the lrs tried)" if best in (rows[0], rows[-1]) else ""
    transfer = f"{best['lr']:g}{edge} beats the best tiny lr {tiny_lr:g} on small"
  tiny = next((r["token_fraction_mean"] for r in summary["main"] if r["variant"] == variant), None)
  small = best["token_fraction"][0]
  if variant == summary["adam"]:
    return f"\n* {variant}: {transfer}."
  if tiny is None or not isinstance(small, float):
    return f"\n* {variant}: {transfer}; token fraction tiny {tiny}, small {small}."
  change = abs(1 - small) - abs(1 - tiny)
  direction = "unchanged" if abs(change) < 0.005 else "toward 1" if change < 0 else "away from 1"
  return (
    f"\n* {variant}: {transfer}; token fraction at the best lr {tiny:.2f} (tiny) -> "
    f"{small:.2f} (small), {direction}."
  )


def _small_ablation_reading(summary: dict, ablation: str) -> str:
  """One line: does the ablation keep its tiny effect (against its base at the same lr)?"""
  row = next(r for r in summary["small"] if r["variant"] == ablation)
  base = next(r for r in summary["small"] if r["variant"] == row["base"] and r["lr"] == row["lr"])
  tiny = next((r for r in summary["ablations"] if r["variant"] == ablation), None)
  loss, base_loss = row["final_loss"][0], base["final_loss"][0]
  if loss is None or base_loss is None:
    return f"\n* {ablation}: not run yet."
  on_tiny = f" (on tiny: {_fractions(tiny['token_fraction'])})" if tiny else ""
  return (
    f"\n* {ablation}: {loss:.3f}, {loss - base_loss:+.3f} nats against `{row['base']}` at the "
    f"same lr; token fraction {_fractions(row['token_fraction'])}{on_tiny}."
  )


def _papers(summary: dict) -> str:
  """The plain sentence on the papers' token fractions (SWAN 0.5, SinkGD 0.4)."""
  rows = {r["variant"]: r for r in summary["main"]}
  said = []
  for variant, paper in PAPERS.items():
    values = rows[variant]["token_fraction"] if variant in rows else []
    done = [f for f in values if isinstance(f, float)]
    if analysis.NOT_REACHED in values:
      said.append(f"{variant} does not reach Adam's loss on every seed (paper: {paper:g})")
    elif not done:
      said.append(f"{variant}: not measured yet (paper: {paper:g})")
    else:
      side = (
        "consistent with (inside the seeds' range)"
        if min(done) <= paper <= max(done)
        else "a larger saving than"
        if np.mean(done) < paper
        else "a smaller saving than"
      )
      mean = np.mean(done)
      said.append(f"{variant} needs {mean:.2f} of Adam's tokens, {side} the paper's {paper:g}")
      if len(done) < len(values) or not summary["final"]:
        said[-1] += f" (PROVISIONAL: {len(done)} of {len(values)} seeds, grids not all closed)"
  return (
    "**Against the papers** (against an Adam with one lr for every parameter; the ablations "
    "qualify this): " + "; ".join(said) + ".\n"
  )


def _spread(values: list[float | str | None], fmt: str) -> str:
  """``mean (min–max)`` of the numbers, saying how many seeds are missing or never reached."""
  done = [v for v in values if isinstance(v, float)]
  missed = values.count(analysis.NOT_REACHED)
  text = f"{np.mean(done):{fmt}} ({min(done):{fmt}}–{max(done):{fmt}})" if done else ""
  if len(done) == 1:
    text = f"{done[0]:{fmt}}"
  if missed:
    text += f"{', ' if text else ''}{analysis.NOT_REACHED} by {missed} of {len(values)} seeds"
  if len(done) + missed < len(values):
    text += f"{', ' if text else ''}{values.count(None)} of {len(values)} seeds not run yet"
  return text


def _fractions(values: list[float | str | None]) -> str:
  return ", ".join("—" if v is None else v if isinstance(v, str) else f"{v:.2f}" for v in values)
