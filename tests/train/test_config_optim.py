import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rsim_jax.train import TrainConfig, cross_entropy, learning_rate_schedule, load_config, make_optimizer
from rsim_jax.train.config import parse_override

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


def test_cross_entropy_and_label_smoothing():
  logits = jnp.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
  labels = jnp.array([0, 2])
  logp = jax.nn.log_softmax(logits)
  np.testing.assert_allclose(cross_entropy(logits, labels), -logp[jnp.arange(2), labels], rtol=1e-6)
  eps = 0.3
  targets = (1 - eps) * jax.nn.one_hot(labels, 3) + eps / 3
  np.testing.assert_allclose(cross_entropy(logits, labels, eps), -(targets * logp).sum(-1), rtol=1e-6)
  assert cross_entropy(logits.astype(jnp.bfloat16), labels).dtype == jnp.float32
