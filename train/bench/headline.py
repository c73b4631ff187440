"""What a user gets at the trainer's defaults: SWAN, SinkGD and Muon against a tuned Adam.

Run: ``python -m train.bench.headline [--only runs|timing|report]``. At each size, SWAN, SinkGD
and optax's Muon at the trainer's defaults (``train.optimizers``: lr, Adam-group lr,
whitening) against two Adams: the best plain Adam of the convergence benchmark (tiny, small)
or of the width ladder (``tiny-w64``, ``tiny-w256``, ``train.bench.transfer``), and Adam with
its embeddings and lm_head at a tuned lr (the Adam-group grid's best pair on tiny; elsewhere
the size's best Adam lr with the embeddings at tiny's best embedding lr, which muP keeps
constant across widths). Seeds 0-2 on tiny, seed 0 elsewhere; the convergence protocol and
its run store. Token fraction: the tokens a run needs to reach the reference's final loss
(same seed), over the reference's; wall-clock fraction: that times the ratio of median step
times of the compiled train steps, interleaved in one process. Writes ``OUT/headline.md`` and
``.json``.
"""

import dataclasses
import json
import pathlib
import statistics

from swan_optax import primitives
from train import loop
from train.bench import adam_group
from train.bench import harness
from train.bench import transfer
from train.bench.convergence import analysis
from train.bench.convergence import protocol
from train.bench.convergence import search
from train.bench.convergence import store as store_lib
from train.bench.convergence.store import Store
from train.optimizers import OptimizerConfig
from train.optimizers import optimizer_config

# Size -> seeds, smallest model first: the width ladder's rungs (tiny is its width 128) and small.
SEEDS = {"tiny-w64": (0,), "tiny": protocol.SEEDS, "tiny-w256": (0,), "small": (0,)}
LADDER = ("tiny-w64", "tiny-w256")
OPTIMIZERS = ("swan", "sinkgd", "muon")
REFERENCES = ("adam", "adam+embed")
STAGES = ("runs", "timing", "report")
_ADAM = "adam-b2_0.999"  # the Adam of the Adam-group grid


def ladder_default(size: str, name: str, seed: int) -> protocol.Run:
  """The width ladder's run (``train.bench.transfer.ladder_run``) of ``name``'s default lr,
  scale rule and Adam group, whitening as the ladder does."""
  defaults, variant = optimizer_config(name), transfer.default_variant(name)
  _, ratio, _ = transfer.VARIANTS[variant]
  group_factor = defaults.adam_group_peak_lr / defaults.lr / ratio
  return transfer.ladder_run(size, variant, defaults.lr, seed, group_factor)


def default_run(size: str, name: str, seed: int) -> protocol.Run:
  """``name`` at the trainer's defaults: :func:`ladder_default`, named by its settings, so a
  changed default trains anew. A default whitening other than the ladder's runs at its steps,
  named ``swan_METHODSTEPS`` as ``train.bench.whitening`` names it."""
  run, defaults = ladder_default(size, name, seed), optimizer_config(name)
  method = getattr(defaults, "whiten_method", None)  # None: no whitening (SinkGD)
  if method is None or method == run.optimizer.whiten_method:
    return run
  steps = defaults.whiten_steps or primitives.DEFAULT_STEPS[method]
  optimizer = dataclasses.replace(run.optimizer, whiten_method=method, whiten_steps=steps)
  label = run.variant.replace(run.optimizer.whiten_method, f"{method}{steps}", 1)
  return dataclasses.replace(run, variant=label, optimizer=optimizer)


def references(store: Store) -> dict[str, dict[str, list[protocol.Run]]]:
  """Size -> ``'adam'`` (the best plain Adam) and ``'adam+embed'`` (Adam with a tuned embedding
  lr) -> its runs, one per seed of ``SEEDS``; an empty list while the search behind it is open."""
  read_only = store.read_only()
  best = search.best_lrs(search.sweep(read_only))
  adam = search.adam_reference(read_only, best)
  refs = {size: {name: [] for name in REFERENCES} for size in SEEDS}
  if adam is None:
    return refs
  refs["tiny"]["adam"] = protocol.seed_runs(best)[adam]
  small = search.best_lrs(search.small_sweep(read_only, best, adam))
  if adam in small:
    refs["small"]["adam"] = [protocol.grid_run("small", adam, small[adam], 0)]
  adam_grid = {_ADAM: transfer.GRID[_ADAM]}
  for size in LADDER:
    losses = search.sweep(read_only, size, adam_grid, make_run=transfer.ladder_run)
    if (lr := search.best_lrs(losses).get(_ADAM)) is not None:
      refs[size]["adam"] = [transfer.ladder_run(size, _ADAM, lr, 0)]
  pair = adam_group.summarize(_ADAM, adam_group.sweep(read_only, _ADAM))
  if pair["complete"]:
    lr, group = pair["best"]["lr"], pair["best"]["group_lr"]
    refs["tiny"]["adam+embed"] = [adam_group.joint_run(_ADAM, lr, group, s) for s in SEEDS["tiny"]]
    for size in ("small", *LADDER):
      if refs[size]["adam"]:
        adam_lr = refs[size]["adam"][0].optimizer.lr
        refs[size]["adam+embed"] = [adam_group.joint_run(_ADAM, adam_lr, group, 0, size)]
  return refs


