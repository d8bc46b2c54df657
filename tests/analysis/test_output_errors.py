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
