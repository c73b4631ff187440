"""Convergence benchmark: tuned Adam vs SWAN vs SinkGD, ablations and a second model size.

Run: ``python -m train.bench.convergence [--only STAGE] [--work DIR]``. The
protocol: 240 steps x 16 x 256 tokens, linear warmup over 10% then cosine to
10%, evaluation every 20 steps on 8 batches, gradient clipping 1.0 and weight
decay 0 for every optimizer (so "AdamW" is Adam), data seed = init seed = the
run's seed. Stages, in priority order:

* ``sweep``: seed 0 over a 2x-spaced learning-rate grid per variant (Adam with
  beta2 0.95 and 0.999, SWAN, SinkGD's global lr), widened by 2x while the best
  sits at an edge;
* ``seeds``: seeds 1 and 2 at each variant's best;
* ``ablations``: seeds 0 and 1 of variants that say where the gain comes from;
* ``small``: the ``small`` model (6.8M params) at each best tiny lr and its 2x
  neighbours, widened 2x while the best sits at an edge, then Adam with its
  embeddings at SinkGD's lr and SWAN by Polar Express at its best small lr;
* ``timing``: each optimizer's median step time (tiny and small), interleaved in this process;
* ``report``: the tables, plot and summary, from the run JSONs alone.

Every finished run is kept as ``OUT/runs/TAG.json`` (settings and evaluation
record) and reused; a completed run folder ``WORK/TAG`` (``metrics.jsonl`` +
``summary.json``) is adopted instead of re-run. Writes ``OUT/convergence.md``,
``OUT/convergence.png`` and ``OUT/convergence.json``.
"""

import dataclasses
import json
import pathlib
import statistics
import time
from collections.abc import Callable

import numpy as np

from models import configs
from train import build
from train import loop
from train import mesh as mesh_lib
from train import metrics
from train.bench import harness
from train.config import OptimizerConfig
from train.config import TrainConfig
from train.config import model_data

STEPS, BATCH, SEQ_LEN, EVAL_EVERY, EVAL_BATCHES, MAX_GRAD_NORM = 240, 16, 256, 20, 8, 1.0
ADAM_LRS = (5e-4, 1e-3, 2e-3, 4e-3, 8e-3)
GRID: dict[str, tuple[float, ...]] = {
  "adam-b2_0.95": ADAM_LRS,
  "adam-b2_0.999": ADAM_LRS,
  "swan": ADAM_LRS,
  "sinkgd": (0.0125, 0.025, 0.05, 0.1, 0.2),  # global lr; the matrix group steps 0.05x this
}
VARIANTS: dict[str, dict] = {
  "adam-b2_0.95": {"name": "adam", "adam_b2": 0.95},
  "adam-b2_0.999": {"name": "adam", "adam_b2": 0.999},
  "swan": {"name": "swan"},
  "sinkgd": {"name": "sinkgd"},
}
GRID_ORDER = (2, 3, 1, 4, 0)  # centre first, so a partial grid already brackets something
SEEDS = (0, 1, 2)
ABLATION_SEEDS = (0, 1)
PAPERS = {"swan": 0.5, "sinkgd": 0.4}  # fraction of Adam's tokens the papers report
REPO = pathlib.Path(__file__).resolve().parents[2]
STAGES = ("sweep", "seeds", "ablations", "small", "timing", "report")


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of the benchmark: model size, named optimizer variant, lr and seed."""

  size: str
  variant: str
  optimizer: OptimizerConfig
  seed: int

  @property
  def tag(self) -> str:
    return f"{self.size}-{self.variant}-lr{self.optimizer.lr:g}-seed{self.seed}"


def grid_run(size: str, variant: str, lr: float, seed: int, **fields) -> Run:
  """A run of one of the ``VARIANTS``; ``fields`` override its optimizer settings."""
  optimizer = OptimizerConfig(lr=lr, max_grad_norm=MAX_GRAD_NORM, **VARIANTS[variant], **fields)
  return Run(size, variant, optimizer, seed)


def train_config(run: Run, steps: int, work: pathlib.Path) -> TrainConfig:
  """The protocol's ``TrainConfig`` of ``run``, writing its folder ``work/TAG``."""
  return TrainConfig(
    model=run.size,
    data=model_data(run.size, seq_len=SEQ_LEN),
    optimizer=run.optimizer,
    steps=steps,
    batch_size=BATCH,
    eval_every=EVAL_EVERY,
    eval_batches=EVAL_BATCHES,
    checkpoint_every=steps,
    keep_checkpoints=1,
    out=work / run.tag,
    seed=run.seed,
  )


