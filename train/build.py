"""``build(config, mesh)``: model, optimizer, state, shardings and steps, for every caller.

The CLI's loop, the benchmarks and the tests all start from this one chain:
config -> params on the mesh -> optimizer -> train state and its shardings ->
the train step compiled with explicit shardings and donated buffers.
"""

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from models import configs
from models import llama
from models import sharding
from train import optimizer
from train import step as step_lib
from train.config import TrainConfig


class StartupError(RuntimeError):
  """The model, optimizer state or train step could not be built on the mesh."""


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything a training loop, a benchmark or a test needs.

  Attributes:
    config: the run configuration.
    model_config: the model at the run's sequence length and dtype.
    mesh: the device mesh.
    graphdef: the model's static graph (for ``llama.apply``).
    tx: the optimizer.
    state: the initial ``TrainState`` (``jax.ShapeDtypeStruct`` leaves with
      shardings when built abstract).
    state_sharding: the ``TrainState`` of shardings.
    batch_sharding: the sharding of a ``(batch, length)`` token array.
    train_step: ``(state, batch) -> (state, metrics)``, jitted with explicit
      shardings and the state donated; compiled ahead of time unless abstract.
    eval_step: jitted ``(params, batch) -> (summed token loss, token count)``.
  """

  config: TrainConfig
  model_config: configs.LlamaConfig
  mesh: jax.sharding.Mesh
  graphdef: Any
  tx: optax.GradientTransformation
  state: step_lib.TrainState
  state_sharding: step_lib.TrainState
  batch_sharding: NamedSharding
  train_step: Callable
  eval_step: Callable

  def apply(self, params: Any, tokens_BxL: jax.Array) -> jax.Array:
    """Logits of the model with ``params``."""
    return llama.apply(self.graphdef, params, tokens_BxL)

  def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
    """The abstract global batch of one step: ``inputs`` and ``targets``, sharded."""
    tokens = jax.ShapeDtypeStruct(
      (self.config.batch_size, self.config.data.seq_len), np.int32, sharding=self.batch_sharding
    )
    return {"inputs": tokens, "targets": tokens}

  def place_batch(self, batch: dict) -> dict:
    """This process's rows of a global batch -> one global array per field."""
    return {
      k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
      for k, v in batch.items()
    }

  def random_batch(self, seed: int = 0) -> dict:
    """A global batch of uniformly random tokens (for benchmarks), placed on the mesh."""
    shape = (self.config.batch_size, self.config.data.seq_len + 1)
    tokens = np.random.default_rng(seed).integers(0, self.model_config.vocab_size, shape, np.int32)
    return jax.device_put({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}, self.batch_sharding)


def build(config: TrainConfig, mesh: jax.sharding.Mesh, *, abstract: bool = False) -> Experiment:
  """Builds the experiment of ``config`` on ``mesh``.

  Args:
    config: the run configuration.
    mesh: the device mesh.
    abstract: allocate nothing: the state is ``jax.ShapeDtypeStruct`` leaves
      with their shardings and ``train_step`` is jitted but not compiled (lower
      it with ``train_step.lower(experiment.state, experiment.batch_spec())``).

  Raises:
    ValueError: the batch does not split over the mesh, or a parameter does not.
    StartupError: XLA failed (out of memory, shapes), naming the config and mesh.
  """
  check_batch(config, mesh)
  model_config = config.model_config
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_sharding = NamedSharding(mesh, sharding.batch_spec())
  with _naming_config_and_mesh(config, mesh):
    if abstract:
      graphdef, params = llama.abstract_init(model_config, mesh)
    else:
      graphdef, params = llama.init_params(model_config, mesh, config.seed)
    tx = optimizer.make_optimizer(
      config.optimizer,
      config.steps,
      dimension_numbers=optimizer.dimension_numbers(model_config),
      shardings=jax.tree.map(lambda x: x.sharding, params),
    )
    state_sharding = step_lib.state_shardings(tx, params, replicated)
    init = jax.jit(lambda p: step_lib.init_state(p, tx), out_shardings=state_sharding)
    state = jax.eval_shape(init, params) if abstract else init(params)
    apply_fn = lambda p, tokens: llama.apply(graphdef, p, tokens)
    train_step = jax.jit(
      step_lib.make_train_step(apply_fn, tx, grad_accum=config.grad_accum),
      in_shardings=(state_sharding, batch_sharding),
      out_shardings=(state_sharding, replicated),
      donate_argnums=0,
    )
    experiment = Experiment(
      config=config,
      model_config=model_config,
      mesh=mesh,
      graphdef=graphdef,
      tx=tx,
      state=state,
      state_sharding=state_sharding,
      batch_sharding=batch_sharding,
      train_step=train_step,
      eval_step=jax.jit(step_lib.make_eval_step(apply_fn)),
    )
    if abstract:
      return experiment
    compiled = train_step.lower(state, experiment.batch_spec()).compile()
  return dataclasses.replace(experiment, train_step=compiled)


def check_batch(config: TrainConfig, mesh: jax.sharding.Mesh) -> None:
  """Raises unless the batch splits into micro-batches that split over the data shards."""
  shards = sharding.batch_shards(mesh)
  axes = " x ".join(sharding.batch_spec()[0])
  per_step = config.batch_size // config.grad_accum
  if config.batch_size % config.grad_accum or per_step % shards:
    raise ValueError(
      f"--batch-size {config.batch_size} must split into --grad-accum {config.grad_accum} "
      f"micro-batches each divisible by the {shards} data-parallel shards ({axes}) of the "
      f"mesh: use a multiple of {config.grad_accum * shards}"
    )


@contextlib.contextmanager
def _naming_config_and_mesh(config: TrainConfig, mesh: jax.sharding.Mesh):
  """Re-raises XLA errors at start-up (out of memory, shapes) naming the config and mesh."""
  try:
    yield
  except (jax.errors.JaxRuntimeError, TypeError) as e:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise StartupError(
      f"building --config {config.model} (batch {config.batch_size}x{config.data.seq_len}, "
      f"--optimizer {config.optimizer.name}) on mesh {dict(mesh.shape)} over "
      f"{jax.device_count()} {jax.devices()[0].platform} device(s) failed: {reason}. A smaller "
      "--config, --batch-size or --seq-len, more --grad-accum, or more fsdp/tensor sharding in "
      "--mesh may fit."
    ) from e
