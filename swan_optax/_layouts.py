"""Dimension numbers derived from a model: NNX modules and einsum strings.

A kernel's matrix view follows from how the layer uses it. In an einsum
``'<input>,<kernel>-><output>'``, a kernel axis contracted with the input is
fan_in, one that only reaches the output is fan_out, and one shared by the
input and the output is a batch axis (an independent matrix per entry).
``nnx.Linear`` is ``(in, out)``; ``nnx.LinearGeneral`` is ``(*batch, *in,
*out)``. Axes that ``nnx.vmap`` stacking puts in front of a kernel are batch
axes: each layer is its own matrix.
"""

from collections.abc import Mapping
from typing import Any
from typing import Literal

import jax
import numpy as np
from flax import nnx

from swan_optax import _matrix

FusedAxis = Literal["batch", "fan_out"]

# Layers whose params (embeddings, scales, biases; stacked or not) train with Adam.
_ADAM_LAYERS = (
  nnx.Embed,
  nnx.LayerNorm,
  nnx.RMSNorm,
  nnx.GroupNorm,
  nnx.BatchNorm,
  nnx.Linear,
  nnx.LinearGeneral,
  nnx.Einsum,
)


def dimension_numbers_from_einsum(
  einsum_str: str, *, stacked_axes: int = 0, fused: FusedAxis = "batch"
) -> _matrix.MatrixDimensionNumbers:
  """The matrix view of the kernel of ``jnp.einsum(einsum_str, inputs, kernel)``.

  A kernel axis contracted with the input is fan_in, an axis that only reaches
  the output is fan_out, an axis the input and output share is a batch axis.
  One exception, fused projections (flax gemma's ``'BSD,CKDH->CBSKH'`` k/v and
  ``'BTD,SNDH->SBTNH'`` q/k/v kernels): a first kernel axis that only reaches
  the output and comes, in the output, before every axis of the input is the
  fused axis. With ``fused='batch'`` (default) it is a batch axis, so q, k and v
  are whitened or normalized as separate matrices, exactly as the same model
  with three unfused kernels (and as microsoft/dion splits them): each
  projection keeps its own unit-RMS step instead of sharing one polar factor
  and one rescale with the others. ``fused='fan_out'`` makes it part of fan_out (one
  matrix ``(D, 3 * N * H)``, as a single fused ``nn.Linear`` would be treated).

  Args:
    einsum_str: the layer's einsum, input first and kernel second, e.g.
      ``'BLD,DHK->BLHK'``; ``...`` may stand for the input's leading axes.
    stacked_axes: leading axes that layer stacking (``nnx.vmap``, ``nn.scan``)
      added in front of the kernel; they are batch axes.
    fused: how a fused-projection axis (see above) enters the matrix view.

  Returns:
    The kernel's :class:`MatrixDimensionNumbers`.

  Examples:
    >>> import swan_optax
    >>> swan_optax.dimension_numbers_from_einsum('BLD,DHK->BLHK')  # attention q
    MatrixDimensionNumbers(reduction_axes=(0,), output_axes=(1, 2))
    >>> swan_optax.dimension_numbers_from_einsum('BLHK,HKD->BLD', stacked_axes=1)
    MatrixDimensionNumbers(reduction_axes=(1, 2), output_axes=(3,))
    >>> swan_optax.dimension_numbers_from_einsum('BSD,CKDH->CBSKH')  # fused k/v
    MatrixDimensionNumbers(reduction_axes=(2,), output_axes=(1, 3))
    >>> swan_optax.dimension_numbers_from_einsum('BSD,CKDH->CBSKH', fused='fan_out')
    MatrixDimensionNumbers(reduction_axes=(2,), output_axes=(0, 1, 3))
  """
  inputs, kernel, output = _parse_einsum(einsum_str)
  if fused not in ("batch", "fan_out"):
    raise ValueError(f"fused={fused!r}: choose 'batch' or 'fan_out'")
  reduction, fan_out = [], []
  for axis, letter in enumerate(kernel):
    if letter in inputs and letter not in output:
      reduction.append(stacked_axes + axis)
    elif letter in output and letter not in inputs:
      if not (fused == "batch" and axis == 0 and _leads_output(letter, inputs, output)):
        fan_out.append(stacked_axes + axis)
    elif letter not in inputs:
      raise ValueError(
        f"einsum {einsum_str!r}: kernel axis {letter!r} reaches neither the input nor the output"
      )
  if not reduction or not fan_out:
    raise ValueError(
      f"einsum {einsum_str!r} has no fan_in or no fan_out kernel axis, so the kernel is not a "
      "matrix: send it to Adam (None in dimension_numbers)"
    )
  return _matrix.MatrixDimensionNumbers(tuple(reduction), tuple(fan_out))


