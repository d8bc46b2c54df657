"""Procrustes, CCA/SVCCA/PWCCA and RSA against independent float64 NumPy/SciPy references written here from
the formulas (covariance whitening, scipy's orthogonal Procrustes, pdist + pearsonr/spearmanr), not from the
kernels' factorisation routes."""

import jax
import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import scipy.stats

from rsim_jax import kernels

# --- float64 references ---


def _centred(x):
  x = np.asarray(x, np.float64)
  return x - x.mean(0)


def ref_procrustes(x, y):
  """Aligns Ŷ onto X̂ with scipy's orthogonal Procrustes and measures what is left: ‖X̂ − ŶR‖²_F = 2 − 2s."""
  xc, yc = _centred(x), _centred(y)
  xc, yc = xc / np.linalg.norm(xc), yc / np.linalg.norm(yc)
  d = max(xc.shape[1], yc.shape[1])
  xp = np.pad(xc, ((0, 0), (0, d - xc.shape[1])))
  yp = np.pad(yc, ((0, 0), (0, d - yc.shape[1])))
  rotation, _ = scipy.linalg.orthogonal_procrustes(yp, xp)
  residual = np.linalg.norm(xp - yp @ rotation) ** 2
  return 1.0 - residual / 2.0


def _inv_sqrt(m):
  values, vectors = np.linalg.eigh(m)
  return vectors @ np.diag(values**-0.5) @ vectors.T


def ref_cca(x, y, ridge=0.0):
  """Canonical correlations from the covariance matrices: svd(Σ_xx^{-1/2} Σ_xy Σ_yy^{-1/2}); with a ridge, on
  the correlation matrices of standardised features."""
  xc, yc = _centred(x), _centred(y)
  if ridge:
    xc, yc = xc / xc.std(0, ddof=1), yc / yc.std(0, ddof=1)  # Σ_xx becomes the correlation matrix
  n = len(xc)
  sxx = xc.T @ xc / (n - 1) + ridge * np.eye(xc.shape[1])
  syy = yc.T @ yc / (n - 1) + ridge * np.eye(yc.shape[1])
  sxy = xc.T @ yc / (n - 1)
  whitened = _inv_sqrt(sxx) @ sxy @ _inv_sqrt(syy)
  u, rho, _ = np.linalg.svd(whitened)
  return rho, u, _inv_sqrt(sxx), xc


def ref_svcca(x, y, *, variance_kept=None, k=None):
  def reduce(a):
    ac = _centred(a)
    u, s, _ = np.linalg.svd(ac, full_matrices=False)
    kk = k if k is not None else int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), variance_kept) + 1)
    return u[:, :kk] * s[:kk]

  return ref_cca(reduce(x), reduce(y))[0].mean()


def ref_pwcca(x, y):
  """Morcos et al. (2018): α̃_i = Σ_j |⟨h_i, x_j⟩| with h_i = X̃ Σ_xx^{-1/2} u_i normalised."""
  rho, u, sxx_isqrt, xc = ref_cca(x, y)
  c = len(rho)
  h = xc @ sxx_isqrt @ u[:, :c]
  h /= np.linalg.norm(h, axis=0)
  alpha = np.abs(h.T @ xc).sum(1)
  return np.sum(alpha / alpha.sum() * rho)


def ref_rsa(x, y, *, metric, method):
  dx = scipy.spatial.distance.pdist(np.asarray(x, np.float64), metric)
  dy = scipy.spatial.distance.pdist(np.asarray(y, np.float64), metric)
  corr = scipy.stats.spearmanr if method == "spearman" else scipy.stats.pearsonr
  return corr(dx, dy)[0]


# --- data ---


def related(seed, n=150, dx=20, dy=30, *, noise=1.0):
  """Two representations of the same n examples sharing a 10-dimensional latent: clearly related, not equal."""
  rng = np.random.default_rng(seed)
  z = rng.standard_normal((n, 10))
  x = z @ rng.standard_normal((10, dx)) + noise * rng.standard_normal((n, dx))
  y = np.tanh(z @ rng.standard_normal((10, dy))) + noise * rng.standard_normal((n, dy))
  return x.astype(np.float32), y.astype(np.float32)


