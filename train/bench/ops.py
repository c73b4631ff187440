"""Benchmark of the stateless operators against optax's Adam update and Muon's Newton-Schulz.

Run: ``python -m train.bench.ops``. For each matrix shape, every operator is
jitted, warmed up and timed in interleaved rounds in this one process (so
machine noise hits all of them alike); the table reports medians as ratios to
the Adam update and to Muon's orthogonalization, with the cosine of every
whitening method to the exact polar factor ``U V^T`` (float64 SVD) of the same
Gaussian gradient. Writes ``train/bench/results/ops.md``.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from optax.contrib import _muon

import swan_optax
from swan_optax import MatrixDimensionNumbers
from train.bench import harness

SHAPES = ((512, 512), (512, 1376), (1024, 4096), (8, 512, 1376))
WHITEN_METHODS = ("newton_schulz", "polar_express", "quintic", "eigh", "svd")
MUON = "muon newton-schulz (5 steps)"
COLUMNS: tuple[harness.Column, ...] = (
  ("shape", "shape", "", "l"),
  ("operator", "operator", "", "l"),
  ("median_ms", "median ms", ".2f", "r"),
  ("vs_adam", "x Adam update", ".2f", "r"),
  ("vs_muon", "x Muon NS", ".2f", "r"),
  ("cosine", "cosine to U V^T", ".5f", "r"),
)


def _dims(shape: tuple[int, ...]) -> MatrixDimensionNumbers:
  return MatrixDimensionNumbers(len(shape) - 2, len(shape) - 1)


def _operators(shape) -> dict[str, Callable]:
  """Name -> (grads -> updates) for every operator timed on ``shape``."""
  dims = _dims(shape)
  stateless = {
    "gradnorm": swan_optax.gradnorm(dimension_numbers=dims),
    "sinkhorn (L=5)": swan_optax.sinkhorn(dimension_numbers=dims),
    **{f"whiten {m}": swan_optax.whiten(method=m, dimension_numbers=dims) for m in WHITEN_METHODS},
  }
  ops = {
    name: (lambda g, tx=tx: tx.update(g, optax.EmptyState())[0]) for name, tx in stateless.items()
  }
  muon_dims = _muon.MuonDimensionNumbers(dims.reduction_axes, dims.output_axes)
  coeffs = jnp.asarray(_muon._DEFAULT_NS_COEFFS)
  ops[MUON] = lambda g: _muon.orthogonalize_via_newton_schulz(
    g, coeffs, 5, dimension_numbers=muon_dims
  )
  return ops


def _on_fresh_copy(fn: Callable, *args) -> harness.Setup:
  """Times ``fn(*copies of args)``: each call donates fresh copies, made untimed."""

  def setup():
    fresh = jax.block_until_ready(jax.tree.map(jnp.copy, args))
    return lambda: fn(*fresh)

  return setup


def bench_shape(shape: tuple[int, ...], reps: int) -> list[dict]:
  grads = jax.random.normal(jax.random.key(0), shape, jnp.float32)
  ops = {name: jax.jit(fn, donate_argnums=0) for name, fn in _operators(shape).items()}
  adam = optax.adam(1e-3)
  adam_update = jax.jit(adam.update, donate_argnums=(0, 1))
  accuracy = {}
  for name, op in ops.items():
    out = op(grads.copy())  # compiles and warms up
    if "whiten" in name or "muon" in name:
      accuracy[name] = harness.cosine_to_polar(out, grads)
  adam_update(grads.copy(), adam.init(grads))
  setups = {"adam update": _on_fresh_copy(adam_update, grads, adam.init(grads))}
  setups |= {name: _on_fresh_copy(op, grads) for name, op in ops.items()}
  medians = harness.interleaved_medians(setups, reps)
  return [
    {
      "shape": "x".join(map(str, shape)),
      "operator": name,
      "median_ms": 1e3 * median,
      "vs_adam": median / medians["adam update"],
      "vs_muon": median / medians[MUON],
      "cosine": accuracy.get(name),
    }
    for name, median in medians.items()
  ]


def to_markdown(rows: list[dict], reps: int) -> str:
  header = (
    f"Median of {reps} interleaved jitted runs per operator, float32, one process, "
    f"{harness.machine()}, optax {optax.__version__}. Ratios are to the optax.adam update and to "
    "optax.contrib.muon's orthogonalization on the same gradient; cosine is to the exact polar "
    "factor U V^T of that (Gaussian) gradient.\n\n"
  )
  return header + harness.table(COLUMNS, rows)


def main() -> None:
  parser = harness.parser(__doc__, "ops.md")
  parser.add_argument("--reps", type=int, default=7, help="timed rounds per operator")
  args = parser.parse_args()
  rows = []
  for shape in SHAPES:
    print(f"benchmarking {shape} ...", flush=True)
    rows += bench_shape(shape, args.reps)
  harness.save(to_markdown(rows, args.reps), args.out)


if __name__ == "__main__":
  main()
