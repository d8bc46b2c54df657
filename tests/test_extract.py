import jax
import numpy as np
import pytest

from rsim_jax import extract, kernels, parallel


def _acts(n=300, seed=0, widths=(16, 40, 8)):
  rng = np.random.default_rng(seed)
  h = rng.standard_normal((n, 12))
  out = {}
  for i, w in enumerate(widths):
    h2 = np.maximum(h @ rng.standard_normal((h.shape[1], w)) / 3 + 0.3 * rng.standard_normal((n, w)), 0)
    out[f"l{i}"] = h2.astype(np.float32).reshape(n, -1)
    h = h2
  return out


def test_array_batches_pad_and_mask():
  acts = _acts(n=70)
  batches = list(extract.array_batches(acts, batch_size=32))
  assert len(batches) == 3
  last, mask = batches[-1]
  assert last["l0"].shape == (32, 16) and mask.sum() == 6 and mask[:6].all()
  np.testing.assert_array_equal(last["l1"][:6], acts["l1"][64:])
  np.testing.assert_array_equal(last["l1"][6:], 0)


def test_array_batches_drop_tiny_tail_with_warning():
  with pytest.warns(UserWarning, match="Dropping the last 2 of 66"):
    batches = list(extract.array_batches(_acts(n=66), batch_size=32))
  assert len(batches) == 2


def test_minibatch_cka_of_arrays_equals_kernel_loop():
  acts = _acts()
  result = extract.minibatch_cka_of_arrays(acts, batch_size=64, progress=False)
  state = kernels.minibatch_cka_init(3)
  for start in range(0, 300, 64):
    state = kernels.minibatch_cka_update(state, [a[start : start + 64] for a in acts.values()])
  np.testing.assert_allclose(result.matrix, kernels.minibatch_cka_result(state), rtol=1e-6)
  assert result.x_names == ("l0", "l1", "l2") and result.num_examples == 300 and result.num_batches == 5


def test_two_models_and_sharded_equal_single_device():
  xs, ys = _acts(seed=0), _acts(seed=1, widths=(20, 6))
  mesh = parallel.data_mesh()
  single = extract.minibatch_cka_of_arrays(xs, ys, batch_size=16, progress=False)
  sharded = extract.minibatch_cka_of_arrays(xs, ys, batch_size=16, mesh=mesh, progress=False)
  assert single.matrix.shape == (3, 2) and single.y_names == ("l0", "l1")
  np.testing.assert_allclose(sharded.matrix, single.matrix, rtol=1e-5, atol=1e-7)


def test_errors():
  with pytest.raises(ValueError, match="same examples"):
    extract.minibatch_cka_of_arrays(_acts(n=100), _acts(n=90), progress=False)
  with pytest.raises(ValueError, match="batch_size"):
    list(extract.array_batches(_acts(), batch_size=3))
  with pytest.raises(ValueError, match="has 299 examples"):
    list(extract.array_batches({"a": np.zeros((300, 2)), "b": np.zeros((299, 2))}, batch_size=8))


# --- compare_models: one pass through models → CKA, streamed PCA, activation sample ---------------------


def _mlp(seed):
  from flax import nnx

  from rsim_jax.models import MLP

  return MLP((24, 12), num_classes=5, in_features=20, rngs=nnx.Rngs(seed))


def _image_batches(n=150, batch_size=32, seed=3):
  rng = np.random.default_rng(seed)
  images = (rng.standard_normal((n, 4, 5, 1)) + 2.0).astype(np.float32)
  labels = rng.integers(0, 5, n).astype(np.int32)
  batches = []
  for start in range(0, n, batch_size):
    chunk = images[start : start + batch_size]
    valid = len(chunk)
    pad = batch_size - valid
    batches.append({
        "image": np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], np.float32)]),
        "label": np.concatenate([labels[start : start + valid], np.zeros(pad, np.int32)]),
        "mask": np.arange(batch_size) < valid,
    })
  return images, labels, batches


def _direct_layers(model, images):
  model.eval()
  logits, layers = model(images, capture=True)
  return np.asarray(logits), {k: np.asarray(v).reshape(len(images), -1) for k, v in layers.items()}


