import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rsim_jax import models
from rsim_jax.models import param_count


def _forward(model, x, capture=False):
  """Jitted forward of an NNX model (eager NNX convolutions are slow on CPU)."""
  graphdef, state = nnx.split(model)
  return jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, capture=capture))(state, x)


def _build_and_run(make, x):
  """`(abstract model, logits, acts)`: initialisation and a captured forward in one compiled call (each eager
  random initialiser would compile on its own, seconds apiece on a small CPU)."""
  return nnx.eval_shape(make), *jax.jit(lambda x: make()(x, capture=True))(x)


def _x(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@pytest.mark.parametrize("depth,width", [(8, 1), (14, 2), (20, 1), (20, 4)])
def test_resnet_shapes_and_layers(depth, width):
  make = lambda: models.ResNet(depth, width, num_classes=7, in_channels=1, rngs=nnx.Rngs(0))  # noqa: E731
  n = (depth - 2) // 6
  model, logits, acts = _build_and_run(make, _x((4, 8, 8, 1)))
  assert len(model.layer_names) == 1 + 2 * 3 * n + 2
  assert logits.shape == (4, 7) and logits.dtype == jnp.float32
  assert tuple(acts) == model.layer_names
  assert acts["stem"].shape == (4, 8, 8, 16 * width)
  assert acts["stage1.block0.conv1"].shape == (4, 8, 8, 16 * width)
  assert acts[f"stage2.block{n - 1}.out"].shape == (4, 4, 4, 32 * width)
  assert acts["stage3.block0.out"].shape == (4, 2, 2, 64 * width)
  assert acts["pool"].shape == (4, 64 * width)
  np.testing.assert_array_equal(acts["logits"], logits)


def test_capture_does_not_change_logits_and_keeps_order_through_jit():
  model = models.ResNet(8, in_channels=1, rngs=nnx.Rngs(0))
  x = _x((4, 8, 8, 1))
  logits, acts = _forward(model, x, capture=True)
  assert list(acts) == list(model.layer_names)  # an OrderedDict keeps its order through jit
  np.testing.assert_allclose(_forward(model, x), logits, rtol=1e-6, atol=1e-6)


def test_resnet_32x32_and_16x16_inputs():
  for size, final in ((32, 8), (16, 4)):
    _, _, acts = _build_and_run(lambda: models.ResNet(8, rngs=nnx.Rngs(0)), _x((2, size, size, 3)))
    assert acts["stage3.block0.out"].shape == (2, final, final, 64)


def test_layer_names_are_stable_and_documented():
  abstract = lambda make: nnx.eval_shape(make)  # noqa: E731  (names need no initialisation)
  model = abstract(lambda: models.ResNet(14, rngs=nnx.Rngs(0)))
  assert model.layer_names == (
      "stem",
      "stage1.block0.conv1", "stage1.block0.out", "stage1.block1.conv1", "stage1.block1.out",
      "stage2.block0.conv1", "stage2.block0.out", "stage2.block1.conv1", "stage2.block1.out",
      "stage3.block0.conv1", "stage3.block0.out", "stage3.block1.conv1", "stage3.block1.out",
      "pool", "logits",
  )
  assert abstract(lambda: models.ResNet(14, width=4, rngs=nnx.Rngs(1))).layer_names == model.layer_names
  wrn = abstract(lambda: models.WideResNet(10, 2, rngs=nnx.Rngs(0)))
  assert wrn.layer_names == (
      "stem", "stage1.block0.conv1", "stage1.block0.out", "stage2.block0.conv1", "stage2.block0.out",
      "stage3.block0.conv1", "stage3.block0.out", "final", "pool", "logits",
  )
  imnet = abstract(lambda: models.ImageNetResNet((1, 1, 1, 1), rngs=nnx.Rngs(0)))
  assert imnet.layer_names[:4] == ("stem", "stage1.block0.conv1", "stage1.block0.conv2", "stage1.block0.out")
  assert imnet.layer_names[-2:] == ("pool", "logits") and len(imnet.layer_names) == 1 + 4 * 3 + 2
  assert abstract(lambda: models.MLP((5, 6), in_features=4, rngs=nnx.Rngs(0))).layer_names == (
      "dense1", "dense2", "logits")
  assert abstract(lambda: models.DeepNet((3, 4), (8,), rngs=nnx.Rngs(0))).layer_names == (
      "conv1", "pool1", "conv2", "pool2", "dense1", "logits")


@pytest.mark.parametrize("depth,k", [(10, 1), (16, 2), (22, 1)])
def test_wide_resnet_shapes(depth, k):
  n = (depth - 4) // 6
  model, logits, acts = _build_and_run(lambda: models.WideResNet(depth, k, num_classes=10, rngs=nnx.Rngs(0)),
                                       _x((3, 16, 16, 3)))
  assert logits.shape == (3, 10)
  assert tuple(acts) == model.layer_names and len(acts) == 1 + 2 * 3 * n + 3
  assert acts["stem"].shape == (3, 16, 16, 16)
  assert acts["stage1.block0.out"].shape == (3, 16, 16, 16 * k)
  assert acts["final"].shape == (3, 4, 4, 64 * k)
  assert acts["pool"].shape == (3, 64 * k)  # the last hidden layer of the mitosis study


@pytest.mark.parametrize("blocks,width", [((1, 1, 1, 1), 1), ((2, 1, 1, 1), 2)])
def test_imagenet_resnet_shapes(blocks, width):
  model, logits, acts = _build_and_run(
      lambda: models.ImageNetResNet(blocks, width, num_classes=5, rngs=nnx.Rngs(0)), _x((2, 64, 64, 3)))
  assert logits.shape == (2, 5) and tuple(acts) == model.layer_names
  assert acts["stem"].shape == (2, 16, 16, 64 * width)
  assert acts["stage1.block0.conv1"].shape == (2, 16, 16, 64 * width)
  assert acts["stage4.block0.conv2"].shape == (2, 2, 2, 512 * width)
  assert acts["stage4.block0.out"].shape == (2, 2, 2, 2048 * width)
  assert acts["pool"].shape == (2, 2048 * width)
  assert model.depth == 3 * sum(blocks) + 2


def test_named_imagenet_constructors():
  model = nnx.eval_shape(lambda: models.ResNet50(width=2, rngs=nnx.Rngs(0)))
  assert model.blocks_per_stage == (3, 4, 6, 3) and model.width == 2 and model.depth == 50
  assert models.ResNet101.__name__ == "ResNet101" and models.ResNet152.__name__ == "ResNet152"
  assert models.imagenet_resnet.DEPTHS == {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
  assert all(3 * sum(b) + 2 == d for d, b in models.imagenet_resnet.DEPTHS.items())


@pytest.mark.slow
def test_resnet50_224():
  _, logits, acts = _build_and_run(lambda: models.ResNet50(rngs=nnx.Rngs(0)), _x((2, 224, 224, 3)))
  assert logits.shape == (2, 1000) and acts["stem"].shape == (2, 56, 56, 64)
  assert acts["stage4.block2.out"].shape == (2, 7, 7, 2048)


def test_mlp_and_deepnet():
  make_mlp = lambda: models.MLP((32, 16), num_classes=10, in_features=28 * 28, rngs=nnx.Rngs(0))  # noqa: E731
  mlp, logits, acts = _build_and_run(make_mlp, _x((5, 28, 28, 1)))
  assert logits.shape == (5, 10) and acts["dense1"].shape == (5, 32) and acts["dense2"].shape == (5, 16)
  assert float(jnp.min(acts["dense1"])) >= 0  # post-ReLU
  make_net = lambda: models.DeepNet((8, 16), (32, 24), num_classes=10, rngs=nnx.Rngs(0))  # noqa: E731
  net, logits, acts = _build_and_run(make_net, _x((5, 28, 28, 1)))
  assert tuple(acts) == net.layer_names
  assert acts["conv1"].shape == (5, 28, 28, 8) and acts["pool1"].shape == (5, 14, 14, 8)
  assert acts["pool2"].shape == (5, 7, 7, 16) and acts["dense2"].shape == (5, 24) and logits.shape == (5, 10)
  with pytest.raises(ValueError, match="in_features"):
    jax.eval_shape(lambda x: make_mlp()(x), jnp.ones((2, 8, 8, 1)))
  with pytest.raises(ValueError, match="image_size"):
    jax.eval_shape(lambda x: make_net()(x), jnp.ones((2, 8, 8, 1)))


def test_invalid_depths_and_inputs():
  with pytest.raises(ValueError, match=r"6n\+2.*nearest valid depths: 20, 26"):
    models.ResNet(21, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"nearest valid depths: 50, 56"):
    models.ResNet(52, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"nearest valid depths: 8"):
    models.ResNet(4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"6n\+4.*nearest valid depths: 22, 28"):
    models.WideResNet(26, 10, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="width"):
    models.ResNet(20, width=0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="blocks_per_stage"):
    models.ImageNetResNet((3, 4, 6), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="Unknown model family"):
    models.build("vgg", {})
  with pytest.raises(ValueError, match="NHWC"):
    jax.eval_shape(lambda x: models.ResNet(8, rngs=nnx.Rngs(0))(x), jnp.ones((2, 8, 8, 1)))
  with pytest.raises(ValueError, match="compute dtype"):
    models.ResNet(8, dtype="float64", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("make,published,exact", [
    # He et al. 2016 Table 6 (0.27M, 0.85M, 1.7M; option-B projections add ~3k), Zagoruyko & Komodakis 2016
    # (WRN-28-10: 36.5M), torchvision resnet50 (25,557,032).
    (lambda: models.ResNet(20, rngs=nnx.Rngs(0)), 0.27e6, 272_474),
    (lambda: models.ResNet(56, rngs=nnx.Rngs(0)), 0.85e6, 855_770),
    (lambda: models.ResNet(110, rngs=nnx.Rngs(0)), 1.7e6, 1_730_714),
    (lambda: models.WideResNet(28, 10, rngs=nnx.Rngs(0)), 36.5e6, 36_479_194),
    (lambda: models.ResNet50(rngs=nnx.Rngs(0)), 25.6e6, 25_557_032),
])
def test_parameter_counts(make, published, exact):
  count = param_count(make)
  assert count == exact
  assert abs(count - published) / published < 0.02


def test_width_scales_parameters_quadratically():
  narrow = param_count(lambda: models.ResNet(20, 1, rngs=nnx.Rngs(0)))
  wide = param_count(lambda: models.ResNet(20, 2, rngs=nnx.Rngs(0)))
  assert 3.8 < wide / narrow < 4.0


def test_eval_mode_uses_running_statistics():
  model = models.ResNet(8, in_channels=1, rngs=nnx.Rngs(0))
  x = _x((8, 8, 8, 1)) * 3 + 1
  before = jax.tree.map(jnp.copy, nnx.state(model, nnx.BatchStat))
  model.eval()
  eval_logits, acts = model(x, capture=True)
  # Fresh running statistics are mean 0, var 1, so the stem is ReLU(γ·conv(x) + β) with γ=1, β=0.
  stem = nnx.relu(model.stem_conv(x) / jnp.sqrt(1 + 1e-5))
  np.testing.assert_allclose(acts["stem"], stem, rtol=1e-5, atol=1e-5)
  jax.tree.map(np.testing.assert_array_equal, nnx.state(model, nnx.BatchStat), before)  # untouched
  model.train()
  train_logits = model(x)
  assert not np.allclose(train_logits, eval_logits)
  assert not np.allclose(model.stem_bn.mean[...], 0)  # train mode updates the running mean


def test_zero_init_last_bn_makes_blocks_identities():
  model = models.ResNet(8, zero_init_last_bn=True, rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(model.blocks[0].bn2.scale[...], 0)
  assert float(jnp.min(model.blocks[0].bn1.scale[...])) == 1
  _, acts = _forward(model, _x((2, 8, 8, 3)), capture=True)
  np.testing.assert_allclose(acts["stage1.block0.out"], acts["stem"], atol=1e-6)  # ReLU(0 + ReLU(x)) = ReLU(x)


def test_bfloat16_compute_keeps_float32_parameters():
  make_bf16 = lambda: models.ResNet(8, in_channels=1, dtype="bfloat16", rngs=nnx.Rngs(0))  # noqa: E731
  bf16 = nnx.eval_shape(make_bf16)
  assert {p.dtype for p in jax.tree.leaves(nnx.state(bf16, nnx.Param))} == {jnp.dtype(jnp.float32)}
  x = _x((4, 8, 8, 1))
  _, lo, acts = _build_and_run(make_bf16, x)
  _, hi, _ = _build_and_run(lambda: models.ResNet(8, in_channels=1, rngs=nnx.Rngs(0)), x)
  assert lo.dtype == jnp.float32 and acts["stem"].dtype == jnp.float32
  np.testing.assert_allclose(lo, hi, rtol=0.1, atol=0.1)


def test_build_fills_data_dependent_arguments():
  mlp = nnx.eval_shape(lambda: models.build("mlp", {"hidden": (4,)}, image_shape=(8, 8, 1), num_classes=3))
  assert mlp.in_features == 64 and mlp.num_classes == 3
  net = nnx.eval_shape(
      lambda: models.build("deepnet", {"conv_features": (4,), "dense_features": (8,)}, image_shape=(16, 16, 1)))
  assert net.image_size == 16 and net.in_channels == 1
  resnet = nnx.eval_shape(
      lambda: models.build("resnet", {"depth": 8, "num_classes": 4}, image_shape=(8, 8, 1), num_classes=10))
  assert resnet.in_channels == 1 and resnet.num_classes == 4  # explicit kwargs win


def test_initialisers_match_jax_variance_scaling_statistics():
  from rsim_jax.models import common

  key = jax.random.key(0)
  for init, ref, shape in (
      (common.conv_init, jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal"), (3, 3, 64, 128)),
      (common.dense_init, jax.nn.initializers.lecun_normal(), (512, 256)),
  ):
    ours, theirs = np.asarray(init(key, shape)), np.asarray(ref(key, shape))
    assert ours.shape == shape
    np.testing.assert_allclose(ours.std(), theirs.std(), rtol=0.02)
    np.testing.assert_allclose(np.abs(ours).max(), np.abs(theirs).max(), rtol=0.25)
