"""The budget benchmark: Chinchilla steps, WSD trunks and branches, and its report."""

import dataclasses
import fcntl
import json
import math
import sys

import jax
import numpy as np
import pytest

from models import configs
from models import llama
from train import loop
from train import metrics
from train import optimizer
from train.bench import harness
from train.bench.budgets import protocol
from train.bench.budgets import report as report_lib
from train.bench.budgets import runner as runner_lib
from train.bench.budgets import search
from train.bench.budgets import timing
from train.optimizers import optimizer_config


def test_a_budget_counts_every_parameter_embeddings_included():
  config = configs.get_config("tiny-w64")
  _, abstract = llama.abstract_init(config, harness.one_device_mesh())
  params = sum(x.size for x in jax.tree.leaves(abstract))
  assert config.num_params == params == 460_352
  assert protocol.chinchilla_steps("tiny-w64", 1.0) == round(20 * params / (16 * 256)) == 2248


def test_wsd_holds_the_peak_then_decays_linearly_and_agrees_with_longer_runs():
  config = optimizer_config("swan", lr=0.1, schedule="wsd", warmup_steps=10, final_lr_fraction=0.0)
  short, long = optimizer.schedule(config, 100), optimizer.schedule(config, 400)
  assert [float(short(t)) for t in (0, 5, 10, 80)] == pytest.approx([0, 0.05, 0.1, 0.1])
  assert float(short(90)) == pytest.approx(0.05) and float(short(100)) == pytest.approx(0.0)
  np.testing.assert_allclose([short(t) for t in range(81)], [long(t) for t in range(81)])
  constant = optimizer.schedule(dataclasses.replace(config, decay_fraction=0.0), 50)
  assert float(constant(50)) == pytest.approx(0.1)


def test_token_fraction_interpolates_in_log_budget_and_bounds_outside():
  curve = {0.25: 4.0, 1.0: 3.0, 4.0: 2.5}
  assert report_lib.token_fraction(3.0, 1.0, curve) == ("", 1.0)
  kind, fraction = report_lib.token_fraction(3.5, 1.0, curve)
  assert kind == "" and fraction == pytest.approx(2.0)  # the reference: halfway, 0.5x in log
  assert report_lib.token_fraction(2.0, 1.0, curve) == ("<", 0.25)  # beyond the reference's 4x
  assert report_lib.token_fraction(4.5, 1.0, curve) == (">", 4.0)  # short of its 0.25x


@pytest.mark.slow
def test_a_cooldown_branch_equals_the_same_wsd_run_from_scratch(tmp_path):
  """Trunk to the decay start, then the branch resumed from its checkpoint: the same run."""
  steps_of = lambda size, budget: round(40 * budget)  # the smallest budget, 0.25x: 10 steps
  runner = runner_lib.Runner(tmp_path / "runs", tmp_path / "work", steps_of=steps_of)
  point = protocol.Point("tiny-w64", "swan", 2e-3)
  branch = runner.get(point, 0.25)
  assert [e["step"] for e in branch["evals"]][-1] == 10
  direct = runner.config(point, 10, "wsd", "direct")
  loop.train(direct)
  evals = [r for r in metrics.read_jsonl(direct.run_dir / "metrics.jsonl") if r["kind"] == "eval"]
  np.testing.assert_allclose(
    [e["val_loss"] for e in branch["evals"]], [e["val_loss"] for e in evals], rtol=1e-6
  )
  assert branch["rates"] == {"matrix": 2e-3, "adam": 0.1}
  assert runner.get(point, 0.25) == branch  # kept: read back, not trained again
  tampered = {**branch, "rates": {"matrix": 1e-3, "adam": 0.1}}
  runner.path(point, 0.25).write_text(json.dumps(tampered))
  with pytest.raises(ValueError, match="ran at rates"):
    runner.get(point, 0.25)


def test_a_branch_cannot_start_from_a_trunk_already_past_its_decay(tmp_path):
  runner = runner_lib.Runner(tmp_path / "runs", tmp_path / "work", train_fn=lambda config: None)
  point = protocol.Point("tiny-w64", "swan", 2e-3)
  (tmp_path / "work" / point.tag / "checkpoints" / "5000").mkdir(parents=True)
  with pytest.raises(RuntimeError, match="past step 450"):
    runner._branch_from_trunk(point, 450, tmp_path / "work" / "branch")