def test_sampler_is_independent_of_batching_and_uniform():
  def sample(batch_size, n=1000, size=50, seed=7):
    sampler = extract.ExampleSampler(size, seed=seed)
    for start in range(0, n, batch_size):
      positions = np.arange(start, start + batch_size)
      sampler.assign(np.where(positions < n, positions, -1))
    return sampler.slot_position[sampler.filled_slots()]

  a, b = sample(7), sample(128)
  np.testing.assert_array_equal(a, b)
  assert len(a) == 50 and len(np.unique(a)) == 50 and np.all(np.diff(a) > 0)
  assert not np.array_equal(a, sample(7, seed=8))
  # Uniform: over many seeds each position is chosen with probability 50/1000; its mean position is ~ n/2.
  means = [sample(100, seed=s).mean() for s in range(40)]
  assert abs(np.mean(means) - 499.5) < 25
  # Fewer examples than the sample size: all of them, in order.
  np.testing.assert_array_equal(sample(16, n=30), np.arange(30))


def test_compare_models_sample_and_pca_match_direct_computation():
  images, labels, batches = _image_batches()
  model = _mlp(0)
  logits, direct = _direct_layers(model, images)
  out = extract.compare_models(model, batches, pca_layers=True, sample_size=40, sample_seed=1, progress=False)
  assert out.within[0].matrix.shape == (3, 3)
  np.testing.assert_array_equal(out.predictions[0], logits.argmax(-1))
  positions = out.sample_positions
  assert len(positions) == 40 and np.all(np.diff(positions) > 0) and positions.max() < 150
  np.testing.assert_array_equal(out.sample_labels, labels[positions])
  for name in ("dense1", "dense2", "logits"):
    np.testing.assert_allclose(out.samples[0][name], direct[name][positions], rtol=1e-5, atol=1e-6)
    x = direct[name].astype(np.float64)
    centred = x - x.mean(0)
    expected = np.linalg.eigvalsh(centred.T @ centred / (len(x) - 1))[::-1]
    pca = out.pca[0][name]
    np.testing.assert_allclose(np.asarray(pca.mean), x.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(pca.eigenvalues)[:5], expected[:5], rtol=1e-4, atol=1e-6 * expected[0])
  # The same seed gives the same examples through another model; sample-only pass agrees.
  other = extract.sample_activations(_mlp(1), batches, num_examples=40, seed=1, progress=False)
  _, direct_other = _direct_layers(_mlp(1), images)
  np.testing.assert_allclose(other["dense2"], direct_other["dense2"][positions], rtol=1e-5, atol=1e-6)


def test_compare_models_sharded_equals_single_device():
  images, _, batches = _image_batches(n=200, batch_size=64)
  one_device = parallel.data_mesh(1)
  single = extract.compare_models([_mlp(0), _mlp(1)], batches, pca_layers=("dense1",), sample_size=30,
                                  mesh=one_device, progress=False)
  # The default mesh is all 8 devices: each CKA minibatch is a per-device shard of 8 consecutive examples,
  # which is what batches of 8 through one device give.
  sharded = extract.compare_models([_mlp(0), _mlp(1)], batches, pca_layers=("dense1",), sample_size=30,
                                   progress=False)
  _, _, batches_of_8 = _image_batches(n=200, batch_size=8)
  single_8 = extract.compare_models([_mlp(0), _mlp(1)], batches_of_8, mesh=one_device, progress=False)
  for got, want in ((sharded.cross, single_8.cross), (sharded.within[0], single_8.within[0])):
    assert got.num_batches == want.num_batches == 25
    np.testing.assert_allclose(got.matrix, want.matrix, rtol=1e-5, atol=1e-7)
  assert not np.allclose(single.cross.matrix, sharded.cross.matrix, rtol=1e-3)  # b = 64 is another estimate
  np.testing.assert_array_equal(sharded.sample_positions, single.sample_positions)
  for i in range(2):
    np.testing.assert_array_equal(sharded.predictions[i], single.predictions[i])
    np.testing.assert_allclose(sharded.samples[i]["logits"], single.samples[i]["logits"], rtol=1e-5, atol=1e-6)
    top = float(single.pca[i]["dense1"].eigenvalues[0])
    np.testing.assert_allclose(sharded.pca[i]["dense1"].eigenvalues, single.pca[i]["dense1"].eigenvalues, rtol=1e-4,
                               atol=1e-5 * top)
  assert sharded.cross.matrix.shape == (3, 3) and sharded.within[1].num_examples == 200