def _parse_einsum(einsum_str: str) -> tuple[str, str, str]:
  """``(input, kernel, output)`` axis letters of a two-operand einsum, ``...`` removed."""
  spec = einsum_str.replace(" ", "")
  lhs, arrow, output = spec.partition("->")
  operands = lhs.split(",")
  if not arrow or len(operands) != 2:
    raise ValueError(
      f"einsum {einsum_str!r}: expected 'INPUT,KERNEL->OUTPUT' with an explicit output"
    )
  inputs, kernel = operands
  if "." in kernel or len(set(kernel)) != len(kernel):
    raise ValueError(f"einsum {einsum_str!r}: the kernel needs distinct axis letters, no '...'")
  return inputs.replace("...", ""), kernel, output.replace("...", "")


def _leads_output(letter: str, inputs: str, output: str) -> bool:
  """Whether ``letter`` comes before every input axis in the output (a fused axis)."""
  from_input = [output.index(a) for a in inputs if a in output]
  return bool(from_input) and output.index(letter) < min(from_input)


def dimension_numbers_from_model(
  model: nnx.Module,
  *,
  fused: FusedAxis = "batch",
  overrides: Mapping[str, _matrix.MatrixDimensionNumbers | None] | None = None,
) -> dict[str, Any]:
  """Dimension numbers for every ``nnx.Param`` of an NNX model, from its layers.

  ``nnx.Linear`` kernels are ``(in, out)``, ``nnx.LinearGeneral`` kernels
  ``(*batch, *in, *out)``, ``nnx.Einsum`` kernels follow their einsum string
  (see :func:`dimension_numbers_from_einsum`), and leading axes that
  ``nnx.vmap`` stacking added are batch axes. Embeddings, norm scales, biases
  and other leaves of rank < 2 get ``None`` (Adam).

  The result is a nested dict like ``nnx.to_pure_dict(nnx.state(model,
  nnx.Param))``; pass it as ``dimension_numbers=`` to :func:`swan` or
  :func:`sinkgd`. Paths match with or without Flax's trailing ``value``, so it
  also fits the ``nnx.State`` that ``nnx.Optimizer(model, tx, wrt=nnx.Param)``
  hands to the optimizer.

  Args:
    model: the NNX module (abstract, from ``nnx.eval_shape``, works too).
    fused: how a fused q/k/v axis of an ``nnx.Einsum`` kernel enters the
      matrix view, see :func:`dimension_numbers_from_einsum`.
    overrides: ``{path: dims or None}`` for params of other layers, with paths
      as :func:`routing_table` prints them (e.g. ``'layers/conv/kernel'``);
      also replaces a derived entry.

  Returns:
    A dict tree of :class:`MatrixDimensionNumbers` or ``None``, one per param.

  Raises:
    ValueError: naming a param of rank >= 2 whose layer is not one of the
      above and that ``overrides`` does not give, or a kernel whose shape does
      not end with its layer's kernel shape.

  Examples:
    >>> from flax import nnx
    >>> import swan_optax
    >>> class Mlp(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.up = nnx.Linear(4, 8, rngs=rngs)
    ...     self.out = nnx.LinearGeneral(8, (2, 3), rngs=rngs)
    >>> dims = swan_optax.dimension_numbers_from_model(Mlp(nnx.Rngs(0)))
    >>> dims['up']
    {'bias': None, 'kernel': MatrixDimensionNumbers(reduction_axes=(0,), output_axes=(1,))}
    >>> dims['out']['kernel']
    MatrixDimensionNumbers(reduction_axes=(0,), output_axes=(1, 2))
  """
  if not isinstance(model, nnx.Module):
    raise TypeError(
      f"dimension_numbers_from_model reads NNX modules, got {type(model).__name__}: for linen, "
      "equinox, haiku or any function of the params, trace it with "
      "swan_optax.dimension_numbers_from_fn(lambda p, x: ..., params, example_input)"
    )
  overrides = dict(overrides or {})
  modules = {tuple(map(str, p)): m for p, m in nnx.iter_graph(model) if isinstance(m, nnx.Module)}
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  unknown = set(overrides) - {_matrix.path_str(p) for p, _ in _flatten(params)}
  if unknown:
    raise ValueError(f"overrides name {sorted(unknown)}, which are not params of the model")

  def dims(path, leaf):
    key = _matrix.path_str(path)
    *module_path, name = (str(k.key) for k in path)
    module = modules.get(tuple(module_path))
    if key in overrides:
      return overrides[key]
    if name == "kernel" and isinstance(module, (nnx.Linear, nnx.LinearGeneral)):
      return _dense_dims(key, module, np.shape(leaf))
    if name == "kernel" and isinstance(module, nnx.Einsum):
      stacked = _stacked_axes(key, np.shape(leaf), tuple(module.kernel_shape))
      return dimension_numbers_from_einsum(module.einsum_str, stacked_axes=stacked, fused=fused)
    if isinstance(module, _ADAM_LAYERS) or np.ndim(leaf) < 2:
      return None
    raise ValueError(
      f"param '{key}' with shape {np.shape(leaf)} is not the kernel of an nnx.Linear, "
      "nnx.LinearGeneral or nnx.Einsum, so its layout is unknown: give it with "
      f"overrides={{'{key}': MatrixDimensionNumbers(...)}} (or None to train it with Adam)"
    )

  return jax.tree_util.tree_map_with_path(dims, params)


