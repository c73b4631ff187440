"""How many coupled Newton-Schulz steps each matmul precision carries before rounding takes over.

Run: ``python -m train.bench.newton_schulz_steps [--report]`` (``--report``: from the saved
per-input cosines). The paper's coupled iteration
(``method='newton_schulz'``) grows ``Z`` by 1.5x a step along the Gram matrix's (near-)null
directions (GradNorm leaves one exactly), where rounding then compounds until the result is
noise. On ``whitening_cost``'s real gradients (every kernel kind of layer 0 of tiny and 60m, at
init and trained) and on ``SYNTHETIC`` matrices with singular values spaced evenly in log from 1
to 1e-5, each product's inputs rounded to bf16 or TF32 (emulated) or kept in float32, for each
step count: the worst and mean cosine to the exact polar factor, and how many results
are not finite. A precision's limit is the last step count up to which no input's cosine
fell (by more than ``FALL``); ``swan_optax`` refuses more steps at that precision. Writes
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
FALL = 1e-3  # a converged input's cosine jitters by up to ~3e-5 from step to step


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
  """Precision -> step count -> worst and mean cosine and non-finite count, each precision's
  limit, and every input's cosine."""
  table = {p: {} for p in precision.PRECISIONS}
  for steps, by_precision in result.items():
    for p, by_input in by_precision.items():
      cos = np.array(list(by_input.values()))
      finite = cos[np.isfinite(cos)]
      table[p][steps] = {
        "worst": float(finite.min()) if finite.size == cos.size else None,
        "mean": float(finite.mean()) if finite.size else None,
        "not_finite": int(cos.size - finite.size),
        "inputs": int(cos.size),
      }
  limits = {p: limit({steps: result[steps][p] for steps in result}) for p in precision.PRECISIONS}
  return {"cosine": table, "limit": limits, "by_input": result}


def limit(by_steps: dict[int, dict[str, float]]) -> int:
  """The last step count up to which no input's cosine fell by more than ``FALL`` or stopped
  being finite."""
  last, previous = None, None
  for steps in sorted(by_steps):
    cos = np.array(list(by_steps[steps].values()))
    if not np.isfinite(cos).all() or (previous is not None and np.any(cos < previous - FALL)):
      break
    last, previous = steps, cos
  if last is None:
    raise ValueError("the fewest steps measured are already not finite; measure fewer")
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
  parser.add_argument(
    "--report", action="store_true", help="re-summarize the saved per-input cosines only"
  )
  args = parser.parse_args()
  saved = args.out.with_suffix(".json")
  if args.report:
    by_input = json.loads(saved.read_text())["by_input"]
    result = {int(steps): by_precision for steps, by_precision in by_input.items()}
  else:
    inputs = whitening_cost.gradient_set(args.cache)
    inputs |= {f"synthetic {m}x{n}": synthetic((m, n)) for m, n in SYNTHETIC}
    result = whitening_cost.cosines(inputs, {steps: method(steps) for steps in STEPS})
  summary = summarize(result)
  count = len(next(iter(next(iter(result.values())).values())))
  limits = ", ".join(f"{p} {n}" for p, n in summary["limit"].items())
  text = (
    "`python -m train.bench.newton_schulz_steps` — the coupled Newton-Schulz whitening "
    f"(`method='newton_schulz'`) on {count - len(SYNTHETIC)} real gradients "
    f"(`whitening_cost`'s set) and {len(SYNTHETIC)} synthetic matrices with singular values from "
    "1 to 1e-5, GradNorm-ed, each product's inputs rounded to bf16 or TF32 (emulated, float32 "
    "accumulation) or float32: the worst and mean cosine to the exact polar factor by step "
    "count. Bold: each precision's limit, the last step count up to which no input's cosine "
    f"fell by more than {FALL:g} ({limits}); `swan_optax.whiten` refuses more.\n\n" + table(summary)
  )
  harness.save(text, args.out)
  saved.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
  main()
