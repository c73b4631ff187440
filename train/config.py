"""The run configuration: one frozen ``TrainConfig`` nesting the data and optimizer configs.

Every setting is declared here once, with its default and (in ``Attributes:``) its doc;
the CLI (``train/cli.py``) derives a flag from each field (``train/flags.py``). Each
config checks its own fields when it is built and raises ``ConfigError`` naming the field.
"""

import dataclasses
import math
import pathlib
from typing import Literal

from models import configs
from swan_optax import ScaleRule
from swan_optax import WhiteningMethod
from swan_optax import defaults
from train import flags
from train.data import DataConfig
from train.flags import ConfigError

OptimizerName = Literal["swan", "sinkgd", "muon", "adam", "adamw"]
Schedule = Literal["cosine", "wsd"]
NonMatrix = Literal["adam", "adafactor"]
WhitenLayout = Literal["whole", "param"]
OnNonFinite = Literal["skip", "stop"]
ParamDtype = Literal["float32", "bfloat16"]
SwanOperators = Literal["both", "gradnorm", "whiten"]
# Peak learning rates of the optimizers that have no library default (swan and sinkgd take
# swan_optax.defaults'): optax muon's documented 0.02, and Adam's usual 1e-3.
TRAINER_LR: dict[str, float] = {"muon": 0.02, "adam": 1e-3, "adamw": 1e-3}
# The optimizers with a matrix group and an Adam group whose lr is ``adam_group_lr``.
GROUPED = ("swan", "sinkgd", "muon")
STATELESS = ("swan", "sinkgd")


