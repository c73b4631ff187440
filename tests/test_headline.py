"""The defaults' table: which runs it trains, its references, and its fractions (fake runs)."""

import dataclasses
import json
import math

import pytest

from tests import fake_runs
from train.bench import adam_group
from train.bench import headline
from train.bench import transfer
from train.bench.convergence import protocol
from train.bench.convergence import search
from train.bench.convergence.store import Store
from train.optimizers import optimizer_config

# Fake final losses: each optimizer's floor, parabolic in log2(lr) around its best lr; Adam
# with its embeddings (and lm_head) at their own lr is 0.05 lower at 0.05; small is 0.3
# higher; each seed 0.01 higher.
FLOOR = {"adam": 4.0, "swan": 3.9, "sinkgd": 3.85, "muon": 3.8}
BEST_LR = {"adam": 2e-3, "swan": 2e-3, "sinkgd": 0.01, "muon": 0.02}


def _fake_final_loss(config) -> float:
  o = config.optimizer
  best = BEST_LR[o.name] / (2 if config.model == "tiny-w256" else 1)
  loss = FLOOR[o.name] + 0.1 * math.log2(o.lr / best) ** 2
  if o.name == "adam":
    loss += 0.05 * (o.adam_b2 == 0.95)
    if o.embed_lr_scale != 1:
      loss += 0.02 * math.log2(o.lr * o.embed_lr_scale / 0.05) ** 2 - 0.05
  return loss + 0.3 * (config.model == "small") + 0.01 * config.seed


def _fake_train(config) -> None:
  fake_runs.write_run_folder(config, _fake_final_loss(config))


@pytest.fixture
def store(tmp_path):
  """The searches the table builds on, finished: the convergence sweep and seeds, the small
  sweep, and Adam's joint grid of its lr and its embeddings'."""
  store = Store(tmp_path / "runs", tmp_path / "work", 40, 40, _fake_train)
  best = search.best_lrs(search.sweep(store))
  for runs in protocol.seed_runs(best).values():
    list(map(store.get, runs))
  search.small_sweep(store, best, search.adam_reference(store, best))
  adam_group.sweep(store, "adam-b2_0.999")
  adam = {"adam-b2_0.999": transfer.GRID["adam-b2_0.999"]}
  for size in headline.LADDER:
    search.sweep(store, size, adam, make_run=transfer.ladder_run)
  return store


def test_defaults_are_named_by_their_settings():
  """... and are the width ladder's runs of the same settings, which they reuse."""
  for name in headline.OPTIMIZERS:
    run, defaults = headline.default_run("tiny", name, 0), optimizer_config(name)
    assert run.optimizer.lr == defaults.lr
    assert getattr(run.optimizer, "scale_rule", None) == getattr(defaults, "scale_rule", None)
    assert math.isclose(run.optimizer.adam_group_lr, defaults.adam_group_peak_lr, rel_tol=1e-6)
  # SWAN's default whitening is not the ladder's: its run is the ladder's at the default's
  # method and steps, named by them.
  swan, ladder = (
    headline.default_run("tiny", "swan", 1),
    transfer.ladder_run("tiny", "swan", 0.002, 1),
  )
  assert swan.tag == "tiny-swan_gram_polar_express5+adam_lr0.1-lr0.002-seed1"
  assert swan.optimizer.whiten_method == optimizer_config("swan").whiten_method
  assert swan.optimizer.whiten_steps == 5
  assert dataclasses.replace(swan.optimizer, whiten_method="polar_express", whiten_steps=None) == (
    ladder.optimizer
  )
  # Muon's default is the convergence grid's (and the width ladder's) run at optax's 0.02.
  assert headline.default_run("tiny", "muon", 2) == protocol.grid_run("tiny", "muon", 0.02, 2)
  sinkgd = headline.default_run("small", "sinkgd", 0)
  assert sinkgd.tag == "small-sinkgd-spectral+adam_lr0.0441942-lr0.0125-seed0"
  assert sinkgd.optimizer.scale_rule == "spectral"
  ladder = transfer.ladder_run("small", "sinkgd-spectral", 0.0125, 0, group_factor=2.0)
  assert sinkgd.tag == ladder.tag and sinkgd.optimizer.lr == ladder.optimizer.lr


