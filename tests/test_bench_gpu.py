"""``train.bench.gpu``: the largest-batch search, and the whole benchmark in ``--smoke`` mode."""

import jax
import pytest

from train import build
from train.bench import gpu
from train.bench import harness


def _out_of_memory() -> jax.errors.JaxRuntimeError:
  return jax.errors.JaxRuntimeError(
    "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 34359738368 bytes."
  )


def _fits_up_to(limit: int, error=_out_of_memory):
  """A ``run(batch)`` that records its calls and fails with ``error()`` above ``limit``."""
  calls = []

  def run(batch):
    calls.append(batch)
    if batch > limit:
      raise error()
    return {"batch": batch}

  return run, calls


def test_doubles_until_out_of_memory():
  run, calls = _fits_up_to(40)
  assert gpu.largest_batch(run, 8, 512) == (32, {"batch": 32}, "out of memory at 64")
  assert calls == [8, 16, 32, 64]


def test_stops_at_the_cap():
  run, calls = _fits_up_to(1000)
  assert gpu.largest_batch(run, 3, 12) == (12, {"batch": 12}, "cap 12")
  assert calls == [3, 6, 12]


def test_out_of_memory_raised_through_the_build_is_recognised():
  def startup_error():
    try:
      raise _out_of_memory()
    except jax.errors.JaxRuntimeError as e:
      raise build.StartupError("building --config 350m ... failed") from e

  run, _ = _fits_up_to(16, lambda: startup_error())
  assert gpu.largest_batch(run, 16, 512) == (16, {"batch": 16}, "out of memory at 32")
  run, _ = _fits_up_to(4, lambda: startup_error())
  assert gpu.largest_batch(run, 8, 512) == (None, None, "out of memory at 8")


@pytest.mark.parametrize(
  "error",
  [lambda: jax.errors.JaxRuntimeError("INVALID_ARGUMENT: bad shapes"), lambda: ValueError("x")],
)
def test_other_errors_are_raised(error):
  run, _ = _fits_up_to(8, error)
  with pytest.raises(type(error())):
    gpu.largest_batch(run, 8, 512)


def test_start_batch_must_be_within_the_cap():
  with pytest.raises(ValueError, match="--start-batch 32"):
    gpu.largest_batch(lambda batch: batch, 32, 16)


@pytest.mark.slow
def test_smoke_run_writes_every_row(tmp_path):
  out = tmp_path / "gpu.md"
  gpu.main(["--smoke", "--out", str(out)])
  text = out.read_text()
  assert jax.devices()[0].device_kind in text
  cells = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]
  rows = [cells(line) for line in text.splitlines() if line.startswith("| tiny |")]
  train = [r for r in rows if r[1] in harness.OPTIMIZERS]
  assert [r[1] for r in train] == list(harness.OPTIMIZERS)
  for r in train:  # batch 2 (the smoke cap), positive step time and tokens/s
    assert r[2] == "2" and r[3] == "cap 2" and float(r[4]) > 0 and float(r[5].replace(",", "")) > 0
  whiten = [r for r in rows if r[2] in gpu.METHODS]
  assert sorted((r[2], r[3]) for r in whiten) == sorted(
    (m, p) for m in gpu.METHODS for p in gpu.PRECISIONS
  )
  for r in whiten:  # timed, with a cosine to U V^T, or refused by the backend, said so
    if r[7]:
      assert r[7].startswith("not offered") and r[4] == "", r
    else:
      assert float(r[4]) > 0 and 0.9 < float(r[6]) <= 1 + 1e-6, r