# Fake runs: loss = a - b log(budget) + c log2(lr / best lr)^2 + the group's own bowl.
BEST = {"adam": 8e-3, "muon": 2e-2, "swan": 2e-3, "sinkgd": 1.25e-2}
BASE = {"adam": 3.0, "muon": 2.8, "swan": 2.85, "sinkgd": 3.2}


def _fake_loss(point: protocol.Point, budget: float) -> float:
  if point.variant == "swan-gram":  # a cheaper whitening: 0.004 behind SWAN's default
    return _fake_loss(dataclasses.replace(point, variant="swan"), budget) + 0.004
  best_group = 4.0 if point.variant == "adam" else 1.0
  group_cost = 0.02 * math.log2(point.group / best_group) ** 2
  if point.variant == "adam" and point.group == 1:
    group_cost = 0.05  # plain Adam: 0.05 behind its best embedding lr
  return (
    BASE[point.variant]
    - 0.2 * math.log(budget)
    + 0.01 * math.log2(point.lr / BEST[point.variant]) ** 2
    + group_cost
    + 0.001 * point.seed
  )


def _fake_get(runner: runner_lib.Runner):
  """``runner.get`` without training: the run's JSON, its final loss from ``_fake_loss``."""

  def get(point, budget, schedule="wsd"):
    loss = _fake_loss(point, budget) + (0.002 if schedule == "cosine" else 0.0)
    record = {
      "tag": runner_lib.run_name(point, budget, schedule),
      "point": dataclasses.asdict(point),
      "budget": budget,
      "rates": point.rates,
      "final_val_loss": loss,
      "final_train_loss": loss - 0.1 * math.log2(budget / 0.25),  # memorizes as data repeats
      "optimizer_state_bytes": 0 if point.variant in ("swan", "sinkgd") else 2**20,
      "step_time_median_s": 0.1,
      "wall_s": 60.0,
    }
    path = runner.path(point, budget, schedule)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return record

  return get


def _fake_runner(tmp_path) -> runner_lib.Runner:
  runner = runner_lib.Runner(tmp_path / "runs", tmp_path / "work", train_fn=None)
  fake_get = _fake_get(runner)
  for size, budget, seeds, cosine in search.STAGES[:1]:
    training = runner_lib.Runner(tmp_path / "runs", tmp_path / "work")
    training.get = fake_get
    search.stage(training, size, budget, seeds, cosine)
    for smaller in (b for b in protocol.BUDGETS[size] if b < budget):
      for path in list(runner.runs_dir.glob(f"*-{budget:g}x.json")):
        record = json.loads(path.read_text())
        fake_get(protocol.Point(**record["point"]), smaller)
  return runner


def _timing(**seconds) -> dict:
  """``timing.json`` as ``--only timing`` writes it: tiny-w64's step seconds per variant."""
  steps = {v: 0.1 for v in protocol.VARIANTS} | seconds
  return {"reps": 3, "machine": "the test's", "steps": {"tiny-w64": steps}}


def test_the_readme_quotes_the_largest_budget_whose_grids_are_all_closed():
  def budget(multiple: int, mark: str) -> str:
    rows = "".join(f"| {protocol.LABELS[v]} | {mark}0.01 |\n" for v in protocol.VARIANTS)
    return (
      f"#### tiny-w64 (460,352 params) at {multiple}x Chinchilla ({multiple * 9_207_808:,} "
      f"tokens, {multiple} passes over the training split)\n\n| optimizer | best lr |\n"
      f"|---|---:|\n{rows}\n"
    )

  trend = "#### tiny-w64: tokens of Adam's (of tuned Adam's) by budget\n\n| trend |\n\n"
  text = budget(2, "~") + budget(1, "") + trend + "Hours of runs so far: 1 h.\n"
  assert report_lib.readme_quote(text).startswith(
    "| optimizer | best lr |\n|---|---:|\n| Adam | 0.01 |"
  )
  with pytest.raises(ValueError, match="grids closed"):
    report_lib.readme_quote(budget(2, "~") + trend)