def _header_settings(header: dict) -> dict:
  """The protocol settings in a run folder's header, from the CLI's ``args`` or the ``config``."""
  if "args" in header:  # the trainer before TrainConfig: every flag as a string
    a = header["args"]
    return {"model": a["config"], "optimizer": a["optimizer"], "lr": float(a["lr"]),
            "adam_b2": float(a["adam_b2"]), "max_grad_norm": float(a["max_grad_norm"]),
            "non_matrix": a["non_matrix"], "seed": int(a["seed"]), "steps": int(a["steps"]),
            "batch_size": int(a["batch_size"]), "seq_len": int(a["seq_len"])}  # fmt: skip
  c, o = header["config"], header["config"]["optimizer"]
  return {"model": c["model"], "optimizer": o["name"], "lr": float(o["lr"]),
          "adam_b2": float(o["adam_b2"]), "max_grad_norm": float(o["max_grad_norm"]),
          "non_matrix": o["non_matrix"], "seed": c["seed"], "steps": c["steps"],
          "batch_size": c["batch_size"], "seq_len": c["data"]["seq_len"]}  # fmt: skip


def run_record(run: Run, config: TrainConfig, folder: pathlib.Path, wall_time_s: float | None):
  """The JSON kept for a finished run folder; raises if the folder ran other settings."""
  records = metrics.read_jsonl(folder / "metrics.jsonl")
  header = next(r for r in records if r["kind"] == "run")
  o = config.optimizer
  expected = {"model": config.model, "optimizer": o.name, "lr": o.lr, "adam_b2": o.adam_b2,
              "max_grad_norm": o.max_grad_norm, "non_matrix": o.non_matrix, "seed": config.seed,
              "steps": config.steps, "batch_size": config.batch_size,
              "seq_len": config.data.seq_len}  # fmt: skip
  found = _header_settings(header)
  if found != expected:
    diff = {k: (found[k], v) for k, v in expected.items() if found[k] != v}
    raise ValueError(f"run folder {folder} is not {run.tag}: (found, expected) {diff}")
  # A field the folder's trainer did not have yet ran at its default (fields are added so).
  defaults = json.loads(_to_json(OptimizerConfig()))
  if "config" in header and {**defaults, **header["config"]["optimizer"]} != json.loads(
    _to_json(o)
  ):
    raise ValueError(f"run folder {folder} has other optimizer settings than {run.tag}")
  train = [r for r in records if r["kind"] == "train"]
  return {
    "tag": run.tag,
    "size": run.size,
    "variant": run.variant,
    "seed": run.seed,
    "params": header["params"],
    "optimizer": json.loads(_to_json(o)),
    "config": json.loads(_to_json(_portable(config))),
    "evals": [
      {k: r[k] for k in ("step", "tokens", "val_loss", "val_ppl")}
      for r in records
      if r["kind"] == "eval"
    ],  # fmt: skip
    "step_time_median_s": statistics.median(r["step_time_s"] for r in train),
    "train_time_s": _loop_seconds(train),
    "wall_time_s": wall_time_s,
    "source": str(folder),
  }


def _portable(config: TrainConfig) -> TrainConfig:
  """``config`` without this machine's paths: no run folder, the corpus relative to the repo."""
  corpus = pathlib.Path(config.data.data)
  if corpus.is_relative_to(REPO):
    corpus = corpus.relative_to(REPO)
  return dataclasses.replace(
    config, out=None, data=dataclasses.replace(config.data, data=str(corpus))
  )


def _loop_seconds(train: list[dict]) -> float:
  """Seconds of the training loop: each train record's mean step time times its window."""
  steps = [r["step"] for r in train]
  windows = np.diff([0, *steps]) if steps else []
  return float(sum(r["step_time_s"] * n for r, n in zip(train, windows, strict=True)))


def _to_json(obj) -> str:
  return json.dumps(dataclasses.asdict(obj), default=str)


def _completed(folder: pathlib.Path) -> bool:
  summary = folder / "summary.json"
  return summary.exists() and json.loads(summary.read_text())["completed"]


class Store:
  """The run JSONs under ``runs_dir``: read, adopted from ``work``, or trained by ``train_fn``.

  Args:
    runs_dir: where each finished run's ``TAG.json`` is kept.
    work: run folders (``work/TAG``); completed ones are adopted.
    steps: the tiny protocol's steps; ``small_steps`` the small model's.
    train_fn: trains a ``TrainConfig`` into its folder; ``None``: never train
      (a run with neither JSON nor completed folder is missing).
  """

  def __init__(self, runs_dir: pathlib.Path, work: pathlib.Path, steps: int, small_steps: int,
               train_fn: Callable[[TrainConfig], object] | None):  # fmt: skip
    self.runs_dir, self.work, self.train_fn = runs_dir, work, train_fn
    self.steps = {"tiny": steps, "small": small_steps}

  def get(self, run: Run) -> dict | None:
    """``run``'s JSON: kept, adopted from a completed folder, or trained now (if allowed)."""
    path = self.runs_dir / f"{run.tag}.json"
    config = train_config(run, self.steps[run.size], self.work)
    if path.exists():
      record = json.loads(path.read_text())
      if record["config"]["steps"] != config.steps:
        raise ValueError(
          f"{path} ran {record['config']['steps']} steps, not --steps {config.steps}: use "
          "another --out for another protocol"
        )
      return record
    wall = None
    if not _completed(config.run_dir):
      if self.train_fn is None:
        return None
      print(f"training {run.tag}", flush=True)
      (config.run_dir / "metrics.jsonl").unlink(missing_ok=True)
      start = time.perf_counter()
      self.train_fn(config)
      wall = time.perf_counter() - start
    record = run_record(run, config, config.run_dir, wall)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1))
    return record

  def read_only(self) -> "Store":
    """This store, never training."""
    return Store(self.runs_dir, self.work, self.steps["tiny"], self.steps["small"], None)

  def final(self, run: Run) -> float | None:
    record = self.get(run)
    return None if record is None else record["evals"][-1]["val_loss"]


