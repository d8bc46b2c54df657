"""Block pruning: the accuracy of a residual network with some of its residual blocks removed.

Nguyen, Raghu & Kornblith 2021 ("Do Wide and Deep Networks Learn the Same Things?", Sec. 4, Fig. 6) delete
residual blocks of trained ResNets and find that blocks *inside* the block structure can be removed with
little loss of test accuracy, while removing blocks outside it costs more: the layers of a block propagate
one dominant component instead of refining the representation. Removing a block means replacing it by its
identity shortcut, `y = x` (Veit et al. 2016, "Residual networks behave like ensembles of relatively
shallow networks"); only blocks with an identity shortcut can be removed (a projection block changes the
shape).

For a set R of removed blocks the pruned accuracy is

    acc(R) = (1/N) Σ_n [argmax_c f_R(x_n)_c = y_n],

with f_R the network whose blocks in R are identities (`model(x, keep_blocks=mask)`). `pruning_curve`
measures acc({b}) for every removable block b alone and acc({b_1..b_j}) for the prefixes of an order.
All patterns share one compiled forward pass (the mask is a traced argument), evaluated in one pass over
the data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _check_residual(model) -> None:
  if not (hasattr(model, "blocks") and hasattr(model, "block_prefixes")):
    raise ValueError(f"`model` must be a residual model with `blocks` and `block_prefixes` (ResNet, WideResNet, "
                     f"ImageNetResNet); got {type(model).__name__}.")


def prunable_blocks(model) -> tuple[str, ...]:
  """Names (`model.block_prefixes` entries, e.g. `"stage2.block3"`) of the blocks with an identity shortcut."""
  _check_residual(model)
  return tuple(p for p, b in zip(model.block_prefixes, model.blocks) if b.proj is None)


def keep_mask(model, removed: Collection[str]) -> np.ndarray:
  """The bool mask `(len(model.blocks),)` for `model(x, keep_blocks=...)` that removes the blocks `removed`.

  Raises:
    ValueError: naming unknown blocks, or blocks with a projection shortcut (which cannot be removed).
  """
  _check_residual(model)
  if isinstance(removed, str):
    removed = (removed,)
  removed = set(removed)
  unknown = sorted(removed - set(model.block_prefixes))
  if unknown:
    raise ValueError(f"`removed` names unknown blocks {unknown}; blocks are named like "
                     f"{model.block_prefixes[:2]} (see `model.block_prefixes`).")
  fixed = sorted(removed - set(prunable_blocks(model)))
  if fixed:
    raise ValueError(f"Blocks {fixed} have a projection shortcut (they change the shape) and cannot be removed; "
                     f"removable blocks are `prunable_blocks(model)`.")
  return np.array([p not in removed for p in model.block_prefixes], dtype=bool)


class PrunedModel:
  """A view of `model` with some residual blocks removed; shares (does not copy) the parameters.

  `pruned(x)` returns the logits of the pruned network (`model(x, keep_blocks=pruned.keep)`).
  """

  def __init__(self, model, removed: Collection[str]):
    self.model = model
    self.removed = tuple(sorted(set((removed,) if isinstance(removed, str) else removed)))
    self.keep = keep_mask(model, self.removed)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.model(x, keep_blocks=self.keep)


def prune_blocks(model, removed: Collection[str]) -> PrunedModel:
  """`model` with the residual blocks named in `removed` replaced by their identity shortcuts."""
  return PrunedModel(model, removed)


def pruned_accuracies(model, batches: Iterable[Mapping[str, np.ndarray]], keep_masks: np.ndarray, *,
                      patterns_per_call: int = 8) -> np.ndarray:
  """Test accuracy of `model` under each pruning pattern, in one pass over `batches`.

  Args:
    model: a trained residual NNX model (put in eval mode here: BatchNorm uses its running statistics).
    batches: dicts with "image" `(b, H, W, C)`, "label" `(b,)` and optionally "mask" `(b,)` (padding).
    keep_masks: bool `(P, num_blocks)`, one pattern per row (`keep_mask`); all-True = the full model.
    patterns_per_call: patterns evaluated together per batch (`lax.map` batch size; bounds memory).

  Returns:
    float64 `(P,)` accuracies.
  """
  from flax import nnx

  keep_masks = np.asarray(keep_masks, dtype=bool)
  if keep_masks.ndim != 2 or keep_masks.shape[1] != len(model.blocks):
    raise ValueError(f"`keep_masks` must be bool (P, {len(model.blocks)}) (one row per pattern); got shape "
                     f"{keep_masks.shape}.")
  for row in keep_masks:  # Validates names/projections once, on concrete values.
    keep_mask(model, [p for p, k in zip(model.block_prefixes, row) if not k])
  model.eval()
  graphdef, state = nnx.split(model)

  @jax.jit
  def correct_counts(state, images, labels, valid, masks):
    net = nnx.merge(graphdef, state)

    def one(mask):
      pred = jnp.argmax(net(images, keep_blocks=mask), axis=-1)
      return jnp.sum((pred == labels) & valid)

    return jax.lax.map(one, masks, batch_size=min(patterns_per_call, masks.shape[0]))

  masks = jnp.asarray(keep_masks)
  correct = np.zeros(len(keep_masks), np.int64)
  total = 0
  for batch in batches:
    labels = np.asarray(batch["label"])
    valid = np.asarray(batch.get("mask", np.ones(labels.shape, bool)), bool)
    correct += np.asarray(correct_counts(state, jnp.asarray(batch["image"]), jnp.asarray(labels),
                                         jnp.asarray(valid), masks))
    total += int(valid.sum())
  if total == 0:
    raise ValueError("`batches` held no (unmasked) examples.")
  return correct / total


@dataclasses.dataclass(frozen=True)
class PruningCurve:
  """Accuracies of a residual network with blocks removed.

  Attributes:
    blocks: the removable blocks, in network order.
    full_accuracy: accuracy of the unpruned network.
    single_accuracy: `(len(blocks),)`, accuracy with only `blocks[i]` removed.
    order: the order of cumulative removal.
    cumulative_accuracy: `(len(order),)`, accuracy with `order[:j + 1]` removed.
  """

  blocks: tuple[str, ...]
  full_accuracy: float
  single_accuracy: np.ndarray
  order: tuple[str, ...]
  cumulative_accuracy: np.ndarray

  def single_drop(self) -> dict[str, float]:
    """`full_accuracy − single_accuracy` per block (positive = removing it hurts)."""
    return {b: float(self.full_accuracy - a) for b, a in zip(self.blocks, self.single_accuracy)}

  def to_json(self) -> dict:
    return {"blocks": list(self.blocks), "full_accuracy": float(self.full_accuracy),
            "single_accuracy": [float(a) for a in self.single_accuracy], "order": list(self.order),
            "cumulative_accuracy": [float(a) for a in self.cumulative_accuracy]}


def pruning_curve(model, batches: Iterable[Mapping[str, np.ndarray]], *, order: Sequence[str] | None = None,
                  patterns_per_call: int = 8) -> PruningCurve:
  """Accuracy after removing each removable block alone, and after removing blocks cumulatively in `order`.

  Args:
    model: a trained residual NNX model.
    batches: evaluation batches (iterated once).
    order: removable block names for the cumulative curve; default: from the last block back to the
      first (deleting the deepest blocks first).
    patterns_per_call: as `pruned_accuracies`.
  """
  blocks = prunable_blocks(model)
  if not blocks:
    raise ValueError(f"{type(model).__name__} has no removable blocks (every block has a projection shortcut).")
  order = tuple(blocks[::-1] if order is None else order)
  if len(set(order)) != len(order):
    raise ValueError(f"`order` repeats blocks: {order}.")
  keep_mask(model, order)  # Names must be removable.
  patterns = [keep_mask(model, ())]
  patterns += [keep_mask(model, (b,)) for b in blocks]
  patterns += [keep_mask(model, order[:j + 1]) for j in range(len(order))]
  acc = pruned_accuracies(model, batches, np.stack(patterns), patterns_per_call=patterns_per_call)
  return PruningCurve(blocks=blocks, full_accuracy=float(acc[0]), single_accuracy=acc[1:1 + len(blocks)],
                      order=order, cumulative_accuracy=acc[1 + len(blocks):])


def block_layer_span(model, block: str) -> tuple[int, int]:
  """Indices in `model.layer_names` of the first and last captured layer of residual block `block`."""
  idx = [i for i, n in enumerate(model.layer_names) if n.startswith(block + ".")]
  if not idx:
    raise ValueError(f"`block` {block!r} is not a residual block of this model ({model.block_prefixes[:2]} ...).")
  return idx[0], idx[-1]


def inside_outside_drops(curve: PruningCurve, model, *, start: int, end: int) -> dict:
  """Mean single-block accuracy drop for blocks inside vs outside the layer run `start..end` (inclusive).

  A block is inside when its output layer (`<block>.out`) lies in the run; `start`/`end` index
  `model.layer_names` (the block detector's run, `rsim_jax.analysis.block_structure`).
  """
  drops = curve.single_drop()
  inside = [b for b in curve.blocks if start <= block_layer_span(model, b)[1] <= end]
  outside = [b for b in curve.blocks if b not in inside]

  def mean(names):
    return float(np.mean([drops[b] for b in names])) if names else None  # None: no block on that side.

  return {"inside": inside, "outside": outside, "mean_drop_inside": mean(inside),
          "mean_drop_outside": mean(outside)}


def block_pruning(model, batches: Iterable[Mapping[str, np.ndarray]], block: tuple[int, int] | None) -> dict | None:
  """The block-pruning measurement of Nguyen et al. (2021, Sec. 4) of one trained network, as JSON.

  Test accuracy with each removable residual block deleted alone and cumulatively from the last block back
  (`pruning_curve`), the layer index of each block's output (`block_layer_span`), and the mean single-block
  drop of the blocks inside vs outside the layer run `block = (start, end)` (`inside_outside_drops`; None:
  no block, every block is outside).

  Returns:
    `PruningCurve.to_json()` + `{"block_output_layer": [...], "inside", "outside", "mean_drop_inside",
    "mean_drop_outside"}`; None when the model has no removable block.
  """
  if not prunable_blocks(model):
    return None
  curve = pruning_curve(model, batches)
  result = curve.to_json()
  result["block_output_layer"] = [block_layer_span(model, b)[1] for b in curve.blocks]
  start, end = block if block is not None else (-1, -2)
  result.update(inside_outside_drops(curve, model, start=start, end=end))
  return result
