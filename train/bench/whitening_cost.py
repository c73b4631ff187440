r"""Whitening at Muon's cost or less: cosine to the polar factor against exact matmul FLOPs.

Run: ``python -m train.bench.whitening_cost``. Methods: Polar Express with 4 to 8 steps (each
count its own computed schedule), run directly on ``X`` or on the short-side Gram matrix with
one restart (:func:`swan_optax.primitives.gram_odd_polynomial`: Dao AI Lab's restart before step
3, and those before steps 2 and 4; at 5 steps also none), and Muon's quintic (5 steps), the
anchor. Inputs: the GradNorm-ed gradients of every kernel kind of layer 0 of tiny and 60m, at
init and after ``TRAINED`` Adam steps (cached in ``runs/whitening_cost/gradients.npz``). Each
product's inputs are rounded to bf16 or TF32 (emulated, float32 accumulation) or kept in
float32. Reported: cosine to the exact polar factor (float64 SVD), the minimum over each kind's
inputs, and the exact matmul FLOPs (``2 m n k`` per product, loops counted by their trip
counts) as a multiple of optax Muon's update on the same matrix. Writes
``train/bench/results/whitening_cost.md``, ``.json`` and ``.png``.
"""

import functools
import json
import math
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure

from swan_optax import primitives
from train.bench import harness
from train.bench import precision

KINDS = ("q", "k", "v", "o", "gate", "up", "down")
MODELS, TRAINED = ("tiny", "60m"), 100
BATCH, SEQ_LEN = 4, 64  # of the training steps and the gradient: 60m trains on a CPU
DIRECT_STEPS, GRAM_STEPS = (4, 5, 6, 7, 8), (4, 5, 6)
DAO_RESTART = 2  # before the third step (Zhang, Amsel, Chen, Dao 2026)
GRAM_RESTARTS = {4: (1, 2, 3), 5: (None, 1, 2, 3), 6: (1, 2, 3)}  # None: never
CACHE = pathlib.Path("runs/whitening_cost/gradients.npz")
Matmul = Callable[[jax.Array, jax.Array], jax.Array]
Method = Callable[[jax.Array, Matmul], jax.Array]


def methods() -> dict[str, Method]:
  """Name -> the polar factor of one matrix with every product through a given matmul."""
  odd = lambda name, steps: lambda x, mm: primitives.polar_factor(x, name, steps, 0.5, 1e-8, mm)
  out = {"Muon quintic 5": odd("quintic", 5)}
  out |= {f"PE {n}": odd("polar_express", n) for n in DIRECT_STEPS}
  for n in GRAM_STEPS:
    for restart in GRAM_RESTARTS[n]:
      coeffs = primitives.polar_express_coefficients(n)
      restarts = () if restart is None else (restart,)
      out[f"Gram PE {n}, {gram_label(restart)}"] = lambda x, mm, c=coeffs, r=restarts: (
        primitives.gram_odd_polynomial(x, c, r, 1e-8, mm)
      )
  return out


def gram_label(restart: int | None) -> str:
  return "no restart" if restart is None else f"restart before step {restart + 1}"


def matmul_flops(fn: Callable, *args) -> int:
  """``2 m n k`` summed over every ``dot_general`` of ``fn``'s jaxpr, a loop's body counted
  once per trip (a ``while`` loop of unknown trip count raises)."""
  return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def _jaxpr_flops(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "while":
      raise ValueError("a while loop's trip count is unknown: use a static-length loop")
    if eqn.primitive.name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in contract)
    trips = eqn.params["length"] if eqn.primitive.name == "scan" else 1
    for value in eqn.params.values():
      subs = value if isinstance(value, tuple) else (value,)
      inner = [s.jaxpr if isinstance(s, jax.extend.core.ClosedJaxpr) else s for s in subs]
      inner = [s for s in inner if isinstance(s, jax.extend.core.Jaxpr)]
      if inner:  # a cond's branches: the costliest one
        total += trips * max(map(_jaxpr_flops, inner))
  return total


