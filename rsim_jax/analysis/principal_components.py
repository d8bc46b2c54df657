"""The first principal component and the block structure (Nguyen, Raghu & Kornblith 2021, Sec. 4).

The paper's explanation of the block structure: inside the block, the representations of consecutive layers
share one dominant principal component that carries most of their variance, so linear CKA between them is
high whatever else they encode. Three measurements check that on a sample of activations (`m` examples, e.g.
`rsim_jax.extract.compare_models(..., sample_size=m)`):

1. `pc1_fractions`: the fraction of variance on PC1, `λ₁ / Σλ`, per layer (close to 1 inside a block).
2. `cka_with_top_pcs`: linear CKA between a layer and its projection on its top-k PCs. For centred `X` with
   covariance eigenvalues `λᵢ` and `Y = X V_k V_kᵀ`, `‖YᵀX‖²_F = Σ_{i≤k} λᵢ²·(m−1)²` and so
     `CKA(X, Y) = sqrt(Σ_{i≤k} λᵢ² / Σᵢ λᵢ²)`,
   a closed form: no second Gram needed. High values mean PC1 alone explains the CKA of that layer.
3. `cka_matrix(..., remove_pcs=k)`: all-pairs linear CKA after projecting out each layer's top-k PCs
   (`kernels.remove_top_pcs`). If the block lives on PC1, its CKA drops once PC1 is removed, while the
   structure outside the block stays.

CKA here is full-batch on the sample (biased HSIC, or debiased with `debiased=True`), the same estimator before
and after removal so the two heatmaps compare.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rsim_jax import kernels

_PRECISION = jax.lax.Precision.HIGHEST


def _layers(layers: Mapping[str, np.ndarray], name: str = "layers") -> dict[str, jax.Array]:
  if not isinstance(layers, Mapping) or not layers:
    raise ValueError(f"`{name}` must be a non-empty mapping layer name → (m, ...) activations.")
  out = {k: kernels.flatten_features(jnp.asarray(v, jnp.float32)) for k, v in layers.items()}
  counts = {k: v.shape[0] for k, v in out.items()}
  if len(set(counts.values())) != 1:
    raise ValueError(f"Every layer in `{name}` must hold the same examples; got example counts {counts}.")
  m = next(iter(counts.values()))
  if m < 4:
    raise ValueError(f"`{name}` holds {m} examples; PCA and CKA need at least 4 (use a larger sample).")
  for k, v in out.items():
    if not bool(jnp.all(jnp.isfinite(v))):
      raise ValueError(f"Layer {k!r} in `{name}` contains NaN/Inf.")
  return out


def _spectrum(x: jax.Array) -> jax.Array:
  """Covariance eigenvalues (descending) from the smaller of the Gram/scatter matrices of centred `x`."""
  xc = x - jnp.mean(x, axis=0)
  m = xc @ xc.T if x.shape[0] <= x.shape[1] else xc.T @ xc
  return jnp.clip(jnp.linalg.eigvalsh(0.5 * (m + m.T))[::-1], 0.0) / (x.shape[0] - 1)


def pc1_fractions(layers: Mapping[str, np.ndarray]) -> dict[str, float]:
  """`λ₁ / Σλ` per layer: the fraction of the layer's variance on its first principal component.

  Args:
    layers: layer name → `(m, ...)` activations of the same m examples.

  Returns:
    layer name → float in (0, 1]; a zero-variance layer raises (its PCs are undefined).
  """
  return {k: float(kernels.first_pc_fraction(v)) for k, v in _layers(layers).items()}


def cka_with_top_pcs(layers: Mapping[str, np.ndarray], *, k: int = 1) -> dict[str, float]:
  """Linear CKA between each layer and its projection on its own top-k principal components.

  `CKA(X, X V_k V_kᵀ) = sqrt(Σ_{i≤k} λᵢ² / Σᵢ λᵢ²)` (module docstring).

  Args:
    layers: layer name → `(m, ...)` activations.
    k: number of leading components kept (1 = PC1, the paper's measurement).

  Returns:
    layer name → float in (0, 1].
  """
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"`k` must be a positive integer, got {k!r}.")
  out = {}
  for name, x in _layers(layers).items():
    ev = _spectrum(x)
    total = jnp.sum(ev * ev)
    if not float(total) > 0:
      raise ValueError(f"Layer {name!r} has zero variance on these examples; CKA with its PCs is undefined.")
    out[name] = float(jnp.sqrt(jnp.sum(ev[:k] ** 2) / total))
  return out


@jax.jit
def _centred_gram(x):
  xc = x - jnp.mean(x, axis=0)
  return jnp.matmul(xc, xc.T, precision=_PRECISION)


@jax.jit
def _cka_of_grams(grams):
  """All-pairs CKA of `(L, m, m)` Grams in one `(L, m²)·(m², L)` contraction."""
  centred = jax.vmap(lambda g: kernels.center_gram(g, unbiased=True))(grams)
  flat = centred.reshape(centred.shape[0], -1)
  hsic = jnp.matmul(flat, flat.T, precision=_PRECISION)
  norms = jnp.sqrt(jnp.clip(jnp.diagonal(hsic), 0.0))
  return hsic / (norms[:, None] * norms[None, :])


def cka_matrix(layers: Mapping[str, np.ndarray], *, remove_pcs: int = 0, debiased: bool = False) -> np.ndarray:
  """All-pairs full-batch linear CKA of the layers of one sample, optionally after removing top PCs.

  Args:
    layers: layer name → `(m, ...)` activations of the same m examples (in the order of the result).
    remove_pcs: k ≥ 0; each layer's own top-k principal directions are projected out first
      (`kernels.remove_top_pcs`), 0 = none.
    debiased: U-centred Grams (unbiased HSIC, Song et al. 2012) instead of double-centred ones.

  Returns:
    `(L, L)` float64 CKA matrix.
  """
  if isinstance(remove_pcs, bool) or not isinstance(remove_pcs, (int, np.integer)) or remove_pcs < 0:
    raise ValueError(f"`remove_pcs` must be a non-negative integer, got {remove_pcs!r}.")
  grams = []
  for name, x in _layers(layers).items():
    if remove_pcs:
      if remove_pcs >= min(x.shape):
        raise ValueError(f"`remove_pcs`={remove_pcs} leaves nothing of layer {name!r} of shape {tuple(x.shape)}.")
      x = kernels.remove_top_pcs(x, k=remove_pcs)
    gram = _centred_gram(x)
    if not float(jnp.trace(gram)) > 0:
      raise ValueError(f"Layer {name!r} has no variance left (remove_pcs={remove_pcs}); its CKA is undefined.")
    grams.append(gram)
  stacked = jnp.stack(grams)
  if debiased:
    return np.asarray(_cka_of_grams(stacked), np.float64)
  # Double centring (the Grams are of centred features already, so H K H = K).
  flat = stacked.reshape(len(grams), -1)
  hsic = np.asarray(jnp.matmul(flat, flat.T, precision=_PRECISION), np.float64)
  norms = np.sqrt(np.clip(np.diag(hsic), 0.0, None))
  return hsic / np.outer(norms, norms)


def pc1_summary(layers: Mapping[str, np.ndarray], *, block: tuple[int, int] | None = None) -> dict:
  """Everything the PC1 analysis reports for one model's sample, JSON-ready.

  Args:
    layers: layer name → `(m, ...)` activations.
    block: optional `(start, end)` layer indices (inclusive) of a detected block: the mean PC1 fraction and
      mean CKA inside it, before and after removing PC1, are added.
  """
  names = list(layers)
  fractions = pc1_fractions(layers)
  with_pc1 = cka_with_top_pcs(layers, k=1)
  before = cka_matrix(layers)
  after = cka_matrix(layers, remove_pcs=1)
  out = {
      "layer_names": names,
      "pc1_fraction": [fractions[n] for n in names],
      "cka_with_pc1": [with_pc1[n] for n in names],
      "cka_sample": before.tolist(),
      "cka_pc1_removed": after.tolist(),
  }
  if block is not None and block[1] > block[0]:
    s, e = block
    inside = np.ix_(range(s, e + 1), range(s, e + 1))
    off = ~np.eye(e - s + 1, dtype=bool)
    out["block"] = {
        "start": s, "end": e,
        "mean_pc1_fraction": float(np.mean(out["pc1_fraction"][s : e + 1])),
        "mean_cka": float(before[inside][off].mean()),
        "mean_cka_pc1_removed": float(after[inside][off].mean()),
    }
  return out
