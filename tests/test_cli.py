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