def _flatten(tree: Any) -> list[tuple[tuple[Any, ...], Any]]:
  return jax.tree_util.tree_flatten_with_path(tree)[0]


def _dense_dims(
  key: str, module: nnx.Module, shape: tuple[int, ...]
) -> _matrix.MatrixDimensionNumbers:
  """``(*stacked, *batch, *in, *out)`` kernels of ``nnx.Linear`` and ``nnx.LinearGeneral``."""
  if isinstance(module, nnx.Linear):
    batch, fan_in, fan_out = (), (module.in_features,), (module.out_features,)
  else:
    batch = tuple(module.batch_axis.values())
    fan_in, fan_out = module.in_features, module.out_features
  start = _stacked_axes(key, shape, batch + fan_in + fan_out) + len(batch)
  split = start + len(fan_in)
  return _matrix.MatrixDimensionNumbers(
    tuple(range(start, split)), tuple(range(split, split + len(fan_out)))
  )


def _stacked_axes(key: str, shape: tuple[int, ...], kernel_shape: tuple[int, ...]) -> int:
  """How many leading stacking axes ``shape`` has in front of the layer's ``kernel_shape``."""
  stacked = len(shape) - len(kernel_shape)
  if stacked < 0 or tuple(shape[stacked:]) != kernel_shape:
    raise ValueError(
      f"kernel '{key}' has shape {tuple(shape)}, which does not end "
      f"with its layer's kernel shape {kernel_shape} (stacked axes must lead): give its layout "
      "with overrides="
    )
  return stacked
