"""The convergence benchmark's queue, adoption and report, and the optimizer options it ablates."""

import dataclasses
import json
import math
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import swan_optax
from models import configs
from models import llama
from swan_optax._matrix import matrix_view
from tests import fake_runs
from train import cli
from train import loop
from train import mesh as mesh_lib
from train import optimizer
from train.bench.convergence import analysis
from train.bench.convergence import protocol
from train.bench.convergence import report
from train.bench.convergence import search
from train.bench.convergence import stages
from train.bench.convergence.store import Store
from train.optimizers import optimizer_config

# Fake runs: each variant's final loss is a parabola in log2(lr) around this lr, shifted by
# the optimizer's offset.
OPTIMUM = {
  "adam-b2_0.95": 2.5e-4,
  "adam-b2_0.999": 1e-3,
  "swan": 4e-3,
  "sinkgd": 2.5e-3,
  "muon": 4e-2,
}
OFFSET = {"adam-b2_0.95": 0.05, "adam-b2_0.999": 0.0, "swan": -0.2, "sinkgd": -0.3, "muon": -0.25}
# On the small model SWAN's optimum moves 4x lower, off the tiny best's 2x neighbours.
SMALL_SHIFT = {"swan": 0.25}


def _fake_final_loss(config) -> float:
  """A fake final validation loss, lowest at the variant's ``OPTIMUM``."""
  o = config.optimizer
  variant = next(
    v
    for v, f in protocol.VARIANTS.items()
    if f["name"] == o.name and f.get("adam_b2", 0.999) == o.adam_b2
  )
  optimum = OPTIMUM[variant] * (SMALL_SHIFT.get(variant, 1) if config.model == "small" else 1)
  return 4 + OFFSET[variant] + 0.1 * math.log2(o.lr / optimum) ** 2 + 0.01 * config.seed


def _fake_train(config) -> None:
  fake_runs.write_run_folder(config, _fake_final_loss(config))


def _store(tmp_path, train_fn=_fake_train, steps=40) -> Store:
  return Store(tmp_path / "runs", tmp_path / "work", steps, steps, train_fn)


def test_tokens_to_reach_interpolates_between_evaluations():
  evals = [{"tokens": 100, "val_loss": 5.0}, {"tokens": 200, "val_loss": 3.0}]
  assert analysis.tokens_to_reach(evals, 4.0) == pytest.approx(150)
  assert analysis.tokens_to_reach(evals, 5.5) == 100
  assert analysis.tokens_to_reach(evals, 2.9) is None


def test_sweep_widens_each_grid_until_it_brackets_the_best(tmp_path):
  losses = search.sweep(_store(tmp_path))
  best = search.best_lrs(losses)
  assert best == OPTIMUM
  # 2.5e-4 sat at the widened edge once more, so 1.25e-4 was run too.
  assert sorted(losses["adam-b2_0.95"]) == [1.25e-4, 2.5e-4, *protocol.ADAM_LRS]
  assert sorted(losses["swan"]) == list(protocol.ADAM_LRS)
  kept = {p.stem for p in (tmp_path / "runs").glob("*.json")}
  assert sorted(losses["muon"]) == [*protocol.GRID["muon"]]
  assert "tiny-adam-b2_0.95-lr0.000125-seed0" in kept and len(kept) == 27


def test_finished_runs_are_reused_and_a_read_only_store_never_trains(tmp_path):
  store = _store(tmp_path)
  search.sweep(store)

  def refuse(config):
    raise AssertionError(f"trained {config.run_dir} again")

  again = search.sweep(_store(tmp_path, train_fn=refuse))
  assert search.best_lrs(again)["sinkgd"] == 2.5e-3
  fresh = _store(tmp_path / "other", train_fn=None)
  assert search.sweep(fresh)["swan"] == {lr: None for lr in protocol.ADAM_LRS}


