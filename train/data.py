"""Text corpora -> packed token windows: reading, train/validation split, tokenizer, batches.

The raw text is cut into paragraph-aligned blocks of a few KB and a fixed-seed
permutation holds out ``val_fraction`` of them, so no validation text is ever
trained on and the split is the same for every training seed. Without a
tokenizer file, a byte-level BPE is trained on the training split only and
cached as ``tokenizer-<hash>.json`` beside the data. Each split's token stream
is cut into non-overlapping windows of ``seq_len + 1`` tokens: the inputs are
``window[:-1]``, the targets ``window[1:]``.
"""

import dataclasses
import glob
import gzip
import hashlib
import importlib
import itertools
import logging
import os
import pathlib
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Sequence
from types import ModuleType

import grain
import numpy as np
import tokenizers
from tokenizers import decoders
from tokenizers import models
from tokenizers import pre_tokenizers
from tokenizers import trainers

log = logging.getLogger(__name__)

DEFAULT_CORPUS = pathlib.Path(__file__).resolve().parent / "data" / "shakespeare.txt.gz"
EOS = "<|endoftext|>"
# Document separators of common tokenizers, looked up in a user's tokenizer.json.
_EOS_NAMES = (EOS, "</s>", "<eos>", "<|end_of_text|>")
_BLOCK_CHARS = 4096
# Fixed, so the validation split never moves with --seed.
_SPLIT_SEED = 0x5EED
_USER_CACHE = pathlib.Path("~/.cache/swan-optax")
# The windows are in memory: prefetch threads would only contend for the GIL.
_IN_MEMORY = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)

