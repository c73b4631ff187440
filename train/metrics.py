"""Run outputs: metrics appended to a JSONL file and a loss-curve PNG."""

import json
import pathlib
from collections.abc import Iterable

from matplotlib.figure import Figure


class MetricsWriter:
  """Appends one JSON object per line to ``path``; each record is flushed at once.

  With ``tensorboard_dir``, the numbers of every record that has a ``step`` are
  also written there as TensorBoard scalars named ``KIND/FIELD``.
  """

  def __init__(self, path: pathlib.Path, tensorboard_dir: pathlib.Path | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    self.path = path
    self._file = path.open("a")
    self._tensorboard = None
    if tensorboard_dir is not None:
      try:
        import tensorboardX  # optional: only with --tensorboard
      except ImportError:
        raise ImportError(
          "--tensorboard needs tensorboardX: pip install 'swan-optax[tensorboard]'"
        ) from None
      self._tensorboard = tensorboardX.SummaryWriter(str(tensorboard_dir))

  def write(self, record: dict) -> None:
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tensorboard is not None and "step" in record:
      for key, value in record.items():
        if key not in ("kind", "step") and isinstance(value, int | float):
          self._tensorboard.add_scalar(f"{record['kind']}/{key}", value, record["step"])
      self._tensorboard.flush()

  def close(self) -> None:
    self._file.close()
    if self._tensorboard is not None:
      self._tensorboard.close()


def read_jsonl(path: pathlib.Path) -> list[dict]:
  """The records of ``path``; a cut-off last line (a process killed mid-write) is ignored."""
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  records = [json.loads(line) for line in lines[:-1]]
  try:
    records += [json.loads(lines[-1])] if lines else []
  except json.JSONDecodeError:
    pass  # only the last line can be partial: every record is flushed whole
  return records


def drop_records_after(path: pathlib.Path, step: int) -> None:
  """Removes step records past ``step`` (written after the checkpoint a run resumes from)."""
  if path.exists():
    kept = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def plot_losses(records: Iterable[dict], path: pathlib.Path, title: str) -> None:
  """Training loss and validation loss/perplexity against tokens seen."""
  records = list(records)
  train = [(r["tokens"], r["loss"]) for r in records if r.get("kind") == "train"]
  val = [(r["tokens"], r["val_loss"], r["val_ppl"]) for r in records if r.get("kind") == "eval"]
  fig = Figure(figsize=(11, 4))  # drawn off screen: no pyplot, no backend to choose
  ax_loss, ax_ppl = fig.subplots(1, 2)
  if train:
    ax_loss.plot(*zip(*train, strict=True), label="train", alpha=0.6)
  if val:
    tokens, val_loss, val_ppl = zip(*val, strict=True)
    ax_loss.plot(tokens, val_loss, "o-", label="validation")
    ax_ppl.plot(tokens, val_ppl, "o-", color="C1")
  ax_loss.set(xlabel="tokens", ylabel="loss (nats/token)", title=title)
  ax_loss.legend()
  ax_ppl.set(xlabel="tokens", ylabel="validation perplexity", yscale="log", title="perplexity")
  for ax in (ax_loss, ax_ppl):
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