def hard(seed, **kw):
  """`related` offset by +1e3 and with feature scales spanning 1e-2..1e2, rounded to float32: the references
  see these same float32 values, so only the kernels' own rounding is measured."""
  x, y = related(seed, **kw)
  sx = np.logspace(-2, 2, x.shape[1])
  sy = np.logspace(2, -2, y.shape[1])
  return (x * sx + 1e3).astype(np.float32), (y * sy + 1e3).astype(np.float32)


INPUTS = {"plain": related, "offset_and_badly_scaled": hard}
RTOL = 1e-5


# --- agreement with the float64 references ---


@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("shape", [(150, 20, 30), (60, 200, 90)], ids=["tall", "wide"])
def test_procrustes_matches_reference(kind, shape):
  n, dx, dy = shape
  x, y = INPUTS[kind](0, n=n, dx=dx, dy=dy)
  expected = ref_procrustes(x, y)
  got = kernels.procrustes(x, y)
  np.testing.assert_allclose(got.similarity, expected, rtol=RTOL)
  np.testing.assert_allclose(got.distance, np.sqrt(2 - 2 * expected), rtol=RTOL)
  np.testing.assert_allclose(got.angle, np.arccos(expected), rtol=RTOL)


@pytest.mark.parametrize("kind", INPUTS)
def test_cca_matches_reference(kind):
  x, y = INPUTS[kind](1)
  rho = ref_cca(x, y)[0]
  got = kernels.cca(x, y)
  assert int(got.num_components) == 20
  np.testing.assert_allclose(got.correlations, rho, rtol=RTOL, atol=1e-6)
  np.testing.assert_allclose(got.mean, rho.mean(), rtol=RTOL)
  np.testing.assert_allclose(got.mean_squared, np.mean(rho**2), rtol=RTOL)


@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("shape", [(150, 20, 30), (60, 200, 90)], ids=["tall", "wide"])
def test_ridge_cca_matches_reference(kind, shape):
  n, dx, dy = shape
  x, y = INPUTS[kind](2, n=n, dx=dx, dy=dy)
  got = kernels.cca(x, y, ridge=0.1)
  rho = ref_cca(x, y, ridge=0.1)[0][: got.correlations.shape[0]]
  np.testing.assert_allclose(got.correlations[: min(dx, dy, n - 1)], rho[: min(dx, dy, n - 1)], rtol=RTOL, atol=1e-6)
  np.testing.assert_allclose(got.mean_squared * int(got.num_components), np.sum(rho**2), rtol=RTOL)


@pytest.mark.parametrize("kind", INPUTS)
def test_svcca_matches_reference(kind):
  x, y = INPUTS[kind](3, n=200, dx=60, dy=300)
  np.testing.assert_allclose(kernels.svcca(x, y, num_components=8).mean, ref_svcca(x, y, k=8), rtol=RTOL)
  if kind == "plain":  # the 99% cut of the scaled data sits near an eigenvalue boundary; the count is tested above
    np.testing.assert_allclose(kernels.svcca(x, y).mean, ref_svcca(x, y, variance_kept=0.99), rtol=RTOL)


@pytest.mark.parametrize("kind", INPUTS)
def test_pwcca_matches_reference(kind):
  x, y = INPUTS[kind](4)
  np.testing.assert_allclose(kernels.pwcca(x, y).similarity, ref_pwcca(x, y), rtol=RTOL)
  np.testing.assert_allclose(kernels.pwcca(y, x).similarity, ref_pwcca(y, x), rtol=RTOL)
  weights = kernels.pwcca(x, y).weights
  np.testing.assert_allclose(np.sum(weights), 1.0, rtol=1e-6)


@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("metric", ["correlation", "euclidean"])
@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_rsa_matches_reference(kind, metric, method):
  x, y = INPUTS[kind](5, n=120)
  expected = ref_rsa(x, y, metric=metric, method=method)
  np.testing.assert_allclose(kernels.rsa(x, y, metric=metric, method=method), expected, rtol=RTOL)
  np.testing.assert_allclose(
      kernels.rdm(x, metric=metric), scipy.spatial.distance.squareform(
          scipy.spatial.distance.pdist(np.asarray(x, np.float64), metric)), atol=1e-5 * (1 if metric == "correlation" else 1e3)
  )