def sweep(
  store: Store,
  size: str = "tiny",
  grid: dict[str, tuple[float, ...]] = GRID,
  order: tuple[int, ...] = GRID_ORDER,
) -> dict[str, dict[float, float | None]]:
  """Seed-0 final losses over each variant's grid, widened 2x at an edge holding the best.

  ``order``: the grid points' indices in the order they run, every variant in turn.
  """
  grid = {variant: list(lrs) for variant, lrs in grid.items()}
  for i in order:
    for variant, lrs in grid.items():
      store.get(grid_run(size, variant, lrs[i], 0))
  losses = {v: {lr: store.final(grid_run(size, v, lr, 0)) for lr in lrs} for v, lrs in grid.items()}
  while widen := [v for v in losses if _edge(losses[v])]:
    for variant in widen:
      lrs = sorted(losses[variant])
      lr = lrs[0] / 2 if _best(losses[variant]) == lrs[0] else lrs[-1] * 2
      # Not run yet (None): the grid stays open at this edge, and is no longer an "edge".
      losses[variant][lr] = store.final(grid_run(size, variant, lr, 0))
  return {v: dict(sorted(ls.items())) for v, ls in losses.items()}


def _best(losses: dict[float, float | None]) -> float | None:
  """The lr of the lowest loss, or ``None`` while some grid point is not run yet."""
  if not losses or any(v is None for v in losses.values()):
    return None
  return min(losses, key=losses.get)


def _edge(losses: dict[float, float | None]) -> bool:
  best = _best(losses)
  return best is not None and best in (min(losses), max(losses))


def best_lrs(losses: dict[str, dict[float, float | None]]) -> dict[str, float]:
  """Each variant's best lr, for variants whose grid is complete and brackets it."""
  bests = {v: _best(ls) for v, ls in losses.items()}
  return {v: lr for v, lr in bests.items() if lr is not None and not _edge(losses[v])}


def seed_runs(best: dict[str, float], size: str = "tiny") -> dict[str, list[Run]]:
  """The runs of every seed at each variant's best lr."""
  return {v: [grid_run(size, v, lr, seed) for seed in SEEDS] for v, lr in best.items()}


def best_so_far(losses: dict[str, dict[float, float | None]]) -> dict[str, float]:
  """Each variant's lr of the lowest finished seed-0 loss (provisional while its grid is open)."""
  done = {v: {lr: x for lr, x in ls.items() if x is not None} for v, ls in losses.items()}
  return {v: min(ls, key=ls.get) for v, ls in done.items() if ls}


def adam_reference(store: Store, best: dict[str, float]) -> str | None:
  """The Adam variant (beta2) with the lower mean final loss over its finished seeds at ``best``."""
  means = {}
  for variant in ("adam-b2_0.95", "adam-b2_0.999"):
    finals = [x for x in map(store.final, seed_runs(best).get(variant, [])) if x is not None]
    if finals:
      means[variant] = np.mean(finals)
  return min(means, key=means.get) if means else None


def seeds_finished(store: Store, best: dict[str, float]) -> bool:
  """Whether every variant's grid brackets its best and all its seeds there are finished."""
  runs = [r for seeds in seed_runs(best).values() for r in seeds]
  return len(best) == len(GRID) and all(store.final(r) is not None for r in runs)


def embed_lr_run(size: str, adam: str, lr: float, embed_lr: float, seed: int) -> Run:
  """Adam at ``lr`` with the embedding and lm_head at ``embed_lr``."""
  run = grid_run(size, adam, lr, seed, embed_lr_scale=embed_lr / lr)
  return dataclasses.replace(run, variant=f"{adam}+embed_lr{embed_lr:g}")


