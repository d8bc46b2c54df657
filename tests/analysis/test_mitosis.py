import numpy as np
import pytest

from rsim_jax.analysis import mitosis


def _signal(n=1500, d=4, classes=4, seed=0):
  """A d-dim class signal s (classes separable in it) and its read-out W0 (d, C)."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, classes, n)
  means = 3.0 * np.eye(classes, d)
  s = means[y] + 0.5 * rng.standard_normal((n, d))
  return s, y, means.T  # logits s @ W0 = similarity to each class mean


def _layer(s, width, *, noise=0.0, shared=False, seed=1):
  """Each neuron j = s·a_j (+ noise), a_j ~ N(0, I): any chunk of enough neurons carries s. The head
  K_j = a_jᵀ W0 / W reads it: F K = s (A Aᵀ / W) W0 ≈ s W0."""
  rng = np.random.default_rng(seed)
  d = s.shape[1]
  a = rng.standard_normal((d, width))
  base = s + (noise * rng.standard_normal(s.shape) if shared else 0.0)
  f = base @ a
  if noise and not shared:
    f = f + noise * rng.standard_normal(f.shape)
  return f.astype(np.float32), a


def test_a_fixed_representation_copied_into_wider_layers_gives_more_clones():
  s, y, w0 = _signal()
  results = {}
  for width in (128, 512):
    f, a = _layer(s, width, noise=1.0)
    head = (a.T @ w0) / width
    acc = mitosis.chunk_accuracy(f, y, head, np.zeros(4), chunk_sizes=mitosis.default_chunk_sizes(width, num=16),
                                 num_chunks=40, seed=0)
    assert acc.mean[-1] == pytest.approx(acc.full_accuracy) and acc.std[-1] == 0  # c = W: the layer itself
    assert acc.mean[0] < acc.full_accuracy - 0.1  # one neuron is not enough
    assert np.all(np.diff(acc.mean) > -0.02)  # accuracy grows with the chunk size
    c_star = mitosis.saturation_chunk_size(acc.chunk_sizes, acc.mean, tolerance=0.02)
    results[width] = (c_star, mitosis.num_clones(width, c_star))
  # The saturation size is a property of the representation, not of the width: the clone count grows ~ W.
  assert results[512][0] <= 2 * results[128][0]
  assert results[512][1] >= 2.5 * results[128][1]


def test_saturation_and_critical_width_on_known_curves():
  sizes = [1, 2, 4, 8, 16, 32]
  assert mitosis.saturation_chunk_size(sizes, [0.2, 0.4, 0.7, 0.89, 0.9, 0.9], tolerance=0.02) == 8
  assert mitosis.saturation_chunk_size(sizes, [0.2, 0.4, 0.7, 0.8, 0.85, 0.9], tolerance=0.0) == 32
  assert mitosis.num_clones(512, 8) == 64
  assert mitosis.critical_width([16, 32, 64, 128], [1.0, 1.3, 2.0, 4.0]) == 64
  assert mitosis.critical_width([16, 32, 64], [1.0, 3.0, 1.0]) is None  # not sustained
  with pytest.raises(ValueError, match="chunk_size"):
    mitosis.num_clones(8, 16)


def test_residuals_of_disjoint_chunks_are_independent_only_for_independent_noise():
  s, y, w0 = _signal()
  logits = s @ w0
  independent, _ = _layer(s, 256, noise=1.0)
  shared, _ = _layer(s, 256, noise=1.0, shared=True)
  r_ind = mitosis.chunk_residual_correlation(independent, logits, chunk_size=64, num_pairs=5)
  r_sh = mitosis.chunk_residual_correlation(shared, logits, chunk_size=64, num_pairs=5)
  assert abs(r_ind["mean"]) < 0.15 and r_sh["mean"] > 0.8


def test_chunk_r2_rises_to_one_for_a_low_rank_layer():
  s, _, _ = _signal(n=600)
  f, _ = _layer(s, 64)  # rank 4, no noise
  r2 = mitosis.chunk_regression_r2(f, chunk_sizes=[1, 2, 4, 16], num_chunks=5)
  assert r2["mean"][0] < 0.6 and r2["mean"][-1] > 0.999 and r2["mean"][2] > 0.99  # 4 neurons span rank 4


def test_ensemble_accuracy():
  y = np.array([0, 1, 2, 0])
  # Two members, each wrong on a different example but not confidently: the average gets both right.
  m1 = np.array([[2, 0, 0], [0, 2, 0], [0, 0, 2], [0, 1.0, 0]])
  m2 = np.array([[3, 0, 0], [0.5, 0, 0], [0, 0, 2], [3, 0, 0]])
  assert mitosis.ensemble_accuracy(np.stack([m1, m2]), y) == 1.0
  assert mitosis.ensemble_accuracy(np.stack([m1, m2]), y, average="logits") == 1.0
  assert mitosis.ensemble_accuracy(m1[None], y) == 0.75
  with pytest.raises(ValueError, match="average"):
    mitosis.ensemble_accuracy(m1[None], y, average="vote")
  with pytest.raises(ValueError, match="models, n, classes"):
    mitosis.ensemble_accuracy(m1, y)


def test_errors():
  f = np.ones((10, 8), np.float32)
  with pytest.raises(ValueError, match="chunk_sizes"):
    mitosis.chunk_accuracy(f, np.zeros(10, int), np.ones((8, 2)), np.zeros(2), chunk_sizes=[0, 4])
  with pytest.raises(ValueError, match="head_kernel"):
    mitosis.chunk_accuracy(f, np.zeros(10, int), np.ones((7, 2)), np.zeros(2))
  with pytest.raises(ValueError, match="labels"):
    mitosis.chunk_accuracy(f, np.zeros(9, int), np.ones((8, 2)), np.zeros(2))
  bad = f.copy()
  bad[0, 0] = np.inf
  with pytest.raises(ValueError, match="NaN or Inf"):
    mitosis.chunk_regression_r2(bad)
  with pytest.raises(ValueError, match="disjoint"):
    mitosis.chunk_residual_correlation(f, f, chunk_size=5)
