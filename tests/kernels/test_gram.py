import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsim_jax import kernels
from tests.kernels import reference


@pytest.fixture
def x():
  return np.random.default_rng(0).standard_normal((30, 7))


def test_gram_linear_matches_numpy(x):
  np.testing.assert_allclose(kernels.gram_linear(x), reference.linear_gram(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threshold", [0.5, 1.0, 2.0])
def test_gram_rbf_matches_numpy(x, threshold):
  np.testing.assert_allclose(
      kernels.gram_rbf(x, threshold=threshold), reference.rbf_gram(x, threshold), rtol=1e-5, atol=1e-6
  )


def test_gram_rbf_is_shift_invariant_in_float32(x):
  x32 = x.astype(np.float32)
  np.testing.assert_allclose(
      kernels.gram_rbf(x32 + 1e3, threshold=1.0), reference.rbf_gram(x32 + np.float32(1e3), 1.0), atol=2e-4
  )


def test_center_gram_biased_is_hkh(x):
  k = reference.linear_gram(x)
  h = reference.centering_matrix(len(k))
  np.testing.assert_allclose(kernels.center_gram(k.astype(np.float32)), h @ k @ h, rtol=1e-4, atol=1e-4)


def test_center_gram_unbiased_properties(x):
  k = reference.linear_gram(x).astype(np.float32)
  ku = np.asarray(kernels.center_gram(k, unbiased=True))
  np.testing.assert_array_equal(np.diag(ku), 0.0)
  # U-centred matrices have zero row sums, and their inner product / n(n-3) is Song's unbiased HSIC.
  np.testing.assert_allclose(ku.sum(1), 0.0, atol=1e-3)
  n = len(k)
  y = np.random.default_rng(1).standard_normal((n, 4))
  lu = np.asarray(kernels.center_gram(reference.linear_gram(y).astype(np.float32), unbiased=True))
  np.testing.assert_allclose(
      (ku * lu).sum() / (n * (n - 3)), reference.hsic_unbiased(reference.linear_gram(x), reference.linear_gram(y)),
      rtol=1e-4,
  )


def test_center_gram_jits_and_vmaps(x):
  grams = jnp.stack([kernels.gram_linear(x), kernels.gram_linear(2 * x)])
  out = jax.jit(jax.vmap(lambda g: kernels.center_gram(g, unbiased=True)))(grams)
  np.testing.assert_allclose(out[1], 4 * out[0], rtol=1e-4, atol=1e-3)


def test_errors(x):
  with pytest.raises(ValueError, match="`x` must have rank 2"):
    kernels.gram_linear(x[None])
  with pytest.raises(ValueError, match="square"):
    kernels.center_gram(np.zeros((3, 4)))
  with pytest.raises(ValueError, match="threshold"):
    kernels.gram_rbf(x, threshold=0.0)
  with pytest.raises(ValueError, match="at least 3"):
    kernels.center_gram(np.eye(2), unbiased=True)


def test_flatten_features():
  x = np.zeros((5, 4, 4, 3))
  assert kernels.flatten_features(x).shape == (5, 48)
  assert kernels.flatten_features(np.zeros(5)).shape == (5, 1)


# --- Features with a large common offset in float32 ---


@pytest.fixture
def grid_x(x):
  """`x` on a 2⁻⁸ grid: `x + 1e4` is exact in float32, so the float64 reference on `x` is the exact answer."""
  return np.round(x * 256) / 256


def test_gram_linear_center_is_the_centred_gram(x):
  h = reference.centering_matrix(len(x))
  np.testing.assert_allclose(
      kernels.gram_linear(x, center=True), h @ reference.linear_gram(x) @ h, rtol=1e-5, atol=1e-5
  )


def test_gram_linear_center_is_exact_at_offset_1e4_in_float32(grid_x):
  x32 = (grid_x + 1e4).astype(np.float32)
  expected = reference.linear_gram(grid_x, center=True)
  np.testing.assert_allclose(
      kernels.gram_linear(x32, center=True), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()
  )
  # Without centring the Gram is X Xᵀ as documented, entries ~ d·1e8 (the centred part is lost in its rounding).
  np.testing.assert_allclose(kernels.gram_linear(x32), reference.linear_gram(x32), rtol=1e-6)


def test_squared_distances_are_shift_invariant_at_offset_1e4_in_float32(grid_x):
  d2 = ((grid_x[:, None, :] - grid_x[None, :, :]) ** 2).sum(-1)
  got = kernels.squared_distances((grid_x + 1e4).astype(np.float32))
  np.testing.assert_allclose(got, d2, rtol=1e-4, atol=1e-4 * d2.max())
  np.testing.assert_array_equal(np.diag(got), 0.0)


def test_gram_rbf_at_offset_1e4_in_float32_matches_the_unoffset_reference(grid_x):
  got = kernels.gram_rbf((grid_x + 1e4).astype(np.float32), threshold=1.0)
  np.testing.assert_allclose(got, reference.rbf_gram(grid_x, 1.0), rtol=1e-4, atol=1e-5)


def test_centring_error_tracks_the_fraction_lost_to_centring(grid_x):
  from rsim_jax.kernels.gram import centring_error

  eps = np.finfo(np.float32).eps

  def error(offset):
    k = kernels.gram_linear((grid_x + offset).astype(np.float32))
    return float(centring_error(k, kernels.center_gram(k)))

  # Centred features: ~ε (all of the Gram survives). With an offset c ≫ 1 the fraction left falls as 1/c².
  assert error(0.0) < 3 * eps
  np.testing.assert_allclose(error(1e2) / error(1e1), 100.0, rtol=0.1)
  assert error(1e4) > 0.1  # nothing left: the centred Gram is rounding noise
  # Exactly zero centred Gram (constant features): 0, reported as zero variance by the callers, not as lost.
  assert float(centring_error(jnp.zeros((5, 5)), jnp.zeros((5, 5)))) == 0.0
  assert np.isnan(float(centring_error(jnp.full((3, 3), np.nan), jnp.full((3, 3), np.nan))))


def test_gram_errors_name_the_argument(x):
  with pytest.raises(ValueError, match="`x` must have rank 2"):
    kernels.squared_distances(x[0])
  with pytest.raises(ValueError, match="`x` must have rank 2"):
    kernels.gram_linear(x[None], center=True)
