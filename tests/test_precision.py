"""Whitening precision: the per-method defaults, and their accuracy under emulated GPU matmuls."""

import json
import pathlib

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

import swan_optax
from swan_optax import _gradnorm
from swan_optax import _whiten
from swan_optax import primitives
from train.bench import harness
from train.bench import newton_schulz_steps
from train.bench import precision

ITERATIVE = ("newton_schulz", "polar_express", "quintic")


def _dots(method, shape=(16, 24), **kwargs):
  """``(precision pair, operand dtype, result dtype)`` of every matmul of the whitening."""
  x = jnp.ones(shape)
  jaxpr = jax.make_jaxpr(lambda x: _whiten.whiten_matrix(x, method, **kwargs))(x)
  found = set()

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        p = eqn.params["precision"]  # an algorithm preset is stored once, not per operand
        precision = p if isinstance(p, tuple) else (p, p)
        found.add((precision, eqn.invars[0].aval.dtype.name, eqn.outvars[0].aval.dtype.name))
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        visit(sub)

  visit(jaxpr.jaxpr)
  return found


@pytest.mark.parametrize("method", ITERATIVE)
def test_every_matmul_uses_the_method_default_unless_overridden(method):
  default = _whiten.DEFAULT_PRECISION[method]
  if default == jax.lax.DotAlgorithmPreset.BF16_BF16_F32:
    # Spelled as bfloat16 operands with float32 accumulation, which every backend compiles.
    assert {(dtype, out) for _, dtype, out in _dots(method)} == {("bfloat16", "float32")}
  else:
    assert _dots(method) == {((default, default), "float32", "float32")}
  highest = jax.lax.Precision.HIGHEST
  assert _dots(method, precision=highest) == {((highest, highest), "float32", "float32")}


@pytest.mark.parametrize("method", ITERATIVE)
@pytest.mark.parametrize("shape", [(1, 8), (8, 1)])
def test_default_precision_compiles_for_one_wide_matrices(method, shape):
  """XLA:CPU rejects the BF16_BF16_F32 preset on matrix-vector products; the default must not."""
  g = jax.random.normal(jax.random.key(0), shape)
  out = jax.jit(lambda g: _whiten.whiten_matrix(g, method))(g)
  np.testing.assert_allclose(jnp.sqrt(jnp.mean(out**2)), 1.0, rtol=1e-5)


def test_defaults_are_below_float32_for_the_iterations():
  """The measured choice: no iterative method needs full float32 matmuls."""
  assert _whiten.DEFAULT_PRECISION["newton_schulz"] == jax.lax.Precision.HIGH
  for method in ("gram_polar_express", "polar_express", "quintic"):
    assert _whiten.DEFAULT_PRECISION[method] == jax.lax.DotAlgorithmPreset.BF16_BF16_F32


def test_round_mantissa_matches_bfloat16_and_keeps_10_bits_for_tf32():
  x = jax.random.normal(jax.random.key(0), (4096,)) * 1e3
  bf16 = x.astype(jnp.bfloat16).astype(jnp.float32)
  np.testing.assert_array_equal(precision.round_mantissa(x, 7), bf16)
  tf32 = np.asarray(precision.round_mantissa(x, 10))
  assert np.all(tf32.view(np.uint32) & 0x1FFF == 0)
  assert np.max(np.abs(tf32 - np.asarray(x)) / np.abs(np.asarray(x))) <= 2.0**-11


@pytest.mark.parametrize("shape", [(192, 512), (512, 192)], ids=["wide", "tall"])
@pytest.mark.parametrize("method", ITERATIVE)
def test_default_precision_keeps_the_float32_accuracy(method, shape):
  """Emulated at each method's default, rectangular kernels lose <= 1e-3 of cosine to float32;
  newton_schulz and polar_express stay >= 0.999 (quintic is approximate by design)."""
  x = _gradnorm.standardize(jax.random.normal(jax.random.key(1), shape))
  column = primitives.input_precision(_whiten.DEFAULT_PRECISION[method])
  at_default = precision.whiten_emulated(x, method, column)
  in_f32 = precision.whiten_emulated(x, method, "f32")
  actual = _whiten.whiten_matrix(x, method)  # the default itself, not its emulation
  cosine_f32 = precision.accuracy(np.asarray(x), np.asarray(in_f32))[0]
  for result in (at_default, actual):
    cosine = precision.accuracy(np.asarray(x), np.asarray(result))[0]
    assert cosine >= cosine_f32 - 1e-3
    if method != "quintic":
      assert cosine >= 0.999


@pytest.mark.parametrize("inputs", ["bf16", "tf32", "f32"])
def test_newton_schulz_stays_exact_up_to_its_step_limit_and_refuses_more(inputs):
  """At its limit for the matmul inputs' precision (emulated) the coupled iteration is finite
  and closer to the polar factor than at 10 steps on a GradNorm-ed ill-conditioned matrix;
  one step more raises, naming what to change."""
  x = _gradnorm.standardize(jnp.asarray(newton_schulz_steps.synthetic((64, 256))))
  matmul = precision.emulated_matmul(precision.PRECISIONS[inputs])
  most = primitives.NEWTON_SCHULZ_MAX_STEPS[inputs]
  cosine = {}
  for steps in (10, most):
    d = primitives.polar_factor(x, "newton_schulz", steps, 0.5, 1e-8, matmul)
    assert np.isfinite(d).all()
    cosine[steps] = harness.cosine_to_polar(d, x, rtol=precision.EXACT_RTOL)
  assert cosine[most] >= cosine[10] > 0.5
  named = {"bf16": "bfloat16", "tf32": "tensorfloat32", "f32": "highest"}[inputs]
  assert primitives.input_precision(named) == inputs
  swan_optax.whiten(method="newton_schulz", ns_steps=most, precision=named)
  with pytest.raises(ValueError, match=rf"past {most} .* Use ns_steps <= {most}"):
    swan_optax.whiten(method="newton_schulz", ns_steps=most + 1, precision=named)


def test_newton_schulz_step_limits_are_the_benchmarks():
  path = pathlib.Path(__file__).parent.parent / "train/bench/results/newton_schulz_steps.json"
  assert primitives.NEWTON_SCHULZ_MAX_STEPS == json.loads(path.read_text())["limit"]


def test_input_precision_of_presets_and_pairs():
  presets = jax.lax.DotAlgorithmPreset
  assert primitives.input_precision(presets.BF16_BF16_F32) == "bf16"
  assert primitives.input_precision(presets.BF16_BF16_F32_X3) == "tf32"
  assert primitives.input_precision(presets.F32_F32_F32) == "f32"
  assert primitives.input_precision((jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGH)) == "tf32"
