"""What every benchmark shares: interleaved median timing, the machine line, Markdown tables."""

import argparse
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import jax

RESULTS = pathlib.Path(__file__).parent / "results"

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


def parser(doc: str, result: str) -> argparse.ArgumentParser:
  """A benchmark's argument parser, with ``--out`` defaulting to ``results/RESULT``."""
  p = argparse.ArgumentParser(description=doc.splitlines()[0])
  p.add_argument("--out", type=pathlib.Path, default=RESULTS / result, help="file to write")
  return p


def save(text: str, path: pathlib.Path) -> None:
  """Prints ``text`` and writes it to ``path``."""
  print(text)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  print(f"wrote {path}")
