"""The any-model example notebook runs (tiny mode) in the default suite, without Jupyter: its code cells are
executed in order with IPython magics (`%pip`, `%matplotlib`) removed. `make test-notebooks` runs every
notebook under nbmake."""

import json
import pathlib

import matplotlib

NOTEBOOK = pathlib.Path(__file__).resolve().parents[1] / "colab" / "any_model.ipynb"


def test_any_model_notebook_runs(tmp_path, monkeypatch):
  matplotlib.use("Agg")
  monkeypatch.setenv("RSIM_NOTEBOOK_TINY", "1")
  monkeypatch.setenv("RSIM_NOTEBOOK_WORKDIR", str(tmp_path))
  monkeypatch.chdir(tmp_path)
  cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
  namespace: dict = {"__name__": "__notebook__"}
  for i, cell in enumerate(cells):
    source = "".join(line for line in cell["source"] if not line.lstrip().startswith("%"))
    exec(compile(source, f"{NOTEBOOK.name}[cell {i}]", "exec"), namespace)  # noqa: S102
  summary, summary_cnn, cross = namespace["summary"], namespace["summary_cnn"], namespace["cross"]
  assert summary.layer_names[0] == "embed" and summary.layer_names[-1] == "head"
  assert summary_cnn.layer_names == ("conv0", "conv1", "conv2", "fc", "logits")
  assert summary.cka.stderr is not None and cross.matrix.shape == (len(summary.layer_names), 5)
  assert (tmp_path / "cross_cka.png").stat().st_size > 10_000
