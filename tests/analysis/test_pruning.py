import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rsim_jax import models
from rsim_jax.analysis import pruning


def _resnet14(seed=0):
  model = models.ResNet(14, 1, num_classes=5, in_channels=1, rngs=nnx.Rngs(seed))
  model.eval()
  return model


def _batches(n=40, b=16, seed=0, hw=8, channels=1, classes=5):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, hw, hw, channels)).astype(np.float32)
  y = rng.integers(0, classes, n).astype(np.int32)
  out = []
  for lo in range(0, n, b):
    img, lab = x[lo:lo + b], y[lo:lo + b]
    pad = b - len(img)
    out.append({"image": np.pad(img, ((0, pad), (0, 0), (0, 0), (0, 0))), "label": np.pad(lab, (0, pad)),
                "mask": np.arange(b) < len(img)})
  return out, x, y


def test_prunable_blocks_are_the_identity_shortcut_blocks():
  model = _resnet14()
  assert model.block_prefixes == ("stage1.block0", "stage1.block1", "stage2.block0", "stage2.block1",
                                  "stage3.block0", "stage3.block1")
  assert pruning.prunable_blocks(model) == ("stage1.block0", "stage1.block1", "stage2.block1", "stage3.block1")
  np.testing.assert_array_equal(pruning.keep_mask(model, ["stage2.block1"]), [1, 1, 1, 0, 1, 1])


def test_removing_a_block_with_zeroed_residual_branch_changes_nothing_exactly():
  model = _resnet14()
  x = jnp.asarray(np.random.default_rng(1).standard_normal((6, 8, 8, 1)), jnp.float32)
  block = model.blocks[model.block_prefixes.index("stage2.block1")]
  # ReLU(BN2(...) + x) with BN2 scale and bias 0 is ReLU(x) = x for the post-ReLU input x.
  block.bn2.scale[...] = jnp.zeros_like(block.bn2.scale[...])
  block.bn2.bias[...] = jnp.zeros_like(block.bn2.bias[...])
  full = model(x)
  np.testing.assert_array_equal(np.asarray(pruning.prune_blocks(model, ["stage2.block1"])(x)), np.asarray(full))
  # A block that does work changes the logits when removed.
  other = pruning.prune_blocks(model, ["stage1.block1"])(x)
  assert np.max(np.abs(np.asarray(other) - np.asarray(full))) > 1e-3


def test_wide_resnet_zeroed_branch_and_real_block():
  model = models.WideResNet(10, 2, num_classes=3, in_channels=1, rngs=nnx.Rngs(0))
  # WRN-10-2: one block per stage, each changing the width (16 → 32 → 64 → 128), so none is removable.
  assert pruning.prunable_blocks(model) == ()
  with pytest.raises(ValueError, match="no removable blocks"):
    pruning.pruning_curve(model, [])
  model = models.WideResNet(16, 1, num_classes=3, in_channels=1, rngs=nnx.Rngs(0))
  model.eval()
  name = pruning.prunable_blocks(model)[0]
  x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 8, 8, 1)), jnp.float32)
  full = np.asarray(model(x))
  assert np.max(np.abs(np.asarray(pruning.prune_blocks(model, [name])(x)) - full)) > 1e-4
  block = model.blocks[model.block_prefixes.index(name)]
  block.conv2.kernel[...] = jnp.zeros_like(block.conv2.kernel[...])  # pre-activation: y = x + conv2(...)
  np.testing.assert_array_equal(np.asarray(pruning.prune_blocks(model, [name])(x)), np.asarray(model(x)))


def test_errors_name_the_problem():
  model = _resnet14()
  with pytest.raises(ValueError, match=r"stage2.block0.*projection shortcut"):
    pruning.keep_mask(model, ["stage2.block0"])
  with pytest.raises(ValueError, match="unknown blocks"):
    pruning.keep_mask(model, ["stage9.block0"])
  with pytest.raises(ValueError, match="capture=True"):
    model(jnp.zeros((2, 8, 8, 1)), capture=True, keep_blocks=np.ones(6, bool))
  with pytest.raises(ValueError, match="shape"):
    model(jnp.zeros((2, 8, 8, 1)), keep_blocks=np.ones(5, bool))
  with pytest.raises(ValueError, match="projection shortcut"):
    model(jnp.zeros((2, 8, 8, 1)), keep_blocks=np.array([1, 1, 0, 1, 1, 1], bool))
  with pytest.raises(ValueError, match="residual model"):
    pruning.prunable_blocks(models.MLP((4,), num_classes=2, in_features=64, rngs=nnx.Rngs(0)))


def test_pruning_curve_matches_per_pattern_forward_passes():
  model = _resnet14(seed=3)
  batches, x, y = _batches()
  curve = pruning.pruning_curve(model, batches, patterns_per_call=3)
  assert curve.blocks == pruning.prunable_blocks(model)
  assert curve.order == curve.blocks[::-1]
  assert curve.single_accuracy.shape == (4,) and curve.cumulative_accuracy.shape == (4,)

  def accuracy(removed):  # independent: one eager forward of the pruned view per pattern, numpy argmax
    logits = np.asarray(pruning.prune_blocks(model, removed)(jnp.asarray(x)))
    return float(np.mean(logits.argmax(-1) == y))

  assert curve.full_accuracy == pytest.approx(float(np.mean(np.asarray(model(jnp.asarray(x))).argmax(-1) == y)))
  for b, acc in zip(curve.blocks, curve.single_accuracy):
    assert acc == pytest.approx(accuracy([b]))
  for j, acc in enumerate(curve.cumulative_accuracy):
    assert acc == pytest.approx(accuracy(curve.order[:j + 1]))
  # The single-block accuracies are not all equal to the full model's: removal matters somewhere.
  assert len(set(np.round(curve.single_accuracy, 6)) | {round(curve.full_accuracy, 6)}) > 1
  summary = pruning.inside_outside_drops(curve, model, start=0, end=4)  # layers 0..4 = stem, stage1 blocks
  assert summary["inside"] == ["stage1.block0", "stage1.block1"]
  assert summary["outside"] == ["stage2.block1", "stage3.block1"]
  drops = curve.single_drop()
  assert summary["mean_drop_inside"] == pytest.approx((drops["stage1.block0"] + drops["stage1.block1"]) / 2)
  with pytest.raises(ValueError, match="repeats"):
    pruning.pruning_curve(model, batches, order=["stage1.block0", "stage1.block0"])


def test_block_pruning_is_the_curve_with_output_layers_and_the_split():
  model = _resnet14(seed=3)
  batches, _, _ = _batches()
  curve = pruning.pruning_curve(model, batches)
  result = pruning.block_pruning(model, batches, (0, 4))
  assert {k: result[k] for k in curve.to_json()} == curve.to_json()
  assert result["block_output_layer"] == [pruning.block_layer_span(model, b)[1] for b in curve.blocks]
  assert result["inside"] == ["stage1.block0", "stage1.block1"]
  assert result["mean_drop_inside"] == pruning.inside_outside_drops(curve, model, start=0, end=4)["mean_drop_inside"]
  # No block: every block is outside and the inside mean is missing.
  result = pruning.block_pruning(model, batches, None)
  assert result["inside"] == [] and result["mean_drop_inside"] is None and len(result["outside"]) == 4
