"""The tfds path, offline and without TensorFlow.

Two stand-ins for prepared files (nothing downloads):
  - `tfds.testing.mock_data(policy=AUTO)` patches `tfds.data_source` to return random records with the real
    features (MNIST, CIFAR-10, ImageNet2012 with variable-size images): the metadata and pipeline path.
  - a small builder prepared here as real ArrayRecord files (PIL-encoded PNGs, which tfds writes without
    TensorFlow): the reading, decoding and label-only (`SkipDecoding`) path of `tfds.data_source`.
"""

import itertools

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
PIL_Image = pytest.importorskip("PIL.Image")

from rsim_jax import data  # noqa: E402


def mock(n):
  return tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.AUTO)


def test_load_mnist_under_mock_data():
  with mock(12):
    ds = data.load("tfds:mnist", "train")
    info = data.dataset_info("tfds:mnist")
  assert len(ds) == 12 and ds.image_shape == (28, 28, 1) and ds.images.dtype == np.uint8
  assert ds.num_classes == 10 and ds.mean == data.KNOWN_STATISTICS["mnist"][0] and ds.name == "tfds:mnist"
  assert ds.labels.min() >= 0 and ds.labels.max() < 10
  assert info.image_shape == (28, 28, 1) and info.num_classes == 10
  batch = next(data.train_batches(ds, batch_size=4, seed=0, augment=True))
  assert batch["image"].shape == (4, 28, 28, 1)


def test_cifar10_source_streams_through_grain_under_mock_data():
  with mock(40):
    src = data.open_source("tfds:cifar10", "train")
    assert isinstance(src, data.TfdsSource) and isinstance(src, data.Source)
    assert len(src) == 40 and src.image_shape == (32, 32, 3) and not src.variable_size
    record = src[3]
    assert record["image"].shape == (32, 32, 3) and record["label"].dtype == np.int32
    full = list(data.train_batches(src, batch_size=8, seed=1, augment=True, num_steps=8))
    tail = list(data.train_batches(src, batch_size=8, seed=1, augment=True, start_step=3, num_steps=5))
    parts = [list(data.train_batches(src, batch_size=8, seed=1, augment=True, num_steps=8, process_index=p,
                                     process_count=2)) for p in range(2)]
    # In memory, the numpy backend gives the same batches (the records are deterministic under the mock).
    in_memory = data.ArrayDataset(np.stack([src[i]["image"] for i in range(40)]),
                                  np.asarray([src[i]["label"] for i in range(40)]), 10, src.class_names, "m",
                                  src.mean, src.std)
  assert full[0]["image"].shape == (8, 32, 32, 3) and full[0]["image"].dtype == np.float32
  for a, b in zip(full[3:], tail):
    np.testing.assert_array_equal(a["image"], b["image"])
  for step, batch in enumerate(full):
    np.testing.assert_array_equal(np.concatenate([p[step]["image"] for p in parts]), batch["image"])
  for a, b in zip(full, data.train_batches(in_memory, batch_size=8, seed=1, augment=True, num_steps=8)):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_imagenet_preprocessing_under_mock_data():
  mean, std = np.asarray(data.KNOWN_STATISTICS["imagenet2012"][0]), np.asarray(data.KNOWN_STATISTICS["imagenet2012"][1])
  with mock(10):
    src = data.open_source("tfds:imagenet2012", "train")
    assert src.variable_size and src.image_shape == (224, 224, 3) and src.num_classes == 1000
    assert len({src[i]["image"].shape for i in range(10)}) > 1  # the mock's images differ in size
    train = list(data.train_batches(src, batch_size=4, seed=0, augment=True, num_steps=3))
    again = list(data.train_batches(src, batch_size=4, seed=0, augment=True, start_step=1, num_steps=2))
    plain = next(data.train_batches(src, batch_size=4, seed=0, augment=False))
    evals = list(data.eval_batches(src, batch_size=4))
    small = data.open_source("tfds:imagenet2012", "validation", image_size=64)
    small_batch = next(data.eval_batches(small, batch_size=2))
    info = data.dataset_info("tfds:imagenet2012")
  lo, hi = (0 - mean) / std, (1 - mean) / std
  for b in train + [plain] + evals:
    assert b["image"].shape == (4, 224, 224, 3) and b["image"].dtype == np.float32
    assert (b["image"] >= lo - 1e-5).all() and (b["image"] <= hi + 1e-5).all()
  for a, b in zip(train[1:], again):
    np.testing.assert_array_equal(a["image"], b["image"])
  assert len(evals) == 3 and np.concatenate([b["mask"] for b in evals]).sum() == 10
  assert small_batch["image"].shape == (2, 64, 64, 3)
  assert info.image_shape == (224, 224, 3) and info.num_classes == 1000 and tuple(info.mean) == tuple(mean)
  with mock(3), pytest.raises(ValueError, match="varying size.*open_source"):
    data.load("tfds:imagenet2012", "validation")


