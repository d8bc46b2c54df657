"""Cross-model CKA inside vs outside the block structure (Nguyen, Raghu & Kornblith 2021, Sec. 5).

Without a block, corresponding layers of two models (another seed, or a wider/deeper architecture) are
similar at about the same *relative* depth; inside a block, representations are unique to each model.
Corresponding layers are matched by relative depth `i / (L − 1)`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from rsim_jax.analysis import uncertainty
from rsim_jax.analysis.block_structure import Block


def corresponding_layers(num_a: int, num_b: int) -> np.ndarray:
  """`(num_a,)` index into model B of the layer at the nearest relative depth to each layer of A."""
  if num_a < 1 or num_b < 1:
    raise ValueError(f"Both models need layers, got {num_a} and {num_b}.")
  rel_a = np.arange(num_a) / max(num_a - 1, 1)
  rel_b = np.arange(num_b) / max(num_b - 1, 1)
  return np.abs(rel_a[:, None] - rel_b[None, :]).argmin(axis=1)


@dataclasses.dataclass(frozen=True)
class CrossModelSummary:
  """Mean CKA of corresponding layers, split by whether either layer lies in its model's block."""

  inside_mean: float  # pairs with a layer inside A's or B's block (NaN if none)
  outside_mean: float  # pairs with both layers outside the blocks (NaN if none)
  num_inside: int
  num_outside: int
  corresponding_cka: np.ndarray  # (num_a,) CKA of layer i of A with its corresponding layer of B
  best_match_cka: np.ndarray  # (num_a,) max over B's layers

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d["corresponding_cka"] = np.asarray(self.corresponding_cka).tolist()
    d["best_match_cka"] = np.asarray(self.best_match_cka).tolist()
    return d


def _in_block(block: Block | None, n: int) -> np.ndarray:
  inside = np.zeros(n, bool)
  if block is not None and block.size > 0:
    inside[block.start : block.end + 1] = True
  return inside


def summarize_cross_cka(cross_cka, block_a: Block | None, block_b: Block | None) -> CrossModelSummary:
  """Summarises an `(L_A, L_B)` cross-model CKA matrix against each model's block (None: no block)."""
  cross = np.asarray(cross_cka, np.float64)
  if cross.ndim != 2:
    raise ValueError(f"`cross_cka` must be (layers of A, layers of B), got shape {cross.shape}.")
  num_a, num_b = cross.shape
  match = corresponding_layers(num_a, num_b)
  corresponding = cross[np.arange(num_a), match]
  inside = _in_block(block_a, num_a) | _in_block(block_b, num_b)[match]

  def mean(values):
    return float(values.mean()) if values.size else float("nan")

  return CrossModelSummary(
      mean(corresponding[inside]), mean(corresponding[~inside]), int(inside.sum()), int((~inside).sum()),
      corresponding, cross.max(axis=1),
  )


def cross_seed_profile(corresponding: Mapping[tuple[int, int], np.ndarray], *, num_resamples: int = 2000,
                       seed: int = 0) -> dict:
  """Cross-seed CKA of corresponding layers, averaged over pairs of seeds, with a bootstrap over seeds.

  Nguyen et al. (2021, Sec. 5) compare models of one architecture trained from different seeds: outside the
  block their corresponding layers are similar, inside it they are not. With S ≥ 3 seeds the mean over the
  S(S−1)/2 pairs gets an error bar from resampling the *seeds* (`analysis.uncertainty.seed_bootstrap`; pairs
  that share a seed are not independent).

  Args:
    corresponding: `(seed_a, seed_b)` → `(L,)` CKA of every layer of seed a's model with the same layer of
      seed b's (`CrossModelSummary.corresponding_cka`), for unordered pairs of distinct seeds (≥ 3 seeds).
    num_resamples, seed: of the bootstrap.

  Returns:
    `{"seeds", "num_pairs", "per_layer": {"estimate", "stderr", "low", "high"} (lists of L),
    "mean_over_layers": the same keys, scalars}`; low/high are the 95% percentile interval.
  """
  per_layer = uncertainty.seed_bootstrap(corresponding, num_resamples=num_resamples, seed=seed)
  overall = uncertainty.seed_bootstrap({k: float(np.mean(v)) for k, v in corresponding.items()},
                                       num_resamples=num_resamples, seed=seed)

  def as_json(b, convert):
    return {"estimate": convert(b.estimate), "stderr": convert(b.stderr), "low": convert(b.low),
            "high": convert(b.high)}

  return {"seeds": sorted({s for pair in corresponding for s in pair}), "num_pairs": len(corresponding),
          "per_layer": as_json(per_layer, lambda a: np.asarray(a, np.float64).tolist()),
          "mean_over_layers": as_json(overall, float)}