def test_a_grid_open_at_an_edge_has_no_best_yet_but_a_best_so_far(tmp_path):
  search.sweep(_store(tmp_path))
  tag = "tiny-adam-b2_0.95-lr0.000125-seed0"
  (tmp_path / "runs" / f"{tag}.json").unlink()
  shutil.rmtree(tmp_path / "work" / tag)
  losses = search.sweep(_store(tmp_path, train_fn=None))
  assert losses["adam-b2_0.95"][1.25e-4] is None
  assert "adam-b2_0.95" not in search.best_lrs(losses) and search.best_lrs(losses)["swan"] == 4e-3
  assert search.best_so_far(losses)["adam-b2_0.95"] == 2.5e-4


def test_a_run_folder_of_the_trainer_before_trainconfig_is_adopted(tmp_path):
  run = protocol.grid_run("tiny", "adam-b2_0.95", 2e-3, 1)
  folder = tmp_path / "work" / run.tag
  folder.mkdir(parents=True)
  args = {
    "config": "tiny",
    "optimizer": "adam",
    "lr": "0.002",
    "adam_b2": "0.95",
    "max_grad_norm": "1.0",
    "non_matrix": "adam",
    "seed": "1",
    "steps": "40",
    "batch_size": "16",
    "seq_len": "256",
  }
  records = [
    {"kind": "run", "args": args, "params": 5},
    {"kind": "train", "step": 10, "step_time_s": 0.2},
    {"kind": "train", "step": 40, "step_time_s": 0.4},
    {"kind": "eval", "step": 40, "tokens": 163840, "val_loss": 4.5, "val_ppl": 90.0},
  ]
  (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  (folder / "summary.json").write_text(json.dumps({"completed": True}))
  record = _store(tmp_path, train_fn=None).get(run)
  assert record["evals"] == [{"step": 40, "tokens": 163840, "val_loss": 4.5, "val_ppl": 90.0}]
  assert record["step_time_median_s"] == pytest.approx(0.3)
  assert record["train_time_s"] == pytest.approx(10 * 0.2 + 30 * 0.4)
  assert json.loads((tmp_path / "runs" / f"{run.tag}.json").read_text()) == record
  assert not pathlib.Path(record["source"]).is_absolute()  # no directory of this machine
  other = dataclasses.replace(run, optimizer=dataclasses.replace(run.optimizer, adam_b2=0.999))
  with pytest.raises(ValueError, match=f"run folder .*{run.tag}.*adam_b2"):
    Store(tmp_path / "other", tmp_path / "work", 40, 40, None).get(other)


def test_a_run_folder_without_a_newer_optimizer_field_is_adopted_as_its_default(tmp_path):
  run = protocol.grid_run("tiny", "swan", 4e-3, 0)
  config = protocol.train_config(run, 40, tmp_path / "work")
  _fake_train(config)
  metrics_path = config.run_dir / "metrics.jsonl"
  records = [json.loads(line) for line in metrics_path.read_text().splitlines()]
  del records[0]["config"]["optimizer"]["schedule"]  # written before the field existed
  metrics_path.write_text("".join(json.dumps(r) + "\n" for r in records))
  assert _store(tmp_path, train_fn=None).get(run)["evals"][-1]["step"] == 40
  wsd = protocol.grid_run("tiny", "swan", 4e-3, 0, schedule="wsd")
  with pytest.raises(ValueError, match="other optimizer settings"):
    Store(tmp_path / "other", tmp_path / "work", 40, 40, None).get(wsd)


def test_every_rate_of_a_protocol_run_is_explicit_and_a_kept_run_must_match_it(tmp_path):
  run = protocol.grid_run("tiny", "swan", 4e-3, 0)
  assert run.optimizer.adam_group_lr == 4e-3  # no trainer default enters a run
  record = _store(tmp_path).get(run)
  moved = dataclasses.replace(run, optimizer=dataclasses.replace(run.optimizer, adam_group_lr=0.2))
  with pytest.raises(ValueError, match=r"other optimizer settings .*adam_group_lr.*\(0.004, 0.2\)"):
    _store(tmp_path, train_fn=None).get(moved)  # same tag, other settings: never reused
  assert record["rates"] == {"matrix": 4e-3, "adam": 4e-3}
  # Numbers are the same setting to the 6 digits a run's name prints (a ratio's rounding).
  record["optimizer"]["adam_group_lr"] = 4e-3 * (1 + 1e-9)
  (tmp_path / "runs" / f"{run.tag}.json").write_text(json.dumps(record))
  assert _store(tmp_path, train_fn=None).get(run)["evals"] == record["evals"]


def test_a_kept_run_of_another_protocol_is_refused(tmp_path):
  run = protocol.grid_run("tiny", "swan", 2e-3, 0)
  _store(tmp_path, steps=40).get(run)
  with pytest.raises(ValueError, match="--steps 60"):
    _store(tmp_path, train_fn=None, steps=60).get(run)


def test_report_marks_missing_runs_and_invents_nothing(tmp_path):
  out = tmp_path / "out"
  report.report(_store(tmp_path, train_fn=None), out)
  text = (out / "convergence.md").read_text()
  rows = [line.split(" | ")[1:] for line in text.splitlines() if line.startswith("| adam")]
  assert len(rows) == 2 and all(
    cell.strip(" |").endswith("not run yet") for r in rows for cell in r
  )
  assert "Ablations:** not run yet" in text and "small):** not run yet" in text
  summary = json.loads((out / "convergence.json").read_text())
  assert summary["main"] == [] and summary["ablations"] == [] and summary["adam"] is None
  assert (out / "convergence.png").exists()


def test_full_queue_on_fake_runs_reports_every_table(tmp_path):
  store = _store(tmp_path)
  stages.run_stages(store, ("sweep", "seeds", "ablations", "small"), tmp_path / "out", reps=1)
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "timing.json").write_text(
    json.dumps(
      {
        "reps": 1,
        "machine": "test",
        "tiny": {"adam": 1.0, "swan": 1.5, "sinkgd": 1.25, "muon": 1.5},
        "small": {"adam": 2.0, "swan": 2.0, "sinkgd": 2.0, "muon": 2.0},
      }
    )
  )
  stages.run_stages(store, ("report",), tmp_path / "out", reps=1)
  summary = json.loads((tmp_path / "out" / "convergence.json").read_text())
  assert summary["final"] and summary["adam"] == "adam-b2_0.999"
  main = {r["variant"]: r for r in summary["main"]}
  # Evaluations at steps 20 and 40; the loss falls 0.5 between them and ends OFFSET below
  # Adam's, so Adam's final loss is reached at step 20 + 20 (0.5 + OFFSET) / 0.5.
  assert main["adam-b2_0.999"]["final_loss"] == pytest.approx(
    [4 + 0.01 * s for s in protocol.SEEDS]
  )
  assert main["swan"]["token_fraction"] == pytest.approx([0.8] * 3)
  assert main["swan"]["wall_fraction"] == pytest.approx([0.8 * 1.5] * 3)
  assert main["sinkgd"]["token_fraction"] == pytest.approx([0.7] * 3)
  assert main["muon"]["token_fraction"] == pytest.approx([0.75] * 3)
  assert main["adam-b2_0.95"]["token_fraction"] == [analysis.NOT_REACHED] * 3
  assert len(summary["ablations"]) == 7
  assert all(None not in r["final_loss"] for r in summary["ablations"] + summary["small"])
  # The small grid starts at the best tiny lr and its 2x neighbours; SWAN's widens to 1e-3 and
  # then 5e-4, which brackets its small optimum.
  small_lrs = lambda v: sorted(r["lr"] for r in summary["small"] if r["variant"] == v)
  assert small_lrs("adam-b2_0.999") == pytest.approx([5e-4, 1e-3, 2e-3])
  assert small_lrs("swan") == pytest.approx([5e-4, 1e-3, 2e-3, 4e-3, 8e-3])
  assert small_lrs("adam-b2_0.999+embed_lr0.05") == pytest.approx([1e-3])
  assert small_lrs("swan_polar_express") == pytest.approx([1e-3])  # SWAN's best small lr
  text = (tmp_path / "out" / "convergence.md").read_text()
  assert "not run yet" not in text.split("\n", 1)[1]
  assert "* swan: 0.001 beats the best tiny lr 0.004 on small" in text
  assert "* sinkgd: the best tiny lr 0.0025 is also the best of 3 on small" in text
  assert "* swan_polar_express: 3.800, +0.000 nats against `swan` at the same lr" in text