def muon_flops(shape: tuple[int, int]) -> int:
  """Matmul FLOPs of optax Muon's update (5 Newton-Schulz steps) of one ``shape`` matrix."""
  tx = optax.contrib.muon(1.0)
  update = lambda g: tx.update(g, tx.init(g), g)[0]
  return matmul_flops(update, jax.ShapeDtypeStruct(shape, jnp.float32))


def flops_ratio(method: Method, shape: tuple[int, int]) -> float:
  """``method``'s matmul FLOPs on a ``shape`` matrix over optax Muon's."""
  exact = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  return matmul_flops(lambda x: method(x, exact), x) / muon_flops(shape)


def gradient_set(cache: pathlib.Path = CACHE, models=MODELS, trained=TRAINED) -> dict:
  """Label -> gradient matrix of every kind, each model, at init and after ``trained`` steps."""
  if cache.exists():
    with np.load(cache) as f:
      return dict(f)
  out = {}
  for name in models:
    for steps in (0, trained):
      grads = precision.gradient_inputs(name, BATCH, SEQ_LEN, train_steps=steps, kernels=KINDS)
      out |= {k: np.asarray(v, np.float32) for k, v in grads.items()}
      print(name, steps, flush=True)
  cache.parent.mkdir(parents=True, exist_ok=True)
  np.savez(cache, **out)
  return out


def cosines(inputs: dict[str, np.ndarray], fns: dict[str, Method]) -> dict[str, dict[str, dict]]:
  """Method -> precision -> input -> cosine to the exact polar factor (NaN if not finite)."""
  matmuls = {p: precision.emulated_matmul(bits) for p, bits in precision.PRECISIONS.items()}
  out = {m: {p: {} for p in precision.PRECISIONS} for m in fns}
  for label, x in inputs.items():
    x = np.asarray(primitives.standardize(jnp.asarray(x, jnp.float32)))
    x = x.T if x.shape[0] > x.shape[1] else x  # the polar factor of X^T is its transpose
    polar = harness.exact_polar(x, rtol=precision.EXACT_RTOL)
    for m, fn in fns.items():
      for p, matmul in matmuls.items():
        with jax.disable_jit():  # op by op: one compile per primitive and shape, not per method
          d = np.asarray(fn(jnp.asarray(x), matmul), np.float64)
        cos = np.sum(d * polar) / (np.linalg.norm(d) * np.linalg.norm(polar))
        out[m][p][label] = float(cos) if np.isfinite(cos) else float("nan")
    print(label, flush=True)
  return out


def kind_of(label: str) -> str:
  return label.split()[-2]


def worst_by_kind(cos: dict[str, float]) -> dict[str, float]:
  """Kind -> the lowest cosine over its inputs (NaN if any is NaN)."""
  kinds = [k for k in KINDS if any(kind_of(label) == k for label in cos)]
  return {k: min(c for label, c in cos.items() if kind_of(label) == k) for k in kinds}


def best_restart(result: dict, steps: int, at: str) -> str:
  """The Gram variant of ``steps`` steps with the highest worst cosine over all inputs at
  precision ``at`` (a NaN counts as -1)."""
  names = [m for m in result if m.startswith(f"Gram PE {steps},")]
  worst = lambda m: min(-1.0 if math.isnan(c) else c for c in result[m][at].values())
  return max(names, key=worst)


def summarize(result: dict, shapes: dict[str, tuple[int, int]]) -> list[dict]:
  """One row per (frontier method, precision): FLOPs x Muon per kind and worst cosine per kind.

  The frontier: every direct Polar Express, Muon, and per Gram step count Dao's restart and
  the best one at bf16 and at TF32.
  """
  fns = methods()
  steps = sorted({int(m.split()[2].rstrip(",")) for m in result if m.startswith("Gram")})
  gram = {f"Gram PE {n}, {gram_label(DAO_RESTART)}" for n in steps} & set(result)
  gram |= {best_restart(result, n, p) for n in steps for p in ("bf16", "tf32")}
  frontier = [m for m in result if not m.startswith("Gram")] + sorted(gram)
  rows = []
  for m in frontier:
    flops = {k: flops_ratio(fns[m], shape) for k, shape in shapes.items()}
    for p in precision.PRECISIONS:
      rows.append(
        {"method": m, "precision": p, "flops": flops, "cosine": worst_by_kind(result[m][p])}
      )
  return rows


