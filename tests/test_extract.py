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
