"""Newton-Schulz against Polar Express at their own lrs: sweep, seeds and report on fake runs."""

import dataclasses
import math

import pytest

from swan_optax import _whiten
from tests import fake_runs
from train.bench import adam_group
from train.bench import transfer
from train.bench import whitening
from train.bench.convergence import protocol
from train.bench.convergence import search
from train.bench.convergence.store import Store

OPTIMUM = {"newton_schulz": (0.004, 4.2), "polar_express": (0.008, 4.0)}  # lr, loss there


def _fake_train(config) -> None:
  o = config.optimizer
  assert o.adam_group_lr == pytest.approx(whitening.GROUP_RATIO * o.lr)
  lr, loss = OPTIMUM[o.whiten_method]
  fake_runs.write_run_folder(config, loss + 0.1 * math.log2(o.lr / lr) ** 2 + 0.01 * config.seed)


@pytest.fixture
def store(tmp_path):
  return Store(tmp_path / "runs", tmp_path / "work", 40, 40, _fake_train)


def test_newton_schulz_reuses_the_adam_group_grid_and_polar_express_the_ladder():
  run = whitening.method_run("tiny", "newton_schulz", 0.004, 1)
  assert run.tag == adam_group.joint_run("swan", 0.004, 0.2, 1).tag
  polar = whitening.method_run("tiny", "polar_express", 0.004, 0)
  assert polar.tag == "tiny-swan_polar_express+adam_lr0.2-lr0.004-seed0"
  assert polar.optimizer.whiten_method == "polar_express"
  assert whitening.method_run("tiny-w64", "polar_express", 0.002, 1) == transfer.ladder_run(
    "tiny-w64", "swan", 0.002, 1
  )


def test_each_method_at_its_own_best_lr_with_seeds_per_size(store):
  for size in whitening.SEEDS:
    losses = search.sweep(store, size, whitening.GRID, protocol.GRID_ORDER, whitening.method_run)
    best = search.best_lrs(losses)
    assert best == pytest.approx({m: lr for m, (lr, _) in OPTIMUM.items()})
    for runs in whitening.seed_runs(size, best).values():
      list(map(store.get, runs))
  steps = {"tiny": {"newton_schulz": 0.2, "polar_express": 0.15}}
  timing = {
    "reps": 3,
    "machine": "test",
    "steps": steps | {"small": {"newton_schulz": 0.4, "polar_express": 0.5}},
  }
  summary = whitening.summarize(store.read_only(), timing)
  assert summary["tiny"]["polar_express"]["seeds"] == pytest.approx([4.0, 4.01, 4.02])
  assert summary["tiny-w64"]["polar_express"]["seeds"] == pytest.approx([4.0, 4.01])
  text = whitening.report_text(summary, timing)
  assert "| tiny | polar_express | 0.008 | 4.000 / 4.010 / 4.020 | 4.010 | 0.020 |" in text
  assert "| tiny-w64 | newton_schulz | 0.004 | 4.200 / 4.210 | 4.205 | 0.010 |" in text
  assert "| 0.016 | 4.600 | 4.100 | 4.600 | 4.100 |" in text
  assert "| polar_express | 150 (0.75) | 500 (1.25) |" in text


def test_an_open_grid_is_marked_and_nothing_trains_in_the_report(store):
  store.get(whitening.method_run("tiny", "polar_express", 0.004, 0))
  summary = whitening.summarize(store.read_only(), {})
  tiny = summary["tiny"]
  assert tiny["polar_express"]["best_lr"] == 0.004 and not tiny["polar_express"]["bracketed"]
  assert tiny["newton_schulz"]["best_lr"] is None
  assert summary["tiny-w64"]["polar_express"]["best_lr"] is None
  text = whitening.report_text(summary, {})
  assert "| tiny | polar_express | 0.004 ~ | 4.100 / - / - | 4.100 |" in text
  assert "not measured yet" in text


def test_cheaper_whitening_runs_at_the_defaults_lr_with_its_steps(store):
  search.sweep(store, "tiny", whitening.GRID, protocol.GRID_ORDER, whitening.method_run)
  runs = whitening.cheaper_runs(store)
  assert list(runs)[0] == f"polar_express {_whiten.DEFAULT_STEPS['polar_express']}"
  five = runs["polar_express 5"]
  assert [r.seed for r in five] == list(protocol.SEEDS)
  assert five[0].tag == "tiny-swan_polar_express5+adam_lr0.4-lr0.008-seed0"
  default = whitening.method_run("tiny", "polar_express", 0.008, 0).optimizer
  assert five[0].optimizer == dataclasses.replace(default, whiten_steps=5)
  assert runs["gram_polar_express 6"][2].optimizer.whiten_method == "gram_polar_express"
  text = whitening.cheaper_text(store.read_only())
  assert "| polar_express 5 | - / - / - |" in text
