"""One config per optimizer, each the settings of one library call, sharing the schedule's.

``OptimizerConfig`` is the tagged union ``SwanConfig | SinkGDConfig | MuonConfig |
AdamConfig | AdamWConfig``, told apart by ``name``. A config has only the settings its
optimizer takes, so a setting of another one cannot be passed (``--embed-lr-scale`` with
``--optimizer swan`` is an error naming the optimizers that have it), and its defaults are its
own: SWAN's and SinkGD's from ``swan_optax.defaults``, optax Muon's 0.02 and Adam's 2e-3.
Each builds its optimizer with ``make`` from the run's schedule (``train/optimizer.py``).
"""

import dataclasses
import functools
import math
import re
from collections.abc import Callable
from typing import Any
from typing import Literal

import jax
import optax

import swan_optax
from swan_optax import ScaleRule
from swan_optax import WhiteningMethod
from swan_optax import defaults
from train import flags
from train.flags import ConfigError

Schedule = Literal["cosine", "wsd"]
NonMatrix = Literal["adam", "adafactor"]
WhitenLayout = Literal["whole", "param"]
SwanOperators = Literal["both", "gradnorm", "whiten"]
# The run's schedule at a peak lr: every group of an optimizer shares its shape.
PeakSchedule = Callable[[float], optax.Schedule]


def _check_positive(config, name: str) -> None:
  value = getattr(config, name)
  if value is not None and not (value > 0 and math.isfinite(value)):
    raise ConfigError(config, name, f"must be a positive number, got {value}")


def _check_range(config, name: str, low: float, high: float, closed_high: bool = True) -> None:
  value = getattr(config, name)
  if not (low <= value <= high if closed_high else low <= value < high):
    bracket = "]" if closed_high else ")"
    raise ConfigError(config, name, f"must be in [{low:g}, {high:g}{bracket}, got {value}")


