import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsim_jax import kernels


def reference_pca(x):
  """float64 NumPy reference: eigh of the sample covariance of the (float32-rounded) data."""
  x = np.asarray(x, np.float64)
  xc = x - x.mean(0)
  values, vectors = np.linalg.eigh(xc.T @ xc / (len(x) - 1))
  return x.mean(0), values[::-1], vectors[:, ::-1]


def data(n, d, *, offset=0.0, seed=0):
  """Anisotropic data with well-separated leading variances (so the leading directions are well defined)."""
  rng = np.random.default_rng(seed)
  scales = np.geomspace(3.0, 0.05, d)
  rotation = np.linalg.qr(rng.standard_normal((d, d)))[0]
  return ((rng.standard_normal((n, d)) * scales) @ rotation.T + offset).astype(np.float32)


def assert_matches_reference(result, x, k, *, rtol=2e-5, num_directions=5):
  mean, values, vectors = reference_pca(x)
  assert result.eigenvalues.shape == (k,) and result.components.shape == (x.shape[1], k)
  np.testing.assert_allclose(result.eigenvalues, values[:k], rtol=rtol, atol=rtol * values[0])
  np.testing.assert_allclose(result.total_variance, values.sum(), rtol=rtol)
  np.testing.assert_allclose(result.explained_variance_ratio, values[:k] / values.sum(), rtol=rtol, atol=1e-7)
  # Directions up to sign, for the leading (well-separated) components.
  overlap = np.abs(np.sum(np.asarray(result.components[:, :num_directions], np.float64) * vectors[:, :num_directions], 0))
  np.testing.assert_allclose(overlap, 1.0, atol=1e-4)
  np.testing.assert_allclose(result.mean, mean, rtol=1e-6, atol=1e-6)
  assert int(result.num_examples) == x.shape[0]


@pytest.mark.parametrize("offset", [0.0, 1e4])
@pytest.mark.parametrize("n, d", [(40, 120), (300, 24)])  # n < d and n > d
@pytest.mark.parametrize("method", ["auto", "gram", "covariance"])
def test_full_batch_matches_float64_eigh(n, d, method, offset):
  x = data(n, d, offset=offset)
  k = min(n, d, 10)
  result = kernels.pca(x, k=k, method=method)
  assert_matches_reference(result, x, k)
  # Orthonormal columns, each with its largest-magnitude entry positive.
  c = np.asarray(result.components, np.float64)
  np.testing.assert_allclose(c.T @ c, np.eye(k), atol=1e-5)
  assert np.all(c[np.abs(c).argmax(0), np.arange(k)] > 0)


def test_gram_route_returns_zero_columns_for_the_null_space():
  x = data(12, 50)
  result = kernels.pca(x)  # k = min(n, d) = 12; centring leaves rank 11
  assert result.components.shape == (50, 12)
  np.testing.assert_allclose(result.eigenvalues[-1], 0.0, atol=1e-5)
  np.testing.assert_array_equal(result.components[:, -1], 0.0)
  assert_matches_reference(kernels.pca(x, k=11), x, 11)


def test_streaming_with_ragged_masked_batch_equals_full_batch():
  x = data(530, 20, offset=1e4, seed=1)
  state = kernels.pca_init(20)
  for start in range(0, 530, 64):
    batch = x[start : start + 64]
    valid = len(batch)
    padded = np.concatenate([batch, np.full((64 - valid, 20), 1e6, np.float32)])  # padding must be ignored
    state = kernels.pca_update(state, padded, mask=np.arange(64) < valid)
  assert int(state.count) == 530
  streamed = kernels.pca_result(state, k=8)
  assert_matches_reference(streamed, x, 8)
  full = kernels.pca(x, k=8)
  np.testing.assert_allclose(streamed.eigenvalues, full.eigenvalues, rtol=2e-5)
  np.testing.assert_allclose(np.abs(np.sum(streamed.components * full.components, 0))[:5], 1.0, atol=1e-5)


def test_many_small_batches_keep_float32_accuracy():
  # 2000 batches of 5 examples offset by 1e4: an uncompensated float32 running mean/scatter drifts here.
  x = data(10_000, 6, offset=1e4, seed=2)
  update = jax.jit(kernels.pca_update)
  state = kernels.pca_init(6)
  for start in range(0, 10_000, 5):
    state = update(state, x[start : start + 5])
  mean, values, _ = reference_pca(x)
  x64 = np.asarray(x, np.float64) - mean
  scatter = x64.T @ x64
  np.testing.assert_allclose(
      kernels.compensated.value(state.scatter), scatter, rtol=1e-6, atol=1e-6 * np.abs(scatter).max()
  )
  np.testing.assert_allclose(kernels.compensated.value(state.mean), mean, rtol=1e-7)
  result = kernels.pca_result(state)  # float32 eigh: accurate to ~eps·λ₁ absolutely
  np.testing.assert_allclose(result.eigenvalues, values, rtol=1e-5, atol=1e-6 * values[0])


