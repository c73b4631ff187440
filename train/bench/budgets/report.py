"""The report from the run JSONs alone: tables, token fractions, defaults, the README quote."""

import dataclasses
import json
import math
import pathlib
import re
import statistics

from models import configs
from train.bench import harness
from train.bench.budgets import plot
from train.bench.budgets import protocol
from train.bench.budgets import search
from train.bench.budgets.protocol import Point
from train.bench.budgets.runner import TRAIN_LOSS_TAIL
from train.bench.budgets.runner import Runner
from train.bench.budgets.runner import run_name


def summarize(runner: Runner, size: str, budget: float, steps: dict[str, float]) -> dict:
  """The finished runs of ``size`` at ``budget``: every grid, and per optimizer its best point
  (best so far while a grid is open) with its seeds' losses, rates, state and step time
  (``steps``: seconds per variant, as ``--only timing`` measured them; ``None`` if not)."""
  grids = search.lr_sweep(runner, size, budget)
  points = search.best_points(runner, size, budget, closed=False)
  closed = search.best_points(runner, size, budget, closed=True)
  rows = {}
  for name, point in points.items():
    record = runner.get(point, budget)
    finals = seed_finals(runner, point, budget)
    rows[name] = {
      "point": dataclasses.asdict(point),
      "bracketed": closed.get(name) == point,
      "rates": record["rates"],
      "finals": finals,
      "mean": statistics.mean(finals),
      "spread": max(finals) - min(finals),
      "optimizer_state_bytes": record["optimizer_state_bytes"],
      "step_time_s": steps.get(point.variant),
    }
  groups = {
    name: search.group_sweep(runner, size, budget, point.variant, point.lr)
    for name, point in points.items()
    if name != "adam"
  }
  return {"grids": grids, "groups": groups, "rows": rows}


def seed_finals(runner: Runner, point: Point, budget: float) -> list[float]:
  """The finished final losses of ``point``'s seeds (``SEEDS``; seed 0 alone elsewhere)."""
  seeds = protocol.SEEDS.get(point.size, (0,))
  finals = [runner.final(dataclasses.replace(point, seed=s), budget) for s in seeds]
  return [x for x in finals if x is not None]


def seed_pairs(
  runner: Runner, a: Point, b: Point, budget: float
) -> list[tuple[float | None, float | None]]:
  """``a``'s and ``b``'s final losses at each seed of ``SEEDS`` (``None``: not run)."""
  at = lambda point, seed: runner.final(dataclasses.replace(point, seed=seed), budget)
  return [(at(a, s), at(b, s)) for s in protocol.SEEDS.get(a.size, (0,))]


def seeds_cell(finals: list[float]) -> str:
  """``mean ± half range (count)`` of the seeds' losses; the loss alone for one seed."""
  mean = statistics.mean(finals)
  if len(finals) == 1:
    return f"{mean:.3f}"
  return f"{mean:.3f} ± {(max(finals) - min(finals)) / 2:.3f} ({len(finals)})"


def token_fraction(loss: float, budget: float, curve: dict[float, float]) -> tuple[str, float]:
  """The tokens a run of ``budget`` that reached ``loss`` used, as a fraction of the tokens the
  reference needs for the same loss: ``budget`` over the budget at which ``curve`` (budget ->
  final loss) reaches ``loss``, linear in log budget between measured budgets (below 1: fewer
  tokens than the reference). ``('<', f)`` or ``('>', f)`` when ``loss`` lies outside the
  curve (a bound from its largest or smallest budget)."""
  points = sorted(curve.items())
  if loss > points[0][1]:
    return ">", budget / points[0][0]
  for (b0, l0), (b1, l1) in zip(points, points[1:], strict=False):
    if l1 <= loss <= l0:
      t = 0.0 if l0 == l1 else (l0 - loss) / (l0 - l1)
      return "", budget / math.exp(math.log(b0) + t * (math.log(b1) - math.log(b0)))
  if loss == points[-1][1]:
    return "", budget / points[-1][0]
  return "<", budget / points[-1][0]


