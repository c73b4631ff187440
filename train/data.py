"""Text corpora -> packed token windows: reading, train/validation split, tokenizer, batches.

The raw text is cut into paragraph-aligned blocks of a few KB and a fixed-seed
permutation holds out ``val_fraction`` of them (``train/text.py``), so no
validation text is ever trained on and the split is the same for every
training seed. Without a tokenizer file, a byte-level BPE is trained on the
training split only and cached as ``tokenizer-<hash>.json`` beside the data (or
in ``~/.cache/swan-optax`` where that is read-only). The two splits' token
streams are cached there too, as ``tokens-<hash>.npz`` keyed by the tokenizer
and the text, so a resumed or repeated run reads them instead of encoding
again. Each split's token stream is cut into non-overlapping windows of
``seq_len + 1`` tokens: the inputs are ``window[:-1]``, the targets
``window[1:]``.
"""

import dataclasses
import hashlib
import itertools
import os
import pathlib

import grain
import numpy as np

from train import text
from train import tokenizer as tokenizer_lib
from train.flags import ConfigError
from train.text import Piece
from train.tokenizer import EOS
from train.tokenizer import Tokenizer
from train.tokenizer import load_tokenizer

DEFAULT_CORPUS = pathlib.Path(__file__).resolve().parent / "data" / "shakespeare.txt.gz"
DEFAULT_VOCAB_SIZE = 4096  # of the BPE of a DataConfig used alone, without a model
# The windows are in memory: prefetch threads would only contend for the GIL.
_IN_MEMORY = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the text comes from and how it becomes tokens.

  Attributes:
    data: comma-separated local text files or globs (``.gz`` files are
      decompressed; each file is one document), or ``hf:NAME[:CONFIG]`` for a
      Hugging Face dataset with a ``text`` field.
    tokenizer: a ``tokenizers`` ``tokenizer.json`` or a sentencepiece
      ``.model``; ``None`` trains a byte-level BPE on the training split.
    vocab_size: size of that BPE (unused with ``tokenizer``); ``None``: the model's
      (``TrainConfig`` sets it; ``DEFAULT_VOCAB_SIZE`` for a ``DataConfig`` used alone).
    seq_len: tokens per sequence; each split must hold one window of ``seq_len + 1``.
    val_fraction: share of the text held out for validation (unused for a
      ``hf:`` dataset that has a validation split).
    max_documents: documents read from a ``hf:`` dataset's train split; a
      twentieth as many are read from its validation split.
  """

  data: str = str(DEFAULT_CORPUS)
  tokenizer: str | None = None
  vocab_size: int | None = None
  seq_len: int = 256
  val_fraction: float = 0.05
  max_documents: int = 20_000

  def __post_init__(self):
    if self.seq_len < 1:
      raise ConfigError(self, "seq_len", f"must be >= 1, got {self.seq_len}")
    if not 0 < self.val_fraction < 1:
      raise ConfigError(self, "val_fraction", f"must be in (0, 1), got {self.val_fraction}")
    if self.tokenizer is None and self.vocab_size is not None and self.vocab_size <= 256:
      raise ConfigError(
        self,
        "vocab_size",
        f"must be at least 257 for a byte-level BPE (256 bytes + {EOS}), got "
        f"{self.vocab_size}; or give a tokenizer file",
      )


@dataclasses.dataclass(frozen=True, eq=False)
class Corpus:
  """A tokenizer and the int32 token streams of the two splits, documents separated by EOS."""

  tokenizer: Tokenizer
  train_tokens: np.ndarray
  val_tokens: np.ndarray

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.vocab_size


def load_corpus(config: DataConfig) -> Corpus:
  """Reads, splits and tokenizes ``config.data``; see the module docstring."""
  train, val, data_dir = text.read_split(config.data, config.val_fraction, config.max_documents)
  cache = tokenizer_lib.cache_dir(data_dir)
  if config.tokenizer is None:
    blocks = [block for piece in train for block in piece]
    vocab_size = config.vocab_size or DEFAULT_VOCAB_SIZE
    tokenizer = tokenizer_lib.bpe_tokenizer(blocks, vocab_size, cache)
  else:
    tokenizer = load_tokenizer(config.tokenizer)
  corpus = Corpus(tokenizer, *_encoded_splits(tokenizer, train, val, cache))
  # Fail now, rather than at the first batch, if a split cannot hold a single window.
  _windows(corpus.train_tokens, config.seq_len, 1, "training")
  _windows(corpus.val_tokens, config.seq_len, 1, "validation")
  return corpus


def epoch_tokens(corpus: Corpus, seq_len: int) -> int:
  """The target tokens of one pass over the training split: ``seq_len`` per window."""
  return len(corpus.train_tokens) // (seq_len + 1) * seq_len


def train_batches(
  corpus: Corpus,
  *,
  batch_size: int,
  seq_len: int,
  seed: int,
  process_index: int = 0,
  process_count: int = 1,
) -> grain.DatasetIterator:
  """Endless shuffled training batches; this process's rows of each global batch.

  Every epoch visits each window once, in a permutation drawn from ``seed +
  epoch``. The global batch of ``batch_size`` windows is the same on every
  process, which takes its contiguous block of ``batch_size // process_count``
  rows. The iterator's ``get_state()`` is a JSON-serializable dict;
  ``set_state`` on a fresh iterator resumes right after the saved position.

  Returns:
    An iterator of ``{"inputs", "targets"}``, each ``int32[local_rows, seq_len]``.
  """
  rows = _local_rows(batch_size, process_index, process_count)
  windows = _windows(corpus.train_tokens, seq_len, batch_size, "training")
  if not 0 <= seed < 2**32:
    raise ValueError(f"--seed must be in [0, 2**32) to shuffle the data, got {seed}")
  dataset = (
    grain.MapDataset.source(windows)
    .shuffle(seed=seed)
    .repeat()
    .batch(batch_size)
    .map(lambda batch: _inputs_targets(batch[rows]))
  )
  return iter(dataset.to_iter_dataset(_IN_MEMORY))


def eval_batches(
  corpus: Corpus,
  *,
  batch_size: int,
  seq_len: int,
  max_batches: int,
  process_index: int = 0,
  process_count: int = 1,
) -> list[dict[str, np.ndarray]]:
  """The first ``max_batches`` (or all there are) batches of validation windows, in order.

  Rows are split between processes as in ``train_batches``.
  """
  rows = _local_rows(batch_size, process_index, process_count)
  windows = _windows(corpus.val_tokens, seq_len, batch_size, "validation")
  count = min(max_batches, len(windows) // batch_size)
  batches = windows[: count * batch_size].reshape(count, batch_size, seq_len + 1)
  return [_inputs_targets(batch[rows]) for batch in batches]


def _encoded_splits(
  tokenizer: Tokenizer, train: list[Piece], val: list[Piece], cache: pathlib.Path
) -> tuple[np.ndarray, np.ndarray]:
  """Both splits' token streams, encoded once and then read from ``cache``."""
  key = hashlib.blake2b(tokenizer.fingerprint.encode(), digest_size=8)
  for split in (train, val):
    for piece in split:
      for block in piece:
        key.update(block.encode() + b"\0")
      key.update(b"\1")  # the end of a piece: an EOS goes there
    key.update(b"\2")
  path = cache / f"tokens-{key.hexdigest()}.npz"
  if path.exists():
    with np.load(path) as tokens:
      return tokens["train"], tokens["val"]
  encoded = _encode(tokenizer, train), _encode(tokenizer, val)
  # Written under a temporary name, then renamed: a concurrent reader never sees half a file.
  temporary = path.with_suffix(f".{os.getpid()}.tmp")
  with temporary.open("wb") as file:
    np.savez(file, train=encoded[0], val=encoded[1])
  os.replace(temporary, path)
  return encoded


