"""Optimizers at the budgets people train at: multiples of Chinchilla, from WSD cooldown branches.

Run: ``python -m train.bench.budgets [--only queue|whitening|report] [--stage N ...]``.
A budget is a multiple of Chinchilla's 20 tokens per parameter, counting every parameter of
the model (embedding and lm_head included): tiny-w64 has 460,352, so 1x is 9.2M tokens,
2,248 steps of 16 x 256. Every run uses the other benchmarks' data, batch, sequence length
and clipping (1.0), and the warmup-stable-decay schedule (Hägele et al., arXiv 2405.18392):
a fixed linear warmup, the peak lr, then a linear decay to 0 over the last 20% of the run.
One stable-phase run (the *trunk*) per optimizer setting gives every budget: the budget's
run resumes the trunk's checkpoint at its decay start and decays from there (a *branch*), so
a trunk taken to 0.8x of the largest budget yields all of them for 1.2x its steps.

Optimizers, each tuned alike: a 4-point lr grid 2x apart, widened while the best sits at an
edge; then, at the best lr, its Adam group's lr (Adam: the embedding and lm_head lr) at 2x
and 0.5x its default ratio, widened likewise. Adam b2 0.95 everywhere (its Adam group too);
plain Adam is the Adam grid's own points. ``queue`` runs ``STAGES`` in order, resumably (a
killed run resumes from its last checkpoint); every finished branch keeps its JSON in
``--runs``. Several processes may run the queue at once: each locks a trunk (or a cosine run)
while it trains it, passes over the ones another process holds, then waits for them.
``whitening`` runs SWAN with each cheaper whitening of ``WHITENINGS`` next to the grid's (8
Polar Express steps) at SWAN's best point, every seed. ``report`` writes, from those JSONs,
``OUT/budgets.md`` (per budget each optimizer's best point; token fractions and best lrs by
budget; the trainer's defaults against the best points; WSD against cosine; the whitening
pairs), ``.json`` and ``.png`` (token fraction against budget, final loss against lr), and
the README's quote of it.
"""

import dataclasses
import fcntl
import json
import math
import pathlib
import re
import shutil
import statistics
import time
from collections.abc import Callable

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator

from models import configs
from swan_optax.defaults import ADAM_LR_RATIO
from train import checkpoint
from train import loop
from train import metrics
from train.bench import harness
from train.config import TrainConfig
from train.config import model_data
from train.optimizers import OptimizerConfig
from train.optimizers import optimizer_config

TOKENS_PER_PARAM = 20  # Chinchilla (Hoffmann et al., arXiv 2203.15556)
BATCH, SEQ_LEN, MAX_GRAD_NORM, EVAL_BATCHES = 16, 256, 1.0, 8
DECAY_FRACTION = 0.2
ADAM_B2 = 0.95
# Budgets (x Chinchilla) each width's trunks are taken to, in the order they are reached. The
# 0.5x and 2x branches cost 0.1x and 0.4x: they let a loss be placed between budgets.
BUDGETS: dict[str, tuple[float, ...]] = {
  "tiny-w64": (0.25, 0.5, 1.0, 2.0, 4.0),
  "tiny": (0.25, 0.5, 1.0),
  "tiny-w256": (0.25,),
}
WIDTHS = {"tiny-w64": 64, "tiny": 128, "tiny-w256": 256}
RUNS = harness.RESULTS / "budgets" / "runs"


