"""The run JSONs: each finished run's settings and evaluation record, read, adopted from its run
folder, or trained."""

import argparse
import dataclasses
import json
import math
import os
import pathlib
import statistics
import time
from collections.abc import Callable

import numpy as np

from train import loop
from train import metrics
from train.bench.convergence import protocol
from train.config import TrainConfig
from train.optimizers import OptimizerConfig

REPO = pathlib.Path(__file__).resolve().parents[3]
RUNS = REPO / "train" / "bench" / "results" / "convergence" / "runs"


def add_runs_flag(parser: argparse.ArgumentParser) -> None:
  """``--runs``: the run store, shared by the convergence, transfer and Adam-group benchmarks."""
  parser.add_argument(
    "--runs",
    type=pathlib.Path,
    default=RUNS,
    help="the run store, shared with the convergence benchmark",
  )


def _header_settings(header: dict) -> dict:
  """The protocol settings in a run folder's header, from the CLI's ``args`` or the ``config``."""
  if "args" in header:  # the trainer before TrainConfig: every flag as a string
    a = header["args"]
    return {
      "model": a["config"],
      "optimizer": a["optimizer"],
      "lr": float(a["lr"]),
      "adam_b2": float(a["adam_b2"]),
      "max_grad_norm": float(a["max_grad_norm"]),
      "non_matrix": a["non_matrix"],
      "seed": int(a["seed"]),
      "steps": int(a["steps"]),
      "batch_size": int(a["batch_size"]),
      "seq_len": int(a["seq_len"]),
    }
  c, o = header["config"], header["config"]["optimizer"]
  return {
    "model": c["model"],
    "optimizer": o["name"],
    "lr": float(o["lr"]),
    "adam_b2": float(o["adam_b2"]),
    "max_grad_norm": float(o["max_grad_norm"]),
    "non_matrix": o.get("non_matrix", "adam"),
    "seed": c["seed"],
    "steps": c["steps"],
    "batch_size": c["batch_size"],
    "seq_len": c["data"]["seq_len"],
  }


def run_record(
  run: protocol.Run, config: TrainConfig, folder: pathlib.Path, wall_time_s: float | None
):
  """The JSON kept for a finished run folder; raises if the folder ran other settings."""
  records = metrics.read_jsonl(folder / "metrics.jsonl")
  header = next(r for r in records if r["kind"] == "run")
  o = config.optimizer
  expected = {
    "model": config.model,
    "optimizer": o.name,
    "lr": o.lr,
    "adam_b2": o.adam_b2,
    "max_grad_norm": o.max_grad_norm,
    "non_matrix": getattr(o, "non_matrix", "adam"),
    "seed": config.seed,
    "steps": config.steps,
    "batch_size": config.batch_size,
    "seq_len": config.data.seq_len,
  }
  found = _header_settings(header)
  if found != expected:
    diff = {k: (found[k], v) for k, v in expected.items() if found[k] != v}
    raise ValueError(f"run folder {folder} is not {run.tag}: (found, expected) {diff}")
  optimizer = json.loads(to_json(o))
  if "config" in header:
    _check_optimizer(header["config"]["optimizer"], o, f"run folder {folder}", run.tag)
  train = [r for r in records if r["kind"] == "train"]
  return {
    "tag": run.tag,
    "size": run.size,
    "variant": run.variant,
    "seed": run.seed,
    "params": header["params"],
    "optimizer": optimizer,
    "rates": o.peak_rates,
    "config": json.loads(to_json(_portable(config))),
    "evals": [
      {k: r[k] for k in ("step", "tokens", "val_loss", "val_ppl")}
      for r in records
      if r["kind"] == "eval"
    ],
    "step_time_median_s": statistics.median(r["step_time_s"] for r in train),
    "train_time_s": _loop_seconds(train),
    "wall_time_s": wall_time_s,
    "source": os.path.relpath(folder.resolve(), REPO),  # no directory of this machine
  }