def test_the_report_finds_each_optimizers_best_point_and_its_token_fractions(tmp_path):
  runner = _fake_runner(tmp_path)
  timing = _timing()
  summary = report_lib.summaries(runner, timing)["tiny-w64"]
  rows = summary[1.0]["rows"]
  assert {n: r["point"]["lr"] for n, r in rows.items()} == {"adam+embed": 8e-3, **BEST}
  assert rows["adam+embed"]["point"]["group"] == 4.0 and rows["adam"]["point"]["group"] == 1
  assert all(r["bracketed"] for r in rows.values())
  assert rows["swan"]["finals"] == pytest.approx([2.85, 2.851, 2.852])
  # Plain Adam's seed mean is 3.051 - 0.2 log(b): SinkGD's 3.201 is Adam's at 0.47x, so
  # SinkGD needs 2.1x Adam's tokens for it.
  kind, fraction = rows["sinkgd"]["tokens_vs_adam"]
  assert kind == "" and fraction == pytest.approx(math.exp((3.201 - 3.051) / 0.2))
  # The stage took the references' best points on to 2x (and nothing else): SWAN's 2.851 is
  # below plain Adam's 2x, 2.911, a bound; its 2.990 at 0.5x lies between Adam's 1x and 2x.
  assert sorted(p.name for p in runner.runs_dir.glob("*-2x.json")) == [
    "tiny-w64-adam-lr0.008-group4-seed0-2x.json",
    "tiny-w64-adam-lr0.008-seed0-2x.json",
  ]
  assert rows["swan"]["tokens_vs_adam"] == ("<", 0.5)
  adam_1x, adam_2x, swan_half = 3.051, 3.05 - 0.2 * math.log(2), 2.851 + 0.2 * math.log(2)
  at = 2 ** ((adam_1x - swan_half) / (adam_1x - adam_2x))
  assert summary[0.5]["rows"]["swan"]["tokens_vs_adam"] == ("", pytest.approx(0.5 / at))
  assert "wall_vs_adam" not in rows["swan"]
  assert rows["sinkgd"]["wall_vs_adam"] == pytest.approx(fraction)
  harness.save_step_times(tmp_path / "out", timing["reps"], timing["steps"])
  report_lib.report(runner, tmp_path / "out")
  text = (tmp_path / "out" / "budgets.md").read_text()
  headings = [line for line in text.splitlines() if line.startswith("#### tiny-w64 (")]
  assert headings == [  # every budget with runs, the largest first
    f"#### tiny-w64 (460,352 params) at {b:g}x Chinchilla ({b * 9_207_808:,.0f} tokens, "
    f"{b * 9_207_808 / protocol.epoch_tokens('tiny-w64'):.1f} passes over the training split)"
    for b in (2.0, 1.0, 0.5, 0.25)
  ]
  assert "| *passes over the training split* | 1.3 | 2.6 | 5.2 | 10.5 |" in text
  assert "| SinkGD | 0.0125 | 0.0442 | 3.201 ± 0.001 (3) | 2.12 |" in text
  assert "| SWAN | 0.002 | 0.1 | 2.851 ± 0.001 (3) | <0.50 |" in text
  assert "WSD against cosine" in text and "| +0.001 | yes |" in text
  swan = lambda b: len(list(runner.runs_dir.glob(f"tiny-w64-swan-*-{b:g}x.json")))
  assert f"| SWAN | +0.000 ({swan(0.25)}) | +0.100 ({swan(0.5)}) | +0.200 ({swan(1)}) |" in text
  # The best lr by budget, its margin over the next point in brackets: it does not move
  assert "| SWAN | 0.002 (0.010) | 0.002 (0.010) | 0.002 (0.010) |  |" in text
  assert "| SWAN | 0.37 (0.47) | 0.37 (0.47) | <0.50 (<0.50) |  |" in text  # tokens by budget
  assert "| Adam, embedding lr tuned | 0.78 | 0.78 | 0.78 | <1.00 |" in text
  # 60 s each; the 2x runs count in 4x's stage, the default whitening's in the cheaper ones'
  gram = len(list(runner.runs_dir.glob("*-swan-gram-*.json")))
  runs = len(list(runner.runs_dir.glob("*.json"))) - 2 - gram
  hours = f"tiny-w64 1x {runs / 60:.1f} h; tiny-w64 4x {2 / 60:.1f} h; "
  hours += f"cheaper whitenings {gram / 60:.1f} h.\n"
  assert f"on these 2 shared CPU cores: {hours}" in text
  assert (tmp_path / "out" / "budgets.png").exists()
  readme = tmp_path / "README.md"
  begin, end = report_lib.README_QUOTE
  readme.write_text(f"# Title\n\n{begin}| a stale table |\n{end}\nProse.\n")
  report_lib.quote_in_readme(text, readme)
  quoted = readme.read_text()
  assert quoted.startswith(f"# Title\n\n{begin}| optimizer | best lr |") and "stale" not in quoted
  assert "| SinkGD | 0.0125 | 0.0442 | 3.201 ± 0.001 (3) | 2.12 |" in quoted  # 1x: not 2x's
  assert quoted.endswith(f"{hours}{end}\nProse.\n")
  readme.write_text("# Title\n")
  with pytest.raises(ValueError, match="needs the lines"):
    report_lib.quote_in_readme(text, readme)
  with pytest.raises(ValueError, match="grids closed"):
    report_lib.readme_quote(text.replace("| SinkGD |", "| (left out) |"))


