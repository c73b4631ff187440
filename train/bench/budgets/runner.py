"""Trunks and their cooldown branches, trained resumably, each finished branch kept as JSON."""

import dataclasses
import fcntl
import json
import pathlib
import shutil
import statistics
import time
from collections.abc import Callable

from train import checkpoint
from train import loop
from train import metrics
from train.bench.budgets import protocol
from train.bench.budgets.protocol import Point
from train.config import TrainConfig
from train.config import model_data


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
    steps_of: Callable[[str, float], int] = protocol.chinchilla_steps,
    checkpoint_every: int = 250,
  ):
    self.runs_dir, self.work, self.train_fn = runs_dir, work, train_fn
    self.steps_of, self.checkpoint_every = steps_of, checkpoint_every
    self.claims: set[str] = set()  # the trunks (and cosine runs) this process trains now
    self.passed_over: set[str] = set()  # those it left to another process

  def read_only(self) -> "Runner":
    """The same runs, never trained: what the report reads."""
    return Runner(self.runs_dir, self.work, None, self.steps_of, self.checkpoint_every)

  def warmup(self, size: str) -> int:
    """The warmup every budget of ``size`` shares: 10% of its smallest budget."""
    return max(1, round(0.1 * self.steps_of(size, protocol.BUDGETS[size][0])))

  def path(self, point: Point, budget: float, schedule: str = "wsd") -> pathlib.Path:
    """Where ``point``'s run at ``budget`` on ``schedule`` keeps its JSON."""
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
      for smaller in (b for b in protocol.BUDGETS[point.size] if b < budget):
        self.get(point, smaller)
    steps = self.steps_of(point.size, budget)
    run = self.config(point, steps, schedule, run_name(point, budget, schedule))
    start = time.perf_counter()
    if not loop.completed(run.run_dir):
      if schedule == "wsd" and not _checkpoints(run.run_dir):
        self._branch_from_trunk(point, protocol.decay_start(steps), run.run_dir)
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

  def config(self, point: Point, steps: int, schedule: str, name: str) -> TrainConfig:
    """``point``'s run of ``steps``: ``wsd`` a branch, ``trunk`` its stable phase, ``cosine``."""
    decay = 0.0 if schedule == "trunk" else protocol.DECAY_FRACTION
    return TrainConfig(
      model=point.size,
      data=model_data(point.size, seq_len=protocol.SEQ_LEN),
      optimizer=point.optimizer(
        self.warmup(point.size), decay, "cosine" if schedule == "cosine" else "wsd"
      ),
      steps=steps,
      batch_size=protocol.BATCH,
      eval_every=max(1, steps // 20),
      eval_batches=protocol.EVAL_BATCHES,
      checkpoint_every=self.checkpoint_every,
      keep_checkpoints=2,
      out=self.work / name,
      seed=point.seed,
      resume=True,
    )

  def _branch_from_trunk(self, point: Point, start: int, branch_dir: pathlib.Path) -> None:
    """Takes ``point``'s trunk to step ``start`` and copies that checkpoint (and the metrics
    up to it) into ``branch_dir``, whose run then resumes from it."""
    trunk = self.config(point, start, "trunk", point.tag)
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


TRAIN_LOSS_TAIL = 0.05  # a run's final train loss: the mean logged over its last 5% of steps


def run_record(point: Point, budget: float, config: TrainConfig, wall_s: float) -> dict:
  """The JSON kept for a finished run: its settings, effective rates, evaluations and final
  train loss (against the final val loss: how much of the training split it memorized)."""
  records = metrics.read_jsonl(config.run_dir / "metrics.jsonl")
  header = next(r for r in records if r["kind"] == "run")
  train = [r for r in records if r["kind"] == "train"]
  evals = [
    {k: r[k] for k in ("step", "tokens", "val_loss")} for r in records if r["kind"] == "eval"
  ]
  if not evals or evals[-1]["step"] != config.steps:
    raise RuntimeError(f"{config.run_dir} has no evaluation at its last step {config.steps}")
  last = [r["loss"] for r in train if r["step"] > (1 - TRAIN_LOSS_TAIL) * config.steps]
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
    "final_train_loss": statistics.mean(last),
    "evals": evals,
    "step_time_median_s": statistics.median(r["step_time_s"] for r in train),
    "wall_s": wall_s,  # of this run (a branch: its decay, and its trunk's share if run now)
  }
