"""Optimizer share of the step vs token batch, measured small and extrapolated to 131K tokens.

Run: ``python -m train.bench.scaling``. On one device, for each config: the
jitted update (``tx.update`` + ``apply_updates``) of Adam, SWAN, SinkGD and Muon,
whose cost does not depend on the batch, and the forward + backward pass at a
few small token batches, all timed in interleaved rounds (medians). The
forward/backward time is fitted as ``a + b * tokens`` and the optimizer share
``update / (update + a + b * tokens)`` extrapolated to the papers' 131,072-token
batch; also the batch at which the share falls under 5%. Writes
``train/bench/results/scaling.md``.
"""

import functools

import jax
import numpy as np

from train import optimizer
from train import step as step_lib
from train.bench import harness
from train.config import TrainConfig
from train.data import DataConfig
from train.optimizers import optimizer_config

# The GaLore/SWAN/SinkGD LLaMA pretraining batch: 512 sequences x 256 tokens.
PAPER_TOKENS = 131_072


def bench(name: str, batches: list[int], seq_len: int, reps: int) -> list[dict]:
  config = TrainConfig(model=name, steps=1000, data=DataConfig(seq_len=seq_len))
  exp = harness.experiment(config)
  params = exp.state.params
  loss_fn = step_lib.make_loss_fn(exp.apply)
  grad_fn = jax.jit(lambda p, tokens: jax.grad(loss_fn)(p, {"inputs": tokens, "targets": tokens}))
  rng = np.random.default_rng(0)
  token_batches = {
    b: rng.integers(0, exp.model_config.vocab_size, (b, seq_len), np.int32) for b in batches
  }
  grads = grad_fn(params, token_batches[batches[0]])
  dims = optimizer.dimension_numbers(exp.model_config)
  setups = {}
  for opt in harness.OPTIMIZERS:
    tx = optimizer.make_optimizer(optimizer_config(opt), config.steps, dimension_numbers=dims)
    update = jax.jit(functools.partial(step_lib.apply_optimizer, tx))
    opt_state = tx.init(params)
    jax.block_until_ready(update(grads, opt_state, params))
    setups[opt] = lambda update=update, s=opt_state: lambda: update(grads, s, params)
  for b, tokens in token_batches.items():
    jax.block_until_ready(grad_fn(params, tokens))
    setups[b] = lambda tokens=tokens: lambda: grad_fn(params, tokens)
  medians = harness.interleaved_medians(setups, reps)
  fb = {b * seq_len: medians[b] for b in batches}
  slope, intercept = np.polyfit(list(fb), list(fb.values()), 1)
  rows = []
  for opt in harness.OPTIMIZERS:
    upd = medians[opt]
    share = lambda tokens, upd=upd: upd / (upd + intercept + slope * tokens)
    under_5 = max(0.0, (19 * upd - intercept) / slope) if slope > 0 else float("nan")
    rows.append(
      {
        "config": name,
        "optimizer": opt,
        "update_vs_adam_update": upd / medians["adam"],
        "update_vs_fb_at": {t: upd / s for t, s in fb.items()},
        "share_at_paper_batch": share(PAPER_TOKENS),
        "tokens_for_5pct": under_5,
      }
    )
  return rows


def to_markdown(rows: list[dict], reps: int, seq_len: int) -> str:
  header = (
    f"`python -m train.bench.scaling` — {harness.machine(devices=1)}; medians of {reps} "
    f"interleaved rounds, float32, sequence length {seq_len}. 'update / fwd+bwd' is measured; "
    f"the share at {PAPER_TOKENS:,} tokens and the 5% batch come from the linear fit of "
    "forward+backward time in tokens.\n\n"
  )
  cells = [
    [
      r["config"],
      r["optimizer"],
      f"{r['update_vs_adam_update']:.2f}",
      ", ".join(f"{t:,}: {v:.2f}" for t, v in r["update_vs_fb_at"].items()),
      f"{100 * r['share_at_paper_batch']:.2f}%",
      f"{r['tokens_for_5pct']:,.0f}",
    ]
    for r in rows
  ]
  columns = [
    "config",
    "optimizer",
    "update x Adam's update",
    "update / fwd+bwd (measured, by tokens)",
    f"optimizer share at {PAPER_TOKENS:,} tokens",
    "tokens/step for share < 5%",
  ]
  return header + harness.markdown_table(columns, cells, "llrlrr")


def main() -> None:
  parser = harness.parser(__doc__, "scaling.md")
  parser.add_argument("--configs", default="60m,350m")
  parser.add_argument("--batches", default="1,2,4", help="sequences per measured batch")
  parser.add_argument("--seq-len", type=int, default=256)
  parser.add_argument("--reps", type=int, default=3)
  args = parser.parse_args()
  batches = [int(b) for b in args.batches.split(",")]
  rows = []
  for name in args.configs.split(","):
    print(f"benchmarking {name} ...", flush=True)
    rows += bench(name, batches, args.seq_len, args.reps)
  harness.save(to_markdown(rows, args.reps, args.seq_len), args.out)


if __name__ == "__main__":
  main()
