"""Test setup: 8 simulated CPU devices, so sharded runs can be compared with single-device ones,
and one persistent compilation cache for the session's processes."""

import os
import shutil
import tempfile

import pytest

# Must be set before JAX initialises its backends.
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

_CACHE_DIR = pytest.StashKey[str]()


def pytest_configure(config):
  """Every program compiled in this session is kept in JAX's persistent compilation cache, which
  the xdist workers and the tests' subprocesses inherit through the environment (set here, in
  the controller, before they start): a test that builds a program another test compiled loads
  it instead of compiling it again. Results are the same program's either way."""
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    config.stash[_CACHE_DIR] = tempfile.mkdtemp(prefix="swan-optax-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = config.stash[_CACHE_DIR]
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


def pytest_unconfigure(config):
  """The process that made the cache removes it when the session ends."""
  if _CACHE_DIR in config.stash:
    shutil.rmtree(config.stash[_CACHE_DIR])
