"""The default learning rates of :func:`swan_optax.swan` and :func:`swan_optax.sinkgd`.

Each optimizer's ``learning_rate`` is its matrix step (see :func:`swan_optax.swan`); its Adam
group (embeddings, lm_head, norms) steps at ``adam_learning_rate``, by default a fixed ratio
of it. The values are the best of our tuning benchmarks (``train.bench.transfer`` for the
lr and the rule, ``train.bench.adam_group`` for the ratio; the docs' results pages), and the
papers' settings are one keyword away: ``adam_learning_rate=learning_rate`` for both, and
``scale_rule='unit_rms'`` for SinkGD.
"""

from collections.abc import Callable
from typing import Literal

import optax

from swan_optax import _scale

Optimizer = Literal["swan", "sinkgd"]

#: Each optimizer's default matrix step.
LEARNING_RATE: dict[Optimizer, float] = {"swan": 2e-3, "sinkgd": 1.25e-2}
#: Each optimizer's default rule for the step's size per matrix shape.
SCALE_RULE: dict[Optimizer, _scale.ScaleRule] = {"swan": "unit_rms", "sinkgd": "spectral"}
#: The Adam group's lr over the matrix lr, per optimizer and scale rule: the best of a joint
#: grid, or (swan's spectral rule, untuned) the setting its lr was tuned at.
ADAM_LR_RATIO: dict[tuple[Optimizer, _scale.ScaleRule], float] = {
  ("swan", "unit_rms"): 50.0,
  ("swan", "spectral"): 4.4194174,
  ("sinkgd", "unit_rms"): 40.0,
  ("sinkgd", "spectral"): 3.5355339,
}


def adam_learning_rate(
  optimizer: Optimizer, learning_rate: optax.ScalarOrSchedule, scale_rule: _scale.ScaleRule
) -> optax.ScalarOrSchedule:
  """The default Adam-group lr: ``ADAM_LR_RATIO[optimizer, scale_rule] * learning_rate`` (a
  schedule stays a schedule of the same shape)."""
  _scale.check_scale_rule(scale_rule)
  ratio = ADAM_LR_RATIO[optimizer, scale_rule]
  if callable(learning_rate):
    schedule: Callable = learning_rate
    return lambda count: ratio * schedule(count)
  return ratio * learning_rate