@pytest.mark.slow
def test_a_real_run_trains_in_process_and_is_kept(tmp_path):
  store = Store(tmp_path / "runs", tmp_path / "work", 4, 4, loop.train)
  run = protocol.grid_run("tiny", "sinkgd", 2.5e-3, 0, adam_group_lr=2e-3)
  record = store.get(run)
  assert [e["step"] for e in record["evals"]] == [4] and record["wall_time_s"] > 0
  assert record["optimizer"]["adam_group_lr"] == 2e-3 and record["config"]["steps"] == 4
  assert math.isfinite(record["evals"][-1]["val_loss"])


# The optimizer options the ablations need.


LAYOUTS = optimizer.dimension_numbers(configs.get_config("tiny"))


@pytest.fixture(scope="module")
def params():
  return llama.init_params(configs.get_config("tiny"), mesh_lib.make_mesh(None), 0)[1]


def _updates(params, **fields):
  """The update of ``optimizer_config(**fields)`` at peak lr (its second step) on fixed
  gradients."""
  config = optimizer_config(warmup_fraction=0.0, **fields)
  tx = optimizer.make_optimizer(config, steps=10, dimension_numbers=LAYOUTS)
  grads = jax.tree.map(lambda p: jnp.sin(jnp.arange(p.size).reshape(p.shape) + 1.0), params)
  state = tx.update(grads, tx.init(params), params)[1]  # the warmup's one step at lr 0
  updates = tx.update(grads, state, params)[0]
  assert all(float(jnp.abs(u).max()) > 0 for u in jax.tree.leaves(updates))
  return grads, updates


