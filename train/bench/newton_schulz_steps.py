"""How many coupled Newton-Schulz steps each matmul precision carries before rounding takes over.

Run: ``python -m train.bench.newton_schulz_steps``. The paper's coupled iteration
(``method='newton_schulz'``) grows ``Z`` by 1.5x a step along the Gram matrix's (near-)null
directions (GradNorm leaves one exactly), where rounding then compounds until the result is
noise. On ``whitening_cost``'s real gradients (every kernel kind of layer 0 of tiny and 60m, at
init and trained) and on ``SYNTHETIC`` matrices with singular values spaced evenly in log from 1
to 1e-5, each product's inputs rounded to bf16 or TF32 (emulated) or kept in float32, for each
step count: the worst and mean cosine to the exact polar factor, and how many results
are not finite. A precision's limit is the last step count up to which the worst cosine never
fell; ``swan_optax`` refuses more steps at that precision. Writes
``train/bench/results/newton_schulz_steps.md`` and ``.json``.
"""

import json
import pathlib

import numpy as np

from swan_optax import primitives
from train.bench import harness
from train.bench import precision
from train.bench import whitening_cost

STEPS = (8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 20, 22, 24)
SYNTHETIC = ((128, 128), (64, 256), (512, 1376))


def synthetic(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
  """A ``shape`` matrix with random singular vectors and singular values ``logspace(0, -5)``."""
  rng = np.random.default_rng(seed)
  k = min(shape)
  u, _ = np.linalg.qr(rng.normal(size=(shape[0], k)))
  v, _ = np.linalg.qr(rng.normal(size=(shape[1], k)))
  return ((u * np.logspace(0, -5, k)) @ v.T).astype(np.float32)


def method(steps: int) -> whitening_cost.Method:
  return lambda x, matmul: primitives.polar_factor(x, "newton_schulz", steps, 0.5, 1e-8, matmul)


def summarize(result: dict) -> dict:
  """Precision -> step count -> worst and mean cosine and non-finite count, and each limit."""
  table = {p: {} for p in precision.PRECISIONS}
  for steps, by_precision in result.items():
    for p, by_input in by_precision.items():
      cos = np.array(list(by_input.values()))
      finite = cos[np.isfinite(cos)]
      table[p][steps] = {
        "worst": float(finite.min()) if finite.size and finite.size == cos.size else None,
        "mean": float(finite.mean()) if finite.size else None,
        "not_finite": int(cos.size - finite.size),
        "inputs": int(cos.size),
      }
  return {"cosine": table, "limit": {p: limit(rows) for p, rows in table.items()}}


def limit(rows: dict[int, dict]) -> int:
  """The last step count up to which the worst cosine never fell (all results finite)."""
  last, best = None, -np.inf
  for steps in sorted(rows):
    worst = rows[steps]["worst"]
    if worst is None or worst < best:
      break
    last, best = steps, worst
  if last is None:
    raise ValueError("the fewest steps measured already fell; measure fewer")
  return last


def table(summary: dict) -> str:
  header = ["steps"] + [f"{p} worst / mean" for p in precision.PRECISIONS]
  lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * len(precision.PRECISIONS) + "|"]
  for steps in sorted(next(iter(summary["cosine"].values()))):
    cells = [str(steps)]
    for p in precision.PRECISIONS:
      row = summary["cosine"][p][steps]
      cell = "-" if row["worst"] is None else f"{row['worst']:.3f}"
      cell += " / " + ("-" if row["mean"] is None else f"{row['mean']:.3f}")
      if row["not_finite"]:
        cell += f" ({row['not_finite']}/{row['inputs']} not finite)"
      cells.append(f"**{cell}**" if steps == summary["limit"][p] else cell)
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main() -> None:
  parser = harness.parser(__doc__, "newton_schulz_steps.md")
  parser.add_argument("--cache", type=pathlib.Path, default=whitening_cost.CACHE)
  args = parser.parse_args()
  inputs = whitening_cost.gradient_set(args.cache)
  inputs |= {f"synthetic {m}x{n}": synthetic((m, n)) for m, n in SYNTHETIC}
  result = whitening_cost.cosines(inputs, {steps: method(steps) for steps in STEPS})
  summary = summarize(result)
  limits = ", ".join(f"{p} {n}" for p, n in summary["limit"].items())
  text = (
    "`python -m train.bench.newton_schulz_steps` — the coupled Newton-Schulz whitening "
    f"(`method='newton_schulz'`) on {len(inputs) - len(SYNTHETIC)} real gradients "
    f"(`whitening_cost`'s set) and {len(SYNTHETIC)} synthetic matrices with singular values from "
    "1 to 1e-5, GradNorm-ed, each product's inputs rounded to bf16 or TF32 (emulated, float32 "
    "accumulation) or float32: the worst and mean cosine to the exact polar factor by step "
    "count. Bold: each precision's limit, the last step count up to which the worst cosine "
    f"never fell ({limits}); `swan_optax.whiten` refuses more.\n\n" + table(summary)
  )
  harness.save(text, args.out)
  args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
  main()
