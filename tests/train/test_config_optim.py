import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rsim_jax import models
from rsim_jax.train import TrainConfig, cross_entropy, learning_rate_schedule, load_config, make_optimizer
from rsim_jax.train import loop
from rsim_jax.train.config import parse_override
from rsim_jax.train.optim import weight_decay_mask

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "train_configs"


def test_config_json_round_trip():
  config = TrainConfig(model="imagenet_resnet", model_kwargs={"blocks_per_stage": (3, 4, 6, 3), "width": 2},
                       data="cifar10", data_kwargs={"image_size": 16}, train_subset=0.25, step_boundaries=(0.3, 0.6),
                       schedule="step", dtype="bfloat16")
  again = TrainConfig.from_json(config.to_json())
  assert again == config
  assert again.model_kwargs["blocks_per_stage"] == (3, 4, 6, 3)  # tuples survive JSON's lists
  assert TrainConfig.from_json(TrainConfig(train_subset=500).to_json()).train_subset == 500


@pytest.mark.parametrize("changes,match", [
    (dict(model="vgg"), "model family"),
    (dict(schedule="linear"), "schedule"),
    (dict(dtype="float64"), "dtype"),
    (dict(train_subset=1.5), "train_subset"),
    (dict(train_subset=0), "train_subset"),
    (dict(step_boundaries=(0.75, 0.5)), "step_boundaries"),
    (dict(until_zero_train_error=True), "max_epochs"),
    (dict(until_zero_train_error=True, max_epochs=20), "final learning rate"),
    (dict(label_smoothing=1.0), "label_smoothing"),
    (dict(num_steps=0), "num_steps"),
    (dict(weight_decay_on="no_bn"), "weight_decay_on='no_bn'.*'all', 'kernels'"),
])
def test_config_validation(changes, match):
  with pytest.raises(ValueError, match=match):
    TrainConfig(**changes)


def test_unknown_fields_and_overrides():
  with pytest.raises(ValueError, match="Unknown TrainConfig field.*'epochs'"):
    TrainConfig.from_dict({"epochs": 3})
  config = parse_override(TrainConfig(), "num_epochs=3")
  config = parse_override(config, 'model_kwargs={"depth": 56, "width": 2}')
  config = parse_override(config, "data=cifar10")
  assert (config.num_epochs, config.model_kwargs, config.data) == (3, {"depth": 56, "width": 2}, "cifar10")
  with pytest.raises(ValueError, match="field=value"):
    parse_override(config, "num_epochs")


def test_steps_and_epochs():
  config = TrainConfig(batch_size=100, num_epochs=2.5)
  assert config.steps_per_epoch(1050) == 10 and config.total_steps(1050) == 25
  assert config.replace(num_steps=7).total_steps(1050) == 7
  zero = config.replace(until_zero_train_error=True, max_epochs=10, end_lr_fraction=0.01)
  assert zero.max_steps(1050) == 100 and zero.total_steps(1050) == 25
  with pytest.raises(ValueError, match="fewer than one batch"):
    config.steps_per_epoch(50)


def test_example_config_files_load():
  files = sorted(CONFIG_DIR.glob("*.py"))
  assert files, CONFIG_DIR
  for file in files:
    local = load_config(str(file))
    assert isinstance(local, TrainConfig)
    assert load_config(f"{file}:local") == local
    assert TrainConfig.from_json(local.to_json()) == local
  with pytest.raises(FileNotFoundError, match="not found"):
    load_config("no/such/file.py")


def test_cosine_schedule_with_warmup():
  config = TrainConfig(lr=0.4, schedule="cosine", end_lr_fraction=0.1)
  sched = learning_rate_schedule(config, total_steps=110, warmup_steps=10)
  np.testing.assert_allclose([sched(0), sched(5), sched(10)], [0.0, 0.2, 0.4], rtol=1e-6)
  np.testing.assert_allclose(sched(60), 0.4 * (0.1 + 0.9 * 0.5), rtol=1e-5)  # half-way through the decay
  np.testing.assert_allclose([sched(110), sched(500)], [0.04, 0.04], rtol=1e-5)  # held after the horizon


