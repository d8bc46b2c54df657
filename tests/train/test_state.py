"""`TrainState` (a typed pytree) and its checkpoints: the on-disk tree is the dict the state used to be, so a
checkpoint written in the dict form (by the code before `TrainState` was a class) restores into a `TrainState`,
and a checkpoint written now reads as that dict with Orbax alone."""

import dataclasses

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from rsim_jax.train import Checkpointer, Program, TrainConfig, TrainState
from rsim_jax.train.checkpoint import CHECKPOINT_DIR, abstract_like

CONFIG = TrainConfig(model="mlp", model_kwargs={"hidden": (8,)}, data="fake", batch_size=4, progress=False,
                     num_steps=3)


def _program():
  return Program(CONFIG, (4, 4, 1), 3, total_steps=3, warmup_steps=0)


def _trained_state(program):
  """The state after one step (a non-zero momentum trace and step counter)."""
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(4, 4, 4, 1)).astype(np.float32), "label": np.arange(4, dtype=np.int32) % 3}
  state, _ = program.train_step(program.init_state(), batch)
  return jax.device_get(state)


def _assert_same_tree(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_fields_pytree_and_the_dict_form():
  program = _program()
  state = program.init_state()
  assert isinstance(state, TrainState)
  assert [f.name for f in dataclasses.fields(state)] == ["step", "params", "model_state", "opt_state"]
  assert state.step.dtype == np.int32 and int(state.step) == 0
  assert state.params["layers"][0]["kernel"].shape == (16, 8)  # a (4, 4, 1) image into 8 hidden units
  tree = state.to_checkpoint()
  assert list(tree) == ["step", "params", "model_state", "opt_state"]
  assert all(tree[key] is getattr(state, key) for key in tree)
  # step, 4 parameters, their 4 momentum traces, the schedule count: the same leaves (a dict flattens sorted)
  assert len(jax.tree.leaves(tree)) == len(jax.tree.leaves(state)) == 10
  _assert_same_tree(TrainState.from_checkpoint(tree), state)
  assert state["params"] is state.params  # the old dict access still reads
  with pytest.raises(KeyError, match="no field 'rng'"):
    state["rng"]
  with pytest.raises(ValueError, match=r"`tree`.*missing keys \['opt_state'\]"):
    TrainState.from_checkpoint({k: v for k, v in tree.items() if k != "opt_state"})
  abstract = program.abstract_state()
  assert isinstance(abstract, TrainState) and abstract.params["layers"][0]["kernel"].shape == (16, 8)
  assert isinstance(abstract.step, jax.ShapeDtypeStruct)


def test_a_checkpoint_written_in_the_dict_form_restores(tmp_path):
  """What the code before `TrainState` wrote: a dict state through `StandardSave` under item "state"."""
  program = _program()
  state = _trained_state(program)
  old_form = {"step": state.step, "params": state.params, "model_state": state.model_state,
              "opt_state": state.opt_state}
  manager = ocp.CheckpointManager(tmp_path / CHECKPOINT_DIR, options=ocp.CheckpointManagerOptions(create=True),
                                  item_names=("state", "meta"))
  manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(old_form),
                                          meta=ocp.args.JsonSave({"step": 1, "epoch": 0.5})), force=True)
  manager.wait_until_finished()
  manager.close()
  ckpt = Checkpointer(tmp_path)
  try:
    restored, meta = ckpt.restore(program.abstract_state())
  finally:
    ckpt.close()
  assert isinstance(restored, TrainState) and meta == {"step": 1, "epoch": 0.5}
  assert int(restored.step) == 1
  _assert_same_tree(restored, state)
  assert float(np.abs(np.asarray(jax.tree.leaves(restored.opt_state)[0])).max()) > 0  # a real momentum trace


def test_a_checkpoint_written_now_is_the_dict_form_on_disk(tmp_path):
  program = _program()
  state = _trained_state(program)
  ckpt = Checkpointer(tmp_path, async_save=False)
  ckpt.save(1, state, {"step": 1})
  ckpt.close()
  manager = ocp.CheckpointManager(tmp_path / CHECKPOINT_DIR, item_names=("state", "meta"))
  abstract = abstract_like(state.to_checkpoint())
  restored = manager.restore(1, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
  manager.close()
  assert isinstance(restored, dict) and sorted(restored) == ["model_state", "opt_state", "params", "step"]
  _assert_same_tree(restored, state.to_checkpoint())
