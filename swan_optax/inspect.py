"""Inspection helpers: how each leaf is routed, laid out on a mesh and scaled.

``routing_table`` (re-exported at the top level) prints every leaf's group and matrix view;
these helpers give the same facts as values, for tests and tools.
"""

from swan_optax._scale import shape_scale
from swan_optax._table import Route
from swan_optax._table import whitening_plan

__all__ = ["Route", "shape_scale", "whitening_plan"]
