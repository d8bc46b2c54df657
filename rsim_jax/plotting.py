"""Every figure of rsim_jax. Matplotlib lives here and nowhere else; nothing here computes statistics.

Functions take arrays (and labels) and a path (local or `gs://…`); they save PNG or PDF (by the path's
suffix) and return it: a `pathlib.Path` for a local file, an `etils.epath.Path` for `gs://…`. On a
multi-host run only the writer process (process 0) saves; every process returns the same path.
"""

from __future__ import annotations

import os
import pathlib
import sys
from collections.abc import Mapping, Sequence

import matplotlib


def _choose_backend() -> None:
  """Agg (headless: figures are files), unless a backend was already chosen: `MPLBACKEND` (Jupyter's kernel
  sets it to the inline backend) or a `pyplot` imported before us. Switching those would break a notebook's
  inline figures, and any backend can save files."""
  if os.environ.get("MPLBACKEND") or "matplotlib.pyplot" in sys.modules:
    return
  matplotlib.use("Agg")


_choose_backend()
import matplotlib.patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from rsim_jax import io  # noqa: E402


def _save(fig, path) -> pathlib.Path:
  """Saves `fig` to `path` on the writer process (the others only close it); returns the path.

  Matplotlib writes local files only: a `gs://` target is drawn to a temporary local file, then uploaded.
  """
  target = io.path(path)
  try:
    if io.is_writer():
      local = io.local_copy_for_plotting(target)
      local.parent.mkdir(parents=True, exist_ok=True)
      fig.savefig(os.fspath(local), dpi=150, bbox_inches="tight")
      io.upload(local, target)
  finally:
    plt.close(fig)  # on every process: pyplot keeps figures alive until closed
  return target if io.is_remote(target) else pathlib.Path(target)


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
    label: str = "CKA",
    vmin: float = 0.0,
    vmax: float = 1.0,
    stderr=None,
) -> pathlib.Path:
  """One CKA matrix as a heatmap, layers from input (origin) to output, as in Nguyen et al. (2021), Fig. 1.

  Args:
    matrix: `(num_y, num_x)` CKA values; row i is `y_labels[i]`, column j is `x_labels[j]`.
    path: where to save (.png or .pdf).
    label: the colour bar's label (another index, or "standard error" for a matrix of errors).
    vmin, vmax: the colour scale's limits (CKA: 0 to 1).
    stderr: optional `(num_y, num_x)` standard errors of `matrix` (e.g. the jackknife's), drawn as a second
      panel on its own scale (0 to its largest finite value), so a bright square can be read against its noise.
  """
  matrix = np.asarray(matrix)
  panels = [(matrix, label, vmin, vmax, title)]
  if stderr is not None:
    stderr = np.asarray(stderr, np.float64)
    if stderr.shape != matrix.shape:
      raise ValueError(f"`stderr` must have the shape of `matrix` {matrix.shape}, got {stderr.shape}.")
    finite = stderr[np.isfinite(stderr)]
    top = float(finite.max()) if finite.size else 0.0
    panels.append((stderr, f"standard error of {label}", 0.0, top or 1.0, "standard error"))
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
  for k, (ax, (values, bar, low, high, panel_title)) in enumerate(zip(axes[0], panels)):
    # The error panel shares the rows: its y labels would run into the first panel's colour bar.
    image = _draw_heatmap(ax, values, x_labels=x_labels, y_labels=y_labels if k == 0 else None, title=panel_title,
                          vmin=low, vmax=high)
    ax.set_xlabel(x_name)
    if k == 0:
      ax.set_ylabel(y_name)
    else:
      ax.set_yticks([])
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=bar)
  return _save(fig, path)