def test_spearman_averages_tied_ranks():
  # Integer dissimilarities with many ties: the ranks must be averaged as scipy does. (Tied distances computed
  # from activations in float32 may differ by rounding, so the ties are set directly on the RDMs here.)
  rng = np.random.default_rng(6)
  n = 40
  a, b = rng.integers(0, 4, (n, n)), rng.integers(0, 3, (n, n))
  rdm_x = np.triu(a, 1) + np.triu(a, 1).T
  rdm_y = np.triu(a + b, 1) + np.triu(a + b, 1).T
  upper = np.triu_indices(n, 1)
  expected = scipy.stats.spearmanr(rdm_x[upper], rdm_y[upper])[0]
  got = kernels.rdm_similarity(rdm_x.astype(np.float32), rdm_y.astype(np.float32), method="spearman")
  np.testing.assert_allclose(got, expected, rtol=RTOL)
  assert abs(expected - scipy.stats.pearsonr(rdm_x[upper], rdm_y[upper])[0]) > 1e-3  # the ties matter here


# --- invariances ---


def test_procrustes_invariances():
  x, y = related(7)
  rng = np.random.default_rng(7)
  q, _ = np.linalg.qr(rng.standard_normal((20, 20)))
  base = float(kernels.procrustes(x, y).similarity)
  np.testing.assert_allclose(kernels.procrustes(x @ q, y).similarity, base, rtol=1e-5)  # orthogonal
  np.testing.assert_allclose(kernels.procrustes(3.7 * x + 2.0, 1e-3 * y).similarity, base, rtol=1e-5)  # scale, shift
  np.testing.assert_allclose(kernels.procrustes(y, x).similarity, base, rtol=1e-6)  # symmetric
  np.testing.assert_allclose(kernels.procrustes(x @ q, x).angle, 0.0, atol=2e-3)
  # ... but a general linear map changes the shape, so these tests could fail.
  assert abs(float(kernels.procrustes(x @ rng.standard_normal((20, 20)), y).similarity) - base) > 1e-2


def test_cca_invariant_to_invertible_linear_maps():
  x, y = related(8)
  rng = np.random.default_rng(8)
  # Condition numbers ~1e2 (a plain Gaussian matrix can reach 1e5, and float32 data then loses the small
  # correlations to rounding before any kernel runs).
  ax, ay = rng.standard_normal((20, 20)) + 3 * np.eye(20), rng.standard_normal((30, 30)) + 3 * np.eye(30)
  base = kernels.cca(x, y)
  mapped = kernels.cca((x @ ax).astype(np.float32), (y @ ay + 5.0).astype(np.float32))
  # Mixing makes the features collinear (condition ~1e2): float32 CCA is then good to ~ε·cond, not 1e-5.
  np.testing.assert_allclose(mapped.correlations, base.correlations, atol=1e-4)
  np.testing.assert_allclose(kernels.cca(y, x).correlations, base.correlations, rtol=1e-5)  # symmetric
  # SVCCA and PWCCA are not invariant to such maps (they change singular directions and neurons) ...
  assert abs(float(kernels.pwcca((x @ ax).astype(np.float32), y).similarity) - float(kernels.pwcca(x, y).similarity)) > 1e-3
  # ... but are to orthogonal maps / neuron permutations and isotropic scaling.
  q, _ = np.linalg.qr(rng.standard_normal((20, 20)))
  np.testing.assert_allclose(kernels.svcca((x @ q) * 7.0, y).mean, kernels.svcca(x, y).mean, rtol=1e-5)
  perm = rng.permutation(20)
  np.testing.assert_allclose(kernels.pwcca(-x[:, perm] * 7.0, y).similarity, kernels.pwcca(x, y).similarity, rtol=1e-5)
  np.testing.assert_allclose(kernels.cca(x, x).correlations, 1.0, rtol=1e-5)


