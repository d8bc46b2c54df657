"""Every figure of rsim_jax. Matplotlib lives here and nowhere else; nothing here computes statistics.

Functions take arrays (and labels) and a path; they save PNG or PDF (by the path's suffix) and return it.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: figures are files
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=150, bbox_inches="tight")
  plt.close(fig)
  return path


def _tick_labels(ax, labels: Sequence[str] | None, axis: str, max_ticks: int = 24):
  if labels is None:
    return
  n = len(labels)
  step = max(1, int(np.ceil(n / max_ticks)))
  idx = np.arange(0, n, step)
  if axis == "x":
    ax.set_xticks(idx)
    ax.set_xticklabels([labels[i] for i in idx], rotation=90, fontsize=6)
  else:
    ax.set_yticks(idx)
    ax.set_yticklabels([labels[i] for i in idx], fontsize=6)


def _draw_heatmap(ax, matrix, *, x_labels, y_labels, title, vmin=0.0, vmax=1.0):
  image = ax.imshow(np.asarray(matrix, np.float64), origin="lower", cmap="magma", vmin=vmin, vmax=vmax,
                    interpolation="nearest")
  _tick_labels(ax, x_labels, "x")
  _tick_labels(ax, y_labels, "y")
  if title:
    ax.set_title(title, fontsize=9)
  return image


def cka_heatmap(
    matrix,
    path,
    *,
    x_labels: Sequence[str] | None = None,
    y_labels: Sequence[str] | None = None,
    title: str | None = None,
    x_name: str = "layer",
    y_name: str = "layer",
) -> pathlib.Path:
  """One CKA matrix as a heatmap, layers from input (origin) to output, as in Nguyen et al. (2021), Fig. 1.

  Args:
    matrix: `(num_y, num_x)` CKA values; row i is `y_labels[i]`, column j is `x_labels[j]`.
    path: where to save (.png or .pdf).
  """
  matrix = np.asarray(matrix)
  fig, ax = plt.subplots(figsize=(4.2, 3.8))
  image = _draw_heatmap(ax, matrix, x_labels=x_labels, y_labels=y_labels, title=title)
  ax.set_xlabel(x_name)
  ax.set_ylabel(y_name)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="CKA")
  return _save(fig, path)


def cka_heatmap_grid(
    matrices: Sequence[Sequence[np.ndarray | None]],
    path,
    *,
    titles: Sequence[Sequence[str]],
    row_labels: Sequence[str] | None = None,
    suptitle: str | None = None,
) -> pathlib.Path:
  """A grid of CKA heatmaps (e.g. depth × width, Nguyen et al. 2021, Fig. 2); None leaves a cell empty.

  Args:
    matrices: rows of `(L, L)` CKA matrices (rows may differ in length).
    titles: a title per matrix, same layout.
    row_labels: optional label of each row (e.g. "depth", "width").
  """
  rows, cols = len(matrices), max(len(r) for r in matrices)
  fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols + 0.8, 2.4 * rows), squeeze=False)
  image = None
  for i, row in enumerate(matrices):
    for j in range(cols):
      ax = axes[i][j]
      m = row[j] if j < len(row) else None
      if m is None:
        ax.axis("off")
        continue
      image = _draw_heatmap(ax, m, x_labels=None, y_labels=None, title=titles[i][j])
      ax.set_xticks([])
      ax.set_yticks([])
      if j == 0 and row_labels is not None:
        ax.set_ylabel(row_labels[i], fontsize=9)
  if image is not None:
    fig.colorbar(image, ax=axes, fraction=0.02, pad=0.02, label="CKA")
  if suptitle:
    fig.suptitle(suptitle, fontsize=10)
  return _save(fig, path)
