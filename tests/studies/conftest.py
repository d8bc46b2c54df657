import sys

import pytest


@pytest.fixture
def fake_data(monkeypatch):
  """Runs a study on the small synthetic stand-in for `rsim_jax.data` (tests/train/fake_data.py)."""
  from tests.train import fake_data as module

  monkeypatch.setitem(sys.modules, "rsim_jax.data", module)
  import rsim_jax

  monkeypatch.setattr(rsim_jax, "data", module, raising=False)
  return module
