import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsim_jax import parallel
from rsim_jax.train import Program, TrainConfig, TrainState, load_model, read_metrics, train
from rsim_jax.train import __main__ as train_main
from tests.train import fake_data

SMALL = dict(model="resnet", model_kwargs={"depth": 8}, data="fake", batch_size=32, eval_batch_size=64,
             lr=0.05, log_every_steps=2, progress=False)


def _host(tree):
  return jax.tree.map(np.asarray, jax.device_get(tree))


def _steps(program, state, batches, mesh):
  with jax.set_mesh(mesh):
    state = jax.device_put(state, parallel.replicated(mesh))
    for batch in batches:
      state, _ = program.train_step(state, parallel.shard_batch(batch, mesh))
    return state


def test_data_parallel_step_on_8_devices_equals_1_device():
  config = TrainConfig(**SMALL, weight_decay=5e-4, label_smoothing=0.1)
  program = Program(config, (8, 8, 1), 4, total_steps=10, warmup_steps=2)
  init = _host(program.init_state())
  ds = fake_data.load("fake", "train")
  batches = [b for _, b in zip(range(3), fake_data.train_batches(ds, batch_size=32, seed=0))]
  one = _steps(program, init, batches, parallel.data_mesh(1))
  eight = _steps(program, init, batches, parallel.data_mesh(8))
  assert isinstance(eight, TrainState)
  leaf = eight.params["stem_conv"]["kernel"]
  assert len(leaf.sharding.device_set) == 8 and leaf.sharding.is_fully_replicated
  assert int(eight.step) == 3
  one, eight = _host(one), _host(eight)
  for tree in ("params", "model_state"):
    for a, b in zip(jax.tree.leaves(getattr(one, tree)), jax.tree.leaves(getattr(eight, tree))):
      np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max() + 1e-12))
  moved = max(float(np.abs(a - b).max())
              for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(init.params)))
  assert moved > 1e-3  # the steps did change the parameters


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  """An uninterrupted 12-step run (2 epochs of 6 steps, checkpoints every 4 steps)."""
  from rsim_jax.train import loop

  config = TrainConfig(**SMALL, num_epochs=2, checkpoint_every_steps=4, warmup_epochs=0.5)
  workdir = tmp_path_factory.mktemp("full")
  with pytest.MonkeyPatch.context() as mp:  # only around this run: later tests may use the real package
    mp.setattr(loop, "_data", lambda: fake_data)
    final = train(config, workdir)
  return config, workdir, final


def test_run_writes_metrics_config_and_checkpoints(full_run):
  config, workdir, final = full_run
  assert final["step"] == 12 and final["epoch"] == 2.0
  assert 0 <= final["test_accuracy"] <= 1 and np.isfinite(final["test_loss"])
  assert TrainConfig.from_json((workdir / "config.json").read_text()) == config
  assert json.loads((workdir / "final_metrics.json").read_text()) == final
  train_records = read_metrics(workdir, "train")
  assert [r["step"] for r in train_records] == [2, 4, 6, 8, 10, 12]
  assert train_records[-1]["loss"] < train_records[0]["loss"]
  assert all(r["images_per_sec"] > 0 and r["lr"] > 0 for r in train_records)
  assert train_records[0]["lr"] < train_records[1]["lr"]  # warm-up over the first 3 steps
  assert [r["step"] for r in read_metrics(workdir, "test")] == [6, 12]
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [8, 12]


def test_resume_equals_uninterrupted_run(full_run, fake_data_package, tmp_path):
  config, full_dir, final = full_run
  interrupted = train(config, tmp_path, stop_after_step=6)  # "killed" after step 6; last checkpoint at 4
  assert interrupted == {"step": 6, "interrupted": True}
  assert read_metrics(tmp_path, "train")[-1]["step"] == 6
  resumed = train(config, tmp_path)
  assert resumed["step"] == 12
  full_model, _ = load_model(full_dir)
  resumed_model, _ = load_model(tmp_path)
  from flax import nnx

  for a, b in zip(jax.tree.leaves(nnx.state(full_model)), jax.tree.leaves(nnx.state(resumed_model))):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-7)
  assert resumed["test_accuracy"] == final["test_accuracy"]
  np.testing.assert_allclose(resumed["test_loss"], final["test_loss"], rtol=1e-6)

  def strip(records):
    return [{k: v for k, v in r.items() if k != "images_per_sec"} for r in records]

  # The resumed run dropped the lines the interrupted one logged past step 4, so the files agree.
  assert strip(read_metrics(tmp_path)) == strip(read_metrics(full_dir))
  # A finished run is not trained again.
  assert train(config, tmp_path) == resumed


def test_load_model_restores_the_trained_weights(full_run):
  config, workdir, final = full_run
  model, loaded_config = load_model(workdir)
  assert loaded_config == config
  assert model.stem_bn.use_running_average  # eval mode
  test = fake_data.load("fake", "test")
  logits = model(jnp.asarray(fake_data._normalise(test.images)))
  accuracy = float(np.mean(np.argmax(logits, -1) == test.labels))
  assert accuracy == final["test_accuracy"]  # the in-memory model at the end of training scored this
  logits2, acts = model(jnp.asarray(fake_data._normalise(test.images)), capture=True)
  np.testing.assert_array_equal(logits, logits2)
  assert list(acts) == list(model.layer_names)
  earlier, _ = load_model(workdir, step=8)
  assert not np.allclose(earlier(jnp.asarray(fake_data._normalise(test.images))), logits)
  with pytest.raises(FileNotFoundError, match="step 5"):
    load_model(workdir, step=5)


