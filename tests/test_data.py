"""The data pipeline: split, tokenizer and its cache, packing, shuffling, resumption, errors."""

import gzip
import json
import os
import pathlib
import shutil
import sys
import types

import numpy as np
import pytest
import tokenizers

from train import data
from train import tokenizer

SEQ_LEN = 32
_WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda omicron".split()


def _lines(count: int, prefix: str = "line") -> list[str]:
  """Unique numbered lines of random words."""
  rng = np.random.default_rng(0)
  return [f"{prefix} {i:05d}: {' '.join(rng.choice(_WORDS, 6))}\n" for i in range(count)]


def _config(path: pathlib.Path, **overrides) -> data.DataConfig:
  settings = dict(vocab_size=512, seq_len=SEQ_LEN, val_fraction=0.1) | overrides
  return data.DataConfig(data=str(path), **settings)


def _decode_lines(cache_dir: pathlib.Path, tokens: np.ndarray) -> set[str]:
  """The lines of a token stream, decoded with the BPE cached in ``cache_dir``."""
  (path,) = cache_dir.glob("tokenizer-*.json")
  text = tokenizers.Tokenizer.from_file(str(path)).decode(tokens.tolist())
  return set(text.splitlines())


def _window_rows(batch: dict) -> np.ndarray:
  """The windows of a batch: inputs plus the last target."""
  return np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)


def _take(iterator, count: int) -> list[dict]:
  return [next(iterator) for _ in range(count)]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> pathlib.Path:
  directory = tmp_path_factory.mktemp("corpus")
  (directory / "lines.txt").write_text("".join(_lines(3000)))
  return directory


@pytest.fixture(scope="module")
def corpus(corpus_dir) -> data.Corpus:
  return data.load_corpus(_config(corpus_dir / "lines.txt"))


def _train(corpus, **overrides):
  kwargs = dict(batch_size=8, seq_len=SEQ_LEN, seed=0) | overrides
  return data.train_batches(corpus, **kwargs)


def test_targets_are_inputs_shifted_by_one(corpus):
  batch = next(_train(corpus))
  assert batch["inputs"].shape == batch["targets"].shape == (8, SEQ_LEN)
  assert batch["inputs"].dtype == batch["targets"].dtype == np.int32
  np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])


def test_validation_text_never_in_training(corpus, corpus_dir):
  train = _decode_lines(corpus_dir, corpus.train_tokens)
  val = _decode_lines(corpus_dir, corpus.val_tokens)
  assert train.isdisjoint(val)
  assert train | val == {line.rstrip("\n") for line in _lines(3000)}
  assert 0.05 < len(val) / 3000 < 0.15
  train_windows = {w.tobytes() for w in data._windows(corpus.train_tokens, SEQ_LEN, 1, "")}
  val_windows = {w.tobytes() for w in data._windows(corpus.val_tokens, SEQ_LEN, 1, "")}
  assert train_windows.isdisjoint(val_windows)


def test_order_is_deterministic_per_seed(corpus):
  first, again, other = (_take(_train(corpus, seed=s), 3) for s in (0, 0, 1))
  for a, b in zip(first, again, strict=True):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
  assert not np.array_equal(first[0]["inputs"], other[0]["inputs"])


def test_set_state_resumes_exactly(corpus):
  # 256-window batches make an epoch a few batches long, so the resumed run crosses one.
  iterator = _train(corpus, batch_size=256)
  _take(iterator, 3)
  state = json.loads(json.dumps(iterator.get_state()))
  expected = _take(iterator, 6)
  resumed = _train(corpus, batch_size=256)
  resumed.set_state(state)
  for a, b in zip(expected, _take(resumed, 6), strict=True):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    np.testing.assert_array_equal(a["targets"], b["targets"])


