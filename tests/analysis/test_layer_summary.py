"""`analysis.layer_summary`: any model's CKA, PC1 and ID profile from one pass, equal to the direct computations."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rsim_jax import capture, extract, parallel, plotting, streaming
from rsim_jax.analysis import intrinsic_dim, layer_summary, principal_components


class Tower(nnx.Module):
  def __init__(self, rngs):
    self.fc1 = nnx.Linear(12, 32, rngs=rngs)
    self.fc2 = nnx.Linear(32, 32, rngs=rngs)
    self.fc3 = nnx.Linear(32, 5, rngs=rngs)

  def __call__(self, x):
    return self.fc3(nnx.relu(self.fc2(nnx.relu(self.fc1(x)))))


def test_summary_equals_direct_computation_and_plots(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((240, 12)).astype(np.float32)
  batches = [{"image": x[i:i + 48]} for i in range(0, 240, 48)]
  captured = capture.nnx_model(Tower(nnx.Rngs(0)))
  summary = layer_summary.summarize(captured, batches, sample_size=240, stderr_groups=5,
                                    mesh=parallel.data_mesh(8), progress=False)
  assert summary.layer_names == ("fc1", "fc2", "fc3") and summary.num_sampled == 240
  _, acts = captured(jnp.asarray(x))
  acts = capture.as_numpy(acts)
  ref = extract.minibatch_cka_of_arrays(acts, batch_size=6, progress=False)  # 48 rows / 8 devices
  np.testing.assert_allclose(summary.cka.matrix, ref.matrix, rtol=1e-4, atol=1e-6)
  assert summary.cka.stderr.shape == (3, 3) and np.all(summary.cka.stderr[~np.eye(3, dtype=bool)] > 0)
  pc1 = principal_components.pc1_fractions(acts)
  np.testing.assert_allclose(summary.pc1_fraction, [pc1[n] for n in summary.layer_names], rtol=1e-5)
  ids = intrinsic_dim.id_profile(acts, repeats=5, seed=0)
  np.testing.assert_allclose(summary.intrinsic_dim, ids.intrinsic_dim, rtol=1e-5)
  fig = plotting.layer_summary(summary)
  assert len(fig.axes) >= 4  # CKA, its stderr, PC1, ID (+ colour bars)
  path = plotting.layer_summary(summary, tmp_path / "summary.png")
  assert path.stat().st_size > 10_000


def test_from_result_names_the_missing_statistic():
  rng = np.random.default_rng(0)
  batches = [{"image": rng.standard_normal((16, 12)).astype(np.float32)}]
  out = streaming.analyze(capture.nnx_model(Tower(nnx.Rngs(0))), batches, {"cka": streaming.CKA()},
                          mesh=parallel.data_mesh(1), progress=False)
  with pytest.raises(ValueError, match="no Sample statistic named 'sample'"):
    layer_summary.from_result(out)