Piece = list[str]  # consecutive blocks of one document, all on the same side of the split


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Where the text comes from and how it becomes tokens.

  Attributes:
    data: comma-separated local text files or globs (``.gz`` files are
      decompressed; each file is one document), or ``hf:NAME[:CONFIG]`` for a
      Hugging Face dataset with a ``text`` field.
    tokenizer: a ``tokenizers`` ``tokenizer.json`` or a sentencepiece
      ``.model``; ``None`` trains a byte-level BPE on the training split.
    vocab_size: size of that BPE (unused with ``tokenizer``).
    seq_len: tokens per sequence; each split must hold one window of ``seq_len + 1``.
    val_fraction: share of the text held out for validation (unused for a
      ``hf:`` dataset that has a validation split).
    max_documents: documents read from a ``hf:`` dataset's train split; a
      twentieth as many are read from its validation split.
  """

  data: str = str(DEFAULT_CORPUS)
  tokenizer: str | None = None
  vocab_size: int = 4096
  seq_len: int = 256
  val_fraction: float = 0.05
  max_documents: int = 20_000

  def __post_init__(self):
    if not 0 < self.val_fraction < 1:
      raise ValueError(f"DataConfig.val_fraction must be in (0, 1), got {self.val_fraction}")
    if self.tokenizer is None and self.vocab_size <= 256:
      raise ValueError(
        f"vocab_size {self.vocab_size} is too small for a byte-level BPE (256 bytes + {EOS}): "
        "use at least 257, or pass --tokenizer"
      )


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  """One interface over a ``tokenizers`` tokenizer and a sentencepiece model.

  Attributes:
    encode_batch: texts -> token ids of each, without special tokens added.
    vocab_size: number of token ids.
    eos_id: the document separator; ``None`` if the tokenizer has none (then
      documents are simply concatenated).
  """

  encode_batch: Callable[[Sequence[str]], list[list[int]]]
  vocab_size: int
  eos_id: int | None

  def encode(self, text: str) -> list[int]:
    return self.encode_batch([text])[0]


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
  train, val, data_dir = _read_split(config)
  if config.tokenizer is None:
    tokenizer = _bpe_tokenizer(train, config.vocab_size, _cache_dir(data_dir))
  else:
    tokenizer = load_tokenizer(config.tokenizer)
  corpus = Corpus(tokenizer, _encode(tokenizer, train), _encode(tokenizer, val))
  # Fail now, rather than at the first batch, if a split cannot hold a single window.
  _windows(corpus.train_tokens, config.seq_len, 1, "training")
  _windows(corpus.val_tokens, config.seq_len, 1, "validation")
  return corpus


def load_tokenizer(path: str) -> Tokenizer:
  """A ``tokenizers`` ``tokenizer.json`` or a sentencepiece ``.model`` (needs ``sentencepiece``)."""
  file = pathlib.Path(path).expanduser()
  if file.suffix not in (".json", ".model"):
    raise ValueError(
      f"--tokenizer {path}: expected a `tokenizers` tokenizer.json or a sentencepiece .model file"
    )
  if not file.is_file():
    raise FileNotFoundError(f"--tokenizer {path}: no such file")
  if file.suffix == ".model":
    return _from_sentencepiece(file)
  try:
    tokenizer = tokenizers.Tokenizer.from_file(str(file))
  except Exception as e:  # tokenizers raises a bare Exception for a malformed file
    raise ValueError(f"--tokenizer {path} is not a valid tokenizer.json: {e}") from e
  return _from_tokenizers(tokenizer)


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


def _read_split(config: DataConfig) -> tuple[list[Piece], list[Piece], pathlib.Path | None]:
  """(train pieces, validation pieces, directory of the data if local)."""
  if config.data.startswith("hf:"):
    documents, held_out = _read_hf(config.data.removeprefix("hf:"), config.max_documents)
    data_dir = None
  else:
    files = _match_files(config.data)
    documents, held_out, data_dir = [_read_text(f) for f in files], None, files[0].parent
  if not any(document.strip() for document in documents):
    raise ValueError(f"--data {config.data}: the corpus is empty, there is no text to train on")
  if held_out is None:
    return *_hold_out(documents, config.val_fraction, config.data), data_dir
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
  datasets = _import_optional("datasets", f"--data hf:{spec}")
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


def _import_optional(module: str, user: str) -> ModuleType:
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ImportError(f"{user} needs the `{module}` package: pip install {module}") from e


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


def _cache_dir(data_dir: pathlib.Path | None) -> pathlib.Path:
  """Beside the data if writable (not, e.g., in a read-only install), else the user cache."""
  if data_dir is not None and os.access(data_dir, os.W_OK):
    return data_dir
  cache = _USER_CACHE.expanduser()
  cache.mkdir(parents=True, exist_ok=True)
  return cache


def _bpe_tokenizer(train: list[Piece], vocab_size: int, cache_dir: pathlib.Path) -> Tokenizer:
  """The byte-level BPE of ``train``, trained once and then read from the cache."""
  blocks = [block for piece in train for block in piece]
  key = hashlib.blake2b(f"byte-level BPE, {vocab_size} tokens".encode(), digest_size=6)
  for block in blocks:
    key.update(block.encode() + b"\0")
  path = cache_dir / f"tokenizer-{key.hexdigest()}.json"
  if not path.exists():
    log.info("training a %d-token BPE on the training split, cached as %s", vocab_size, path)
    # Written under a temporary name, then renamed: a concurrent reader never sees half a file.
    temporary = path.with_suffix(f".{os.getpid()}.tmp.json")
    _train_bpe(blocks, vocab_size).save(str(temporary))
    os.replace(temporary, path)
  return _from_tokenizers(tokenizers.Tokenizer.from_file(str(path)))


def _train_bpe(texts: list[str], vocab_size: int) -> tokenizers.Tokenizer:
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
    vocab_size=vocab_size,
    special_tokens=[EOS],
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    show_progress=False,
  )
  tokenizer.train_from_iterator(texts, trainer)
  return tokenizer


def _from_tokenizers(tokenizer: tokenizers.Tokenizer) -> Tokenizer:
  ids = (tokenizer.token_to_id(name) for name in _EOS_NAMES)
  return Tokenizer(
    encode_batch=lambda texts: [
      e.ids for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)
    ],
    vocab_size=tokenizer.get_vocab_size(),
    eos_id=next((i for i in ids if i is not None), None),
  )


def _from_sentencepiece(file: pathlib.Path) -> Tokenizer:
  sentencepiece = _import_optional("sentencepiece", f"--tokenizer {file}")
  try:
    processor = sentencepiece.SentencePieceProcessor(model_file=str(file))
  except (OSError, RuntimeError) as e:
    raise ValueError(f"--tokenizer {file} is not a valid sentencepiece model: {e}") from e
  eos_id = processor.eos_id()
  return Tokenizer(
    encode_batch=lambda texts: processor.encode(list(texts)),
    vocab_size=processor.get_piece_size(),
    eos_id=eos_id if eos_id >= 0 else None,
  )


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
