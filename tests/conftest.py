"""Test setup: 8 virtual CPU devices (for mesh tests), CPU platform even with libtpu installed."""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The tests' programs are small and compiled once each, so compile time dominates the suite:
# LLVM's optimization level 0 compiles them 2-3x faster (semantics unchanged; the benchmarks in
# tools/ run at the default level).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8"
                           " --xla_backend_optimization_level=0").strip()
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
# Tests and the tools they start each load libtpu for AOT compilation; let them share it.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import jax  # noqa: E402
import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def repo_root():
  return REPO
