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
