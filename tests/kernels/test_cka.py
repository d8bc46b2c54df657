import jax
import numpy as np
import pytest

from rsim_jax import kernels
from tests.kernels import reference


@pytest.fixture
def demo_data():
  # The data of Kornblith et al.'s published CKA demo (google-research/representation_similarity/Demo.ipynb).
  np.random.seed(1337)
  x = np.random.randn(100, 10)
  y = np.random.randn(100, 10) + x
  return x, y


def test_golden_values_of_the_published_demo(demo_data):
  x, y = demo_data
  np.testing.assert_allclose(kernels.cka(x, y), 0.55761, atol=6e-6)
  np.testing.assert_allclose(kernels.linear_cka_features(x, y), 0.55761, atol=6e-6)
  np.testing.assert_allclose(kernels.cka(x, y, kernel="rbf", threshold=0.5), 0.65483, atol=6e-6)
  np.testing.assert_allclose(kernels.cka(x, y, debiased=True), 0.51346, atol=6e-6)
  np.testing.assert_allclose(kernels.linear_cka_features(x, y, debiased=True), 0.51346, atol=6e-6)
  np.testing.assert_allclose(
      kernels.cka_from_grams(kernels.gram_rbf(x, threshold=0.5), kernels.gram_rbf(y, threshold=0.5)), 0.65483,
      atol=6e-6,
  )


@pytest.mark.parametrize("debiased", [False, True])
def test_agrees_with_float64_reference(debiased):
  rng = np.random.default_rng(3)
  x = rng.standard_normal((200, 50)).astype(np.float32)
  y = np.tanh(x @ rng.standard_normal((50, 300)).astype(np.float32))
  expected = reference.cka(reference.linear_gram(x), reference.linear_gram(y), debiased=debiased)
  for got in (kernels.cka(x, y, debiased=debiased), kernels.linear_cka_features(x, y, debiased=debiased)):
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_large_offsets_and_scales_stay_accurate_in_float32():
  # Features offset by 1e4 and with scales spanning 1e-3..1e3: naive float32 Grams lose every digit here.
  rng = np.random.default_rng(4)
  x = rng.standard_normal((150, 40)) * np.logspace(-3, 3, 40)
  y = x[:, :20] @ rng.standard_normal((20, 30)) + rng.standard_normal((150, 30))
  x32, y32 = (x + 1e4).astype(np.float32), (y + 1e4).astype(np.float32)
  # The reference sees the same float32-rounded values, so only the kernel's own error is measured.
  expected = reference.cka(reference.linear_gram(x32 - x32.mean(0)), reference.linear_gram(y32 - y32.mean(0)))
  for got in (kernels.cka(x32, y32), kernels.linear_cka_features(x32, y32)):
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_invariances(demo_data):
  x, y = demo_data
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.standard_normal((10, 10)))
  base = kernels.cka(x, y)
  np.testing.assert_allclose(kernels.cka(x @ q, y), base, rtol=1e-5)  # orthogonal transform
  np.testing.assert_allclose(kernels.cka(x * 1.337, y * 1e-3), base, rtol=1e-5)  # isotropic scaling
  np.testing.assert_allclose(kernels.cka(x + 5.0, y), base, rtol=1e-5)  # translation
  np.testing.assert_allclose(kernels.cka(x, x), 1.0, rtol=1e-6)
  np.testing.assert_allclose(kernels.cka(y, x), base, rtol=1e-6)  # symmetry
  # ... but not to a general (non-orthogonal) linear map: the invariance tests could fail.
  assert abs(float(kernels.cka(x @ rng.standard_normal((10, 10)), y)) - float(base)) > 1e-3


def test_jit_and_vmap(demo_data):
  x, y = demo_data
  xs = np.stack([x, 2 * x]).astype(np.float32)
  ys = np.stack([y, y]).astype(np.float32)
  out = jax.jit(jax.vmap(lambda a, b: kernels.cka(a, b)))(xs, ys)
  np.testing.assert_allclose(out, [0.55761, 0.55761], atol=1e-5)


def test_errors(demo_data):
  x, y = demo_data
  with pytest.raises(ValueError, match="`x` must have rank 2"):
    kernels.cka(x.reshape(100, 2, 5), y)
  with pytest.raises(ValueError, match="same examples"):
    kernels.cka(x, y[:50])
  with pytest.raises(ValueError, match="NaN/Inf"):
    kernels.cka(np.where(np.arange(100)[:, None] == 3, np.nan, x), y)
  with pytest.raises(ValueError, match="`y` contains"):
    kernels.linear_cka_features(x, np.full_like(y, np.inf))
  with pytest.raises(ValueError, match="zero variance"):
    kernels.cka(x, np.ones_like(y))
  with pytest.raises(ValueError, match="at least 4"):
    kernels.cka(x[:3], y[:3], debiased=True)
  with pytest.raises(ValueError, match="kernel"):
    kernels.cka(x, y, kernel="cosine")
  assert np.isnan(kernels.cka(x, np.ones_like(y), on_undefined="nan"))


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_from_grams_of_offset_float32_features(debiased):
  # x + 1e4 is exact in float32 on this grid, so the float64 reference on the un-offset x is the exact answer.
  rng = np.random.default_rng(5)
  x = np.round(rng.standard_normal((80, 10)) * 256) / 256
  y = np.round((x[:, :4] @ rng.standard_normal((4, 6)) + rng.standard_normal((80, 6))) * 256) / 256
  expected = reference.cka(reference.linear_gram(x), reference.linear_gram(y), debiased=debiased)
  x32, y32 = (x + 1e4).astype(np.float32), (y + 1e4).astype(np.float32)
  got = kernels.cka_from_grams(
      kernels.gram_linear(x32, center=True), kernels.gram_linear(y32, center=True), debiased=debiased
  )
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  # Raw Grams: their centred part is float32 rounding noise. An error naming the Gram (or NaN if asked), never
  # a number.
  raw_x, raw_y = kernels.gram_linear(x32), kernels.gram_linear(y32)
  with pytest.raises(ValueError, match="`gram_x` has lost its centred part.*center=True"):
    kernels.cka_from_grams(raw_x, kernels.gram_linear(y32, center=True), debiased=debiased)
  with pytest.raises(ValueError, match="`gram_y` has lost its centred part"):
    kernels.cka_from_grams(kernels.gram_linear(x32, center=True), raw_y, debiased=debiased)
  assert np.isnan(kernels.cka_from_grams(raw_x, raw_y, debiased=debiased, on_undefined="nan"))
  assert np.isnan(jax.jit(lambda k, l: kernels.cka_from_grams(k, l, debiased=debiased))(raw_x, raw_y))
  # On the features, cka centres them itself.
  np.testing.assert_allclose(kernels.cka(x32, y32, debiased=debiased), expected, rtol=1e-4)


def test_cka_from_grams_zero_variance_is_not_reported_as_lost_precision():
  x = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32)
  with pytest.raises(ValueError, match="zero variance"):
    kernels.cka_from_grams(kernels.gram_linear(x), np.zeros((20, 20), np.float32))
