"""Block structure in a CKA matrix, as a number (Nguyen, Raghu & Kornblith 2021, Sec. 4).

The "block structure" is a large, contiguous set of layers whose representations are all highly similar to
each other (a bright square in the within-model CKA heatmap). `find_block` returns the longest contiguous
run of layers `[start, end]` whose *pairwise* CKA all exceed `threshold`.

Neighbouring residual-block outputs are similar by construction, so an untrained ResNet already scores a
long run: always compare a trained network with the same architecture at initialisation
(`block_vs_baseline`), and compare block lengths only between models of equal depth
(shared/papers/NOTES.md). Within a genuine block the first principal component carries most of the variance
(`rsim_jax.kernels.first_pc_fraction`), which separates a real block from a chain of similar neighbours.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Block:
  """The longest contiguous run of layers with all pairwise CKA ≥ threshold.

  Attributes:
    start, end: first and last layer index of the run (inclusive); `end < start` when no run of
      `min_size` layers exists.
    size: number of layers in the run (0 when none).
    fraction: `size / num_layers`.
    mean_cka: mean off-diagonal CKA inside the run (NaN for runs of fewer than 2 layers).
    threshold: the threshold used.
    names: layer names of the run, when names were given.
  """

  start: int
  end: int
  size: int
  fraction: float
  mean_cka: float
  threshold: float
  names: tuple[str, ...] = ()

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def _check_matrix(cka: np.ndarray) -> np.ndarray:
  cka = np.asarray(cka, np.float64)
  if cka.ndim != 2 or cka.shape[0] != cka.shape[1]:
    raise ValueError(f"`cka` must be a square (num_layers, num_layers) matrix, got shape {cka.shape}.")
  if not np.all(np.isfinite(cka)):
    raise ValueError("`cka` contains NaN/Inf; compute it with on_undefined='raise' to find the layer.")
  return cka


def find_block(
    cka: np.ndarray,
    *,
    threshold: float = 0.9,
    min_size: int = 2,
    names: Sequence[str] | None = None,
) -> Block:
  """Longest contiguous run of layers whose pairwise CKA are all ≥ `threshold`.

  Formula: the largest `e − s + 1` such that `min_{s ≤ i, j ≤ e} CKA_ij ≥ threshold`; ties go to the run
  that starts first. O(L²) time: runs are grown from each start while the new layer's row stays above the
  threshold (a run's minimum only falls as it grows, so the scan can stop at the first failure).

  Args:
    cka: `(L, L)` within-model CKA matrix (layers ordered input → output).
    threshold: similarity a pair must reach to count as "the same representation".
    min_size: shortest run reported as a block.
    names: optional layer names, copied into the result.

  Returns:
    A `Block` (size 0 when no run of `min_size` layers exists).
  """
  cka = _check_matrix(cka)
  if not 0.0 < threshold <= 1.0:
    raise ValueError(f"`threshold` must be in (0, 1], got {threshold}.")
  if min_size < 1:
    raise ValueError(f"`min_size` must be at least 1, got {min_size}.")
  num_layers = len(cka)
  sym = np.minimum(cka, cka.T)  # a pair counts only if it is similar both ways (exactly symmetric for one model)
  above = sym >= threshold
  best_start, best_size = 0, 0
  for start in range(num_layers):
    end = start
    # Grow while the next layer is above the threshold with every layer already in the run.
    while end + 1 < num_layers and above[end + 1, start : end + 2].all():
      end += 1
    size = end - start + 1
    if size > best_size:
      best_start, best_size = start, size
    if best_size >= num_layers - start:
      break
  if best_size < min_size:
    return Block(0, -1, 0, 0.0, float("nan"), threshold, ())
  end = best_start + best_size - 1
  inner = cka[best_start : end + 1, best_start : end + 1]
  off_diagonal = ~np.eye(best_size, dtype=bool)
  mean_cka = float(inner[off_diagonal].mean()) if best_size > 1 else float("nan")
  block_names = tuple(names[best_start : end + 1]) if names is not None else ()
  return Block(best_start, end, best_size, best_size / num_layers, mean_cka, threshold, block_names)


@dataclasses.dataclass(frozen=True)
class BlockComparison:
  """A trained model's block against the same architecture at initialisation."""

  trained: Block
  baseline: Block
  size_gain: int  # trained.size − baseline.size
  trained_pc1_fraction: float  # mean first-PC variance fraction over the trained block's layers (NaN if unknown)
  baseline_pc1_fraction: float  # the same over the same layers at initialisation

  @property
  def has_block(self) -> bool:
    """A block beyond the untrained baseline: longer than it, and dominated by its first PC (NOTES.md)."""
    return self.size_gain > 0 and self.trained_pc1_fraction > max(0.5, self.baseline_pc1_fraction)

  def to_json(self) -> dict:
    return {
        "trained": self.trained.to_json(),
        "baseline": self.baseline.to_json(),
        "size_gain": self.size_gain,
        "trained_pc1_fraction": self.trained_pc1_fraction,
        "baseline_pc1_fraction": self.baseline_pc1_fraction,
        "has_block": self.has_block,
    }


def block_vs_baseline(
    trained_cka: np.ndarray,
    baseline_cka: np.ndarray,
    *,
    threshold: float = 0.9,
    trained_pc1: Sequence[float] | None = None,
    baseline_pc1: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
) -> BlockComparison:
  """Compares the block of a trained model with the same architecture at initialisation.

  Args:
    trained_cka, baseline_cka: `(L, L)` within-model CKA of the trained and the untrained network.
    trained_pc1, baseline_pc1: optional per-layer first-PC variance fractions `(L,)`, averaged over the
      trained block's layers.
  """
  trained_cka, baseline_cka = _check_matrix(trained_cka), _check_matrix(baseline_cka)
  if trained_cka.shape != baseline_cka.shape:
    raise ValueError(
        f"`trained_cka` {trained_cka.shape} and `baseline_cka` {baseline_cka.shape} must come from the same "
        "architecture (same layers)."
    )
  trained = find_block(trained_cka, threshold=threshold, names=names)
  baseline = find_block(baseline_cka, threshold=threshold, names=names)

  def mean_over_block(values):
    if values is None or trained.size == 0:
      return float("nan")
    values = np.asarray(values, np.float64)
    if values.shape != (len(trained_cka),):
      raise ValueError(f"PC1 fractions must have shape ({len(trained_cka)},), got {values.shape}.")
    return float(values[trained.start : trained.end + 1].mean())

  return BlockComparison(
      trained, baseline, trained.size - baseline.size, mean_over_block(trained_pc1), mean_over_block(baseline_pc1)
  )
