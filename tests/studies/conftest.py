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


def assert_one_training_step(config, *, num_classes: int = 10) -> None:
  """`config`'s model builds and one optimiser step on a random 32×32 batch gives a finite loss and moves the
  parameters (what a paper-scale variant can be checked for on a CPU)."""
  import jax
  import numpy as np

  from rsim_jax.train import Program

  program = Program(config, (32, 32, 3), num_classes, total_steps=10, warmup_steps=0)
  state = program.init_state()
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(4, 32, 32, 3)).astype(np.float32), "label": np.arange(4, dtype=np.int32)}
  before = jax.tree.map(lambda a: np.asarray(a, np.float32), state["params"])  # the step donates `state`
  new_state, metrics = program.train_step(state, batch)
  assert np.isfinite(float(metrics["loss"]))
  moved = jax.tree.map(lambda a, b: float(np.abs(a - np.asarray(b, np.float32)).max()), before, new_state["params"])
  assert max(jax.tree.leaves(moved)) > 0