@dataclasses.dataclass(frozen=True)
class Variant:
  """An optimizer as the budget runs set it, in effective per-group rates.

  Attributes:
    fields: its optimizer config's fields besides the rates and the schedule.
    lrs: the first grid of its matrix group's peak lr (Adam: its lr), 4 points 2x apart.
    adam_ratio: its Adam group's peak lr over the matrix lr at group factor 1 (the
      trainer's default; Adam: 1, plain Adam).
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
    ADAM_LR_RATIO["swan", "unit_rms"],
  ),
  "sinkgd": Variant(
    {"name": "sinkgd"}, (6.25e-3, 1.25e-2, 2.5e-2, 5e-2), ADAM_LR_RATIO["sinkgd", "spectral"]
  ),
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


def chinchilla_steps(size: str, budget: float) -> int:
  """Steps of ``budget`` x 20 tokens per parameter (embeddings included) of ``size``."""
  params = configs.get_config(size).num_params
  return round(budget * TOKENS_PER_PARAM * params / (BATCH * SEQ_LEN))


def decay_start(steps: int) -> int:
  """The step a branch of ``steps`` leaves its trunk: where its decay starts."""
  return round((1 - DECAY_FRACTION) * steps)


class Runner:
  """Trunks and branches under ``work``; each finished branch's JSON under ``runs_dir``.

  Args:
    runs_dir: where each finished branch's ``TAG.json`` is kept.
    work: the trunk folders ``work/TRUNK`` and branch folders ``work/TRUNK-Bx``.
    train_fn: trains a ``TrainConfig`` into its folder; ``None``: never train.
    steps_of: ``(size, budget) -> steps`` (a smoke test shortens them).
    checkpoint_every: a run's checkpoint interval (a killed run resumes from it).
  """

  def __init__(
    self,
    runs_dir: pathlib.Path,
    work: pathlib.Path,
    train_fn: Callable[[TrainConfig], object] | None = loop.train,
    steps_of: Callable[[str, float], int] = chinchilla_steps,
    checkpoint_every: int = 250,
  ):
    self.runs_dir, self.work, self.train_fn = runs_dir, work, train_fn
    self.steps_of, self.checkpoint_every = steps_of, checkpoint_every
    self.claims: set[str] = set()  # the trunks (and cosine runs) this process trains now
    self.passed_over: set[str] = set()  # those it left to another process

  def read_only(self) -> "Runner":
    return Runner(self.runs_dir, self.work, None, self.steps_of, self.checkpoint_every)

  def warmup(self, size: str) -> int:
    """The warmup every budget of ``size`` shares: 10% of its smallest budget."""
    return max(1, round(0.1 * self.steps_of(size, BUDGETS[size][0])))

  def path(self, point: Point, budget: float, schedule: str = "wsd") -> pathlib.Path:
    return self.runs_dir / f"{run_name(point, budget, schedule)}.json"

  def get(self, point: Point, budget: float, schedule: str = "wsd") -> dict | None:
    """``point`` at ``budget``: its JSON, or trained now (if allowed). ``wsd``: the branch
    of its trunk (the smaller budgets' branches first: the trunk passes their decay starts);
    ``cosine``: a run of its own, cosine-decayed to 0 after the same warmup. ``None``: not
    run yet, or another process is training it."""
    path = self.path(point, budget, schedule)
    record = _read(path, point)
    if record is not None or self.train_fn is None:
      return record
    claim = point.tag if schedule == "wsd" else run_name(point, budget, schedule)
    if claim in self.claims:
      return self._train(point, budget, schedule)
    self.work.mkdir(parents=True, exist_ok=True)
    with open(self.work / f"{claim}.claim", "w") as lock:
      try:  # held until closed, or until this process dies
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        self.passed_over.add(claim)
        return None
      self.claims.add(claim)
      try:  # another process may have finished it before this one claimed it
        return _read(path, point) or self._train(point, budget, schedule)
      finally:
        self.claims.discard(claim)

  def _train(self, point: Point, budget: float, schedule: str) -> dict:
    path = self.path(point, budget, schedule)
    if schedule == "wsd":
      for smaller in (b for b in BUDGETS[point.size] if b < budget):
        self.get(point, smaller)
    steps = self.steps_of(point.size, budget)
    run = self._config(point, steps, schedule, run_name(point, budget, schedule))
    start = time.perf_counter()
    if not loop.completed(run.run_dir):
      if schedule == "wsd" and not _checkpoints(run.run_dir):
        self._branch_from_trunk(point, decay_start(steps), run.run_dir)
      print(f"training {run_name(point, budget, schedule)} ({steps} steps)", flush=True)
      self.train_fn(run)
      if not loop.completed(run.run_dir):
        raise RuntimeError(f"{run.run_dir.name} stopped before its last step (preempted?)")
    record = run_record(point, budget, run, time.perf_counter() - start)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return record

  def final(self, point: Point, budget: float, schedule: str = "wsd") -> float | None:
    record = self.get(point, budget, schedule)
    return None if record is None else record["final_val_loss"]

  def _config(self, point: Point, steps: int, schedule: str, name: str) -> TrainConfig:
    """``point``'s run of ``steps``: ``wsd`` a branch, ``trunk`` its stable phase, ``cosine``."""
    decay = 0.0 if schedule == "trunk" else DECAY_FRACTION
    return TrainConfig(
      model=point.size,
      data=model_data(point.size, seq_len=SEQ_LEN),
      optimizer=point.optimizer(
        self.warmup(point.size), decay, "cosine" if schedule == "cosine" else "wsd"
      ),
      steps=steps,
      batch_size=BATCH,
      eval_every=max(1, steps // 20),
      eval_batches=EVAL_BATCHES,
      checkpoint_every=self.checkpoint_every,
      keep_checkpoints=2,
      out=self.work / name,
      seed=point.seed,
      resume=True,
    )

  def _branch_from_trunk(self, point: Point, start: int, branch_dir: pathlib.Path) -> None:
    """Takes ``point``'s trunk to step ``start`` and copies that checkpoint (and the metrics
    up to it) into ``branch_dir``, whose run then resumes from it."""
    trunk = self._config(point, start, "trunk", point.tag)
    ckpts = trunk.run_dir / "checkpoints"
    reached = _checkpoints(trunk.run_dir)
    if start not in reached:
      if reached and max(reached) > start:
        raise RuntimeError(
          f"trunk {trunk.run_dir} is past step {start} (at {max(reached)}): a branch needs the "
          "checkpoint at its decay start; run the budgets in increasing order"
        )
      print(f"training trunk {point.tag} to step {start}", flush=True)
      self.train_fn(trunk)
      if start not in _checkpoints(trunk.run_dir):
        raise RuntimeError(f"trunk {point.tag} stopped before step {start} (preempted?)")
    (branch_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    shutil.copytree(ckpts / str(start), branch_dir / "checkpoints" / str(start))
    kept = [
      r
      for r in metrics.read_jsonl(trunk.run_dir / "metrics.jsonl")
      if r["kind"] != "run" and r["step"] <= start
    ]
    (branch_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))


def _read(path: pathlib.Path, point: Point) -> dict | None:
  """The run JSON at ``path`` (``None``: none yet), checked to be ``point``'s."""
  if not path.exists():
    return None
  record = json.loads(path.read_text())
  if record["rates"] != point.rates:
    raise ValueError(f"{path} ran at rates {record['rates']}, not {point.tag}'s {point.rates}")
  return record


def run_name(point: Point, budget: float, schedule: str = "wsd") -> str:
  return f"{point.tag}-{budget:g}x" + ("" if schedule == "wsd" else f"-{schedule}")


def _checkpoints(folder: pathlib.Path) -> list[int]:
  return checkpoint.published_steps(folder / "checkpoints")


def run_record(point: Point, budget: float, config: TrainConfig, wall_s: float) -> dict:
  """The JSON kept for a finished run: its settings, effective rates and evaluations."""
  records = metrics.read_jsonl(config.run_dir / "metrics.jsonl")
  header = next(r for r in records if r["kind"] == "run")
  train = [r for r in records if r["kind"] == "train"]
  evals = [
    {k: r[k] for k in ("step", "tokens", "val_loss")} for r in records if r["kind"] == "eval"
  ]
  if not evals or evals[-1]["step"] != config.steps:
    raise RuntimeError(f"{config.run_dir} has no evaluation at its last step {config.steps}")
  return {
    "tag": config.run_dir.name,
    "point": dataclasses.asdict(point),
    "budget": budget,
    "steps": config.steps,
    "tokens": config.steps * config.tokens_per_step,
    "params": header["params"],
    "optimizer_state_bytes": header["optimizer_state_bytes"],
    "optimizer": json.loads(json.dumps(dataclasses.asdict(config.optimizer))),
    "rates": point.rates,
    "final_val_loss": evals[-1]["val_loss"],
    "evals": evals,
    "step_time_median_s": statistics.median(r["step_time_s"] for r in train),
    "wall_s": wall_s,  # of this run (a branch: its decay, and its trunk's share if run now)
  }


# --- the queue ---------------------------------------------------------------------------

Losses = dict[float, float | None]  # lr or group factor -> final loss (None: not run)


def widened(final: Callable[[float], float | None], grid: tuple[float, ...]) -> Losses:
  """``x -> final(x)`` over ``grid``, one 2x step further while the best sits at an edge;
  the search stops at the first point not run yet (its grid stays open)."""
  losses = {x: final(x) for x in grid}
  while None not in losses.values():
    best = min(losses, key=losses.get)
    if best not in (min(losses), max(losses)):
      break
    edge = best / 2 if best == min(losses) else best * 2
    losses[edge] = final(edge)
  return dict(sorted(losses.items()))


def lr_sweep(runner: Runner, size: str, budget: float) -> dict[str, Losses]:
  """Per variant: its seed-0 lr grid at ``budget`` (group 1), points in ``GRID_ORDER`` with
  every variant in turn, then widened."""
  for i in GRID_ORDER:
    for variant, spec in VARIANTS.items():
      runner.get(Point(size, variant, spec.lrs[i]), budget)
  return {
    v: widened(lambda lr, v=v: runner.final(Point(size, v, lr), budget), spec.lrs)
    for v, spec in VARIANTS.items()
  }


def best(losses: Losses, closed: bool = True) -> float | None:
  """The value of the lowest loss: of a complete grid that brackets it, or (``closed=False``)
  the best so far."""
  done = {x: v for x, v in losses.items() if v is not None}
  if not done or (closed and (len(done) < len(losses) or _at_edge(done))):
    return None
  return min(done, key=done.get)


def _at_edge(done: Losses) -> bool:
  x = min(done, key=done.get)
  return len(done) > 1 and x in (min(done), max(done))


def group_sweep(runner: Runner, size: str, budget: float, variant: str, lr: float) -> Losses:
  """Group factor -> ``variant``'s seed-0 final loss at ``lr`` and ``budget``, widened."""
  grid = VARIANTS[variant].groups
  return widened(lambda g: runner.final(Point(size, variant, lr, group=g), budget), grid)


def best_points(runner: Runner, size: str, budget: float, closed: bool = True) -> dict[str, Point]:
  """Each optimizer's best seed-0 point at ``budget``: ``adam`` plain Adam at its best lr,
  ``adam+embed`` Adam with its embedding lr tuned at that lr, the others at their best lr
  and group. Only searches that are complete (or, ``closed=False``, the best so far)."""
  points = {}
  for variant, losses in lr_sweep(runner, size, budget).items():
    lr = best(losses, closed)
    if lr is None:
      continue
    groups = group_sweep(runner, size, budget, variant, lr)
    if variant == "adam":
      points["adam"] = Point(size, "adam", lr)
    group = best(groups, closed)
    if group is not None:
      points["adam+embed" if variant == "adam" else variant] = Point(size, variant, lr, group)
  return points


def stage(runner: Runner, size: str, budget: float, seeds: tuple[int, ...], cosine: bool) -> None:
  """One (size, budget): the lr grids, the group grids at the best lrs, the references' best
  points at the size's next budget (a loss below theirs then gets a token fraction, not a
  bound), the seeds at each optimizer's best point, and (``cosine``) one cosine run at each."""
  points = best_points(runner, size, budget)
  larger = [b for b in BUDGETS[size] if b > budget]
  for name in REFERENCES:
    if larger and name in points:
      runner.get(points[name], larger[0])
  for point in points.values():
    for seed in seeds[1:]:
      runner.get(dataclasses.replace(point, seed=seed), budget)
  if cosine:
    for point in points.values():
      runner.get(point, budget, "cosine")


def whitening(runner: Runner, size: str = "tiny-w64", budget: float = 1.0) -> None:
  """Each of ``WHITENINGS`` next to the grid's SWAN (8 Polar Express steps) at SWAN's best point
  so far (seed 0's lr and group): seeds 0 and 1 of both, the cheaper one alone at 2x and half
  that lr (it may want another: the grid's runs there are its own), the other seeds of
  ``SEEDS``, then the cheaper one's other seeds at the best of its three lrs, if another."""
  point = best_points(runner.read_only(), size, budget, closed=False)["swan"]
  pair = lambda seed: [
    dataclasses.replace(point, variant=v, seed=seed) for v in ("swan", *WHITENINGS)
  ]
  runs = [*pair(0), *pair(1)]
  runs += [
    dataclasses.replace(point, variant=v, lr=point.lr * f) for f in (2, 0.5) for v in WHITENINGS
  ]
  runs += [run for seed in SEEDS[size][2:] for run in pair(seed)]
  for run in runs:
    runner.get(run, budget)
  for variant in WHITENINGS:
    at = lambda lr, seed=0, v=variant: dataclasses.replace(point, variant=v, lr=lr, seed=seed)
    finals = {lr: runner.final(at(lr), budget) for lr in (point.lr / 2, point.lr, point.lr * 2)}
    if None not in finals.values():
      lr = min(finals, key=finals.get)
      for seed in SEEDS[size][1:]:
        runner.get(at(lr, seed), budget)


# (size, budget, seeds at the best points, the cosine check): in order, so a partial queue
# has every optimizer at 1x on tiny-w64 first.
STAGES = (
  ("tiny-w64", 1.0, SEEDS["tiny-w64"], True),
  ("tiny", 1.0, SEEDS["tiny"], False),
  ("tiny-w64", 4.0, (0,), False),
  ("tiny-w256", 0.25, (0,), False),
)


# --- the report --------------------------------------------------------------------------

LABELS = {
  "adam": "Adam",
  "adam+embed": "Adam, embedding lr tuned",
  "muon": "Muon (optax)",
  "swan": "SWAN",
  "sinkgd": "SinkGD",
}


def summarize(runner: Runner, size: str, budget: float) -> dict:
  """The finished runs of ``size`` at ``budget``: every grid, and per optimizer its best point
  (best so far while a grid is open) with its seeds' losses, rates, state and step time."""
  grids = lr_sweep(runner, size, budget)
  points = best_points(runner, size, budget, closed=False)
  closed = best_points(runner, size, budget, closed=True)
  rows = {}
  for name, point in points.items():
    record = runner.get(point, budget)
    finals = seed_finals(runner, point, budget)
    rows[name] = {
      "point": dataclasses.asdict(point),
      "bracketed": closed.get(name) == point,
      "rates": record["rates"],
      "finals": finals,
      "mean": statistics.mean(finals),
      "spread": max(finals) - min(finals),
      "optimizer_state_bytes": record["optimizer_state_bytes"],
      "step_time_s": step_time(runner, size, point.variant),
    }
  groups = {
    name: group_sweep(runner, size, budget, point.variant, point.lr)
    for name, point in points.items()
    if name != "adam"
  }
  return {"grids": grids, "groups": groups, "rows": rows}


def step_time(runner: Runner, size: str, variant: str) -> float:
  """The fastest median step time of ``variant``'s runs on ``size``: a step costs the same at
  every lr, seed and budget, and on shared cores the fastest run was the least disturbed."""
  records = (json.loads(p.read_text()) for p in runner.runs_dir.glob(f"{size}-{variant}-lr*.json"))
  return min(r["step_time_median_s"] for r in records if r["point"]["variant"] == variant)


def seed_finals(runner: Runner, point: Point, budget: float) -> list[float]:
  """The finished final losses of ``point``'s seeds (``SEEDS``; seed 0 alone elsewhere)."""
  seeds = SEEDS.get(point.size, (0,))
  finals = [runner.final(dataclasses.replace(point, seed=s), budget) for s in seeds]
  return [x for x in finals if x is not None]


def seed_pairs(
  runner: Runner, a: Point, b: Point, budget: float
) -> list[tuple[float | None, float | None]]:
  """``a``'s and ``b``'s final losses at each seed of ``SEEDS`` (``None``: not run)."""
  at = lambda point, seed: runner.final(dataclasses.replace(point, seed=seed), budget)
  return [(at(a, s), at(b, s)) for s in SEEDS.get(a.size, (0,))]


def seeds_cell(finals: list[float]) -> str:
  """``mean ± half range (count)`` of the seeds' losses; the loss alone for one seed."""
  mean = statistics.mean(finals)
  if len(finals) == 1:
    return f"{mean:.3f}"
  return f"{mean:.3f} ± {(max(finals) - min(finals)) / 2:.3f} ({len(finals)})"


def token_fraction(loss: float, budget: float, curve: dict[float, float]) -> tuple[str, float]:
  """The tokens a run of ``budget`` that reached ``loss`` used, as a fraction of the tokens the
  reference needs for the same loss: ``budget`` over the budget at which ``curve`` (budget ->
  final loss) reaches ``loss``, linear in log budget between measured budgets (below 1: fewer
  tokens than the reference). ``('<', f)`` or ``('>', f)`` when ``loss`` lies outside the
  curve (a bound from its largest or smallest budget)."""
  points = sorted(curve.items())
  if loss > points[0][1]:
    return ">", budget / points[0][0]
  for (b0, l0), (b1, l1) in zip(points, points[1:], strict=False):
    if l1 <= loss <= l0:
      t = 0.0 if l0 == l1 else (l0 - loss) / (l0 - l1)
      return "", budget / math.exp(math.log(b0) + t * (math.log(b1) - math.log(b0)))
  if loss == points[-1][1]:
    return "", budget / points[-1][0]
  return "<", budget / points[-1][0]


def summaries(runner: Runner) -> dict[str, dict[float, dict]]:
  """Per size, per budget with a finished run: :func:`summarize`, with each optimizer's token
  fraction of each reference (``REFERENCES``) and its wall-clock fraction of plain Adam's."""
  out: dict[str, dict[float, dict]] = {}
  for size, budgets in BUDGETS.items():
    per_budget = {b: summarize(runner, size, b) for b in budgets}
    per_budget = {b: s for b, s in per_budget.items() if s["rows"]}
    curves = {
      ref: {b: s["rows"][ref]["mean"] for b, s in per_budget.items() if ref in s["rows"]}
      for ref in REFERENCES
    }
    for budget, s in per_budget.items():
      for row in s["rows"].values():
        for ref, curve in curves.items():
          row[f"tokens_vs_{ref}"] = token_fraction(row["mean"], budget, curve) if curve else None
        adam = s["rows"].get("adam")
        tokens = row["tokens_vs_adam"]
        if adam and tokens and not tokens[0]:
          row["wall_vs_adam"] = tokens[1] * row["step_time_s"] / adam["step_time_s"]
    if per_budget:
      out[size] = per_budget
  return out


def _fraction_cell(fraction: tuple[str, float] | None) -> str:
  return "" if fraction is None else f"{fraction[0]}{fraction[1]:.2f}"


def budget_table(size: str, budget: float, summary: dict) -> str:
  """One (size, budget): each optimizer's best point, loss with its seeds' spread, token and
  wall-clock fractions, and optimizer-state bytes, as Markdown."""
  columns = [
    ("optimizer", "optimizer", "", "l"),
    ("lr", "best lr", "", "r"),
    ("group", "group lr", "", "r"),
    ("loss", "final val loss", "", "r"),
    ("vs_adam", "tokens of Adam's", "", "r"),
    ("vs_embed", "tokens of tuned Adam's", "", "r"),
    ("wall", "wall clock of Adam's", ".2f", "r"),
    ("state", "optimizer state (MiB)", ".2f", "r"),
  ]
  rows = []
  for name, row in summary["rows"].items():
    open_mark = "" if row["bracketed"] else "~"
    rows.append(
      {
        "optimizer": LABELS[name],
        "lr": f"{open_mark}{row['point']['lr']:g}",
        "group": f"{row['rates']['adam']:.3g}",
        "loss": seeds_cell(row["finals"]),
        "vs_adam": _fraction_cell(row.get("tokens_vs_adam")),
        "vs_embed": _fraction_cell(row.get("tokens_vs_adam+embed")),
        "wall": row.get("wall_vs_adam"),
        "state": row["optimizer_state_bytes"] / 2**20,
      }
    )
  tokens = chinchilla_steps(size, budget) * BATCH * SEQ_LEN
  params = configs.get_config(size).num_params
  return (
    f"#### {size} ({params:,} params) at {budget:g}x Chinchilla ({tokens:,} tokens)\n\n"
    + harness.table(columns, rows)
  )


def trend_table(size: str, per_budget: dict[float, dict]) -> str:
  """Each optimizer's token fraction of plain Adam's (and of tuned Adam's, in brackets) at
  every budget of ``size``, at each budget's own best point, as Markdown."""
  budgets = sorted(per_budget)
  columns = [("optimizer", "optimizer", "", "l")] + [(b, f"{b:g}x", "", "r") for b in budgets]
  rows = []
  for name, label in LABELS.items():
    if name == "adam":
      continue
    row = {"optimizer": label}
    for b in budgets:
      fractions = per_budget[b]["rows"].get(name, {})
      tuned = fractions.get("tokens_vs_adam+embed") if name != "adam+embed" else None
      row[b] = _fraction_cell(fractions.get("tokens_vs_adam")) + (
        f" ({_fraction_cell(tuned)})" if tuned else ""
      )
    rows.append(row)
  return harness.table(columns, rows)


def best_lr_table(size: str, per_budget: dict[float, dict]) -> str:
  """Each optimizer's best seed-0 lr (group 1) at every budget of ``size`` (``~``: its grid
  is open) and, in brackets, its margin over the grid's next best point, as Markdown: whether,
  and how decisively, the best lr moves with the budget."""
  budgets = sorted(per_budget)
  columns = [("optimizer", "optimizer", "", "l")] + [(b, f"{b:g}x", "", "r") for b in budgets]
  rows = []
  for variant in VARIANTS:
    row = {"optimizer": LABELS[variant]}
    for b in budgets:
      losses = per_budget[b]["grids"][variant]
      lr, closed = best(losses, closed=False), best(losses)
      if lr is None:
        row[b] = None
        continue
      others = [v for x, v in losses.items() if v is not None and x != lr]
      margin = f" ({min(others) - losses[lr]:.3f})" if others else ""
      row[b] = f"{'' if closed else '~'}{lr:g}{margin}"
    rows.append(row)
  return harness.table(columns, rows)


def cosine_check(runner: Runner, size: str = "tiny-w64", budget: float = 1.0) -> str:
  """WSD against cosine at each optimizer's best point: the WSD seeds' mean and spread, and
  one cosine run of the same length, warmup and floor (0)."""
  rows = []
  for name, point in best_points(runner, size, budget).items():
    cosine = runner.final(point, budget, "cosine")
    seeds = seed_finals(runner, point, budget)
    if cosine is None or not seeds:
      continue
    rows.append(
      {
        "optimizer": LABELS[name],
        "wsd": seeds_cell(seeds),
        "cosine": cosine,
        "diff": cosine - statistics.mean(seeds),
        "within": "yes" if min(seeds) <= cosine <= max(seeds) else "no",
      }
    )
  columns = [
    ("optimizer", "optimizer", "", "l"),
    ("wsd", "WSD (seeds)", "", "r"),
    ("cosine", "cosine (seed 0)", ".3f", "r"),
    ("diff", "cosine - WSD", "+.3f", "r"),
    ("within", "within the seeds' range", "", "l"),
  ]
  return harness.table(columns, rows) if rows else ""


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


def defaults_table(runner: Runner, size: str, per_budget: dict[float, dict]) -> str:
  """At each budget of ``size`` (its :func:`summarize`): each optimizer's trainer default
  against its best point so far (plain Adam's for Adam): their seeds' losses, the mean
  difference over the seeds both ran, and the best point's seed range."""
  rows = []
  for budget, summary in sorted(per_budget.items()):
    for name in VARIANTS:
      default, best = default_point(size, name), summary["rows"].get(name)
      finals = seed_finals(runner, default, budget)
      if not finals or best is None:
        continue
      tuned = Point(**best["point"])
      pairs = seed_pairs(runner, default, tuned, budget)
      diffs = [d - t for d, t in pairs if d is not None and t is not None]
      rows.append(
        {
          "budget": f"{budget:g}x",
          "optimizer": LABELS[name],
          "default": _point_cell(default),
          "loss": seeds_cell(finals),
          "best": ("" if best["bracketed"] else "~")
          + ("the default" if tuned == default else _point_cell(tuned)),
          "best_loss": seeds_cell(best["finals"]),
          "diff": statistics.mean(diffs) if diffs else None,
          "range": best["spread"] if len(best["finals"]) > 1 else None,
        }
      )
  columns = [
    ("budget", "budget", "", "l"),
    ("optimizer", "optimizer", "", "l"),
    ("default", "default (lr, group lr)", "", "l"),
    ("loss", "its loss", "", "r"),
    ("best", "best point", "", "l"),
    ("best_loss", "its loss", "", "r"),
    ("diff", "default - best (same seeds)", "+.3f", "r"),
    ("range", "best's seed range", ".3f", "r"),
  ]
  return harness.table(columns, rows) if rows else ""


def _point_cell(point: Point) -> str:
  rates = point.rates
  method = ALL_VARIANTS[point.variant].fields.get("whiten_method")
  return f"{rates['matrix']:g}, {rates['adam']:.3g}" + (f", {method}" if method else "")


def whitening_table(runner: Runner, size: str = "tiny-w64") -> str:
  """Each point ``WHITENINGS`` ran at, per budget: its seeds' mean and spread, the grid's SWAN's
  (8 Polar Express steps) at the same point and seeds (where run), and the difference of the
  two means."""
  rows = []
  for variant, spec in WHITENINGS.items():
    for path in sorted(runner.runs_dir.glob(f"{size}-{variant}-lr*-seed0-*x.json")):
      record = json.loads(path.read_text())
      point, budget = Point(**record["point"]), record["budget"]
      both = seed_pairs(runner, point, dataclasses.replace(point, variant="swan"), budget)
      cheap = [x for x, _ in both if x is not None]
      default = [y for x, y in both if x is not None and y is not None]
      row = {
        "budget": f"{budget:g}x",
        "point": f"lr {point.lr:g}, group {point.group:g}",
        "default": seeds_cell(default) if default else "not run",
        "method": spec.fields["whiten_method"],
        "cheap": seeds_cell(cheap),
      }
      if len(default) == len(cheap):
        row["diff"] = statistics.mean(cheap) - statistics.mean(default)
      if len(default) > 1:
        row["spread"] = max(default) - min(default)
      rows.append(row)
  columns = [
    ("budget", "budget", "", "l"),
    ("point", "SWAN point", "", "l"),
    ("default", "polar_express (8 steps)", "", "r"),
    ("method", "cheaper method", "", "l"),
    ("cheap", "its loss", "", "r"),
    ("diff", "difference (same seeds)", "+.4f", "r"),
    ("spread", "8 steps' seed range", ".4f", "r"),
  ]
  return harness.table(columns, rows) if rows else ""


def plot(all_summaries: dict[str, dict[float, dict]], path: pathlib.Path) -> None:
  """Top: token fraction of tuned Adam's (solid) and of plain Adam's (dashed) against budget,
  one line per optimizer, one panel per width, the legend in the row's last panel; open
  triangles are bounds beyond the budgets measured. Below, a row per width: final loss against lr
  per budget, one panel per optimizer."""
  sizes = list(all_summaries)
  columns = max(len(sizes) + 1, len(VARIANTS))
  fig = Figure(figsize=(4 * columns, 3.5 * (1 + len(sizes))))
  axes = fig.subplots(1 + len(sizes), columns, squeeze=False)
  for ax in axes[0][len(sizes) : -1]:
    ax.set_visible(False)
  references = (("adam+embed", "-", "of tuned Adam's"), ("adam", "--", "of Adam's"))
  legend = [
    Line2D([], [], color=f"C{i}", marker="o", label=label)
    for i, label in enumerate(LABELS.values())
  ]
  legend += [Line2D([], [], color="gray", ls=style, label=of) for _, style, of in references]
  legend.append(Line2D([], [], color="gray", ls="", marker="v", fillstyle="none", label="a bound"))
  for ax, size in zip(axes[0], sizes, strict=False):
    for ref, style, _ in references:
      for i, name in enumerate(LABELS):
        fractions = [
          (b, s["rows"][name][f"tokens_vs_{ref}"])
          for b, s in all_summaries[size].items()
          if name != ref and name in s["rows"] and s["rows"][name].get(f"tokens_vs_{ref}")
        ]
        exact = [(b, f) for b, (kind, f) in fractions if not kind]
        if exact:
          ax.plot(*zip(*exact, strict=True), "o" + style, color=f"C{i}")
        for b, (kind, f) in fractions:
          if kind:
            ax.plot(b, f, "v" if kind == "<" else "^", color=f"C{i}", fillstyle="none")
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set(xscale="log", xlabel="budget (x Chinchilla)", ylabel="token fraction", title=size)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(list(all_summaries[size]), [f"{b:g}x" for b in all_summaries[size]])
    ax.grid(alpha=0.3)
  axes[0][-1].legend(
    handles=legend, loc="center", fontsize=9, title="token fraction, per optimizer"
  )
  axes[0][-1].set_axis_off()
  for row, size in zip(axes[1:], sizes, strict=True):
    for ax in row[len(VARIANTS) :]:
      ax.set_visible(False)
    for ax, variant in zip(row, VARIANTS, strict=False):
      lrs = set()
      for budget, s in all_summaries[size].items():
        done = sorted((lr, x) for lr, x in s["grids"][variant].items() if x is not None)
        if done:
          ax.plot(*zip(*done, strict=True), "o-", label=f"{budget:g}x")
          lrs.update(lr for lr, _ in done)
      ax.set(xscale="log", xlabel="peak lr", ylabel="final val loss", title=f"{size} {variant}")
      ax.xaxis.set_minor_locator(NullLocator())  # ticks at the grid's lrs only
      ax.set_xticks(sorted(lrs), [f"{lr:g}" for lr in sorted(lrs)])
      ax.grid(alpha=0.3)
      if lrs:
        ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def stage_hours(runner: Runner) -> dict[str, float]:
  """Wall-clock hours the kept runs took on these cores, per stage of ``STAGES`` (a size's
  budgets above the previous stage's, up to its own) and for ``whitening``'s cheaper methods;
  a branch's hours include the trunk steps it ran."""
  hours: dict[str, float] = {}
  for path in sorted(runner.runs_dir.glob("*.json")):
    record = json.loads(path.read_text())
    size, variant, budget = record["point"]["size"], record["point"]["variant"], record["budget"]
    stage = next(f"{s} {b:g}x" for s, b, *_ in STAGES if s == size and budget <= b)
    key = "cheaper whitenings" if variant in WHITENINGS else stage
    hours[key] = hours.get(key, 0.0) + record["wall_s"] / 3600
  return hours


README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
README_QUOTE = (  # the README's quote of the report sits between these lines
  "<!-- quoted from train/bench/results/budgets/budgets.md by "
  "`python -m train.bench.budgets --only report` -->\n",
  "<!-- budgets: end -->\n",
)


def readme_quote(report_text: str) -> str:
  """What the README quotes of the report: the table of the most tokens at which every
  optimizer of ``VARIANTS`` has run, its size's token fractions by budget, and the hours the
  runs took."""
  tables = re.findall(
    r"#### (\S+) \(.*?\) at \S+ Chinchilla \(([\d,]+) tokens\)\n\n(\|.*?\n)\n", report_text, re.S
  )
  complete = [
    (int(tokens.replace(",", "")), size, table)
    for size, tokens, table in tables
    if all(f"| {LABELS[v]} |" in table for v in VARIANTS)
  ]
  if not complete:
    raise ValueError("no budget in the report has a run of every optimizer: nothing to quote")
  _, size, table = max(complete)
  trend = re.search(
    rf"#### {re.escape(size)}: tokens of Adam's .*? by budget\n\n(\|.*?\n)\n", report_text, re.S
  ).group(1)
  hours = re.search(r"Hours of runs so far.*\n", report_text).group(0)
  return (
    f"{table}\nThe tokens each optimizer trained on, as a fraction of the tokens plain Adam "
    "needs to reach the same final loss, at each budget's best point so far (of tuned "
    f"Adam's in brackets, once it has run):\n\n{trend}\n{hours}"
  )


def quote_in_readme(report_text: str, readme: pathlib.Path = README) -> None:
  """Replaces the README's quote of the report with :func:`readme_quote`."""
  begin, end = README_QUOTE
  text = readme.read_text()
  if text.count(begin) != 1 or text.count(end) != 1:
    raise ValueError(f"{readme} needs the lines {begin!r} and {end!r} once each around the quote")
  head, rest = text.split(begin)
  _, tail = rest.split(end)
  readme.write_text(head + begin + readme_quote(report_text) + end + tail)


def report(runner: Runner, out: pathlib.Path) -> None:
  """Writes ``budgets.md``, ``.json`` and ``.png`` from the run JSONs alone."""
  runner = runner.read_only()
  all_summaries = summaries(runner)
  tables = [
    budget_table(size, budget, s)
    for size, per_budget in all_summaries.items()
    for budget, s in reversed(per_budget.items())  # the largest budget first
  ]
  trends = [
    f"#### {size}: tokens of Adam's (of tuned Adam's) by budget\n\n{trend_table(size, s)}\n"
    f"#### {size}: the best lr by budget\n\n{best_lr_table(size, s)}"
    for size, s in all_summaries.items()
  ]
  hours = "; ".join(f"{stage} {h:.1f} h" for stage, h in stage_hours(runner).items())
  text = (
    "## Budgets (`python -m train.bench.budgets`)\n\n"
    + "\n".join(tables + trends)
    + "\nBest lr: the lowest seed-0 final loss of a grid that brackets it (`~` while its lr "
    "grid, or in the budget tables its group grid, is open); by budget, in brackets, how much "
    "lower it is than the grid's next best point (compare the seeds' spread at the best "
    "points). "
    "Group lr: the Adam group's peak lr (Adam: its embedding and lm_head lr). Loss: the mean "
    "and half range of the seeds run at the best point (their count in brackets). Tokens: "
    "this budget over the budget at which the reference reaches the same loss (below 1: "
    "fewer tokens than the reference), the reference's loss interpolated linearly in log "
    "budget between its best final losses at 0.25x to 4x; `<`/`>` a bound beyond the "
    "budgets measured. Wall clock: tokens x the step-time ratio to Adam (each optimizer's "
    "fastest median step time over its runs on these shared CPU cores).\n\n"
    f"Hours of runs so far, on these 2 shared CPU cores: {hours or 'none'}.\n"
  )
  if check := cosine_check(runner):
    text += "\n#### WSD against cosine (tiny-w64, 1x, each best point)\n\n" + check
  if table := defaults_table(runner, "tiny-w64", all_summaries.get("tiny-w64", {})):
    text += (
      "\n#### The trainer's defaults against the best points (tiny-w64)\n\n"
      "Each optimizer at the trainer's default lr, Adam-group lr and whitening (Adam b2 0.95 "
      "as every run here), against its best point so far (`~`: its grid is open).\n\n" + table
    )
  if table := whitening_table(runner):
    text += (
      "\n#### SWAN's whitening: 8 Polar Express steps against a cheaper method (tiny-w64, "
      "`--only whitening`)\n\n" + table
    )
  out.mkdir(parents=True, exist_ok=True)
  harness.save(text, out / "budgets.md")
  (out / "budgets.json").write_text(json.dumps(all_summaries, indent=1, default=str))
  if all_summaries:
    plot(all_summaries, out / "budgets.png")


def queue(runner: Runner, stages=STAGES, wait_s: float = 60.0) -> None:
  """Runs ``stages`` in order, then again while another process trains a run they need."""
  while True:
    runner.passed_over.clear()
    for size, budget, seeds, cosine in stages:
      stage(runner, size, budget, seeds, cosine)
    if not runner.passed_over:
      return
    print(f"waiting for {sorted(runner.passed_over)} (another process)", flush=True)
    time.sleep(wait_s)


def main() -> None:
  parser = harness.parser(__doc__, "budgets")
  parser.add_argument("--only", choices=("queue", "whitening", "report"), action="append")
  parser.add_argument("--stage", type=int, nargs="+", help="queue: these STAGES (0-based) only")
  parser.add_argument("--work", type=pathlib.Path, default=pathlib.Path("runs/budgets"))
  parser.add_argument("--runs", type=pathlib.Path, default=RUNS, help="the run JSONs")
  args = parser.parse_args()
  runner = Runner(args.runs, args.work)
  for what in args.only or ("queue", "report"):
    if what == "queue":
      chosen = STAGES if args.stage is None else tuple(STAGES[i] for i in args.stage)
      queue(runner, chosen)
    elif what == "whitening":
      whitening(runner)
    else:
      report(runner.read_only(), args.out)
      quote_in_readme((args.out / "budgets.md").read_text())


if __name__ == "__main__":
  main()
