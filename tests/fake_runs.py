"""Completed run folders written as ``loop.train`` writes them, without training."""

import json
import math

from train.bench.convergence.store import to_json


def write_run_folder(config, final_loss: float) -> None:
  """A run of ``config`` whose validation loss falls linearly to ``final_loss`` at its last step."""
  out = config.run_dir
  out.mkdir(parents=True)
  header = {"kind": "run", "config": json.loads(to_json(config)), "params": 7}
  records = [header]
  for step in range(config.eval_every, config.steps + 1, config.eval_every):
    tokens = step * config.tokens_per_step
    records.append({"kind": "train", "step": step, "tokens": tokens, "step_time_s": 0.5})
    loss = final_loss + (config.steps - step) / config.steps
    records.append(
      {"kind": "eval", "step": step, "tokens": tokens, "val_loss": loss, "val_ppl": math.exp(loss)}
    )
  (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  (out / "summary.json").write_text(json.dumps({"completed": True}))
