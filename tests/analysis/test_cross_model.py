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


def test_cross_seed_profile_bootstraps_seeds_per_layer_and_over_layers():
  import itertools

  from rsim_jax.analysis import uncertainty
  from rsim_jax.analysis.cross_model import cross_seed_profile

  rng = np.random.default_rng(0)
  per_seed = rng.uniform(0.3, 0.5, size=(4, 6))  # seed s's share of each layer's similarity
  values = {(a, b): per_seed[a] + per_seed[b] for a, b in itertools.combinations(range(4), 2)}
  out = cross_seed_profile(values, num_resamples=500, seed=3)
  ref = uncertainty.seed_bootstrap(values, num_resamples=500, seed=3)
  np.testing.assert_allclose(out["per_layer"]["estimate"], np.mean(list(values.values()), axis=0))
  np.testing.assert_allclose(out["per_layer"]["stderr"], ref.stderr)
  np.testing.assert_allclose(out["per_layer"]["low"], ref.low)
  means = {k: v.mean() for k, v in values.items()}
  assert out["mean_over_layers"]["estimate"] == pytest.approx(np.mean(list(means.values())))
  assert out["mean_over_layers"]["stderr"] == pytest.approx(
      float(uncertainty.seed_bootstrap(means, num_resamples=500, seed=3).stderr))
  assert out["seeds"] == [0, 1, 2, 3] and out["num_pairs"] == 6
  with pytest.raises(ValueError, match="at least 3"):
    cross_seed_profile({(0, 1): np.ones(6)})