def ablation_runs(best: dict[str, float], adam: str) -> dict[str, tuple[str, str, list[Run]]]:
  """Ablation name -> (the variant it changes, what it changes, its runs), at the best settings."""
  a, s, k = best[adam], best["swan"], best["sinkgd"]
  embed = "Adam with the embeddings and lm_head at {} best lr ({:g}; the rest at {:g})"
  ablations = {
    f"sinkgd+adam_lr{a:g}": ("sinkgd", "SinkGD with its Adam group (embeddings, lm_head, norms) "
      "at Adam's best lr", lambda seed: grid_run("tiny", "sinkgd", k, seed, adam_group_lr=a)),
    f"{adam}+embed_lr{k:g}": (adam, embed.format("SinkGD's global", k, a),
      lambda seed: embed_lr_run("tiny", adam, a, k, seed)),
    f"{adam}+embed_lr{s:g}": (adam, embed.format("SWAN's", s, a),
      lambda seed: embed_lr_run("tiny", adam, a, s, seed)),
    "swan_gradnorm": ("swan", "SWAN with GradNorm only (no whitening)",
      lambda seed: grid_run("tiny", "swan", s, seed, swan_operators="gradnorm")),
    "swan_whiten": ("swan", "SWAN with whitening only (no GradNorm)",
      lambda seed: grid_run("tiny", "swan", s, seed, swan_operators="whiten")),
    "swan_polar_express": ("swan", "SWAN whitening by Polar Express (closer to the polar factor "
      "on real gradients than the paper's 10 Newton-Schulz steps)",
      lambda seed: grid_run("tiny", "swan", s, seed, whiten_method="polar_express")),
    "swan+adafactor": ("swan", "nearly stateless: SWAN with Adafactor instead of Adam on "
      "non-matrices", lambda seed: grid_run("tiny", "swan", s, seed, non_matrix="adafactor")),
  }  # fmt: skip
  return {
    name: (base, question,
           [dataclasses.replace(make(seed), variant=name) for seed in ABLATION_SEEDS])
    for name, (base, question, make) in ablations.items()
  }  # fmt: skip


SMALL_LR_FACTORS = (0.5, 1, 2)  # the best tiny lr and its 2x neighbours, widened like the sweep
SMALL_ORDER = (1, 0, 2)


def small_sweep(
  store: Store, best: dict[str, float], adam: str
) -> dict[str, dict[float, float | None]]:
  """The small model's seed-0 losses from each best tiny lr and its 2x neighbours, widened 2x
  while the best sits at an edge (as the tiny sweep)."""
  grid = {v: tuple(best[v] * f for f in SMALL_LR_FACTORS) for v in (adam, "swan", "sinkgd")}
  return sweep(store, "small", grid, SMALL_ORDER)


def small_ablations(
  best: dict[str, float], adam: str, small: dict[str, dict[float, float | None]]
) -> dict[str, Run]:
  """Base variant -> the ablation rerun on small: Adam with the embeddings at SinkGD's best lr
  (the tiny ablation that matched SinkGD), and SWAN whitening by Polar Express at SWAN's best
  small lr (once the small SWAN grid brackets it)."""
  runs = {adam: embed_lr_run("small", adam, best[adam], best["sinkgd"], 0)}
  if swan := best_lrs(small).get("swan"):
    polar = grid_run("small", "swan", swan, 0, whiten_method="polar_express")
    runs["swan"] = dataclasses.replace(polar, variant="swan_polar_express")
  return runs


def tokens_to_reach(evals: list[dict], target_loss: float) -> float | None:
  """Tokens at which the validation loss first reaches ``target_loss`` (linear interpolation)."""
  previous = (0, float("inf"))
  for r in evals:
    if r["val_loss"] <= target_loss:
      t0, l0 = previous
      if not np.isfinite(l0):
        return float(r["tokens"])
      return t0 + (r["tokens"] - t0) * (l0 - target_loss) / (l0 - r["val_loss"])
    previous = (r["tokens"], r["val_loss"])
  return None


NOT_REACHED = "not reached"


def token_fraction(record: dict | None, adam: dict | None) -> float | str | None:
  """Fraction of Adam's tokens ``record`` needs to reach Adam's final loss (same seed).

  ``None`` while either run is missing; ``NOT_REACHED`` if ``record`` never gets there.
  """
  if record is None or adam is None:
    return None
  reached = tokens_to_reach(record["evals"], adam["evals"][-1]["val_loss"])
  return NOT_REACHED if reached is None else reached / adam["evals"][-1]["tokens"]


def median_step_times(size: str, reps: int) -> dict[str, float]:
  """Median seconds of each optimizer's compiled train step, interleaved in this process.

  A step's cost depends on neither the learning rate nor beta2, so each optimizer
  is timed at its grid's centre.
  """
  mesh = mesh_lib.make_mesh(None)
  setups = {}
  for variant in ("adam-b2_0.999", "swan", "sinkgd"):
    run = grid_run(size, variant, GRID[variant][2], 0)
    exp = build.build(train_config(run, STEPS, pathlib.Path("runs/timing")), mesh)
    setups[run.optimizer.name] = _stepper(exp, exp.random_batch())
  return harness.interleaved_medians(setups, reps)


def _stepper(exp: build.Experiment, batch: dict) -> harness.Setup:
  """A setup timing one train step of ``exp`` that advances its own (donated) state."""
  state = [exp.train_step(exp.state, batch)[0]]  # the first step warms up

  def step():
    state[0], step_metrics = exp.train_step(state[0], batch)
    return step_metrics["loss"]

  return lambda: step


