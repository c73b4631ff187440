"""The sharded-update benchmark's modes compile, and each whitens as the table says it does."""

import pytest

from models import configs
from train.bench import hlo
from train.bench import sharded_update


def test_every_mode_compiles_and_the_found_and_given_layouts_cost_the_same():
  config = configs.get_config("60m")
  costs, warned = {}, {}
  for mode in sharded_update.MODES:
    compiled, *_, warned[mode] = sharded_update.compile_update(config, (2, 2, 2), mode)
    costs[mode] = (hlo.flops(compiled), hlo.collective_bytes(compiled.as_text()))
  assert warned == {mode: mode == "Auto, mesh=mesh (warns)" for mode in sharded_update.MODES}
  whole = [mode for mode, (*_, whole) in sharded_update.MODES.items() if whole]
  for mode in whole:  # the same collectives; FLOPs within 0.1% (Auto's elementwise layout)
    assert costs[mode][1] == costs["Explicit, mesh=mesh"][1], mode
    assert costs[mode][0] == pytest.approx(costs["Explicit, mesh=mesh"][0], rel=1e-3), mode
  assert costs["Auto, mesh=mesh (warns)"] == costs["Auto, mesh=None"]
  assert "all-to-all" in costs["Auto, shardings="][1]