def summaries(runner: Runner, timing: dict) -> dict[str, dict[float, dict]]:
  """Per size, per budget with a finished run: :func:`summarize`, with each optimizer's token
  fraction of each reference (``REFERENCES``) and its wall-clock fraction of plain Adam's
  (``timing``: as ``harness.load_step_times`` reads it)."""
  out: dict[str, dict[float, dict]] = {}
  for size, budgets in protocol.BUDGETS.items():
    steps = timing.get("steps", {}).get(size, {})
    per_budget = {b: summarize(runner, size, b, steps) for b in budgets}
    per_budget = {b: s for b, s in per_budget.items() if s["rows"]}
    curves = {
      ref: {b: s["rows"][ref]["mean"] for b, s in per_budget.items() if ref in s["rows"]}
      for ref in protocol.REFERENCES
    }
    for budget, s in per_budget.items():
      for row in s["rows"].values():
        for ref, curve in curves.items():
          row[f"tokens_vs_{ref}"] = token_fraction(row["mean"], budget, curve) if curve else None
        adam = s["rows"].get("adam")
        tokens = row["tokens_vs_adam"]
        if adam and tokens and not tokens[0] and row["step_time_s"] and adam["step_time_s"]:
          row["wall_vs_adam"] = tokens[1] * row["step_time_s"] / adam["step_time_s"]
    if per_budget:
      out[size] = per_budget
  return out


def _fraction_cell(fraction: tuple[str, float] | None) -> str:
  return "" if fraction is None else f"{fraction[0]}{fraction[1]:.2f}"


def budget_table(size: str, budget: float, summary: dict) -> str:
  """One (size, budget): each optimizer's best point, loss with its seeds' spread, token and
  wall-clock fractions, and optimizer-state bytes, as Markdown."""
  columns = [
    ("optimizer", "optimizer", "", "l"),
    ("lr", "best lr", "", "r"),
    ("group", "group lr", "", "r"),
    ("loss", "final val loss", "", "r"),
    ("vs_adam", "tokens of Adam's", "", "r"),
    ("vs_embed", "tokens of tuned Adam's", "", "r"),
    ("wall", "wall clock of Adam's", ".2f", "r"),
    ("state", "optimizer state (MiB)", ".2f", "r"),
  ]
  rows = []
  for name, row in summary["rows"].items():
    open_mark = "" if row["bracketed"] else "~"
    rows.append(
      {
        "optimizer": protocol.LABELS[name],
        "lr": f"{open_mark}{row['point']['lr']:g}",
        "group": f"{row['rates']['adam']:.3g}",
        "loss": seeds_cell(row["finals"]),
        "vs_adam": _fraction_cell(row.get("tokens_vs_adam")),
        "vs_embed": _fraction_cell(row.get("tokens_vs_adam+embed")),
        "wall": row.get("wall_vs_adam"),
        "state": row["optimizer_state_bytes"] / 2**20,
      }
    )
  tokens = protocol.budget_tokens(size, budget)
  params = configs.get_config(size).num_params
  return (
    f"#### {size} ({params:,} params) at {budget:g}x Chinchilla ({tokens:,} tokens, "
    f"{protocol.passes(size, budget):.1f} passes over the training split)\n\n"
    + harness.table(columns, rows)
  )


def _passes_row(size: str, budgets: list[float]) -> dict:
  return {"optimizer": "*passes over the training split*"} | {
    b: f"{protocol.passes(size, b):.1f}" for b in budgets
  }


def trend_table(size: str, per_budget: dict[float, dict]) -> str:
  """Each optimizer's token fraction of plain Adam's (and of tuned Adam's, in brackets) at
  every budget of ``size``, at each budget's own best point, under the passes over the
  training split each budget makes, as Markdown."""
  budgets = sorted(per_budget)
  columns = [("optimizer", "optimizer", "", "l")] + [(b, f"{b:g}x", "", "r") for b in budgets]
  rows = [_passes_row(size, budgets)]
  for name, label in protocol.LABELS.items():
    if name == "adam":
      continue
    row = {"optimizer": label}
    for b in budgets:
      fractions = per_budget[b]["rows"].get(name, {})
      tuned = fractions.get("tokens_vs_adam+embed") if name != "adam+embed" else None
      row[b] = _fraction_cell(fractions.get("tokens_vs_adam")) + (
        f" ({_fraction_cell(tuned)})" if tuned else ""
      )
    rows.append(row)
  return harness.table(columns, rows)


def best_lr_table(size: str, per_budget: dict[float, dict]) -> str:
  """Each optimizer's best seed-0 lr (group 1) at every budget of ``size`` (``~``: its grid
  is open) and, in brackets, its margin over the grid's next best point, as Markdown: whether,
  and how decisively, the best lr moves with the budget."""
  budgets = sorted(per_budget)
  columns = [("optimizer", "optimizer", "", "l")] + [(b, f"{b:g}x", "", "r") for b in budgets]
  rows = []
  for variant in protocol.VARIANTS:
    row = {"optimizer": protocol.LABELS[variant]}
    for b in budgets:
      losses = per_budget[b]["grids"][variant]
      lr, closed = search.best(losses, closed=False), search.best(losses)
      if lr is None:
        row[b] = None
        continue
      others = [v for x, v in losses.items() if v is not None and x != lr]
      margin = f" ({min(others) - losses[lr]:.3f})" if others else ""
      row[b] = f"{'' if closed else '~'}{lr:g}{margin}"
    rows.append(row)
  return harness.table(columns, rows)


