import dataclasses
import pathlib

import numpy as np
import pytest
from sklearn.datasets import load_digits

from rsim_jax import data


def test_digits_split_is_fixed_stratified_and_complete():
  train, test = data.load("digits", "train"), data.load("digits", "test")
  assert (len(train), len(test)) == (1437, 360)
  assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
  assert train.image_shape == (8, 8, 1) and train.num_classes == 10 and train.class_names[3] == "3"
  # 17 grey levels 0..16 stored as round(v · 255/16).
  assert set(np.unique(train.images)) == set(np.round(np.arange(17) * 255 / 16).astype(int))
  # Stratified: each class's test share is 20% of its size to within one example.
  digits = load_digits()
  sizes = np.bincount(digits.target, minlength=10)
  assert np.abs(np.bincount(test.labels, minlength=10) - 0.2 * sizes).max() <= 1
  # The two sides partition the 1,797 images (as multisets of (image, label)).
  rows = lambda x, y: sorted(im.tobytes() + bytes([lab]) for im, lab in zip(x, y))  # noqa: E731
  everything = np.clip(np.round(digits.images * 255 / 16), 0, 255).astype(np.uint8)[..., None]
  assert rows(np.concatenate([train.images, test.images]), np.concatenate([train.labels, test.labels])) == \
      rows(everything, digits.target)
  again = data.load("digits", "test")
  np.testing.assert_array_equal(again.images, test.images)
  np.testing.assert_array_equal(again.labels, test.labels)


def test_arrays_are_read_only():
  ds = data.load("digits", "train")
  with pytest.raises(ValueError):
    ds.images[0, 0, 0, 0] = 1
  with pytest.raises(dataclasses.FrozenInstanceError):
    ds.name = "x"


def test_resize_nearest_bilinear_pad_and_channels():
  small = data.load("digits", "train")
  big = data.load("digits", "train", image_size=16, channels=3)
  assert big.image_shape == (16, 16, 3) and len(big.mean) == 3
  np.testing.assert_array_equal(big.images[:, ::2, ::2, 0], small.images[..., 0])  # exact replication
  np.testing.assert_array_equal(big.images[:, 1::2, 1::2, 2], small.images[..., 0])
  x32 = data.load("digits", "train", image_size=32)
  np.testing.assert_array_equal(x32.images[:, ::4, ::4], small.images)
  bilinear = data.load("digits", "train", image_size=32, resize="bilinear")
  assert bilinear.image_shape == (32, 32, 1)
  assert abs(bilinear.images.mean() - small.images.mean()) < 1.0
  padded = data.load("digits", "test", image_size=16, resize="pad")
  np.testing.assert_array_equal(padded.images[:, 4:12, 4:12], data.load("digits", "test").images)
  assert padded.images.sum() == data.load("digits", "test").images.sum()
  # Statistics follow the transform: those of the transformed training split.
  train_pad = data.load("digits", "train", image_size=16, resize="pad")
  x = train_pad.images.astype(np.float64) / 255
  np.testing.assert_allclose(train_pad.mean, [x.mean()], rtol=1e-9)
  np.testing.assert_allclose(train_pad.std, [x.std()], rtol=1e-6)
  assert padded.mean == train_pad.mean


def test_dataset_info_matches_load():
  info = data.dataset_info("digits")
  ds = data.load("digits", "train")
  assert info.splits == {"train": 1437, "test": 360}
  assert (info.num_classes, info.image_shape, info.mean, info.std) == (10, (8, 8, 1), ds.mean, ds.std)
  info32 = data.dataset_info("digits", image_size=32, channels=3)
  ds32 = data.load("digits", "train", image_size=32, channels=3)
  assert info32.image_shape == (32, 32, 3) and info32.mean == ds32.mean and info32.std == ds32.std


