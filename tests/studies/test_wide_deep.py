import json
import sys

import numpy as np
import pytest

from rsim_jax.studies import wide_deep


@pytest.fixture
def fake_data(monkeypatch):
  from tests.train import fake_data as module

  monkeypatch.setitem(sys.modules, "rsim_jax.data", module)
  import rsim_jax

  monkeypatch.setattr(rsim_jax, "data", module, raising=False)
  return module


def _tiny_config(depths=(8,)):
  return wide_deep.WideDeepConfig(
      train=dict(data="fake", batch_size=32, eval_batch_size=32, num_epochs=1, lr=0.05, progress=False, num_devices=1,
                 log_every_steps=5),
      depths=depths, widths=(1, 2), width_depths=(8,), cka_batch_size=25,
  )


def test_grid_of_models():
  names = [s.name for s in wide_deep.get_config("local").models()]
  assert names == ["resnet20_x1_seed0", "resnet56_x1_seed0", "resnet20_x4_seed0"]
  paper = wide_deep.get_config("cifar10").models()
  assert {(s.depth, s.width) for s in paper} >= {(164, 1), (38, 10), (14, 8)}
  assert {s.train_fraction for s in paper} == {1.0, 0.25, 0.0625}
  with pytest.raises(ValueError, match="Unknown wide_deep variant"):
    wide_deep.get_config("huge")


@pytest.mark.parametrize(
    "depths", [(8,), pytest.param((8, 14), marks=pytest.mark.slow)], ids=["two_models", "three_models"]
)
def test_study_runs_end_to_end_and_resumes(tmp_path, fake_data, depths):
  cfg = _tiny_config(depths)
  report = wide_deep.run(cfg, tmp_path)
  text = report.read_text()
  for name in [s.name for s in cfg.models()]:
    assert name in text
    result = json.loads((tmp_path / "analysis" / f"{name}.json").read_text())
    cka = np.array(result["cka_trained"])
    assert cka.shape == (len(result["layer_names"]),) * 2
    np.testing.assert_allclose(np.diag(cka), 1.0, atol=1e-5)
    assert np.array(result["cka_init"]).shape == cka.shape
    # The extraction pass re-measures test accuracy; it must agree with the trainer's evaluation.
    assert result["accuracy_check"] == pytest.approx(result["test_accuracy"], abs=1e-6)
  assert (tmp_path / "cka_grid_frac1_seed0.png").stat().st_size > 1000
  # A second run resumes: nothing is retrained or re-extracted.
  stamp = (tmp_path / "analysis" / "resnet8_x1_seed0.json").stat().st_mtime_ns
  wide_deep.run(cfg, tmp_path)
  assert (tmp_path / "analysis" / "resnet8_x1_seed0.json").stat().st_mtime_ns == stamp
