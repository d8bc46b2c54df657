import numpy as np
import pytest

from rsim_jax import data


@pytest.fixture(scope="module")
def digits():
  return data.load("digits", "train")


def _keys(ds):
  return {im.tobytes() + bytes([lab]) for im, lab in zip(ds.images, ds.labels)}


def test_count_is_balanced_deterministic_and_seeded(digits):
  a = data.subsample(digits, count=200, seed=3)
  assert len(a) == 200 and np.bincount(a.labels).tolist() == [20] * 10
  b = data.subsample(digits, count=200, seed=3)
  np.testing.assert_array_equal(a.images, b.images)
  np.testing.assert_array_equal(a.labels, b.labels)
  assert _keys(a) != _keys(data.subsample(digits, count=200, seed=4))
  idx = data.subset_indices(digits.labels, 10, count=200, seed=3)
  assert np.all(np.diff(idx) > 0)  # original order
  np.testing.assert_array_equal(digits.select(idx).images, a.images)


def test_fraction_keeps_every_class_share(digits):
  sizes = np.bincount(digits.labels)
  for fraction in (1.0, 0.25, 0.0625):
    sub = data.subsample(digits, fraction=fraction, seed=0)
    np.testing.assert_array_equal(np.bincount(sub.labels, minlength=10),
                                  np.maximum(1, np.floor(fraction * sizes + 0.5)))
  whole = data.subsample(digits, fraction=1.0, seed=7)
  np.testing.assert_array_equal(whole.images, digits.images)


def test_subsets_are_nested_across_sizes(digits):
  """The data-set-size sweep: for one seed 6.25% ⊂ 25% ⊂ 100%, and counts nest with fractions."""
  fractions = [data.subsample(digits, fraction=f, seed=11) for f in (0.0625, 0.125, 0.25, 0.5, 1.0)]
  for small, large in zip(fractions, fractions[1:]):
    assert _keys(small) < _keys(large)
  counts = [data.subsample(digits, count=c, seed=11) for c in (10, 50, 300, 1000)]
  for small, large in zip(counts, counts[1:]):
    assert _keys(small) < _keys(large)
  assert _keys(counts[1]) <= _keys(fractions[2])  # 5 per class ⊂ 25% (≥ 35 per class)


def test_balanced_on_a_balanced_split():
  labels = np.repeat(np.arange(10), 5000)  # CIFAR-10's training labels
  idx = data.subset_indices(labels, 10, fraction=0.0625, seed=0)
  np.testing.assert_array_equal(np.bincount(labels[idx]), [313] * 10)
  idx = data.subset_indices(labels, 10, fraction=0.25, seed=0)
  np.testing.assert_array_equal(np.bincount(labels[idx]), [1250] * 10)


def test_errors_name_the_argument(digits):
  for bad in (0, 0.0, -0.5, 1.5):
    with pytest.raises(ValueError, match=r"`fraction` must be in \(0, 1\]"):
      data.subsample(digits, fraction=bad, seed=0)
  with pytest.raises(ValueError, match="exactly one"):
    data.subsample(digits, seed=0)
  with pytest.raises(ValueError, match="exactly one"):
    data.subsample(digits, fraction=0.5, count=10, seed=0)
  with pytest.raises(ValueError, match="`count`=5000 is larger than the split"):
    data.subsample(digits, count=5000, seed=0)
  with pytest.raises(ValueError, match="`count`=205 does not divide into the 10 classes.*200 or 210"):
    data.subsample(digits, count=205, seed=0)
  with pytest.raises(ValueError, match="class 0 has 3"):
    few = digits.select(np.concatenate([np.flatnonzero(digits.labels == 0)[:3], np.flatnonzero(digits.labels)]))
    data.subsample(few, count=100, seed=0)
  with pytest.raises(ValueError, match="`seed`"):
    data.subsample(digits, count=100, seed=-1)
