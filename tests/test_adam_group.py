"""The joint grid of the matrix lr and the Adam group's: its best pair, widening and report."""

import json
import math

import pytest

from tests import fake_runs
from train.bench import adam_group
from train.bench.convergence import protocol
from train.bench.convergence import search
from train.bench.convergence.store import Store

# Fake optima (lr, group lr): Adam's embeddings want 0.2, beyond the grid's edge (0.1).
OPTIMUM = {
  "swan": (0.004, 0.05),
  "sinkgd": (0.005, 0.025),
  "adam": (0.002, 0.2),
  "muon": (0.02, 0.02),
}


def _fake_train(config) -> None:
  o = config.optimizer
  group = o.lr * o.embed_lr_scale if o.name == "adam" else o.adam_group_lr
  lr_best, group_best = OPTIMUM[o.name]
  final = 4 + 0.1 * math.log2(o.lr / lr_best) ** 2 + 0.05 * math.log2(group / group_best) ** 2
  fake_runs.write_run_folder(config, final)


@pytest.fixture
def store(tmp_path):
  return Store(tmp_path / "runs", tmp_path / "work", 40, 40, _fake_train)


def _summaries(store) -> dict[str, dict]:
  return {v: adam_group.summarize(v, adam_group.sweep(store, v)) for v in adam_group.LRS}


def test_each_window_slides_to_its_best_pair(store):
  summaries = _summaries(store)
  for variant, name in (("swan", "swan"), ("sinkgd", "sinkgd"), ("adam-b2_0.999", "adam")):
    best, (lr, group) = summaries[variant]["best"], OPTIMUM[name]
    assert (best["lr"], best["group_lr"]) == pytest.approx((lr, group))
    assert summaries[variant]["ratio"] == pytest.approx(group / lr)
    assert summaries[variant]["complete"]
  for variant in adam_group.LRS:  # a 4 x 4 window holds the best and both its neighbours
    grid = {(lr, g): x for lr, g, x in summaries[variant]["losses"]}
    best = summaries[variant]["best"]
    inside = [p for p in adam_group.window(variant, grid) if grid.get(p) is not None]
    assert len(inside) == 16
    for k in (0.5, 2):
      assert (best["lr"] * k, best["group_lr"]) in inside
      assert (best["lr"], best["group_lr"] * k) in inside
  adam = {(lr, g) for lr, g, x in summaries["adam-b2_0.999"]["losses"] if x is not None}
  assert {g for _, g in adam} >= {0.2, 0.4}  # slid up to the embeddings' optimum
  assert (0.008, 0.0125) not in adam  # left behind, never run
  swan = sorted({g for _, g, _ in summaries["swan"]["losses"]})
  assert swan == pytest.approx([0.00625, *adam_group.GROUP_LRS])  # neighbours tie: one down


def test_the_papers_pairing_reuses_the_convergence_runs():
  """SinkGD's Adam group at 20x its matrix lr (its global lr), SWAN's and Adam's at 1x."""
  assert adam_group.joint_run("sinkgd", 2.5e-3, 0.05).tag == "tiny-sinkgd-lr0.0025-seed0"
  other = adam_group.joint_run("sinkgd", 2.5e-3, 0.1)
  assert other.tag == "tiny-sinkgd+adam_lr0.1-lr0.0025-seed0"
  assert adam_group.joint_run("swan", 4e-3, 4e-3).tag == "tiny-swan-lr0.004-seed0"
  embed = adam_group.joint_run("adam-b2_0.999", 0.002, 0.05)
  assert embed.tag == "tiny-adam-b2_0.999+embed_lr0.05-lr0.002-seed0"


def test_the_report_comes_from_the_run_jsons_alone(store, tmp_path):
  adam_group.sweep(store, "swan")
  adam_group.report(store, tmp_path / "out")
  text = (tmp_path / "out" / "adam_group.md").read_text()
  assert "best so far: lr 0.004, group lr 0.05 (k = 12.5), loss 4.000." in text
  assert "#### sinkgd" in text and "nothing ran yet" in text  # never trained by the report
  summaries = json.loads((tmp_path / "out" / "adam_group.json").read_text())
  assert summaries["sinkgd"]["best"] is None
  assert (tmp_path / "out" / "adam_group.png").stat().st_size > 0


def test_every_run_counts_however_it_came_to_be_run(store):
  adam = "adam-b2_0.999"
  for lr, group in ((0.002, 0.1), (0.002, 0.05), (0.002, 0.2), (0.002, 0.00625)):
    store.get(adam_group.joint_run(adam, lr, group))
  grid = adam_group.sweep(store.read_only(), adam)
  assert grid[0.002, 0.2] is not None and grid[0.004, 0.2] is None  # shown, the rest open
  assert grid[0.002, 0.00625] is not None  # outside the window, but a run: shown
  assert not adam_group.summarize(adam, grid)["complete"]
  assert adam_group.summarize(adam, adam_group.sweep(store, adam))["complete"]


def test_a_diverged_run_is_never_the_best():
  grid = {(0.004, 0.1): math.nan, (0.004, 0.05): 4.2, (0.002, 0.1): None}
  assert adam_group.summarize("swan", grid)["best"]["group_lr"] == 0.05


def test_the_tiny_best_ratio_is_checked_on_small_at_its_best_lr(store, tmp_path):
  assert adam_group.small_checks(store) == {}  # no finished convergence sweep yet
  best = search.best_lrs(search.sweep(store))
  for runs in protocol.seed_runs(best).values():
    list(map(store.get, runs))
  adam = search.adam_reference(store, best)
  small = search.best_lrs(search.small_sweep(store, best, adam))
  assert adam_group.small_checks(store) == {}  # no complete window yet
  adam_group.sweep(store, "swan")
  (recipe, equal), *others = adam_group.small_checks(store).values()
  assert not others and recipe.size == equal.size == "small"
  assert recipe.optimizer.lr == equal.optimizer.lr == small["swan"]
  assert recipe.optimizer.adam_group_lr == pytest.approx(12.5 * small["swan"])  # tiny's k
  list(map(store.get, (recipe, equal)))
  adam_group.report(store, tmp_path / "out")
  text = (tmp_path / "out" / "adam_group.md").read_text()
  assert f"On small, at the small sweep's best lr {small['swan']:g}: group lr" in text