def test_spearman_rsa_invariant_to_monotone_transforms():
  x, y = related(9, n=80)
  rx, ry = np.asarray(kernels.rdm(x, metric="euclidean")), np.asarray(kernels.rdm(y, metric="euclidean"))
  base = float(kernels.rdm_similarity(rx, ry, method="spearman"))
  np.testing.assert_allclose(kernels.rsa(x, y, metric="euclidean", method="spearman"), base, rtol=1e-6)
  np.testing.assert_allclose(kernels.rdm_similarity(rx**3, np.log1p(ry), method="spearman"), base, rtol=1e-6)
  # Pearson is not invariant to the same transform (the test above could fail).
  pearson = float(kernels.rdm_similarity(rx, ry, method="pearson"))
  assert abs(float(kernels.rdm_similarity(rx**3, np.log1p(ry), method="pearson")) - pearson) > 1e-2
  # Both metrics are unchanged by translation and isotropic scaling of the activations.
  np.testing.assert_allclose(kernels.rsa(4 * x + 1, y), kernels.rsa(x, y), rtol=1e-5)


# --- negative controls ---


def test_unrelated_and_shuffled_representations_score_low():
  x, y = related(10, n=300, noise=0.3)
  rng = np.random.default_rng(10)
  shuffled = y[rng.permutation(len(y))]
  independent = rng.standard_normal(y.shape).astype(np.float32)
  scores = {
      "procrustes": lambda a, b: kernels.procrustes(a, b).similarity,
      "cca": lambda a, b: kernels.cca(a, b).mean_squared,
      "svcca": lambda a, b: kernels.svcca(a, b, num_components=10).mean,
      "pwcca": lambda a, b: kernels.pwcca(a, b).similarity,
      "rsa": lambda a, b: kernels.rsa(a, b),
  }
  for name, score in scores.items():
    related_score = float(score(x, y))
    for control in (shuffled, independent):
      assert float(score(x, control)) < 0.5 * related_score, name
  assert abs(float(kernels.rsa(x, shuffled))) < 0.05


# --- all pairs, jit ---


def test_all_pairs_match_the_references():
  rng = np.random.default_rng(11)
  n = 100
  base = rng.standard_normal((n, 8))
  model_a = [np.tanh(base @ rng.standard_normal((8, d)) + 0.5 * rng.standard_normal((n, d))).astype(np.float32)
             for d in (10, 40, 150)]
  model_b = {f"l{i}": (base[:, :4] @ rng.standard_normal((4, d)) + rng.standard_normal((n, d))).astype(np.float32)
             for i, d in enumerate((30, 200))}
  b_layers = list(model_b.values())
  within = kernels.procrustes_all_pairs(model_a)
  across = kernels.procrustes_all_pairs(model_a, model_b)
  svcca_pairs = kernels.svcca_all_pairs(model_a, b_layers, num_components=6)
  rsa_pairs = kernels.rsa_all_pairs(model_a, b_layers, metric="euclidean")
  assert across.similarity.shape == svcca_pairs.mean.shape == rsa_pairs.shape == (3, 2)
  for i, a in enumerate(model_a):
    for j, a2 in enumerate(model_a):
      np.testing.assert_allclose(within.similarity[i, j], ref_procrustes(a, a2), rtol=1e-5)
    for j, b in enumerate(b_layers):
      np.testing.assert_allclose(across.similarity[i, j], ref_procrustes(a, b), rtol=1e-5)
      np.testing.assert_allclose(svcca_pairs.mean[i, j], ref_svcca(a, b, k=6), rtol=1e-5)
      np.testing.assert_allclose(rsa_pairs[i, j], ref_rsa(a, b, metric="euclidean", method="spearman"), rtol=1e-5)
  small = model_a[:2]  # plain CCA needs n > d + 1
  cca_pairs = kernels.cca_all_pairs(small)
  pwcca_pairs = kernels.pwcca_all_pairs(small)
  for i, a in enumerate(small):
    for j, a2 in enumerate(small):
      np.testing.assert_allclose(cca_pairs.mean_squared[i, j], np.mean(ref_cca(a, a2)[0] ** 2), rtol=1e-5)
      np.testing.assert_allclose(pwcca_pairs[i, j], ref_pwcca(a, a2), rtol=1e-5)
  assert abs(pwcca_pairs[0, 1] - pwcca_pairs[1, 0]) > 1e-3  # PWCCA is asymmetric: each side's neurons weigh


