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


def _png(path):
  data = path.read_bytes()
  return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_rsim_cka_stderr_is_the_jackknife_of_the_same_batches(tmp_path):
  from rsim_jax import kernels

  xs, ys = _acts(seed=0), _acts(seed=1, widths=(20, 6))
  np.savez(tmp_path / "a.npz", **xs)
  np.savez(tmp_path / "b.npz", **ys)
  out = tmp_path / "out"
  assert cli.main(["cka", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--out", str(out), "--batch-size", "20",
                   "--stderr", "6"]) == 0
  result = json.loads((out / "cka.json").read_text())
  groups = kernels.minibatch_cka_groups_init(3, 2, num_groups=6)
  for start in range(0, 300, 20):
    groups = kernels.minibatch_cka_groups_update(groups, [a[start : start + 20] for a in xs.values()],
                                                 [a[start : start + 20] for a in ys.values()])
  ref = kernels.minibatch_cka_jackknife(groups)
  assert result["stderr_groups"] == 6 and np.array(result["stderr"]).shape == (3, 2)
  np.testing.assert_allclose(result["stderr"], ref.stderr, rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(result["cka"], ref.cka, rtol=1e-6)
  assert np.all(np.array(result["stderr"]) > 1e-4)
  assert _png(out / "cka.png") and _png(out / "cka_stderr.png")
  # Without --stderr: no error bars, no second heatmap.
  assert cli.main(["cka", str(tmp_path / "a.npz"), "--out", str(tmp_path / "plain"), "--batch-size", "20"]) == 0
  assert "stderr" not in json.loads((tmp_path / "plain" / "cka.json").read_text())
  assert not (tmp_path / "plain" / "cka_stderr.png").exists()


def test_rsim_cka_indices_on_the_first_examples_of_npz(tmp_path):
  from rsim_jax.analysis import indices

  xs, ys = _acts(seed=0), _acts(seed=1, widths=(20, 6))
  np.savez(tmp_path / "a.npz", **xs)
  np.savez(tmp_path / "b.npz", **ys)
  out = tmp_path / "out"
  chosen = ["procrustes", "rsa_spearman", "linear_cka", "procrustes"]  # repeated names are computed once
  assert cli.main(["cka", str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), "--out", str(out), "--batch-size", "50",
                   "--sample-size", "120", *[a for name in chosen for a in ("--index", name)]]) == 0
  first = lambda layers, m: {k: v[:m] for k, v in layers.items()}
  for name in ("procrustes", "rsa_spearman", "linear_cka"):
    saved = json.loads((out / f"{name}.json").read_text())
    assert saved["index"] == name and saved["n"] == 120
    assert saved["x_names"] == ["l0", "l1", "l2"] and saved["y_names"] == ["l0", "l1"]
    np.testing.assert_allclose(saved["matrix"], indices.all_pairs(first(xs, 120), first(ys, 120), index=name),
                               rtol=1e-6, atol=1e-7)
    # ... and not the index of all 300 examples.
    assert not np.allclose(saved["matrix"], indices.all_pairs(xs, ys, index=name), atol=1e-4)
    assert _png(out / f"{name}.png")
  assert json.loads((out / "cka.json").read_text())["num_examples"] == 300  # CKA still streams every example
  # One model, a sample larger than the file: all 300 examples; a symmetric matrix with a unit diagonal.
  assert cli.main(["cka", str(tmp_path / "a.npz"), "--out", str(tmp_path / "one"), "--batch-size", "50",
                   "--index", "pwcca"]) == 0
  saved = json.loads((tmp_path / "one" / "pwcca.json").read_text())
  assert saved["n"] == 300 and saved["y_names"] == saved["x_names"]
  np.testing.assert_allclose(saved["matrix"], indices.all_pairs(xs, index="pwcca"), rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.diag(saved["matrix"]), 1.0, atol=1e-4)


def test_rsim_cka_stderr_and_index_errors(tmp_path, capsys):
  np.savez(tmp_path / "a.npz", **_acts(seed=0))
  base = ["cka", str(tmp_path / "a.npz"), "--out", str(tmp_path / "o"), "--batch-size", "50"]
  with pytest.raises(SystemExit, match="--stderr 1: .* give G ≥ 2"):
    cli.main(base + ["--stderr", "1"])
  with pytest.raises(SystemExit) as error:
    cli.main(base + ["--index", "cka_rbf"])
  assert error.value.code == 2 and "invalid choice: 'cka_rbf'" in capsys.readouterr().err
  with pytest.raises(SystemExit, match="--sample-size 3: the indices need at least 4"):
    cli.main(base + ["--index", "cca", "--sample-size", "3"])
  # A kernel's refusal names the index: CCA without ridge needs more examples than features (l1 has 40).
  with pytest.raises(SystemExit, match=r"--index cca \(30 examples\): `layers_x\[1\]` has 40 features"):
    cli.main(base + ["--index", "cca", "--sample-size", "30"])


def test_rsim_cka_stderr_and_indices_of_a_trained_model(tmp_path):
  from rsim_jax import extract, parallel
  from rsim_jax.analysis import indices
  from rsim_jax.train import TrainConfig, load_model, train

  train(TrainConfig(model="resnet", model_kwargs={"depth": 8}, data="digits", data_kwargs={"image_size": 8},
                    batch_size=64, eval_batch_size=64, num_steps=2, lr=0.05, seed=0, progress=False), tmp_path / "run")
  out = tmp_path / "out"
  assert cli.main(["cka", str(tmp_path / "run"), "--out", str(out), "--max-examples", "200", "--batch-size", "8",
                   "--stderr", "5", "--index", "debiased_cka", "--sample-size", "60"]) == 0
  # The same pass by hand: one device, batches of 8, a seeded sample of 60.
  model, config = load_model(tmp_path / "run")
  mesh = parallel.data_mesh(1)
  batches, total = extract.split_batches(config, batch_size=8, mesh=mesh, max_examples=200)
  comparison = extract.compare_models(model, batches, mesh=mesh, total=total, stderr_groups=5, sample_size=60,
                                      progress=False)
  result = json.loads((out / "cka.json").read_text())
  np.testing.assert_allclose(result["stderr"], comparison.within[0].stderr, rtol=1e-5, atol=1e-8)
  saved = json.loads((out / "debiased_cka.json").read_text())
  assert saved["n"] == 60 and saved["x_names"] == result["x_names"]
  np.testing.assert_allclose(saved["matrix"], indices.all_pairs(comparison.samples[0], index="debiased_cka"),
                             rtol=1e-5, atol=1e-6)
  assert _png(out / "cka_stderr.png") and _png(out / "debiased_cka.png")
