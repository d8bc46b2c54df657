import json

import numpy as np
import pytest

from rsim_jax.studies import intrinsic_dim


def _tiny():
  return intrinsic_dim.IntrinsicDimConfig(
      train=dict(model="deepnet", model_kwargs={"conv_features": (4, 8), "dense_features": (16,), "kernel_size": 3},
                 data="fake", batch_size=32, eval_batch_size=50, num_epochs=2, lr=0.05, progress=False,
                 num_devices=1, keep_checkpoints=10),
      sample_size=80, repeats=2, noise=((64, 0.05),), num_scales=2,
  )


def test_study_runs_end_to_end_and_resumes(tmp_path, fake_data):
  cfg = _tiny()
  report = intrinsic_dim.run(cfg, tmp_path)
  text = report.read_text()
  results = json.loads((tmp_path / "results.json").read_text())
  # Initialisation + one checkpoint per epoch (6 steps each), every one profiled on the same 80 examples.
  assert sorted(int(k) for k in results["profiles"]) == [0, 6, 12]
  profile = results["profiles"]["12"]["profile"]
  assert profile["layer_names"] == ["input", "conv1", "pool1", "conv2", "pool2", "dense1", "logits"]
  assert profile["num_points"] == 80 and profile["embedding_dim"][0] == 64
  ids = np.array(profile["intrinsic_dim"])
  assert np.all(np.isfinite(ids)) and np.all(ids > 0)
  assert results["last_hidden_layer"] == "dense1"
  assert [t["step"] for t in results["trajectory"]] == [0, 6, 12]
  assert results["trajectory"][-1]["test_accuracy"] == pytest.approx(results["final"]["test_accuracy"])
  # The input's ID does not depend on the network: the same at every checkpoint.
  assert len({round(t["input_id"], 9) for t in results["trajectory"]}) == 1
  assert {e["batch_size"] for e in results["noise"]} == {32, 64}
  assert set(results["scale_curves"]) == {"input", "dense1", profile["layer_names"][3]}
  for figure in ("id_profile.png", "participation_ratio.png", "id_vs_accuracy.png", "noise_id.png", "noise_gap.png",
                 "scale_curves.png"):
    assert (tmp_path / figure).stat().st_size > 1000, figure
  assert "Profile shape" in text and "SGD noise" in text
  stamp = (tmp_path / "analysis" / "profile_step12.json").stat().st_mtime_ns
  # (config.json and run_info.json are rewritten by every call of `train`, a resume included.)
  stamps = lambda: {f: f.stat().st_mtime_ns for f in (tmp_path / "models").rglob("*")
                    if f.is_file() and f.name not in ("config.json", "run_info.json")}
  models = stamps()
  intrinsic_dim.run(cfg, tmp_path)
  assert (tmp_path / "analysis" / "profile_step12.json").stat().st_mtime_ns == stamp
  # Resuming trains nothing: no file of any run (checkpoints, metrics) is rewritten or added.
  assert stamps() == models and len(models) > 10


@pytest.mark.parametrize("variant", ["local", "fmnist_local", "cifar10_local", "paper", "tiny"])
def test_variants_plan(variant):
  rows = intrinsic_dim.plan(intrinsic_dim.get_config(variant))
  assert rows[0]["name"] == "main" and len({r["name"] for r in rows}) == len(rows)
  with pytest.raises(ValueError, match="Unknown intrinsic_dim variant"):
    intrinsic_dim.get_config("huge")


def test_paper_variant_trains_one_step(tmp_path, fake_data):
  from rsim_jax.train import train

  cfg = intrinsic_dim.get_config("paper")
  # The paper's network and optimiser, on the fake data and for one step (the real run is for accelerators).
  tc = intrinsic_dim._train_config(cfg, data="fake", num_steps=1, eval_batch_size=50, num_devices=1,
                                   progress=False)
  assert tc.model == "deepnet" and tc.schedule == "constant" and cfg.sample_size == 2000
  final = train(tc, tmp_path)
  assert final["step"] == 1 and np.isfinite(final["test_accuracy"])