def test_jit_and_vmap():
  x, y = related(12, n=80)
  xs, ys = np.stack([x, 2 * x]), np.stack([y, y])
  sims = jax.jit(jax.vmap(lambda a, b: kernels.procrustes(a, b).similarity))(xs, ys)
  np.testing.assert_allclose(sims, kernels.procrustes(x, y).similarity, rtol=1e-5)
  means = jax.jit(jax.vmap(lambda a, b: kernels.svcca(a, b, num_components=5).mean))(xs, ys)
  np.testing.assert_allclose(means, kernels.svcca(x, y, num_components=5).mean, rtol=1e-5)
  np.testing.assert_allclose(jax.jit(lambda a, b: kernels.cca(a, b).mean)(x, y), kernels.cca(x, y).mean, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(lambda a, b: kernels.rsa(a, b))(x, y), kernels.rsa(x, y), rtol=1e-6)


# --- bad input ---


def test_errors():
  x, y = related(13, n=50)
  bad = x.copy()
  bad[3, 2] = np.nan
  for fn in (kernels.procrustes, kernels.cca, kernels.svcca, kernels.pwcca, kernels.rsa):
    with pytest.raises(ValueError, match="NaN"):
      fn(bad, y)
    with pytest.raises(ValueError, match="same examples"):
      fn(x, y[:40])
    with pytest.raises(ValueError, match="rank 2"):
      fn(x.reshape(50, 4, 5), y)
  wide = np.random.default_rng(0).standard_normal((50, 49)).astype(np.float32)
  with pytest.raises(ValueError, match="needs n > d \\+ 1"):
    kernels.cca(wide, y)
  kernels.cca(wide, y, ridge=0.1)  # the ridge makes it well posed
  with pytest.raises(ValueError, match="needs more than 50 examples"):
    kernels.svcca(wide, wide, num_components=49)
  with pytest.raises(ValueError, match="linearly dependent"):
    kernels.cca(np.concatenate([x, x[:, :1]], axis=1), y)
  with pytest.raises(ValueError, match="zero variance"):
    kernels.procrustes(np.ones_like(x), y)
  with pytest.raises(ValueError, match="same value in every feature|no finite spread"):
    kernels.rsa(np.ones_like(x), y)
  with pytest.raises(ValueError, match="`variance_kept`"):
    kernels.svcca(x, y, variance_kept=1.5)
  with pytest.raises(ValueError, match="`method`"):
    kernels.rsa(x, y, method="kendall")
  with pytest.raises(ValueError, match=r"layers_x\[1\]"):
    kernels.procrustes_all_pairs([x, bad])
  with pytest.raises(ValueError, match="same examples"):
    kernels.rsa_all_pairs([x], [y[:40]])


# --- fast paths (issue 16): QR before the pair SVD, integer-key ranks, the folded upper triangle, threads ---


@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("dims", [(20, 33), (33, 20), (40, 42)], ids=["wide_cross", "tall_cross", "near_square"])
def test_rectangular_cross_products_match_reference(kind, dims):
  # B_xᵀB_y of aspect ≥ 1.1 either way is reduced to a triangle by QR before its singular values; 40 × 42 is
  # not (its SVD runs on the rectangle).
  dx, dy = dims
  x, y = INPUTS[kind](14, n=150, dx=dx, dy=dy)
  np.testing.assert_allclose(kernels.procrustes(x, y).similarity, ref_procrustes(x, y), rtol=RTOL)
  rho = ref_cca(x, y)[0]
  got = kernels.cca(x, y)
  np.testing.assert_allclose(got.correlations, rho, rtol=RTOL, atol=1e-6)
  np.testing.assert_allclose(got.mean, rho.mean(), rtol=RTOL)
  ridge_rho = ref_cca(x, y, ridge=0.1)[0]
  np.testing.assert_allclose(kernels.cca(x, y, ridge=0.1).correlations, ridge_rho, rtol=RTOL, atol=1e-6)