@dataclasses.dataclass(frozen=True)
class _Optimizer:
  """The schedule and the settings every optimizer shares.

  Attributes:
    schedule: after the warmup, ``cosine`` decays over the rest of the run; ``wsd``
      (warmup-stable-decay) holds the peak, then decays linearly over the last
      ``decay_fraction`` of the run (Hägele et al., arXiv 2405.18392).
    warmup_fraction: linear warmup, as a fraction of the run's steps.
    warmup_steps: linear warmup in steps, instead of ``warmup_fraction``: runs of
      different lengths then share their warmup (the cooldown branches of a WSD run).
    decay_fraction: wsd: the decay's share of the run (0: no decay, a constant lr).
    final_lr_fraction: the schedule ends at this fraction of the peak.
    max_grad_norm: clip gradients to this global norm; ``None``: no clipping.
    adam_b2: Adam's second-moment decay (Adam's own, or that of the Adam group).
  """

  schedule: Schedule = "cosine"
  warmup_fraction: float = dataclasses.field(default=0.1, metadata={"flag": "--warmup"})
  warmup_steps: int | None = None
  decay_fraction: float = 0.2
  final_lr_fraction: float = 0.1
  max_grad_norm: float | None = None
  adam_b2: float = 0.999

  def __post_init__(self):
    flags.check_choices(self)
    _check_positive(self, "lr")
    _check_range(self, "warmup_fraction", 0, 1, closed_high=False)
    if self.warmup_steps is not None and self.warmup_steps < 0:
      raise ConfigError(self, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
    _check_range(self, "decay_fraction", 0, 1)
    _check_range(self, "final_lr_fraction", 0, 1)
    _check_positive(self, "max_grad_norm")
    _check_range(self, "adam_b2", 0, 1, closed_high=False)

  @property
  def peak_rates(self) -> dict[str, float]:
    """Each parameter group's peak lr: ``matrix`` (the attention and MLP kernels; Adam:
    every parameter but the embedding and lm_head) and ``adam`` (the Adam group:
    embeddings, lm_head and norms; Adam: the embedding and lm_head)."""
    raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class _Grouped(_Optimizer):
  """An optimizer of the matrices with Adam on the other leaves.

  Attributes:
    weight_decay: decoupled weight decay, of the matrices and of the Adam group.
    adam_group_lr: peak learning rate of the Adam group (embeddings, lm_head, norms);
      ``None``: the optimizer's default multiple of ``lr``.
  """

  weight_decay: float = 0.0
  adam_group_lr: float | None = None

  def __post_init__(self):
    super().__post_init__()
    _check_range(self, "weight_decay", 0, math.inf, closed_high=False)
    _check_positive(self, "adam_group_lr")

  @property
  def adam_group_peak_lr(self) -> float:
    """The Adam group's peak lr: ``adam_group_lr``, or the optimizer's default."""
    return self.default_adam_group_lr if self.adam_group_lr is None else self.adam_group_lr

  @property
  def default_adam_group_lr(self) -> float:
    raise NotImplementedError

  def adam_schedule(self, schedule: PeakSchedule) -> optax.Schedule | None:
    """The Adam group's schedule at ``adam_group_lr``; ``None`` (unset): the library's."""
    return None if self.adam_group_lr is None else schedule(self.adam_group_lr)

  @property
  def peak_rates(self) -> dict[str, float]:
    return {"matrix": self.lr, "adam": self.adam_group_peak_lr}


@dataclasses.dataclass(frozen=True)
class _Stateless(_Grouped):
  """SWAN or SinkGD: stateless on the matrices.

  Attributes:
    non_matrix: optimizer of embeddings, lm_head and norms (``adafactor``: nearly stateless).
  """

  non_matrix: NonMatrix = "adam"

  @property
  def default_adam_group_lr(self) -> float:
    return defaults.adam_learning_rate(self.name, self.lr, self.scale_rule)

  def partition_args(self, schedule: PeakSchedule, dims: Any) -> dict[str, Any]:
    """The keywords ``swan`` and ``sinkgd`` share: the Adam group and the routing."""
    return {
      "adam_learning_rate": self.adam_schedule(schedule),
      "dimension_numbers": dims,
      "non_matrix": self._non_matrix_optimizer(),
      "weight_decay": self.weight_decay,
    }

  def _non_matrix_optimizer(self) -> Callable[[optax.Schedule], optax.GradientTransformation]:
    """The library's ``non_matrix=``: AdamW (b2 ``adam_b2``) or Adafactor."""
    if self.non_matrix == "adafactor":
      return functools.partial(
        optax.adafactor,
        multiply_by_parameter_scale=False,
        weight_decay_rate=self.weight_decay or None,
      )
    return functools.partial(optax.adamw, b2=self.adam_b2, weight_decay=self.weight_decay)


@dataclasses.dataclass(frozen=True)
class SwanConfig(_Stateless):
  """SWAN, ``swan_optax.swan``: GradNorm and whitening on the matrices, Adam on the rest.

  Attributes:
    name: the optimizer.
    lr: peak learning rate of the matrices, the library's ``learning_rate``.
    scale_rule: the matrix step's size per shape: ``unit_rms`` (the papers': RMS ``lr``
      for every shape) or ``spectral`` (muP's: spectral norm ``lr sqrt(fan_out / fan_in)``).
    swan_operators: the matrix operators: GradNorm then whitening (``both``), or one of
      them alone (an ablation).
    whiten_method: how the polar factor is computed (``swan(method=...)``).
    whiten_steps: iterations of ``whiten_method`` (``swan(ns_steps=...)``); ``None``: the
      method's default.
    whiten_layout: on a mesh, each device whitens its share of whole matrices, exchanged
      by all-to-alls (``whole``: ``swan(shardings=<the params' shardings>)``), or the
      partitioner lays out each parameter's whitening (``param``).
  """

  name: Literal["swan"] = dataclasses.field(default="swan", metadata={"flag": "--optimizer"})
  lr: float = defaults.LEARNING_RATE["swan"]
  scale_rule: ScaleRule = defaults.SCALE_RULE["swan"]
  swan_operators: SwanOperators = "both"
  whiten_method: WhiteningMethod = swan_optax.primitives.DEFAULT_METHOD
  whiten_steps: int | None = None
  whiten_layout: WhitenLayout = "whole"

  def __post_init__(self):
    super().__post_init__()
    if self.whiten_steps is not None and self.whiten_steps < 1:
      raise ConfigError(self, "whiten_steps", f"must be >= 1, got {self.whiten_steps}")
    if self.swan_operators == "gradnorm" and self.scale_rule != "unit_rms":
      raise ConfigError(
        self, "scale_rule", "scales the whitening, which swan_operators=gradnorm drops"
      )

  def make(self, schedule: PeakSchedule, dims: Any, shardings: Any) -> optax.GradientTransformation:
    """``swan_optax.swan``, every group on ``schedule``."""
    return swan_optax.swan(
      schedule(self.lr),
      operators=self.swan_operators,
      method=self.whiten_method,
      ns_steps=self.whiten_steps,
      scale_rule=self.scale_rule,
      shardings=shardings if self.whiten_layout == "whole" else None,
      **self.partition_args(schedule, dims),
    )


@dataclasses.dataclass(frozen=True)
class SinkGDConfig(_Stateless):
  """SinkGD, ``swan_optax.sinkgd``: SR-Sinkhorn on the matrices, Adam on the rest.

  Attributes:
    name: the optimizer.
    lr: peak learning rate of the matrices, the library's ``learning_rate``.
    scale_rule: the matrix step's size per shape: ``unit_rms`` or ``spectral``.
  """

  name: Literal["sinkgd"] = dataclasses.field(default="sinkgd", metadata={"flag": "--optimizer"})
  lr: float = defaults.LEARNING_RATE["sinkgd"]
  scale_rule: ScaleRule = defaults.SCALE_RULE["sinkgd"]

  def make(self, schedule: PeakSchedule, dims: Any, shardings: Any) -> optax.GradientTransformation:
    """``swan_optax.sinkgd``, every group on ``schedule``."""
    del shardings  # SR-Sinkhorn reduces rows and columns: the partitioner lays it out
    return swan_optax.sinkgd(
      schedule(self.lr),
      scale_rule=self.scale_rule,
      **self.partition_args(schedule, dims),
    )


@dataclasses.dataclass(frozen=True)
class MuonConfig(_Grouped):
  """Muon, ``optax.contrib.muon``, on the kernels SWAN and SinkGD would take, Adam on the rest.

  Its own defaults otherwise: Nesterov momentum 0.95, 5 quintic Newton-Schulz steps, updates
  scaled by ``sqrt(max(1, fan_out / fan_in))``; its Adam group (AdamW with Nesterov) at
  ``lr`` unless ``adam_group_lr`` is set, as in optax.

  Attributes:
    name: the optimizer.
    lr: peak learning rate of the matrices (optax muon's documented 0.02).
  """

  name: Literal["muon"] = dataclasses.field(default="muon", metadata={"flag": "--optimizer"})
  lr: float = 0.02

  @property
  def default_adam_group_lr(self) -> float:
    return self.lr

  def make(self, schedule: PeakSchedule, dims: Any, shardings: Any) -> optax.GradientTransformation:
    """``optax.contrib.muon``, every group on ``schedule``; ``dims`` must be a tree, as
    muon's labels read its structure."""
    del shardings
    if dims is None or callable(dims):
      raise ValueError("muon needs the params' dimension numbers as a tree")
    return optax.contrib.muon(
      schedule(self.lr),
      beta=0.95,
      weight_decay=self.weight_decay,
      adam_b2=self.adam_b2,
      adam_weight_decay=self.weight_decay,
      adam_learning_rate=self.adam_schedule(schedule),
      muon_weight_dimension_numbers=muon_dimension_numbers(dims),
    )


@dataclasses.dataclass(frozen=True)
class AdamConfig(_Optimizer):
  """Adam, ``optax.adam``, on every parameter.

  Attributes:
    name: the optimizer.
    lr: peak learning rate (by default Adam's best lr at 0.25x, 0.5x and 1x Chinchilla on
      tiny-w64 with b2 0.95, and at 240 steps on widths 128 and 256 with b2 0.999).
    embed_lr_scale: the embedding and lm_head step at this multiple of ``lr``.
  """

  name: Literal["adam"] = dataclasses.field(default="adam", metadata={"flag": "--optimizer"})
  lr: float = 2e-3
  embed_lr_scale: float = 1.0

  def __post_init__(self):
    super().__post_init__()
    _check_positive(self, "embed_lr_scale")

  @property
  def peak_rates(self) -> dict[str, float]:
    return {"matrix": self.lr, "adam": self.lr * self.embed_lr_scale}

  def make(self, schedule: PeakSchedule, dims: Any, shardings: Any) -> optax.GradientTransformation:
    """``optax.adam`` on ``schedule``, the embedding and lm_head scaled by ``embed_lr_scale``."""
    del dims, shardings
    return self._embed_scaled(optax.adam(schedule(self.lr), b2=self.adam_b2))

  def _embed_scaled(self, tx: optax.GradientTransformation) -> optax.GradientTransformation:
    if self.embed_lr_scale == 1:
      return tx
    return optax.chain(tx, optax.masked(optax.scale(self.embed_lr_scale), _embed_mask))


@dataclasses.dataclass(frozen=True)
class AdamWConfig(AdamConfig):
  """AdamW, ``optax.adamw``, on every parameter.

  Attributes:
    name: the optimizer.
    weight_decay: decoupled weight decay.
  """

  name: Literal["adamw"] = dataclasses.field(default="adamw", metadata={"flag": "--optimizer"})
  weight_decay: float = 0.0

  def __post_init__(self):
    super().__post_init__()
    _check_range(self, "weight_decay", 0, math.inf, closed_high=False)

  def make(self, schedule: PeakSchedule, dims: Any, shardings: Any) -> optax.GradientTransformation:
    """``optax.adamw`` on ``schedule``, the embedding and lm_head scaled by ``embed_lr_scale``."""
    del dims, shardings
    adamw = optax.adamw(schedule(self.lr), b2=self.adam_b2, weight_decay=self.weight_decay)
    return self._embed_scaled(adamw)


OptimizerConfig = SwanConfig | SinkGDConfig | MuonConfig | AdamConfig | AdamWConfig
OPTIMIZERS: dict[str, type[OptimizerConfig]] = {
  cls.__dataclass_fields__["name"].default: cls
  for cls in (SwanConfig, SinkGDConfig, MuonConfig, AdamConfig, AdamWConfig)
}


def optimizer_config(name: str, **fields: Any) -> OptimizerConfig:
  """The config of optimizer ``name`` with ``fields`` set; a field it does not have raises,
  naming the optimizers that have it."""
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}; choose one of {list(OPTIMIZERS)}")
  cls = OPTIMIZERS[name]
  own = {f.name for f in dataclasses.fields(cls)}
  for field in fields.keys() - own:
    having = [n for n, c in OPTIMIZERS.items() if field in c.__dataclass_fields__]
    raise ValueError(f"{field} is a setting of {', '.join(having) or 'no optimizer'}, not {name}")
  return cls(**fields)


def muon_dimension_numbers(dims: Any) -> Any:
  """``dims`` (a tree of ``swan_optax.MatrixDimensionNumbers``) as optax muon's: a leaf keeps
  its layout where swan and sinkgd would whiten or balance it, and is ``None`` (muon's Adam)
  where its layout is ``None`` or its key path matches ``swan_optax.DEFAULT_ADAM_PATTERN``
  (the embedding, lm_head and norms)."""
  pattern = re.compile(swan_optax.DEFAULT_ADAM_PATTERN)
  is_dims = lambda x: x is None or isinstance(x, swan_optax.MatrixDimensionNumbers)

  def to_muon(path, d):
    if d is None or pattern.search(jax.tree_util.keystr(path).lower()):
      return None
    return optax.contrib.MuonDimensionNumbers(d.reduction_axes, d.output_axes)

  return jax.tree_util.tree_map_with_path(to_muon, dims, is_leaf=is_dims)


def _embed_mask(params) -> object:
  """True on the embedding and lm_head leaves."""
  return jax.tree_util.tree_map_with_path(
    lambda path, _: bool(re.search(r"embed|lm_head", jax.tree_util.keystr(path).lower())), params
  )