def _spread(values: list[float | str | None], fmt: str) -> str:
  """``mean (min–max)`` of the numbers, saying how many seeds are missing or never reached."""
  done = [v for v in values if isinstance(v, float)]
  missed = values.count(NOT_REACHED)
  text = f"{np.mean(done):{fmt}} ({min(done):{fmt}}–{max(done):{fmt}})" if done else ""
  if len(done) == 1:
    text = f"{done[0]:{fmt}}"
  if missed:
    text += f"{', ' if text else ''}{NOT_REACHED} by {missed} of {len(values)} seeds"
  if len(done) + missed < len(values):
    text += f"{', ' if text else ''}{values.count(None)} of {len(values)} seeds not run yet"
  return text


def _fractions(values: list[float | str | None]) -> str:
  return ", ".join("—" if v is None else v if isinstance(v, str) else f"{v:.2f}" for v in values)


def collect(store: Store, timing: dict) -> dict:
  """Every figure of the report, from the run JSONs (``None`` where a run is missing).

  While a grid is open or seeds are missing, the main rows are at the best lr so
  far and marked provisional; ablations and the small size need them all.
  """
  losses = sweep(store)
  final, best = best_lrs(losses), best_so_far(losses)
  adam = adam_reference(store, best)
  done = seeds_finished(store, final)
  out = {"sweep": {v: {f"{lr:g}": loss for lr, loss in ls.items()} for v, ls in losses.items()},
         "best_lr": best, "final": done, "adam": adam, "main": [], "ablations": [],
         "small": []}  # fmt: skip
  if adam is None:
    return out
  adam_seeds = [store.get(r) for r in seed_runs(best)[adam]]
  for variant, runs in seed_runs(best).items():
    records = [store.get(r) for r in runs]
    row = _row(variant, best[variant], records, adam_seeds, timing.get("tiny"))
    grid = "grid brackets it" if variant in final else "grid still open"
    out["main"].append({**row, "status": f"{grid}, {sum(map(bool, records))} of 3 seeds"})
  if done:
    for name, (base, question, runs) in ablation_runs(best, adam).items():
      row = _row(name, runs[0].optimizer.lr, [store.get(r) for r in runs], adam_seeds, None)
      base_row = next(r for r in out["main"] if r["variant"] == base)
      out["ablations"].append(
        {**row, "question": question, "base": base, "base_losses": base_row["final_loss"][:2]}
      )
    out["small"] = _small(store, best, adam, timing.get("small"))
  return out


def _row(variant, lr, records, adam_seeds, step_times) -> dict:
  """One optimizer setting: final losses and token fractions per seed, wall-clock fraction."""
  fractions = [
    token_fraction(r, a) for r, a in zip(records, adam_seeds[: len(records)], strict=True)
  ]
  name = next((r["optimizer"]["name"] for r in records if r), None)
  ratio = step_times[name] / step_times["adam"] if step_times and name else None
  done = [f for f in fractions if isinstance(f, float)]
  return {
    "variant": variant,
    "lr": lr,
    "final_loss": [None if r is None else r["evals"][-1]["val_loss"] for r in records],
    "token_fraction": fractions,
    "step_time_ratio": ratio,
    "wall_fraction": [_times(f, ratio) for f in fractions],
    "token_fraction_mean": float(np.mean(done)) if done and len(done) == len(records) else None,
  }


def _times(fraction: float | str | None, ratio: float | None) -> float | str | None:
  """The wall-clock fraction of a token fraction; ``None`` without a step-time ratio."""
  if ratio is None or fraction is None:
    return None
  return fraction * ratio if isinstance(fraction, float) else fraction


def _small(store: Store, best: dict[str, float], adam: str, step_times) -> list[dict]:
  """The small model's runs, token fractions against its best Adam run; the ablation last."""
  lrs = small_sweep(store, best, adam)
  ablations = small_ablations(best, adam, lrs)
  runs = [grid_run("small", v, lr, 0) for v, ls in lrs.items() for lr in ls]
  runs += ablations.values()
  base = {run.variant: variant for variant, run in ablations.items()}
  records = {r.tag: store.get(r) for r in runs}
  adam_runs = [r for r in runs if r.variant == adam and records[r.tag] is not None]
  ref = min((records[r.tag] for r in adam_runs), key=lambda x: x["evals"][-1]["val_loss"],
            default=None)  # fmt: skip
  rows = []
  for run in runs:
    row = _row(run.variant, run.optimizer.lr, [records[run.tag]], [ref], step_times)
    rows.append({**row, "tiny_best_lr": best[base.get(run.variant, run.variant)],
                 "base": base.get(run.variant)})  # fmt: skip
  return rows


