"""Benchmark of the stateless operators against optax's Adam update and Muon's Newton-Schulz.

Run: ``python -m train.bench_ops``. For each matrix shape, every operator is
jitted, warmed up and timed in interleaved rounds in this one process (so
machine noise hits all of them alike); the table reports medians as ratios to
the Adam update and to Muon's orthogonalization, with the cosine of every
whitening method to the exact polar factor ``U V^T`` (float64 SVD) of the same
Gaussian gradient. Writes ``train/results/bench_ops.md``.
"""

import argparse
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import _muon

import swan_optax
from swan_optax import MatrixDimensionNumbers

RESULTS = pathlib.Path(__file__).parent / "results"
SHAPES = ((512, 512), (512, 1376), (1024, 4096), (8, 512, 1376))
WHITEN_METHODS = ("newton_schulz", "polar_express", "quintic", "eigh", "svd")


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
  ops["muon newton-schulz (5 steps)"] = lambda g: _muon.orthogonalize_via_newton_schulz(
    g, coeffs, 5, dimension_numbers=muon_dims
  )
  return ops


def _time(fn: Callable[[], jax.Array]) -> float:
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def _cosine_to_polar(updates: np.ndarray, grads: np.ndarray) -> float:
  """Mean over the batch of matrices of cos(update, U V^T)."""
  cosines = []
  as_matrices = lambda x: x.reshape(-1, *grads.shape[-2:])
  for u, g in zip(as_matrices(updates), as_matrices(grads), strict=True):
    left, _, right = np.linalg.svd(g.astype(np.float64), full_matrices=False)
    polar = left @ right
    cosines.append(float((u * polar).sum() / (np.linalg.norm(u) * np.linalg.norm(polar))))
  return float(np.mean(cosines))


def bench_shape(shape: tuple[int, ...], reps: int) -> list[dict]:
  grads = jax.random.normal(jax.random.key(0), shape, jnp.float32)
  ops = {name: jax.jit(fn, donate_argnums=0) for name, fn in _operators(shape).items()}
  adam = optax.adam(1e-3)
  adam_update = jax.jit(lambda g, s: adam.update(g, s), donate_argnums=(0, 1))
  adam_state = adam.init(grads)

  accuracy = {}
  for name, op in ops.items():
    out = op(grads.copy())  # compiles and warms up
    if "whiten" in name or "muon" in name:
      accuracy[name] = _cosine_to_polar(np.asarray(out, np.float64), np.asarray(grads))
  _, adam_state = adam_update(grads.copy(), adam_state)

  times = {name: [] for name in ["adam update", *ops]}
  for _ in range(reps):
    fresh = grads.copy()
    jax.block_until_ready(fresh)
    times["adam update"].append(_time(lambda g=fresh, s=adam_state: adam_update(g, s)))
    adam_state = adam.init(grads)
    for name, op in ops.items():
      fresh = grads.copy()
      jax.block_until_ready(fresh)
      times[name].append(_time(lambda op=op, fresh=fresh: op(fresh)))

  medians = {name: statistics.median(t) for name, t in times.items()}
  muon = medians["muon newton-schulz (5 steps)"]
  return [
    {
      "shape": "x".join(map(str, shape)),
      "operator": name,
      "median_ms": 1e3 * median,
      "vs_adam": median / medians["adam update"],
      "vs_muon": median / muon,
      "cosine": accuracy.get(name),
    }
    for name, median in medians.items()
  ]


def to_markdown(rows: list[dict], reps: int) -> str:
  device = f"{jax.device_count()} {jax.devices()[0].platform} device(s), {platform.machine()}"
  header = (
    f"Median of {reps} interleaved jitted runs per operator, float32, one process, {device}, "
    f"{os.cpu_count()} cores, jax {jax.__version__}, optax {optax.__version__}. Ratios are to "
    "the optax.adam update and to optax.contrib.muon's orthogonalization on the same gradient; "
    "cosine is to the exact polar factor U V^T of that (Gaussian) gradient.\n\n"
    "| shape | operator | median ms | x Adam update | x Muon NS | cosine to U V^T |\n"
    "|---|---|---:|---:|---:|---:|\n"
  )
  cosine = lambda r: "" if r["cosine"] is None else f"{r['cosine']:.5f}"
  lines = [
    f"| {r['shape']} | {r['operator']} | {r['median_ms']:.2f} | {r['vs_adam']:.2f} | "
    f"{r['vs_muon']:.2f} | {cosine(r)} |"
    for r in rows
  ]
  return header + "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--reps", type=int, default=7, help="timed rounds per operator")
  parser.add_argument(
    "--out", type=pathlib.Path, default=RESULTS / "bench_ops.md", help="Markdown table to write"
  )
  args = parser.parse_args()
  rows = []
  for shape in SHAPES:
    print(f"benchmarking {shape} ...", flush=True)
    rows += bench_shape(shape, args.reps)
  table = to_markdown(rows, args.reps)
  print(table)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(table)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