def _ref_spearman(a, b):
  """Spearman's ρ from scipy's average ranks, written out: Pearson's r of the ranks."""
  ra, rb = scipy.stats.rankdata(a), scipy.stats.rankdata(b)
  ra, rb = ra - ra.mean(), rb - rb.mean()
  return float(ra @ rb / np.sqrt((ra @ ra) * (rb @ rb)))


def test_spearman_ranks_signed_values_zeros_and_infinities():
  # The ranks sort float bit patterns as integers: negatives, −0.0 against +0.0 (a tie), ±inf and
  # values near zero must order as the floats do.
  rng = np.random.default_rng(15)
  n = 31  # odd: the middle row of the folded upper triangle
  special = np.array([0.0, -0.0, np.inf, -np.inf, 1e-30, -1e-30, 3.0, -3.0], np.float32)
  upper = np.triu_indices(n, 1)
  values_x = rng.choice(np.concatenate([special, rng.standard_normal(40).astype(np.float32)]), len(upper[0]))
  values_y = values_x + rng.standard_normal(len(upper[0])).astype(np.float32)
  values_y[np.isinf(values_x)] = values_x[np.isinf(values_x)]  # keep the infinities
  rdm_x, rdm_y = np.zeros((n, n), np.float32), np.zeros((n, n), np.float32)
  for rdm_, values in ((rdm_x, values_x), (rdm_y, values_y)):
    rdm_[upper] = rdm_[upper[::-1]] = values  # set, not added: −0.0 + 0.0 would be +0.0
  # rdm_similarity rejects non-finite RDMs; the ranks themselves are checked on the finite part below.
  finite = np.isfinite(values_x) & np.isfinite(values_y)
  got = kernels.rdm_similarity(np.where(np.isfinite(rdm_x), rdm_x, 0.0), np.where(np.isfinite(rdm_y), rdm_y, 0.0))
  expected = _ref_spearman(np.where(finite, values_x, 0.0), np.where(np.isfinite(values_y), values_y, 0.0))
  np.testing.assert_allclose(got, expected, rtol=RTOL)
  # −0.0 and +0.0 both reach the kernel: the tie between them is exercised.
  assert np.any((values_x == 0) & np.signbit(values_x)) and np.any((values_x == 0) & ~np.signbit(values_x))


@pytest.mark.parametrize("n", [121, 2 * 61])
@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_rsa_odd_and_even_example_counts(n, method):
  x, y = hard(16, n=n)
  expected = ref_rsa(x, y, metric="correlation", method=method)
  np.testing.assert_allclose(kernels.rsa(x, y, method=method), expected, rtol=RTOL)
  pairs = kernels.rsa_all_pairs([x, y], method=method)
  np.testing.assert_allclose(pairs[0, 1], expected, rtol=RTOL)


def test_all_pairs_rectangular_groups_match_reference():
  # Widths 12 … 150 pad to different ladder rungs, so every group pair's cross product is rectangular (QR first)
  # or square; ridge CCA's mean needs the singular values, Spearman RSA the integer-key ranks.
  rng = np.random.default_rng(17)
  n = 90
  base = rng.standard_normal((n, 6))
  layers = [np.tanh(base @ rng.standard_normal((6, d)) + 0.3 * rng.standard_normal((n, d))).astype(np.float32)
            for d in (12, 40, 70, 150)]
  procrustes_pairs = kernels.procrustes_all_pairs(layers).similarity
  cca_pairs = kernels.cca_all_pairs(layers, ridge=0.1).mean
  rsa_pairs = kernels.rsa_all_pairs(layers, method="spearman")
  for i, a in enumerate(layers):
    for j, b in enumerate(layers):
      np.testing.assert_allclose(procrustes_pairs[i, j], ref_procrustes(a, b), rtol=RTOL)
      rho = ref_cca(a, b, ridge=0.1)[0][: min(a.shape[1], b.shape[1], n - 1)]
      np.testing.assert_allclose(cca_pairs[i, j], rho.mean(), rtol=RTOL)
      np.testing.assert_allclose(rsa_pairs[i, j], ref_rsa(a, b, metric="correlation", method="spearman"), rtol=RTOL)