# --- Real ArrayRecord files, prepared here without TensorFlow ---

SIZES = {"train": 24, "test": 7}


def _image(split, i, fixed):
  rng = np.random.default_rng([0 if split == "train" else 1, i])
  h, w = (12, 10) if fixed else rng.integers(20, 70, size=2)
  return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


class RsimTinyVariable(tfds.core.GeneratorBasedBuilder):
  """Variable-size colour images in 3 classes (an ImageNet in miniature)."""

  VERSION = tfds.core.Version("1.0.0")
  FIXED = False

  def _info(self):
    shape = (12, 10, 3) if self.FIXED else (None, None, 3)
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=shape), "label": tfds.features.ClassLabel(names=["a", "b", "c"])}))

  def _split_generators(self, dl_manager):
    return {split: self._generate_examples(split) for split in SIZES}

  def _generate_examples(self, split):
    for i in range(SIZES[split]):  # PIL images: tfds encodes them to PNG without TensorFlow
      yield i, {"image": PIL_Image.fromarray(_image(split, i, self.FIXED)), "label": (3 * i + 1) % 4 % 3}


class RsimTinyFixed(RsimTinyVariable):
  """Fixed-size 12×10 colour images (a CIFAR in miniature)."""

  FIXED = True


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  for builder in (RsimTinyVariable, RsimTinyFixed):
    builder(data_dir=str(root), file_format="array_record").download_and_prepare()
  return str(root)


def test_real_array_record_files_decode_exactly(tfds_dir):
  ds = data.load("tfds:rsim_tiny_fixed", "train", data_dir=tfds_dir)
  assert ds.image_shape == (12, 10, 3) and len(ds) == 24 and ds.class_names == ("a", "b", "c")
  expected = {_image("train", i, True).tobytes() for i in range(24)}  # tfds shuffles the records
  assert {im.tobytes() for im in ds.images} == expected
  x = np.stack([_image("train", i, True) for i in range(24)]).reshape(-1, 3) / 255
  np.testing.assert_allclose(ds.mean, x.mean(0), rtol=1e-6)  # an unknown set: statistics of its train split
  info = data.dataset_info("tfds:rsim_tiny_fixed", data_dir=tfds_dir)
  assert info.splits == SIZES and info.image_shape == (12, 10, 3)
  grey = data.load("tfds:rsim_tiny_fixed", "test", data_dir=tfds_dir, image_size=20, channels=1)
  assert grey.image_shape == (20, 20, 1)


def test_real_variable_size_source_labels_subsets_and_batches(tfds_dir):
  src = data.open_source("tfds:rsim_tiny_variable", "train", data_dir=tfds_dir, image_size=32)
  assert src.variable_size and src.image_shape == (32, 32, 3) and src.resize_size == 37
  labels = src.labels  # read with the images' decoding skipped
  np.testing.assert_array_equal(labels, [src[i]["label"] for i in range(len(src))])
  sub = data.subsample(src, count=12, seed=0)
  assert isinstance(sub, data.TfdsSource) and len(sub) == 12
  np.testing.assert_array_equal(np.bincount(sub.labels), [4, 4, 4])
  np.testing.assert_array_equal(sub.labels, [sub[i]["label"] for i in range(12)])
  assert {sub[i]["image"].tobytes() for i in range(12)} <= {src[i]["image"].tobytes() for i in range(24)}
  first = list(itertools.islice(data.train_batches(sub, batch_size=4, seed=3, augment=True), 5))
  resumed = list(data.train_batches(sub, batch_size=4, seed=3, augment=True, start_step=4, num_steps=1))
  np.testing.assert_array_equal(first[4]["image"], resumed[0]["image"])
  assert first[0]["image"].shape == (4, 32, 32, 3)
  test = data.open_source("tfds:rsim_tiny_variable", "test", data_dir=tfds_dir, image_size=32)
  evals = list(data.eval_batches(test, batch_size=4))
  mask = np.concatenate([b["mask"] for b in evals])
  assert mask.tolist() == [True] * 7 + [False]
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in evals])[:7], test.labels)


def test_missing_files_and_unknown_names_are_clear(tmp_path):
  with pytest.raises(ValueError, match=r"no prepared ArrayRecord files in `data_dir`.*tfds build cifar10"):
    data.open_source("tfds:cifar10", "train", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="tensorflow-datasets has no such data set"):
    data.open_source("tfds:no_such_set_rsim", "train", data_dir=str(tmp_path))


def test_unknown_split_lists_the_splits(tfds_dir):
  with pytest.raises(ValueError, match=r"`split` 'validation'.*\['train', 'test'\]"):
    data.open_source("tfds:rsim_tiny_fixed", "validation", data_dir=tfds_dir)
