"""The per-matrix building blocks of the operators, public for benchmarks and research.

Each acts on one ``(fan_in, fan_out)`` matrix (or a batch of them), with no routing: the
polar-factor iterations of :func:`swan_optax.whiten` and their coefficient schedules, the
unit-RMS rescale, GradNorm's standardization and the batch-of-matrices view of a leaf.
"""

from swan_optax._gradnorm import standardize
from swan_optax._matrix import matrix_view
from swan_optax._polar_express import gram_odd_polynomial
from swan_optax._polar_express import polar_express_coefficients
from swan_optax._whiten import DEFAULT_METHOD
from swan_optax._whiten import DEFAULT_PRECISION
from swan_optax._whiten import DEFAULT_STEPS
from swan_optax._whiten import NEWTON_SCHULZ_MAX_STEPS
from swan_optax._whiten import input_precision
from swan_optax._whiten import polar_factor
from swan_optax._whiten import rescale

__all__ = [
  "DEFAULT_METHOD",
  "DEFAULT_PRECISION",
  "DEFAULT_STEPS",
  "NEWTON_SCHULZ_MAX_STEPS",
  "gram_odd_polynomial",
  "input_precision",
  "matrix_view",
  "polar_express_coefficients",
  "polar_factor",
  "rescale",
  "standardize",
]