def plot(store: Store, summary: dict, path: pathlib.Path) -> None:
  """Validation loss against tokens at the best settings: tiny (mean, min–max band), small."""
  import matplotlib.pyplot as plt  # noqa: PLC0415 - train.metrics has set the Agg backend

  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  best = summary["best_lr"]
  for variant, runs in seed_runs(best).items():
    records = [r for r in map(store.get, runs) if r is not None]
    if records:
      _band(axes[0], records, f"{variant} lr {best[variant]:g} ({len(records)} seeds)", variant)
  small = [r for r in summary["small"] if r["variant"] in best and r["final_loss"][0] is not None]
  for variant in dict.fromkeys(r["variant"] for r in small):
    lr = min((r for r in small if r["variant"] == variant), key=lambda r: r["final_loss"][0])["lr"]
    record = store.get(grid_run("small", variant, lr, 0))
    _band(axes[1], [record], f"{variant} lr {lr:g} (1 seed)", variant)
  for ax, size in zip(axes, ("tiny", "small"), strict=True):
    params = configs.get_config(size).num_params
    ax.set(xlabel="training tokens", ylabel="validation loss",
           title=f"{size} LLaMA ({params / 1e6:.1f}M params), each at its best lr")  # fmt: skip
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
      low, high = ax.get_ylim()
      ax.set_ylim(low, min(high, 6.5))  # the first evaluations would squash the rest
    else:
      ax.text(0.5, 0.5, "not run yet", ha="center", transform=ax.transAxes)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _band(ax, records: list[dict], label: str, variant: str) -> None:
  """Mean and min–max of the records' curves, in the variant's colour on both panels."""
  color = f"C{list(GRID).index(variant)}"
  tokens = np.array([e["tokens"] for e in records[0]["evals"]])
  loss = np.array([[e["val_loss"] for e in r["evals"]] for r in records])
  ax.plot(tokens, loss.mean(0), "o-", ms=2, label=label, color=color)
  ax.fill_between(tokens, loss.min(0), loss.max(0), alpha=0.25, color=color)


def main() -> None:
  parser = harness.parser(__doc__, "convergence")
  parser.add_argument("--only", choices=STAGES, action="append",
                      help="stage(s) to run (repeatable); default: all, in order")  # fmt: skip
  parser.add_argument("--work", type=pathlib.Path, default=pathlib.Path("runs/convergence"),
                      help="run folders; completed ones are adopted")  # fmt: skip
  parser.add_argument("--steps", type=int, default=STEPS, help="steps of a tiny run")
  parser.add_argument("--small-steps", type=int, default=STEPS, help="steps of a small run")
  parser.add_argument("--reps", type=int, default=20, help="timed rounds per optimizer")
  args = parser.parse_args()
  stages = args.only or STAGES
  store = Store(args.out / "runs", args.work, args.steps, args.small_steps, loop.train)
  run_stages(store, stages, args.out, args.reps)


def run_stages(store: Store, stages, out: pathlib.Path, reps: int) -> None:
  """Runs the queue's ``stages`` in priority order, then (for ``report``) writes the results.

  A stage not asked for only reads what exists, so a later stage can start from
  the best settings of finished earlier ones.
  """
  read_only = store.read_only()
  at = lambda stage: store if stage in stages else read_only
  best = best_lrs(sweep(at("sweep")))
  for runs in zip(*seed_runs(best).values(), strict=True):
    list(map(at("seeds").get, runs))
  if not seeds_finished(read_only, best):
    print("the sweep or the seeds are not finished: no ablations or small runs yet")
  else:
    adam = adam_reference(read_only, best)
    for *_, runs in ablation_runs(best, adam).values():
      list(map(at("ablations").get, runs))
    small = small_sweep(at("small"), best, adam)
    list(map(at("small").get, small_ablations(best, adam, small).values()))
  if "timing" in stages:
    timing = {size: median_step_times(size, reps) for size in ("tiny", "small")}
    out.mkdir(parents=True, exist_ok=True)
    machine = harness.machine()
    (out / "timing.json").write_text(json.dumps({"reps": reps, "machine": machine, **timing}))
  if "report" in stages:
    report(read_only, out)


def report(store: Store, out: pathlib.Path) -> None:
  """Writes ``convergence.{md,png,json}`` from the run JSONs and ``timing.json``."""
  timing_path = out / "timing.json"
  timing = json.loads(timing_path.read_text()) if timing_path.exists() else {}
  summary = collect(store, timing)
  summary["timing"] = timing
  out.mkdir(parents=True, exist_ok=True)
  (out / "convergence.json").write_text(json.dumps(summary, indent=1))
  plot(store, summary, out / "convergence.png")
  harness.save(to_markdown(summary, store), out / "convergence.md")


def to_markdown(summary: dict, store: Store) -> str:
  """The report: protocol, main table, sweeps, ablations, sizes, and the papers' ratios."""
  tiny_tokens = store.steps["tiny"] * BATCH * SEQ_LEN
  parts = [
    f"`python -m train.bench.convergence` — shipped Shakespeare corpus, {store.steps['tiny']} "
    f"steps x {BATCH} x {SEQ_LEN} tokens ({tiny_tokens:,} tokens) on the tiny LLaMA "
    f"({configs.get_config('tiny').num_params / 1e6:.1f}M params), warmup 10% + cosine to 10%, "
    f"gradient clipping {MAX_GRAD_NORM:g} and weight decay 0 for every optimizer (so AdamW = "
    "Adam), data seed = init seed = the run's seed; trained on 2 shared CPU cores. Token "
    "fraction: tokens to reach the final validation loss of the best Adam (same seed), over "
    "Adam's tokens; wall-clock fraction: that times the median step-time ratio to Adam, timed "
    "side by side in one process. 'not run yet': the run has no result in "
    "`train/bench/results/convergence/runs/` yet.\n",
    _main_table(summary),
    _timing_line(summary["timing"]),
    _sweep_table(summary),
    _ablation_table(summary),
    _small_table(summary, store),
    _papers(summary),
  ]
  return "\n".join(parts)


