"""Capture adapters: a user's NNX / Linen model or apply function → named activations in call order."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rsim_jax import capture, models


class Block(nnx.Module):
  def __init__(self, d, rngs):
    self.norm = nnx.LayerNorm(d, rngs=rngs)
    self.fc = nnx.Linear(d, d, rngs=rngs)

  def __call__(self, x):
    return x + nnx.gelu(self.fc(self.norm(x)))


class Mixer(nnx.Module):
  """A small model that is not one of ours: patch embedding, residual blocks (one called twice), a head."""

  def __init__(self, rngs):
    self.embed = nnx.Linear(16, 12, rngs=rngs)
    self.blocks = nnx.List([Block(12, rngs) for _ in range(2)])
    self.shared = Block(12, rngs)
    self.head = nnx.Linear(12, 3, rngs=rngs)

  def __call__(self, x):
    h = self.embed(x.reshape(x.shape[0], -1))
    for block in self.blocks:
      h = block(h)
    h = self.shared(self.shared(h))
    self.sow(nnx.Intermediate, "features", h)
    return self.head(h)


def _x(n=6):
  return jnp.asarray(np.random.default_rng(0).standard_normal((n, 4, 4, 1)), jnp.float32)


def test_nnx_capture_equals_calling_the_layers_by_hand():
  model = Mixer(nnx.Rngs(0))
  x = _x()
  out, acts = capture.nnx_model(model)(x)
  h = model.embed(x.reshape(6, -1))
  expected = {"embed": h}
  for i, block in enumerate(model.blocks):
    expected[f"blocks.{i}.norm"] = block.norm(h)
    expected[f"blocks.{i}.fc"] = block.fc(expected[f"blocks.{i}.norm"])
    h = expected[f"blocks.{i}"] = block(h)
  s0 = model.shared(h)
  s1 = model.shared(s0)
  expected.update({"shared.norm[0]": model.shared.norm(h), "shared.fc[0]": model.shared.fc(model.shared.norm(h)),
                   "shared[0]": s0, "shared.norm[1]": model.shared.norm(s0),
                   "shared.fc[1]": model.shared.fc(model.shared.norm(s0)), "shared[1]": s1, "features": s1,
                   "head": model.head(s1)})
  # Call order: each block's sublayers, then the block; the shared block's two calls in turn.
  assert list(acts) == ["embed", "blocks.0.norm", "blocks.0.fc", "blocks.0", "blocks.1.norm", "blocks.1.fc",
                        "blocks.1", "shared.norm[0]", "shared.fc[0]", "shared[0]", "shared.norm[1]",
                        "shared.fc[1]", "shared[1]", "features", "head"]
  for name, value in expected.items():
    np.testing.assert_allclose(acts[name], value, rtol=1e-6, atol=1e-6, err_msg=name)
  np.testing.assert_allclose(out, model(x), rtol=1e-6)


def test_nnx_filters_and_jit():
  model = Mixer(nnx.Rngs(0))
  x = _x()
  assert capture.nnx_model(model, include="blocks.*", module_types=Block).layer_names(x) == ("blocks.0", "blocks.1")
  assert capture.nnx_model(model, module_types=nnx.Linear, sown=False).layer_names(x) == (
      "embed", "blocks.0.fc", "blocks.1.fc", "shared.fc[0]", "shared.fc[1]", "head")
  assert capture.nnx_model(model, methods=(), include="feat*").layer_names(x) == ("features",)
  assert "blocks.0.norm" not in capture.nnx_model(model, exclude="*.norm*").layer_names(x)
  captured = capture.nnx_model(model)
  _, eager = captured(x)
  _, jitted = jax.jit(captured.apply)(captured.params, x)
  for name in eager:
    np.testing.assert_allclose(jitted[name], eager[name], rtol=1e-5, atol=1e-6)


def test_nnx_capture_leaves_the_model_and_its_mode_alone():
  model = models.ResNet(depth=8, num_classes=3, in_channels=1, rngs=nnx.Rngs(0))
  model.train()
  captured = capture.nnx_model(model, module_types=nnx.BatchNorm)
  x = jnp.ones((4, 8, 8, 1))
  captured.layer_names(x)
  assert not model.stem_bn.use_running_average if hasattr(model, "stem_bn") else True
  bns = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]
  assert bns and all(not bn.use_running_average for bn in bns)  # still in train mode
  model.eval()
  assert all(bn.use_running_average for bn in bns)


class LinenCNN(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.relu(x)
    x = nn.Conv(5, (3, 3), strides=2)(x)
    x = x.mean((1, 2))
    self.sow("intermediates", "pooled", x)
    return nn.Dense(3)(x)


def test_linen_capture_equals_capture_intermediates_read_by_hand():
  module = LinenCNN()
  x = _x()
  variables = module.init(jax.random.key(0), x)
  out, acts = capture.linen_model(module, variables, train=False)(x)
  ref_out, state = module.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
  inter = state["intermediates"]
  assert list(acts) == ["Conv_0", "BatchNorm_0", "Conv_1", "pooled", "Dense_0"]
  for name in ("Conv_0", "BatchNorm_0", "Conv_1", "Dense_0"):
    np.testing.assert_allclose(acts[name], inter[name]["__call__"][0], rtol=1e-6, err_msg=name)
  np.testing.assert_allclose(acts["pooled"], inter["pooled"][0], rtol=1e-6)
  np.testing.assert_allclose(out, ref_out, rtol=1e-6)
  assert capture.linen_model(module, variables, module_types=nn.Conv).layer_names(x) == ("Conv_0", "Conv_1",
                                                                                         "pooled")


def test_function_model_keeps_its_order_or_orders_by_data_flow():
  def apply(p, x):
    b = jnp.tanh(x * p)
    a = jnp.sin(b)
    return {"z_second": a, "a_first": b}

  x = jnp.ones((4, 3))
  assert capture.function_model(apply, 2.0).layer_names(x) == ("z_second", "a_first")
  assert capture.function_model(apply, 2.0, ordered=False).layer_names(x) == ("a_first", "z_second")
  out, acts = capture.function_model(apply, 2.0, output="z_second")(x)
  np.testing.assert_allclose(out, np.sin(np.tanh(2.0)) * np.ones((4, 3)), rtol=1e-6)
  with pytest.raises(ValueError, match="`output`='nope'"):
    capture.function_model(apply, 2.0, output="nope")(x)
  with pytest.raises(TypeError, match="mapping of layer name"):
    capture.function_model(lambda p, x: x, 2.0)(x)


def test_rsim_models_keep_their_curated_layers_and_auto_dispatch():
  model = models.ResNet(depth=8, num_classes=3, in_channels=1, rngs=nnx.Rngs(0))
  model.eval()
  x = jnp.ones((4, 8, 8, 1))
  captured = capture.auto(model)
  assert captured.layer_names(x) == tuple(model.layer_names)
  logits, acts = captured(x)
  ref_logits, ref = model(x, capture=True)
  np.testing.assert_allclose(logits, ref_logits, rtol=1e-6)
  for name in ref:
    np.testing.assert_allclose(acts[name], ref[name], rtol=1e-6)
  assert isinstance(capture.auto(Mixer(nnx.Rngs(0))), capture.CapturedModel)
  with pytest.raises(ValueError, match="variables"):
    capture.auto(LinenCNN())
  with pytest.raises(TypeError, match="nnx.Module"):
    capture.nnx_model(LinenCNN())
