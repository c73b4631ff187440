"""Multi-process training over localhost: 2 processes x 4 CPU devices == 1 process x 8 devices."""

import json
import os
import socket
import subprocess
import sys

import pytest

FLAGS = "--config tiny --seq-len 64 --batch-size 8 --steps 5 --log-every 1 --eval-every 5".split()
FLAGS += ["--eval-batches", "2"]
TIMEOUT_S = 240  # a hung peer fails the test instead of hanging CI


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict[str, str]:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  return env


def _launch(out, devices: int, extra: list[str]) -> subprocess.Popen:
  return subprocess.Popen(
    [sys.executable, "-m", "train", *FLAGS, "--out", str(out), *extra],
    env=_env(devices),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _wait(processes: list[subprocess.Popen]) -> None:
  try:
    outputs = [p.communicate(timeout=TIMEOUT_S)[0] for p in processes]
  except subprocess.TimeoutExpired:
    for p in processes:
      p.kill()
    pytest.fail(f"a training process did not finish within {TIMEOUT_S} s")
  for p, output in zip(processes, outputs, strict=True):
    assert p.returncode == 0, output[-3000:]


def _records(out) -> list[dict]:
  return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  port = _free_port()
  multi = [
    _launch(
      tmp_path / "multi",
      4,
      ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
    )
    for i in range(2)
  ]
  single = _launch(tmp_path / "single", 8, [])
  _wait([*multi, single])
  multi_records, single_records = _records(tmp_path / "multi"), _records(tmp_path / "single")
  assert multi_records[0]["processes"] == 2 and multi_records[0]["devices"] == 8
  losses = lambda records: [r["loss"] for r in records if r["kind"] == "train"]
  evals = lambda records: [r["val_loss"] for r in records if r["kind"] == "eval"]
  assert len(losses(multi_records)) == 5
  assert losses(multi_records) == pytest.approx(losses(single_records), rel=1e-5)
  assert evals(multi_records) == pytest.approx(evals(single_records), rel=1e-5)
  # The same global batches, provable from the logs alone across process counts.
  crcs = lambda records: [r["batch_crc32"] for r in records if r["kind"] == "train"]
  assert crcs(multi_records) == crcs(single_records)
  # Orbax wrote one checkpoint collectively.
  assert (tmp_path / "multi" / "checkpoints" / "5").is_dir()
