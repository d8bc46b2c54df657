import numpy as np
import pytest

from rsim_jax import kernels
from rsim_jax.analysis import principal_components as pcs


def _block_layers(m=300, seed=0):
  """Layers 1–3 share one dominant direction (a 'block'); layers 0 and 4 do not."""
  rng = np.random.default_rng(seed)
  signal = rng.standard_normal((m, 1))
  layers = {}
  for i in range(5):
    x = rng.standard_normal((m, 40)) * 0.3
    if 1 <= i <= 3:
      x += 6.0 * signal @ rng.standard_normal((1, 40)) / np.sqrt(40) * np.sqrt(40)
    layers[f"l{i}"] = (x + 5.0).astype(np.float32)
  return layers


def test_pc1_fraction_and_cka_with_pc1_high_inside_block():
  layers = _block_layers()
  frac = pcs.pc1_fractions(layers)
  with_pc1 = pcs.cka_with_top_pcs(layers)
  for name in ("l1", "l2", "l3"):
    assert frac[name] > 0.9 and with_pc1[name] > 0.95
  for name in ("l0", "l4"):
    assert frac[name] < 0.15 and with_pc1[name] < 0.4


def test_cka_with_top_pcs_closed_form_equals_direct_cka():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((120, 30)) * np.linspace(3, 0.1, 30)
  for k in (1, 3):
    direct = kernels.cka(x, kernels.project_top_pcs(x, k=k))
    assert pcs.cka_with_top_pcs({"x": x}, k=k)["x"] == pytest.approx(float(direct), rel=1e-4)


def test_cka_matrix_matches_pairwise_kernel_cka_and_removal_kills_block():
  layers = _block_layers()
  names = list(layers)
  full = pcs.cka_matrix(layers)
  debiased = pcs.cka_matrix(layers, debiased=True)
  for i in range(5):
    for j in range(5):
      x, y = layers[names[i]].astype(np.float64), layers[names[j]].astype(np.float64)
      assert full[i, j] == pytest.approx(float(kernels.cka(x, y)), abs=1e-5)
      assert debiased[i, j] == pytest.approx(float(kernels.cka(x, y, debiased=True)), abs=1e-5)
  removed = pcs.cka_matrix(layers, remove_pcs=1)
  assert full[1, 3] > 0.9 and removed[1, 3] < 0.2
  np.testing.assert_allclose(np.diag(removed), 1.0, rtol=1e-5)
  summary = pcs.pc1_summary(layers, block=(1, 3))
  assert summary["block"]["mean_cka"] > 0.9 and summary["block"]["mean_cka_pc1_removed"] < 0.2
  assert summary["block"]["mean_pc1_fraction"] > 0.9 and len(summary["pc1_fraction"]) == 5


def test_invariance_to_orthogonal_transform_and_scale():
  layers = _block_layers(m=100)
  q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((40, 40)))
  moved = {k: (v @ q * 7.0).astype(np.float32) for k, v in layers.items()}
  np.testing.assert_allclose(pcs.cka_matrix(moved, remove_pcs=1), pcs.cka_matrix(layers, remove_pcs=1), atol=1e-4)


def test_errors():
  with pytest.raises(ValueError, match="non-empty mapping"):
    pcs.pc1_fractions({})
  with pytest.raises(ValueError, match="same examples"):
    pcs.cka_matrix({"a": np.ones((10, 3)), "b": np.ones((9, 3))})
  with pytest.raises(ValueError, match="at least 4"):
    pcs.cka_matrix({"a": np.random.rand(3, 3)})
  with pytest.raises(ValueError, match="NaN"):
    pcs.cka_matrix({"a": np.full((10, 3), np.nan)})
  with pytest.raises(ValueError, match="remove_pcs"):
    pcs.cka_matrix({"a": np.random.rand(10, 3)}, remove_pcs=3)
  with pytest.raises(ValueError, match="`k`"):
    pcs.cka_with_top_pcs({"a": np.random.rand(10, 3)}, k=0)
  with pytest.raises(ValueError, match="no variance"):
    pcs.cka_matrix({"a": np.ones((10, 3))})
