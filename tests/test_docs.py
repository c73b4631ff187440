"""The docs site: it builds with warnings as errors, and its Python examples run as written."""

import pathlib
import re
import subprocess
import sys

import pytest

from train.bench.budgets import report as report_lib

DOCS = pathlib.Path(__file__).parents[1] / "docs"


@pytest.mark.slow
def test_the_site_builds_with_warnings_as_errors(tmp_path):
  build = [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(DOCS), str(tmp_path)]
  result = subprocess.run(build, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr
  assert (tmp_path / "api.html").read_text().count("swan_optax.swan") > 0


@pytest.mark.parametrize("page", ["getting_started.md", "drop_in.md"])
def test_every_python_example_runs(page):
  blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S)
  assert blocks
  for i, block in enumerate(blocks):
    exec(compile(block, f"{page}[{i}]", "exec"), {})


def test_the_readmes_results_are_quoted_from_the_budget_report():
  root = DOCS.parent
  report = (root / "train/bench/results/budgets/budgets.md").read_text()
  readme = (root / "README.md").read_text()
  begin, end = report_lib.README_QUOTE
  assert begin + report_lib.readme_quote(report) + end in readme
  assert len(readme.splitlines()) <= 200