def _main_table(summary: dict) -> str:
  adam = summary["adam"]
  if adam is None:
    return "**Best settings (3 seeds):** not run yet (no Adam run has finished).\n"
  cells = [
    [r["variant"], f"{r['lr']:g}", _spread(r["final_loss"], ".3f"),
     _fractions(r["token_fraction"]), _spread(r["token_fraction"], ".2f"),
     "not run yet" if r["step_time_ratio"] is None else f"{r['step_time_ratio']:.2f}",
     _wall(r), r["status"]]
    for r in summary["main"]
  ]  # fmt: skip
  columns = ["variant", "best lr", "final val loss, mean (min–max)", "token fraction per seed",
             "token fraction, mean (min–max)", "step time x Adam",
             "wall-clock fraction, mean (min–max)", "status"]  # fmt: skip
  final = "" if summary["final"] else (
    " — PROVISIONAL: some grids are still open or seeds are missing, so a 'best lr' below may "
    "still change"
  )  # fmt: skip
  title = f"**Best settings, 3 seeds each** (Adam reference: `{adam}`){final}\n\n"
  return title + harness.markdown_table(columns, cells, "lrrrrrrl")


def _timing_line(timing: dict) -> str:
  """The measured step times behind the wall-clock fractions."""
  if not timing:
    return "Step times: not measured yet (`--only timing`).\n"
  sizes = "; ".join(
    f"{size}: " + ", ".join(f"{name} {1e3 * timing[size][name]:.0f} ms" for name in timing[size])
    for size in ("tiny", "small")
  )
  return (
    f"Median step times, {timing['reps']} interleaved rounds in one process "
    f"({timing['machine']}; other runs may have shared the cores): {sizes}.\n"
  )


def _wall(row: dict) -> str:
  if row["step_time_ratio"] is None and None not in row["final_loss"]:
    return "timing not run yet"
  return _spread(row["wall_fraction"], ".2f")


def _sweep_table(summary: dict) -> str:
  best = summary["best_lr"]
  width = max(len(ls) for ls in summary["sweep"].values())
  cells = []
  for variant, losses in summary["sweep"].items():
    row = [
      f"{lr}: " + ("not run yet" if loss is None else
                   f"**{loss:.3f}**" if best.get(variant) == float(lr) else f"{loss:.3f}")
      for lr, loss in losses.items()
    ]  # fmt: skip
    cells.append([variant, *row, *[""] * (width - len(row))])
  columns = ["variant", *(f"lr {i + 1}" for i in range(width))]
  return (
    "**Learning-rate sweeps** (seed 0, final validation loss; the first and last columns are the "
    "grid's edges, the best in bold — a grid whose best sat at an edge was widened by 2x)\n\n"
    + harness.markdown_table(columns, cells, "l" + "r" * width)
  )


def _ablation_table(summary: dict) -> str:
  if not summary["ablations"]:
    return "**Ablations:** not run yet (they need the best settings of every optimizer).\n"
  cells = []
  for r in summary["ablations"]:
    cells.append([
      f"`{r['variant']}`", r["question"], f"{r['lr']:g}", _spread(r["final_loss"], ".3f"),
      _spread(r["base_losses"], ".3f"), _fractions(r["token_fraction"]), _reading(r),
    ])  # fmt: skip
  columns = ["run", "what changes", "lr", "final val loss (2 seeds)", "its base, same seeds",
             "token fraction per seed", "reading"]  # fmt: skip
  return "**Ablations** (best settings, seeds 0 and 1)\n\n" + harness.markdown_table(
    columns, cells, "lllrrrl"
  )


def _reading(row: dict) -> str:
  """One sentence: the change in final loss against its base, and whether the seeds agree."""
  losses, base = row["final_loss"], row["base_losses"]
  if None in losses or None in base:
    return "not run yet"
  deltas = [a - b for a, b in zip(losses, base, strict=True)]
  per_seed = ", ".join(f"{d:+.3f}" for d in deltas)
  if all(d > 0 for d in deltas):
    return f"worse than `{row['base']}` on both seeds ({per_seed} nats)"
  if all(d < 0 for d in deltas):
    return f"better than `{row['base']}` on both seeds ({per_seed} nats)"
  return f"no consistent difference from `{row['base']}` (per seed: {per_seed} nats)"