def _check_optimizer(found: dict, expected: OptimizerConfig, where: str, tag: str) -> None:
  """Raises if ``found`` (a run's optimizer settings) differs from ``expected`` (numbers to 6
  significant digits, as run names print them); a field the run's trainer did not have yet
  ran at today's default (fields are added so)."""
  want = json.loads(to_json(expected))
  defaults = json.loads(to_json(type(expected)()))
  found = {**defaults, **found}
  same = lambda a, b: (
    a == b or (isinstance(a, float) and isinstance(b, float) and math.isclose(a, b, rel_tol=1e-6))
  )
  if diff := {k: (v, want[k]) for k, v in found.items() if not same(want.get(k), v)}:
    raise ValueError(
      f"{where} ran other optimizer settings than {tag}: (ran, expected) {diff}; a changed "
      "default needs a new variant name"
    )


def _portable(config: TrainConfig) -> TrainConfig:
  """``config`` without this machine's paths: no run folder, the corpus relative to the repo."""
  corpus = pathlib.Path(config.data.data)
  if corpus.is_relative_to(REPO):
    corpus = corpus.relative_to(REPO)
  return dataclasses.replace(
    config, out=None, data=dataclasses.replace(config.data, data=str(corpus))
  )


def _loop_seconds(train: list[dict]) -> float:
  """Seconds of the training loop: each train record's mean step time times its window."""
  steps = [r["step"] for r in train]
  windows = np.diff([0, *steps]) if steps else []
  return float(sum(r["step_time_s"] * n for r, n in zip(train, windows, strict=True)))


def to_json(obj) -> str:
  """A dataclass as JSON, its paths as strings."""
  return json.dumps(dataclasses.asdict(obj), default=str)


class Store:
  """The run JSONs under ``runs_dir``: read, adopted from ``work``, or trained by ``train_fn``.

  Args:
    runs_dir: where each finished run's ``TAG.json`` is kept.
    work: run folders (``work/TAG``); completed ones are adopted.
    steps: the tiny protocol's steps, of every size but ``small``; ``small_steps``
      the small model's.
    train_fn: trains a ``TrainConfig`` into its folder; ``None``: never train
      (a run with neither JSON nor completed folder is missing).
  """

  def __init__(
    self,
    runs_dir: pathlib.Path,
    work: pathlib.Path,
    steps: int,
    small_steps: int,
    train_fn: Callable[[TrainConfig], object] | None,
  ):
    self.runs_dir, self.work, self.train_fn = runs_dir, work, train_fn
    self.tiny_steps, self.small_steps = steps, small_steps

  def get(self, run: protocol.Run) -> dict | None:
    """``run``'s JSON: kept, adopted from a completed folder, or trained now (if allowed)."""
    path = self.runs_dir / f"{run.tag}.json"
    steps = self.small_steps if run.size == "small" else self.tiny_steps
    config = protocol.train_config(run, steps, self.work)
    if path.exists():
      record = json.loads(path.read_text())
      if record["config"]["steps"] != config.steps:
        raise ValueError(
          f"{path} ran {record['config']['steps']} steps, not --steps {config.steps}: use "
          "another --out for another protocol"
        )
      _check_optimizer(record["optimizer"], run.optimizer, str(path), run.tag)
      return record
    wall = None
    if not loop.completed(config.run_dir):
      if self.train_fn is None:
        return None
      print(f"training {run.tag}", flush=True)
      (config.run_dir / "metrics.jsonl").unlink(missing_ok=True)
      start = time.perf_counter()
      self.train_fn(config)
      wall = time.perf_counter() - start
      if not loop.completed(config.run_dir):
        raise RuntimeError(f"{run.tag} stopped before its last step (preempted?); not kept")
    record = run_record(run, config, config.run_dir, wall)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return record

  def read_only(self) -> "Store":
    """This store, never training."""
    return Store(self.runs_dir, self.work, self.tiny_steps, self.small_steps, None)

  def final(self, run: protocol.Run) -> float | None:
    record = self.get(run)
    return None if record is None else record["evals"][-1]["val_loss"]
