"""swan-optax: stateless LLM optimizers (SWAN, SinkGD) as Optax transforms."""

from swan_optax import defaults
from swan_optax import inspect
from swan_optax import primitives
from swan_optax._alias import sinkgd
from swan_optax._alias import stateless_partition
from swan_optax._alias import swan
from swan_optax._gradnorm import gradnorm
from swan_optax._labels import DEFAULT_ADAM_PATTERN
from swan_optax._labels import param_labels
from swan_optax._layouts import dimension_numbers_from_einsum
from swan_optax._layouts import dimension_numbers_from_model
from swan_optax._matrix import MatrixDimensionNumbers
from swan_optax._scale import ScaleRule
from swan_optax._sinkhorn import sinkhorn
from swan_optax._table import routing_table
from swan_optax._trace import dimension_numbers_from_fn
from swan_optax._whiten import WhiteningMethod
from swan_optax._whiten import whiten

__all__ = [
  "DEFAULT_ADAM_PATTERN",
  "defaults",
  "inspect",
  "primitives",
  "MatrixDimensionNumbers",
  "dimension_numbers_from_einsum",
  "dimension_numbers_from_fn",
  "dimension_numbers_from_model",
  "gradnorm",
  "param_labels",
  "routing_table",
  "ScaleRule",
  "sinkgd",
  "sinkhorn",
  "stateless_partition",
  "swan",
  "whiten",
  "WhiteningMethod",
]
