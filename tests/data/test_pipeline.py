import itertools

import jax
import numpy as np
import pytest

from rsim_jax import data, parallel


@pytest.fixture(scope="module")
def digits():
  return data.load("digits", "train")


def indexed(n, *, num_classes=5, size=4):
  """Example i's pixel (0, 0) is i % 256 and pixel (0, 1) is i // 256; mean 0, std 1 so batches decode."""
  images = np.zeros((n, size, size, 1), np.uint8)
  images[:, 0, 0, 0] = np.arange(n) % 256
  images[:, 0, 1, 0] = np.arange(n) // 256
  labels = (np.arange(n) % num_classes).astype(np.int32)
  return data.ArrayDataset(images, labels, num_classes, tuple("abcde"[:num_classes]), "indexed", (0.0,), (1.0,))


def ids(batch):
  pixels = np.rint(batch["image"][:, 0, :2, 0] * 255).astype(int)
  return pixels[:, 0] + 256 * pixels[:, 1]


def test_epochs_are_seeded_permutations_without_the_ragged_tail():
  ds = indexed(103)
  batches = list(data.train_batches(ds, batch_size=10, seed=4, num_steps=30))  # 10 steps per epoch
  epochs = [np.concatenate([ids(b) for b in batches[e * 10 : (e + 1) * 10]]) for e in range(3)]
  for order in epochs:
    assert len(set(order.tolist())) == 100 and set(order.tolist()) <= set(range(103))
  assert not np.array_equal(epochs[0], epochs[1])
  np.testing.assert_array_equal(epochs[1], np.random.default_rng([4, 1]).permutation(103)[:100])
  for b in batches:
    np.testing.assert_array_equal(b["label"], ids(b) % 5)
  again = np.concatenate([ids(b) for b in data.train_batches(ds, batch_size=10, seed=4, num_steps=10)])
  np.testing.assert_array_equal(again, epochs[0])
  other = np.concatenate([ids(b) for b in data.train_batches(ds, batch_size=10, seed=5, num_steps=10)])
  assert not np.array_equal(other, epochs[0])


@pytest.mark.parametrize("backend", ["numpy", "grain"])
def test_resume_equals_uninterrupted(digits, backend):
  full = list(itertools.islice(data.train_batches(digits, batch_size=100, seed=5, augment=True, backend=backend), 30))
  tail = list(data.train_batches(digits, batch_size=100, seed=5, augment=True, start_step=17, num_steps=13,
                                 backend=backend))
  assert len(tail) == 13  # crosses the epoch boundary at step 28 (14 steps per epoch)
  for a, b in zip(full[17:], tail):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert full[0]["image"].dtype == np.float32 and full[0]["label"].dtype == np.int32
  assert full[0]["image"].shape == (100, 8, 8, 1)


def test_grain_and_numpy_backends_give_the_same_batches(digits):
  for augment in (False, True):
    a = list(data.train_batches(digits, batch_size=64, seed=2, augment=augment, start_step=20, num_steps=5))
    b = list(data.train_batches(digits, batch_size=64, seed=2, augment=augment, start_step=20, num_steps=5,
                                backend="grain", num_threads=3))
    for x, y in zip(a, b):
      np.testing.assert_array_equal(x["image"], y["image"])
      np.testing.assert_array_equal(x["label"], y["label"])
  test = data.load("digits", "test")
  for x, y in itertools.zip_longest(data.eval_batches(test, batch_size=64),
                                    data.eval_batches(test, batch_size=64, backend="grain")):
    for key in ("image", "label", "mask"):
      np.testing.assert_array_equal(x[key], y[key])
      assert x[key].dtype == y[key].dtype


def test_augmentation_changes_images_not_order(digits):
  plain = next(data.train_batches(digits, batch_size=64, seed=0))
  augmented = next(data.train_batches(digits, batch_size=64, seed=0, augment=True))
  np.testing.assert_array_equal(plain["label"], augmented["label"])
  assert not np.array_equal(plain["image"], augmented["image"])


