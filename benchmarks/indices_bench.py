"""All-pairs Procrustes, CCA/SVCCA/PWCCA and RSA: rsim_jax against a float64 NumPy reference, side by side.

Workload (issue 16): a fixed sample of N examples of one model's L layers (widths spaced geometrically over
a few hundred to a few thousand features), every layer pair of each index. The activations share a
64-dimensional latent that drifts with depth, so neighbouring layers are similar and far ones less so, and
carry a little isotropic noise (the 99%-variance SVCCA cut keeps K directions per layer, printed). Printed per
index: rsim_jax's first call (compilation included) and a second call (compiled), the float64 NumPy reference
time (the same algorithm written plainly: per-layer float64 factorisations, a Python loop over pairs), the
ratio of the reference to the second call, and the largest absolute difference between the two (L, L)
matrices.

  python benchmarks/indices_bench.py                        # N=2000, L=20, widths 256..2048
  python benchmarks/indices_bench.py --indices rsa svcca    # a subset
  python benchmarks/indices_bench.py --quick                # a smoke run in seconds

Procrustes and CCA are LAPACK-bound (SciPy's OpenBLAS, called by XLA:CPU, and NumPy's for the reference). The
kernels run their pair loops on one thread per core with OpenBLAS held to one thread; the reference uses
OpenBLAS's default threads. On a machine shared with other jobs prefix `OPENBLAS_NUM_THREADS=1`: spinning
OpenBLAS threads then slow the per-layer factorisations and the reference several-fold (README, "Other
similarity indices").
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.stats

from rsim_jax import kernels

INDICES = ("procrustes", "cca_ridge", "svcca", "pwcca", "rsa_pearson", "rsa_spearman")


def make_layers(num_examples: int, widths, *, seed: int = 0) -> list[np.ndarray]:
  rng = np.random.default_rng(seed)
  z = rng.standard_normal((num_examples, 64))
  layers = []
  for d in widths:
    z = 0.9 * z + 0.45 * rng.standard_normal(z.shape)  # the latent drifts with depth
    x = np.tanh(z @ rng.standard_normal((64, d)) / 16.0) + 0.01 * rng.standard_normal((num_examples, d))
    layers.append(x.astype(np.float32))
  return layers


# --- float64 NumPy reference: the same indices written plainly ---


def _centred(x):
  x = np.asarray(x, np.float64)
  return x - x.mean(0)


def _pairs(num):
  return [(i, j) for i in range(num) for j in range(i, num)]


def np_procrustes(layers):
  factors = []
  for x in layers:
    xc = _centred(x)
    xc /= np.linalg.norm(xc)
    factors.append(np.linalg.qr(xc.T, mode="r").T if xc.shape[1] > xc.shape[0] else xc)
  out = np.zeros((len(layers),) * 2)
  for i, j in _pairs(len(layers)):
    out[i, j] = out[j, i] = np.linalg.svd(factors[i].T @ factors[j], compute_uv=False).sum()
  return out


def np_cca_ridge(layers, ridge):
  bases = []
  for x in layers:
    z = _centred(x)
    z /= np.linalg.norm(z, axis=0)
    if z.shape[1] <= z.shape[0]:
      values, vectors = np.linalg.eigh(z.T @ z)
      a = z @ vectors / np.sqrt(np.maximum(values, 0) + ridge)
    else:
      values, vectors = np.linalg.eigh(z @ z.T)
      values = np.maximum(values, 0)
      a = vectors * np.sqrt(values / (values + ridge))
    keep = values > 1e-12 * values.max()
    bases.append((a[:, keep], min(int(keep.sum()), z.shape[0] - 1)))
  out = np.zeros((len(layers),) * 2)
  for i, j in _pairs(len(layers)):
    rho = np.linalg.svd(bases[i][0].T @ bases[j][0], compute_uv=False)
    count = min(bases[i][1], bases[j][1])
    out[i, j] = out[j, i] = np.mean(rho[:count] ** 2)
  return out


def _svd_basis(x, variance_kept):
  """Top left singular vectors of the centred layer from float64 `eigh` of the smaller of X̃ᵀX̃ and X̃X̃ᵀ (the
  kernel's algorithm in float64: an SVD with vectors costs ~10× more here)."""
  xc = _centred(x)
  if xc.shape[1] <= xc.shape[0]:
    values, vectors = np.linalg.eigh(xc.T @ xc)
    values, vectors = values[::-1], vectors[:, ::-1]
    k = int(np.searchsorted(np.cumsum(values) / np.sum(values), variance_kept) + 1)
    u = xc @ vectors[:, :k] / np.sqrt(values[:k])
  else:
    values, u = np.linalg.eigh(xc @ xc.T)
    values, u = values[::-1], u[:, ::-1]
    k = int(np.searchsorted(np.cumsum(values) / np.sum(values), variance_kept) + 1)
    u = u[:, :k]
  return u, xc


def np_svcca(layers, variance_kept):
  bases = [_svd_basis(x, variance_kept)[0] for x in layers]
  out = np.zeros((len(layers),) * 2)
  for i, j in _pairs(len(layers)):
    out[i, j] = out[j, i] = np.linalg.svd(bases[i].T @ bases[j], compute_uv=False).mean()
  return out


def np_pwcca(layers, variance_kept):
  bases = [_svd_basis(x, variance_kept) for x in layers]
  out = np.zeros((len(layers),) * 2)
  for i, j in _pairs(len(layers)):
    (ux, xc), (uy, yc) = bases[i], bases[j]
    a, rho, bt = np.linalg.svd(ux.T @ uy, full_matrices=False)
    for row, (basis, vectors, neurons) in ((i, (ux, a, xc)), (j, (uy, bt.T, yc))):
      h = basis @ vectors
      alpha = np.abs(h.T @ neurons).sum(1)
      out[row, j if row == i else i] = np.sum(alpha / alpha.sum() * rho)
  return out


def np_rsa(layers, method):
  vectors = []
  for x in layers:
    p = np.asarray(x, np.float64)
    p = p - p.mean(1, keepdims=True)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    v = (1.0 - p @ p.T)[np.triu_indices(len(p), 1)]
    vectors.append(scipy.stats.rankdata(v) if method == "spearman" else v)
  return np.corrcoef(np.stack(vectors))


# --- timing ---


def run(name, layers, args):
  variance = args.variance_kept
  if name == "procrustes":
    ours = lambda: kernels.procrustes_all_pairs(layers).similarity
    ref = lambda: np_procrustes(layers)
  elif name == "cca_ridge":
    ours = lambda: kernels.cca_all_pairs(layers, ridge=args.ridge).mean_squared
    ref = lambda: np_cca_ridge(layers, args.ridge)
  elif name == "svcca":
    ours = lambda: kernels.svcca_all_pairs(layers, variance_kept=variance).mean
    ref = lambda: np_svcca(layers, variance)
  elif name == "pwcca":
    ours = lambda: kernels.pwcca_all_pairs(layers, variance_kept=variance)
    ref = lambda: np_pwcca(layers, variance)
  else:
    method = name.split("_")[1]
    ours = lambda: kernels.rsa_all_pairs(layers, method=method)
    ref = lambda: np_rsa(layers, method)
  start = time.perf_counter()
  ours()  # compile
  t_first = time.perf_counter() - start
  start = time.perf_counter()
  got = np.asarray(ours())
  t_ours = time.perf_counter() - start
  start = time.perf_counter()
  expected = ref()
  t_ref = time.perf_counter() - start
  diff = float(np.max(np.abs(got - expected)))
  print(f"{name:14s} {t_first:10.2f} {t_ours:10.2f} {t_ref:12.2f} {t_ref / t_ours:8.2f} {diff:12.1e}", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--examples", type=int, default=2000)
  parser.add_argument("--layers", type=int, default=20)
  parser.add_argument("--min-width", type=int, default=256)
  parser.add_argument("--max-width", type=int, default=2048)
  parser.add_argument("--indices", nargs="+", default=list(INDICES), choices=INDICES)
  parser.add_argument("--variance-kept", type=float, default=0.99)
  parser.add_argument("--ridge", type=float, default=0.1)
  parser.add_argument("--quick", action="store_true", help="N=300, 6 layers of 64..512 features")
  args = parser.parse_args()
  if args.quick:
    args.examples, args.layers, args.min_width, args.max_width = 300, 6, 64, 512
  widths = np.geomspace(args.min_width, args.max_width, args.layers).round().astype(int)
  layers = make_layers(args.examples, widths)
  print(f"N={args.examples}, L={args.layers}, widths {list(widths)}")
  print(f"{'index':14s} {'first (s)':>10s} {'rsim_jax (s)':>10s} {'numpy f64 (s)':>12s} {'f64/ours':>8s} {'max |diff|':>12s}")
  for name in args.indices:
    run(name, layers, args)


if __name__ == "__main__":
  main()