def test_references_are_the_best_adam_and_adam_with_tuned_embeddings(store):
  refs = headline.references(store)
  assert [r.tag for r in refs["tiny"]["adam"]] == [
    f"tiny-adam-b2_0.999-lr0.002-seed{s}" for s in protocol.SEEDS
  ]
  assert refs["tiny"]["adam+embed"][2].tag == "tiny-adam-b2_0.999+embed_lr0.05-lr0.002-seed2"
  assert [r.tag for r in refs["small"]["adam+embed"]] == [
    "small-adam-b2_0.999+embed_lr0.05-lr0.002-seed0"
  ]
  # The ladder's rungs: its best plain Adam, and that Adam with the embeddings at tiny's best
  # embedding lr (not at tiny's ratio to the lr: 0.025 at width 256).
  assert refs["tiny-w64"]["adam"] == [transfer.ladder_run("tiny-w64", "adam-b2_0.999", 0.002, 0)]
  assert refs["tiny-w256"]["adam"] == [transfer.ladder_run("tiny-w256", "adam-b2_0.999", 0.001, 0)]
  assert [r.tag for r in refs["tiny-w256"]["adam+embed"]] == [
    "tiny-w256-adam-b2_0.999+embed_lr0.05-lr0.001-seed0"
  ]


def test_an_open_search_leaves_its_reference_unknown(tmp_path):
  store = Store(tmp_path / "runs", tmp_path / "work", 40, 40, None)
  refs = headline.references(store)
  assert refs == {size: {"adam": [], "adam+embed": []} for size in headline.SEEDS}
  text = headline.report_text(headline.summarize(store, {}), {})
  assert "tiny adam: not known yet (its search is open)" in text


def test_the_table_from_the_run_jsons(store):
  list(map(store.get, headline.table_runs(store)))
  store.get(headline.ladder_default("tiny-w64", "swan", 0))  # the same losses: fakes ignore it
  times = {"adam": 1.0, "swan": 1.2, "sinkgd": 1.1}
  timing = {"reps": 3, "machine": "fake", "steps": {size: times for size in headline.SEEDS}}
  summary = headline.summarize(store, timing)
  swan = summary["tiny"][0]
  assert swan["optimizer"] == "swan" and swan["adam_group_lr"] == pytest.approx(0.1)
  # Losses fall linearly, by 1 over a run, to their final: a run 0.1 below the reference's
  # final loss reaches it at 0.9 of its tokens.
  assert swan["adam"]["token_fraction"] == pytest.approx([0.9] * 3)
  assert swan["adam"]["wall_fraction"] == pytest.approx([0.9 * 1.2] * 3)
  assert swan["adam+embed"]["token_fraction"] == pytest.approx([0.95] * 3)
  sinkgd = summary["small"][1]
  final = 3.85 + 0.1 * math.log2(0.25 / 0.2) ** 2 + 0.3
  assert sinkgd["final_loss"] == pytest.approx([final])
  assert sinkgd["adam+embed"]["token_fraction"] == pytest.approx([1 - (4.25 - final)])
  text = headline.report_text(summary, timing)
  assert (
    "| tiny | swan(lr 0.002, unit_rms, gram_polar_express 5, Adam group 0.1) "
    "| 3.910 (3.900-3.920) | 1.20 | 0.90" in text
  )
  assert (
    "small adam+embed: `adam-b2_0.999+embed_lr0.05` at lr 0.002, embeddings and lm_head at 0.05, "
    "final loss 4.250" in text
  )
  muon = summary["tiny"][2]
  assert muon["optimizer"] == "muon" and muon["step_time_ratio"] is None  # not timed
  assert muon["adam"]["token_fraction"] == pytest.approx([0.8] * 3)
  assert (
    "| tiny | muon(lr 0.02, Adam group 0.02) | 3.810 (3.800-3.820) |  | 0.80 (0.80-0.80) |" in text
  )
  assert sinkgd["ladder"] is None and swan["ladder"]["whitening"] == "polar_express 8"
  assert "tiny-w64 polar_express 8 3.900 (+0.000)" in text
  assert "tiny polar_express 8  (not run yet)" in text
  assert json.loads(json.dumps(summary)) == summary


def test_a_partial_or_unreached_column_says_so():
  assert headline._mean_range(["not reached", 0.5], ".2f") == "not reached"
  assert headline._mean_range([0.5, None], ".2f") == "0.50 [1 of 2]"
  assert headline._mean_range([None], ".2f") == ""