def _is_embed(path) -> bool:
  key = jax.tree_util.keystr(path)
  return "embed" in key or "lm_head" in key


def test_embed_lr_scale_scales_only_the_embedding_and_lm_head(params):
  _, plain = _updates(params, name="adam", lr=1e-3)
  _, scaled = _updates(params, name="adam", lr=1e-3, embed_lr_scale=4.0)
  for path, a in jax.tree_util.tree_leaves_with_path(plain):
    b = dict(jax.tree_util.tree_leaves_with_path(scaled))[path]
    np.testing.assert_allclose(b, 4 * a if _is_embed(path) else a, rtol=1e-6)


def test_adam_group_lr_changes_only_the_adam_group(params):
  _, plain = _updates(params, name="sinkgd", lr=2.5e-3, adam_group_lr=0.05)
  _, lower = _updates(params, name="sinkgd", lr=2.5e-3, adam_group_lr=0.005)
  labels = swan_optax.param_labels(params, dimension_numbers=LAYOUTS)
  for a, b, label in zip(*map(jax.tree.leaves, (plain, lower, labels)), strict=True):
    np.testing.assert_allclose(b, a / 10 if label == "adam" else a, rtol=1e-5, atol=1e-12)


def test_an_unset_adam_group_lr_is_the_librarys_default_multiple_of_lr(params):
  _, unset = _updates(params, name="swan", lr=4e-3)
  ratio = swan_optax.defaults.ADAM_LR_RATIO["swan", "unit_rms"]
  _, explicit = _updates(params, name="swan", lr=4e-3, adam_group_lr=4e-3 * ratio)
  for a, b in zip(jax.tree.leaves(unset), jax.tree.leaves(explicit), strict=True):
    np.testing.assert_array_equal(a, b)


