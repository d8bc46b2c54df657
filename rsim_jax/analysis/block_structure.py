"""Block structure in a CKA matrix, as a number (Nguyen, Raghu & Kornblith 2021, Sec. 4).

The "block structure" is a large, contiguous set of layers whose representations are all highly similar to
each other (a bright square in the within-model CKA heatmap), and whose first principal component carries
most of their variance: a dominant PC1 propagated through those layers (Nguyen et al. 2021, Sec. 4).

`find_block` returns the longest contiguous run of layers `[start, end]` whose *pairwise* CKA all exceed a
threshold. `block_vs_baseline` is the detector: neighbouring residual-block outputs are similar by
construction, so an untrained deep ResNet already has long runs of similar layers (usually in its last
stage); a block is therefore read against the same network at initialisation *at the same layers* — each
layer of the block must have a dominant first PC after training that it did not have before
(`dominated_layers`). Comparing the length of the trained run with the untrained run somewhere else hid real
blocks (DESIGN.md, "Block structure"). Compare block lengths only between models of equal depth.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

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

  @classmethod
  def from_json(cls, d: dict) -> "Block":
    """The inverse of `to_json` (names optional)."""
    return cls(d["start"], d["end"], d["size"], d["fraction"], d["mean_cka"], d["threshold"],
               tuple(d.get("names", ())))


def _check_matrix(cka: np.ndarray) -> np.ndarray:
  cka = np.asarray(cka, np.float64)
  if cka.ndim != 2 or cka.shape[0] != cka.shape[1]:
    raise ValueError(f"`cka` must be a square (num_layers, num_layers) matrix, got shape {cka.shape}.")
  if not np.all(np.isfinite(cka)):
    raise ValueError("`cka` contains NaN/Inf; compute it with on_undefined='raise' to find the layer.")
  return cka


def _mean_off_diagonal(cka: np.ndarray, start: int, end: int) -> float:
  """Mean CKA between distinct layers of `[start, end]` (inclusive); NaN for fewer than 2 layers."""
  size = end - start + 1
  if size < 2:
    return float("nan")
  inner = cka[start : end + 1, start : end + 1]
  return float(inner[~np.eye(size, dtype=bool)].mean())


def find_block(
    cka: np.ndarray,
    *,
    threshold: float = 0.9,
    min_size: int = 2,
    names: Sequence[str] | None = None,
    eligible: Sequence[bool] | None = None,
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
    eligible: optional `(L,)` bool; only runs of eligible layers count (`block_vs_baseline` passes the layers
      dominated by their first principal component).

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
  if eligible is not None:
    eligible = np.asarray(eligible, bool)
    if eligible.shape != (len(cka),):
      raise ValueError(f"`eligible` must have shape ({len(cka)},), one flag per layer; got {eligible.shape}.")
    above &= eligible[:, None] & eligible[None, :]  # an ineligible layer is similar to nothing, itself included
  best_start, best_size = 0, 0
  for start in range(num_layers):
    if not above[start, start]:
      continue
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
  mean_cka = _mean_off_diagonal(cka, best_start, end)
  block_names = tuple(names[best_start : end + 1]) if names is not None else ()
  return Block(best_start, end, best_size, best_size / num_layers, mean_cka, threshold, block_names)


@dataclasses.dataclass(frozen=True)
class BlockComparison:
  """A trained model's block, read against the same architecture at initialisation at the same layers.

  Attributes:
    trained: the detected block (`size == 0` when there is none): the longest contiguous run of *dominated*
      layers whose pairwise trained CKA are all ≥ the threshold. A layer is dominated when its first principal
      component carries ≥ `min_pc1` of its variance in the trained network and at least `min_pc1_gain` more
      than in the untrained network at the same layer.
    baseline: the untrained network's longest run of pairwise CKA ≥ the threshold (anywhere; for reference:
      deep untrained nets have long runs of trivially similar neighbours, usually not where the block is).
    trained_run: the trained network's longest run of pairwise CKA ≥ the threshold, dominated or not.
    size_gain: `trained.size − baseline.size`, kept for comparison with the earlier run-length rule.
    trained_pc1_fraction: mean trained PC1 fraction over the block's layers (over `trained_run` when there is
      no block; NaN without PC1 fractions).
    baseline_pc1_fraction: the same layers at initialisation.
    trained_mean_cka, baseline_mean_cka: mean off-diagonal CKA over the same layers, trained and untrained.
    cka_to_rest: mean trained CKA between the block's layers and all layers before it (how dark the block is
      against the early layers; NaN when the block starts at layer 0 or there is none).
    min_pc1, min_pc1_gain, min_size: the detector's settings.
  """

  trained: Block
  baseline: Block
  trained_run: Block
  size_gain: int
  trained_pc1_fraction: float
  baseline_pc1_fraction: float
  trained_mean_cka: float
  baseline_mean_cka: float
  cka_to_rest: float
  min_pc1: float
  min_pc1_gain: float
  min_size: int

  @property
  def has_block(self) -> bool:
    """A block: at least `min_size` contiguous, mutually similar layers, each dominated by its first PC well
    beyond the untrained network at the same layer (DESIGN.md, "Block structure")."""
    return self.trained.size >= self.min_size

  @property
  def pc1_contrast(self) -> float:
    return self.trained_pc1_fraction - self.baseline_pc1_fraction

  @property
  def cka_contrast(self) -> float:
    return self.trained_mean_cka - self.baseline_mean_cka

  def to_json(self) -> dict:
    return {
        "trained": self.trained.to_json(),
        "baseline": self.baseline.to_json(),
        "trained_run": self.trained_run.to_json(),
        "size_gain": self.size_gain,
        "trained_pc1_fraction": self.trained_pc1_fraction,
        "baseline_pc1_fraction": self.baseline_pc1_fraction,
        "pc1_contrast": self.pc1_contrast,
        "trained_mean_cka": self.trained_mean_cka,
        "baseline_mean_cka": self.baseline_mean_cka,
        "cka_contrast": self.cka_contrast,
        "cka_to_rest": self.cka_to_rest,
        "min_pc1": self.min_pc1,
        "min_pc1_gain": self.min_pc1_gain,
        "min_size": self.min_size,
        "has_block": self.has_block,
    }


def dominated_layers(trained_pc1: Sequence[float], baseline_pc1: Sequence[float], *, min_pc1: float = 0.5,
                     min_pc1_gain: float = 0.2) -> np.ndarray:
  """Layers whose first principal component dominates after training and did not before.

  Formula: `dominated_i = pc1_i ≥ min_pc1  and  pc1_i − pc1⁰_i ≥ min_pc1_gain`, with `pc1_i` the fraction of
  layer i's variance on its first principal component in the trained network and `pc1⁰_i` the same at
  initialisation. Nguyen et al. (2021, Sec. 4) show that a block is a dominant first PC propagated through a
  contiguous set of layers; deep He-initialised ResNets can have a large PC1 before training, hence the gain.

  Args:
    trained_pc1, baseline_pc1: `(L,)` PC1 variance fractions of the trained and untrained network.

  Returns:
    `(L,)` bool.
  """
  trained_pc1, baseline_pc1 = np.asarray(trained_pc1, np.float64), np.asarray(baseline_pc1, np.float64)
  if trained_pc1.ndim != 1 or trained_pc1.shape != baseline_pc1.shape:
    raise ValueError(f"`trained_pc1` {trained_pc1.shape} and `baseline_pc1` {baseline_pc1.shape} must both be "
                     "(num_layers,) PC1 fractions of the same layers.")
  if not (np.all(np.isfinite(trained_pc1)) and np.all(np.isfinite(baseline_pc1))):
    raise ValueError("PC1 fractions contain NaN/Inf (a constant layer?); check the activation sample.")
  if not 0.0 < min_pc1 <= 1.0 or not 0.0 <= min_pc1_gain < 1.0:
    raise ValueError(f"need 0 < `min_pc1` ≤ 1 and 0 ≤ `min_pc1_gain` < 1; got {min_pc1}, {min_pc1_gain}.")
  return (trained_pc1 >= min_pc1) & (trained_pc1 - baseline_pc1 >= min_pc1_gain)


def block_vs_baseline(
    trained_cka: np.ndarray,
    baseline_cka: np.ndarray,
    *,
    threshold: float = 0.9,
    trained_pc1: Sequence[float] | None = None,
    baseline_pc1: Sequence[float] | None = None,
    min_pc1: float = 0.5,
    min_pc1_gain: float = 0.2,
    min_size: int = 3,
    names: Sequence[str] | None = None,
) -> BlockComparison:
  """Detects the block structure of a trained network against the same network at initialisation.

  The block is the longest contiguous run of layers that (i) are all *dominated* (`dominated_layers`: PC1
  fraction ≥ `min_pc1` trained and ≥ `min_pc1_gain` above the untrained network at the same layer) and
  (ii) have all pairwise trained CKA ≥ `threshold`; a model has a block when that run has at least
  `min_size` layers. Reading the contrast at the same layers matters: neighbouring residual outputs of an
  untrained deep net are trivially similar, so its longest similar run (`baseline`) is long but sits
  elsewhere and carries no dominant PC, and comparing run lengths hides real blocks.

  Without PC1 fractions (`trained_pc1=None`) layers are dominated when their mean trained CKA with the other
  layers of the trained run exceeds the untrained network's over the same pairs by `min_pc1_gain`; prefer
  PC1 fractions (a sample of activations is cheap).

  Args:
    trained_cka, baseline_cka: `(L, L)` within-model CKA of the trained and the untrained network.
    threshold: CKA every pair of layers in the block must reach.
    trained_pc1, baseline_pc1: `(L,)` first-PC variance fractions per layer (both or neither).
    min_pc1, min_pc1_gain, min_size: the detector's settings (see above).
    names: optional layer names, copied into the blocks.
  """
  trained_cka, baseline_cka = _check_matrix(trained_cka), _check_matrix(baseline_cka)
  if trained_cka.shape != baseline_cka.shape:
    raise ValueError(
        f"`trained_cka` {trained_cka.shape} and `baseline_cka` {baseline_cka.shape} must come from the same "
        "architecture (same layers)."
    )
  if (trained_pc1 is None) != (baseline_pc1 is None):
    raise ValueError("Pass both `trained_pc1` and `baseline_pc1` (PC1 fractions at the same layers), or neither.")
  if min_size < 2:
    raise ValueError(f"`min_size` must be at least 2 layers, got {min_size}.")
  num_layers = len(trained_cka)
  run = find_block(trained_cka, threshold=threshold, names=names)
  baseline = find_block(baseline_cka, threshold=threshold, names=names)
  if trained_pc1 is not None:
    if np.shape(trained_pc1) != (num_layers,):
      raise ValueError(f"PC1 fractions must have shape ({num_layers},), got {np.shape(trained_pc1)}.")
    eligible = dominated_layers(trained_pc1, baseline_pc1, min_pc1=min_pc1, min_pc1_gain=min_pc1_gain)
  else:
    eligible = np.zeros(num_layers, bool)
    if run.size >= 2:
      span = slice(run.start, run.end + 1)
      gain = trained_cka[span, span].mean(axis=1) - baseline_cka[span, span].mean(axis=1)
      eligible[span] = gain >= min_pc1_gain
  block = find_block(trained_cka, threshold=threshold, names=names, eligible=eligible, min_size=min_size)
  ref = block if block.size else run  # the layers the contrasts are read at

  def mean_over(values):
    if values is None or ref.size == 0:
      return float("nan")
    return float(np.asarray(values, np.float64)[ref.start : ref.end + 1].mean())

  cka_to_rest = float("nan")
  if block.size and block.start:  # the block against every layer before it
    cka_to_rest = float(trained_cka[block.start : block.end + 1, : block.start].mean())
  return BlockComparison(
      trained=block, baseline=baseline, trained_run=run, size_gain=block.size - baseline.size,
      trained_pc1_fraction=mean_over(trained_pc1), baseline_pc1_fraction=mean_over(baseline_pc1),
      trained_mean_cka=_mean_off_diagonal(trained_cka, ref.start, ref.end),
      baseline_mean_cka=_mean_off_diagonal(baseline_cka, ref.start, ref.end),
      cka_to_rest=cka_to_rest, min_pc1=min_pc1, min_pc1_gain=min_pc1_gain, min_size=min_size,
  )


def block_confidence(
    block: Mapping | Block,
    cka: np.ndarray,
    cka_stderr: np.ndarray,
    *,
    threshold: float = 0.9,
    trained_pc1: Sequence[float] | None = None,
    trained_pc1_stderr: Sequence[float] | None = None,
    baseline_pc1: Sequence[float] | None = None,
    baseline_pc1_stderr: Sequence[float] | None = None,
) -> dict:
  """How sure a detected block is: its CKA and PC1 contrast with error bars, and how clearly its edges stand.

  Standard errors come from the same pass: the jackknife of minibatch CKA (`kernels.minibatch_cka_jackknife`)
  and a bootstrap over examples of the PC1 fraction (`analysis.uncertainty.pc1_fraction_bootstrap`).

  - `mean_cka ± mean_cka_stderr`: the block's mean off-diagonal CKA; its error is the mean of the entries' SEs
    (the entries share examples, so this is the correlated, conservative bound).
  - `weakest_pair_z`: `(min pair CKA − threshold) / its SE`: how many standard errors the block's least similar
    pair clears the threshold by (≥ 2: the block would survive resampling; < 1: borderline).
  - `edge_z` `[before, after]`: for the layer just outside each end, `(its least CKA to a block layer −
    threshold) / that entry's SE`; negative = the layer is excluded by CKA, by that many SEs (NaN where the
    block touches the first or last layer). A layer excluded only for lacking a dominant PC1 has edge_z > 0.
  - `pc1_contrast ± pc1_contrast_stderr`: mean over the block of trained − untrained PC1 fraction, SE from the
    layers' bootstrap SEs added in quadrature per layer and averaged (conservative).

  Args:
    block: the detected block (`Block`, or its JSON); size 0 → an empty dict.
    cka, cka_stderr: `(L, L)` trained minibatch CKA and its standard error (same pass).
    threshold: the detector's CKA threshold.
    trained_pc1, trained_pc1_stderr, baseline_pc1, baseline_pc1_stderr: `(L,)` PC1 fractions and their SEs.
  """
  start, end, size = ((block.start, block.end, block.size) if isinstance(block, Block)
                      else (block["start"], block["end"], block["size"]))
  if not size:
    return {}
  cka, se = np.asarray(cka, np.float64), np.asarray(cka_stderr, np.float64)
  if cka.shape != se.shape or cka.ndim != 2:
    raise ValueError(f"`cka` {cka.shape} and `cka_stderr` {se.shape} must be the same (L, L) matrix shape.")
  span = slice(start, end + 1)
  inside, inside_se = cka[span, span], se[span, span]
  off = ~np.eye(size, dtype=bool)
  weakest = np.unravel_index(np.argmin(np.where(off, inside, np.inf)), inside.shape)
  tiny = np.finfo(np.float64).tiny

  def z(value, error):
    return float((value - threshold) / max(error, tiny))

  def edge(layer):
    if layer < 0 or layer >= len(cka):
      return float("nan")
    row = cka[layer, span]
    j = int(np.argmin(row))
    return z(row[j], se[layer, start + j])

  out = {
      "mean_cka": float(inside[off].mean()), "mean_cka_stderr": float(inside_se[off].mean()),
      "weakest_pair": [int(start + weakest[0]), int(start + weakest[1])],
      "weakest_pair_cka": float(inside[weakest]), "weakest_pair_z": z(inside[weakest], inside_se[weakest]),
      "edge_z": [edge(start - 1), edge(end + 1)],
  }
  if trained_pc1 is not None and trained_pc1_stderr is not None and baseline_pc1 is not None:
    t, b = np.asarray(trained_pc1, np.float64)[span], np.asarray(baseline_pc1, np.float64)[span]
    t_se = np.asarray(trained_pc1_stderr, np.float64)[span]
    b_se = np.zeros_like(t_se) if baseline_pc1_stderr is None else np.asarray(baseline_pc1_stderr, np.float64)[span]
    out["pc1_contrast"] = float(np.mean(t - b))
    out["pc1_contrast_stderr"] = float(np.mean(np.sqrt(t_se ** 2 + b_se ** 2)))
  return out
