"""The public streaming API: values equal the reference paths, single device and sharded; user statistics."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rsim_jax import capture, extract, kernels, parallel, streaming


class Net(nnx.Module):
  """Not one of ours: an MLP with LayerNorm residual blocks and dropout (so its mode matters)."""

  def __init__(self, rngs):
    self.embed = nnx.Linear(20, 16, rngs=rngs)
    self.block0 = nnx.Sequential(nnx.LayerNorm(16, rngs=rngs), nnx.Linear(16, 16, rngs=rngs))
    self.block1 = nnx.Sequential(nnx.LayerNorm(16, rngs=rngs), nnx.Linear(16, 16, rngs=rngs))
    self.drop = nnx.Dropout(0.5, rngs=rngs)
    self.head = nnx.Linear(16, 4, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.embed(x))
    h = h + nnx.relu(self.block0(h))
    h = h + nnx.relu(self.block1(h))
    return self.head(self.drop(h))


def _data(n=96, seed=0):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((n, 20)).astype(np.float32), rng.integers(0, 4, n)


def _batches(x, y, batch_size):
  """Tuple batches `(features, labels, mask)` — not rsim_jax's dicts — with a padded, masked last batch."""
  for start in range(0, len(x), batch_size):
    xb, yb = x[start:start + batch_size], y[start:start + batch_size]
    valid = len(xb)
    pad = batch_size - valid
    yield (np.concatenate([xb, np.zeros((pad, 20), np.float32)]), np.concatenate([yb, np.zeros(pad, int)]),
           np.arange(batch_size) < valid)


ACCESSORS = dict(inputs=lambda b: b[0], labels=lambda b: b[1], mask=lambda b: b[2])


def _captured(seed=0):
  model = Net(nnx.Rngs(seed))
  model.eval()
  return model, capture.nnx_model(model, module_types=(nnx.Linear, nnx.Sequential))


