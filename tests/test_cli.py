"""The CLI is derived from the config dataclasses: every field is a flag, with doc and default."""

import contextlib
import dataclasses
import functools
import io
import re
import typing

import pytest

from swan_optax import defaults
from train import cli
from train import flags
from train.config import TrainConfig
from train.data import DataConfig
from train.optimizers import OPTIMIZERS
from train.optimizers import SwanConfig

# The only fields whose flag is not their name in kebab-case: the established spellings.
RENAMED = {
  "model": "--config",
  "optimizer.name": "--optimizer",
  "optimizer.warmup_fraction": "--warmup",
}
# Every flag of the argparse CLI this replaced: an example value and the field it sets.
OLD_FLAGS = {
  "--config": ("60m", "model"),
  "--optimizer": ("adamw", "optimizer.name"),
  "--non-matrix": ("adafactor", "optimizer.non_matrix"),
  "--whiten-layout": ("param", "optimizer.whiten_layout"),
  "--whiten-method": ("polar_express", "optimizer.whiten_method"),
  "--steps": ("7", "steps"),
  "--batch-size": ("32", "batch_size"),
  "--seq-len": ("64", "data.seq_len"),
  "--lr": ("0.003", "optimizer.lr"),
  "--warmup": ("0.25", "optimizer.warmup_fraction"),
  "--weight-decay": ("0.1", "optimizer.weight_decay"),
  "--max-grad-norm": ("1.0", "optimizer.max_grad_norm"),
  "--adam-b2": ("0.95", "optimizer.adam_b2"),
  "--grad-accum": ("2", "grad_accum"),
  "--bf16": (None, "bf16"),
  "--param-dtype": ("bfloat16", "param_dtype"),
  "--eval-every": ("5", "eval_every"),
  "--eval-batches": ("3", "eval_batches"),
  "--log-every": ("2", "log_every"),
  "--tensorboard": (None, "tensorboard"),
  "--checkpoint-every": ("9", "checkpoint_every"),
  "--keep-checkpoints": ("1", "keep_checkpoints"),
  "--out": ("runs/x", "out"),
  "--data": ("a.txt,b/*.txt", "data.data"),
  "--tokenizer": ("tokenizer.json", "data.tokenizer"),
  "--mesh": ("data=2,fsdp=4", "mesh"),
  "--seed": ("3", "seed"),
  "--resume": (None, "resume"),
  "--on-nonfinite": ("stop", "on_nonfinite"),
  "--coordinator": ("auto", "launch.coordinator"),
  "--num-processes": ("2", "launch.num_processes"),
  "--process-id": ("1", "launch.process_id"),
}


def _leaves(cls: type, prefix: str = "", context=()) -> list[tuple]:
  """(dotted path, field, its class, the flags that choose its class) of every non-config
  field of ``cls``, nested configs and each member of a tagged union walked."""
  leaves = []
  for field in dataclasses.fields(cls):
    if dataclasses.is_dataclass(field.type):
      leaves += _leaves(field.type, f"{prefix}{field.name}.", context)
    elif union := flags.members(field.type):
      for member in union:
        chosen = ("--optimizer", flags.tag(member))
        leaves += _leaves(member, f"{prefix}{field.name}.", chosen)
    elif field.name != "name" or not context:  # a union's tag: --optimizer, in OLD_FLAGS
      leaves.append((prefix + field.name, field, cls, context))
  return leaves


FIELDS = _leaves(TrainConfig) + _leaves(cli.Launch, "launch.")
IDS = [f"{path}[{' '.join(context)}]" for path, _, _, context in FIELDS]
PATHS = [path for path, *_ in FIELDS] + ["optimizer.name"]


def _flag(path: str) -> str:
  return RENAMED.get(path, "--" + path.rpartition(".")[2].replace("_", "-"))


def _parse(argv: list[str]) -> dict:
  config, launch = cli.parse_args(argv)
  return {"launch": launch, **{f.name: getattr(config, f.name) for f in dataclasses.fields(config)}}


def _get(parsed: dict, path: str):
  head, *rest = path.split(".")
  return functools.reduce(getattr, rest, parsed[head])


def _other_value(field: dataclasses.Field, default) -> tuple[str | None, object]:
  """A valid value other than ``default``: the flag's argument (None: a switch) and the field's."""
  if choices := flags.choices(field):
    value = next(c for c in choices if c != default)
    return value, value
  kind = next((a for a in typing.get_args(field.type) if a is not type(None)), field.type)
  if kind is bool:
    return None, not default
  if kind is int:
    value = 300 if default is None else default + 1
  elif kind is float:
    value = 0.5 if default is None else (default or 1.0) / 2
  elif kind is str:
    value = "data=1" if field.name == "mesh" else f"some/{field.name}"
  else:
    return "some/folder", kind("some/folder")
  return str(value), value


def _error(argv: list[str]) -> str:
  stderr = io.StringIO()
  with contextlib.redirect_stderr(stderr), pytest.raises(SystemExit) as exit_info:
    cli.parse_args(argv)
  assert exit_info.value.code == 2
  return stderr.getvalue().strip().splitlines()[-1]