def test_a_stage_runs_one_more_seed_of_every_best_and_default_point_at_a_time(tmp_path):
  runner = runner_lib.Runner(tmp_path / "runs", tmp_path / "work")
  fake_get, seeds = _fake_get(runner), []

  def get(point, budget, schedule="wsd"):
    if point.seed or point.variant == "swan-gram":
      seeds.append((point.seed, point.variant, point.group))
    return fake_get(point, budget, schedule)

  runner.get = get
  search.stage(runner, "tiny-w64", 1.0, (0, 1, 2), cosine=False)
  points = [("adam", 1.0), ("adam", 4.0), ("muon", 1.0), ("swan", 1.0), ("sinkgd", 1.0)]
  # The defaults that are not best points: Adam's lr (0.002, the best 0.008) and SWAN's
  # whitening (Gram Polar Express), outside the grids: its seed 0 first.
  defaults = [("adam", 1.0), ("swan-gram", 1.0)]
  assert seeds == [
    (0, "swan-gram", 1.0),
    *((seed, *point) for seed in (1, 2) for point in points + defaults),
  ]


def test_hours_past_a_sizes_last_stage_count_in_that_stage(tmp_path):
  """tiny's 2x runs (the references', after its 1x stage) are that stage's hours."""
  runner = runner_lib.Runner(tmp_path / "runs", tmp_path / "work", train_fn=None)
  for budget in (1.0, 2.0):
    _fake_get(runner)(protocol.Point("tiny", "adam", 2e-3), budget)
  assert report_lib.stage_hours(runner) == {"tiny 1x": pytest.approx(2 / 60)}


def test_a_cheaper_whitening_runs_at_swans_best_point_for_every_seed_and_is_reported(tmp_path):
  runner = _fake_runner(tmp_path)
  training = runner_lib.Runner(tmp_path / "runs", tmp_path / "work")
  training.get = _fake_get(runner)
  search.whitening(training)
  gram = sorted(
    p.name.removeprefix("tiny-w64-swan-gram-") for p in runner.runs_dir.glob("*-swan-gram-*-1x*")
  )
  assert gram == [
    "lr0.001-seed0-1x.json",
    *(f"lr0.002-seed{s}-1x.json" for s in (0, 1, 2)),
    "lr0.004-seed0-1x.json",
  ]
  record = runner.get(protocol.Point("tiny-w64", "swan-gram", 2e-3), 1.0)
  assert record["rates"] == runner.get(protocol.Point("tiny-w64", "swan", 2e-3), 1.0)["rates"]
  assert protocol.Point("tiny-w64", "swan-gram", 2e-3).optimizer(10, 0.2).whiten_method == (
    "gram_polar_express"
  )
  table = report_lib.whitening_table(runner)
  assert (
    "| 1x | lr 0.002, group 1 | 2.851 ± 0.001 (3) | gram_polar_express | 2.855 ± 0.001 (3) |"
    in table
  )
  assert "| +0.0040 | 0.0020 |" in table
  every_gram = list(runner.runs_dir.glob("*-swan-gram-*"))  # the stage's seeds' branches too
  assert report_lib.stage_hours(runner)["cheaper whitenings"] == pytest.approx(len(every_gram) / 60)
  # The trainer's defaults: SWAN's whitening is the cheaper one, at the best lr and group.
  assert protocol.default_point("tiny-w64", "swan") == protocol.Point("tiny-w64", "swan-gram", 2e-3)
  summary = report_lib.summaries(runner, {})["tiny-w64"]
  defaults = report_lib.defaults_table(runner, "tiny-w64", summary)
  assert (
    "| 1x | SWAN | 0.002, 0.1, gram_polar_express | 2.855 ± 0.001 (3) | 0.002, 0.1, polar_express "
    "| 2.851 ± 0.001 (3) | +0.004 | 0.002 |" in defaults
  )
  assert "| 1x | Muon (optax) | 0.02, 0.02 | 2.801 ± 0.001 (3) | the default |" in defaults
  assert "| 1x | lr 0.004, group 1 | 2.860 | gram_polar_express | 2.864 | +0.0040 |  |" in table


