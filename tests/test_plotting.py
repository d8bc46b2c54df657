import numpy as np

from rsim_jax import plotting


def test_heatmap_and_grid_write_images(tmp_path):
  m = np.eye(5) * 0.5 + 0.5
  png = plotting.cka_heatmap(m, tmp_path / "h.png", x_labels=list("abcde"), y_labels=list("abcde"), title="t")
  pdf = plotting.cka_heatmap_grid([[m, None], [m, m]], tmp_path / "g.pdf", titles=[["a", ""], ["b", "c"]], row_labels=["r0", "r1"])
  assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:4] == b"%PDF"
