"""Reading text: local files or a Hugging Face dataset, cut into blocks and split.

The raw text is cut into paragraph-aligned blocks of a few KB and a fixed-seed
permutation holds out a fraction of them for validation (unless the dataset
has a validation split), so no validation text is ever trained on and the split
is the same for every training seed.
"""

import glob
import gzip
import itertools
import os
import pathlib
from collections.abc import Iterable

import numpy as np

from train.tokenizer import import_optional

_BLOCK_CHARS = 4096
# Fixed, so the validation split never moves with --seed.
_SPLIT_SEED = 0x5EED

Piece = list[str]  # consecutive blocks of one document, all on the same side of the split


def read_split(
  data: str, val_fraction: float, max_documents: int
) -> tuple[list[Piece], list[Piece], pathlib.Path | None]:
  """(train pieces, validation pieces, directory of the data if local); see ``DataConfig``."""
  if data.startswith("hf:"):
    documents, held_out = _read_hf(data.removeprefix("hf:"), max_documents)
    data_dir = None
  else:
    files = _match_files(data)
    documents, held_out, data_dir = [_read_text(f) for f in files], None, files[0].parent
  if not any(document.strip() for document in documents):
    raise ValueError(f"--data {data}: the corpus is empty, there is no text to train on")
  if held_out is None:
    return *_hold_out(documents, val_fraction, data), data_dir
  return _whole(documents), _whole(held_out), data_dir


def _match_files(data: str) -> list[pathlib.Path]:
  files = []
  for pattern in filter(None, (p.strip() for p in data.split(","))):
    path = os.path.expanduser(pattern)
    matches = [path] if os.path.isfile(path) else sorted(glob.glob(path, recursive=True))
    matches = [pathlib.Path(m).resolve() for m in matches if os.path.isfile(m)]
    if not matches:
      raise FileNotFoundError(
        f"--data: no file matches {pattern!r}; give text files or globs (.txt, .txt.gz) "
        "or hf:NAME[:CONFIG]"
      )
    files.extend(matches)
  if not files:
    raise ValueError("--data is empty: give text files or globs, or hf:NAME[:CONFIG]")
  return list(dict.fromkeys(files))  # a file listed twice would land in both splits


def _read_text(file: pathlib.Path) -> str:
  raw = file.read_bytes()
  if file.suffix == ".gz":
    try:
      raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
      raise ValueError(f"--data file {file} is not a valid gzip file ({e}): recompress it") from e
  try:
    return raw.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    raise ValueError(
      f"--data file {file} is not UTF-8 text ({e.reason} at byte {e.start}): convert it to "
      "UTF-8, e.g. with `iconv -f latin1 -t utf-8`"
    ) from None


def _read_hf(spec: str, max_documents: int) -> tuple[list[str], list[str] | None]:
  """Texts of the train split, and of the validation split if the dataset has one."""
  name, _, config_name = spec.partition(":")
  if not name:
    raise ValueError(f"--data hf:{spec}: expected hf:NAME[:CONFIG], e.g. hf:roneneldan/TinyStories")
  datasets = import_optional("datasets", f"--data hf:{spec}", "hf")
  splits = datasets.load_dataset(name, config_name or None, streaming=True)
  if "train" not in splits:
    raise ValueError(f"--data hf:{spec} has no train split (it has {sorted(splits)})")
  held_out = None
  if "validation" in splits:
    held_out = _hf_texts(splits["validation"], max(1, max_documents // 20), spec)
  return _hf_texts(splits["train"], max_documents, spec), held_out


def _hf_texts(rows: Iterable[dict], count: int, spec: str) -> list[str]:
  try:
    return [row["text"] for row in itertools.islice(rows, count)]
  except KeyError:
    raise ValueError(f"--data hf:{spec}: the rows have no 'text' field") from None


def _blocks(text: str) -> list[str]:
  """Cuts ``text`` after a paragraph break (else a line break, else a space) every few KB."""
  blocks, start = [], 0
  while len(text) - start > 2 * _BLOCK_CHARS:
    end = start + _BLOCK_CHARS  # a hard cut if no break is near
    for separator in ("\n\n", "\n", " "):
      found = text.find(separator, end, end + _BLOCK_CHARS)
      if found >= 0:
        end = found + len(separator)
        break
    blocks.append(text[start:end])
    start = end
  if start < len(text):
    blocks.append(text[start:])
  return blocks


def _whole(documents: list[str]) -> list[Piece]:
  return [_blocks(document) for document in documents if document]


def _hold_out(
  documents: list[str], val_fraction: float, data: str
) -> tuple[list[Piece], list[Piece]]:
  """Holds out a fixed random ``val_fraction`` of the blocks: (train pieces, validation pieces)."""
  per_document = [_blocks(document) for document in documents]
  blocks = [block for document in per_document for block in document]
  doc_ids = [i for i, document in enumerate(per_document) for _ in document]
  n = len(blocks)
  if n < 2:
    raise ValueError(
      f"--data {data}: {len(blocks[0])} characters are too few to hold out a validation split; "
      f"use more than {2 * _BLOCK_CHARS} characters of text"
    )
  held_out = np.zeros(n, bool)
  val_count = min(n - 1, max(1, round(val_fraction * n)))
  held_out[np.random.default_rng(_SPLIT_SEED).permutation(n)[:val_count]] = True
  train, val = [], []
  runs = itertools.groupby(range(n), key=lambda i: (doc_ids[i], held_out[i]))
  for (_, is_val), run in runs:
    (val if is_val else train).append([blocks[i] for i in run])
  return train, val