def test_a_cheaper_whitening_that_wants_another_lr_gets_its_seeds_there(tmp_path, monkeypatch):
  runner = _fake_runner(tmp_path)
  fake_loss = _fake_loss

  def half_lr_best(point, budget):  # the cheaper method's best lr: half SWAN's
    if point.variant == "swan-gram":
      return fake_loss(dataclasses.replace(point, variant="swan", lr=point.lr * 2), budget)
    return fake_loss(point, budget)

  monkeypatch.setattr(sys.modules[__name__], "_fake_loss", half_lr_best)
  training = runner_lib.Runner(tmp_path / "runs", tmp_path / "work")
  training.get = _fake_get(runner)
  search.whitening(training)
  gram = sorted(p.stem for p in runner.runs_dir.glob("*-swan-gram-*-1x.json"))
  assert [g for g in gram if "lr0.001-" in g] == [
    f"tiny-w64-swan-gram-lr0.001-seed{s}-1x" for s in (0, 1, 2)
  ]


def test_wall_clock_is_tokens_times_the_step_time_ratio_timed_side_by_side(tmp_path):
  runner = _fake_runner(tmp_path)
  row = report_lib.summaries(runner, _timing(sinkgd=0.25))["tiny-w64"][1.0]["rows"]["sinkgd"]
  assert row["step_time_s"] == 0.25
  assert row["wall_vs_adam"] == pytest.approx(2.5 * row["tokens_vs_adam"][1])
  untimed = report_lib.summaries(runner, {})["tiny-w64"][1.0]["rows"]["sinkgd"]
  assert untimed["step_time_s"] is None and "wall_vs_adam" not in untimed
  report_lib.report(runner, tmp_path / "out")
  assert (
    "Wall clock: tokens x the step-time ratio to Adam, once `--only timing` has"
    in (tmp_path / "out" / "budgets.md").read_text()
  )


def test_timing_steps_each_optimizer_at_the_budget_runs_settings(tmp_path, monkeypatch):
  built = []

  class Stepper:
    def __init__(self, config):
      built.append(config)
      self.setup = lambda: lambda: None

  monkeypatch.setattr(harness, "experiment", lambda config: config)
  monkeypatch.setattr(harness, "Stepper", Stepper)
  runner = runner_lib.Runner(tmp_path / "runs", tmp_path / "work", train_fn=None)
  seconds = timing.step_times(runner, "tiny", reps=2)
  assert sorted(seconds) == sorted(protocol.VARIANTS) and all(s >= 0 for s in seconds.values())
  assert [c.optimizer.name for c in built] == ["adam", "muon", "swan", "sinkgd"]
  assert {(c.model, c.batch_size, c.data.seq_len, c.optimizer.schedule) for c in built} == {
    ("tiny", protocol.BATCH, protocol.SEQ_LEN, "wsd")
  }
  assert built[2].optimizer.whiten_method == "polar_express"  # as every budget run of SWAN


def test_a_run_another_process_trains_is_passed_over_then_waited_for(tmp_path, monkeypatch):
  trained = []
  runner = runner_lib.Runner(tmp_path / "runs", tmp_path / "work", train_fn=trained.append)
  point = protocol.Point("tiny-w64", "swan", 2e-3)
  (tmp_path / "work").mkdir()
  with open(tmp_path / "work" / f"{point.tag}.claim", "w") as other:  # another process's lock
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert runner.get(point, 1.0) is None
    assert point.tag in runner.passed_over and not trained
    finished = _fake_get(runner)(point, 1.0)  # it finishes, then releases the lock
  assert runner.get(point, 1.0) == finished and not trained

  passes = []

  def stage(runner, *args):
    passes.append(args)
    if len(passes) == 1:
      runner.passed_over.add(point.tag)

  monkeypatch.setattr(search, "stage", stage)
  search.queue(runner, search.STAGES[:1], wait_s=0)
  assert len(passes) == 2  # once more after the pass that found a run held elsewhere