def beats_muon(result: dict, m: str, p: str) -> str:
  """``k/n``: on how many inputs ``m`` at ``p`` is at least as close as Muon at ``p``."""
  muon, own = result["Muon quintic 5"][p], result[m][p]
  return f"{sum(own[x] >= muon[x] for x in muon)}/{len(muon)}"


def table(result: dict, rows: list[dict]) -> str:
  kinds = list(rows[0]["cosine"])
  header = ["method", "matmuls", "x Muon, square", "x Muon, 2.7:1", ">= Muon", *kinds]
  cells = [
    [
      r["method"],
      r["precision"],
      f"{r['flops']['q']:.2f}",
      f"{r['flops']['gate']:.2f}",
      beats_muon(result, r["method"], r["precision"]),
      *(f"{r['cosine'][k]:.3f}" for k in kinds),
    ]
    for r in rows
  ]
  return harness.markdown_table(header, cells, "ll" + "r" * (len(header) - 2))


def plot(rows: list[dict], path: pathlib.Path) -> None:
  """Worst cosine against FLOPs x Muon, one panel per kernel kind."""
  kinds = list(rows[0]["cosine"])
  fig = Figure(figsize=(3 * len(kinds), 3.2))
  axes = fig.subplots(1, len(kinds), sharey=True)
  families = {
    "Polar Express": lambda m: m.startswith("PE"),
    "Gram, Dao's restart": lambda m: m.endswith(gram_label(DAO_RESTART)),
    "Gram, other restart": lambda m: m.startswith("Gram") and not m.endswith(gram_label(2)),
    "Muon": lambda m: m.startswith("Muon"),
  }
  styles = {"bf16": "-", "tf32": "--", "f32": ":"}
  for ax, kind in zip(axes, kinds, strict=True):
    for color, (family, member) in enumerate(families.items()):
      for p, style in styles.items():
        points = sorted(
          (r["flops"][kind], r["cosine"][kind])
          for r in rows
          if member(r["method"]) and r["precision"] == p
        )
        if points:
          ax.plot(
            *zip(*points, strict=True),
            style,
            marker="o",
            color=f"C{color}",
            ms=3,
            label=f"{family}, {p}",
          )
    ax.set_title(kind)
    ax.set_xlabel("matmul FLOPs / Muon's")
    ax.axvline(1.0, color="grey", lw=0.5)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("worst cosine to U V^T")
  axes[0].set_ylim(0.5, 1.005)
  axes[-1].legend(fontsize=6, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main() -> None:
  parser = harness.parser(__doc__, "whitening_cost.md")
  parser.add_argument("--cache", type=pathlib.Path, default=CACHE)
  args = parser.parse_args()
  inputs = gradient_set(args.cache)
  result = cosines(inputs, methods())
  shapes = {kind_of(k): x.shape for k, x in inputs.items() if k.startswith(MODELS[-1] + " ")}
  rows = summarize(result, shapes)
  text = (
    "`python -m train.bench.whitening_cost` — cosine to the exact polar factor, the worst over "
    f"each kernel kind's {len(inputs) // len(KINDS)} inputs (layer 0 of {', '.join(MODELS)}, at "
    f"init and after {TRAINED} Adam steps, on {BATCH} x {SEQ_LEN} tokens, so 60m's are of rank "
    f"<= {BATCH * SEQ_LEN}; GradNorm-ed), against the exact matmul FLOPs as a "
    "multiple of optax Muon's on the same matrix (square: q, k, v, o; 2.7:1: gate, up, down). "
    "`matmuls`: every product's inputs rounded to bf16 or TF32 (emulated, float32 "
    "accumulation) or float32. `>= Muon`: on how many inputs the method is at least as close "
    "as Muon at the same precision. Gram rows: Dao's restart and the best restart at bf16 "
    "and at TF32 of each step count (all restarts in the JSON).\n\n" + table(result, rows)
  )
  harness.save(text, args.out)
  args.out.with_suffix(".json").write_text(json.dumps({"cosine": result, "rows": rows}, indent=1))
  plot(rows, args.out.with_suffix(".png"))


if __name__ == "__main__":
  main()
