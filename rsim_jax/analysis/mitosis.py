"""Representation mitosis: the last hidden layer of a wide network as many noisy copies of one representation.

Doimo, Glielmo, Goldt & Laio ("Representation mitosis in wide neural networks", 2021; "Redundant
representations help generalization in wide neural networks", NeurIPS 2022) find that above a critical
width the last hidden layer of a network trained to zero training error splits into *clones*: random
subsets ("chunks") of c neurons already carry the whole representation, up to noise that is independent
between chunks. The measurements, on the last hidden layer F ∈ R^{n×W} (W neurons) and the trained
read-out (K ∈ R^{W×C}, bias b):

- chunk accuracy: for a random chunk S, |S| = c, the read-out restricted to it and rescaled so the logits
  keep their scale,  z_S = (W / c) · F[:, S] K[S, :] + b,  and its test accuracy; mean ± std over chunks;
- the saturation chunk size c*: the smallest c whose mean accuracy is within `tolerance` of the full layer's;
  the number of clones is W / c*; it stays ~1 below the critical width and grows with W above it;
- R² of a ridge regression from a chunk to the full layer (how much of the representation one chunk holds);
- the correlation of the residuals of two disjoint chunks predicting the same target: ≈ 0 when each chunk is
  the representation plus its own independent noise (the paper's picture), ≈ 1 when the chunks share noise;
- the wide network against an ensemble of narrow networks (averaged probabilities).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _check_features(features, name: str = "features") -> np.ndarray:
  x = np.asarray(features)
  if x.ndim != 2:
    raise ValueError(f"`{name}` must be (n, width), one row per example; got shape {x.shape}.")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"`{name}` holds NaN or Inf.")
  return x.astype(np.float32)


def _check_chunk_sizes(chunk_sizes, width: int) -> np.ndarray:
  sizes = np.asarray(sorted(set(int(c) for c in chunk_sizes)))
  if sizes.size == 0 or sizes[0] < 1 or sizes[-1] > width:
    raise ValueError(f"`chunk_sizes` must be integers in [1, {width}] (the layer width); got {list(chunk_sizes)}.")
  return sizes


def default_chunk_sizes(width: int, *, num: int = 12) -> np.ndarray:
  """Roughly log-spaced chunk sizes from 1 to `width` (both included)."""
  return np.unique(np.round(np.geomspace(1, width, num)).astype(int))


def _random_chunks(key, width: int, size: int, num_chunks: int) -> jax.Array:
  """`(num_chunks, size)` neuron indices, each row a uniform random subset without replacement."""
  keys = jax.random.split(key, num_chunks)
  return jax.vmap(lambda k: jax.random.permutation(k, width)[:size])(keys)


@dataclasses.dataclass(frozen=True)
class ChunkAccuracy:
  """Test accuracy of random chunks of the last hidden layer read out by the trained head.

  Attributes:
    chunk_sizes: `(S,)` sizes c.
    mean, std: `(S,)` accuracy over the random chunks of each size.
    full_accuracy: accuracy of the whole layer (c = W).
    width: W.
  """

  chunk_sizes: np.ndarray
  mean: np.ndarray
  std: np.ndarray
  full_accuracy: float
  width: int

  def to_json(self) -> dict:
    return {"chunk_sizes": self.chunk_sizes.tolist(), "mean": self.mean.tolist(), "std": self.std.tolist(),
            "full_accuracy": self.full_accuracy, "width": self.width}


def chunk_accuracy(features, labels, head_kernel, head_bias, *, chunk_sizes: Sequence[int] | None = None,
                   num_chunks: int = 50, seed: int = 0) -> ChunkAccuracy:
  """Accuracy of `z_S = (W/c) · F[:, S] K[S] + b` for random chunks S of each size c (Doimo et al. 2021).

  Args:
    features: `(n, W)` last-hidden-layer activations F (test examples).
    labels: `(n,)` int labels.
    head_kernel: `(W, C)` trained read-out K; head_bias: `(C,)` b.
    chunk_sizes: sizes c (default `default_chunk_sizes(W)`).
    num_chunks: random chunks per size (vmapped).
    seed: seed of the chunks.
  """
  f = _check_features(features)
  y = np.asarray(labels)
  k, b = np.asarray(head_kernel, np.float32), np.asarray(head_bias, np.float32)
  n, width = f.shape
  if y.shape != (n,):
    raise ValueError(f"`labels` must be ({n},) to match `features`; got {y.shape}.")
  if k.ndim != 2 or k.shape[0] != width or b.shape != (k.shape[1],):
    raise ValueError(f"`head_kernel` must be ({width}, C) and `head_bias` (C,); got {k.shape} and {b.shape}.")
  sizes = _check_chunk_sizes(default_chunk_sizes(width) if chunk_sizes is None else chunk_sizes, width)
  if num_chunks < 1:
    raise ValueError(f"`num_chunks` must be >= 1; got {num_chunks}.")
  fj, kj, bj, yj = jnp.asarray(f), jnp.asarray(k), jnp.asarray(b), jnp.asarray(y)

  @jax.jit
  def accuracies(chunks):  # (num_chunks, c) → (num_chunks,)
    def one(idx):
      logits = (width / idx.shape[0]) * (fj[:, idx] @ kj[idx]) + bj
      return jnp.mean(jnp.argmax(logits, -1) == yj)
    return jax.vmap(one)(chunks)

  key = jax.random.key(seed)
  means, stds = [], []
  for i, c in enumerate(sizes):
    acc = np.asarray(accuracies(_random_chunks(jax.random.fold_in(key, i), width, int(c), num_chunks)))
    means.append(acc.mean())
    stds.append(acc.std())
  full = float(np.mean(np.argmax(f @ k + b, -1) == y))
  return ChunkAccuracy(sizes, np.array(means), np.array(stds), full, width)


def saturation_chunk_size(chunk_sizes, accuracies, *, full_accuracy: float | None = None,
                          tolerance: float = 0.01) -> int:
  """The smallest chunk size whose accuracy is within `tolerance` of the full layer's (default: the accuracy
  at the largest chunk size)."""
  sizes, acc = np.asarray(chunk_sizes), np.asarray(accuracies, np.float64)
  if sizes.shape != acc.shape or sizes.ndim != 1 or sizes.size == 0:
    raise ValueError(f"`chunk_sizes` and `accuracies` must be matching (S,) arrays; got {sizes.shape}, {acc.shape}.")
  order = np.argsort(sizes)
  sizes, acc = sizes[order], acc[order]
  target = (acc[-1] if full_accuracy is None else full_accuracy) - tolerance
  return int(sizes[np.argmax(acc >= target)]) if np.any(acc >= target) else int(sizes[-1])


def num_clones(width: int, chunk_size: int) -> float:
  """W / c*: how many disjoint chunks as good as the full layer it holds."""
  if chunk_size < 1 or width < chunk_size:
    raise ValueError(f"Need 1 <= chunk_size <= width; got chunk_size={chunk_size}, width={width}.")
  return width / chunk_size


def critical_width(widths, clones, *, threshold: float = 2.0) -> int | None:
  """The narrowest width from which every wider network holds at least `threshold` clones (None: none does).

  Below it the last layer is one representation (clones ≈ 1); from it on, mitosis (Doimo et al. 2021).
  """
  w, c = np.asarray(widths), np.asarray(clones, np.float64)
  if w.shape != c.shape or w.ndim != 1:
    raise ValueError(f"`widths` and `clones` must be matching 1-D arrays; got {w.shape}, {c.shape}.")
  order = np.argsort(w)
  w, c = w[order], c[order]
  for i in range(len(w)):
    if np.all(c[i:] >= threshold):
      return int(w[i])
  return None


def _ridge_fit(x, y, ridge: float):
  """Least squares with an L2 penalty and an unpenalised intercept: `(coef (d, t), intercept (t,))`."""
  mx, my = x.mean(0), y.mean(0)
  xc, yc = x - mx, y - my
  d = xc.shape[1]
  coef = np.linalg.solve(xc.T @ xc + ridge * len(x) * np.eye(d), xc.T @ yc)
  return coef, my - mx @ coef


def _split(n: int, train_fraction: float, seed: int):
  perm = np.random.default_rng(seed).permutation(n)
  cut = int(round(train_fraction * n))
  if cut < 2 or n - cut < 2:
    raise ValueError(f"Too few examples ({n}) to split {train_fraction:.0%} / {1 - train_fraction:.0%} for the fit.")
  return perm[:cut], perm[cut:]


def chunk_regression_r2(features, *, chunk_sizes: Sequence[int] | None = None, num_chunks: int = 10,
                        ridge: float = 1e-3, targets=None, train_fraction: float = 0.5, seed: int = 0) -> dict:
  """Held-out R² of a ridge regression from a random chunk to `targets` (default: the full layer).

  R² = 1 − Σ (y − ŷ)² / Σ (y − ȳ)², summed over target dimensions, fitted on `train_fraction` of the
  examples and scored on the rest; mean ± std over chunks. `ridge` is relative (λ = ridge · n_train).

  Returns:
    {"chunk_sizes", "mean", "std"} lists.
  """
  f = _check_features(features).astype(np.float64)
  t = f if targets is None else _check_features(targets, "targets").astype(np.float64)
  if len(t) != len(f):
    raise ValueError(f"`targets` must have one row per example ({len(f)}); got {len(t)}.")
  width = f.shape[1]
  sizes = _check_chunk_sizes(default_chunk_sizes(width) if chunk_sizes is None else chunk_sizes, width)
  train, test = _split(len(f), train_fraction, seed)
  rng = np.random.default_rng(seed)
  sst = np.sum((t[test] - t[test].mean(0)) ** 2)
  means, stds = [], []
  for c in sizes:
    scores = []
    for _ in range(num_chunks):
      idx = rng.choice(width, int(c), replace=False)
      coef, icpt = _ridge_fit(f[train][:, idx], t[train], ridge)
      scores.append(1.0 - np.sum((t[test] - f[test][:, idx] @ coef - icpt) ** 2) / sst)
    means.append(float(np.mean(scores)))
    stds.append(float(np.std(scores)))
  return {"chunk_sizes": sizes.tolist(), "mean": means, "std": stds}


def chunk_residual_correlation(features, targets, *, chunk_size: int, num_pairs: int = 10, ridge: float = 1e-3,
                               train_fraction: float = 0.5, seed: int = 0) -> dict:
  """Correlation between the residuals of two disjoint chunks predicting the same `targets`.

  For disjoint random chunks A, B of `chunk_size` neurons, ridge fits ŷ_A, ŷ_B of `targets` (e.g. the
  network's logits) on the training part; on the held-out part the residuals r_A = y − ŷ_A, r_B = y − ŷ_B
  are correlated per target dimension (Pearson) and averaged. If every chunk is the same signal plus its own
  noise, the residuals are independent (≈ 0); if chunks share their noise, ≈ 1.

  Returns:
    {"mean", "std", "values"} over the pairs.
  """
  f = _check_features(features).astype(np.float64)
  t = _check_features(targets, "targets").astype(np.float64)
  width = f.shape[1]
  if len(t) != len(f):
    raise ValueError(f"`targets` must have one row per example ({len(f)}); got {len(t)}.")
  if not 1 <= chunk_size <= width // 2:
    raise ValueError(f"`chunk_size` must be in [1, {width // 2}] so that two disjoint chunks fit; got {chunk_size}.")
  train, test = _split(len(f), train_fraction, seed)
  rng = np.random.default_rng(seed)
  values = []
  for _ in range(num_pairs):
    perm = rng.permutation(width)
    residuals = []
    for idx in (perm[:chunk_size], perm[chunk_size:2 * chunk_size]):
      coef, icpt = _ridge_fit(f[train][:, idx], t[train], ridge)
      residuals.append(t[test] - f[test][:, idx] @ coef - icpt)
    ra, rb = (r - r.mean(0) for r in residuals)
    corr = np.sum(ra * rb, 0) / np.sqrt(np.sum(ra**2, 0) * np.sum(rb**2, 0) + 1e-30)
    values.append(float(np.mean(corr)))
  return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}


def ensemble_accuracy(logits, labels, *, average: str = "probabilities") -> float:
  """Accuracy of an ensemble: the argmax of the members' mean softmax ("probabilities") or mean logits.

  Args:
    logits: `(M, n, C)` logits of M models on the same n examples.
    labels: `(n,)`.
  """
  z = np.asarray(logits, np.float64)
  y = np.asarray(labels)
  if z.ndim != 3 or z.shape[1] != y.shape[0]:
    raise ValueError(f"`logits` must be (models, n, classes) with n = len(labels) = {len(y)}; got {z.shape}.")
  if average == "probabilities":
    p = np.exp(z - z.max(-1, keepdims=True))
    z = (p / p.sum(-1, keepdims=True)).mean(0)
  elif average == "logits":
    z = z.mean(0)
  else:
    raise ValueError(f"`average` must be 'probabilities' or 'logits'; got {average!r}.")
  return float(np.mean(np.argmax(z, -1) == y))