def test_merge_equals_one_stream():
  x = data(300, 15, offset=1e4, seed=3)
  one = kernels.pca_init(15)
  a = kernels.pca_init(15)
  b = kernels.pca_init(15)
  for i, start in enumerate(range(0, 300, 50)):
    one = kernels.pca_update(one, x[start : start + 50])
    if i % 2:
      b = kernels.pca_update(b, x[start : start + 50])
    else:
      a = kernels.pca_update(a, x[start : start + 50])
  merged = kernels.pca_merge(a, b)
  assert int(merged.count) == 300
  np.testing.assert_allclose(
      kernels.compensated.value(merged.scatter), kernels.compensated.value(one.scatter), rtol=1e-6, atol=1e-4
  )
  np.testing.assert_allclose(kernels.compensated.value(merged.mean), kernels.compensated.value(one.mean), rtol=1e-7)
  assert_matches_reference(kernels.pca_result(merged, k=6), x, 6)
  # Merging with an empty state is exactly the identity, on either side.
  for m in (kernels.pca_merge(one, kernels.pca_init(15)), kernels.pca_merge(kernels.pca_init(15), one)):
    for got, want in zip(jax.tree.leaves(m), jax.tree.leaves(one)):
      np.testing.assert_array_equal(got, want)


def test_all_masked_batch_is_a_no_op():
  x = data(40, 5, seed=4)
  state = kernels.pca_update(kernels.pca_init(5), x)
  same = kernels.pca_update(state, x[:8] * 100, mask=np.zeros(8, bool))
  for got, want in zip(jax.tree.leaves(same), jax.tree.leaves(state)):
    np.testing.assert_array_equal(got, want)


def test_float64_state_under_x64():
  x = data(200, 10, offset=1e4, seed=5).astype(np.float64)
  with jax.enable_x64(True):
    state = kernels.pca_init(10)
    assert state.scatter.high.dtype == jnp.float64
    for start in range(0, 200, 30):
      state = kernels.pca_update(state, x[start : start + 30])
    result = kernels.pca_result(state)
    full = kernels.pca(x, k=10)
  _, values, _ = reference_pca(x)
  np.testing.assert_allclose(result.eigenvalues, values, rtol=1e-10)
  np.testing.assert_allclose(full.eigenvalues, values, rtol=1e-10)


def test_jit_and_vmap():
  stack = np.stack([data(60, 30, seed=s) for s in range(3)])
  batched = jax.vmap(lambda a: kernels.pca(a, k=4))(stack)
  jitted = jax.jit(lambda a: kernels.pca(a, k=4, method="gram"))
  for i in range(3):
    _, values, _ = reference_pca(stack[i])
    np.testing.assert_allclose(batched.eigenvalues[i], values[:4], rtol=2e-5)
    np.testing.assert_allclose(jitted(stack[i]).eigenvalues, values[:4], rtol=2e-5)
  # Streaming states of several layers at once.
  states = jax.vmap(lambda _: kernels.pca_init(30))(jnp.arange(3))
  states = jax.vmap(kernels.pca_update)(states, stack)
  results = jax.vmap(lambda s: kernels.pca_result(s, k=4))(states)
  np.testing.assert_allclose(results.eigenvalues, batched.eigenvalues, rtol=2e-5)


def test_participation_ratio_and_first_pc_fraction():
  for shape in ((40, 120), (300, 24)):  # Gram and scatter forms
    x = data(*shape, offset=1e4, seed=6)
    _, values, _ = reference_pca(x)
    values = np.clip(values, 0, None)
    np.testing.assert_allclose(kernels.participation_ratio(x), values.sum() ** 2 / (values**2).sum(), rtol=2e-5)
    np.testing.assert_allclose(kernels.first_pc_fraction(x), values[0] / values.sum(), rtol=2e-5)
  spectrum = np.array([4.0, 1.0, 1.0, 0.0])
  np.testing.assert_allclose(kernels.participation_ratio(eigenvalues=spectrum), 36 / 18)
  np.testing.assert_allclose(kernels.first_pc_fraction(eigenvalues=spectrum), 4 / 6)
  np.testing.assert_allclose(kernels.participation_ratio(eigenvalues=np.ones(7)), 7.0, rtol=1e-6)


