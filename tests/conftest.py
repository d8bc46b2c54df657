"""Every test sees 8 simulated CPU devices, so sharded code paths run on one machine."""

import os

# Must happen before JAX initialises its backends (i.e. before the first array is made).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# 8 simulated devices are 8 threads that must meet at every collective. On a loaded 2-core machine one can be
# descheduled past XLA:CPU's rendezvous termination timeout, which aborts the whole process ("Termination timeout
# ... exceeded"); seen once in a full run while four training jobs shared the cores. Spawned processes (the
# multi-host tests) inherit the setting.
if "xla_cpu_collective_timeout_seconds" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_collective_timeout_seconds=900").strip()
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir():
  """`../shared/data` beside the checkout; tests that need it are skipped where it is absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip("../shared/data is not present on this machine")
  return SHARED_DATA