def test_step_schedule():
  config = TrainConfig(lr=0.1, schedule="step", step_boundaries=(0.5, 0.75), step_factor=0.1)
  sched = learning_rate_schedule(config, total_steps=100, warmup_steps=0)
  np.testing.assert_allclose([sched(0), sched(49), sched(50), sched(74), sched(75), sched(1000)],
                             [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-5)
  tiny = learning_rate_schedule(config, total_steps=1, warmup_steps=0)  # both boundaries round to step 1
  np.testing.assert_allclose([tiny(0), tiny(1)], [0.1, 0.001], rtol=1e-5)
  constant = learning_rate_schedule(TrainConfig(schedule="constant", lr=0.3), 10, 0)
  assert float(constant(7)) == pytest.approx(0.3)


@pytest.mark.parametrize("decoupled", [False, True])
def test_sgd_momentum_weight_decay(decoupled):
  lr, mu, wd = 0.1, 0.9, 0.01
  config = TrainConfig(lr=lr, momentum=mu, weight_decay=wd, decoupled_weight_decay=decoupled, schedule="constant")
  tx = make_optimizer(config, optax.constant_schedule(lr))
  theta = {"w": jnp.array([1.0, -2.0])}
  grads = [jnp.array([0.5, 0.5]), jnp.array([-1.0, 0.25])]
  state = tx.init(theta)
  ref, m = np.array([1.0, -2.0]), np.zeros(2)
  for g in grads:
    updates, state = tx.update({"w": g}, state, theta)
    theta = optax.apply_updates(theta, updates)
    if decoupled:  # SGDW: decay outside the momentum
      m = mu * m + np.asarray(g)
      ref = ref - lr * (m + wd * ref)
    else:  # PyTorch SGD(weight_decay): L2 gradient inside the momentum
      m = mu * m + np.asarray(g) + wd * ref
      ref = ref - lr * m
  np.testing.assert_allclose(theta["w"], ref, rtol=1e-6)


def _small_resnet_params():
  """A ResNet-8's parameters (pure dict) and, from its module types, the paths of the conv/dense kernels and of
  every other parameter (BatchNorm scale/bias, dense bias)."""
  model = models.build("resnet", {"depth": 8}, rngs=nnx.Rngs(0), image_shape=(8, 8, 1), num_classes=10)
  kernels, others = set(), set()
  for path, module in nnx.iter_modules(model):
    if isinstance(module, (nnx.Conv, nnx.Linear)):
      kernels.add((*path, "kernel"))
      if module.bias is not None:
        others.add((*path, "bias"))
    elif isinstance(module, nnx.BatchNorm):
      others |= {(*path, "scale"), (*path, "bias")}
  _, params, _ = nnx.split(model, nnx.Param, ...)
  return nnx.to_pure_dict(params), kernels, others


def _leaves(tree):
  """{path of keys: leaf}."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {tuple(getattr(k, "key", k) for k in path): leaf for path, leaf in flat}


def test_weight_decay_mask_selects_the_conv_and_dense_kernels():
  params, kernels, others = _small_resnet_params()
  mask = _leaves(weight_decay_mask(params))
  assert set(mask) == kernels | others and not kernels & others  # every parameter accounted for, once
  assert {p for p, m in mask.items() if m} == kernels
  assert len(kernels) == 1 + 3 * 2 + 2 + 1  # stem, 3 blocks × 2 convs, 2 projections, head
  assert any(p[-2:] == ("head", "bias") for p in others) and sum(p[-1] == "scale" for p in others) == 9


@pytest.mark.parametrize("decoupled", [False, True])
@pytest.mark.parametrize("weight_decay_on", ["all", "kernels"])
def test_weight_decay_on_changes_exactly_the_selected_leaves(weight_decay_on, decoupled):
  # Zero gradients: the only change in one step is the decay θ ← θ − η·λ·θ, coupled or decoupled alike (the
  # momentum starts at 0), on the leaves `weight_decay_on` selects.
  lr, wd = 0.1, 0.01
  config = TrainConfig(lr=lr, weight_decay=wd, weight_decay_on=weight_decay_on, decoupled_weight_decay=decoupled)
  params, kernels, _ = _small_resnet_params()
  rng = np.random.default_rng(0)  # nonzero values everywhere (biases start at 0, where decay does nothing)
  params = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
  tx = make_optimizer(config, optax.constant_schedule(lr))
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  after = _leaves(optax.apply_updates(params, updates))
  before = _leaves(params)
  decayed = set(before) if weight_decay_on == "all" else kernels
  for path, x in before.items():
    expected = np.asarray(x) * np.float32(1 - lr * wd) if path in decayed else np.asarray(x)
    np.testing.assert_allclose(after[path], expected, rtol=1e-6, atol=0, err_msg=str(path))
    assert np.array_equal(after[path], x) == (path not in decayed), path


def test_configs_saved_without_weight_decay_on_resume_as_all(tmp_path):
  config = TrainConfig(weight_decay_on="all")
  saved = json.loads(config.to_json())
  del saved["weight_decay_on"]  # a config.json written before the field existed
  (tmp_path / loop.CONFIG_FILE).write_text(json.dumps(saved))
  assert TrainConfig.from_json(json.dumps(saved)) == config
  loop._check_workdir_config(tmp_path, config)  # same run: resumes
  (tmp_path / loop.CONFIG_FILE).write_text(json.dumps(saved))
  with pytest.raises(ValueError, match=r"different config \(fields \['weight_decay_on'\] differ"):
    loop._check_workdir_config(tmp_path, config.replace(weight_decay_on="kernels"))


def test_cross_entropy_and_label_smoothing():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
  labels = jnp.array([0, 2])
  logp = jax.nn.log_softmax(logits)
  np.testing.assert_allclose(cross_entropy(logits, labels), -logp[jnp.arange(2), labels], rtol=1e-6)
  eps = 0.3
  targets = (1 - eps) * jax.nn.one_hot(labels, 3) + eps / 3
  np.testing.assert_allclose(cross_entropy(logits, labels, eps), -(targets * logp).sum(-1), rtol=1e-6)
  assert cross_entropy(logits.astype(jnp.bfloat16), labels).dtype == jnp.float32
