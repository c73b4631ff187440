"""Test setup: 8 simulated CPU devices, so sharded runs can be compared with single-device ones,
and one persistent compilation cache for the session's processes."""

import os
import tempfile

# Must be set before JAX initialises its backends.
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def pytest_configure(config):
  """Every program compiled in this session is kept in JAX's persistent compilation cache, which
  the xdist workers and the tests' subprocesses inherit through the environment (set here, in
  the controller, before they start): a test that builds a program another test compiled loads
  it instead of compiling it again. Results are the same program's either way."""
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="swan-optax-jax-cache-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
