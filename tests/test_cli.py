import json

import numpy as np
import pytest

from rsim_jax import cli
from tests.test_extract import _acts


def test_rsim_cka_writes_json_and_heatmap(tmp_path):
  np.savez(tmp_path / "a.npz", **_acts(seed=0))
  np.savez(tmp_path / "b.npz", **_acts(seed=1))
  assert cli.main(["cka", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--out", str(tmp_path / "out"), "--batch-size", "50"]) == 0
  result = json.loads((tmp_path / "out" / "cka.json").read_text())
  matrix = np.array(result["cka"])
  assert matrix.shape == (3, 3) and result["x_names"] == ["l0", "l1", "l2"] and result["num_examples"] == 300
  assert np.all((matrix > -0.1) & (matrix <= 1.0 + 1e-6))
  png = (tmp_path / "out" / "cka.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_rsim_cka_of_two_trained_models(tmp_path):
  from rsim_jax.train import TrainConfig, train

  for seed in (0, 1):
    train(TrainConfig(model="resnet", model_kwargs={"depth": 8}, data="digits", data_kwargs={"image_size": 8},
                      batch_size=64, eval_batch_size=128, num_steps=3, lr=0.05, seed=seed, progress=False,
                      num_devices=1), tmp_path / f"run{seed}")
  out = tmp_path / "out"
  assert cli.main(["cka", str(tmp_path / "run0"), str(tmp_path / "run1"), "--out", str(out), "--batch-size", "64",
                   "--max-examples", "200"]) == 0
  result = json.loads((out / "cka.json").read_text())
  matrix = np.array(result["cka"])
  assert result["num_examples"] == 200 and matrix.shape == (len(result["x_names"]), len(result["y_names"]))
  assert result["x_names"][0] == "stem" and result["y_names"][-1] == "logits"
  assert np.all((matrix > -0.1) & (matrix <= 1.0 + 1e-5)) and (out / "cka.png").stat().st_size > 5000
  # One model: its within-model matrix, symmetric with a unit diagonal.
  assert cli.main(["cka", str(tmp_path / "run0"), "--out", str(out), "--batch-size", "64", "--max-examples", "200"]) == 0
  within = np.array(json.loads((out / "cka.json").read_text())["cka"])
  np.testing.assert_allclose(np.diag(within), 1.0, atol=1e-5)
  np.testing.assert_allclose(within, within.T, atol=1e-6)
  np.savez(tmp_path / "a.npz", **_acts(seed=0))
  with pytest.raises(SystemExit, match="not one of each"):
    cli.main(["cka", str(tmp_path / "a.npz"), str(tmp_path / "run0"), "--out", str(out)])


def test_rsim_cka_batch_size_is_per_device_for_npz(tmp_path):
  # --batch-size b means b examples per device: --sharded on 8 devices (global batches of 8·b) gives the matrix
  # of one device with batches of b, and a different estimate from one device with batches of 8·b.
  np.savez(tmp_path / "a.npz", **_acts(seed=0))
  np.savez(tmp_path / "b.npz", **_acts(seed=1))

  def run(*flags):
    out = tmp_path / "_".join(flags)
    assert cli.main(["cka", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--out", str(out), *flags]) == 0
    return json.loads((out / "cka.json").read_text())

  sharded, single, wide = run("--sharded", "--batch-size", "10"), run("--batch-size", "10"), run("--batch-size", "80")
  assert sharded["num_batches"] == single["num_batches"] == 30 and wide["num_batches"] == 4
  np.testing.assert_allclose(sharded["cka"], single["cka"], rtol=1e-5, atol=1e-7)
  assert not np.allclose(sharded["cka"], wide["cka"], atol=1e-3)
  with pytest.raises(SystemExit, match="per device and must be at least 4"):
    cli.main(["cka", str(tmp_path / "a.npz"), "--out", str(tmp_path / "x"), "--batch-size", "3"])


def test_rsim_cka_batch_size_is_per_device_for_trained_models(tmp_path):
  from rsim_jax.train import TrainConfig, train

  train(TrainConfig(model="resnet", model_kwargs={"depth": 8}, data="digits", data_kwargs={"image_size": 8},
                    batch_size=64, eval_batch_size=64, num_steps=2, lr=0.05, seed=0, progress=False), tmp_path / "run")

  def run(*flags):
    out = tmp_path / "_".join(flags)
    assert cli.main(["cka", str(tmp_path / "run"), "--out", str(out), "--max-examples", "200", *flags]) == 0
    return json.loads((out / "cka.json").read_text())

  sharded, single = run("--sharded", "--batch-size", "8"), run("--batch-size", "8")
  # 200 examples in minibatches of 8: 25 minibatches either way (4 global batches of 64 with --sharded).
  assert sharded["num_batches"] == single["num_batches"] == 25 and sharded["num_examples"] == 200
  np.testing.assert_allclose(sharded["cka"], single["cka"], rtol=1e-5, atol=1e-6)


def test_multihost_flag_initialises_jax_distributed_first(monkeypatch, tmp_path):
  import jax

  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
  np.savez(tmp_path / "a.npz", **_acts(seed=0))
  assert cli.main(["--multihost", "cka", str(tmp_path / "a.npz"), "--out", str(tmp_path / "o"), "--batch-size", "50"]) == 0
  assert calls == [((), {})]
  monkeypatch.setenv("RSIM_MULTIHOST", "1")
  cli.main(["cka", str(tmp_path / "a.npz"), "--out", str(tmp_path / "o"), "--batch-size", "50"])
  assert len(calls) == 2
