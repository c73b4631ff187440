"""The collective counter of ``train/bench/hlo.py`` on compiled modules."""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from train.bench import hlo


def _compiled_text(fn, *args):
  return jax.jit(fn).lower(*args).compile().as_text()


def test_counts_tuple_shaped_all_to_all():
  """On 8 CPU devices XLA emits an all-to-all as a tuple of 8 results, with `/*index=5*/` inside."""
  mesh = jax.make_mesh((8,), ("x",))
  xs = [jax.device_put(jnp.ones((64, 4 + i)), NamedSharding(mesh, P("x"))) for i in range(2)]
  a2a = lambda *xs: tuple(jax.lax.all_to_all(x, "x", 0, 0, tiled=True) for x in xs)
  spec = (P("x"),) * len(xs)
  text = _compiled_text(jax.shard_map(a2a, mesh=mesh, in_specs=spec, out_specs=spec), *xs)
  assert "/*index=5*/" in text
  # Per device, each result is the local (8, n) f32 block: 8 * (4 + 5) * 4 bytes in all.
  assert hlo.collective_bytes(text) == {"all-to-all": 8 * (4 + 5) * 4}


def test_counts_plain_all_gather_and_all_reduce():
  mesh = jax.make_mesh((8,), ("x",))
  x = jax.device_put(jnp.ones((64, 3)), NamedSharding(mesh, P("x")))

  def body(x):
    return jax.lax.all_gather(x, "x", tiled=True), jax.lax.psum(x, "x")

  shard = jax.shard_map(body, mesh=mesh, in_specs=P("x"), out_specs=(P(), P("x")), check_vma=False)
  moved = hlo.collective_bytes(_compiled_text(shard, x))
  assert moved == {"all-gather": 64 * 3 * 4, "all-reduce": 8 * 3 * 4}


def test_no_collectives_without_a_mesh():
  assert hlo.collective_bytes(_compiled_text(lambda x: x @ x.T, jnp.ones((8, 8)))) == {}
