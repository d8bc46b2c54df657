"""Output-level differences between architectures (Nguyen, Raghu & Kornblith 2021, Sec. 6).

Given populations of trained models (several seeds per architecture) evaluated on the same test set, do
wide and deep models make *different* errors, beyond what retraining the same architecture with another
seed changes? Two questions, each against the seed-to-seed baseline:

* Per example: each example's error rate in population A vs population B. The global statistic is
  `T = Σ_i (ē_A,i − ē_B,i)²`; its null distribution comes from permuting the model labels between the two
  populations (exact under exchangeability, whatever the population sizes). The same statistic between two
  halves of one population gives the seed-to-seed baseline. Per-example significance: two-sided Fisher exact
  tests on the 2×2 tables (errors / correct × A / B), with Benjamini–Hochberg control of the false discovery
  rate.
* Per class: each model's accuracy on each class; Welch's t-test of A vs B per class, Benjamini–Hochberg.

Library use: Benjamini–Hochberg is `scipy.stats.false_discovery_control`, Fisher's test `scipy.stats.fisher_exact`,
Welch's `scipy.stats.ttest_ind`. The permutation test is written here, vectorised over the permutations with
NumPy, rather than `scipy.stats.permutation_test`, because scipy needs at least two observations per group and
the seed-split baseline of a 3-seed population (the local study) has a one-model half; it draws the same
permutations as successive `rng.permutation` calls, so a seed gives the p-values it always gave.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from scipy import stats


def _check_population(predictions, labels, name: str) -> np.ndarray:
  predictions = np.asarray(predictions)
  labels = np.asarray(labels)
  if predictions.ndim != 2:
    raise ValueError(f"`{name}` must be (num_models, num_examples) predicted classes, got shape {predictions.shape}.")
  if predictions.shape[1] != labels.shape[0]:
    raise ValueError(f"`{name}` has {predictions.shape[1]} examples per model but `labels` has {labels.shape[0]}.")
  if predictions.shape[0] < 2:
    raise ValueError(f"`{name}` needs at least 2 models (seeds) to measure variation, got {predictions.shape[0]}.")
  return predictions


def per_example_error_rates(predictions, labels) -> np.ndarray:
  """`(N,)` fraction of the models `(M, N)` that misclassify each example."""
  predictions = _check_population(predictions, labels, "predictions")
  return np.mean(predictions != np.asarray(labels)[None, :], axis=0)


def per_class_accuracy(predictions, labels, *, num_classes: int | None = None) -> np.ndarray:
  """`(M, C)` accuracy of each model on each class."""
  predictions = _check_population(predictions, labels, "predictions")
  labels = np.asarray(labels)
  num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
  correct = predictions == labels[None, :]
  out = np.full((predictions.shape[0], num_classes), np.nan)
  for c in range(num_classes):
    members = labels == c
    if members.any():
      out[:, c] = correct[:, members].mean(axis=1)
  return out


def benjamini_hochberg(p_values: np.ndarray, *, alpha: float = 0.05) -> np.ndarray:
  """Boolean mask of discoveries at false discovery rate `alpha` (Benjamini & Hochberg 1995).

  With the m p-values sorted, p_(1) ≤ … ≤ p_(m), the discoveries are the k smallest,
  k = max{i : p_(i) ≤ α·i/m} (none if no i qualifies): the p-values whose BH-adjusted value
  `scipy.stats.false_discovery_control(p)` is ≤ α, which is how it is computed.

  Args:
    p_values: `(m,)` p-values in [0, 1] (no NaN).
    alpha: the false discovery rate, in (0, 1).

  Returns:
    `(m,)` bool, True for the discoveries.
  """
  if not 0 < alpha < 1:
    raise ValueError(f"`alpha` must be a false discovery rate in (0, 1), got {alpha}.")
  p = np.asarray(p_values, np.float64).reshape(-1)
  if p.size == 0:
    return np.zeros(0, bool)
  if not np.all((p >= 0) & (p <= 1)):  # NaN fails too
    raise ValueError("`p_values` must lie in [0, 1] (no NaN); map undefined tests to 1 (no evidence) first.")
  return stats.false_discovery_control(p, method="bh") <= alpha


def _fisher_p_values(errors_a: np.ndarray, n_a: int, errors_b: np.ndarray, n_b: int) -> np.ndarray:
  """Two-sided Fisher exact p-value per example; tables are cached since counts repeat a lot."""
  cache: dict[tuple[int, int], float] = {}
  out = np.empty(errors_a.shape, np.float64)
  for i, (ea, eb) in enumerate(zip(errors_a.tolist(), errors_b.tolist())):
    key = (ea, eb)
    if key not in cache:
      cache[key] = stats.fisher_exact([[ea, n_a - ea], [eb, n_b - eb]]).pvalue
    out[i] = cache[key]
  return out


def _split_statistics(pooled_errors: np.ndarray, perms: np.ndarray, n_a: int) -> np.ndarray:
  """`(P,)` T = Σ_i (ē_A,i − ē_B,i)² for each row of `perms` `(P, M)`: A = the models perms[:, :n_a], B the rest.

  Group means are error counts (sums of 0/1, exact in float64: by a selection-matrix product for A, the total
  minus A's for B) over the group size, the values `np.mean` gives.
  """
  m = len(pooled_errors)
  in_a = np.zeros((len(perms), m))
  in_a[np.arange(len(perms))[:, None], perms[:, :n_a]] = 1.0
  count_a = in_a @ pooled_errors
  diff = count_a / n_a - (pooled_errors.sum(0) - count_a) / (m - n_a)
  return np.sum(diff * diff, axis=-1)


def _permutation_test(pooled_errors: np.ndarray, n_a: int, *, num_permutations: int, rng) -> tuple[float, float]:
  """Observed `T` for the split [:n_a] | [n_a:] of the `(M, N)` errors and its permutation p-value.

  p = (1 + #{b : T_b ≥ T}) / (1 + B) over B = `num_permutations` random relabellings (Phipson & Smyth 2010),
  the estimator of `scipy.stats.permutation_test(..., alternative="greater")` when it samples. The relabellings are
  `rng.permuted` rows, the same permutations as B successive `rng.permutation(M)` calls; T is computed for
  blocks of them at once.
  """
  m, n = pooled_errors.shape
  observed = float(_split_statistics(pooled_errors, np.arange(m)[None], n_a)[0])
  perms = rng.permuted(np.broadcast_to(np.arange(m), (num_permutations, m)), axis=1)
  block = max(1, (1 << 22) // max(1, n))  # ≤ 4M float64 per (block, N) intermediate
  count = 0
  for s in range(0, num_permutations, block):
    count += int(np.sum(_split_statistics(pooled_errors, perms[s : s + block], n_a) >= observed))
  return observed, (count + 1) / (num_permutations + 1)


@dataclasses.dataclass(frozen=True)
class ExampleLevelComparison:
  """Per-example error differences of population A vs B, against A's own seed-to-seed split."""

  statistic: float  # T = Σ_i (ē_A,i − ē_B,i)²
  p_value: float  # permutation test of A vs B
  baseline_statistic: float  # T between two random halves of A
  baseline_p_value: float
  significant_examples: int  # Fisher + BH discoveries, A vs B
  baseline_significant_examples: int  # the same between the halves of A
  error_rate_a: np.ndarray  # (N,)
  error_rate_b: np.ndarray  # (N,)

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d.pop("error_rate_a")
    d.pop("error_rate_b")
    d["mean_error_a"] = float(np.mean(self.error_rate_a))
    d["mean_error_b"] = float(np.mean(self.error_rate_b))
    return d


def compare_example_errors(
    predictions_a,
    predictions_b,
    labels,
    *,
    alpha: float = 0.05,
    num_permutations: int = 999,
    seed: int = 0,
) -> ExampleLevelComparison:
  """Do populations A and B `(M_A, N)`, `(M_B, N)` err on different examples? (see the module docstring).

  The baseline splits A into two random halves, so it needs M_A ≥ 4 to mean anything.
  `num_permutations` relabellings (≥ 1) per permutation test; `seed` fixes them and the split.
  """
  if isinstance(num_permutations, bool) or not isinstance(num_permutations, (int, np.integer)) or num_permutations < 1:
    raise ValueError(f"`num_permutations` must be a positive int (999 gives p-values in steps of 0.001), got "
                     f"{num_permutations!r}.")
  labels = np.asarray(labels)
  a = _check_population(predictions_a, labels, "predictions_a")
  b = _check_population(predictions_b, labels, "predictions_b")
  rng = np.random.default_rng(seed)
  errors_a = (a != labels[None]).astype(np.float64)
  errors_b = (b != labels[None]).astype(np.float64)
  statistic, p_value = _permutation_test(
      np.concatenate([errors_a, errors_b]), len(a), num_permutations=num_permutations, rng=rng
  )
  halves = rng.permutation(len(a))
  half = len(a) // 2
  a1, a2 = errors_a[halves[:half]], errors_a[halves[half:]]
  base_statistic, base_p = _permutation_test(
      np.concatenate([a1, a2]), len(a1), num_permutations=num_permutations, rng=rng
  )

  def discoveries(x, y):
    p = _fisher_p_values(x.sum(0).astype(int), len(x), y.sum(0).astype(int), len(y))
    return int(benjamini_hochberg(p, alpha=alpha).sum())

  return ExampleLevelComparison(
      statistic, p_value, base_statistic, base_p, discoveries(errors_a, errors_b), discoveries(a1, a2),
      errors_a.mean(0), errors_b.mean(0),
  )


@dataclasses.dataclass(frozen=True)
class ClassLevelComparison:
  """Per-class accuracy of A vs B: Welch t-tests across seeds, BH-corrected."""

  accuracy_a: np.ndarray  # (C,) mean over A's models
  accuracy_b: np.ndarray  # (C,)
  difference: np.ndarray  # (C,) accuracy_a − accuracy_b
  p_values: np.ndarray  # (C,)
  significant: np.ndarray  # (C,) bool, BH at alpha

  def to_json(self) -> dict:
    return {k: np.asarray(v).tolist() for k, v in dataclasses.asdict(self).items()}


def compare_class_accuracy(predictions_a, predictions_b, labels, *, alpha: float = 0.05) -> ClassLevelComparison:
  """Which classes does A classify better or worse than B, beyond seed-to-seed variation?"""
  labels = np.asarray(labels)
  num_classes = int(labels.max()) + 1
  acc_a = per_class_accuracy(predictions_a, labels, num_classes=num_classes)
  acc_b = per_class_accuracy(predictions_b, labels, num_classes=num_classes)
  # Classes every seed of both populations gets equally right (common on easy data) have zero variance; scipy
  # warns about them and returns NaN, which the next line reads as "no evidence of a difference".
  with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    p = stats.ttest_ind(acc_a, acc_b, axis=0, equal_var=False).pvalue
  p = np.where(np.isfinite(p), p, 1.0)  # identical constant accuracies: no evidence of a difference
  return ClassLevelComparison(
      acc_a.mean(0), acc_b.mean(0), acc_a.mean(0) - acc_b.mean(0), p, benjamini_hochberg(p, alpha=alpha)
  )


def compare_populations(predictions_a, predictions_b, labels) -> dict:
  """Both output-level comparisons of two populations of models (Nguyen et al. 2021, Sec. 6), as JSON.

  Args:
    predictions_a, predictions_b: `(M_A, N)`, `(M_B, N)` predicted classes of every model (seed) of each
      population on the same N examples.
    labels: `(N,)` true classes.

  Returns:
    `{"examples": compare_example_errors(...).to_json(), "classes": compare_class_accuracy(...).to_json(),
    "error_rate_a": (N,) list, "error_rate_b": (N,) list}` (`per_example_error_rates` of each population),
    with the default settings of each test.
  """
  return {
      "examples": compare_example_errors(predictions_a, predictions_b, labels).to_json(),
      "classes": compare_class_accuracy(predictions_a, predictions_b, labels).to_json(),
      "error_rate_a": per_example_error_rates(predictions_a, labels).tolist(),
      "error_rate_b": per_example_error_rates(predictions_b, labels).tolist(),
  }
