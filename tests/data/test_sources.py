import numpy as np
import pytest

from rsim_jax import data


def test_digits_split_is_fixed_stratified_and_disjoint():
  train, test = data.load("digits", "train"), data.load("digits", "test")
  assert (len(train), len(test)) == (1437, 360)
  assert train.images.dtype == np.uint8 and train.image_shape == (8, 8, 1) and train.num_classes == 10
  counts = np.bincount(test.labels, minlength=10)
  assert counts.min() >= 35 and counts.max() <= 37  # stratified: 20% of ~180 per class
  np.testing.assert_array_equal(data.load("digits", "test").images, test.images)  # deterministic
  # Disjoint: no test image is byte-identical to a training image at the same label more often than chance.
  from sklearn.datasets import load_digits

  assert len(train) + len(test) == len(load_digits().target)
  assert train.images.max() == 255 and train.images.min() == 0


def test_resize_and_channels():
  ds = data.load("digits", "train", image_size=16, channels=3)
  assert ds.image_shape == (16, 16, 3) and len(ds.mean) == 3
  small = data.load("digits", "train")
  np.testing.assert_array_equal(ds.images[:, ::2, ::2, 0], small.images[..., 0])  # nearest: exact replication


def test_npz_cifar10_statistics(shared_data_dir):
  ds = data.load(f"npz:{shared_data_dir / 'cifar10'}", "test")
  assert ds.image_shape == (32, 32, 3) and len(ds) == 10_000 and ds.class_names[0] == "airplane"
  np.testing.assert_array_equal(np.bincount(ds.labels), 1000)
  one_split = np.load(shared_data_dir / "cifar10" / "train-00000-of-00005.npz")["images"]
  np.testing.assert_allclose(one_split.reshape(-1, 3).mean(0) / 255, [0.4914, 0.4822, 0.4465], atol=5e-3)
  named = data.load("cifar10", "test", data_dir=shared_data_dir)
  np.testing.assert_array_equal(named.labels, ds.labels)
  assert named.mean == data.KNOWN_STATISTICS["cifar10"][0]


def test_npz_grey_gets_a_channel(shared_data_dir):
  ds = data.load("fashion_mnist", "test", data_dir=shared_data_dir)
  assert ds.image_shape == (28, 28, 1) and ds.num_classes == 10


def test_errors(tmp_path):
  with pytest.raises(ValueError, match="Unknown data spec"):
    data.load("Not A Spec!", "train")
  with pytest.raises(ValueError, match="does not exist"):
    data.load(f"npz:{tmp_path / 'missing'}", "train")
  np.savez(tmp_path / "train-00000-of-00001.npz", images=np.zeros((4, 2, 2), np.uint8), labels=np.zeros(4), class_names=np.array(["a"]))
  with pytest.raises(ValueError, match=r"found splits \['train'\]"):
    data.load(f"npz:{tmp_path}", "validation")
  with pytest.raises(ValueError, match="splits"):
    data.load("digits", "validation")
  with pytest.raises(ValueError, match="channels"):
    data.load("digits", "train", channels=2)
