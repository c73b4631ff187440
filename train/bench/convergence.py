"""Convergence benchmark: Adam vs SWAN vs SinkGD on the shipped corpus, same data and token budget.

Run: ``python -m train.bench.convergence``. Every optimizer trains the same
LLaMA config on the same batches (same data seed and order) for the same number
of steps, at each learning rate of a small sweep (seed 0); the best learning
rate by final validation loss is then re-run with a second seed. Reported:
validation perplexity against tokens (one PNG, mean of the seeds with their
range shaded), final perplexity, the sweep, and the papers' headline figure:
the fraction of Adam's tokens each optimizer needs to reach Adam's final
validation loss. Writes ``train/bench/results/convergence.{md,png,json}``.
"""

import argparse
import json
import pathlib

import numpy as np

from train import loop
from train import metrics
from train.bench import harness
from train.config import OptimizerConfig
from train.config import TrainConfig
from train.config import model_data

SWEEP = {
  "adam": (1e-3, 3e-3, 1e-2),
  "swan": (1e-3, 3e-3, 1e-2),
  "sinkgd": (0.02, 0.05, 0.1),  # global lr; the matrix group steps 0.05x this
}


# The nearly stateless mode: SWAN with Adafactor (factored second moments)
# instead of Adam on the embedding, lm_head and norms, at SWAN's best lr.
STATELESS = "swan+adafactor"


def train_run(optimizer: str, lr: float, seed: int, args: argparse.Namespace) -> list[dict]:
  """One training run (reused if it completed before); returns its eval records."""
  out = args.work / f"{optimizer}-lr{lr:g}-seed{seed}"
  summary = out / "summary.json"
  if not (summary.exists() and json.loads(summary.read_text())["completed"]):
    base, _, non_matrix = optimizer.partition("+")
    config = TrainConfig(
      model=args.config,
      data=model_data(args.config, seq_len=256),
      optimizer=OptimizerConfig(name=base, lr=lr, non_matrix=non_matrix or "adam"),
      seed=seed,
      steps=args.steps,
      batch_size=args.batch_size,
      eval_every=args.eval_every,
      eval_batches=args.eval_batches,
      checkpoint_every=args.steps,
      keep_checkpoints=1,
      out=out,
    )
    (out / "metrics.jsonl").unlink(missing_ok=True)
    loop.train(config)
  return [r for r in metrics.read_jsonl(out / "metrics.jsonl") if r["kind"] == "eval"]


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


def plot(curves: dict[str, list[list[dict]]], path: pathlib.Path, title: str) -> None:
  import matplotlib.pyplot as plt  # noqa: PLC0415 - train.metrics has set the Agg backend

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for optimizer, runs in curves.items():
    tokens = np.array([r["tokens"] for r in runs[0]])
    ppl = np.array([[r["val_ppl"] for r in run] for run in runs])
    ax.plot(tokens, ppl.mean(0), "o-", ms=3, label=f"{optimizer} ({len(runs)} seeds)")
    ax.fill_between(tokens, ppl.min(0), ppl.max(0), alpha=0.25)
  ax.set(xlabel="training tokens", ylabel="validation perplexity", yscale="log", title=title)
  ax.grid(alpha=0.3, which="both")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main() -> None:
  parser = harness.parser(__doc__, "")
  parser.add_argument("--config", default="tiny")
  parser.add_argument("--steps", type=int, default=240)
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--eval-every", type=int, default=20)
  parser.add_argument("--eval-batches", type=int, default=8)
  parser.add_argument("--seeds", type=int, default=2, help="seeds of the best learning rate")
  parser.add_argument("--work", type=pathlib.Path, default=pathlib.Path("runs/convergence"))
  args = parser.parse_args()

  sweep = {
    opt: {lr: train_run(opt, lr, 0, args)[-1]["val_loss"] for lr in lrs}
    for opt, lrs in SWEEP.items()
  }
  best = {opt: min(losses, key=losses.get) for opt, losses in sweep.items()}
  best[STATELESS] = best["swan"]
  curves = {
    opt: [train_run(opt, lr, seed, args) for seed in range(args.seeds)] for opt, lr in best.items()
  }
  adam_final = np.mean([run[-1]["val_loss"] for run in curves["adam"]])
  adam_tokens = curves["adam"][0][-1]["tokens"]
  rows = []
  for opt, runs in curves.items():
    reach = [tokens_to_reach(run, adam_final) for run in runs]
    rows.append({
      "optimizer": opt,
      "lr": best[opt],
      "final_val_loss": [run[-1]["val_loss"] for run in runs],
      "final_val_ppl": [run[-1]["val_ppl"] for run in runs],
      "fraction_of_adam_tokens": [None if t is None else t / adam_tokens for t in reach],
    })  # fmt: skip

  args.out.mkdir(parents=True, exist_ok=True)
  title = f"{args.config} LLaMA on Shakespeare, {args.batch_size}x256 tokens/step"
  plot(curves, args.out / "convergence.png", title)
  (args.out / "convergence.json").write_text(
    json.dumps(
      {"sweep": {o: {str(k): v for k, v in s.items()} for o, s in sweep.items()}, "rows": rows},
      indent=2,
    )
  )
  table = to_markdown(rows, sweep, args, adam_tokens)
  (args.out / "convergence.md").write_text(table)
  print(table)


def _spread(values: list[float | None], fmt: str) -> str:
  if any(v is None for v in values):
    return "not reached" if all(v is None for v in values) else "reached by some seeds only"
  return f"{np.mean(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


def to_markdown(rows: list[dict], sweep: dict, args: argparse.Namespace, adam_tokens: int) -> str:
  header = (
    f"`python -m train.bench.convergence` — {args.config} LLaMA, shipped Shakespeare corpus, "
    f"{args.steps} steps x {args.batch_size} x 256 tokens ({adam_tokens:,} tokens), warmup 10% + "
    f"cosine to 10%, same data order for every run; {harness.machine()}. Mean over "
    f"{args.seeds} seeds (range in parentheses) at the best learning rate of the sweep. "
    f"`{STATELESS}` is the nearly stateless mode (`--non-matrix adafactor`: factored second "
    "moments instead of Adam on the embedding, lm_head and norms) at SWAN's best lr.\n\n"
  )
  cells = [
    [r["optimizer"], f"{r['lr']:g}", _spread(r["final_val_loss"], ".4f"),
     _spread(r["final_val_ppl"], ".2f"), _spread(r["fraction_of_adam_tokens"], ".2f")]
    for r in rows
  ]  # fmt: skip
  columns = ["optimizer", "best lr", "final val loss", "final val ppl",
             "fraction of Adam's tokens to reach Adam's final val loss"]  # fmt: skip
  sweep_cells = [
    [opt, *(f"{lr:g}: {v:.4f}" for lr, v in losses.items())] for opt, losses in sweep.items()
  ]
  sweep_columns = ["optimizer", *(f"lr {i + 1}" for i in range(3))]
  return (
    header
    + harness.markdown_table(columns, cells, "lrrrr")
    + "\nLearning-rate sweep (seed 0, final validation loss):\n\n"
    + harness.markdown_table(sweep_columns, sweep_cells, "lrrr")
  )


if __name__ == "__main__":
  main()
