"""The tfds path, offline: `tfds.testing.mock_data` stands in for the prepared files (nothing downloads)."""

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from rsim_jax import data  # noqa: E402


def test_tfds_source_under_mock_data():
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.AUTO):
    ds = data.load("tfds:mnist", "train")
  assert len(ds) == 12 and ds.image_shape == (28, 28, 1) and ds.images.dtype == np.uint8
  assert ds.num_classes == 10 and ds.mean == data.KNOWN_STATISTICS["mnist"][0]
  assert ds.labels.min() >= 0 and ds.labels.max() < 10
  batch = next(data.train_batches(ds, batch_size=4, seed=0))
  assert batch["image"].shape == (4, 28, 28, 1)