def _check_choices(config) -> None:
  """Raises for a field whose value is not one of its choices (``Literal`` or metadata)."""
  for field in dataclasses.fields(config):
    allowed, value = flags.choices(field), getattr(config, field.name)
    if allowed is not None and value is not None and value not in allowed:
      raise ConfigError(config, field.name, f"must be one of {list(allowed)}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """The optimizer and its schedule: linear warmup, then a decay to ``final_lr_fraction``.

  Attributes:
    name: swan/sinkgd are stateless on attention and MLP kernels, Adam on the rest;
      muon is ``optax.contrib.muon`` on the same kernels (Nesterov momentum 0.95, its
      default shape scaling ``sqrt(max(1, fan_out / fan_in))``), Adam on the rest.
    lr: peak learning rate of the matrices (swan, sinkgd: the library's
      ``learning_rate``, the step a matrix takes) and of the rest for adam/adamw;
      ``None``: the optimizer's default, ``swan_optax.defaults.LEARNING_RATE`` or
      ``TRAINER_LR``.
    schedule: after the warmup, ``cosine`` decays over the rest of the run; ``wsd``
      (warmup-stable-decay) holds the peak, then decays linearly over the last
      ``decay_fraction`` of the run (Hägele et al., arXiv 2405.18392).
    warmup_fraction: linear warmup, as a fraction of the run's steps.
    warmup_steps: linear warmup in steps, instead of ``warmup_fraction``: runs of
      different lengths then share their warmup (the cooldown branches of a WSD run).
    decay_fraction: wsd: the decay's share of the run (0: no decay, a constant lr).
    final_lr_fraction: the schedule ends at this fraction of the peak.
    weight_decay: decoupled weight decay.
    max_grad_norm: clip gradients to this global norm; ``None``: no clipping.
    adam_b2: Adam's second-moment decay (adam/adamw, and the Adam group of swan/sinkgd/muon).
    adam_group_lr: swan/sinkgd/muon: peak learning rate of the Adam group (embeddings,
      lm_head, norms); ``None``: the library's default, ``swan_optax.defaults``' ratio
      times ``lr`` (muon: ``lr``, optax's).
    embed_lr_scale: adam/adamw: the embedding and lm_head step at this multiple of ``lr``.
    swan_operators: swan's matrix operators: GradNorm then whitening (``both``), or one of
      them alone (an ablation).
    non_matrix: swan/sinkgd: optimizer of embeddings, lm_head and norms (``adafactor``:
      nearly stateless).
    whiten_layout: swan on a mesh: each device whitens its share of whole matrices,
      exchanged by all-to-alls (``whole``: ``swan(shardings=<the params' shardings>)``), or
      the partitioner lays out each parameter's whitening (``param``).
    whiten_method: swan: how the polar factor is computed (``swan(method=...)``).
    scale_rule: swan/sinkgd: the matrix step's size per shape: ``unit_rms`` (the papers':
      RMS ``lr`` for every shape) or ``spectral`` (muP's: spectral norm ``lr sqrt(fan_out /
      fan_in)``); ``None``: the library's, ``swan_optax.defaults.SCALE_RULE``.
  """

  name: OptimizerName = dataclasses.field(default="swan", metadata={"flag": "--optimizer"})
  lr: float | None = dataclasses.field(
    default=None,
    metadata={
      "shown_default": ", ".join(
        f"{k} {v:g}" for k, v in {**defaults.LEARNING_RATE, **TRAINER_LR}.items()
      )
    },
  )
  schedule: Schedule = "cosine"
  warmup_fraction: float = dataclasses.field(default=0.1, metadata={"flag": "--warmup"})
  warmup_steps: int | None = None
  decay_fraction: float = 0.2
  final_lr_fraction: float = 0.1
  weight_decay: float = 0.0
  max_grad_norm: float | None = None
  adam_b2: float = 0.999
  adam_group_lr: float | None = dataclasses.field(
    default=None,
    metadata={
      "shown_default": ", ".join(
        f"{name} {ratio:g} x lr ({rule})" for (name, rule), ratio in defaults.ADAM_LR_RATIO.items()
      )
      + ", muon 1 x lr"
    },
  )
  embed_lr_scale: float = 1.0
  swan_operators: SwanOperators = "both"
  non_matrix: NonMatrix = "adam"
  whiten_layout: WhitenLayout = "whole"
  whiten_method: WhiteningMethod = "polar_express"
  scale_rule: ScaleRule | None = dataclasses.field(
    default=None,
    metadata={"shown_default": ", ".join(f"{k} {v}" for k, v in defaults.SCALE_RULE.items())},
  )

  def __post_init__(self):
    _check_choices(self)
    if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
      raise ConfigError(self, "lr", f"must be a positive number, got {self.lr}")
    if not 0 <= self.warmup_fraction < 1:
      raise ConfigError(self, "warmup_fraction", f"must be in [0, 1), got {self.warmup_fraction}")
    if self.warmup_steps is not None and self.warmup_steps < 0:
      raise ConfigError(self, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
    if not 0 <= self.decay_fraction <= 1:
      raise ConfigError(self, "decay_fraction", f"must be in [0, 1], got {self.decay_fraction}")
    if not 0 <= self.final_lr_fraction <= 1:
      raise ConfigError(
        self, "final_lr_fraction", f"must be in [0, 1], got {self.final_lr_fraction}"
      )
    if not 0 <= self.weight_decay < math.inf:
      raise ConfigError(self, "weight_decay", f"must be a number >= 0, got {self.weight_decay}")
    if self.max_grad_norm is not None and not 0 < self.max_grad_norm < math.inf:
      raise ConfigError(
        self, "max_grad_norm", f"must be a positive number, got {self.max_grad_norm}"
      )
    if not 0 <= self.adam_b2 < 1:
      raise ConfigError(self, "adam_b2", f"must be in [0, 1), got {self.adam_b2}")
    self._check_group_options()

  def _check_group_options(self) -> None:
    """Raises for a per-group option the optimizer ``name`` does not have."""
    stateless = self.name in STATELESS
    grouped = self.name in GROUPED
    if self.adam_group_lr is not None and not (grouped and 0 < self.adam_group_lr < math.inf):
      raise ConfigError(
        self,
        "adam_group_lr",
        f"must be a positive number, for {', '.join(GROUPED)} only; got {self.adam_group_lr} "
        f"with optimizer {self.name}",
      )
    if self.embed_lr_scale != 1 and not (not grouped and 0 < self.embed_lr_scale < math.inf):
      raise ConfigError(
        self,
        "embed_lr_scale",
        f"must be a positive number, for adam or adamw only; got {self.embed_lr_scale} "
        f"with optimizer {self.name}",
      )
    if self.non_matrix != "adam" and not stateless:
      raise ConfigError(
        self, "non_matrix", f"is for swan or sinkgd only, got optimizer {self.name}"
      )
    if self.swan_operators != "both" and self.name != "swan":
      raise ConfigError(self, "swan_operators", f"is for swan only, got optimizer {self.name}")
    if self.effective_scale_rule != "unit_rms" and not stateless:
      raise ConfigError(
        self, "scale_rule", f"is for swan or sinkgd only, got optimizer {self.name}"
      )
    if self.effective_scale_rule != "unit_rms" and self.swan_operators == "gradnorm":
      raise ConfigError(
        self, "scale_rule", "scales the whitening, which swan_operators=gradnorm drops"
      )

  @property
  def peak_lr(self) -> float:
    if self.lr is not None:
      return self.lr
    return defaults.LEARNING_RATE[self.name] if self.name in STATELESS else TRAINER_LR[self.name]

  @property
  def effective_scale_rule(self) -> ScaleRule:
    """``scale_rule``, or the library's (``unit_rms``, a no-op, for the others)."""
    if self.scale_rule is not None:
      return self.scale_rule
    return defaults.SCALE_RULE.get(self.name, "unit_rms")

  @property
  def adam_group_peak_lr(self) -> float:
    """swan/sinkgd/muon: the Adam group's peak learning rate, set or the library's."""
    if self.adam_group_lr is not None:
      return self.adam_group_lr
    if self.name == "muon":
      return self.peak_lr
    return defaults.adam_learning_rate(self.name, self.peak_lr, self.effective_scale_rule)

  @property
  def peak_rates(self) -> dict[str, float]:
    """Each parameter group's peak lr: ``matrix`` (the attention and MLP kernels, as the
    library's ``learning_rate``; adam/adamw: every parameter but the embedding and lm_head)
    and ``adam`` (swan/sinkgd/muon: embeddings, lm_head and norms; adam/adamw: the embedding
    and lm_head)."""
    if self.name in GROUPED:
      return {"matrix": self.peak_lr, "adam": self.adam_group_peak_lr}
    return {"matrix": self.peak_lr, "adam": self.peak_lr * self.embed_lr_scale}


def model_data(model: str, **fields) -> DataConfig:
  """A ``DataConfig`` whose BPE (trained when there is no tokenizer file) has ``model``'s vocab.

  A ``TrainConfig`` does this itself for a ``DataConfig`` whose ``vocab_size`` is ``None``.
  """
  return DataConfig(vocab_size=configs.get_config(model).vocab_size, **fields)


_POSITIVE = (
  "steps batch_size grad_accum eval_every eval_batches log_every checkpoint_every keep_checkpoints"
).split()


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """One training run.

  Attributes:
    model: the ``models.configs.CONFIGS`` preset; its ``max_seq_len`` is ``data.seq_len``.
    bf16: bfloat16 activations.
    param_dtype: dtype of the params and hence of the gradients (``bfloat16``
      with ``bf16``: the papers' pure-BF16 setting). The optimizer computes in
      float32 and keeps float32 state whatever it is (``train/optimizer.py``).
    data: the corpus, tokenizer and sequence length; a ``data.vocab_size`` of ``None``
      becomes the model's.
    optimizer: the optimizer and schedule.
    steps: optimizer steps.
    batch_size: global batch, in sequences.
    grad_accum: micro-batches per step.
    eval_every: steps between validation runs.
    eval_batches: validation batches per run.
    log_every: steps between train-metric records.
    checkpoint_every: steps between checkpoints.
    keep_checkpoints: checkpoints kept.
    out: run folder; ``None``: ``runs/MODEL-OPTIMIZER``.
    tensorboard: also write metrics to ``out/tensorboard`` (tensorboardX).
    mesh: e.g. ``data=2,fsdp=2,tensor=2``; ``None``: every device on data.
    seed: init and data-order seed.
    resume: continue from the last checkpoint in ``out``.
    on_nonfinite: a NaN/Inf loss or gradient: skip that update, or stop.
  """

  model: str = dataclasses.field(
    default="tiny", metadata={"flag": "--config", "choices": tuple(sorted(configs.CONFIGS))}
  )
  bf16: bool = False
  param_dtype: ParamDtype = "float32"
  data: DataConfig = DataConfig()
  optimizer: OptimizerConfig = OptimizerConfig()
  steps: int = 300
  batch_size: int = 16
  grad_accum: int = 1
  eval_every: int = 50
  eval_batches: int = 8
  log_every: int = 10
  checkpoint_every: int = 100
  keep_checkpoints: int = 3
  out: pathlib.Path | None = None
  tensorboard: bool = False
  mesh: str | None = None
  seed: int = 0
  resume: bool = False
  on_nonfinite: OnNonFinite = "skip"

  def __post_init__(self):
    for name in _POSITIVE:
      if getattr(self, name) < 1:
        raise ConfigError(self, name, f"must be >= 1, got {getattr(self, name)}")
    _check_choices(self)
    if self.data.vocab_size is None:
      vocab_size = configs.get_config(self.model).vocab_size
      # Frozen: the one place a None vocab becomes the model's, before anything reads it.
      object.__setattr__(self, "data", dataclasses.replace(self.data, vocab_size=vocab_size))

  @property
  def model_config(self) -> configs.LlamaConfig:
    """The model preset, at this run's sequence length, activation and param dtypes."""
    return configs.get_config(
      self.model,
      max_seq_len=self.data.seq_len,
      dtype="bfloat16" if self.bf16 else "float32",
      param_dtype=self.param_dtype,
    )

  @property
  def run_dir(self) -> pathlib.Path:
    return self.out or pathlib.Path("runs") / f"{self.model}-{self.optimizer.name}"

  @property
  def tokens_per_step(self) -> int:
    return self.batch_size * self.data.seq_len
