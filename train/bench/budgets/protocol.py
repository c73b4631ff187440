"""The protocol: budgets in Chinchilla multiples, the optimizers as tuned, and their points."""

import dataclasses
import functools

from models import configs
from train import data
from train.bench import harness
from train.config import model_data
from train.optimizers import OptimizerConfig
from train.optimizers import optimizer_config

TOKENS_PER_PARAM = 20  # Chinchilla (Hoffmann et al., arXiv 2203.15556)
BATCH, SEQ_LEN, MAX_GRAD_NORM, EVAL_BATCHES = 16, 256, 1.0, 8
DECAY_FRACTION = 0.2
ADAM_B2 = 0.95
# Budgets (x Chinchilla) each width's trunks are taken to, in the order they are reached. The
# 0.5x and 2x branches cost 0.1x and 0.4x: they let a loss be placed between budgets, and
# tiny's 2x (the references' alone) one below their 1x.
BUDGETS: dict[str, tuple[float, ...]] = {
  "tiny-w64": (0.25, 0.5, 1.0, 2.0, 4.0),
  "tiny": (0.25, 0.5, 1.0, 2.0),
  "tiny-w256": (0.25,),
}
RUNS = harness.RESULTS / "budgets" / "runs"


@dataclasses.dataclass(frozen=True)
class Variant:
  """An optimizer as the budget runs set it, in effective per-group rates.

  Attributes:
    fields: its optimizer config's fields besides the rates and the schedule.
    lrs: the first grid of its matrix group's peak lr (Adam: its lr), 4 points 2x apart.
    adam_ratio: its Adam group's peak lr over the matrix lr at group factor 1 (the
      library's default ratio when the grids began, fixed: run names count groups in it;
      Adam: 1, plain Adam).
    groups: the group factors tried at the best lr, multiples of ``adam_ratio``.
  """

  fields: dict
  lrs: tuple[float, ...]
  adam_ratio: float
  groups: tuple[float, ...] = (0.5, 1.0, 2.0)


VARIANTS: dict[str, Variant] = {
  "adam": Variant({"name": "adam"}, (2e-3, 4e-3, 8e-3, 1.6e-2), 1.0, (2.0, 4.0, 8.0)),
  "muon": Variant({"name": "muon"}, (5e-3, 1e-2, 2e-2, 4e-2), 1.0),
  "swan": Variant(
    {"name": "swan", "whiten_method": "polar_express"},  # every SWAN run's, whatever the default
    (1e-3, 2e-3, 4e-3, 8e-3),
    50.0,
  ),
  "sinkgd": Variant({"name": "sinkgd"}, (6.25e-3, 1.25e-2, 2.5e-2, 5e-2), 3.5355339),
}
# SWAN with a cheaper whitening, run at SWAN's best point only (see ``whitening``).
WHITENINGS: dict[str, Variant] = {
  "swan-gram": Variant(
    {"name": "swan", "whiten_method": "gram_polar_express"},
    VARIANTS["swan"].lrs,
    VARIANTS["swan"].adam_ratio,
  ),
}
ALL_VARIANTS = {**VARIANTS, **WHITENINGS}
REFERENCES = ("adam", "adam+embed")  # token fractions are of these optimizers' tokens
GRID_ORDER = (1, 2, 0, 3)  # the two central points first, so a partial grid spans the centre
SEEDS = {"tiny-w64": (0, 1, 2), "tiny": (0, 1)}


@dataclasses.dataclass(frozen=True)
class Point:
  """One optimizer setting on one model: a trunk and its branches.

  ``lr``: the matrix group's peak lr (Adam: its lr); ``group``: the Adam group's peak lr as a
  multiple of ``adam_ratio x lr`` (Adam: the embedding and lm_head lr over ``lr``).
  """

  size: str
  variant: str
  lr: float
  group: float = 1.0
  seed: int = 0

  @property
  def tag(self) -> str:
    group = "" if self.group == 1 else f"-group{self.group:g}"
    return f"{self.size}-{self.variant}-lr{self.lr:g}{group}-seed{self.seed}"

  @property
  def rates(self) -> dict[str, float]:
    """The peak lr of each parameter group: ``matrix`` and ``adam`` (Adam: embeddings)."""
    variant = ALL_VARIANTS[self.variant]
    return {"matrix": self.lr, "adam": self.lr * variant.adam_ratio * self.group}

  def optimizer(self, warmup: int, decay_fraction: float, schedule: str = "wsd") -> OptimizerConfig:
    """The point's optimizer on ``schedule``, after ``warmup`` steps."""
    fields = {**ALL_VARIANTS[self.variant].fields, "adam_b2": ADAM_B2}
    if self.variant == "adam":
      fields["embed_lr_scale"] = self.group
    else:
      fields["adam_group_lr"] = self.rates["adam"]
    return optimizer_config(
      lr=self.lr,
      schedule=schedule,
      warmup_steps=warmup,
      decay_fraction=decay_fraction,
      final_lr_fraction=0.0,
      max_grad_norm=MAX_GRAD_NORM,
      **fields,
    )


def default_point(size: str, name: str) -> Point:
  """The trainer's default ``name`` (``adam``, ``muon``, ``swan``, ``sinkgd``): its lr, Adam-group
  lr and whitening, as a point of the budget runs (Adam b2 0.95, as every run here)."""
  config = optimizer_config(name)
  if name == "adam":
    return Point(size, "adam", config.lr, group=config.embed_lr_scale)
  method = getattr(config, "whiten_method", None)
  variant = next(
    (
      v
      for v, spec in ALL_VARIANTS.items()
      if spec.fields["name"] == name and spec.fields.get("whiten_method") == method
    ),
    None,
  )
  if variant is None:
    raise ValueError(f"no budget variant runs {name}'s default whitening {method}: add it")
  group = config.adam_group_peak_lr / (config.lr * ALL_VARIANTS[variant].adam_ratio)
  return Point(size, variant, config.lr, group=round(group, 6))


def chinchilla_steps(size: str, budget: float) -> int:
  """Steps of ``budget`` x 20 tokens per parameter (embeddings included) of ``size``."""
  params = configs.get_config(size).num_params
  return round(budget * TOKENS_PER_PARAM * params / (BATCH * SEQ_LEN))


@functools.cache
def epoch_tokens(size: str) -> int:
  """The tokens of one pass over ``size``'s training split (its tokenizer, ``SEQ_LEN``): a
  budget past a few passes repeats the data (Muennighoff et al., arXiv 2305.16264: up to ~4
  passes train nearly as well as fresh tokens; far past them the extra ones are worth little)."""
  return data.epoch_tokens(data.load_corpus(model_data(size, seq_len=SEQ_LEN)), SEQ_LEN)


def budget_tokens(size: str, budget: float) -> int:
  """The tokens a run of ``budget`` at ``size`` trains on: its steps of ``BATCH x SEQ_LEN``."""
  return chinchilla_steps(size, budget) * BATCH * SEQ_LEN


def passes(size: str, budget: float) -> float:
  """How many times a run of ``budget`` at ``size`` passes over the training split."""
  return budget_tokens(size, budget) / epoch_tokens(size)


def decay_start(steps: int) -> int:
  """The step a branch of ``steps`` leaves its trunk: where its decay starts."""
  return round((1 - DECAY_FRACTION) * steps)


LABELS = {
  "adam": "Adam",
  "adam+embed": "Adam, embedding lr tuned",
  "muon": "Muon (optax)",
  "swan": "SWAN",
  "sinkgd": "SinkGD",
}
