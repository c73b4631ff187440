"""The docs site: it builds with warnings as errors, and its Python examples run as written."""

import pathlib
import re
import subprocess
import sys

import pytest

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


def test_the_readmes_results_tables_are_the_budget_reports():
  root = DOCS.parent
  report = (root / "train/bench/results/budgets/budgets.md").read_text()
  table = re.search(r"(\| optimizer \| best lr.*?)\n\n", report, re.S).group(1)
  trend = re.search(r"by budget\n\n(\| optimizer \|.*?)\n\n", report, re.S).group(1)
  hours = re.search(r"Hours of runs so far.*", report).group(0)
  readme = (root / "README.md").read_text()
  assert table in readme and trend in readme and hours in readme
  assert len(readme.splitlines()) <= 200
