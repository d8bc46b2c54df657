import itertools

import jax
import numpy as np
import pytest

from rsim_jax import data, parallel


@pytest.fixture(scope="module")
def digits():
  return data.load("digits", "train")


def test_subset_is_balanced_deterministic_and_nested(digits):
  a = data.subsample(digits, count=200, seed=3)
  assert len(a) == 200 and np.bincount(a.labels).tolist() == [20] * 10
  np.testing.assert_array_equal(a.images, data.subsample(digits, count=200, seed=3).images)
  assert not np.array_equal(a.images, data.subsample(digits, count=200, seed=4).images)
  quarter = data.subsample(digits, fraction=0.25, seed=3)
  small = data.subsample(digits, count=50, seed=3)
  as_rows = lambda ds: {r.tobytes() for r in ds.images}
  assert as_rows(small) <= as_rows(a) <= as_rows(quarter)


def test_subset_errors(digits):
  with pytest.raises(ValueError, match="fraction"):
    data.subsample(digits, fraction=1.5, seed=0)
  with pytest.raises(ValueError, match="exactly one"):
    data.subsample(digits, seed=0)
  with pytest.raises(ValueError, match=r"\[1, 1437\]"):
    data.subset(digits, 5000, seed=0)
  with pytest.raises(ValueError, match="class 0"):
    data.subset(digits.select(np.flatnonzero(digits.labels != 0)[:50].tolist() + [int(np.flatnonzero(digits.labels == 0)[0])]), 50, seed=0)


def test_augmentation_properties():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, size=(64, 8, 8, 1), dtype=np.uint8)
  out = data.augment_batch(images, np.random.default_rng(1), padding=0)
  flipped = np.array([np.array_equal(o, im[:, ::-1]) for o, im in zip(out, images)])
  same = np.array([np.array_equal(o, im) for o, im in zip(out, images)])
  assert (flipped | same).all() and 10 < flipped.sum() < 54  # padding 0: only flips, about half
  cropped = data.augment_batch(images, np.random.default_rng(2))
  assert cropped.shape == images.shape
  np.testing.assert_array_equal(cropped, data.augment_batch(images, np.random.default_rng(2)))


def test_resume_equals_uninterrupted(digits):
  full = list(itertools.islice(data.train_batches(digits, batch_size=100, seed=5, augment=True), 30))
  tail = list(data.train_batches(digits, batch_size=100, seed=5, augment=True, start_step=17, num_steps=13))
  for a, b in zip(full[17:], tail):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  # An epoch of 14 full batches visits 1400 distinct examples.
  epoch = np.concatenate([b["label"] for b in full[:14]])
  assert len(epoch) == 1400


def test_process_shares_partition_the_global_batch(digits):
  whole = next(data.train_batches(digits, batch_size=96, seed=1, augment=True))
  for count in (2, 4):
    parts = [next(data.train_batches(digits, batch_size=96, seed=1, augment=True, process_index=p, process_count=count))
             for p in range(count)]
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), whole["image"])
  with pytest.raises(ValueError, match="divide over the 5 processes"):
    next(data.train_batches(digits, batch_size=96, seed=1, process_index=0, process_count=5))


def test_eval_batches_cover_every_example_once():
  test = data.load("digits", "test")
  batches = list(data.eval_batches(test, batch_size=64))
  assert len(batches) == 6 and all(b["image"].shape == (64, 8, 8, 1) for b in batches)
  mask = np.concatenate([b["mask"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])[mask]
  assert mask.sum() == 360 and not mask[360:].any()
  np.testing.assert_array_equal(labels, test.labels)
  assert (batches[-1]["image"][~batches[-1]["mask"]] == 0).all()


def test_normalisation_matches_statistics(digits):
  x = np.concatenate([b["image"] for b in data.eval_batches(digits, batch_size=500)])[: len(digits)]
  np.testing.assert_allclose(x.mean(), 0.0, atol=1e-3)
  np.testing.assert_allclose(x.std(), 1.0, atol=1e-3)


def test_to_global_shards_over_eight_devices(digits):
  mesh = parallel.data_mesh()
  batch = data.to_global(next(data.train_batches(digits, batch_size=64, seed=0)), mesh)
  assert batch["image"].shape == (64, 8, 8, 1)
  assert len(batch["image"].sharding.device_set) == 8
  assert batch["image"].addressable_shards[0].data.shape == (8, 8, 8, 1)