def _write_npz(directory, split, parts, *, shape=(6, 5), classes=("a", "b", "c"), seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for k, n in enumerate(parts):
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    labels = (np.arange(n) % len(classes)).astype(np.int32)
    np.savez(directory / f"{split}-{k:05d}-of-{len(parts):05d}.npz", images=images, labels=labels,
             class_names=np.array(classes))
    out.append((images, labels))
  return out


def test_npz_directory_of_split_files(tmp_path):
  parts = _write_npz(tmp_path, "train", [7, 5])
  _write_npz(tmp_path, "test", [4], seed=1)
  ds = data.load(f"npz:{tmp_path}", "train")
  assert ds.image_shape == (6, 5, 1) and len(ds) == 12 and ds.class_names == ("a", "b", "c")
  np.testing.assert_array_equal(ds.images[..., 0], np.concatenate([p[0] for p in parts]))  # files in order
  x = ds.images.astype(np.float64) / 255
  np.testing.assert_allclose(ds.mean, [x.mean()])  # an unknown set: statistics from its training split
  test = data.load(f"npz:{tmp_path}", "test")
  assert test.mean == ds.mean and len(test) == 4
  info = data.dataset_info(f"npz:{tmp_path}")
  assert info.splits == {"train": 12, "test": 4} and info.image_shape == (6, 5, 1) and info.num_classes == 3


def test_errors_name_the_argument(tmp_path):
  with pytest.raises(ValueError, match="Unknown data `spec` 'Not A Spec!'"):
    data.load("Not A Spec!", "train")
  with pytest.raises(ValueError, match="does not exist"):
    data.load(f"npz:{tmp_path / 'missing'}", "train")
  _write_npz(tmp_path, "train", [4])
  with pytest.raises(ValueError, match=r"`split` 'validation'.*it has splits \['train'\]"):
    data.load(f"npz:{tmp_path}", "validation")
  with pytest.raises(ValueError, match=r"`split` 'validation'.*\['test', 'train'\]"):
    data.load("digits", "validation")
  (tmp_path / "test-00001-of-00002.npz").write_bytes((tmp_path / "train-00000-of-00001.npz").read_bytes())
  with pytest.raises(ValueError, match="incomplete"):
    data.load(f"npz:{tmp_path}", "test")
  with pytest.raises(ValueError, match="`channels`"):
    data.load("digits", "train", channels=2)
  with pytest.raises(ValueError, match="`image_size`"):
    data.load("digits", "train", image_size=0)
  with pytest.raises(ValueError, match="`resize`"):
    data.load("digits", "train", image_size=16, resize="cubic")
  with pytest.raises(ValueError, match="cannot shrink"):
    data.load("digits", "train", image_size=4, resize="pad")
  with pytest.raises(ValueError, match="`labels`"):
    data.ArrayDataset(np.zeros((3, 2, 2, 1), np.uint8), np.zeros(2, np.int32), 2, ("a", "b"), "x", (0.0,), (1.0,))


# --- shared/data (real CIFAR-10, MNIST, Fashion-MNIST); skipped where absent ---


def test_npz_cifar10_statistics_and_classes(shared_data_dir):
  train = data.load(f"npz:{shared_data_dir / 'cifar10'}", "train")
  assert train.image_shape == (32, 32, 3) and len(train) == 50_000 and train.class_names[0] == "airplane"
  np.testing.assert_array_equal(np.bincount(train.labels), [5000] * 10)
  x = train.images.reshape(-1, 3)
  mean = np.asarray([x[:, c].mean(dtype=np.float64) for c in range(3)]) / 255
  np.testing.assert_allclose(mean, [0.4914, 0.4822, 0.4465], atol=1e-3)
  assert train.mean == data.KNOWN_STATISTICS["cifar10"][0]
  test = data.load("cifar10", "test", data_dir=shared_data_dir)  # a named spec finds the same folder
  assert test.name == "cifar10" and len(test) == 10_000
  np.testing.assert_array_equal(np.bincount(test.labels), [1000] * 10)
  info = data.dataset_info("cifar10", data_dir=shared_data_dir)
  assert info.splits == {"train": 50_000, "test": 10_000} and info.image_shape == (32, 32, 3)


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_npz_grey_sets_get_a_channel_and_match_their_statistics(shared_data_dir, name):
  train = data.load(name, "train", data_dir=shared_data_dir)
  assert train.image_shape == (28, 28, 1) and train.num_classes == 10 and len(train) == 60_000
  x = train.images.astype(np.float32) / 255
  np.testing.assert_allclose(x.mean(), data.KNOWN_STATISTICS[name][0][0], atol=1e-3)
  np.testing.assert_allclose(x.std(), data.KNOWN_STATISTICS[name][1][0], atol=1e-3)
  padded = data.load(name, "test", data_dir=shared_data_dir, image_size=32, resize="pad", channels=3)
  assert padded.image_shape == (32, 32, 3) and padded.mean == data.KNOWN_STATISTICS[name][0] * 3


# --- The package's modules (spec, dataset, transform, statistics, digits, npz, tfds) ---


def test_named_folders_are_looked_for_beside_the_checkout():
  import rsim_jax  # noqa: PLC0415

  checkout = pathlib.Path(rsim_jax.__file__).resolve().parents[1]
  assert data.data_dirs()[-1] == checkout.parent / "shared" / "data"
  assert data.data_dirs("x")[0] == pathlib.Path("x")


def test_each_backend_module_gives_what_load_gives(tmp_path):
  from rsim_jax.data import sources  # noqa: PLC0415
  from rsim_jax.data.sources import digits, npz, spec, statistics  # noqa: PLC0415

  assert spec.resolve("digits") == ("digits", None)
  assert spec.resolve(f"npz:{tmp_path}") == ("npz", tmp_path)
  assert spec.resolve("tfds:imagenet2012/subset:5.1.0") == ("tfds", "imagenet2012/subset:5.1.0")
  assert spec.resolve("no_such_folder_rsim", tmp_path) == ("tfds", "no_such_folder_rsim")
  test = digits.load_digits_split("test")
  np.testing.assert_array_equal(test.images, data.load("digits", "test").images)
  assert digits.digits_info() == data.dataset_info("digits")
  parts = _write_npz(tmp_path, "train", [3, 2])
  assert spec.resolve(tmp_path.name, tmp_path.parent) == ("npz", tmp_path)
  ds = npz.load_npz(tmp_path, "train", "mine")
  assert ds.name == "mine" and ds.image_shape == (6, 5, 1)
  np.testing.assert_array_equal(ds.images[..., 0], np.concatenate([p[0] for p in parts]))
  x = np.array([[[[0, 255]]], [[[255, 255]]]], np.uint8).reshape(2, 1, 1, 2)  # two pixels, two channels
  mean, std = statistics.channel_statistics(x)
  np.testing.assert_allclose(mean, [0.5, 1.0])
  np.testing.assert_allclose(std, [0.5, 1e-3])  # a constant channel's std is floored at 1e-3
  assert statistics.adapt_statistics((0.2,), (0.3,), 3) == ((0.2,) * 3, (0.3,) * 3)
  assert statistics.base_name("imagenet2012/subset:5.1.0") == "imagenet2012"
  assert sources.load is data.load and sources.TfdsSource is data.TfdsSource
