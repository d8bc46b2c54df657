import numpy as np
import pytest

from rsim_jax import plotting


def test_heatmap_and_grid_write_images(tmp_path):
  m = np.eye(5) * 0.5 + 0.5
  png = plotting.cka_heatmap(m, tmp_path / "h.png", x_labels=list("abcde"), y_labels=list("abcde"), title="t")
  pdf = plotting.cka_heatmap_grid([[m, None], [m, m]], tmp_path / "g.pdf", titles=[["a", ""], ["b", "c"]], row_labels=["r0", "r1"])
  assert png.read_bytes()[:4] == b"\x89PNG" and pdf.read_bytes()[:4] == b"%PDF"


def test_heatmap_with_stderr_draws_a_second_panel(tmp_path):
  from PIL import Image

  m = np.eye(5) * 0.5 + 0.5
  se = np.full((5, 5), 0.02)
  se[0, 0] = np.nan  # an undefined entry is left blank, not the scale's maximum
  one = plotting.cka_heatmap(m, tmp_path / "one.png")
  two = plotting.cka_heatmap(m, tmp_path / "two.png", stderr=se)
  w1, h1 = Image.open(one).size
  w2, h2 = Image.open(two).size
  assert h2 == pytest.approx(h1, rel=0.05) and w2 == pytest.approx(2 * w1, rel=0.1)  # tight bounding boxes
  with pytest.raises(ValueError, match="`stderr` must have the shape"):
    plotting.cka_heatmap(m, tmp_path / "bad.png", stderr=se[:4])


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


def test_only_the_writer_process_saves_and_figures_are_closed(tmp_path, monkeypatch):
  import jax
  import matplotlib.pyplot as plt

  monkeypatch.setattr(jax, "process_index", lambda: 1)  # a second host of a pod slice
  path = plotting.metric_lines([1, 2], {"a": [0, 1]}, tmp_path / "sub" / "m.png", xlabel="x", ylabel="y")
  assert path == tmp_path / "sub" / "m.png" and not (tmp_path / "sub").exists()
  assert plt.get_fignums() == []
  monkeypatch.setattr(jax, "process_index", lambda: 0)
  path = plotting.metric_lines([1, 2], {"a": [0, 1]}, tmp_path / "sub" / "m.png", xlabel="x", ylabel="y")
  assert path.read_bytes()[:4] == b"\x89PNG" and plt.get_fignums() == []


def test_remote_figures_are_drawn_locally_then_uploaded(tmp_path, monkeypatch):
  # A stand-in for gs://: paths under `bucket` count as remote (written whole, never renamed into place).
  from rsim_jax import io

  bucket = tmp_path / "bucket"
  monkeypatch.setattr(io, "is_remote", lambda p: str(p).startswith(str(bucket)))
  drawn = []
  local_copy = io.local_copy_for_plotting
  monkeypatch.setattr(io, "local_copy_for_plotting", lambda p: drawn.append(local_copy(p)) or drawn[-1])
  path = plotting.cka_heatmap(np.eye(3), bucket / "runs" / "h.png")
  assert str(path) == str(bucket / "runs" / "h.png") and type(path).__module__.startswith("etils.epath")
  assert (bucket / "runs" / "h.png").read_bytes()[:4] == b"\x89PNG"
  assert len(drawn) == 1 and not str(drawn[0]).startswith(str(bucket)) and drawn[0].suffix == ".png"
  assert not drawn[0].exists()  # the temporary local copy is removed after the upload


@pytest.mark.parametrize("chosen", [{"env": "pdf"}, {"pyplot": True}, {}])
def test_backend_is_agg_unless_one_was_chosen(monkeypatch, chosen):
  # Jupyter's kernel sets MPLBACKEND to its inline backend; forcing Agg over it would stop figures showing.
  import sys

  import matplotlib

  calls = []
  monkeypatch.setattr(matplotlib, "use", lambda name, **_: calls.append(name))
  monkeypatch.delenv("MPLBACKEND", raising=False)
  if "env" in chosen:
    monkeypatch.setenv("MPLBACKEND", chosen["env"])
  if not chosen.get("pyplot"):
    monkeypatch.delitem(sys.modules, "matplotlib.pyplot", raising=False)
  plotting._choose_backend()
  assert calls == ([] if chosen else ["Agg"])


def test_importing_plotting_keeps_a_chosen_backend():
  import os
  import subprocess
  import sys

  code = "import rsim_jax.plotting, matplotlib; print(matplotlib.get_backend())"
  env = {**os.environ, "MPLBACKEND": "svg"}
  chosen = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
  env.pop("MPLBACKEND")
  default = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
  assert (chosen.stdout.split()[-1].lower(), default.stdout.split()[-1].lower()) == ("svg", "agg")


def test_layer_profiles_bands(tmp_path):
  values = np.linspace(0.2, 0.9, 7)
  path = plotting.layer_profiles({"a": values}, tmp_path / "b.png", ylabel="CKA", bands={"a": (values - 0.1, values + 0.1)})
  assert path.stat().st_size > 5000
  with pytest.raises(ValueError, match=r"`bands\['a'\]` must be \(low, high\) of 7 values"):
    plotting.layer_profiles({"a": values}, tmp_path / "c.png", ylabel="CKA", bands={"a": (values[:3], values)})