def _matrix_layouts(params) -> list:
  """Per leaf, in ``jax.tree.leaves`` order: its layout if in the matrix group, else None."""
  labels = jax.tree.leaves(swan_optax.param_labels(params, dimension_numbers=LAYOUTS))
  is_dims = lambda x: x is None or isinstance(x, swan_optax.MatrixDimensionNumbers)
  layouts = jax.tree.leaves(LAYOUTS, is_leaf=is_dims)
  return [d if label == "matrix" else None for d, label in zip(layouts, labels, strict=True)]


@pytest.mark.parametrize("operator", ["gradnorm", "whiten"])
def test_swan_with_one_operator_applies_only_that_operator(params, operator):
  grads, updates = _updates(params, name="swan", lr=1e-3, swan_operators=operator)
  _, both = _updates(params, name="swan", lr=1e-3)
  make = {"gradnorm": swan_optax.gradnorm, "whiten": swan_optax.whiten}[operator]
  dims = _matrix_layouts(params)
  leaves = zip(*map(jax.tree.leaves, (grads, updates, both)), dims, strict=True)
  for grad, update, swan_update, dim in leaves:
    expected = (
      swan_update if dim is None else -1e-3 * make(dimension_numbers=dim).update(grad, None)[0]
    )
    np.testing.assert_allclose(update, expected, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("operators", ["both", "whiten"])
def test_whiten_method_reaches_swan_whitening(params, operators):
  """``--whiten-method svd``: the matrix update is ``-lr whiten_svd(op(G))`` (``op``: GradNorm
  or the identity); the default method gives another update."""
  fields = {"name": "swan", "lr": 1e-3, "swan_operators": operators}
  grads, updates = _updates(params, whiten_method="svd", **fields)
  _, default = _updates(params, **fields)
  dims = _matrix_layouts(params)
  leaves = zip(*map(jax.tree.leaves, (grads, updates, default)), dims, strict=True)
  for grad, update, default_update, dim in leaves:
    if dim is None:
      continue
    if operators == "both":
      grad = swan_optax.gradnorm(dimension_numbers=dim).update(grad, None)[0]
    svd = swan_optax.whiten(dimension_numbers=dim, method="svd").update(grad, None)[0]
    np.testing.assert_allclose(update, -1e-3 * svd, rtol=1e-4, atol=1e-9)
    assert not np.allclose(update, default_update, rtol=1e-3, atol=0)


def test_whiten_steps_reach_swan_whitening(params):
  """``--whiten-steps 3``: the matrix update is ``-lr whiten(gradnorm(G), ns_steps=3)``."""
  fields = {"name": "swan", "lr": 1e-3, "whiten_method": "newton_schulz"}
  grads, updates = _updates(params, whiten_steps=3, **fields)
  leaves = zip(*map(jax.tree.leaves, (grads, updates)), _matrix_layouts(params), strict=True)
  for grad, update, dim in leaves:
    if dim is not None:
      normed = swan_optax.gradnorm(dimension_numbers=dim).update(grad, None)[0]
      whiten = swan_optax.whiten(dimension_numbers=dim, method="newton_schulz", ns_steps=3)
      np.testing.assert_allclose(update, -1e-3 * whiten.update(normed, None)[0], rtol=1e-4)


@pytest.mark.parametrize(
  "fields",
  [{"name": "swan"}, {"name": "swan", "swan_operators": "whiten"}, {"name": "sinkgd"}],
)
def test_scale_rule_scales_each_matrix_by_its_shape_factor(params, fields):
  """``--scale-rule spectral``: each matrix update is the unit-RMS one times ``shape_scale``
  (the Adam group's lr given, so that it steps alike under both)."""
  fields = {**fields, "lr": 1e-3, "adam_group_lr": 0.01}
  _, spectral = _updates(params, scale_rule="spectral", **fields)
  _, unit = _updates(params, scale_rule="unit_rms", **fields)
  leaves = zip(
    *map(jax.tree.leaves, (params, spectral, unit)), _matrix_layouts(params), strict=True
  )
  for param, update, unit_update, dim in leaves:
    view = None if dim is None else matrix_view(param.shape, dim)
    fans = None if dim is None else (view.fan_in, view.fan_out)
    factor = 1.0 if fans is None else swan_optax.inspect.shape_scale("spectral", *fans)
    np.testing.assert_allclose(update, factor * unit_update, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize(
  ("name", "lr", "rule", "adam_group_lr"),
  [
    ("swan", 2e-3, "unit_rms", 50 * 2e-3),
    ("sinkgd", 1.25e-2, "spectral", 2 * 0.25 / math.sqrt(128)),
  ],
)
def test_the_trainer_takes_the_librarys_defaults(name, lr, rule, adam_group_lr):
  """swan and sinkgd at ``swan_optax.defaults``: lr, rule, and the Adam group at the rule's
  ratio (sinkgd's: twice its paper pairing 20 / sqrt(128) of the width ladder); muon's Adam
  group at its lr; an explicit rule wins; each run records its groups' peak lrs."""
  defaults = optimizer_config(name)
  assert defaults.lr == lr and defaults.scale_rule == rule
  assert defaults.adam_group_peak_lr == pytest.approx(adam_group_lr)
  assert defaults.peak_rates == {"matrix": lr, "adam": defaults.adam_group_peak_lr}
  unit = optimizer_config("sinkgd", scale_rule="unit_rms")
  assert unit.adam_group_peak_lr == 40 * 1.25e-2
  assert optimizer_config("muon").peak_rates == {"matrix": 0.02, "adam": 0.02}
  assert optimizer_config("adam", lr=1e-3, embed_lr_scale=4.0).peak_rates == {
    "matrix": 1e-3,
    "adam": 4e-3,
  }


def test_cli_sets_whiten_method():
  config, _ = cli.parse_args(["--whiten-method", "polar_express"])
  assert config.optimizer.whiten_method == "polar_express"


@pytest.mark.parametrize(
  "fields, message",
  [
    ({"name": "adam", "adam_group_lr": 0.1}, "adam_group_lr"),
    ({"name": "sinkgd", "adam_group_lr": -1.0}, "adam_group_lr"),
    ({"name": "swan", "embed_lr_scale": 2.0}, "embed_lr_scale"),
    ({"name": "sinkgd", "swan_operators": "whiten"}, "swan_operators is a setting of swan, not"),
    ({"name": "adam", "weight_decay": 0.1}, "weight_decay is a setting of swan, sinkgd, muon"),
    ({"name": "swan", "swan_operators": "sinkhorn"}, "swan_operators"),
    ({"adam_b2": 1.0}, "--adam-b2"),
    ({"whiten_method": "cholesky"}, "--whiten-method"),
    ({"name": "adam", "scale_rule": "spectral"}, "scale_rule"),
    ({"swan_operators": "gradnorm", "scale_rule": "spectral"}, "scale_rule"),
  ],
)
def test_bad_optimizer_options_name_the_field(fields, message):
  with pytest.raises(ValueError, match=message):
    optimizer_config(**{"name": "swan", **fields})


def test_cli_sets_adam_b2():
  config, _ = cli.parse_args(["--optimizer", "adam", "--adam-b2", "0.95"])
  assert config.optimizer.adam_b2 == 0.95


def test_a_run_stopped_before_its_end_is_not_kept(tmp_path):
  def preempted(config) -> None:
    _fake_train(config)
    (config.run_dir / "summary.json").write_text(json.dumps({"completed": False}))

  run = protocol.grid_run("tiny", "swan", 4e-3, 0)
  with pytest.raises(RuntimeError, match="stopped before its last step"):
    _store(tmp_path, train_fn=preempted).get(run)
  assert not (tmp_path / "runs" / f"{run.tag}.json").exists()
