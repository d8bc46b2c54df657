import numpy as np

from rsim_jax import plotting


def test_heatmap_and_grid_write_images(tmp_path):
  m = np.eye(5) * 0.5 + 0.5
  png = plotting.cka_heatmap(m, tmp_path / "h.png", x_labels=list("abcde"), y_labels=list("abcde"), title="t")
  pdf = plotting.cka_heatmap_grid([[m, None], [m, m]], tmp_path / "g.pdf", titles=[["a", ""], ["b", "c"]], row_labels=["r0", "r1"])
  assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:4] == b"%PDF"


def test_layer_profiles(tmp_path):
  path = plotting.layer_profiles({"deep": np.linspace(0, 1, 21), "wide (init)": np.ones(9) * 0.3}, tmp_path / "p.png",
                                 ylabel="PC1 fraction", spans={"deep": (5, 15)}, styles={"wide (init)": "--"})
  assert path.stat().st_size > 5000


def test_metric_lines(tmp_path):
  path = plotting.metric_lines([1, 2, 4], {"a": [1, 2, np.nan], "b": [0, 1, 1]}, tmp_path / "m.pdf", xlabel="width",
                               ylabel="clones", log_x=True, marks={"critical": 2})
  assert path.stat().st_size > 1000


def test_output_differences(tmp_path):
  rng = np.random.default_rng(0)
  path = plotting.output_differences(rng.integers(0, 5, 200) / 4, rng.integers(0, 5, 200) / 4, rng.uniform(0.8, 1, 10),
                                     rng.uniform(0.8, 1, 10), tmp_path / "o.png", label_a="deep", label_b="wide",
                                     significant_classes=[True] + [False] * 9, title="t")
  assert path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 10000