def test_workdir_with_another_config_is_refused(full_run, fake_data_package):
  config, workdir, _ = full_run
  with pytest.raises(ValueError, match="different config.*lr"):
    train(config.replace(lr=0.2), workdir)
  # How often a run evaluates or saves does not change its result: such a config resumes (here: is complete).
  final = train(config.replace(eval_every_steps=0, checkpoint_every_steps=100, log_every_steps=7), workdir)
  assert final["step"] == 12


def test_batch_must_divide_over_devices(fake_data_package, tmp_path):
  with pytest.raises(ValueError, match="does not divide over the 8 devices"):
    train(TrainConfig(**{**SMALL, "batch_size": 30}), tmp_path)


def test_until_zero_train_error(fake_data_package, tmp_path):
  config = TrainConfig(**{**SMALL, "model": "mlp", "model_kwargs": {"hidden": (32,)}, "lr": 0.02}, num_epochs=1,
                       until_zero_train_error=True, max_epochs=30, schedule="constant", momentum=0.5)
  final = train(config, tmp_path)
  assert final["reached_zero_train_error"] and final["train_errors"] == 0
  full = read_metrics(tmp_path, "train_full")
  assert full[-1]["errors"] == 0 and full[-1]["step"] == final["step"]
  assert final["step"] % 6 == 0 and final["step"] >= 6
  assert all(r["errors"] > 0 for r in full[:-1])


def test_command_line_entry_point(fake_data_package, tmp_path, capsys):
  config_file = tmp_path / "cfg.py"
  config_file.write_text(
      "from rsim_jax.train import TrainConfig\n"
      "def get_config(variant='local'):\n"
      "  return TrainConfig(model='mlp', model_kwargs={'hidden': (8,)}, data='fake', batch_size=32,\n"
      "                     eval_batch_size=64, num_steps={'local': 2, 'big': 50}[variant], progress=False)\n"
  )
  assert train_main.main(["--config", f"{config_file}:local", "--workdir", str(tmp_path / "run"),
                          "--set", "lr=0.01"]) == 0
  printed = json.loads(capsys.readouterr().out)
  assert printed["step"] == 2
  saved = TrainConfig.from_json((tmp_path / "run" / "config.json").read_text())
  assert saved.lr == 0.01 and saved.num_steps == 2


def test_with_the_real_data_package_on_digits(tmp_path):
  """`train` against `rsim_jax.data` itself (scikit-learn digits, embedded): subsets, batches, masks, shapes."""
  config = TrainConfig(model="mlp", model_kwargs={"hidden": (32,)}, data="digits", train_subset=400,
                       batch_size=64, eval_batch_size=128, num_steps=12, lr=0.05, progress=False)
  final = train(config, tmp_path)
  info = json.loads((tmp_path / "run_info.json").read_text())
  assert info["image_shape"] == [8, 8, 1] and info["num_classes"] == 10 and info["num_train"] == 400
  assert final["step"] == 12 and final["test_accuracy"] > 0.5
  model, _ = load_model(tmp_path)
  assert model.in_features == 64


@pytest.mark.slow
def test_resnet20_on_digits_reaches_95_percent(tmp_path):
  from rsim_jax.train import load_config

  config = load_config("experiments/train_configs/resnet_digits.py:local").replace(progress=False)
  assert config.model_kwargs["depth"] == 20 and config.data == "digits"
  final = train(config, tmp_path)
  assert final["test_accuracy"] >= 0.95, final


def test_train_subset_and_bfloat16_step(fake_data_package, tmp_path):
  config = TrainConfig(**{**SMALL, "batch_size": 16, "model": "mlp", "model_kwargs": {"hidden": (16,)}},
                       train_subset=0.5, num_steps=2, dtype="bfloat16")
  final = train(config, tmp_path)
  info = json.loads((tmp_path / "run_info.json").read_text())
  assert info["num_train"] == 96 and info["steps_per_epoch"] == 6
  model, _ = load_model(tmp_path)
  from flax import nnx

  assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {np.dtype("float32")}
  assert np.isfinite(final["test_loss"]) and final["step"] == 2


def test_kernels_only_weight_decay_trains_and_resumes(fake_data_package, tmp_path):
  # The masked optimizer state (optax.masked) goes through jit, an Orbax checkpoint and a resume.
  config = TrainConfig(**{**SMALL, "batch_size": 16, "model": "mlp", "model_kwargs": {"hidden": (16,)}},
                       num_steps=2, checkpoint_every_steps=1, weight_decay_on="kernels")
  assert train(config, tmp_path, stop_after_step=1)["interrupted"]
  final = train(config, tmp_path)
  assert final["step"] == 2 and np.isfinite(final["test_loss"])


def test_checkpoint_steps_and_initial_model(full_run):
  from flax import nnx

  from rsim_jax.train import checkpoint_steps, load_initial_model

  config, workdir, _ = full_run
  assert checkpoint_steps(workdir) == [8, 12]  # every 4 steps, the last 2 kept
  initial, trained = load_initial_model(workdir), load_model(workdir)[0]
  init_params = jax.tree.leaves(nnx.state(initial, nnx.Param))
  trained_params = jax.tree.leaves(nnx.state(trained, nnx.Param))
  assert len(init_params) == len(trained_params)
  assert any(not np.allclose(a, b) for a, b in zip(init_params, trained_params))
  # Step 0 is the config's seed: a fresh (eager) build from the same config has the same weights, up to the
  # last bit of the jit-compiled initialisation.
  from rsim_jax.train import build_model

  info = json.loads((workdir / "run_info.json").read_text())
  fresh = build_model(config, info["image_shape"], info["num_classes"])
  for a, b in zip(init_params, jax.tree.leaves(nnx.state(fresh, nnx.Param))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
