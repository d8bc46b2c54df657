import numpy as np
import pytest

from rsim_jax.analysis import output_errors


def _population(rng, labels, hard, num_models, base_error=0.05, hard_error=0.6):
  """Models that err at random with base_error, and with hard_error on the examples in `hard`."""
  rate = np.where(hard, hard_error, base_error)
  wrong = rng.random((num_models, len(labels))) < rate[None]
  return np.where(wrong, (labels[None] + 1) % 10, labels[None])


def test_error_rates_and_class_accuracy():
  labels = np.array([0, 1, 1, 2])
  preds = np.array([[0, 1, 0, 2], [1, 1, 1, 2]])
  np.testing.assert_allclose(output_errors.per_example_error_rates(preds, labels), [0.5, 0, 0.5, 0])
  np.testing.assert_allclose(output_errors.per_class_accuracy(preds, labels), [[1, 0.5, 1], [0, 1, 1]])


def test_benjamini_hochberg():
  p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216])
  # Classic worked example: at FDR 0.05, the two smallest are discoveries.
  np.testing.assert_array_equal(output_errors.benjamini_hochberg(p), [True, True] + [False] * 8)
  # Step-up, not step-down: sorted 0.01, 0.03, 0.035, 0.5 against α·i/m = 0.0125, 0.025, 0.0375, 0.05; p_(2)
  # fails its own threshold but p_(3) passes, so k = 3 (a step-down procedure would stop at 1). Input order kept.
  shuffled = np.array([0.035, 0.5, 0.01, 0.03])
  np.testing.assert_array_equal(output_errors.benjamini_hochberg(shuffled), [True, False, True, True])
  assert output_errors.benjamini_hochberg(np.array([])).shape == (0,)
  with pytest.raises(ValueError, match="`alpha`"):
    output_errors.benjamini_hochberg(p, alpha=0)
  with pytest.raises(ValueError, match="no NaN"):
    output_errors.benjamini_hochberg(np.array([0.01, np.nan]))


def _loop_permutation_p(errors, n_a, num_permutations, rng):
  """Reference: the textbook loop, one `rng.permutation` per relabelling, T from group means."""
  def t(x, y):
    return float(np.sum((x.mean(0) - y.mean(0)) ** 2))

  observed = t(errors[:n_a], errors[n_a:])
  count = sum(t(errors[p[:n_a]], errors[p[n_a:]]) >= observed
              for p in (rng.permutation(len(errors)) for _ in range(num_permutations)))
  return observed, (count + 1) / (num_permutations + 1)


@pytest.mark.parametrize("m_a,m_b,n", [(3, 4, 50), (1, 2, 30), (12, 12, 400)])
def test_vectorised_permutation_test_is_the_loop(m_a, m_b, n):
  # Same permutations (rng.permuted rows == successive rng.permutation calls), same T, same p, bit for bit;
  # (1, 2) is the seed-split baseline of a 3-seed population, which scipy.stats.permutation_test refuses.
  rng = np.random.default_rng(m_a * 100 + n)
  errors = (rng.random((m_a + m_b, n)) < 0.2).astype(np.float64)
  errors[:m_a, : n // 5] = 1.0  # A errs on the first fifth
  got = output_errors._permutation_test(errors, m_a, num_permutations=299, rng=np.random.default_rng(7))
  ref = _loop_permutation_p(errors, m_a, 299, np.random.default_rng(7))
  assert got == ref


def test_three_seed_population_and_the_example_p_value():
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 10, 200)
  a = _population(rng, labels, np.arange(200) < 40, 3)
  b = _population(rng, labels, np.arange(200) >= 160, 3)
  cmp = output_errors.compare_example_errors(a, b, labels, num_permutations=199, seed=4)
  # Reference from first principles: the seed's generator draws the A-vs-B relabellings, then the halves of A.
  ea, eb = (a != labels).astype(float), (b != labels).astype(float)
  ref_rng = np.random.default_rng(4)
  stat, p = _loop_permutation_p(np.concatenate([ea, eb]), 3, 199, ref_rng)
  halves = ref_rng.permutation(3)
  base_stat, base_p = _loop_permutation_p(np.concatenate([ea[halves[:1]], ea[halves[1:]]]), 1, 199, ref_rng)
  assert (cmp.statistic, cmp.p_value, cmp.baseline_statistic, cmp.baseline_p_value) == (stat, p, base_stat, base_p)
  # 3 + 3 models have 20 relabellings; the observed one and its mirror (A ↔ B, same T) are the most extreme, so
  # the sampled p estimates 2/20.
  assert abs(cmp.p_value - 0.1) < 0.04
  with pytest.raises(ValueError, match="`num_permutations`"):
    output_errors.compare_example_errors(a, b, labels, num_permutations=0)


def test_different_hard_examples_are_detected_and_same_architecture_is_not():
  rng = np.random.default_rng(0)
  n = 600
  labels = rng.integers(0, 10, n)
  hard_a = np.zeros(n, bool)
  hard_a[:60] = True
  hard_b = np.zeros(n, bool)
  hard_b[60:120] = True  # same overall accuracy, different hard examples
  a = _population(rng, labels, hard_a, 12)
  b = _population(rng, labels, hard_b, 12)
  cmp = output_errors.compare_example_errors(a, b, labels, num_permutations=199)
  assert cmp.p_value < 0.01 and cmp.baseline_p_value > 0.01
  # 120 truly different examples; with 12 seeds a side Fisher finds a good share of them, the halves none.
  assert cmp.significant_examples > 20 and cmp.baseline_significant_examples < 3
  same = output_errors.compare_example_errors(a, _population(rng, labels, hard_a, 12), labels, num_permutations=199)
  assert same.p_value > 0.01 and same.significant_examples < 5


def test_class_level():
  rng = np.random.default_rng(1)
  labels = np.repeat(np.arange(5), 200)
  a = _population(rng, labels, labels == 3, 8)
  b = _population(rng, labels, labels == 4, 8)
  cmp = output_errors.compare_class_accuracy(a, b, labels)
  assert cmp.significant.tolist() == [False, False, False, True, True]
  assert cmp.difference[3] < -0.4 and cmp.difference[4] > 0.4


def test_errors():
  with pytest.raises(ValueError, match="num_models, num_examples"):
    output_errors.per_example_error_rates(np.zeros(5), np.zeros(5))
  with pytest.raises(ValueError, match="at least 2 models"):
    output_errors.per_example_error_rates(np.zeros((1, 5)), np.zeros(5))
  with pytest.raises(ValueError, match="`labels` has 4"):
    output_errors.compare_example_errors(np.zeros((3, 5)), np.zeros((3, 5)), np.zeros(4))


def test_compare_populations_is_both_tests_and_the_error_rates():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, 200)
  hard = np.zeros(200, bool)
  hard[:20] = True
  a, b = _population(rng, labels, hard, 4), _population(rng, labels, ~hard, 4)
  out = output_errors.compare_populations(a, b, labels)
  assert list(out) == ["examples", "classes", "error_rate_a", "error_rate_b"]
  assert out["examples"] == output_errors.compare_example_errors(a, b, labels).to_json()
  assert out["classes"] == output_errors.compare_class_accuracy(a, b, labels).to_json()
  np.testing.assert_allclose(out["error_rate_a"], output_errors.per_example_error_rates(a, labels))
  np.testing.assert_allclose(out["error_rate_b"], output_errors.per_example_error_rates(b, labels))
