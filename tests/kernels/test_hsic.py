import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsim_jax import kernels
from tests.kernels import reference


def _grams(seed=0, n=40):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, 6))
  y = x @ rng.standard_normal((6, 9)) + rng.standard_normal((n, 9))
  return reference.linear_gram(x), reference.linear_gram(y)


@pytest.mark.parametrize("unbiased", [False, True])
def test_hsic_matches_reference(unbiased):
  k, l = _grams()
  expected = reference.hsic_unbiased(k, l) if unbiased else reference.hsic_biased(k, l)
  got = kernels.hsic(k.astype(np.float32), l.astype(np.float32), unbiased=unbiased)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_unbiased_hsic_is_unbiased_for_independent_data():
  # For independent x, y the population HSIC is 0: averaged over many draws the unbiased estimator is ~0
  # while the biased one stays clearly positive (it is O(1/n) biased upwards).
  rng = np.random.default_rng(0)
  biased, unbiased = [], []
  for _ in range(200):
    x, y = rng.standard_normal((12, 3)), rng.standard_normal((12, 3))
    k, l = reference.linear_gram(x), reference.linear_gram(y)
    biased.append(float(kernels.hsic(k, l)))
    unbiased.append(float(kernels.hsic(k, l, unbiased=True)))
  se = np.std(unbiased) / np.sqrt(len(unbiased))
  assert abs(np.mean(unbiased)) < 3 * se
  assert np.mean(biased) > 10 * np.std(biased) / np.sqrt(len(biased))


def test_errors():
  k, l = _grams(n=10)
  with pytest.raises(ValueError, match="same examples"):
    kernels.hsic(k, l[:9, :9])
  with pytest.raises(ValueError, match="at least 4"):
    kernels.hsic(k[:3, :3], l[:3, :3], unbiased=True)
  with pytest.raises(ValueError, match="gram_y"):
    kernels.hsic(k, l[0])


# --- Grams of float32 features with a large common offset ---


def _offset_features(n=60, seed=7):
  """Features on a 2⁻⁸ grid, so `x + 1e4` is exact in float32 (its spacing there is 2⁻¹⁰): the float64
  reference on the un-offset data is then the exact answer for the offset float32 input."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, 8))
  y = np.tanh(x @ rng.standard_normal((8, 12))) + 0.3 * rng.standard_normal((n, 12))
  return np.round(x * 256) / 256, np.round(y * 256) / 256


@pytest.mark.parametrize("unbiased", [False, True])
def test_offset_float32_grams_of_centred_features_match_float64(unbiased):
  x, y = _offset_features()
  h = reference.hsic_unbiased if unbiased else reference.hsic_biased
  expected = h(reference.linear_gram(x), reference.linear_gram(y))
  x32, y32 = (x + 1e4).astype(np.float32), (y + 1e4).astype(np.float32)
  np.testing.assert_array_equal(x32.astype(np.float64) - 1e4, x)  # the offset input is exact
  got = kernels.hsic(
      kernels.gram_linear(x32, center=True), kernels.gram_linear(y32, center=True), unbiased=unbiased
  )
  np.testing.assert_allclose(got, expected, rtol=1e-4)


@pytest.mark.parametrize("unbiased", [False, True])
def test_offset_float32_raw_grams_raise_instead_of_garbage(unbiased):
  x, y = _offset_features()
  kx = kernels.gram_linear((x + 1e4).astype(np.float32))  # entries ~ 8e8, centred part ~ 8: below float32
  ky = kernels.gram_linear(y.astype(np.float32))  # fine
  with pytest.raises(ValueError, match=r"`gram_x` has lost its centred part to float32 rounding.*center=True"):
    kernels.hsic(kx, ky, unbiased=unbiased)
  with pytest.raises(ValueError, match="`gram_y` has lost its centred part"):
    kernels.hsic(ky, kx, unbiased=unbiased)
  # Under jit the values cannot be checked: NaN, not a number that looks like an answer.
  assert np.isnan(jax.jit(lambda k, l: kernels.hsic(k, l, unbiased=unbiased))(kx, ky))
  assert np.isfinite(jax.jit(lambda k, l: kernels.hsic(k, l, unbiased=unbiased))(ky, ky))


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("offset", [0.0, 1.0, 10.0, 100.0, 1e3, 1e4])
def test_raw_grams_at_any_offset_are_accurate_or_refused(offset, unbiased):
  # The promise of `hsic`: a number within a few 1e-3 of √(HSIC(K,K)·HSIC(L,L)) (the CKA scale), or the
  # documented error. Small offsets must give the answer; 1e4 must be refused.
  x, y = _offset_features()
  h = reference.hsic_unbiased if unbiased else reference.hsic_biased
  kr, lr = reference.linear_gram(x), reference.linear_gram(y)
  expected, scale = h(kr, lr), np.sqrt(h(kr, kr) * h(lr, lr))
  kx = kernels.gram_linear((x + offset).astype(np.float32))
  ky = kernels.gram_linear((y + offset).astype(np.float32))
  try:
    got = float(kernels.hsic(kx, ky, unbiased=unbiased))
  except ValueError as e:
    assert "lost its centred part" in str(e)
    assert offset >= 100.0, f"refused at offset {offset}, where float32 keeps 4+ digits of the centred Gram"
    return
  assert offset < 1e4, f"offset 1e4 leaves only rounding noise, yet hsic returned {got}"
  np.testing.assert_allclose(got, expected, atol=2e-3 * scale)
  if offset <= 1.0:
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_constant_grams_are_zero_hsic_or_refused():
  # A Gram that centres to exactly 0 has HSIC exactly 0: nothing was lost (a dead ReLU layer's zero Gram; a
  # constant 3e8 over n = 8, whose double-centring means are exact). One whose centring leaves rounding
  # (n = 10: the means of 3e8 are not exact) cannot be told from a lost offset Gram, and is refused.
  _, l = _grams(n=10)
  l = l.astype(np.float32)
  assert float(kernels.hsic(np.full((8, 8), 3.0e8, np.float32), l[:8, :8])) == 0.0
  for unbiased in (False, True):
    assert float(kernels.hsic(np.zeros((10, 10), np.float32), l, unbiased=unbiased)) == 0.0
    with pytest.raises(ValueError, match="nearly\\) constant representation"):
      kernels.hsic(np.full((10, 10), 3.0e8, np.float32), l, unbiased=unbiased)


def test_non_finite_grams_are_named():
  k, l = _grams(n=10)
  with pytest.raises(ValueError, match="`gram_y` contains 1 NaN"):
    kernels.hsic(k, np.where(np.eye(10, dtype=bool) & (np.arange(10) == 2), np.nan, l))


def test_half_precision_grams_are_centred_in_float32():
  x, y = _offset_features()
  expected = reference.hsic_biased(reference.linear_gram(x, center=True), reference.linear_gram(y, center=True))
  kx = kernels.gram_linear(jnp.asarray(x, jnp.bfloat16), center=True)
  ky = kernels.gram_linear(jnp.asarray(y, jnp.bfloat16), center=True)
  got = kernels.hsic(kx, ky)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, rtol=3e-2)  # bfloat16 features: 2–3 significant digits
  with pytest.raises(ValueError, match="lost its centred part to bfloat16 rounding"):
    kernels.hsic(kernels.gram_linear(jnp.asarray(x + 30.0, jnp.bfloat16)), ky)
