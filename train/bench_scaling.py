"""Optimizer share of the step vs token batch, measured small and extrapolated to 131K tokens.

Run: ``python -m train.bench_scaling``. On one device, for each config: the
jitted update (``tx.update`` + ``apply_updates``) of Adam, SWAN and SinkGD,
whose cost does not depend on the batch, and the forward + backward pass at a
few small token batches, all timed in interleaved rounds (medians). The
forward/backward time is fitted as ``a + b * tokens`` and the optimizer share
``update / (update + a + b * tokens)`` extrapolated to the papers' 131,072-token
batch; also the batch at which the share falls under 5%. Writes
``train/results/bench_scaling.md``.
"""

import argparse
import os
import pathlib
import platform
import statistics

import jax
import numpy as np
import optax

from models import configs
from models import llama
from train import mesh as mesh_lib
from train import step as step_lib
from train.bench_ops import RESULTS
from train.bench_ops import _time

OPTIMIZERS = ("adam", "swan", "sinkgd")
PAPER_TOKENS = 131_072  # 512 sequences x 256 tokens (SPEC 7.2)


def bench(name: str, batches: list[int], seq_len: int, reps: int) -> list[dict]:
  config = configs.get_config(name, max_seq_len=seq_len)
  mesh = mesh_lib.make_mesh(None, jax.devices()[:1])
  graphdef, params = llama.init_params(config, mesh, seed=0)
  loss = lambda p, t: step_lib.next_token_loss(llama.apply(graphdef, p, t), t)
  grad_fn = jax.jit(jax.grad(loss))
  rng = np.random.default_rng(0)
  token_batches = {b: rng.integers(0, config.vocab_size, (b, seq_len), np.int32) for b in batches}
  grads = grad_fn(params, token_batches[batches[0]])
  updates = {}
  for opt in OPTIMIZERS:
    tx = step_lib.make_optimizer(step_lib.OptimizerConfig(name=opt, steps=1000))

    def update(g, s, p, tx=tx):
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s

    updates[opt] = (jax.jit(update), tx.init(params))
    jax.block_until_ready(updates[opt][0](grads, updates[opt][1], params))
  for tokens in token_batches.values():
    jax.block_until_ready(grad_fn(params, tokens))
  times = {key: [] for key in [*OPTIMIZERS, *batches]}
  for _ in range(reps):
    for opt, (fn, state) in updates.items():
      times[opt].append(_time(lambda fn=fn, state=state: fn(grads, state, params)))
    for b, tokens in token_batches.items():
      times[b].append(_time(lambda tokens=tokens: grad_fn(params, tokens)))
  fb = {b * seq_len: statistics.median(times[b]) for b in batches}
  slope, intercept = np.polyfit(list(fb), list(fb.values()), 1)
  rows = []
  for opt in OPTIMIZERS:
    upd = statistics.median(times[opt])
    share = lambda tokens, upd=upd: upd / (upd + intercept + slope * tokens)
    under_5 = max(0.0, (19 * upd - intercept) / slope) if slope > 0 else float("nan")
    rows.append({
      "config": name,
      "optimizer": opt,
      "update_vs_adam_update": upd / statistics.median(times["adam"]),
      "update_vs_fb_at": {t: upd / s for t, s in fb.items()},
      "share_at_paper_batch": share(PAPER_TOKENS),
      "tokens_for_5pct": under_5,
    })  # fmt: skip
  return rows


def to_markdown(rows: list[dict], reps: int, seq_len: int) -> str:
  lines = [
    f"`python -m train.bench_scaling` — one {jax.devices()[0].platform} device, "
    f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}; medians of {reps} "
    f"interleaved rounds, float32, sequence length {seq_len}. 'update / fwd+bwd' is measured; "
    f"the share at {PAPER_TOKENS:,} tokens and the 5% batch come from the linear fit of "
    "forward+backward time in tokens.",
    "",
    "| config | optimizer | update x Adam's update | update / fwd+bwd (measured, by tokens) | "
    f"optimizer share at {PAPER_TOKENS:,} tokens | tokens/step for share < 5% |",
    "|---|---|---:|---|---:|---:|",
  ]
  for r in rows:
    measured = ", ".join(f"{t:,}: {v:.2f}" for t, v in r["update_vs_fb_at"].items())
    lines.append(
      f"| {r['config']} | {r['optimizer']} | {r['update_vs_adam_update']:.2f} | {measured} | "
      f"{100 * r['share_at_paper_batch']:.2f}% | {r['tokens_for_5pct']:,.0f} |"
    )
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default="60m,350m")
  parser.add_argument("--batches", default="1,2,4", help="sequences per measured batch")
  parser.add_argument("--seq-len", type=int, default=256)
  parser.add_argument("--reps", type=int, default=3)
  parser.add_argument("--out", type=pathlib.Path, default=RESULTS / "bench_scaling.md")
  args = parser.parse_args()
  batches = [int(b) for b in args.batches.split(",")]
  rows = []
  for name in args.configs.split(","):
    print(f"benchmarking {name} ...", flush=True)
    rows += bench(name, batches, args.seq_len, args.reps)
  table = to_markdown(rows, args.reps, args.seq_len)
  print(table)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(table)


if __name__ == "__main__":
  main()
