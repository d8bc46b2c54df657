"""Independent float64 NumPy references for the similarity kernels (written from the formulas, not the code).

Deliberately naive: explicit centring matrices and the HSIC₁ formula of Song et al. (2012) term by term.
"""

from __future__ import annotations

import numpy as np


def centering_matrix(n: int) -> np.ndarray:
  return np.eye(n) - np.ones((n, n)) / n


def linear_gram(x, *, center: bool = False) -> np.ndarray:
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  if center:  # CKA and HSIC are unchanged by it; it only saves float64 from offset cancellation
    x = x - x.mean(0)
  return x @ x.T


def rbf_gram(x, threshold: float) -> np.ndarray:
  x = np.asarray(x, np.float64)
  d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
  return np.exp(-d2 / (2 * threshold**2 * np.median(d2)))


def hsic_biased(k, l) -> np.ndarray:
  n = len(k)
  h = centering_matrix(n)
  return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def hsic_unbiased(k, l) -> float:
  """Song et al. (2012), Eq. (5)."""
  n = len(k)
  kt = k - np.diag(np.diag(k))
  lt = l - np.diag(np.diag(l))
  one = np.ones(n)
  return float(
      (np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * (one @ kt @ lt @ one))
      / (n * (n - 3))
  )


def cka(k, l, *, debiased: bool = False) -> float:
  h = hsic_unbiased if debiased else hsic_biased
  return float(h(k, l) / np.sqrt(h(k, k) * h(l, l)))


def minibatch_cka(batches_x, batches_y) -> np.ndarray:
  """Nguyen et al. (2021): mean HSIC₁ over batches, ratio of means. batches_*[i][layer] is (n_i, d)."""
  num_x, num_y = len(batches_x[0]), len(batches_y[0])
  xy = np.zeros((num_x, num_y))
  xx = np.zeros(num_x)
  yy = np.zeros(num_y)
  for bx, by in zip(batches_x, batches_y):
    kx = [linear_gram(a, center=True) for a in bx]
    ky = [linear_gram(b, center=True) for b in by]
    for i in range(num_x):
      xx[i] += hsic_unbiased(kx[i], kx[i])
      for j in range(num_y):
        xy[i, j] += hsic_unbiased(kx[i], ky[j])
    for j in range(num_y):
      yy[j] += hsic_unbiased(ky[j], ky[j])
  k = len(batches_x)
  return (xy / k) / np.sqrt(np.outer(xx / k, yy / k))
