"""GradWhitening: the polar factor of each gradient matrix (SWAN Algorithm 2)."""

import functools
import typing
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

from swan_optax import _matrix
from swan_optax import _scale
from swan_optax import _sharded
from swan_optax import _transform

WhiteningMethod = Literal[
  "newton_schulz", "polar_express", "gram_polar_express", "quintic", "svd", "eigh"
]

DEFAULT_STEPS: dict[str, int] = {
  "newton_schulz": 10,
  "polar_express": 8,
  "gram_polar_express": 5,
  "quintic": 5,
}
# Where 'gram_polar_express' forms X afresh: before the third step (Zhang, Amsel, Chen, Dao 2026).
GRAM_RESTARTS = (2,)

# Matmul precision per method, chosen by the cosine to the polar factor of real LLaMA gradients
# with emulated bf16 and TF32 matmul inputs and float32 accumulation. The odd polynomials
# lose <= 2e-4 of cosine to bf16 inputs, so they take bf16 tensor-core matmuls. The coupled
# Newton-Schulz loses up to 4e-3 with bf16 inputs and <= 1e-4 with TF32: it takes HIGH (TF32 on
# GPUs, three bf16 passes on TPUs), not full float32. The exact references keep float32.
DEFAULT_PRECISION: dict[str, jax.lax.PrecisionLike] = {
  "newton_schulz": jax.lax.Precision.HIGH,
  "polar_express": jax.lax.DotAlgorithmPreset.BF16_BF16_F32,
  "gram_polar_express": jax.lax.DotAlgorithmPreset.BF16_BF16_F32,
  "quintic": jax.lax.DotAlgorithmPreset.BF16_BF16_F32,
  "svd": jax.lax.Precision.HIGHEST,
  "eigh": jax.lax.Precision.HIGHEST,
}

# Polar Express's construction (Amsel et al. 2025, arXiv 2505.16932, Sec. 4): singular values
# start in [POLAR_EXPRESS_LOWER, 1] (bf16 resolves no less), each interval's lower end is
# cushioned to at least _CUSHION x its upper one (the paper's value, for stability in finite
# precision), and every step but the last is divided by the safety factor.
POLAR_EXPRESS_LOWER = 1e-3
_CUSHION = 0.02407327424182761
_POLAR_EXPRESS_SAFETY = 1.01
# Muon's fixed quintic (optax.contrib.muon default); not convergent to U V^T.
_QUINTIC = (3.4445, -4.7750, 2.0315)
# Singular values below rtol * sigma_max count as zero in the exact methods.
_EXACT_RTOL = 1e-6

Coefficients = tuple[tuple[float, float, float], ...]


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
    s = 1.0 if t == steps - 1 else _POLAR_EXPRESS_SAFETY
    coeffs.append((a / s, b / s**3, c / s**5))
  return tuple(coeffs)


def _coefficients(method: str, steps: int) -> tuple[Coefficients, float]:
  """The per-step quintics of an odd-polynomial ``method`` and its initial safety factor."""
  if method in ("polar_express", "gram_polar_express"):
    return polar_express_coefficients(steps), _POLAR_EXPRESS_SAFETY
  return (_QUINTIC,) * steps, 1.0


def _frobenius(x: jax.Array) -> jax.Array:
  return jnp.sqrt(jnp.sum(jnp.square(x)))


def _newton_schulz(x, steps, beta, eps, matmul):
  """Coupled Newton-Schulz: ``Z -> (X^T X)^{-1/2}`` (up to scale) on the short side."""
  wide = x.shape[0] < x.shape[1]
  gram = matmul(x, x.T) if wide else matmul(x.T, x)
  eye = jnp.eye(gram.shape[0], dtype=x.dtype)

  def body(_, yz):
    y, z = yz
    t = 3.0 * eye - matmul(z, y)
    return beta * matmul(y, t), beta * matmul(t, z)

  y0 = gram / jnp.maximum(_frobenius(gram), eps)
  _, z = jax.lax.fori_loop(0, steps, body, (y0, eye))
  return matmul(z, x) if wide else matmul(x, z)


def _odd_polynomial(x, coeffs, safety, eps, matmul):
  """``X <- a X + (b A + c A^2) X`` with ``A = X X^T`` (short side), step ``t`` by ``coeffs[t]``."""
  tall = x.shape[0] > x.shape[1]
  x = x.T if tall else x
  table = jnp.asarray(coeffs, x.dtype).reshape(len(coeffs), 3)

  def body(i, x):
    a, b, c = table[i]
    gram = matmul(x, x.T)
    return a * x + matmul(b * gram + c * matmul(gram, gram), x)

  x = jax.lax.fori_loop(0, len(coeffs), body, x / (safety * _frobenius(x) + eps))
  return x.T if tall else x