def memorization_table(runner: Runner, size: str) -> str:
  """Per optimizer and budget of ``size``: the mean of final val loss minus final train loss
  over its WSD runs that logged a train loss (every lr, group and seed; their count in
  brackets), under each budget's passes over the training split, as Markdown."""
  gaps: dict[tuple[str, float], list[float]] = {}
  for path in sorted(runner.runs_dir.glob("*.json")):
    record = json.loads(path.read_text())
    point, budget = Point(**record["point"]), record["budget"]
    if (
      point.size == size
      and "final_train_loss" in record
      and record["tag"] == run_name(point, budget)
    ):
      name = protocol.ALL_VARIANTS[point.variant].fields["name"]
      gaps.setdefault((name, budget), []).append(
        record["final_val_loss"] - record["final_train_loss"]
      )
  if not gaps:
    return ""
  budgets = sorted({b for _, b in gaps})
  columns = [("optimizer", "optimizer", "", "l")] + [(b, f"{b:g}x", "", "r") for b in budgets]
  rows = [_passes_row(size, budgets)]
  for name in (n for n in protocol.LABELS if any(n == m for m, _ in gaps)):
    row = {"optimizer": protocol.LABELS[name]}
    for b in budgets:
      if (name, b) in gaps:
        row[b] = f"{statistics.mean(gaps[name, b]):+.3f} ({len(gaps[name, b])})"
    rows.append(row)
  return harness.table(columns, rows)


def cosine_check(runner: Runner, size: str = "tiny-w64", budget: float = 1.0) -> str:
  """WSD against cosine at each optimizer's best point: the WSD seeds' mean and spread, and
  one cosine run of the same length, warmup and floor (0)."""
  rows = []
  for name, point in search.best_points(runner, size, budget).items():
    cosine = runner.final(point, budget, "cosine")
    seeds = seed_finals(runner, point, budget)
    if cosine is None or not seeds:
      continue
    rows.append(
      {
        "optimizer": protocol.LABELS[name],
        "wsd": seeds_cell(seeds),
        "cosine": cosine,
        "diff": cosine - statistics.mean(seeds),
        "within": "yes" if min(seeds) <= cosine <= max(seeds) else "no",
      }
    )
  columns = [
    ("optimizer", "optimizer", "", "l"),
    ("wsd", "WSD (seeds)", "", "r"),
    ("cosine", "cosine (seed 0)", ".3f", "r"),
    ("diff", "cosine - WSD", "+.3f", "r"),
    ("within", "within the seeds' range", "", "l"),
  ]
  return harness.table(columns, rows) if rows else ""


def defaults_table(runner: Runner, size: str, per_budget: dict[float, dict]) -> str:
  """At each budget of ``size`` (its :func:`summarize`): each optimizer's trainer default
  against its best point so far (plain Adam's for Adam): their seeds' losses, the mean
  difference over the seeds both ran, and the best point's seed range."""
  rows = []
  for budget, summary in sorted(per_budget.items()):
    for name in protocol.VARIANTS:
      default, best = protocol.default_point(size, name), summary["rows"].get(name)
      finals = seed_finals(runner, default, budget)
      if not finals or best is None:
        continue
      tuned = Point(**best["point"])
      pairs = seed_pairs(runner, default, tuned, budget)
      diffs = [d - t for d, t in pairs if d is not None and t is not None]
      rows.append(
        {
          "budget": f"{budget:g}x",
          "optimizer": protocol.LABELS[name],
          "default": _point_cell(default),
          "loss": seeds_cell(finals),
          "best": ("" if best["bracketed"] else "~")
          + ("the default" if tuned == default else _point_cell(tuned)),
          "best_loss": seeds_cell(best["finals"]),
          "diff": statistics.mean(diffs) if diffs else None,
          "range": best["spread"] if len(best["finals"]) > 1 else None,
        }
      )
  columns = [
    ("budget", "budget", "", "l"),
    ("optimizer", "optimizer", "", "l"),
    ("default", "default (lr, group lr)", "", "l"),
    ("loss", "its loss", "", "r"),
    ("best", "best point", "", "l"),
    ("best_loss", "its loss", "", "r"),
    ("diff", "default - best (same seeds)", "+.3f", "r"),
    ("range", "best's seed range", ".3f", "r"),
  ]
  return harness.table(columns, rows) if rows else ""


