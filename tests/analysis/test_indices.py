"""`analysis.indices.all_pairs`: every index equals its kernel on each layer pair, diagonal 1, errors."""

import numpy as np
import pytest

from rsim_jax import kernels
from rsim_jax.analysis import indices


def _layers(n=80, seed=0, widths=(6, 10, 4)):
  """A chain of related layers (each a noisy leaky-ReLU map of the previous), so that the indices are far from 0."""
  rng = np.random.default_rng(seed)
  h = rng.standard_normal((n, 5))
  out = {}
  for i, w in enumerate(widths):
    z = h @ rng.standard_normal((h.shape[1], w)) + 0.5 * rng.standard_normal((n, w))
    h = np.where(z > 0, z, 0.1 * z)
    out[f"l{i}"] = h.astype(np.float32)
  return out


# The per-pair kernel each index stands for.
PAIR = {
    "linear_cka": lambda x, y, **o: kernels.cka(x, y),
    "debiased_cka": lambda x, y, **o: kernels.cka(x, y, debiased=True),
    "procrustes": lambda x, y, **o: kernels.procrustes(x, y).similarity,
    "cca": lambda x, y, **o: kernels.cca(x, y, **o).mean,
    "svcca": lambda x, y, **o: kernels.svcca(x, y, **o).mean,
    "pwcca": lambda x, y, **o: kernels.pwcca(x, y, **o).similarity,
    "rsa_pearson": lambda x, y, **o: kernels.rsa(x, y, method="pearson", **o),
    "rsa_spearman": lambda x, y, **o: kernels.rsa(x, y, method="spearman", **o),
}


def _pairwise(xs, ys, index, **options):
  xs, ys = list(xs.values()), list(ys.values())
  return np.array([[float(PAIR[index](x, y, **options)) for y in ys] for x in xs])


def test_every_index_is_listed_with_a_description_and_a_kernel():
  assert set(indices.INDICES) == set(indices.DESCRIPTIONS) == set(indices.OPTIONS) == set(PAIR)


@pytest.mark.parametrize("index", indices.INDICES)
def test_one_model_equals_the_kernel_on_each_pair_with_unit_diagonal(index):
  acts = _layers()
  matrix = indices.all_pairs(acts, index=index)
  assert matrix.shape == (3, 3) and matrix.dtype == np.float64
  np.testing.assert_allclose(matrix, _pairwise(acts, acts, index), rtol=2e-4, atol=2e-5)
  np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-4)
  off = matrix[~np.eye(3, dtype=bool)]
  assert np.all(np.abs(off) < 0.999) and np.any(np.abs(off) > 0.2)  # a real comparison, not all 1s or 0s


@pytest.mark.parametrize("index", indices.INDICES)
def test_two_models_equal_the_kernel_on_each_pair(index):
  xs, ys = _layers(seed=0), _layers(seed=1, widths=(7, 3))
  matrix = indices.all_pairs(xs, ys, index=index)
  assert matrix.shape == (3, 2)
  np.testing.assert_allclose(matrix, _pairwise(xs, ys, index), rtol=2e-4, atol=2e-5)


def test_pwcca_rows_are_weighted_by_the_row_layer():
  acts = _layers()
  matrix = indices.all_pairs(acts, index="pwcca")
  assert abs(matrix[0, 1] - matrix[1, 0]) > 1e-4  # asymmetric: [i, j] weighs by layer i's neurons
  np.testing.assert_allclose(matrix[0, 1], kernels.pwcca(acts["l0"], acts["l1"]).similarity, rtol=1e-4)
  np.testing.assert_allclose(matrix[1, 0], kernels.pwcca(acts["l1"], acts["l0"]).similarity, rtol=1e-4)


def test_linear_cka_against_float64_feature_space_formula():
  # Kornblith et al. (2019), Eq. 5: ‖X̃ᵀỸ‖²_F / (‖X̃ᵀX̃‖_F ‖ỸᵀỸ‖_F), in float64 NumPy.
  xs, ys = _layers(seed=0), _layers(seed=2, widths=(9, 2))

  def ref(x, y):
    x, y = (np.asarray(a, np.float64) for a in (x, y))
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(x.T @ y) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))

  expected = np.array([[ref(x, y) for y in ys.values()] for x in xs.values()])
  np.testing.assert_allclose(indices.all_pairs(xs, ys, index="linear_cka"), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("index, options", [("cca", {"ridge": 0.3}), ("svcca", {"num_components": 3}),
                                            ("pwcca", {"variance_kept": 0.9}), ("rsa_spearman", {"metric": "euclidean"})])
def test_options_reach_the_kernel(index, options):
  acts = _layers()
  matrix = indices.all_pairs(acts, index=index, **options)
  np.testing.assert_allclose(matrix, _pairwise(acts, acts, index, **options), rtol=2e-4, atol=2e-5)
  assert not np.allclose(matrix, indices.all_pairs(acts, index=index), atol=1e-3)


def test_errors():
  acts = _layers()
  with pytest.raises(ValueError, match="Unknown similarity `index` 'cka'; choose one of linear_cka, debiased_cka"):
    indices.all_pairs(acts, index="cka")
  with pytest.raises(ValueError, match=r"'procrustes' takes no option\(s\) \['ridge'\]; its options: none"):
    indices.all_pairs(acts, index="procrustes", ridge=0.1)
  with pytest.raises(ValueError, match=r"takes no option\(s\) \['metric'\]; its options: ridge"):
    indices.all_pairs(acts, index="cca", metric="euclidean")
  with pytest.raises(ValueError, match=r"`layers_y\[1\]` has zero variance"):
    indices.all_pairs(acts, {"a": acts["l0"], "b": np.ones((80, 3), np.float32)}, index="linear_cka")
  with pytest.raises(ValueError, match="examples"):
    indices.all_pairs(acts, _layers(n=70), index="debiased_cka")