def gram_odd_polynomial(
  x: jax.Array,
  coeffs: Coefficients,
  restarts: tuple[int, ...],
  eps: jax.typing.ArrayLike,
  matmul: Callable[[jax.Array, jax.Array], jax.Array],
  safety: float = _POLAR_EXPRESS_SAFETY,
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
  x = x / (safety * _frobenius(x) + eps)
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


def _svd_polar(x, matmul):
  u, s, vt = jnp.linalg.svd(x, full_matrices=False)
  keep = s > _EXACT_RTOL * s[0]
  return matmul(u * keep, vt)


def _eigh_polar(x, matmul):
  wide = x.shape[0] < x.shape[1]
  gram = matmul(x, x.T) if wide else matmul(x.T, x)
  eigvals, q = jnp.linalg.eigh(gram)
  keep = eigvals > _EXACT_RTOL**2 * eigvals[-1]
  inv_sqrt = jnp.where(keep, jax.lax.rsqrt(jnp.where(keep, eigvals, 1.0)), 0.0)
  inv_root = matmul(q * inv_sqrt, q.T)
  return matmul(inv_root, x) if wide else matmul(x, inv_root)


def _check_method(method: str) -> None:
  if method not in typing.get_args(WhiteningMethod):
    raise ValueError(
      f"unknown whitening method {method!r}; choose one of {typing.get_args(WhiteningMethod)}"
    )


def polar_factor(
  x: jax.Array,
  method: WhiteningMethod,
  steps: int,
  ns_beta: jax.typing.ArrayLike,
  eps: jax.typing.ArrayLike,
  matmul: Callable[[jax.Array, jax.Array], jax.Array],
) -> jax.Array:
  r"""``D \approx U V^T`` of one matrix by ``method``, every product through ``matmul``.

  ``matmul`` lets a benchmark round the products' inputs (emulated bf16 or
  TF32 matmuls); :func:`whiten_matrix` passes ``jnp.matmul`` at ``precision``.
  """
  if method == "newton_schulz":
    return _newton_schulz(x, steps, ns_beta, eps, matmul)
  if method == "gram_polar_express" and gram_is_cheaper(x.shape, steps, GRAM_RESTARTS):
    coeffs = polar_express_coefficients(steps)
    return gram_odd_polynomial(x, coeffs, GRAM_RESTARTS, eps, matmul)
  if method in ("polar_express", "gram_polar_express", "quintic"):
    return _odd_polynomial(x, *_coefficients(method, steps), eps=eps, matmul=matmul)
  if method == "svd":
    return _svd_polar(x, matmul)
  return _eigh_polar(x, matmul)


def rescale(d: jax.Array, eps: jax.typing.ArrayLike) -> jax.Array:
  r"""``\sqrt{fan_{in} fan_{out}} D / \max(\|D\|_F, \epsilon)``: unit RMS, Adam's scale."""
  return jnp.sqrt(d.size).astype(d.dtype) * d / jnp.maximum(_frobenius(d), eps)


def whiten_matrix(
  x: jax.Array,
  method: WhiteningMethod = "polar_express",
  ns_steps: int | None = None,
  ns_beta: jax.typing.ArrayLike = 0.5,
  eps: jax.typing.ArrayLike = 1e-8,
  precision: jax.lax.PrecisionLike | None = None,
) -> jax.Array:
  r"""Whitens one ``(fan_in, fan_out)`` matrix to its rescaled polar factor.

  ``D \approx (X X^T)^{-1/2} X = U V^T`` (the pseudo-polar factor when ``X`` is
  rank deficient), then ``\sqrt{fan_{in} fan_{out}} D / \max(\|D\|_F, \epsilon)``
  so the result has unit RMS, Adam's scale. ``precision=None`` takes the
  method's entry of ``DEFAULT_PRECISION``.
  """
  _check_method(method)
  steps = DEFAULT_STEPS.get(method) if ns_steps is None else ns_steps
  matmul = _matmul(DEFAULT_PRECISION[method] if precision is None else precision)
  return rescale(polar_factor(x, method, steps, ns_beta, eps, matmul), eps)


def _matmul(precision: jax.lax.PrecisionLike) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """``jnp.matmul`` at ``precision``.

  ``DotAlgorithmPreset.BF16_BF16_F32`` is spelled as bfloat16 operands with
  float32 accumulation (``preferred_element_type``): the same arithmetic, and
  every backend compiles it, while XLA:CPU rejects the preset on
  matrix-vector products (a ``(1, n)`` or ``(n, 1)`` matrix).
  """
  if precision == jax.lax.DotAlgorithmPreset.BF16_BF16_F32:
    to_bf16 = lambda a: a.astype(jnp.bfloat16)
    return lambda a, b: jnp.matmul(to_bf16(a), to_bf16(b), preferred_element_type=jnp.float32)
  return functools.partial(jnp.matmul, precision=precision)


def whiten(
  *,
  method: WhiteningMethod = "polar_express",
  ns_steps: int | None = None,
  ns_beta: jax.typing.ArrayLike = 0.5,
  eps: jax.typing.ArrayLike = 1e-8,
  precision: jax.lax.PrecisionLike | None = None,
  dimension_numbers: _matrix.DimensionNumbersSpec = None,
  mesh: jax.sharding.Mesh | None = None,
  shardings: _sharded.ShardingsSpec = None,
  scale_rule: _scale.ScaleRule = "unit_rms",
) -> optax.GradientTransformation:
  r"""GradWhitening: replace every gradient matrix by its rescaled polar factor.

  .. math::
    W(X) = \sqrt{fan_{in} fan_{out}} \, \frac{U V^T}{\|U V^T\|_F}, \qquad X = U \Sigma V^T

  computed on the smaller side in float32 (the result is cast back to the
  gradient's dtype). Methods:

  * ``'newton_schulz'`` (10 steps): the paper's coupled
    inverse-square-root iteration on the short-side Gram ``A``,
    ``T = 3I - ZY; Y <- beta Y T; Z <- beta T Z``; exact for well-conditioned
    inputs, slow to converge on ill-conditioned ones (its error grows with the
    log of the condition number). ``ns_beta != 0.5`` is a different, inexact
    operator.
  * ``'polar_express'`` (default, 8 steps): the Polar Express odd-polynomial
    iteration on ``X``, ``X <- a X + (b A + c A^2) X`` with ``A = X X^T``; its
    schedule of ``(a, b, c)`` is computed for the number of steps, optimal
    for the worst case (:func:`polar_express_coefficients`).
  * ``'gram_polar_express'`` (5 steps): the same polynomials, run on the
    short-side Gram ``X X^T`` with one restart (Gram Newton-Schulz) where that
    takes fewer FLOPs (aspect ratio above 1.5 at 5 steps), directly on ``X``
    otherwise: the same result in exact arithmetic.
  * ``'quintic'`` (5 steps): Muon's fixed quintic; approximate by design.
  * ``'svd'`` / ``'eigh'``: exact references (slow; for tests and checks).

  NSDS (the "fast" whitening of SWAN v3) is not offered: its recurrence is not
  published in a form we could verify. A zero gradient gives a zero update.
  Stateless.

  Args:
    method: how to compute the polar factor.
    ns_steps: iterations of every iterative method (``None``: the method's
      ``DEFAULT_STEPS``); Polar Express computes its schedule for that many.
    ns_beta: step factor of ``'newton_schulz'``.
    eps: lower clamp of every norm in denominators.
    precision: matmul precision (``None``: ``DEFAULT_PRECISION[method]``:
      ``HIGH``, i.e. TF32 on GPUs, for ``'newton_schulz'``; bf16 inputs with
      float32 accumulation for ``'polar_express'`` and ``'quintic'``; float32
      for the exact methods). ``jax.lax.Precision.HIGHEST`` forces float32.
    dimension_numbers: how each leaf is viewed as a batch of matrices (see
      :func:`gradnorm`).
    mesh: the device mesh the gradients live on. Each device then whitens
      only its share of whole matrices: same-shape matrices of all leaves are
      stacked, padded to the device count, and exchanged by one all-to-all
      over the mesh axes that shard them (and back); leaves repeated over an
      axis (data parallel) are whitened ``1/size`` per device and
      all-gathered. See :func:`swan_optax.inspect.whitening_plan`. Only the layout and the cost
      change, never the result. ``None``: the mesh of ``shardings``, else the
      gradients' own when their types carry one with Explicit axes
      (``jax.make_mesh``'s default); else the partitioner lays out each leaf,
      which may gather every matrix on every device. Given inside ``jit`` on
      Auto axes without ``shardings``, where the layout cannot be seen, it
      warns and the partitioner lays out each leaf, as with ``None``.
    shardings: the gradients' layout: a tree like the params (or a callable
      of them) of ``NamedSharding`` or ``PartitionSpec``, e.g. the params'
      shardings given to ``jax.jit(in_shardings=...)``. ``None``: read from
      the gradients: concrete arrays carry it, traced ones only in their types
      on Explicit mesh axes.
    scale_rule: the update's size per matrix shape (:func:`swan_optax.inspect.shape_scale`):
      ``'unit_rms'`` (the paper's: Adam's RMS for every shape) or
      ``'spectral'`` (spectral norm ``sqrt(fan_out / fan_in)``, muP's).

  Returns:
    A stateless ``optax.GradientTransformation``.

  References:
    Ma et al., `SWAN <https://arxiv.org/abs/2412.13148>`_, 2024 (Algorithm 2);
    Amsel et al., `The Polar Express <https://arxiv.org/abs/2505.16932>`_, 2025.
  """
  _check_method(method)
  operator = functools.partial(
    whiten_matrix,
    method=method,
    ns_steps=ns_steps,
    ns_beta=ns_beta,
    eps=eps,
    precision=precision,
  )
  return _transform.stateless_matrix_transform(
    _scale.scaled(operator, scale_rule),
    dimension_numbers,
    name="whiten",
    whole_matrices=True,
    mesh=mesh,
    shardings=shardings,
  )