def _point_cell(point: Point) -> str:
  rates = point.rates
  method = protocol.ALL_VARIANTS[point.variant].fields.get("whiten_method")
  return f"{rates['matrix']:g}, {rates['adam']:.3g}" + (f", {method}" if method else "")


def whitening_table(runner: Runner, size: str = "tiny-w64") -> str:
  """Each point ``WHITENINGS`` ran at, per budget: its seeds' mean and spread, the grid's SWAN's
  (8 Polar Express steps) at the same point and seeds (where run), and the difference of the
  two means."""
  rows = []
  for variant, spec in protocol.WHITENINGS.items():
    for path in sorted(runner.runs_dir.glob(f"{size}-{variant}-lr*-seed0-*x.json")):
      record = json.loads(path.read_text())
      point, budget = Point(**record["point"]), record["budget"]
      both = seed_pairs(runner, point, dataclasses.replace(point, variant="swan"), budget)
      cheap = [x for x, _ in both if x is not None]
      default = [y for x, y in both if x is not None and y is not None]
      row = {
        "budget": f"{budget:g}x",
        "point": f"lr {point.lr:g}, group {point.group:g}",
        "default": seeds_cell(default) if default else "not run",
        "method": spec.fields["whiten_method"],
        "cheap": seeds_cell(cheap),
      }
      if len(default) == len(cheap):
        row["diff"] = statistics.mean(cheap) - statistics.mean(default)
      if len(default) > 1:
        row["spread"] = max(default) - min(default)
      rows.append(row)
  columns = [
    ("budget", "budget", "", "l"),
    ("point", "SWAN point", "", "l"),
    ("default", "polar_express (8 steps)", "", "r"),
    ("method", "cheaper method", "", "l"),
    ("cheap", "its loss", "", "r"),
    ("diff", "difference (same seeds)", "+.4f", "r"),
    ("spread", "8 steps' seed range", ".4f", "r"),
  ]
  return harness.table(columns, rows) if rows else ""


def stage_hours(runner: Runner) -> dict[str, float]:
  """Wall-clock hours the kept runs took on these cores, per stage of ``STAGES`` (a size's
  budgets above the previous stage's, up to its own; beyond its last stage, the references
  that stage took one budget further) and for ``whitening``'s cheaper methods; a branch's
  hours include the trunk steps it ran."""
  hours: dict[str, float] = {}
  for path in sorted(runner.runs_dir.glob("*.json")):
    record = json.loads(path.read_text())
    size, variant, budget = record["point"]["size"], record["point"]["variant"], record["budget"]
    stages = [(b, f"{size} {b:g}x") for s, b, *_ in search.STAGES if s == size]
    stage = next((name for b, name in stages if budget <= b), stages[-1][1])
    key = "cheaper whitenings" if variant in protocol.WHITENINGS else stage
    hours[key] = hours.get(key, 0.0) + record["wall_s"] / 3600
  return hours


README = pathlib.Path(__file__).resolve().parents[3] / "README.md"
README_QUOTE = (  # the README's quote of the report sits between these lines
  "<!-- quoted from train/bench/results/budgets/budgets.md by "
  "`python -m train.bench.budgets --only report` -->\n",
  "<!-- budgets: end -->\n",
)


def readme_quote(report_text: str) -> str:
  """What the README quotes of the report: the table of the most tokens at which every
  optimizer of ``VARIANTS`` has run and every grid brackets its best (no ``~``), its size's
  token fractions by budget, and the hours the runs took."""
  tables = re.findall(
    r"#### (\S+) \(.*?\) at \S+ Chinchilla \(([\d,]+) tokens.*?\)\n\n(\|.*?\n)\n", report_text, re.S
  )
  complete = [
    (int(tokens.replace(",", "")), size, table)
    for size, tokens, table in tables
    if all(f"| {protocol.LABELS[v]} |" in table for v in protocol.VARIANTS) and "| ~" not in table
  ]
  if not complete:
    raise ValueError("no budget in the report has every optimizer's grids closed: nothing to quote")
  _, size, table = max(complete)
  trend = re.search(
    rf"#### {re.escape(size)}: tokens of Adam's .*? by budget\n\n(\|.*?\n)\n", report_text, re.S
  ).group(1)
  hours = re.search(r"Hours of runs so far.*\n", report_text).group(0)
  return (
    f"{table}\nThe tokens each optimizer trained on, as a fraction of the tokens plain Adam "
    "needs to reach the same final loss, at each budget's best point so far (of tuned "
    f"Adam's in brackets, once it has run):\n\n{trend}\n{hours}"
  )


