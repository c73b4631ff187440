"""The run configuration: one frozen ``TrainConfig`` nesting the model, data and optimizer configs.

Every setting has its one default here; the CLI (``train/cli.py``) only maps
flags onto these fields, and each config checks its own fields when it is
built, naming the flag to change.
"""

import dataclasses
import math
import pathlib
from typing import Literal
from typing import get_args

from models import configs
from swan_optax import WhiteningMethod
from train.data import DataConfig

OptimizerName = Literal["swan", "sinkgd", "adam", "adamw"]
NonMatrix = Literal["adam", "adafactor"]
WhitenLayout = Literal["whole", "param"]
OnNonFinite = Literal["skip", "stop"]
ParamDtype = Literal["float32", "bfloat16"]
SwanOperators = Literal["both", "gradnorm", "whiten"]
# Peak learning rates of the benchmark protocol: 1e-3 for Adam and SWAN (SWAN paper, LLaMA
# pretraining); SinkGD's is global, its matrix group steps 0.05x this (SinkGD paper).
DEFAULT_LR: dict[str, float] = {"swan": 1e-3, "sinkgd": 0.02, "adam": 1e-3, "adamw": 1e-3}


def _check_choice(flag: str, value: str, choices: type) -> None:
  if value not in get_args(choices):
    raise ValueError(f"{flag} must be one of {get_args(choices)}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """The optimizer and its schedule: linear warmup, cosine decay to ``final_lr_fraction``.

  Attributes:
    name: swan/sinkgd are stateless on attention and MLP kernels, Adam on the rest.
    lr: peak learning rate; ``None``: ``DEFAULT_LR[name]``.
    warmup_fraction: linear warmup, as a fraction of the run's steps.
    final_lr_fraction: the cosine ends at this fraction of the peak.
    weight_decay: decoupled weight decay.
    max_grad_norm: clip gradients to this global norm; ``None``: no clipping.
    adam_b2: Adam's second-moment decay (adam/adamw, and the Adam group of swan/sinkgd).
    adam_group_lr: swan/sinkgd: peak learning rate of the Adam group; ``None``: ``lr``.
    embed_lr_scale: adam/adamw: the embedding and lm_head step at this multiple of ``lr``.
    swan_operators: swan's matrix operators: GradNorm then whitening (``both``), or one of
      them alone (an ablation).
    non_matrix: swan/sinkgd: optimizer of embeddings, lm_head and norms (``adafactor``:
      nearly stateless).
    whiten_layout: swan on a mesh: each device whitens its share of whole matrices,
      exchanged by all-to-alls (``whole``: ``swan(mesh=mesh)``), or the partitioner lays
      out each parameter's whitening (``param``: ``mesh=None``).
    whiten_method: swan: how the polar factor is computed (``swan(method=...)``).
  """

  name: OptimizerName = "swan"
  lr: float | None = None
  warmup_fraction: float = 0.1
  final_lr_fraction: float = 0.1
  weight_decay: float = 0.0
  max_grad_norm: float | None = None
  adam_b2: float = 0.999
  adam_group_lr: float | None = None
  embed_lr_scale: float = 1.0
  swan_operators: SwanOperators = "both"
  non_matrix: NonMatrix = "adam"
  whiten_layout: WhitenLayout = "whole"
  whiten_method: WhiteningMethod = "newton_schulz"

  def __post_init__(self):
    _check_choice("--optimizer", self.name, OptimizerName)
    _check_choice("--non-matrix", self.non_matrix, NonMatrix)
    _check_choice("--whiten-layout", self.whiten_layout, WhitenLayout)
    _check_choice("--whiten-method", self.whiten_method, WhiteningMethod)
    _check_choice("swan_operators", self.swan_operators, SwanOperators)
    if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
      raise ValueError(f"--lr must be a positive number, got {self.lr}")
    if not 0 <= self.warmup_fraction < 1:
      raise ValueError(f"--warmup must be in [0, 1), got {self.warmup_fraction}")
    if not 0 <= self.final_lr_fraction <= 1:
      raise ValueError(f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction}")
    if not 0 <= self.weight_decay < math.inf:
      raise ValueError(f"--weight-decay must be a number >= 0, got {self.weight_decay}")
    if self.max_grad_norm is not None and not 0 < self.max_grad_norm < math.inf:
      raise ValueError(f"--max-grad-norm must be a positive number, got {self.max_grad_norm}")
    if not 0 <= self.adam_b2 < 1:
      raise ValueError(f"--adam-b2 must be in [0, 1), got {self.adam_b2}")
    self._check_group_options()

  def _check_group_options(self) -> None:
    """Raises for a per-group option the optimizer ``name`` does not have."""
    stateless = self.name in ("swan", "sinkgd")
    if self.adam_group_lr is not None and not (stateless and 0 < self.adam_group_lr < math.inf):
      raise ValueError(
        f"adam_group_lr must be a positive number, for swan or sinkgd only; got "
        f"{self.adam_group_lr} with --optimizer {self.name}"
      )
    if self.embed_lr_scale != 1 and not (not stateless and 0 < self.embed_lr_scale < math.inf):
      raise ValueError(
        f"embed_lr_scale must be a positive number, for adam or adamw only; got "
        f"{self.embed_lr_scale} with --optimizer {self.name}"
      )
    if self.swan_operators != "both" and self.name != "swan":
      raise ValueError(f"swan_operators is for --optimizer swan only, got {self.name}")

  @property
  def peak_lr(self) -> float:
    return DEFAULT_LR[self.name] if self.lr is None else self.lr


def model_data(model: str, **fields) -> DataConfig:
  """A ``DataConfig`` whose BPE (trained when there is no tokenizer file) has ``model``'s vocab."""
  return DataConfig(vocab_size=configs.get_config(model).vocab_size, **fields)


_DEFAULT_MODEL = "tiny"
_POSITIVE = ("steps", "batch_size", "grad_accum", "eval_every", "eval_batches", "log_every",
             "checkpoint_every", "keep_checkpoints")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """One training run.

  Attributes:
    model: name of a ``models.configs.CONFIGS`` preset; its ``max_seq_len`` is
      ``data.seq_len``.
    bf16: bfloat16 activations.
    param_dtype: dtype of the params and hence of the gradients (``bfloat16``
      with ``bf16``: the papers' pure-BF16 setting). The optimizer computes in
      float32 and keeps float32 state whatever it is (``train/optimizer.py``).
    data: the corpus, tokenizer and sequence length (``data.vocab_size``: the
      size of the BPE trained when there is no tokenizer file).
    optimizer: the optimizer and schedule.
    steps: optimizer steps.
    batch_size: global batch, in sequences.
    grad_accum: micro-batches per step.
    eval_every, eval_batches: steps between validation runs, batches per run.
    log_every: steps between train-metric records.
    checkpoint_every, keep_checkpoints: steps between checkpoints, checkpoints kept.
    out: run folder; ``None``: ``runs/MODEL-OPTIMIZER``.
    tensorboard: also write metrics to ``out/tensorboard`` (tensorboardX).
    mesh: e.g. ``data=2,fsdp=2,tensor=2``; ``None``: every device on data.
    seed: init and data-order seed.
    resume: continue from the last checkpoint in ``out``.
    on_nonfinite: a NaN/Inf loss or gradient: skip that update, or stop.
  """

  model: str = _DEFAULT_MODEL
  bf16: bool = False
  param_dtype: ParamDtype = "float32"
  data: DataConfig = model_data(_DEFAULT_MODEL)
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
        raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
    if self.data.seq_len < 1:
      raise ValueError(f"--seq-len must be >= 1, got {self.data.seq_len}")
    _check_choice("--on-nonfinite", self.on_nonfinite, OnNonFinite)
    if self.model not in configs.CONFIGS:
      raise ValueError(f"--config must be one of {sorted(configs.CONFIGS)}, got {self.model!r}")
    _check_choice("--param-dtype", self.param_dtype, ParamDtype)

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
