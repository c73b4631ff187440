"""GradWhitening: the polar factor of each gradient matrix (SWAN Algorithm 2)."""

import functools
import typing
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
import optax

from swan_optax import _matrix
from swan_optax import _polar_express
from swan_optax import _scale
from swan_optax import _sharded
from swan_optax import _transform

WhiteningMethod = Literal[
  "newton_schulz", "polar_express", "gram_polar_express", "quintic", "svd", "eigh"
]

# The cheapest method whose training loss is within the seed spread of Polar Express at 8 steps
# (train.bench.whitening --only cheaper, train.bench.budgets --only whitening): Muon's FLOPs on
# square kernels, fewer on rectangular ones.
DEFAULT_METHOD: WhiteningMethod = "gram_polar_express"
DEFAULT_STEPS: dict[str, int] = {
  "newton_schulz": 10,
  "polar_express": 8,
  "gram_polar_express": 5,
  "quintic": 5,
}
# Matmul precision per method, chosen by the cosine to the polar factor of real LLaMA gradients
# with emulated bf16 and TF32 matmul inputs and float32 accumulation. The odd polynomials
# lose <= 2e-4 of cosine to bf16 inputs applied directly, and <= 0.01 in the Gram form (whose
# R = X X^T squares the condition number), which trains within the seed spread of the direct
# form at 8 steps (train.bench.budgets --only whitening): they take bf16 tensor-core matmuls.
# The coupled Newton-Schulz loses up to 4e-3 with bf16 inputs and <= 1e-4 with TF32: it takes
# HIGH (TF32 on GPUs, three bf16 passes on TPUs), not full float32. The exact references keep
# float32.
DEFAULT_PRECISION: dict[str, jax.lax.PrecisionLike] = {
  "newton_schulz": jax.lax.Precision.HIGH,
  "polar_express": jax.lax.DotAlgorithmPreset.BF16_BF16_F32,
  "gram_polar_express": jax.lax.DotAlgorithmPreset.BF16_BF16_F32,
  "quintic": jax.lax.DotAlgorithmPreset.BF16_BF16_F32,
  "svd": jax.lax.Precision.HIGHEST,
  "eigh": jax.lax.Precision.HIGHEST,
}

# Past these steps at each matmul input precision the coupled Newton-Schulz iteration turns real
# gradients into rounding noise: Z grows 1.5x a step along the Gram's (near-)null directions
# (GradNorm leaves one exactly), where rounding compounds (train.bench.newton_schulz_steps).
NEWTON_SCHULZ_MAX_STEPS: dict[str, int] = {"bf16": 10, "tf32": 13, "f32": 20}
_INPUT_PRECISIONS = ("bf16", "tf32", "f32")  # least precise first
_PRESET_INPUTS = {
  "F64_F64_F64": "f32",
  "F32_F32_F32": "f32",
  "TF32_TF32_F32_X3": "f32",
  "BF16_BF16_F32_X6": "f32",
  "BF16_BF16_F32_X9": "f32",
  "TF32_TF32_F32": "tf32",
  "BF16_BF16_F32_X3": "tf32",
}
_PRECISION_INPUTS = {
  jax.lax.Precision.HIGHEST: "f32",
  jax.lax.Precision.HIGH: "tf32",
  jax.lax.Precision.DEFAULT: "bf16",
}

# Muon's fixed quintic (optax.contrib.muon default); not convergent to U V^T.
_QUINTIC = (3.4445, -4.7750, 2.0315)
# Singular values below rtol * sigma_max count as zero in the exact methods.
_EXACT_RTOL = 1e-6


def _coefficients(method: str, steps: int) -> tuple[_polar_express.Coefficients, float]:
  """The per-step quintics of an odd-polynomial ``method`` and its initial safety factor."""
  if method in ("polar_express", "gram_polar_express"):
    return _polar_express.polar_express_coefficients(steps), _polar_express.SAFETY
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


def input_precision(precision: jax.lax.PrecisionLike) -> str:
  """``'f32'``, ``'tf32'`` or ``'bf16'``: the matmul input precision that ``precision``
  guarantees on every backend (``DEFAULT`` is one bf16 pass on TPUs; of a pair, the lesser)."""
  if isinstance(precision, tuple | list):
    return min(map(input_precision, precision), key=_INPUT_PRECISIONS.index)
  if isinstance(precision, jax.lax.DotAlgorithmPreset):
    return _PRESET_INPUTS.get(precision.name, "bf16")
  return _PRECISION_INPUTS[jax.lax.Precision(precision)]


def _resolve(
  method: WhiteningMethod, ns_steps: int | None, precision: jax.lax.PrecisionLike | None
) -> tuple[int | None, jax.lax.PrecisionLike]:
  """``method``'s steps and matmul precision (``None``: its defaults), checked."""
  _check_method(method)
  steps = DEFAULT_STEPS.get(method) if ns_steps is None else ns_steps
  precision = DEFAULT_PRECISION[method] if precision is None else precision
  if steps is not None and steps < 1:
    raise ValueError(f"ns_steps must be >= 1, got {steps}")
  if method == "newton_schulz":
    inputs = input_precision(precision)
    most = NEWTON_SCHULZ_MAX_STEPS[inputs]
    if steps > most:
      raise ValueError(
        f"ns_steps={steps} coupled Newton-Schulz steps with {inputs} matmul inputs: past {most} "
        "the rounding along the Gram matrix's null directions turns real gradients into noise "
        f"(train.bench.newton_schulz_steps). Use ns_steps <= {most}, "
        f"precision=jax.lax.Precision.HIGHEST (up to {NEWTON_SCHULZ_MAX_STEPS['f32']} steps), "
        "or method='polar_express' for a closer polar factor."
      )
  return steps, precision


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
  if method == "gram_polar_express" and _polar_express.gram_is_cheaper(
    x.shape, steps, _polar_express.GRAM_RESTARTS
  ):
    coeffs = _polar_express.polar_express_coefficients(steps)
    return _polar_express.gram_odd_polynomial(x, coeffs, _polar_express.GRAM_RESTARTS, eps, matmul)
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
  method: WhiteningMethod = DEFAULT_METHOD,
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
  steps, precision = _resolve(method, ns_steps, precision)
  return rescale(polar_factor(x, method, steps, ns_beta, eps, _matmul(precision)), eps)


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
  method: WhiteningMethod = DEFAULT_METHOD,
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
  * ``'polar_express'`` (8 steps): the Polar Express odd-polynomial
    iteration on ``X``, ``X <- a X + (b A + c A^2) X`` with ``A = X X^T``; its
    schedule of ``(a, b, c)`` is computed for the number of steps, optimal
    for the worst case (the paper's greedy construction).
  * ``'gram_polar_express'`` (default, 5 steps): the same polynomials, run on the
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
      ``'newton_schulz'`` takes at most ``NEWTON_SCHULZ_MAX_STEPS`` at its matmul
      inputs' precision (13 at its default ``HIGH``): more turn real gradients
      into rounding noise, and raise.
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
  _resolve(method, ns_steps, precision)
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
