import numpy as np
import pytest

from rsim_jax.analysis import block_structure, cross_model


def test_corresponding_layers_by_relative_depth():
  np.testing.assert_array_equal(cross_model.corresponding_layers(3, 5), [0, 2, 4])
  np.testing.assert_array_equal(cross_model.corresponding_layers(5, 5), np.arange(5))


def test_inside_vs_outside_block():
  n = 20
  cross = np.full((n, n), 0.2)
  idx = np.arange(n)
  cross[idx, idx] = 0.9  # corresponding layers match ...
  cross[8:14, 8:14] = 0.3  # ... except inside the block
  block = block_structure.Block(8, 13, 6, 6 / n, 0.95, 0.9)
  s = cross_model.summarize_cross_cka(cross, block, None)
  assert s.num_inside == 6 and s.num_outside == 14
  assert s.inside_mean == pytest.approx(0.3) and s.outside_mean == pytest.approx(0.9)
  none = cross_model.summarize_cross_cka(cross, None, None)
  assert none.num_inside == 0 and np.isnan(none.inside_mean)
