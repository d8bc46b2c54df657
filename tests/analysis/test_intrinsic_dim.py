import numpy as np
import pytest

from rsim_jax.analysis import intrinsic_dim


def _network(dims=(3, 6, 10, 6, 2), n=1500, width=40, seed=0):
  """Layers that are smooth embeddings of d-dimensional latents: ID rises then falls by construction."""
  rng = np.random.default_rng(seed)
  z = rng.standard_normal((n, max(dims)))
  acts = {}
  for i, d in enumerate(dims):
    a = rng.standard_normal((d, width)) / np.sqrt(d)
    acts[f"layer{i}"] = np.tanh(0.5 * z[:, :d] @ a).astype(np.float32)  # a 1-1 smooth map: ID stays d
  acts["logits"] = (z[:, :1] @ rng.standard_normal((1, 10))).astype(np.float32)
  return acts, dims


def test_profile_recovers_known_dimensions_and_its_shape():
  acts, dims = _network()
  profile = intrinsic_dim.id_profile(acts, repeats=3, seed=1)
  assert profile.layer_names == tuple(acts) and profile.num_points == 1500
  np.testing.assert_allclose(profile.intrinsic_dim[:5], dims, rtol=0.15)
  assert np.all(profile.intrinsic_dim_std < 0.1 * profile.intrinsic_dim + 0.2)
  assert list(profile.embedding_dim) == [40] * 5 + [10]
  # PR is a linear dimension: between 1 and the embedding dimension.
  assert np.all((profile.participation_ratio >= 1) & (profile.participation_ratio <= 40))
  shape = intrinsic_dim.profile_shape(profile)
  assert shape.peak_layer == "layer2" and shape.expands and shape.compresses
  assert shape.expansion == pytest.approx(profile.intrinsic_dim[2] / profile.intrinsic_dim[0])
  # A monotone profile expands but does not compress.
  flat = intrinsic_dim.IDProfile(("a", "b", "c"), np.array([2.0, 4.0, 8.0]), np.zeros(3), np.ones(3), np.ones(3), 10)
  s = intrinsic_dim.profile_shape(flat)
  assert s.peak_layer == "c" and s.expands and not s.compresses
  assert intrinsic_dim.IDProfile.from_json(profile.to_json()).layer_names == profile.layer_names


def test_collapsed_layer_has_dimension_zero():
  acts, _ = _network(n=300)
  acts["dead"] = np.zeros((300, 16), np.float32)  # every ReLU off: all points coincide
  profile = intrinsic_dim.id_profile(acts, repeats=2)
  assert profile.collapsed == ("dead",)
  i = profile.layer_names.index("dead")
  assert profile.intrinsic_dim[i] == profile.participation_ratio[i] == 0.0
  assert profile.intrinsic_dim[0] > 1
  # The shape of a profile that ends collapsed: compression is unbounded, not a division error.
  shape = intrinsic_dim.profile_shape(profile)
  assert shape.last == 0.0 and shape.compression == float("inf") and shape.compresses


def test_scale_curves():
  acts, _ = _network(n=1200)
  curves = intrinsic_dim.id_scale_curves(acts, ["layer1"], num_scales=3)
  c = curves["layer1"]
  assert c["num_points"] == [1200, 600, 300]
  assert c["r2_median"][0] < c["r2_median"][1] < c["r2_median"][2]  # fewer points probe larger distances
  assert abs(c["intrinsic_dim"][0] - 6) < 1.0


def test_errors():
  acts, _ = _network(n=200)
  with pytest.raises(ValueError, match="same examples"):
    intrinsic_dim.id_profile({"a": acts["layer0"], "b": acts["layer1"][:100]})
  with pytest.raises(ValueError, match="NaN"):
    bad = acts["layer0"].copy()
    bad[0, 0] = np.nan
    intrinsic_dim.id_profile({"a": bad})
  with pytest.raises(ValueError, match="one row per example"):
    intrinsic_dim.id_profile({"a": np.ones(5)})
  with pytest.raises(ValueError, match="empty"):
    intrinsic_dim.id_profile({})
  with pytest.raises(ValueError, match="not in `activations`"):
    intrinsic_dim.id_scale_curves(acts, ["nope"])
