"""The training loop: data, resume, steps, logging, evaluation, checkpoints and the summary."""

import contextlib
import dataclasses
import json
import math
import pathlib
import signal
import time
import zlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from train import build as build_lib
from train import checkpoint
from train import data
from train import mesh as mesh_lib
from train import metrics
from train import peers
from train import step as step_lib
from train.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class Hooks:
  """Fault-injection points of the loop (the fault drill's); the defaults change nothing.

  Attributes:
    batch: ``(step, local_batch) -> local_batch``, applied to the batch of
      step ``step`` (1-based) before it is fingerprinted and trained on.
    before_commit: called with the step of a checkpoint whose arrays are
      written, just before Orbax commits it.
  """

  batch: Callable[[int, dict], dict] = lambda step, batch: batch
  before_commit: Callable[[int], None] | None = None


NO_HOOKS = Hooks()


class _StopRequested(contextlib.AbstractContextManager):
  """While active, SIGTERM/SIGINT set a flag: the loop saves a checkpoint and exits cleanly
  (every process of a multi-process run, at the same step: ``peers.processes_stopping``)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __enter__(self):
    self.requested = False
    self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
    return self

  def __exit__(self, *exc_info):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _handle(self, signum, frame):
    del frame
    self.requested = True
    print(f"\nreceived {signal.Signals(signum).name}: saving a checkpoint and stopping", flush=True)


def train(config: TrainConfig, hooks: Hooks = NO_HOOKS) -> dict[str, Any]:
  """Trains as ``config`` says on every device of every process; returns the final metrics."""
  mesh = mesh_lib.make_mesh(config.mesh)
  build_lib.check_batch(config, mesh)  # before the corpus is read and tokenized
  corpus = data.load_corpus(config.data)
  if corpus.vocab_size > config.model_config.vocab_size:
    raise ValueError(
      f"the tokenizer has {corpus.vocab_size} tokens but --config {config.model} has vocab_size "
      f"{config.model_config.vocab_size}: use a smaller tokenizer"
    )
  exp = build_lib.build(config, mesh)
  rows = {"process_index": jax.process_index(), "process_count": jax.process_count()}
  shape = {"batch_size": config.batch_size, "seq_len": config.data.seq_len}
  batches = data.train_batches(corpus, **shape, seed=config.seed, **rows)
  val_batches = data.eval_batches(corpus, **shape, max_batches=config.eval_batches, **rows)
  out = config.run_dir
  out.mkdir(parents=True, exist_ok=True)
  ckpt = checkpoint.manager(out / "checkpoints", config.keep_checkpoints, hooks.before_commit)
  state = _resume(config, ckpt, exp.state, batches) if config.resume else exp.state
  epoch = data.epoch_tokens(corpus, config.data.seq_len)
  writer = _open_metrics(config, exp, state, epoch) if jax.process_index() == 0 else None
  progress = tqdm(
    range(int(state.step), config.steps),
    initial=int(state.step),
    total=config.steps,
    disable=writer is None,
  )
  last_eval: dict = {}
  window_start, window_steps = time.perf_counter(), 0
  with _StopRequested() as stop:
    for done in (step + 1 for step in progress):
      local_batch = hooks.batch(done, next(batches))
      state, step_metrics = exp.train_step(state, exp.place_batch(local_batch))
      window_steps += 1
      if not bool(step_metrics["finite"]):
        _on_nonfinite(config, done, int(state.skipped), progress)
      if done % config.log_every == 0 or done == config.steps:
        elapsed = time.perf_counter() - window_start
        record = {
          "kind": "train",
          "step": done,
          "tokens": done * config.tokens_per_step,
          "loss": float(step_metrics["loss"]),
          "grad_norm": float(step_metrics["grad_norm"]),
          "step_time_s": elapsed / window_steps,
          "tokens_per_s": window_steps * config.tokens_per_step / elapsed,
          "skipped": int(state.skipped),
          "batch_crc32": global_batch_crc32(local_batch["inputs"]),
        }
        window_start, window_steps = time.perf_counter(), 0
        progress.set_postfix(
          loss=f"{record['loss']:.3f}", **{k: f"{v:.2f}" for k, v in last_eval.items()}
        )
        if writer:
          writer.write(record)
      if done % config.eval_every == 0 or done == config.steps:
        last_eval = evaluate(exp, state.params, val_batches)
        progress.write(
          f"step {done}: val loss {last_eval['val_loss']:.4f}, val ppl {last_eval['val_ppl']:.2f}"
        )
        if writer:
          tokens = done * config.tokens_per_step
          writer.write({"kind": "eval", "step": done, "tokens": tokens, **last_eval})
      stopping = peers.processes_stopping(stop.requested)
      if stopping and jax.process_count() > 1:
        asked = ", ".join(map(str, stopping))
        progress.write(f"stop requested on process {asked}: every process saves step {done}")
      if done % config.checkpoint_every == 0 or done == config.steps or stopping:
        _save(config, ckpt, done, state, batches.get_state(), progress, stopping=bool(stopping))
      if stopping:
        break
  ckpt.close()
  if writer:
    _finish(config, writer, state, last_eval)
  return {"step": int(state.step), **last_eval}


def global_batch_crc32(local_inputs: np.ndarray) -> int:
  """CRC32 of the global batch's per-row CRC32s, in global row order.

  Each process holds a contiguous block of rows, in process order, so the
  gathered row CRCs are the same for any number of processes: an elastic
  resume (1 x 8 devices -> 2 x 4) is checkable from ``metrics.jsonl`` alone.
  Every process must call it at the same steps (it all-gathers).
  """
  rows = np.ascontiguousarray(local_inputs)
  row_crcs = np.array([zlib.crc32(row.tobytes()) for row in rows], np.uint32)
  if jax.process_count() > 1:
    row_crcs = np.asarray(multihost_utils.process_allgather(row_crcs)).reshape(-1)
  return zlib.crc32(row_crcs.tobytes())


def _save(config: TrainConfig, ckpt, done: int, state, data_state: dict, progress, stopping: bool):
  """Saves checkpoint ``done``. If the disk refuses it (full, failing, read-only), the previous
  checkpoint is intact: a periodic save warns and is retried at the next interval; the run's
  last one (at its end, or ``stopping``) raises ``checkpoint.SaveError``."""
  try:
    checkpoint.save(ckpt, done, state, data_state)
  except OSError as e:
    latest = checkpoint.describe_latest(config.run_dir.absolute() / "checkpoints")
    if stopping or done == config.steps:
      raise checkpoint.SaveError(
        f"checkpoint {done} could not be saved ({e}). {latest}: free space or fix the folder's "
        "permissions, then relaunch with --resume"
      ) from e
    progress.write(
      f"warning: checkpoint {done} could not be saved ({e}); training goes on and saves again "
      f"at step {done + config.checkpoint_every}. {latest}."
    )


def evaluate(exp: build_lib.Experiment, params: Any, batches: list[dict]) -> dict[str, float]:
  """Mean token loss and perplexity (exp of the mean) over the validation batches."""
  total, count = 0.0, 0.0
  for batch in batches:
    loss_sum, n = exp.eval_step(params, exp.place_batch(batch))
    total, count = total + float(loss_sum), count + float(n)
  mean = total / count
  return {"val_loss": mean, "val_ppl": math.exp(mean)}


def _on_nonfinite(config: TrainConfig, done: int, skipped: int, progress: tqdm) -> None:
  """Reports a skipped update, or raises under ``--on-nonfinite stop``."""
  message = f"non-finite loss or gradient at step {done}"
  if config.on_nonfinite == "stop":
    raise FloatingPointError(
      f"{message}; stopping (--on-nonfinite stop). The last good checkpoint is in "
      f"{config.run_dir / 'checkpoints'}."
    )
  progress.write(f"{message}: update skipped ({skipped} so far)")


def _resume(config: TrainConfig, ckpt, state: Any, batches) -> Any:
  """The state of the latest readable checkpoint (the data iterator moved to it), else ``state``;
  the records a killed run logged past it are dropped, all of them when there is none."""
  restored = checkpoint.restore_latest(ckpt, checkpoint.abstract_like(state))
  if restored is None:
    start = 0
    print(f"--resume: no checkpoint in {config.run_dir / 'checkpoints'} yet, starting from step 0")
  else:
    start, state, data_state = restored
    batches.set_state(data_state)
    print(f"resumed from step {start}")
  if jax.process_index() == 0:
    metrics.drop_records_after(config.run_dir / "metrics.jsonl", start)
  return state


def _open_metrics(
  config: TrainConfig, exp: build_lib.Experiment, state, epoch_tokens: int
) -> metrics.MetricsWriter:
  """The metrics writer, after writing and printing the run's header (``epoch_tokens``: of
  one pass over the training split)."""
  out = config.run_dir
  writer = metrics.MetricsWriter(
    out / "metrics.jsonl", out / "tensorboard" if config.tensorboard else None
  )
  header = {
    "kind": "run",
    "config": json.loads(json.dumps(dataclasses.asdict(config), default=str)),
    "rates": config.optimizer.peak_rates,
    "params": sum(x.size for x in jax.tree.leaves(state.params)),
    "param_bytes": step_lib.state_bytes(state.params),
    "optimizer_state_bytes": step_lib.state_bytes(state.opt_state),
    "mesh": dict(exp.mesh.shape),
    "devices": jax.device_count(),
    "processes": jax.process_count(),
    "epoch_tokens": epoch_tokens,
  }
  writer.write(header)
  print(
    f"{config.model} LLaMA, {header['params']:,} params, optimizer {config.optimizer.name}: "
    f"state {header['optimizer_state_bytes'] / 2**20:.1f} MiB (params "
    f"{header['param_bytes'] / 2**20:.1f} MiB), mesh {header['mesh']}, "
    f"{config.tokens_per_step:,} tokens/step, "
    f"{config.steps * config.tokens_per_step / epoch_tokens:.3g} passes over the training split "
    f"({epoch_tokens:,} tokens)"
  )
  return writer


def completed(run_dir: pathlib.Path) -> bool:
  """Whether the run in ``run_dir`` reached its last step (its ``summary.json`` says so)."""
  summary = run_dir / "summary.json"
  return summary.exists() and json.loads(summary.read_text())["completed"]


def _finish(config: TrainConfig, writer: metrics.MetricsWriter, state, last_eval: dict) -> None:
  """Closes the metrics, plots the losses and writes ``summary.json``."""
  writer.close()
  out = config.run_dir
  records = metrics.read_jsonl(out / "metrics.jsonl")
  metrics.plot_losses(records, out / "loss.png", f"{config.model} LLaMA, {config.optimizer.name}")
  summary = {
    "step": int(state.step),
    "completed": int(state.step) == config.steps,
    "skipped": int(state.skipped),
    **last_eval,
  }
  (out / "summary.json").write_text(json.dumps(summary, indent=2))
  print(f"done: {summary}; metrics, loss.png and checkpoints in {out}")