@pytest.mark.parametrize(("path", "field", "_", "context"), FIELDS, ids=IDS)
def test_every_field_is_reachable_by_its_flag(path, field, _, context):
  defaults = _parse(list(context))
  argument, value = _other_value(field, _get(defaults, path))
  argv = [*context, _flag(path)] + ([] if argument is None else [argument])
  assert _get(_parse(argv), path) == value != _get(defaults, path)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_has_its_own_defaults(name):
  assert _parse(["--optimizer", name])["optimizer"] == OPTIMIZERS[name]()


@pytest.mark.parametrize("flag", OLD_FLAGS)
def test_every_old_flag_still_parses(flag):
  value, path = OLD_FLAGS[flag]
  parsed = _get(_parse([flag] if value is None else [flag, value]), path)
  if value is None:
    assert parsed is True
  else:
    assert str(parsed) == value or parsed == float(value)


def test_no_flag_is_left_out():
  assert {_flag(path) for path in PATHS} >= set(OLD_FLAGS)


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (["--steps", "x"], "argument --steps: invalid int value: 'x'"),
    (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    (["--optimizer", "sgd"], "argument --optimizer: invalid choice: 'sgd'"),
    (["--config", "7b"], "argument --config: invalid choice: '7b'"),
    (["--lr", "-1"], "--lr must be a positive number, got -1.0"),
    (["--warmup", "1"], "--warmup must be in [0, 1), got 1.0"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--seq-len", "0"], "--seq-len must be >= 1, got 0"),
    (["--vocab-size", "100"], "--vocab-size must be at least 257"),
    (["--val-fraction", "1"], "--val-fraction must be in (0, 1), got 1.0"),
    (["--final-lr-fraction", "2"], "--final-lr-fraction must be in [0, 1], got 2.0"),
    (
      ["--optimizer", "adam", "--adam-group-lr", "0.1"],
      "--adam-group-lr is for swan, sinkgd, muon only, not --optimizer adam",
    ),
    (["--embed-lr-scale", "2"], "--embed-lr-scale is for adam, adamw only, not --optimizer swan"),
    (["--optimizer", "adam", "--swan-operators", "whiten"], "--swan-operators is for swan only"),
    (["--optimizer", "adam", "--embed-lr-scale", "-1"], "--embed-lr-scale must be a positive"),
    (["--optimizer", "muon", "--adam-group-lr", "0"], "--adam-group-lr must be a positive"),
  ],
)
def test_a_bad_value_is_one_line_naming_the_flag(argv, message):
  line = _error(argv)
  assert line.startswith(f"python -m train: error: {message}") or message in line, line


def test_help_lists_every_flag_with_its_doc_and_default():
  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout), pytest.raises(SystemExit):
    cli.parse_args(["--help"])
  text = " ".join(stdout.getvalue().split())
  for title in ("run:", "data:", "optimizer:", "multi-process:"):
    assert f" {title} " in text
  for path, field, cls, _ in FIELDS:
    doc = flags._attribute_docs(cls)[field.name].partition("``")[0]
    words = " ".join(doc.rstrip(".").split()[:3])
    # The flag, then its doc before the next flag (` --`), then its default.
    flag_and_doc = rf"{re.escape(_flag(path))} (?:(?! --).)*?{re.escape(words)}.*?\(default: "
    assert re.search(flag_and_doc, text), path
  lrs = {**defaults.LEARNING_RATE, "muon": 0.02, "adam": 0.002, "adamw": 0.002}
  assert ", ".join(f"{n} {lr:g}" for n, lr in lrs.items()) in text


def test_the_vocab_size_is_the_models_unless_set():
  assert _parse([])["data"].vocab_size == 2048
  assert _parse(["--config", "60m"])["data"].vocab_size == 32000
  assert _parse(["--config", "60m", "--vocab-size", "4096"])["data"].vocab_size == 4096
  assert TrainConfig(model="small", data=DataConfig(seq_len=64)).data.vocab_size == 4096


def test_programmatic_errors_name_the_field_and_its_flag():
  with pytest.raises(ValueError, match=r"^SwanConfig\.warmup_fraction must .*flag --warmup"):
    SwanConfig(warmup_fraction=1.0)
  with pytest.raises(ValueError, match=r"^TrainConfig\.model must be one of .*flag --config"):
    TrainConfig(model="7b")
  with pytest.raises(ValueError, match=r"^DataConfig\.seq_len must be >= 1, got 0"):
    DataConfig(seq_len=0)


@dataclasses.dataclass(frozen=True)
class _Inner:
  """Inner.

  Attributes:
    seed: a seed.
  """

  seed: int = 0


@dataclasses.dataclass(frozen=True)
class _Outer:
  """Outer.

  Attributes:
    seed: another seed.
    inner: a nested config.
  """

  seed: int = 0
  inner: _Inner = _Inner()


@dataclasses.dataclass(frozen=True)
class _Undocumented:
  """No attributes section."""

  steps: int = 1


def test_the_deriver_refuses_a_flag_derived_twice_or_undocumented():
  with pytest.raises(TypeError, match=r"_Inner.seed and _Outer.seed both derive --seed"):
    flags.ConfigParser().add_config(_Outer, "outer")
  with pytest.raises(TypeError, match=r"_Undocumented.steps has no entry in the Attributes"):
    flags.ConfigParser().add_config(_Undocumented, "undocumented")