@pytest.mark.parametrize("devices", [1, 8])
def test_cka_pca_sample_predictions_equal_the_reference_paths(devices):
  x, y = _data(100)
  (m0, c0), (m1, c1) = _captured(0), _captured(1)
  mesh = parallel.data_mesh(devices)
  b = 12  # per device; the last global batch is ragged and masked
  stats = {"within": streaming.CKA(stderr_groups=0), "other": streaming.CKA(model=1, layers=["head", "embed"]),
           "cross": streaming.CrossCKA(), "pca": streaming.PCA(layers=["block1"]),
           "sample": streaming.Sample(size=30, seed=3), "pred": streaming.Predictions()}
  out = streaming.analyze([c0, c1], _batches(x, y, b * devices), stats, mesh=mesh, progress=False, **ACCESSORS)
  names = out.context.layer_names[0]
  assert names == ("embed", "block0.layers.1", "block0", "block1.layers.1", "block1", "head")
  # Reference: every layer's activations on all examples, then the array path with the same minibatches.
  _, a0 = c0(jnp.asarray(x))
  _, a1 = c1(jnp.asarray(x))
  a0, a1 = capture.as_numpy(a0), capture.as_numpy(a1)
  ref_within = extract.minibatch_cka_of_arrays(a0, batch_size=b, progress=False)
  ref_cross = extract.minibatch_cka_of_arrays(a0, a1, batch_size=b, progress=False)
  np.testing.assert_allclose(out["within"].matrix, ref_within.matrix, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(out["cross"].matrix, ref_cross.matrix, rtol=1e-4, atol=1e-6)
  other = extract.minibatch_cka_of_arrays({k: a1[k] for k in ("head", "embed")}, batch_size=b, progress=False)
  np.testing.assert_allclose(out["other"].matrix, other.matrix, rtol=1e-4, atol=1e-6)
  assert out["within"].num_examples == 100 and out["other"].x_names == ("head", "embed")
  direct = kernels.pca(jnp.asarray(a0["block1"]))
  np.testing.assert_allclose(out["pca"]["block1"].eigenvalues, direct.eigenvalues, rtol=1e-4,
                             atol=1e-6)
  sampled = out["sample"]
  assert len(sampled.positions) == 30 and np.all(np.diff(sampled.positions) > 0)
  for model_acts, ref in zip(sampled.activations, (a0, a1)):
    for name in names:
      np.testing.assert_allclose(model_acts[name], ref[name][sampled.positions].reshape(30, -1), rtol=1e-5,
                                 atol=1e-6)
  np.testing.assert_array_equal(sampled.labels, y[sampled.positions])
  np.testing.assert_array_equal(out.labels, y)
  np.testing.assert_array_equal(out["pred"][0], np.argmax(m0(jnp.asarray(x)), -1))
  np.testing.assert_array_equal(out["pred"][1], np.argmax(m1(jnp.asarray(x)), -1))


def test_linen_and_apply_fn_go_through_the_same_api():
  class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Dense(8)(x))
      return nn.Dense(3)(x)

  x, y = _data(64)
  module = CNN()
  variables = module.init(jax.random.key(0), x[:2])
  linen = capture.linen_model(module, variables)

  def apply_fn(params, inputs):
    h = jnp.tanh(inputs @ params["w"])
    return {"hidden": h, "out": h @ params["v"]}

  params = {"w": jnp.asarray(np.random.default_rng(1).standard_normal((20, 6)), jnp.float32),
            "v": jnp.ones((6, 2), jnp.float32)}
  fn = capture.function_model(apply_fn, params, output="out")
  mesh = parallel.data_mesh(8)
  out = streaming.analyze([linen, fn], _batches(x, y, 64), {"cross": streaming.CrossCKA()}, mesh=mesh,
                          progress=False, **ACCESSORS)
  _, ref_linen = linen(jnp.asarray(x))
  ref = extract.minibatch_cka_of_arrays(capture.as_numpy(ref_linen), capture.as_numpy(apply_fn(params, x)),
                                        batch_size=8, progress=False)
  assert out["cross"].x_names == ("Dense_0", "Dense_1") and out["cross"].y_names == ("hidden", "out")
  np.testing.assert_allclose(out["cross"].matrix, ref.matrix, rtol=1e-4, atol=1e-6)


@dataclasses.dataclass(frozen=True)
class MeanSquare(streaming.Statistic):
  """A user's statistic: the mean over examples of ‖activation‖² per layer (psum over the data axis)."""

  def init(self, ctx):
    return {"total": jnp.zeros((len(ctx.layer_names[0]),)), "count": jnp.zeros(())}

  def update(self, state, step):
    names = list(step.activations[0])
    mask = step.mask.astype(jnp.float32)
    totals = jnp.stack([jnp.sum(jnp.sum(step.flat(0, n) ** 2, axis=1) * mask) for n in names])
    return {"total": state["total"] + totals, "count": state["count"] + jnp.sum(mask)}

  def merge(self, a, b):
    return jax.tree.map(jnp.add, a, b)

  def result(self, state, host, ctx):
    return dict(zip(ctx.layer_names[0], np.asarray(state["total"] / state["count"])))


