"""bf16 params: training, f32 optimizer state, checkpoints (resume: test_train.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train import build
from train import checkpoint
from train import mesh as mesh_lib
from train import optimizer
from train.config import TrainConfig
from train.config import model_data
from train.optimizers import optimizer_config


def _bf16_run(name: str, steps: int = 6):
  """A few steps of the tiny LLaMA, bf16 params and activations, on one repeated batch."""
  config = TrainConfig(
    data=model_data("tiny", seq_len=32),
    optimizer=optimizer_config(name, lr=0.01 if name != "sinkgd" else 0.1, warmup_fraction=0),
    bf16=True,
    param_dtype="bfloat16",
    steps=steps,
    batch_size=8,
  )
  exp = build.build(config, mesh_lib.make_mesh(None, jax.devices()[:1]))
  batch, state, losses = exp.random_batch(), exp.state, []
  for _ in range(steps):
    state, metrics = exp.train_step(state, batch)
    assert bool(metrics["finite"]), metrics
    losses.append(float(metrics["loss"]))
  return state, losses


def _dtypes(tree) -> set[str]:
  return {str(x.dtype) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)}


@pytest.mark.parametrize("name", ["swan", "sinkgd", "adam"])
def test_bf16_steps_lose_loss_with_f32_optimizer_state(name, tmp_path):
  state, losses = _bf16_run(name)
  assert losses[-1] < losses[0] - 0.5, losses
  assert _dtypes(state.params) == {"bfloat16"}
  assert _dtypes(state.opt_state) == {"float32"}  # Adam's moments, for every optimizer
  assert int(state.skipped) == 0
  # The checkpoint restores bit for bit, dtypes kept.
  mngr = checkpoint.manager(tmp_path)
  checkpoint.save(mngr, int(state.step), state, {"position": 1})
  step, restored, data_state = checkpoint.restore_latest(mngr, checkpoint.abstract_like(state))
  assert (step, data_state) == (int(state.step), {"position": 1})
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
    assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b)), (a.dtype, b.dtype)


def test_in_float32_adam_on_bf16_params_is_adam_in_f32():
  """Same bf16 gradients: the wrapped Adam's state is f32 and equals Adam run on f32 params."""
  tx = optax.adam(1e-3)
  wrapped = optimizer.in_float32(tx)
  p16 = jnp.zeros(64, jnp.bfloat16)
  s16, s32 = wrapped.init(p16), tx.init(p16.astype(jnp.float32))
  for t in range(50):
    g16 = jax.random.normal(jax.random.key(t), (64,), jnp.bfloat16) * (1.0 if t < 25 else 0.1)
    u16, s16 = wrapped.update(g16, s16, p16)
    u32, s32 = tx.update(g16.astype(jnp.float32), s32, p16.astype(jnp.float32))
    assert u16.dtype == jnp.float32  # rounded to bf16 once, by apply_updates
    np.testing.assert_array_equal(u16, u32)
  jax.tree.map(np.testing.assert_array_equal, s16, s32)
  assert optax.apply_updates(p16, u16).dtype == jnp.bfloat16


def test_param_dtype_names_the_flag():
  with pytest.raises(ValueError, match="--param-dtype"):
    TrainConfig(param_dtype="float16")