def quote_in_readme(report_text: str, readme: pathlib.Path = README) -> None:
  """Replaces the README's quote of the report with :func:`readme_quote`."""
  begin, end = README_QUOTE
  text = readme.read_text()
  if text.count(begin) != 1 or text.count(end) != 1:
    raise ValueError(f"{readme} needs the lines {begin!r} and {end!r} once each around the quote")
  head, rest = text.split(begin)
  _, tail = rest.split(end)
  readme.write_text(head + begin + readme_quote(report_text) + end + tail)


def report(runner: Runner, out: pathlib.Path) -> None:
  """Writes ``budgets.md``, ``.json`` and ``.png`` from the run JSONs alone."""
  runner = runner.read_only()
  timing = harness.load_step_times(out)
  all_summaries = summaries(runner, timing)
  tables = [
    budget_table(size, budget, s)
    for size, per_budget in all_summaries.items()
    for budget, s in reversed(per_budget.items())  # the largest budget first
  ]
  trends = [
    f"#### {size}: tokens of Adam's (of tuned Adam's) by budget\n\n{trend_table(size, s)}\n"
    f"#### {size}: the best lr by budget\n\n{best_lr_table(size, s)}"
    for size, s in all_summaries.items()
  ]
  hours = "; ".join(f"{stage} {h:.1f} h" for stage, h in stage_hours(runner).items())
  text = (
    "## Budgets (`python -m train.bench.budgets`)\n\n"
    + "\n".join(tables + trends)
    + "\nBest lr: the lowest seed-0 final loss of a grid that brackets it (`~` while its lr "
    "grid, or in the budget tables its group grid, is open); by budget, in brackets, how much "
    "lower it is than the grid's next best point (compare the seeds' spread at the best "
    "points). "
    "Group lr: the Adam group's peak lr (Adam: its embedding and lm_head lr). Loss: the mean "
    "and half range of the seeds run at the best point (their count in brackets). Tokens: "
    "this budget over the budget at which the reference reaches the same loss (below 1: "
    "fewer tokens than the reference), the reference's loss interpolated linearly in log "
    "budget between its best final losses at 0.25x to 4x; `<`/`>` a bound beyond the "
    "budgets measured. Passes: the budget's tokens over the training split's (the shipped "
    "corpus, windows of 256 + 1 tokens). Past about 4 passes repeated tokens are worth less "
    "than fresh ones (Muennighoff et al., arXiv 2305.16264): a budget there measures "
    "training on repeated data, not on the fresh tokens of pretraining. "
    "Wall clock: tokens x the step-time ratio to Adam, "
    + (
      f"the optimizers' train steps timed side by side in one process (`--only timing`: "
      f"medians of {timing['reps']} interleaved rounds, {timing['machine']})"
      if timing
      else "once `--only timing` has timed the steps"
    )
    + ".\n\n"
    f"Hours of runs so far, on these 2 shared CPU cores: {hours or 'none'}.\n"
  )
  for size in protocol.BUDGETS:
    if table := memorization_table(runner, size):
      text += (
        f"\n#### Memorization: final val loss minus final train loss ({size})\n\n"
        f"The train loss: the mean logged over a run's last {TRAIN_LOSS_TAIL:.0%} of steps, on "
        "batches it has seen before once past its first pass. A gap that grows with the "
        "passes is the training split memorized.\n\n" + table
      )
  if check := cosine_check(runner):
    text += "\n#### WSD against cosine (tiny-w64, 1x, each best point)\n\n" + check
  for size in protocol.BUDGETS:
    if table := defaults_table(runner, size, all_summaries.get(size, {})):
      text += (
        f"\n#### The trainer's defaults against the best points ({size})\n\n"
        "Each optimizer at the trainer's default lr, Adam-group lr and whitening (Adam b2 0.95 "
        "as every run here), against its best point so far (`~`: its grid is open).\n\n" + table
      )
  if table := whitening_table(runner):
    text += (
      "\n#### SWAN's whitening: 8 Polar Express steps against a cheaper method (tiny-w64, "
      "`--only whitening`)\n\n" + table
    )
  out.mkdir(parents=True, exist_ok=True)
  harness.save(text, out / "budgets.md")
  (out / "budgets.json").write_text(json.dumps(all_summaries, indent=1, default=str))
  if all_summaries:
    plot.plot(all_summaries, out / "budgets.png")
