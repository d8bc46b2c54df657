"""`TrainState`: the state of a training run as one typed pytree (jit, donation, sharding and checkpoints
treat it as a single tree of arrays).

The graph definitions of the model (`nnx.GraphDef`, static) live on the `Program`, not here: the state holds
arrays only, so a jit-compiled step is traced once per shape and the state is donated whole. There is no RNG
field: every random stream of a run (data order, augmentation) is a function of `(config.seed, step)`.

On disk (Orbax, `rsim_jax.train.checkpoint`) the state is the plain dict `to_checkpoint()` gives,
`{"step", "params", "model_state", "opt_state"}` — the layout of the checkpoints written before `TrainState`
was a class, so those restore unchanged (`from_checkpoint`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import flax.struct
import jax
import optax


@flax.struct.dataclass
class TrainState:
  """The arrays of a run at a step (a `flax.struct.dataclass` pytree; `state.replace(step=...)` makes a new one).

  Attributes:
    step: int32 scalar `()`: optimizer steps taken (the position in the data stream and the schedule).
    params: pure dict (`nnx.to_pure_dict`) of the model's `nnx.Param` values, float32 (e.g.
      `params["stem_conv"]["kernel"]` of shape `(3, 3, C, 16)`).
    model_state: pure dict of the model's other variables (BatchNorm running `mean`/`var`, `(features,)`).
    opt_state: the optax state of `params` (`optim.make_optimizer`: SGD momentum trace, weight-decay mask, ...).
  """

  step: jax.Array
  params: dict[str, Any]
  model_state: dict[str, Any]
  opt_state: optax.OptState

  CHECKPOINT_KEYS: ClassVar[tuple[str, ...]] = ("step", "params", "model_state", "opt_state")

  def to_checkpoint(self) -> dict[str, Any]:
    """The on-disk tree: `{"step", "params", "model_state", "opt_state"}` (the same leaves, in a dict)."""
    return {key: getattr(self, key) for key in self.CHECKPOINT_KEYS}

  @classmethod
  def from_checkpoint(cls, tree: Mapping[str, Any]) -> TrainState:
    """The `TrainState` of an on-disk tree (`to_checkpoint`'s dict, or one restored from an Orbax checkpoint
    of any version of this package)."""
    if not isinstance(tree, Mapping):
      raise ValueError(f"`tree` must be a mapping with keys {cls.CHECKPOINT_KEYS}, got {type(tree).__name__}.")
    missing = [k for k in cls.CHECKPOINT_KEYS if k not in tree]
    extra = sorted(set(tree) - set(cls.CHECKPOINT_KEYS))
    if missing or extra:
      raise ValueError(f"`tree` is not a training-state checkpoint: missing keys {missing}, unexpected keys "
                       f"{extra}; a train state has exactly {list(cls.CHECKPOINT_KEYS)}.")
    return cls(**{key: tree[key] for key in cls.CHECKPOINT_KEYS})

  def __getitem__(self, key: str) -> Any:
    """`state["params"]`: read access in the form of the dict the state used to be (for code written
    against it); prefer `state.params`."""
    if key not in self.CHECKPOINT_KEYS:
      raise KeyError(f"TrainState has no field {key!r}; its fields are {list(self.CHECKPOINT_KEYS)}.")
    return getattr(self, key)
