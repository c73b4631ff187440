"""Tokenizers: a byte-level BPE trained on the corpus and cached, or a user's tokenizer file."""

import dataclasses
import hashlib
import importlib
import logging
import os
import pathlib
from collections.abc import Callable
from collections.abc import Sequence
from types import ModuleType

import tokenizers
from tokenizers import decoders
from tokenizers import models
from tokenizers import pre_tokenizers
from tokenizers import trainers

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
# Document separators of common tokenizers, looked up in a user's tokenizer.json.
_EOS_NAMES = (EOS, "</s>", "<eos>", "<|end_of_text|>")
_USER_CACHE = pathlib.Path("~/.cache/swan-optax")


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  """One interface over a ``tokenizers`` tokenizer and a sentencepiece model.

  Attributes:
    encode_batch: texts -> token ids of each, without special tokens added.
    vocab_size: number of token ids.
    eos_id: the document separator; ``None`` if the tokenizer has none (then
      documents are simply concatenated).
    fingerprint: a hash of the tokenizer's definition (its serialized file):
      tokenizers with equal fingerprints encode every text alike.
  """

  encode_batch: Callable[[Sequence[str]], list[list[int]]]
  vocab_size: int
  eos_id: int | None
  fingerprint: str

  def encode(self, text: str) -> list[int]:
    return self.encode_batch([text])[0]


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


def cache_dir(data_dir: pathlib.Path | None) -> pathlib.Path:
  """Beside the data if writable (not, e.g., in a read-only install), else the user cache."""
  if data_dir is not None and os.access(data_dir, os.W_OK):
    return data_dir
  cache = _USER_CACHE.expanduser()
  cache.mkdir(parents=True, exist_ok=True)
  return cache


def bpe_tokenizer(blocks: list[str], vocab_size: int, cache_dir: pathlib.Path) -> Tokenizer:
  """The byte-level BPE of the texts ``blocks``, trained once and then read from the cache."""
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
    fingerprint=_fingerprint(tokenizer.to_str().encode()),
  )


def _from_sentencepiece(file: pathlib.Path) -> Tokenizer:
  sentencepiece = import_optional("sentencepiece", f"--tokenizer {file}", "sentencepiece")
  try:
    processor = sentencepiece.SentencePieceProcessor(model_file=str(file))
  except (OSError, RuntimeError) as e:
    raise ValueError(f"--tokenizer {file} is not a valid sentencepiece model: {e}") from e
  eos_id = processor.eos_id()
  return Tokenizer(
    encode_batch=lambda texts: processor.encode(list(texts)),
    vocab_size=processor.get_piece_size(),
    eos_id=eos_id if eos_id >= 0 else None,
    fingerprint=_fingerprint(file.read_bytes()),
  )


def _fingerprint(definition: bytes) -> str:
  return hashlib.blake2b(definition, digest_size=8).hexdigest()


def import_optional(module: str, user: str, extra: str) -> ModuleType:
  """``import module``, or an ImportError telling ``user`` (a flag) what to install.

  ``extra`` is the pyproject extra that declares ``module``.
  """
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ImportError(
      f"{user} needs the `{module}` package: pip install -e '.[{extra}]' (or pip install {module})"
    ) from e