def test_remove_and_project_top_pcs():
  x = data(80, 40, offset=1e4, seed=7)
  _, _, vectors = reference_pca(x)
  xc = np.asarray(x, np.float64) - np.asarray(x, np.float64).mean(0)
  top = vectors[:, :2]
  removed = np.asarray(kernels.remove_top_pcs(x, k=2), np.float64)
  kept = np.asarray(kernels.project_top_pcs(x, k=2), np.float64)
  scale = np.abs(xc).max()
  np.testing.assert_allclose(removed, xc - xc @ top @ top.T, atol=2e-5 * scale)
  np.testing.assert_allclose(kept, xc @ top @ top.T, atol=2e-5 * scale)
  np.testing.assert_allclose(removed + kept, xc, atol=2e-5 * scale)
  assert np.abs(removed @ top).max() < 1e-4 * scale
  # The variance on PC1 is gone: what was PC2 now leads.
  _, values, _ = reference_pca(x)
  np.testing.assert_allclose(kernels.first_pc_fraction(removed), values[2] / values[2:].sum(), rtol=1e-4)
  # Directions given explicitly (e.g. from another split) are used as they are.
  e = np.eye(40, dtype=np.float32)[:, :3]
  out = np.asarray(kernels.remove_top_pcs(x, k=3, components=e))
  np.testing.assert_allclose(out[:, :3], 0.0, atol=1e-6)
  np.testing.assert_allclose(out[:, 3:], xc[:, 3:], atol=2e-5 * scale)


def test_errors_name_the_argument():
  x = data(20, 6)
  with pytest.raises(ValueError, match="`x` must have rank 2"):
    kernels.pca(x[None])
  bad = x.copy()
  bad[3, 3] = np.nan
  with pytest.raises(ValueError, match="`x` contains 1 NaN/Inf"):
    kernels.pca(bad)
  with pytest.raises(ValueError, match="`x` contains 1 NaN/Inf"):
    kernels.pca_update(kernels.pca_init(6), bad)
  with pytest.raises(ValueError, match="`x` contains 1 NaN/Inf"):
    kernels.participation_ratio(bad)
  with pytest.raises(ValueError, match=r"`k` must be an integer in \[1, 6\]"):
    kernels.pca(x, k=7)
  with pytest.raises(ValueError, match=r"`k` must be an integer in \[1, 6\]"):
    kernels.pca(x, k=0)
  with pytest.raises(ValueError, match="`x` has 1 examples"):
    kernels.pca(x[:1])
  with pytest.raises(ValueError, match="zero variance"):
    kernels.pca(np.ones((5, 3), np.float32) * 7)
  with pytest.raises(ValueError, match="zero variance"):
    kernels.first_pc_fraction(np.ones((5, 3), np.float32))
  with pytest.raises(ValueError, match="`method`"):
    kernels.pca(x, method="svd")
  with pytest.raises(ValueError, match="`num_features`"):
    kernels.pca_init(0)
  with pytest.raises(ValueError, match="`x` has 6 features but the state"):
    kernels.pca_update(kernels.pca_init(5), x)
  with pytest.raises(ValueError, match=r"`mask` must have shape \(20,\)"):
    kernels.pca_update(kernels.pca_init(6), x, mask=np.ones(3, bool))
  with pytest.raises(ValueError, match="`state` holds 1 example"):
    kernels.pca_result(kernels.pca_update(kernels.pca_init(6), x[:1]))
  with pytest.raises(ValueError, match="exactly one of `x`"):
    kernels.participation_ratio()
  with pytest.raises(ValueError, match="exactly one of `x`"):
    kernels.participation_ratio(x, eigenvalues=np.ones(3))
  with pytest.raises(ValueError, match="`eigenvalues` must be non-negative"):
    kernels.participation_ratio(eigenvalues=np.array([1.0, -1.0]))
  with pytest.raises(ValueError, match="`eigenvalues` must have rank 1"):
    kernels.first_pc_fraction(eigenvalues=np.ones((2, 2)))
  with pytest.raises(ValueError, match="`components` must have d=6 rows"):
    kernels.remove_top_pcs(x, k=1, components=np.ones((5, 2)))
  with pytest.raises(ValueError, match=r"`k` must be an integer in \[1, 2\]"):
    kernels.project_top_pcs(x, k=3, components=np.ones((6, 2)))
