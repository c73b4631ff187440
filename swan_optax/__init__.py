"""swan-optax: stateless LLM optimizers (SWAN, SinkGD) as Optax transforms."""

from swan_optax._matrix import MatrixDimensionNumbers

__all__ = [
    "MatrixDimensionNumbers",
]
