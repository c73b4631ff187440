"""What every benchmark shares: the optimizers compared, one-device experiments, interleaved
median timing, the cosine to the polar factor, the machine line and Markdown tables."""

import argparse
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from train import build
from train import mesh as mesh_lib
from train.config import TrainConfig

RESULTS = pathlib.Path(__file__).parent / "results"
# The optimizers every benchmark compares: Adam (the reference) first, optax's Muon (the peer) last.
OPTIMIZERS = ("adam", "swan", "sinkgd", "muon")

# Called untimed before each timed call; returns the call to time (e.g. on fresh donated copies).
Setup = Callable[[], Callable[[], Any]]


def time_call(fn: Callable[[], Any]) -> float:
  """Seconds from calling ``fn`` until its result is ready on the device."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def interleaved_medians(setups: dict[str, Setup], reps: int) -> dict[str, float]:
  """Median seconds of each call, timed in ``reps`` rounds that take every call in turn.

  Interleaving makes machine noise (other processes, frequency changes) hit all
  of them alike, so their ratios are steadier than their absolute times.
  """
  times = {name: [] for name in setups}
  for _ in range(reps):
    for name, setup in setups.items():
      times[name].append(time_call(setup()))
  return {name: statistics.median(t) for name, t in times.items()}


class Stepper:
  """One experiment's compiled train step on a fixed batch, advancing its own donated state."""

  def __init__(self, exp: build.Experiment, batch: dict | None = None):
    self.exp = exp
    self.batch = exp.random_batch() if batch is None else batch
    self.state, _ = exp.train_step(exp.state, self.batch)  # warms up; exp.state is donated

  def step(self) -> jax.Array:
    """One train step; its state replaces the donated one. Returns the loss."""
    self.state, metrics = self.exp.train_step(self.state, self.batch)
    return metrics["loss"]

  def setup(self) -> Callable[[], jax.Array]:
    """A ``Setup`` for :func:`interleaved_medians`: times one step."""
    return self.step


def compiled_bytes(compiled) -> int:
  """Peak memory XLA plans for one call: arguments + outputs + temporaries - aliased (donated)."""
  m = compiled.memory_analysis()
  return (
    m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
  )


def one_device_mesh() -> jax.sharding.Mesh:
  """The trainer's mesh over the first device alone."""
  return mesh_lib.make_mesh(None, jax.devices()[:1])


def experiment(config: TrainConfig, *, abstract: bool = False) -> build.Experiment:
  """``config`` built on the first device alone, as the trainer builds it."""
  return build.build(config, one_device_mesh(), abstract=abstract)


def exact_polar(x: np.ndarray, rtol: float = 0.0) -> np.ndarray:
  """The (pseudo-)polar factor ``U V^T`` of each matrix (last two axes) of ``x``, float64 SVD.

  Singular directions at or under ``rtol`` times the largest singular value are left out.
  """
  u, s, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
  return (u * (s > rtol * s[..., :1])[..., None, :]) @ vt


def cosine_to_polar(update: np.ndarray, grad: np.ndarray, rtol: float = 0.0) -> float:
  """cos(update, U V^T) of ``grad``'s exact polar factor, the mean over matrices (last two axes)."""
  polar, update = exact_polar(grad, rtol), np.asarray(update, np.float64)
  norms = np.linalg.norm(update, axis=(-2, -1)) * np.linalg.norm(polar, axis=(-2, -1))
  return float(np.mean(np.sum(update * polar, axis=(-2, -1)) / norms))


def simulate_host_devices(count: int) -> None:
  """Asks XLA for ``count`` CPU devices, unless ``XLA_FLAGS`` sets a count already.

  JAX reads ``XLA_FLAGS`` once, when its backend starts: call this before any device is used.
  It does not change accelerators.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if "--xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()


def machine(devices: int | None = None) -> str:
  """``N PLATFORM device(s), ARCH, C cores, jax VERSION``: where the figures were measured."""
  count = jax.device_count() if devices is None else devices
  return (
    f"{count} {jax.devices()[0].platform} device(s), {platform.machine()}, "
    f"{os.cpu_count()} cores, jax {jax.__version__}"
  )


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
  """A Markdown table; ``align`` has one letter per column, ``l`` (left) or ``r`` (right)."""
  if len(align) != len(header) or set(align) - {"l", "r"}:
    raise ValueError(f"align {align!r} needs one 'l' or 'r' for each of {len(header)} columns")
  line = lambda cells: "| " + " | ".join(map(str, cells)) + " |"
  rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
  return "\n".join([line(header), rule, *map(line, rows)]) + "\n"


# A table column: row key, header, format spec, alignment ('l' or 'r').
Column = tuple[str, str, str, str]


def table(columns: Sequence[Column], rows: Sequence[dict]) -> str:
  """A Markdown table of ``rows``, one column per ``columns`` entry.

  A number is formatted by its column's spec, a string is written as it is, and a
  missing or ``None`` value leaves its cell empty.
  """
  cell = lambda v, spec: "" if v is None else v if isinstance(v, str) else format(v, spec)
  cells = [[cell(r.get(key), spec) for key, _, spec, _ in columns] for r in rows]
  return markdown_table([c[1] for c in columns], cells, "".join(c[3] for c in columns))


def parser(doc: str, result: str) -> argparse.ArgumentParser:
  """A benchmark's argument parser, with ``--out`` defaulting to ``results/RESULT``."""
  spec = getattr(sys.modules["__main__"], "__spec__", None)  # set when run with -m
  prog = None if spec is None else f"python -m {spec.name.removesuffix('.__main__')}"
  p = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
  p.add_argument("--out", type=pathlib.Path, default=RESULTS / result, help="file to write")
  return p


def save(text: str, path: pathlib.Path) -> None:
  """Prints ``text`` and writes it to ``path``."""
  print(text)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  print(f"wrote {path}")


def save_step_times(out: pathlib.Path, reps: int, steps: dict[str, dict[str, float]]) -> None:
  """Writes ``out/timing.json``: median step seconds per size and setting, with the machine."""
  out.mkdir(parents=True, exist_ok=True)
  timing = {"reps": reps, "machine": machine(), "steps": steps}
  (out / "timing.json").write_text(json.dumps(timing))


def load_step_times(out: pathlib.Path) -> dict:
  """``out/timing.json`` as written by :func:`save_step_times`; ``{}`` if not measured yet."""
  path = out / "timing.json"
  return json.loads(path.read_text()) if path.exists() else {}
