"""The convergence protocol: the runs' settings, the optimizer variants and their lr grids, the
seeds, and the ablations."""

import dataclasses
import pathlib

from train.config import TrainConfig
from train.config import model_data
from train.optimizers import OptimizerConfig
from train.optimizers import optimizer_config as make_config

STEPS, BATCH, SEQ_LEN, EVAL_EVERY, EVAL_BATCHES, MAX_GRAD_NORM = 240, 16, 256, 20, 8, 1.0
ADAM_LRS = (5e-4, 1e-3, 2e-3, 4e-3, 8e-3)
GRID: dict[str, tuple[float, ...]] = {
  "adam-b2_0.95": ADAM_LRS,
  "adam-b2_0.999": ADAM_LRS,
  "swan": ADAM_LRS,
  "sinkgd": (6.25e-4, 1.25e-3, 2.5e-3, 5e-3, 1e-2),
  "muon": (5e-3, 1e-2, 2e-2, 4e-2, 8e-2),  # around optax's documented 0.02
}
VARIANTS: dict[str, dict] = {
  "adam-b2_0.95": {"name": "adam", "adam_b2": 0.95},
  "adam-b2_0.999": {"name": "adam", "adam_b2": 0.999},
  "swan": {"name": "swan"},
  "sinkgd": {"name": "sinkgd"},
  "muon": {"name": "muon"},  # optax.contrib.muon
}
STATELESS = ("swan", "sinkgd")
# The papers' Adam group over their matrix lr: SWAN's at its lr, SinkGD's at its global lr, whose
# alpha = 0.05 makes the matrix step (0.02 and 1e-3 in the paper).
PAPER_ADAM_RATIO = {"swan": 1.0, "sinkgd": 20.0}
GRID_ORDER = (2, 3, 1, 4, 0)  # centre first, so a partial grid already brackets something
SEEDS = (0, 1, 2)
ABLATION_SEEDS = (0, 1)


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of the benchmark: model size, named optimizer variant, lr and seed."""

  size: str
  variant: str
  optimizer: OptimizerConfig
  seed: int

  @property
  def tag(self) -> str:
    return f"{self.size}-{self.variant}-lr{self.optimizer.lr:g}-seed{self.seed}"


def grid_run(size: str, variant: str, lr: float, seed: int, **fields) -> Run:
  """A run of one of the ``VARIANTS``; ``fields`` override its optimizer settings."""
  return Run(size, variant, optimizer_config(lr, **{**VARIANTS[variant], **fields}), seed)


def optimizer_config(lr: float, **fields) -> OptimizerConfig:
  """The protocol's optimizer at ``lr``: clipped, and no trainer default that has changed
  enters a run: the papers' Adam group (:func:`paper_adam_lr`), Newton-Schulz whitening and
  unit-RMS steps, Muon's Adam group at ``lr``, unless ``fields`` say otherwise."""
  if fields["name"] == "swan":
    fields.setdefault("whiten_method", "newton_schulz")
  if fields["name"] in STATELESS:
    fields.setdefault("scale_rule", "unit_rms")
    fields.setdefault("adam_group_lr", paper_adam_lr(fields["name"], lr))
  if fields["name"] == "muon":
    fields.setdefault("adam_group_lr", lr)  # optax's default, stated: the transfer ladder's run
  return make_config(lr=lr, max_grad_norm=MAX_GRAD_NORM, **fields)


def paper_adam_lr(name: str, lr: float) -> float:
  """The papers' Adam-group lr of swan or sinkgd at matrix lr ``lr``."""
  return PAPER_ADAM_RATIO[name] * lr


def train_config(run: Run, steps: int, work: pathlib.Path) -> TrainConfig:
  """The protocol's ``TrainConfig`` of ``run``, writing its folder ``work/TAG``."""
  return TrainConfig(
    model=run.size,
    data=model_data(run.size, seq_len=SEQ_LEN),
    optimizer=run.optimizer,
    steps=steps,
    batch_size=BATCH,
    eval_every=EVAL_EVERY,
    eval_batches=EVAL_BATCHES,
    checkpoint_every=steps,
    keep_checkpoints=1,
    out=work / run.tag,
    seed=run.seed,
  )


def seed_runs(best: dict[str, float], size: str = "tiny") -> dict[str, list[Run]]:
  """The runs of every seed at each variant's best lr."""
  return {v: [grid_run(size, v, lr, seed) for seed in SEEDS] for v, lr in best.items()}


def embed_lr_run(size: str, adam: str, lr: float, embed_lr: float, seed: int) -> Run:
  """Adam at ``lr`` with the embedding and lm_head at ``embed_lr``."""
  run = grid_run(size, adam, lr, seed, embed_lr_scale=embed_lr / lr)
  return dataclasses.replace(run, variant=f"{adam}+embed_lr{embed_lr:g}")


def ablation_runs(best: dict[str, float], adam: str) -> dict[str, tuple[str, str, list[Run]]]:
  """Ablation name -> (the variant it changes, what it changes, its runs), at the best settings."""
  a, s, k = best[adam], best["swan"], best["sinkgd"]
  sinkgd_group = paper_adam_lr("sinkgd", k)
  embed = "Adam with the embeddings and lm_head at {} ({:g}; the rest at {:g})"
  swan = lambda seed, **fields: grid_run("tiny", "swan", s, seed, **fields)
  ablations = {
    f"sinkgd+adam_lr{a:g}": (
      "sinkgd",
      "SinkGD with its Adam group (embeddings, lm_head, norms) at Adam's best lr",
      lambda seed: grid_run("tiny", "sinkgd", k, seed, adam_group_lr=a),
    ),
    f"{adam}+embed_lr{sinkgd_group:g}": (
      adam,
      embed.format("the lr of SinkGD's Adam group at its best", sinkgd_group, a),
      lambda seed: embed_lr_run("tiny", adam, a, sinkgd_group, seed),
    ),
    f"{adam}+embed_lr{s:g}": (
      adam,
      embed.format("SWAN's best lr", s, a),
      lambda seed: embed_lr_run("tiny", adam, a, s, seed),
    ),
    "swan_gradnorm": (
      "swan",
      "SWAN with GradNorm only (no whitening)",
      lambda seed: swan(seed, swan_operators="gradnorm"),
    ),
    "swan_whiten": (
      "swan",
      "SWAN with whitening only (no GradNorm)",
      lambda seed: swan(seed, swan_operators="whiten"),
    ),
    "swan_polar_express": (
      "swan",
      "SWAN whitening by Polar Express (closer to the polar factor on real gradients than the "
      "paper's 10 Newton-Schulz steps)",
      lambda seed: swan(seed, whiten_method="polar_express"),
    ),
    "swan+adafactor": (
      "swan",
      "nearly stateless: SWAN with Adafactor instead of Adam on non-matrices",
      lambda seed: swan(seed, non_matrix="adafactor"),
    ),
  }
  return {
    name: (
      base,
      question,
      [dataclasses.replace(make(seed), variant=name) for seed in ABLATION_SEEDS],
    )
    for name, (base, question, make) in ablations.items()
  }


SMALL_LR_FACTORS = (0.5, 1, 2)  # the best tiny lr and its 2x neighbours, widened like the sweep
SMALL_ORDER = (1, 0, 2)