@pytest.mark.parametrize("backend", ["numpy", "grain"])
def test_process_shares_partition_the_global_batch(digits, backend):
  kwargs = dict(batch_size=96, seed=1, augment=True, start_step=13, num_steps=2, backend=backend)
  whole = list(data.train_batches(digits, **kwargs))
  for count in (2, 4):
    parts = [list(data.train_batches(digits, **kwargs, process_index=p, process_count=count)) for p in range(count)]
    for step in range(2):
      assert parts[0][step]["image"].shape == (96 // count, 8, 8, 1)
      for key in ("image", "label"):
        np.testing.assert_array_equal(np.concatenate([p[step][key] for p in parts]), whole[step][key])
  test = data.load("digits", "test")
  whole = list(data.eval_batches(test, batch_size=64, backend=backend))
  parts = [list(data.eval_batches(test, batch_size=64, process_index=p, process_count=4, backend=backend))
           for p in range(4)]
  for t, batch in enumerate(whole):
    for key in ("image", "label", "mask"):
      np.testing.assert_array_equal(np.concatenate([p[t][key] for p in parts]), batch[key])


def test_batch_size_must_divide_over_processes(digits):
  with pytest.raises(ValueError, match=r"`batch_size`=96 does not divide over the 5 processes"):
    data.train_batches(digits, batch_size=96, seed=1, process_index=0, process_count=5)
  with pytest.raises(ValueError, match=r"`batch_size`=10 does not divide over the 4 processes"):
    data.eval_batches(digits, batch_size=10, process_index=0, process_count=4)
  with pytest.raises(ValueError, match="`process_index`=2 must be < `process_count`=2"):
    data.train_batches(digits, batch_size=96, seed=1, process_index=2, process_count=2)


def test_argument_errors(digits):
  with pytest.raises(ValueError, match="`batch_size`=2000 is larger than the split"):
    data.train_batches(digits, batch_size=2000, seed=0)
  with pytest.raises(ValueError, match="`start_step`"):
    data.train_batches(digits, batch_size=10, seed=0, start_step=-1)
  with pytest.raises(ValueError, match="`seed`"):
    data.train_batches(digits, batch_size=10, seed=-3)
  with pytest.raises(ValueError, match="`backend`"):
    data.train_batches(digits, batch_size=10, seed=0, backend="torch")
  with pytest.raises(ValueError, match="`batch_size`"):
    data.eval_batches(digits, batch_size=0)


def test_eval_batches_cover_every_example_once_and_mask_the_padding():
  ds = indexed(205)
  batches = list(data.eval_batches(ds, batch_size=64))
  assert len(batches) == 4 and all(b["image"].shape == (64, 4, 4, 1) for b in batches)
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.dtype == bool and mask[:205].all() and not mask[205:].any()
  np.testing.assert_array_equal(np.concatenate([ids(b) for b in batches])[mask], np.arange(205))
  last = batches[-1]
  assert (last["image"][~last["mask"]] == 0).all() and (last["label"][~last["mask"]] == 0).all()
  exact = list(data.eval_batches(indexed(128), batch_size=64))
  assert len(exact) == 2 and all(b["mask"].all() for b in exact)


def test_normalisation_uses_the_training_statistics(digits):
  x = np.concatenate([b["image"] for b in data.eval_batches(digits, batch_size=500)])[: len(digits)]
  np.testing.assert_allclose(x.mean(), 0.0, atol=1e-4)
  np.testing.assert_allclose(x.std(), 1.0, atol=1e-4)


def test_to_global_shards_over_eight_devices(digits):
  mesh = parallel.data_mesh()
  local = next(data.train_batches(digits, batch_size=64, seed=0))
  batch = data.to_global(local, mesh)
  assert batch["image"].shape == (64, 8, 8, 1) and batch["label"].shape == (64,)
  assert batch["image"].sharding == parallel.batch_sharding(mesh)
  assert len(batch["image"].sharding.device_set) == 8
  assert {s.data.shape for s in batch["image"].addressable_shards} == {(8, 8, 8, 1)}
  np.testing.assert_array_equal(np.asarray(batch["image"]), local["image"])
  evals = data.to_global(next(data.eval_batches(digits, batch_size=32)), mesh)
  assert evals["mask"].dtype == np.bool_ and evals["mask"].shape == (32,)
  with pytest.raises(ValueError, match="multiple of 8"):
    data.to_global(next(data.train_batches(digits, batch_size=12, seed=0)), mesh)
  assert jax.process_count() == 1
