import json

import numpy as np

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