def test_compare_models_errors():
  _, _, batches = _image_batches()
  with pytest.raises(ValueError, match="pca_max_features"):
    extract.compare_models(_mlp(0), batches, pca_layers=("dense1",), pca_max_features=10, progress=False)
  with pytest.raises(ValueError, match="not among the compared"):
    extract.compare_models(_mlp(0), batches, layers=("dense1",), pca_layers=("dense2",), progress=False)
  with pytest.raises(ValueError, match="sample_size"):
    extract.compare_models(_mlp(0), batches, sample_size=-3, progress=False)
  with pytest.raises(ValueError, match="not captured"):
    extract.compare_models(_mlp(0), batches, layers=("conv9",), progress=False)
  with pytest.raises(ValueError, match="empty"):
    extract.compare_models(_mlp(0), [], progress=False)
  # 20 rows on the 8 devices of the default mesh: the error names both numbers.
  _, _, ragged = _image_batches(n=40, batch_size=20)
  with pytest.raises(ValueError, match=r"20 examples does not divide over the 8 devices.*multiple of 8"):
    extract.compare_models(_mlp(0), ragged, progress=False)


def test_samples_and_pca_come_back_in_layer_order():
  # DeepNet's layers (conv1, pool1, dense1, logits) are not in alphabetical order, which jit imposes on dicts.
  from flax import nnx

  from rsim_jax import models

  model = models.DeepNet((2,), (4,), num_classes=3, image_size=8, kernel_size=3, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  batches = [{"image": rng.standard_normal((16, 8, 8, 1)).astype(np.float32), "label": np.zeros(16, np.int32),
              "mask": np.ones(16, bool)} for _ in range(2)]
  out = extract.compare_models(model, batches, cka=False, pca_layers=True, sample_size=10, progress=False)
  assert list(out.samples[0]) == list(out.pca[0]) == list(model.layer_names) == ["conv1", "pool1", "dense1", "logits"]


def test_minibatch_cka_of_arrays_stderr_is_the_jackknife_of_the_same_batches():
  xs, ys = _acts(seed=0), _acts(seed=1, widths=(20, 6))
  for other in (None, ys):
    result = extract.minibatch_cka_of_arrays(xs, other, batch_size=20, stderr_groups=4, progress=False)
    groups = kernels.minibatch_cka_groups_init(3, None if other is None else 2, num_groups=4)
    for start in range(0, 300, 20):
      batch_y = None if other is None else [a[start : start + 20] for a in other.values()]
      groups = kernels.minibatch_cka_groups_update(groups, [a[start : start + 20] for a in xs.values()], batch_y)
    ref = kernels.minibatch_cka_jackknife(groups)
    assert result.stderr.shape == result.matrix.shape == ref.stderr.shape
    np.testing.assert_allclose(result.stderr, ref.stderr, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(result.matrix, ref.cka, rtol=1e-6)
    assert np.all(result.stderr[~np.eye(*result.matrix.shape, dtype=bool)] > 1e-4)
  assert extract.minibatch_cka_of_arrays(xs, batch_size=20, progress=False).stderr is None
  four = extract.minibatch_cka_of_arrays(xs, batch_size=20, stderr_groups=4, progress=False)
  five = extract.minibatch_cka_of_arrays(xs, batch_size=20, stderr_groups=5, progress=False)
  np.testing.assert_array_equal(four.matrix, five.matrix)  # the groups change the error bars only
  assert not np.allclose(four.stderr, five.stderr, rtol=1e-3)


def test_sharded_stderr_groups_whole_global_batches():
  # On a mesh each global batch (8 minibatches of 5, device-summed) is one unit of the round-robin; the last
  # global batch holds 20 valid rows: devices 4..7 have none and are skipped.
  xs = _acts(seed=0)
  mesh = parallel.data_mesh()
  with pytest.warns(UserWarning, match="4 device minibatch"):
    result = extract.minibatch_cka_of_arrays(xs, batch_size=5, mesh=mesh, stderr_groups=3, progress=False)
  groups = kernels.minibatch_cka_groups_init(3, num_groups=3)
  for start in range(0, 300, 40):
    terms = [kernels.minibatch_hsic([a[s : s + 5] for a in xs.values()]) for s in range(start, min(start + 40, 300), 5)]
    groups = kernels.minibatch_cka_groups_accumulate(groups, jax.tree.map(lambda *t: sum(t), *terms))
  ref = kernels.minibatch_cka_jackknife(groups)
  assert result.num_batches == 60 and int(groups.num_updates) == 8
  np.testing.assert_allclose(result.stderr, ref.stderr, rtol=1e-4, atol=1e-8)
  np.testing.assert_allclose(result.matrix, ref.cka, rtol=1e-5)


@pytest.mark.parametrize("bad", [1, -2, 2.5, True])
def test_stderr_groups_must_be_zero_or_at_least_two(bad):
  with pytest.raises(ValueError, match="`stderr_groups` must be 0 .* or an integer ≥ 2"):
    extract.minibatch_cka_of_arrays(_acts(), stderr_groups=bad, progress=False)
