r"""Polar Express on the short-side Gram matrix: its accuracy and FLOPs against the direct form.

Run: ``python -m train.bench.gram_form``. Every Polar Express step ``X <- p(X X^T) X`` with
``p(R) = a + b R + c R^2`` can run on ``m x m`` matrices (``m`` the short side): with
``X_k = Q_k X_0`` and ``R_k = X_k X_k^T``, a step is ``Z = p(R_k)``, ``Q <- Z Q``,
``R <- Z R Z`` (four ``m x m`` products), and ``Q X_0`` is formed once at the end. A restart
every ``r`` steps forms ``X = Q X_0`` and its ``R`` afresh. Measured:

* accuracy: cosine to the exact polar factor of the precision table's GradNorm-ed inputs, the
  two ``m x n`` products with bf16 inputs as in the default direct form, the ``m x m`` ones with
  bf16, TF32 or float32 inputs (emulated; float32 accumulation);
* cost: the exact matmul FLOPs (``2 m n k`` per product, from the jaxpr, loops counted by their
  trip counts) against the direct form, the coupled Newton-Schulz and optax's Muon, on the ops
  table's shapes.

Writes ``train/bench/results/gram_form.md``.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from optax.contrib import _muon

from swan_optax import _gradnorm
from swan_optax import _whiten
from train.bench import harness
from train.bench import ops
from train.bench import precision

STEPS = _whiten.DEFAULT_STEPS["polar_express"]
RESTARTS = (None, 4, 2)  # restart every r steps (None: never)
SMALL_PRECISIONS = ("bf16", "tf32", "f32")
Matmul = Callable[[jax.Array, jax.Array], jax.Array]


def gram_polar_express(x: jax.Array, big: Matmul, small: Matmul, restart: int | None) -> jax.Array:
  """Polar Express's ``STEPS`` steps on the short-side Gram; ``big`` multiplies the ``m x n``
  products, ``small`` the ``m x m`` ones."""
  coeffs = _whiten._polar_express_table()
  tall = x.shape[0] > x.shape[1]
  x = x.T if tall else x
  x = x / (_whiten._POLAR_EXPRESS_SAFETY * jnp.sqrt(jnp.sum(jnp.square(x))) + 1e-8)
  eye = jnp.eye(x.shape[0], dtype=x.dtype)
  r, q = big(x, x.T), None
  for i in range(STEPS):
    if restart and i and i % restart == 0:
      x = big(q, x)
      r, q = big(x, x.T), None
    a, b, c = coeffs[min(i, len(coeffs) - 1)]
    z = a * eye + b * r + c * small(r, r)
    q = z if q is None else small(z, q)
    if i < STEPS - 1 and not (restart and (i + 1) % restart == 0):
      r = small(small(z, r), z)
  x = big(q, x)
  return x.T if tall else x


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


def _variants() -> dict[str, Callable[[jax.Array], jax.Array]]:
  """Column name -> the polar factor of one matrix, with emulated matmul precisions."""
  bf16 = precision.emulated_matmul(precision.PRECISIONS["bf16"])
  direct = lambda x: _whiten.polar_factor(x, "polar_express", STEPS, 0.5, 1e-8, bf16)
  variants = {"direct, bf16 (default)": direct}
  for small in SMALL_PRECISIONS:
    matmul = precision.emulated_matmul(precision.PRECISIONS[small])
    for restart in RESTARTS:
      every = "no restart" if restart is None else f"restart / {restart}"
      variants[f"Gram, {small}, {every}"] = lambda x, m=matmul, r=restart: gram_polar_express(
        x, bf16, m, r
      )
  return variants


def accuracy_rows(inputs: dict[str, jax.Array]) -> list[list[str]]:
  variants = {name: jax.jit(fn) for name, fn in _variants().items()}
  rows = []
  for label, x in inputs.items():
    x = _gradnorm.standardize(jnp.asarray(x, jnp.float32))
    cells = []
    for fn in variants.values():
      result = np.asarray(fn(x))
      if not np.isfinite(result).all():
        cells.append("nan")
        continue
      cells.append(f"{precision.accuracy(np.asarray(x), result)[0]:.4f}")
    rows.append([label, *cells])
    print(label, flush=True)
  return rows


def flops_rows() -> list[list[str]]:
  exact = lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)
  forms = {
    "coupled Newton-Schulz (10)": lambda x: _whiten.polar_factor(
      x, "newton_schulz", 10, 0.5, 1e-8, exact
    ),
    "Polar Express direct (8)": lambda x: _whiten.polar_factor(
      x, "polar_express", STEPS, 0.5, 1e-8, exact
    ),
    **{
      f"Polar Express Gram, {'no restart' if r is None else f'restart / {r}'}": (
        lambda x, r=r: gram_polar_express(x, exact, exact, r)
      )
      for r in RESTARTS
    },
  }
  coeffs = jnp.asarray(_muon._DEFAULT_NS_COEFFS)
  rows = []
  for shape in (s for s in ops.SHAPES if len(s) == 2):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    muon = matmul_flops(lambda g: _muon.orthogonalize_via_newton_schulz(g, coeffs, 5), x)
    cells = [f"{matmul_flops(fn, x) / muon:.2f}" for fn in forms.values()]
    rows.append(["x".join(map(str, shape)), f"{muon / 1e9:.2f}", *cells])
  return [["shape", "Muon (5 steps) GFLOP", *(f"{f} x Muon" for f in forms)], *rows]


def main() -> None:
  parser = harness.parser(__doc__, "gram_form.md")
  parser.add_argument("--models", default="tiny,60m")
  args = parser.parse_args()
  header, *flops = flops_rows()
  accuracy = accuracy_rows(precision.table_inputs(args.models))
  text = (
    "`python -m train.bench.gram_form` — Polar Express (8 steps) on the short-side Gram "
    "against the direct form. Cosine to the exact (pseudo-)polar factor of GradNorm-ed inputs "
    "(layer 0 after one batch at init; Gaussians); the m x n products take bf16 inputs, the "
    "m x m ones the precision named (emulated, float32 accumulation); `restart / r`: X = Q X_0 "
    "and its Gram formed afresh every r steps.\n\n"
    + harness.markdown_table(["input", *_variants()], accuracy, "l" + "r" * len(_variants()))
    + "\nExact matmul FLOPs (2 m n k per product, loops counted by their trip counts), as a "
    "multiple of optax Muon's 5 Newton-Schulz steps on the same matrix:\n\n"
    + harness.markdown_table(header, flops, "l" + "r" * (len(header) - 1))
  )
  harness.save(text, args.out)


if __name__ == "__main__":
  main()
