"""Orbax checkpoints of the training state: periodic saves, keep-k, restore of the latest (or a given) step.

A checkpoint holds the whole `TrainState` (`step`, `params`, `model_state` = BatchNorm statistics,
`opt_state`) plus a small JSON `meta` (epoch, data position). The data order and augmentation are functions
of `(seed, step)`, so restoring the step restores every random stream, and a resumed run continues exactly
where the interrupted one stood.

On disk the state is the plain dict `TrainState.to_checkpoint()` gives (`{"step", "params", "model_state",
"opt_state"}`): the layout of the checkpoints written when the state was a dict, so those restore into a
`TrainState`, and checkpoints written now read as that dict with Orbax alone. The conversion happens here, at
the checkpoint boundary; any other pytree is saved and restored as it is.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from rsim_jax import io
from rsim_jax.train.state import TrainState

CHECKPOINT_DIR = "checkpoints"


class Checkpointer:
  """A thin wrapper of `orbax.checkpoint.CheckpointManager` under `workdir/checkpoints`.

  Saves are asynchronous (training continues while the arrays are written); `close()` waits for them.
  `workdir` may be local or `gs://…`. On a multi-host slice every process makes the same calls (Orbax
  coordinates them: each process writes its shards, process 0 the metadata), and every process must see the
  same directory (a bucket or a shared file system).
  """

  def __init__(self, workdir: io.PathLike, *, keep: int = 2, async_save: bool = True):
    workdir = io.path(workdir)
    if not io.is_remote(workdir):
      workdir = io.path(os.path.abspath(os.fspath(workdir)))  # Orbax wants absolute local paths
    self.directory = workdir / CHECKPOINT_DIR
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Saves `state` (a `TrainState`, written as its dict, or any pytree of arrays) and the JSON `meta` as
    step `step` (asynchronously; nothing is written if that step is already saved)."""
    if step in self.manager.all_steps():
      return
    if isinstance(state, TrainState):
      state = state.to_checkpoint()
    self.manager.save(
        int(step), args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
        force=True,
    )

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Restores `step` (default: the latest) into the structure, dtypes and shardings of `abstract_state`
    (a pytree of `jax.ShapeDtypeStruct`; a `TrainState` of them restores a `TrainState`, from checkpoints of
    the dict form too).

    Returns:
      `(state, meta)`.
    """
    step = self.latest_step() if step is None else int(step)
    if step is None or step not in self.manager.all_steps():
      raise FileNotFoundError(
          f"No checkpoint{'' if step is None else f' at step {step}'} in {self.directory} "
          f"(available steps: {self.all_steps()})."
      )
    typed = isinstance(abstract_state, TrainState)
    target = abstract_state.to_checkpoint() if typed else abstract_state
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()),
    )
    state = TrainState.from_checkpoint(restored["state"]) if typed else restored["state"]
    return state, restored["meta"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(tree: Any, sharding: jax.sharding.Sharding | None = None) -> Any:
  """`jax.ShapeDtypeStruct`s of `tree`'s arrays, placed with `sharding` when given."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
