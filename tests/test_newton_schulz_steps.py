"""The Newton-Schulz step limits: read from per-input cosines (fake), and the table."""

import math

import numpy as np
import pytest

from train.bench import newton_schulz_steps


def _result(cosines: dict[int, tuple[float, float]]) -> dict:
  """Step count -> every precision -> the two inputs' cosines."""
  return {
    steps: {p: {"a": a, "b": b} for p in ("f32", "tf32", "bf16")}
    for steps, (a, b) in cosines.items()
  }


def test_the_limit_is_the_last_step_count_before_any_input_falls():
  result = _result({8: (0.5, 0.6), 10: (0.6, 0.7), 12: (0.8, 0.65), 14: (0.9, 0.9)})
  summary = newton_schulz_steps.summarize(result)
  assert summary["limit"] == {"f32": 10, "tf32": 10, "bf16": 10}
  assert summary["cosine"]["bf16"][12] == {
    "worst": 0.65,
    "mean": pytest.approx(0.725),
    "not_finite": 0,
    "inputs": 2,
  }
  assert "| 10 | **0.600 / 0.650** |" in newton_schulz_steps.table(summary)


def test_a_result_that_is_not_finite_ends_the_range():
  summary = newton_schulz_steps.summarize(_result({8: (0.5, 0.6), 10: (math.nan, 0.7)}))
  assert summary["limit"]["f32"] == 8
  assert summary["cosine"]["f32"][10]["worst"] is None
  assert "(1/2 not finite)" in newton_schulz_steps.table(summary)
  with pytest.raises(ValueError, match="measure fewer"):
    newton_schulz_steps.summarize(_result({8: (math.nan, 0.6)}))


def test_synthetic_inputs_have_the_stated_spectrum():
  x = newton_schulz_steps.synthetic((16, 40))
  s = np.linalg.svd(x.astype(np.float64), compute_uv=False)
  np.testing.assert_allclose(s, np.logspace(0, -5, 16), rtol=1e-3)