def _encode(tokenizer: Tokenizer, pieces: list[Piece]) -> np.ndarray:
  """One int32 token stream: the pieces in order, each followed by EOS."""
  encoded = iter(tokenizer.encode_batch([block for piece in pieces for block in piece]))
  eos = [] if tokenizer.eos_id is None else [tokenizer.eos_id]
  tokens = []
  for piece in pieces:
    for ids in itertools.islice(encoded, len(piece)):
      tokens.extend(ids)
    tokens.extend(eos)
  return np.asarray(tokens, np.int32)


def _windows(tokens: np.ndarray, seq_len: int, batch_size: int, split: str) -> np.ndarray:
  """``tokens`` as non-overlapping windows, ``int32[n, seq_len + 1]``; at least one batch."""
  count = len(tokens) // (seq_len + 1)
  if count < batch_size:
    raise ValueError(
      f"the {split} split has {count} windows of --seq-len {seq_len} + 1 tokens "
      f"({len(tokens)} tokens), fewer than one batch of {batch_size}: lower --seq-len or "
      "--batch-size, or use more --data"
    )
  return tokens[: count * (seq_len + 1)].reshape(count, seq_len + 1)


def _local_rows(batch_size: int, process_index: int, process_count: int) -> slice:
  if batch_size % process_count:
    raise ValueError(
      f"--batch-size {batch_size} must be divisible by the number of processes, {process_count}"
    )
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
  rows = batch_size // process_count
  return slice(process_index * rows, (process_index + 1) * rows)


def _inputs_targets(windows: np.ndarray) -> dict[str, np.ndarray]:
  return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}
