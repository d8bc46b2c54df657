"""Intrinsic-dimension profiles: how the dimension of a network's representation changes from layer to layer.

Recanatesi et al. 2019 ("Dimensionality compression and expansion in Deep Neural Networks") and Ansuini et
al. 2019 ("Intrinsic dimension of data representations in deep neural networks") measure, at every layer ℓ,
the intrinsic dimension (ID) of the point cloud {h_ℓ(x_n)} of a fixed sample of inputs:

    ID_ℓ = TwoNN on a random 90% of the points, mean ± std over repeats     (Ansuini et al. 2019, Sec. 2)
    PR_ℓ = (Σ_i λ_i)² / Σ_i λ_i²   (participation ratio of the covariance eigenvalues λ; a linear dimension)

and find that trained networks *expand* the ID over the first layers and *compress* it towards the output
(ID of the last hidden layer ≪ ID of the input, and lower the better the network generalises). The kernels
(`rsim_jax.kernels.twonn_subsampled`, `participation_ratio`, `twonn_scaling`) do the estimating; this
module runs them over layers and reads the shape of the profile.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from rsim_jax import kernels


@dataclasses.dataclass(frozen=True)
class IDProfile:
  """Per-layer intrinsic dimension, input to output.

  Attributes:
    layer_names: `(L,)` names.
    intrinsic_dim: `(L,)` TwoNN mean over random subsets.
    intrinsic_dim_std: `(L,)` its standard deviation over the subsets.
    participation_ratio: `(L,)` PR of the layer's covariance.
    embedding_dim: `(L,)` number of features of the layer (flattened).
    num_points: points of the sample (before subsampling).
    collapsed: layers whose points all coincide (e.g. every ReLU dead after a diverged run): dimension 0,
      reported as ID = PR = 0 rather than as an error.
  """

  layer_names: tuple[str, ...]
  intrinsic_dim: np.ndarray
  intrinsic_dim_std: np.ndarray
  participation_ratio: np.ndarray
  embedding_dim: np.ndarray
  num_points: int
  collapsed: tuple[str, ...] = ()

  def to_json(self) -> dict:
    return {"layer_names": list(self.layer_names), "intrinsic_dim": self.intrinsic_dim.tolist(),
            "intrinsic_dim_std": self.intrinsic_dim_std.tolist(),
            "participation_ratio": self.participation_ratio.tolist(), "embedding_dim": self.embedding_dim.tolist(),
            "num_points": self.num_points, "collapsed": list(self.collapsed)}

  @classmethod
  def from_json(cls, d: Mapping) -> "IDProfile":
    return cls(tuple(d["layer_names"]), np.asarray(d["intrinsic_dim"]), np.asarray(d["intrinsic_dim_std"]),
               np.asarray(d["participation_ratio"]), np.asarray(d["embedding_dim"]), int(d["num_points"]),
               tuple(d.get("collapsed", ())))


def _flat(x, name: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim < 2:
    raise ValueError(f"activations[{name!r}] must be (n, ...) with one row per example; got shape {x.shape}.")
  return x.reshape(x.shape[0], -1).astype(np.float32)


def id_profile(activations: Mapping[str, np.ndarray], *, fraction: float = 0.9, repeats: int = 5, seed: int = 0,
               discard_fraction: float = 0.1, duplicates: str = "drop") -> IDProfile:
  """TwoNN (subsampled mean ± std) and participation ratio of every layer.

  Args:
    activations: layer name → `(n, ...)` activations of the same n examples, input to output (include the
      input itself under a name such as "input" to see the expansion from it).
    fraction, repeats: subsets of `fraction·n` points, `repeats` of them (Ansuini et al.: 0.9 and a few).
    seed: seed of the subsets (the same for every layer).
    discard_fraction, duplicates: as `kernels.twonn` (duplicates: "drop" warns and drops repeated points,
      common after ReLU in narrow layers and in the logits of saturated networks).

  Returns:
    An `IDProfile`.
  """
  if not activations:
    raise ValueError("`activations` is empty; pass layer name → (n, ...) arrays.")
  names = tuple(activations)
  flats = [_flat(activations[n], n) for n in names]
  counts = {x.shape[0] for x in flats}
  if len(counts) != 1:
    raise ValueError(f"Every layer of `activations` must hold the same examples; got row counts "
                     f"{ {n: x.shape[0] for n, x in zip(names, flats)} }.")
  key = jax.random.key(seed)
  ids, stds, prs, collapsed = [], [], [], []
  for name, x in zip(names, flats):
    if not np.all(np.isfinite(x)):
      raise ValueError(f"activations[{name!r}] holds NaN or Inf.")
    if np.all(x == x[:1]):
      collapsed.append(name)
      ids.append(0.0)
      stds.append(0.0)
      prs.append(0.0)
      continue
    sub = kernels.twonn_subsampled(x, key=key, fraction=fraction, repeats=repeats,
                                   discard_fraction=discard_fraction, duplicates=duplicates)
    ids.append(sub.mean)
    stds.append(sub.std)
    prs.append(float(kernels.participation_ratio(x)))
  return IDProfile(names, np.array(ids, np.float64), np.array(stds, np.float64), np.array(prs, np.float64),
                   np.array([x.shape[1] for x in flats]), counts.pop(), tuple(collapsed))


@dataclasses.dataclass(frozen=True)
class ProfileShape:
  """Expansion then compression, read off a profile.

  Attributes:
    peak_layer: name of the layer of largest ID.
    peak_index: its index.
    first, peak, last: ID at the first layer (e.g. the input), at the peak, at the last layer considered.
    expansion: peak / first (> 1: the ID rises over the early layers).
    compression: peak / last (> 1: it falls towards the output).
    expands, compresses: the ratios exceed 1 + `tolerance`.
  """

  peak_layer: str
  peak_index: int
  first: float
  peak: float
  last: float
  expansion: float
  compression: float
  expands: bool
  compresses: bool

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def profile_shape(profile: IDProfile, *, tolerance: float = 0.1, exclude: Sequence[str] = ("logits",)) -> ProfileShape:
  """Where the ID peaks and by how much it expands before and compresses after (Recanatesi et al. 2019).

  Args:
    profile: an `IDProfile`.
    tolerance: relative change that counts (expands ⇔ peak > (1 + tolerance)·first; compresses ⇔
      peak > (1 + tolerance)·last).
    exclude: layers left out (the logits' ID is bounded by the number of classes).
  """
  keep = [i for i, n in enumerate(profile.layer_names) if n not in set(exclude)]
  if len(keep) < 2:
    raise ValueError(f"`profile` needs at least two layers outside `exclude`={tuple(exclude)}; got "
                     f"{profile.layer_names}.")
  ids = profile.intrinsic_dim[keep]
  peak = int(np.argmax(ids))
  first, top, last = float(ids[0]), float(ids[peak]), float(ids[-1])
  # A collapsed end (ID 0, see `IDProfile.collapsed`) is an unbounded ratio, written as inf rather than failing.
  ratio = lambda a, b: a / b if b > 0 else (float("inf") if a > 0 else 1.0)
  return ProfileShape(profile.layer_names[keep[peak]], keep[peak], first, top, last, ratio(top, first),
                      ratio(top, last), top > (1 + tolerance) * first, top > (1 + tolerance) * last)


def id_scale_curves(activations: Mapping[str, np.ndarray], layers: Sequence[str], *, seed: int = 0,
                    num_scales: int | None = None) -> dict[str, dict]:
  """TwoNN vs neighbourhood scale (`kernels.twonn_scaling`, decimation) for a few layers.

  Returns:
    layer → {"num_points", "intrinsic_dim", "intrinsic_dim_std", "r2_median"} lists, all points first.
  """
  missing = [n for n in layers if n not in activations]
  if missing:
    raise ValueError(f"`layers` {missing} are not in `activations` (has {list(activations)[:6]} ...).")
  out = {}
  for name in layers:
    curve = kernels.twonn_scaling(_flat(activations[name], name), key=jax.random.key(seed), num_scales=num_scales)
    out[name] = {"num_points": np.asarray(curve.num_points).tolist(),
                 "intrinsic_dim": np.asarray(curve.intrinsic_dim).tolist(),
                 "intrinsic_dim_std": np.asarray(curve.intrinsic_dim_std).tolist(),
                 "r2_median": np.asarray(curve.r2_median).tolist()}
  return out
