"""The code passes the linter and the formatter configured in pyproject.toml (ruff)."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(command):
  result = subprocess.run(
    [sys.executable, "-m", "ruff", *command, str(ROOT)],
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )
  assert result.returncode == 0, result.stdout + result.stderr
