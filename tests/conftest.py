"""Every test sees 8 simulated CPU devices, so sharded code paths run on one machine."""

import os

# Must happen before JAX initialises its backends (i.e. before the first array is made).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
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