def table_runs(store: Store) -> list[protocol.Run]:
  """Every run of the table: the defaults', then the references' (known so far)."""
  defaults = [
    default_run(size, n, s) for size, seeds in SEEDS.items() for n in OPTIMIZERS for s in seeds
  ]
  refs = [r for sizes in references(store).values() for rs in sizes.values() for r in rs]
  return defaults + refs


def step_times(size: str, reps: int) -> dict[str, float]:
  """Median seconds of the compiled train step of Adam and of each default, interleaved."""
  setups = {}
  for name in ("adam", *OPTIMIZERS):
    run = (
      default_run(size, name, 0) if name in OPTIMIZERS else protocol.grid_run(size, _ADAM, 2e-3, 0)
    )
    config = protocol.train_config(run, protocol.STEPS, pathlib.Path("runs/timing"))
    setups[name] = harness.Stepper(harness.experiment(config)).setup
  return harness.interleaved_medians(setups, reps)


def summarize(store: Store, timing: dict) -> dict[str, list[dict]]:
  """Size -> one row per default optimizer: its settings, final losses, and token and
  wall-clock fractions against each reference, per seed (``None``: a run missing)."""
  read_only, refs = store.read_only(), references(store)
  summary = {}
  for size, seeds in SEEDS.items():
    steps = timing.get("steps", {}).get(size)
    rows = []
    for name in OPTIMIZERS:
      records = [read_only.get(default_run(size, name, s)) for s in seeds]
      defaults, run = optimizer_config(name), default_run(size, name, 0).optimizer
      row = {
        "optimizer": name,
        "lr": defaults.lr,
        "scale_rule": getattr(defaults, "scale_rule", None),  # None: Muon's own
        "whitening": _whitening(run),
        "adam_group_lr": defaults.adam_group_peak_lr,
        "final_loss": [_final(r) for r in records],
        "step_time_ratio": steps[name] / steps["adam"] if steps and name in steps else None,
        "ladder": None,
      }
      ladder = [ladder_default(size, name, s) for s in seeds]
      if ladder[0] != default_run(size, name, 0):  # the default whitens otherwise
        row["ladder"] = {
          "whitening": _whitening(ladder[0].optimizer),
          "final_loss": [_final(read_only.get(r)) for r in ladder],
        }
      for ref_name, ref_runs in refs[size].items():
        ref = [read_only.get(r) for r in ref_runs] or [None] * len(seeds)
        tokens = [analysis.token_fraction(r, a) for r, a in zip(records, ref, strict=True)]
        row[ref_name] = {
          "variant": ref_runs[0].variant if ref_runs else None,
          "lr": ref_runs[0].optimizer.lr if ref_runs else None,
          "embed_lr": ref_runs[0].optimizer.lr * ref_runs[0].optimizer.embed_lr_scale
          if ref_runs
          else None,
          "final_loss": [_final(a) for a in ref],
          "token_fraction": tokens,
          "wall_fraction": [analysis.wall_fraction(f, row["step_time_ratio"]) for f in tokens],
        }
      rows.append(row)
    summary[size] = rows
  return summary


def _whitening(optimizer: OptimizerConfig) -> str | None:
  """``'METHOD STEPS'`` of a SWAN optimizer's whitening; ``None`` for one that does not whiten."""
  if not hasattr(optimizer, "whiten_method"):
    return None
  steps = optimizer.whiten_steps or primitives.DEFAULT_STEPS[optimizer.whiten_method]
  return f"{optimizer.whiten_method} {steps}"


def _final(record: dict | None) -> float | None:
  return None if record is None else record["evals"][-1]["val_loss"]


