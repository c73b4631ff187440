"""Fuzzing the CLI, mesh and config parsing: invalid values give a clear error, no traceback."""

import contextlib
import functools
import io
import math

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from models import configs
from models import llama
from train import cli
from train import mesh as mesh_lib

INT_FLAGS = (
  "--steps --batch-size --seq-len --grad-accum --eval-every --eval-batches --log-every "
  "--checkpoint-every --keep-checkpoints"
).split()
FLOAT_FLAGS = ["--lr", "--warmup", "--weight-decay", "--max-grad-norm", "--adam-b2"]
CHOICE_FLAGS = ["--config", "--optimizer", "--non-matrix", "--on-nonfinite", "--param-dtype"]
# Where each flag lands in the TrainConfig (default: the field named like the flag).
FIELDS_OF_FLAGS = {
  "--seq-len": "data.seq_len",
  "--lr": "optimizer.lr",
  "--warmup": "optimizer.warmup_fraction",
  "--weight-decay": "optimizer.weight_decay",
  "--max-grad-norm": "optimizer.max_grad_norm",
  "--adam-b2": "optimizer.adam_b2",
  "--config": "model",
  "--optimizer": "optimizer.name",
  "--non-matrix": "optimizer.non_matrix",
}
values = st.one_of(
  st.text(max_size=12),
  st.integers(-(10**6), 10**6).map(str),
  st.sampled_from(["nan", "inf", "-inf", "1e400", "-0", "0x10", "1_000", " 3 ", "", "²"]),
)


@settings(max_examples=300, deadline=None)
@given(flag=st.sampled_from(INT_FLAGS + FLOAT_FLAGS + CHOICE_FLAGS), value=values)
def test_parse_args_accepts_or_exits_with_a_message(flag, value):
  stderr = io.StringIO()
  with contextlib.redirect_stderr(stderr):
    try:
      config, _ = cli.parse_args([f"{flag}={value}"])
    except SystemExit as e:
      assert e.code == 2
      last = stderr.getvalue().strip().splitlines()[-1]
      assert last.startswith("python -m train: error:") and flag.lstrip("-")[:4] in last, last
      return
  field = FIELDS_OF_FLAGS.get(flag, flag.lstrip("-").replace("-", "_"))
  parsed = functools.reduce(getattr, field.split("."), config)
  if flag in INT_FLAGS:
    assert parsed >= 1
  if flag == "--lr":
    assert parsed > 0 and math.isfinite(parsed)
  if flag == "--warmup":
    assert 0 <= parsed < 1
  if flag == "--weight-decay":
    assert 0 <= parsed < math.inf
  if flag == "--max-grad-norm":
    assert 0 < parsed < math.inf
  if flag == "--adam-b2":
    assert 0 <= parsed < 1


@settings(max_examples=300, deadline=None)
@given(
  spec=st.one_of(
    st.text(max_size=30),
    st.lists(
      st.tuples(
        st.sampled_from(["data", "fsdp", "tensor", "pipe", "", "Data"]),
        st.sampled_from(["=", ":", "=="]),
        st.sampled_from(["1", "2", "4", "8", "0", "-2", "x", "", "٢", "²"]),
      ),
      max_size=4,
    ).map(lambda parts: ",".join(a + s + v for a, s, v in parts)),
  )
)
def test_mesh_spec_is_valid_or_a_clear_error(spec):
  try:
    sizes = mesh_lib.parse_mesh(spec, 8)
  except ValueError as e:
    assert str(e).startswith(f"--mesh {spec!r}")
    return
  assert set(sizes) == set(mesh_lib.AXES) and math.prod(sizes.values()) == 8


FIELDS = (
  "vocab_size dim ffn_dim num_layers num_heads head_dim max_seq_len norm_eps rope_theta "
  "init_std dtype hidden"
).split()


@settings(max_examples=300, deadline=None)
@given(
  name=st.sampled_from([*configs.CONFIGS, "7b", ""]),
  field=st.sampled_from(FIELDS),
  value=st.one_of(
    st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=5), st.booleans(), st.none()
  ),
)
def test_config_overrides_are_valid_or_a_clear_error(name, field, value):
  try:
    config = configs.get_config(name, **{field: value})
  except ValueError as e:
    assert field in str(e) or f"unknown model config {name!r}" in str(e), e  # names the culprit
    return
  assert config.num_params > 0 and getattr(config, field) == value


def test_startup_xla_errors_name_the_config_and_mesh(tmp_path, monkeypatch, capsys):
  def out_of_memory(*args, **kwargs):
    raise __import__("jax").errors.JaxRuntimeError(
      "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 34359738368 bytes."
    )

  monkeypatch.setattr(llama, "init_params", out_of_memory)
  with pytest.raises(SystemExit):
    cli.main(
      [*"--config 1b --seq-len 64 --batch-size 8 --mesh data=2,fsdp=4 --out".split(), str(tmp_path)]
    )
  line = capsys.readouterr().err.strip().splitlines()[-1]
  assert "--config 1b" in line and "{'data': 2, 'fsdp': 4, 'tensor': 1}" in line, line
  assert "RESOURCE_EXHAUSTED: Out of memory" in line and "--grad-accum" in line
