"""Polar Express's coefficients for any number of steps, and its Gram-matrix form."""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Polar Express's construction (Amsel et al. 2025, arXiv 2505.16932, Sec. 4): singular values
# start in [POLAR_EXPRESS_LOWER, 1] (bf16 resolves no less), each interval's lower end is
# cushioned to at least _CUSHION x its upper one (the paper's value, for stability in finite
# precision), and every step but the last is divided by the safety factor.
POLAR_EXPRESS_LOWER = 1e-3
_CUSHION = 0.02407327424182761
SAFETY = 1.01
Coefficients = tuple[tuple[float, float, float], ...]


# Where 'gram_polar_express' forms X afresh: before the third step (Zhang, Amsel, Chen, Dao 2026).
GRAM_RESTARTS = (2,)


def _minimax_quintic(lower: float, upper: float) -> tuple[float, float, float]:
  """The odd quintic ``a x + b x^3 + c x^5`` closest to 1 in max norm on ``[lower, upper]``.

  Remez exchange: the optimum equioscillates at ``lower``, its two interior
  extrema and ``upper`` (Amsel et al. 2025, Sec. 4).
  """
  if lower / upper > 1 - 5e-6:  # the limit as lower -> upper: Newton-Schulz's quintic, scaled
    return 15 / 8 / upper, -10 / 8 / upper**3, 3 / 8 / upper**5
  q, r, error = (3 * lower + upper) / 4, (lower + 3 * upper) / 4, np.inf
  for _ in range(100):
    points = np.array([lower, q, r, upper])
    system = np.stack([points, points**3, points**5, [1.0, -1.0, 1.0, -1.0]], axis=1)
    a, b, c, new_error = np.linalg.solve(system, np.ones(4))
    q, r = np.sqrt((-3 * b + np.array([-1.0, 1.0]) * np.sqrt(9 * b * b - 20 * a * c)) / (10 * c))
    if abs(new_error - error) < 1e-15:
      break
    error = new_error
  return float(a), float(b), float(c)


@functools.cache
def polar_express_coefficients(steps: int) -> Coefficients:
  r"""Polar Express's ``steps`` odd quintics ``(a, b, c)``, computed by its greedy construction.

  Step ``t`` takes the minimax quintic on the singular values' current interval
  ``[l_t, u_t]`` (``l_0`` = :data:`POLAR_EXPRESS_LOWER`, ``u_0 = 1``), rescaled so
  that ``p(l_t) + p(u_t) = 2``; then ``l_{t+1} = p(l_t)``, ``u_{t+1} = 2 - l_{t+1}``.
  The greedy composition is the optimal one for every number of steps (Amsel
  et al. 2025, Sec. 4), so a schedule differs from a longer one's beginning
  only in its last step, which is not divided by the safety factor
  ``(1.01, 1.01^3, 1.01^5)``.

  References:
    Amsel et al., `The Polar Express <https://arxiv.org/abs/2505.16932>`_, 2025.
  """
  lower, upper, coeffs = POLAR_EXPRESS_LOWER, 1.0, []
  for t in range(steps):
    a, b, c = _minimax_quintic(max(lower, _CUSHION * upper), upper)
    p = lambda x, a=a, b=b, c=c: a * x + b * x**3 + c * x**5
    scale = 2 / (p(lower) + p(upper))
    a, b, c = a * scale, b * scale, c * scale
    lower = p(lower) * scale
    upper = 2 - lower
    s = 1.0 if t == steps - 1 else SAFETY
    coeffs.append((a / s, b / s**3, c / s**5))
  return tuple(coeffs)


def gram_odd_polynomial(
  x: jax.Array,
  coeffs: Coefficients,
  restarts: tuple[int, ...],
  eps: jax.typing.ArrayLike,
  matmul: Callable[[jax.Array, jax.Array], jax.Array],
  safety: float = SAFETY,
) -> jax.Array:
  r"""The odd-polynomial iteration run on the short-side Gram matrix (Gram Newton-Schulz).

  With ``X_t = Q_t X_0`` and ``R_t = X_t X_t^T`` (``k x k``, ``k`` the short
  side), step ``t`` is ``Z = a I + b R + c R^2``, ``Q <- Z Q``, ``R <- Z R Z``:
  four ``k x k`` products instead of two ``m x n`` ones and one ``k x k``.
  ``X = Q X_0`` is formed at the end and before each step in ``restarts``, where
  ``R = X X^T`` is formed afresh (the rounding of ``R`` compounds otherwise). In
  exact arithmetic it is the direct iteration.

  References:
    Zhang, Amsel, Chen, Dao, `Gram Newton-Schulz
    <https://dao-ailab.github.io/blog/2026/gram-newton-schulz/>`_, 2026.
  """
  tall = x.shape[0] > x.shape[1]
  x = x.T if tall else x
  x = x / (safety * jnp.linalg.norm(x) + eps)
  eye = jnp.eye(x.shape[0], dtype=x.dtype)
  r, q = matmul(x, x.T), None
  for t, (a, b, c) in enumerate(coeffs):
    if t in restarts and q is not None:
      x = matmul(q, x)
      r, q = matmul(x, x.T), None
    z = a * eye + b * r + c * matmul(r, r)
    q = z if q is None else matmul(z, q)
    if t + 1 < len(coeffs) and t + 1 not in restarts:
      r = matmul(matmul(z, r), z)
  x = x if q is None else matmul(q, x)
  # XLA would fold the transpose into the product, and XLA:CPU has no batched bf16 product
  # with a transposed output.
  return jax.lax.optimization_barrier(x).T if tall else x


def gram_is_cheaper(shape: tuple[int, ...], steps: int, restarts: tuple[int, ...]) -> bool:
  r"""Whether :func:`gram_odd_polynomial` takes fewer matmul FLOPs than the direct form.

  With ``k x k`` short side and ``k x l`` long: the direct form's step is two
  ``k x k x l`` products and one ``k^3``; the Gram form takes ``2 + 2 r`` products
  ``k x k x l`` (``r`` restarts) and ``4 steps - 3 - 3 r`` products ``k^3``.
  """
  k, long = min(shape), max(shape)
  r = len([t for t in restarts if 0 < t < steps])
  direct = steps * (2 * long + k)
  return (2 + 2 * r) * long + (4 * steps - 3 - 3 * r) * k < direct