def report_text(summary: dict[str, list[dict]], timing: dict) -> str:
  header = ["size", "optimizer (defaults)", "final loss", "step time (x Adam)"]
  for ref in REFERENCES:
    header += [f"tokens (x {ref})", f"wall clock (x {ref})"]
  rows = []
  for size, size_rows in summary.items():
    for row in size_rows:
      ratio = row["step_time_ratio"]
      cells = [
        size,
        f"{row['optimizer']}(lr {row['lr']:g}, "
        + (f"{row['scale_rule']}, " if row["scale_rule"] else "")
        + (f"{row['whitening']}, " if row["whitening"] else "")
        + f"Adam group {row['adam_group_lr']:.2g})",
        _mean_range(row["final_loss"], ".3f"),
        "" if ratio is None else f"{ratio:.2f}",
      ]
      for ref in REFERENCES:
        cells += [
          _mean_range(row[ref]["token_fraction"], ".2f"),
          _mean_range(row[ref]["wall_fraction"], ".2f"),
        ]
      rows.append(cells)
  refs = []
  for size, size_rows in summary.items():
    for ref in REFERENCES:
      r = size_rows[0][ref]
      if r["lr"] is None:
        refs.append(f"{size} {ref}: not known yet (its search is open)")
        continue
      what = f"{size} {ref}: `{r['variant']}` at lr {r['lr']:g}"
      if ref == "adam+embed":
        what += f", embeddings and lm_head at {r['embed_lr']:g}"
      refs.append(f"{what}, final loss {_mean_range(r['final_loss'], '.3f') or 'not run yet'}")
  ladder = [
    f"{size} {row['ladder']['whitening']} {_mean_range(row['ladder']['final_loss'], '.3f')}"
    f" ({_difference(row['final_loss'], row['ladder']['final_loss'])})"
    for size, size_rows in summary.items()
    for row in size_rows
    if row["ladder"]
  ]
  measured = (
    f"median step times, {timing['reps']} interleaved rounds in one process ({timing['machine']})"
    if timing
    else "step times not measured yet: `--only timing`"
  )
  return (
    f"{protocol.STEPS} steps; seeds {', '.join(map(str, SEEDS['tiny']))} on tiny, "
    "0 on the other sizes (mean and range over seeds). Tokens: "
    "the tokens to reach the reference's final loss (same seed) over the reference's; wall "
    f"clock: that times the step-time ratio ({measured}). `not reached`: never got there.\n\n"
    + harness.markdown_table(header, rows, "ll" + "r" * (len(header) - 2))
    + "\nReferences: the best plain Adam of the convergence benchmark or, on `tiny-w64` and "
    "`tiny-w256`, of the width ladder (`adam`), and Adam with its embeddings and lm_head at the "
    "Adam-group grid's best pair on tiny, elsewhere the best Adam lr with the embeddings at "
    "tiny's best embedding lr (`adam+embed`). "
    + "; ".join(refs)
    + ".\n"
    + (
      "\nSWAN's default whitening against the width ladder's runs of the same settings, which "
      "whiten otherwise (final loss; the default's minus theirs, mean over the same seeds): "
      + "; ".join(ladder)
      + ".\n"
      if ladder
      else ""
    )
  )


def _difference(default: list, ladder: list) -> str:
  if None in default or None in ladder:
    return "not run yet"
  return f"{statistics.mean(default) - statistics.mean(ladder):+.3f}"


def _mean_range(values: list, fmt: str) -> str:
  """``mean (min-max)`` of the finished values; ``not reached`` if any never got there."""
  if any(v == analysis.NOT_REACHED for v in values):
    return analysis.NOT_REACHED
  done = [v for v in values if v is not None]
  if not done:
    return ""
  text = f"{statistics.mean(done):{fmt}}"
  if len(done) > 1:
    text += f" ({min(done):{fmt}}-{max(done):{fmt}})"
  return text + ("" if len(done) == len(values) else f" [{len(done)} of {len(values)}]")


def main() -> None:
  parser = harness.parser(__doc__, "headline")
  parser.add_argument("--only", choices=STAGES, action="append")
  parser.add_argument("--reps", type=int, default=15, help="timing rounds")
  parser.add_argument("--work", type=pathlib.Path, default=pathlib.Path("runs/headline"))
  store_lib.add_runs_flag(parser)
  args = parser.parse_args()
  stages = args.only or STAGES
  store = Store(args.runs, args.work, protocol.STEPS, protocol.STEPS, loop.train)
  if "runs" in stages:
    list(map(store.get, table_runs(store)))
  if "timing" in stages:
    steps = {size: step_times(size, args.reps) for size in SEEDS}
    harness.save_step_times(args.out, args.reps, steps)
  if "report" in stages:
    timing = harness.load_step_times(args.out)
    summary = summarize(store, timing)
    text = report_text(summary, timing)
    harness.save(
      f"### At the defaults (`python -m train.bench.headline`)\n\n{text}", args.out / "headline.md"
    )
    (args.out / "headline.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
  main()
