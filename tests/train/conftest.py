import pytest

from rsim_jax.train import loop
from tests.train import fake_data


@pytest.fixture
def fake_data_package(monkeypatch):
  """Runs `train` on the small synthetic stand-in for `rsim_jax.data` (tests/train/fake_data.py)."""
  monkeypatch.setattr(loop, "_data", lambda: fake_data)
  return fake_data