def _small_table(summary: dict, store: Store) -> str:
  if not summary["small"]:
    return "**Second size (small):** not run yet.\n"
  tokens = store.steps["small"] * BATCH * SEQ_LEN
  variants = list(dict.fromkeys(r["variant"] for r in summary["small"]))
  rows = sorted(summary["small"], key=lambda r: (variants.index(r["variant"]), r["lr"]))
  cells = [
    [r["variant"], f"{r['lr']:g}", f"{r['tiny_best_lr']:g}", _spread(r["final_loss"], ".3f"),
     _spread(r["token_fraction"], ".2f"), _wall(r)]
    for r in rows
  ]  # fmt: skip
  columns = ["variant", "lr", "best tiny lr", "final val loss", "token fraction",
             "wall-clock fraction"]  # fmt: skip
  params = configs.get_config("small").num_params
  optimizers = [v for v in variants if v in summary["best_lr"]]
  ablations = [v for v in variants if v not in summary["best_lr"]]
  return (
    f"**Second size:** small LLaMA ({params / 1e6:.1f}M params, vocab 4096), seed 0, "
    f"{store.steps['small']} steps ({tokens:,} tokens), each optimizer at its best tiny lr and "
    "its 2x neighbours (widened 2x while the best sat at an edge), and two ablations of the "
    "tiny model (Adam with the embeddings at SinkGD's lr, SWAN by Polar Express at its best "
    "small lr); the token fraction is against the best of the Adam runs.\n\n"
    + harness.markdown_table(columns, cells, "lrrrrr")
    + "".join(_size_reading(summary, variant) for variant in optimizers)
    + "".join(_small_ablation_reading(summary, ablation) for ablation in ablations)
    + "\n"
  )  # fmt: skip


def _size_reading(summary: dict, variant: str) -> str:
  """One line: does ``variant``'s best tiny lr transfer, and does its token fraction near 1?"""
  rows = sorted((r for r in summary["small"] if r["variant"] == variant), key=lambda r: r["lr"])
  if any(None in r["final_loss"] for r in rows):
    return f"\n* {variant}: not run yet."
  best = min(rows, key=lambda r: r["final_loss"][0])
  tiny_lr = best["tiny_best_lr"]
  if best["lr"] == tiny_lr:
    transfer = f"the best tiny lr {tiny_lr:g} is also the best of {len(rows)} on small"
  else:
    edge = " (an edge of the lrs tried)" if best in (rows[0], rows[-1]) else ""
    transfer = f"{best['lr']:g}{edge} beats the best tiny lr {tiny_lr:g} on small"
  tiny = next((r["token_fraction_mean"] for r in summary["main"] if r["variant"] == variant), None)
  small = best["token_fraction"][0]
  if variant == summary["adam"]:
    return f"\n* {variant}: {transfer}."
  if tiny is None or not isinstance(small, float):
    return f"\n* {variant}: {transfer}; token fraction tiny {tiny}, small {small}."
  change = abs(1 - small) - abs(1 - tiny)
  direction = "unchanged" if abs(change) < 0.005 else "toward 1" if change < 0 else "away from 1"
  return (
    f"\n* {variant}: {transfer}; token fraction at the best lr {tiny:.2f} (tiny) -> "
    f"{small:.2f} (small), {direction}."
  )


def _small_ablation_reading(summary: dict, ablation: str) -> str:
  """One line: does the ablation keep its tiny effect (against its base at the same lr)?"""
  row = next(r for r in summary["small"] if r["variant"] == ablation)
  base = next(r for r in summary["small"] if r["variant"] == row["base"] and r["lr"] == row["lr"])
  tiny = next((r for r in summary["ablations"] if r["variant"] == ablation), None)
  loss, base_loss = row["final_loss"][0], base["final_loss"][0]
  if loss is None or base_loss is None:
    return f"\n* {ablation}: not run yet."
  on_tiny = f" (on tiny: {_fractions(tiny['token_fraction'])})" if tiny else ""
  return (
    f"\n* {ablation}: {loss:.3f}, {loss - base_loss:+.3f} nats against `{row['base']}` at the "
    f"same lr; token fraction {_fractions(row['token_fraction'])}{on_tiny}."
  )


def _papers(summary: dict) -> str:
  """The plain sentence on the papers' token fractions (SWAN 0.5, SinkGD 0.4)."""
  rows = {r["variant"]: r for r in summary["main"]}
  said = []
  for variant, paper in PAPERS.items():
    values = rows[variant]["token_fraction"] if variant in rows else []
    done = [f for f in values if isinstance(f, float)]
    if NOT_REACHED in values:
      said.append(f"{variant} does not reach Adam's loss on every seed (paper: {paper:g})")
    elif not done:
      said.append(f"{variant}: not measured yet (paper: {paper:g})")
    else:
      side = (
        "consistent with (inside the seeds' range)"
        if min(done) <= paper <= max(done)
        else "a larger saving than"
        if np.mean(done) < paper
        else "a smaller saving than"
      )
      said.append(f"{variant} needs {np.mean(done):.2f} of Adam's tokens, {side} the paper's "
                  f"{paper:g}")  # fmt: skip
      if len(done) < len(values) or not summary["final"]:
        said[-1] += f" (PROVISIONAL: {len(done)} of {len(values)} seeds, grids not all closed)"
  return (
    "**Against the papers** (against an Adam with one lr for every parameter; the ablations "
    "qualify this): " + "; ".join(said) + ".\n"
  )


if __name__ == "__main__":
  main()
