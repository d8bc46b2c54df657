"""Seed and example bootstraps: against independent NumPy loops, and with the spread they should have."""

import itertools

import numpy as np
import pytest

from rsim_jax.analysis import uncertainty


def _pairs(per_seed):
  return {(a, b): per_seed[a] + per_seed[b] for a, b in itertools.combinations(range(len(per_seed)), 2)}


def test_seed_bootstrap_equals_a_loop_over_resamples():
  rng = np.random.default_rng(0)
  values = {(a, b): rng.random(3) for a, b in itertools.combinations(range(5), 2)}
  out = uncertainty.seed_bootstrap(values, num_resamples=300, seed=7)
  draws = np.random.default_rng(7).integers(0, 5, size=(300, 5))
  means = []
  for d in draws:
    chosen = [values[tuple(sorted((a, b)))] for a, b in itertools.product(d, d) if a < b]
    if chosen:
      means.append(np.mean(chosen, axis=0))
  means = np.array(means)
  np.testing.assert_allclose(out.estimate, np.mean(list(values.values()), axis=0))
  np.testing.assert_allclose(out.stderr, means.std(axis=0, ddof=1), rtol=1e-10)
  assert out.num_resamples == len(means)


def test_seed_bootstrap_tracks_the_spread_over_seeds():
  # value(a, b) = u_a + u_b with u ~ N(0, σ²): the mean over pairs of S seeds has sd ≈ 2σ/√S.
  rng = np.random.default_rng(1)
  errors = []
  for s in range(40):
    u = rng.normal(0.0, 0.1, 12)
    errors.append(uncertainty.seed_bootstrap(_pairs(u), num_resamples=400, seed=s).stderr)
  assert np.mean(errors) == pytest.approx(2 * 0.1 / np.sqrt(12), rel=0.25)


def test_pc1_bootstrap_shrinks_with_examples_and_matches_numpy():
  rng = np.random.default_rng(2)
  scales = np.array([3.0, 1.5, 1.0, 0.5])
  small = rng.standard_normal((100, 4)) * scales
  large = rng.standard_normal((1600, 4)) * scales
  a = uncertainty.pc1_fraction_bootstrap(small, num_resamples=300)
  b = uncertainty.pc1_fraction_bootstrap(large, num_resamples=300)
  truth = 9.0 / np.sum(scales ** 2)
  # λ₁ of a sample covariance is biased upwards, so only the large sample's interval is asked to hold the truth.
  assert b.low < truth < b.high and abs(b.estimate - truth) < 3 * b.stderr
  assert a.stderr / b.stderr == pytest.approx(4.0, rel=0.35)  # ∝ 1/√n
  idx = np.random.default_rng(0).integers(0, 100, size=(300, 100))
  ref = []
  for i in idx:
    c = small[i] - small[i].mean(0)
    eig = np.linalg.eigvalsh(c.T @ c)
    ref.append(eig[-1] / eig.sum())
  assert a.stderr == pytest.approx(np.std(ref, ddof=1), rel=1e-3)


@pytest.mark.parametrize("shape", [(40, 300), (1100, 100)])
def test_pc1_bootstrap_wide_layers_with_a_close_second_component(shape):
  # Wide (Gram route) and tall (scatter route) layers above the exact-eigh size, λ₂ = 0.9 λ₁: each resample's
  # fraction must still be the largest eigenvalue, as an exact float64 eigendecomposition gives it.
  n, d = shape
  rng = np.random.default_rng(3)
  scales = np.concatenate([[1.0, 0.95], 0.3 * rng.random(d - 2)])
  x = rng.standard_normal((n, d)) * scales + 5.0
  out = uncertainty.pc1_fraction_bootstrap(x, num_resamples=40, seed=4)
  ref = []
  for i in np.random.default_rng(4).integers(0, n, size=(40, n)):
    c = x[i] - x[i].mean(0)
    eig = np.linalg.eigvalsh(c @ c.T if n <= d else c.T @ c)
    ref.append(eig[-1] / eig.sum())
  assert out.stderr == pytest.approx(np.std(ref, ddof=1), rel=2e-3)
  assert out.low == pytest.approx(np.percentile(ref, 2.5), rel=1e-3)
  assert out.high == pytest.approx(np.percentile(ref, 97.5), rel=1e-3)


def test_errors():
  with pytest.raises(ValueError, match="at least 3"):
    uncertainty.seed_bootstrap({(0, 1): 0.5})
  with pytest.raises(ValueError, match="with itself"):
    uncertainty.seed_bootstrap({(0, 0): 0.5, (0, 1): 0.2, (1, 2): 0.3})
  with pytest.raises(ValueError, match="same shape"):
    uncertainty.seed_bootstrap({(0, 1): [0.5], (1, 2): [0.2, 0.1], (0, 2): [0.1]})
  with pytest.raises(ValueError, match="constant"):
    uncertainty.pc1_fraction_bootstrap(np.ones((10, 3)))
  with pytest.raises(ValueError, match="n ≥ 4"):
    uncertainty.pc1_fraction_bootstrap(np.ones((3, 3)))