def test_every_window_once_per_epoch(corpus):
  windows = data._windows(corpus.train_tokens, SEQ_LEN, 1, "")
  count = len(windows)
  assert data.epoch_tokens(corpus, SEQ_LEN) == count * SEQ_LEN  # the targets of one epoch
  batch_size = 96  # does not divide the window count: batches straddle epochs
  assert count % batch_size
  batches = _take(_train(corpus, batch_size=batch_size), 2 * count // batch_size + 1)
  seen = np.concatenate([_window_rows(b) for b in batches])
  epochs = seen[:count], seen[count : 2 * count]
  for epoch in epochs:
    np.testing.assert_array_equal(np.unique(epoch, axis=0), np.unique(windows, axis=0))
    assert len(np.unique(epoch, axis=0)) == count
  assert not np.array_equal(*epochs)


@pytest.mark.parametrize("process_count", [2, 4])
def test_process_slices_make_the_global_batch(corpus, process_count):
  whole = _take(_train(corpus), 3)
  parts = [
    _take(_train(corpus, process_index=i, process_count=process_count), 3)
    for i in range(process_count)
  ]
  for step, batch in enumerate(whole):
    for key in ("inputs", "targets"):
      joined = np.concatenate([part[step][key] for part in parts])
      np.testing.assert_array_equal(joined, batch[key])
  evaluate = lambda **rows: data.eval_batches(
    corpus, batch_size=8, seq_len=SEQ_LEN, max_batches=2, **rows
  )
  eval_whole = evaluate()
  eval_parts = [
    evaluate(process_index=i, process_count=process_count) for i in range(process_count)
  ]
  for step, batch in enumerate(eval_whole):
    joined = np.concatenate([part[step]["inputs"] for part in eval_parts])
    np.testing.assert_array_equal(joined, batch["inputs"])


def test_eval_batches_are_the_first_windows_in_order(corpus):
  windows = data._windows(corpus.val_tokens, SEQ_LEN, 1, "")
  batches = data.eval_batches(corpus, batch_size=4, seq_len=SEQ_LEN, max_batches=3)
  assert len(batches) == 3
  np.testing.assert_array_equal(np.concatenate([_window_rows(b) for b in batches]), windows[:12])
  everything = data.eval_batches(corpus, batch_size=4, seq_len=SEQ_LEN, max_batches=10**6)
  assert len(everything) == len(windows) // 4


def test_trained_tokenizer_is_cached(corpus, corpus_dir, monkeypatch):
  assert len(list(corpus_dir.glob("tokenizer-*.json"))) == 1
  monkeypatch.setattr(
    tokenizer, "_train_bpe", lambda *_: pytest.fail("the tokenizer was retrained")
  )
  again = data.load_corpus(_config(corpus_dir / "lines.txt"))
  assert again.vocab_size == corpus.vocab_size <= 512
  np.testing.assert_array_equal(again.train_tokens, corpus.train_tokens)


def test_token_streams_are_cached_per_tokenizer_and_text(corpus, corpus_dir, tmp_path, monkeypatch):
  shutil.copy(corpus_dir / "lines.txt", tmp_path / "lines.txt")
  first = data.load_corpus(_config(tmp_path / "lines.txt"))
  (tokenizer_file,) = tmp_path.glob("tokenizer-*.json")
  assert len(list(tmp_path.glob("tokens-*.npz"))) == 1
  with monkeypatch.context() as patched:
    patched.setattr(data, "_encode", lambda *_: pytest.fail("the text was encoded again"))
    again = data.load_corpus(_config(tmp_path / "lines.txt"))
    # The same tokenizer given as a file: the same definition, so the same cached tokens.
    as_file = data.load_corpus(_config(tmp_path / "lines.txt", tokenizer=str(tokenizer_file)))
  for loaded in (again, as_file):
    np.testing.assert_array_equal(loaded.train_tokens, corpus.train_tokens)
    np.testing.assert_array_equal(loaded.val_tokens, corpus.val_tokens)
  other_tokenizer = data.load_corpus(_config(tmp_path / "lines.txt", vocab_size=300))
  assert other_tokenizer.tokenizer.fingerprint != first.tokenizer.fingerprint
  assert not np.array_equal(other_tokenizer.train_tokens[:100], first.train_tokens[:100])
  (tmp_path / "lines.txt").write_text("".join(_lines(3000)) + "one more line\n")
  edited = data.load_corpus(_config(tmp_path / "lines.txt", tokenizer=str(tokenizer_file)))
  size = lambda loaded: loaded.train_tokens.size + loaded.val_tokens.size
  assert size(edited) > size(first)  # encoded anew, not read from the first text's cache
  assert len(list(tmp_path.glob("tokens-*.npz"))) == 3


def test_read_only_data_dir_caches_in_home(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  monkeypatch.setattr(os, "access", lambda path, mode: False)
  (tmp_path / "lines.txt").write_text("".join(_lines(400)))
  data.load_corpus(_config(tmp_path / "lines.txt", seq_len=8))
  assert not list(tmp_path.glob("tokenizer-*.json")) + list(tmp_path.glob("tokens-*.npz"))
  home = tmp_path / "home/.cache/swan-optax"
  assert len(list(home.glob("tokenizer-*.json"))) == len(list(home.glob("tokens-*.npz"))) == 1


def test_user_tokenizer_json(corpus, corpus_dir, tmp_path):
  (cached,) = corpus_dir.glob("tokenizer-*.json")
  shutil.copy(cached, tmp_path / "mine.json")
  (tmp_path / "lines.txt").write_text("".join(_lines(3000)))
  loaded = data.load_corpus(_config(tmp_path / "lines.txt", tokenizer=str(tmp_path / "mine.json")))
  assert loaded.vocab_size == corpus.vocab_size
  reference = tokenizers.Tokenizer.from_file(str(tmp_path / "mine.json"))
  assert loaded.tokenizer.eos_id == reference.token_to_id(data.EOS)
  assert (
    loaded.tokenizer.encode("line 00001: alpha\n") == reference.encode("line 00001: alpha\n").ids
  )
  np.testing.assert_array_equal(loaded.val_tokens, corpus.val_tokens)
  assert not list(tmp_path.glob("tokenizer-*.json"))


def test_files_and_globs_are_combined(tmp_path):
  lines = _lines(600)
  (tmp_path / "a.txt").write_text("".join(lines[:300]))
  with gzip.open(tmp_path / "b.txt.gz", "wt") as f:
    f.write("".join(lines[300:]))
  both = data.load_corpus(_config(f"{tmp_path}/*.txt.gz,{tmp_path / 'a.txt'}", seq_len=8))
  train = _decode_lines(tmp_path, both.train_tokens)
  val = _decode_lines(tmp_path, both.val_tokens)
  assert train | val == {line.rstrip("\n") for line in lines}


def test_shipped_corpus(tmp_path):
  assert data.DEFAULT_CORPUS.is_absolute() and data.DEFAULT_CORPUS.is_file()
  shutil.copy(data.DEFAULT_CORPUS, tmp_path)
  corpus = data.load_corpus(
    data.DataConfig(data=str(tmp_path / "shakespeare.txt.gz"), vocab_size=512)
  )
  assert corpus.vocab_size == 512
  total = len(corpus.train_tokens) + len(corpus.val_tokens)
  assert 1_500_000 < total < 4_000_000  # ~5 MB of English at ~2 bytes per token
  assert 0.04 < len(corpus.val_tokens) / total < 0.06
  assert 0 <= corpus.train_tokens.min() and corpus.train_tokens.max() < 512


def _fake_datasets(splits: dict[str, list[str]], calls: list) -> types.SimpleNamespace:
  def load_dataset(name, config, *, streaming):
    calls.append((name, config, streaming))
    return {split: ({"text": text} for text in texts) for split, texts in splits.items()}

  return types.SimpleNamespace(load_dataset=load_dataset)


@pytest.mark.parametrize("with_validation", [True, False])
def test_hugging_face_dataset(tmp_path, monkeypatch, with_validation):
  monkeypatch.setenv("HOME", str(tmp_path))
  stories = ["".join(_lines(20, prefix=f"story {i}")) for i in range(200)]
  splits = {"train": stories[:150] + ["not read\n"] * 5, "validation": stories[150:]}
  if not with_validation:
    del splits["validation"]
  calls = []
  monkeypatch.setitem(sys.modules, "datasets", _fake_datasets(splits, calls))
  corpus = data.load_corpus(_config("hf:someone/stories:small", max_documents=150, seq_len=8))
  assert calls == [("someone/stories", "small", True)]
  cache = tmp_path / ".cache/swan-optax"
  train = _decode_lines(cache, corpus.train_tokens)
  val = _decode_lines(cache, corpus.val_tokens)
  assert "not read" not in train | val
  assert train.isdisjoint(val)
  if with_validation:  # the first 150 // 20 validation stories
    assert val == {line.rstrip("\n") for story in stories[150:157] for line in story.splitlines()}
    assert train == {line for story in stories[:150] for line in story.splitlines()}


def test_errors(corpus, corpus_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match=r"no file matches '.*missing\*.txt'"):
    data.load_corpus(_config(tmp_path / "missing*.txt"))
  (tmp_path / "empty.txt").write_text(" \n")
  with pytest.raises(ValueError, match="corpus is empty"):
    data.load_corpus(_config(tmp_path / "empty.txt"))
  (tmp_path / "latin1.txt").write_bytes("café\n".encode("latin1"))
  with pytest.raises(ValueError, match=r"latin1.txt is not UTF-8 text.*convert it"):
    data.load_corpus(_config(tmp_path / "latin1.txt"))
  (tmp_path / "tiny.txt").write_text("too short\n")
  with pytest.raises(ValueError, match="too few to hold out a validation split"):
    data.load_corpus(_config(tmp_path / "tiny.txt"))
  for fraction in (0.0, 1.0, 1.5):
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\)"):
      _config(tmp_path / "tiny.txt", val_fraction=fraction)
  with pytest.raises(ValueError, match=r"training split has \d+ windows .* lower --seq-len"):
    _train(corpus, batch_size=10**6)
  with pytest.raises(ValueError, match=r"validation split has \d+ windows .* lower --seq-len"):
    data.eval_batches(corpus, batch_size=10**6, seq_len=SEQ_LEN, max_batches=1)
  with pytest.raises(ValueError, match="validation split has 0 windows of --seq-len 5000"):
    data.load_corpus(_config(corpus_dir / "lines.txt", seq_len=5000))
  with pytest.raises(ValueError, match="--batch-size 6 must be divisible .* processes, 4"):
    _train(corpus, batch_size=6, process_count=4)
  with pytest.raises(ValueError, match=r"--seed must be in \[0, 2\*\*32\)"):
    _train(corpus, seed=-1)


def test_tokenizer_errors(tmp_path, monkeypatch):
  with pytest.raises(ValueError, match="expected a `tokenizers` tokenizer.json or a sentencepiece"):
    data.load_tokenizer(str(tmp_path / "vocab.txt"))
  with pytest.raises(FileNotFoundError, match="--tokenizer .*missing.json: no such file"):
    data.load_tokenizer(str(tmp_path / "missing.json"))
  (tmp_path / "broken.json").write_text("{")
  with pytest.raises(ValueError, match="broken.json is not a valid tokenizer.json"):
    data.load_tokenizer(str(tmp_path / "broken.json"))
  (tmp_path / "sp.model").write_bytes(b"")
  monkeypatch.setitem(sys.modules, "sentencepiece", None)
  with pytest.raises(ImportError, match="pip install sentencepiece"):
    data.load_tokenizer(str(tmp_path / "sp.model"))
  monkeypatch.setitem(sys.modules, "datasets", None)
  with pytest.raises(ImportError, match="pip install datasets"):
    data.load_corpus(data.DataConfig(data="hf:someone/stories"))