def test_a_user_statistic_and_merging_two_passes():
  x, y = _data(96)
  _, captured = _captured(0)
  stats = {"ms": MeanSquare(), "cka": streaming.CKA(), "pca": streaming.PCA(layers=["embed"])}
  stream = streaming.Stream(captured, stats, mesh=parallel.data_mesh(4), **ACCESSORS)
  whole = first = second = None
  batches = list(_batches(x, y, 16))
  for i, batch in enumerate(batches):
    whole = stream.update(whole, batch)
  for batch in batches[:3]:
    first = stream.update(first, batch)
  for batch in batches[3:]:
    second = stream.update(second, batch)
  merged, direct = stream.result(stream.merge(first, second)), stream.result(whole)
  _, acts = captured(jnp.asarray(x))
  for name, value in merged["ms"].items():
    np.testing.assert_allclose(value, np.mean(np.sum(np.asarray(acts[name]).reshape(96, -1) ** 2, 1)), rtol=1e-5)
  np.testing.assert_allclose(merged["cka"].matrix, direct["cka"].matrix, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(merged["pca"]["embed"].eigenvalues, direct["pca"]["embed"].eigenvalues,
                             rtol=1e-4)
  assert merged.num_examples == 96


def test_the_model_mode_is_the_callers():
  x, y = _data(32)
  model = Net(nnx.Rngs(0))
  model.train()  # dropout on: the API must neither switch it off nor back
  captured = capture.nnx_model(model)
  streaming.analyze(captured, _batches(x, y, 16), {"pred": streaming.Predictions()}, mesh=parallel.data_mesh(1),
                    progress=False, **ACCESSORS)
  assert not model.drop.deterministic


def test_errors_name_the_argument():
  x, y = _data(32)
  _, captured = _captured(0)
  mesh = parallel.data_mesh(8)
  with pytest.raises(ValueError, match=r"layers \['nope'\] are not captured.*captured: \['embed'"):
    streaming.analyze(captured, _batches(x, y, 16), {"c": streaming.CKA(layers=["nope"])}, mesh=mesh,
                      progress=False, **ACCESSORS)
  with pytest.raises(ValueError, match="non-empty mapping"):
    streaming.Stream(captured, {}, mesh=mesh)
  with pytest.raises(TypeError, match="not a streaming.Statistic"):
    streaming.Stream(captured, {"c": "cka"}, mesh=mesh)
  with pytest.raises(ValueError, match=r"12 examples does not divide over the 8 devices"):
    streaming.analyze(captured, _batches(x, y, 12), {"c": streaming.CKA()}, mesh=mesh, progress=False,
                      **ACCESSORS)
  with pytest.raises(ValueError, match="empty"):
    streaming.analyze(captured, [], {"c": streaming.CKA()}, mesh=mesh, progress=False)
  with pytest.raises(ValueError, match="two models"):
    streaming.analyze(captured, _batches(x, y, 16), {"c": streaming.CrossCKA()}, mesh=mesh, progress=False,
                      **ACCESSORS)
  with pytest.raises(ValueError, match="`model`=2"):
    streaming.analyze(captured, _batches(x, y, 16), {"c": streaming.PCA(model=2)}, mesh=mesh, progress=False,
                      **ACCESSORS)


class Patches(nnx.Module):
  """Reshapes its input (as a ViT/Mixer patch embedding does): fine on Auto axes, a sharding type error on
  Explicit ones unless the user spells out the output sharding."""

  def __init__(self, rngs):
    self.embed = nnx.Linear(4, 6, rngs=rngs)

  def __call__(self, x):  # (b, 4, 4, 1)
    b = x.shape[0]
    return self.embed(x.reshape(b, 2, 2, 2, 2).transpose(0, 1, 3, 2, 4).reshape(b, 4, 4)).mean(axis=1)


def test_default_mesh_runs_a_users_model_as_written_and_explicit_names_the_fix():
  rng = np.random.default_rng(0)
  batches = [{"image": rng.standard_normal((32, 4, 4, 1)).astype(np.float32)} for _ in range(3)]
  captured = capture.nnx_model(Patches(nnx.Rngs(0)))
  out = streaming.analyze(captured, batches, {"cka": streaming.CKA(), "s": streaming.Sample(size=10)},
                          progress=False)  # default: all 8 devices, Auto axis
  _, acts = captured(jnp.asarray(np.concatenate([b["image"] for b in batches])))
  ref = extract.minibatch_cka_of_arrays(capture.as_numpy(acts), batch_size=4, progress=False)
  np.testing.assert_allclose(out["cka"].matrix, ref.matrix, rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="Explicit mesh axis 'data'.*AxisType.Auto"):
    streaming.analyze(captured, batches, {"cka": streaming.CKA()}, mesh=parallel.data_mesh(8), progress=False)