def cka_heatmap_grid(
    matrices: Sequence[Sequence[np.ndarray | None]],
    path,
    *,
    titles: Sequence[Sequence[str]],
    row_labels: Sequence[str] | None = None,
    suptitle: str | None = None,
    boxes: Sequence[Sequence[tuple[int, int] | None]] | None = None,
) -> pathlib.Path:
  """A grid of CKA heatmaps (e.g. depth × width, Nguyen et al. 2021, Fig. 2); None leaves a cell empty.

  Args:
    matrices: rows of `(L, L)` CKA matrices (rows may differ in length).
    titles: a title per matrix, same layout.
    row_labels: optional label of each row (e.g. "depth", "width").
    boxes: optional `(start, end)` layer range (inclusive) per matrix, same layout, outlined as a square (e.g. a
      detected block); None draws nothing for that cell.
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
      box = boxes[i][j] if boxes is not None and j < len(boxes[i]) else None
      if box is not None:
        start, end = box
        ax.add_patch(matplotlib.patches.Rectangle((start - 0.5, start - 0.5), end - start + 1, end - start + 1,
                                                  fill=False, edgecolor="red", lw=1.2, ls="--"))
      ax.set_xticks([])
      ax.set_yticks([])
      if j == 0 and row_labels is not None:
        ax.set_ylabel(row_labels[i], fontsize=9)
  if image is not None:
    fig.colorbar(image, ax=axes, fraction=0.02, pad=0.02, label="CKA")
  if suptitle:  # Above the panel titles (saved with a tight bounding box, so the figure grows to fit it).
    fig.suptitle(suptitle, fontsize=10, y=1.0 + 0.12 / rows)
  return _save(fig, path)


def layer_profiles(
    profiles: Mapping[str, Sequence[float]],
    path,
    *,
    ylabel: str,
    title: str | None = None,
    spans: Mapping[str, tuple[int, int]] | None = None,
    relative_depth: bool = True,
    styles: Mapping[str, str] | None = None,
    ylim: tuple[float, float] | None = None,
    bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
) -> pathlib.Path:
  """One line per model of a per-layer quantity (PC1 fraction, probe accuracy, ID, ...) against depth.

  Args:
    profiles: label → `(L,)` values, input to output (models may differ in L).
    ylabel: what the values are.
    spans: optional label → `(start, end)` layer indices (inclusive) to shade, e.g. a detected block.
    relative_depth: x = layer index / (L − 1), so models of different depth overlay; else the layer index.
    styles: optional label → matplotlib format string (e.g. "--" for an untrained baseline).
    bands: optional label → `(low, high)` per layer (an interval, e.g. a bootstrap's), filled around the line.
  """
  fig, ax = plt.subplots(figsize=(5.2, 3.4))
  for label, values in profiles.items():
    values = np.asarray(values, np.float64)
    x = np.arange(len(values)) / max(len(values) - 1, 1) if relative_depth else np.arange(len(values))
    (line,) = ax.plot(x, values, (styles or {}).get(label, "-"), label=label, lw=1.4)
    if bands and label in bands:
      low, high = (np.asarray(v, np.float64) for v in bands[label])
      if low.shape != values.shape or high.shape != values.shape:
        raise ValueError(f"`bands[{label!r}]` must be (low, high) of {values.shape[0]} values each.")
      ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, lw=0)
    if spans and label in spans and spans[label][1] >= spans[label][0]:
      s, e = spans[label]
      ax.axvspan(x[s], x[e], color=line.get_color(), alpha=0.12, lw=0)
  ax.set_xlabel("relative depth" if relative_depth else "layer")
  ax.set_ylabel(ylabel)
  if ylim is not None:
    ax.set_ylim(*ylim)
  if title:
    ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7, frameon=False)
  ax.grid(alpha=0.3)
  return _save(fig, path)


def metric_lines(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    path,
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    log_x: bool = False,
    marks: Mapping[str, float] | None = None,
) -> pathlib.Path:
  """A summary number against a study variable (width, depth, dataset fraction), one line per series.

  Args:
    x: `(K,)` values of the study variable.
    series: label → `(K,)` values (NaN for a missing point).
    marks: optional label → x position of a vertical dashed line (e.g. a critical width).
  """
  fig, ax = plt.subplots(figsize=(4.8, 3.3))
  for label, values in series.items():
    ax.plot(np.asarray(x, np.float64), np.asarray(values, np.float64), "o-", label=label, lw=1.4, ms=4)
  for label, position in (marks or {}).items():
    ax.axvline(position, ls="--", color="0.4", lw=1)
    ax.text(position, ax.get_ylim()[1], f" {label}", fontsize=7, va="top")
  if log_x:
    ax.set_xscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7, frameon=False)
  ax.grid(alpha=0.3)
  return _save(fig, path)


def output_differences(
    error_rate_a: Sequence[float],
    error_rate_b: Sequence[float],
    class_accuracy_a: Sequence[float],
    class_accuracy_b: Sequence[float],
    path,
    *,
    label_a: str,
    label_b: str,
    significant_classes: Sequence[bool] | None = None,
    title: str | None = None,
) -> pathlib.Path:
  """Two populations of models compared at the output (Nguyen et al. 2021, Sec. 6, Fig. 9–10).

  Left: each test example's error rate over population A's seeds against B's (examples every model gets
  right sit at the origin and are left out; points off the diagonal are examples one architecture finds
  harder). Right: per-class accuracy of A and B (seed means), significant differences starred.

  Args:
    error_rate_a, error_rate_b: `(N,)` per-example error rates in [0, 1].
    class_accuracy_a, class_accuracy_b: `(C,)` mean per-class accuracies.
    significant_classes: optional `(C,)` bools (e.g. Welch t + Benjamini–Hochberg).
  """
  ea, eb = np.asarray(error_rate_a, np.float64), np.asarray(error_rate_b, np.float64)
  ca, cb = np.asarray(class_accuracy_a, np.float64), np.asarray(class_accuracy_b, np.float64)
  fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.4), gridspec_kw={"width_ratios": [1, 1.6]})
  hard = (ea > 0) | (eb > 0)
  # A little jitter: error rates take few values (multiples of 1/seeds), so points would hide each other.
  jitter = np.random.default_rng(0).uniform(-0.015, 0.015, (2, int(hard.sum())))
  left.scatter(ea[hard] + jitter[0], eb[hard] + jitter[1], s=8, alpha=0.5, lw=0)
  left.plot([0, 1], [0, 1], "--", color="0.5", lw=1)
  left.set_xlim(-0.05, 1.05)
  left.set_ylim(-0.05, 1.05)
  left.set_xlabel(f"error rate, {label_a}")
  left.set_ylabel(f"error rate, {label_b}")
  left.set_title(f"{int(hard.sum())} of {len(ea)} examples missed by some model", fontsize=8)
  x = np.arange(len(ca))
  right.bar(x - 0.2, ca, 0.4, label=label_a)
  right.bar(x + 0.2, cb, 0.4, label=label_b)
  low = min(float(np.min(ca)), float(np.min(cb)))
  right.set_ylim(max(0.0, low - 0.1), 1.0)
  if significant_classes is not None:
    for i, sig in enumerate(significant_classes):
      if sig:
        right.text(i, max(ca[i], cb[i]), "*", ha="center", va="bottom")
  right.set_xticks(x)
  right.set_xlabel("class")
  right.set_ylabel("accuracy (mean over seeds)")
  right.legend(fontsize=7, frameon=False, loc="lower right")
  if title:
    fig.suptitle(title, fontsize=10, y=1.02)
  return _save(fig, path)


def id_profiles(
    profiles: Mapping[str, tuple[Sequence[float], Sequence[float] | None]],
    layer_names: Sequence[str],
    path,
    *,
    ylabel: str,
    title: str | None = None,
    log_y: bool = False,
) -> pathlib.Path:
  """A per-layer quantity with error bars against the layer names (ID profiles, Ansuini et al. 2019 Fig. 1).

  Args:
    profiles: label → (`(L,)` values, `(L,)` standard deviations or None), all on the same layers.
    layer_names: the `L` layer names, input to output (x tick labels).
  """
  fig, ax = plt.subplots(figsize=(max(5.0, 0.32 * len(layer_names) + 2.0), 3.4))
  x = np.arange(len(layer_names))
  for label, (values, std) in profiles.items():
    values = np.asarray(values, np.float64)
    if std is None:
      ax.plot(x, values, "o-", ms=3, lw=1.4, label=label)
    else:
      ax.errorbar(x, values, yerr=np.asarray(std, np.float64), fmt="o-", ms=3, lw=1.4, capsize=2, label=label)
  if log_y:
    ax.set_yscale("log")
  _tick_labels(ax, list(layer_names), "x")
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7, frameon=False)
  ax.grid(alpha=0.3)
  return _save(fig, path)


def scale_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], path, *, title: str | None = None
                 ) -> pathlib.Path:
  """TwoNN against neighbourhood scale (Facco et al. 2017, Fig. 2): ID vs the median second-neighbour
  distance of each decimation level, one line per layer (`kernels.twonn_scaling` output as lists)."""
  fig, ax = plt.subplots(figsize=(4.8, 3.3))
  for layer, c in curves.items():
    r2 = np.asarray(c["r2_median"], np.float64)
    # Relative scale: layers live at very different absolute distances.
    ax.errorbar(r2 / r2[0], c["intrinsic_dim"], yerr=c.get("intrinsic_dim_std"), fmt="o-", ms=3, capsize=2, label=layer)
  ax.set_xscale("log")
  ax.set_xlabel("neighbourhood scale (median r₂ / its value on all points)")
  ax.set_ylabel("intrinsic dimension (TwoNN)")
  ax.set_title(title or "ID vs scale (N, N/2, N/4, … points)", fontsize=9)
  ax.legend(fontsize=7, frameon=False)
  ax.grid(alpha=0.3)
  return _save(fig, path)


def chunk_accuracy_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], path, *, title: str | None = None
                          ) -> pathlib.Path:
  """Accuracy of random chunks of a layer against chunk size, one line per network (Doimo et al. 2021, Fig. 1).

  Args:
    curves: label → {"chunk_sizes", "mean", "std", "full_accuracy"} (`ChunkAccuracy.to_json()`).
  """
  fig, ax = plt.subplots(figsize=(4.8, 3.3))
  for label, c in curves.items():
    (line,) = ax.plot(c["chunk_sizes"], c["mean"], "o-", ms=3, lw=1.4, label=label)
    mean, std = np.asarray(c["mean"]), np.asarray(c["std"])
    ax.fill_between(c["chunk_sizes"], mean - std, mean + std, color=line.get_color(), alpha=0.15, lw=0)
    ax.axhline(c["full_accuracy"], color=line.get_color(), ls=":", lw=0.8)
  ax.set_xscale("log")
  ax.set_xlabel("chunk size c (neurons)")
  ax.set_ylabel("test accuracy")
  if title:
    ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7, frameon=False)
  ax.grid(alpha=0.3)
  return _save(fig, path)


def layer_summary(summary, path=None, *, title: str | None = None, show_stderr: bool = True):
  """Three panels for one model (`analysis.layer_summary.LayerSummary`): the all-pairs CKA heatmap (and its
  jackknife standard error, when the summary has one), the PC1 fraction per layer, and TwoNN ID ± std.

  Args:
    summary: a `LayerSummary`.
    path: where to save (.png or .pdf); None returns the `Figure` (shown inline in a notebook).
    title: the figure's title (default: the model's name and the examples used).

  Returns:
    The saved path, or the figure when `path` is None.
  """
  names = list(summary.layer_names)
  has_stderr = show_stderr and summary.cka.stderr is not None
  panels = 4 if has_stderr else 3
  fig, axes = plt.subplots(1, panels, figsize=(4.3 * panels, 4.0))
  image = _draw_heatmap(axes[0], summary.cka.matrix, x_labels=names, y_labels=names, title="minibatch CKA")
  fig.colorbar(image, ax=axes[0], fraction=0.046, pad=0.04)
  column = 1
  if has_stderr:
    stderr = np.asarray(summary.cka.stderr, np.float64)
    image = _draw_heatmap(axes[1], stderr, x_labels=names, y_labels=names, title="CKA standard error (jackknife)",
                          vmax=max(float(np.nanmax(stderr)), 1e-12))
    fig.colorbar(image, ax=axes[1], fraction=0.046, pad=0.04)
    column = 2
  x = np.arange(len(names))
  axes[column].plot(x, summary.pc1_fraction, "o-", ms=3, lw=1.4)
  axes[column].set_ylim(0, 1)
  axes[column].set_ylabel("variance on PC1")
  axes[column].set_title(f"PC1 fraction ({summary.num_sampled} examples)", fontsize=9)
  axes[column + 1].errorbar(x, summary.intrinsic_dim, yerr=summary.intrinsic_dim_std, fmt="o-", ms=3, lw=1.4,
                            capsize=2)
  axes[column + 1].set_ylabel("intrinsic dimension (TwoNN)")
  axes[column + 1].set_title("intrinsic dimension", fontsize=9)
  for ax in axes[column:]:
    _tick_labels(ax, names, "x")
    ax.grid(alpha=0.3)
  fig.suptitle(title or f"{summary.model_name}: {len(names)} layers, {summary.num_examples} examples", fontsize=10)
  fig.tight_layout()
  if path is None:
    return fig
  return _save(fig, path)
