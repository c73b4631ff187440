"""The run configuration: one frozen ``TrainConfig`` nesting the data and optimizer configs
(``train/optimizers.py``: one config per optimizer).

Every setting is declared here once, with its default and (in ``Attributes:``) its doc;
the CLI (``train/cli.py``) derives a flag from each field (``train/flags.py``). Each
config checks its own fields when it is built and raises ``ConfigError`` naming the field.
"""

import dataclasses
import pathlib
from typing import Literal

from models import configs
from train import flags
from train.data import DataConfig
from train.flags import ConfigError
from train.optimizers import OptimizerConfig
from train.optimizers import SwanConfig

OnNonFinite = Literal["skip", "stop"]
ParamDtype = Literal["float32", "bfloat16"]


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
  optimizer: OptimizerConfig = SwanConfig()
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
    flags.check_choices(self)
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
