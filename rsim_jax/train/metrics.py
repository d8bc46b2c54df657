"""Metrics as JSON lines (`metrics.jsonl` in the work directory) and reading them back; optionally also as
TensorBoard event files (`tensorboard/` in the work directory, `TrainConfig.tensorboard`).

Only the writer process (`rsim_jax.io.is_writer()`, process 0) writes; metrics are global values, the same on
every process. The work directory may be local or `gs://…` (an object store has no append: the file is
rewritten whole, which for a few thousand lines is cheap next to a training step; TensorBoard files on
`gs://` go through tensorboardX's own GCS writer, which needs `google-cloud-storage`).

    writer = MetricsWriter(workdir, tensorboard=True)   # tensorboard: needs the extra rsim_jax[tensorboard]
    writer.truncate_after(start)                       # a resumed run: forget what came after its checkpoint
    writer.write(step, "train", {"loss": 0.3, "accuracy": 0.9})  # a JSON line; scalars train/loss, ...
    writer.close()
    # tensorboard --logdir <workdir>/tensorboard
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from rsim_jax import io

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_EXTRA = "pip install 'rsim_jax[tensorboard]' (tensorboardX)"


def _clean(value: Any) -> Any:
  """Python scalars for JSON; NaN/Inf become None (strict JSON has no NaN)."""
  if hasattr(value, "item"):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def summary_writer_class():
  """`tensorboardX.SummaryWriter`; ImportError naming the `tensorboard` extra where tensorboardX is missing."""
  try:
    from tensorboardX import SummaryWriter  # noqa: PLC0415
  except ImportError as e:
    raise ImportError(f"TrainConfig.tensorboard=True writes TensorBoard event files with tensorboardX, which is not "
                      f"installed: {TENSORBOARD_EXTRA}, or set tensorboard=False (metrics.jsonl is always "
                      "written).") from e
  return SummaryWriter


class TensorBoardWriter:
  """Scalars in TensorBoard event files under `workdir/tensorboard/` (tensorboardX's `SummaryWriter`).

  `write(step, split, values)` adds one scalar per numeric value, tagged `<split>/<metric>` ("train/loss",
  "test/accuracy", "train_full/errors") at global step `step`; non-numeric values are skipped and NaN/Inf are
  written as they are. `truncate_after(step)` (before the first write) makes the new event file start with a
  purge at `step + 1`: TensorBoard then hides what an interrupted run logged after its last checkpoint, so the
  curves read like an uninterrupted run's (the event files themselves are never rewritten).

  Every process checks that tensorboardX is importable (the same error everywhere, before any collective);
  only the writer process (`io.is_writer()`, process 0) creates files.

  Args:
    workdir: the run's work directory (local or `gs://…`).
    enabled: write (default: `io.is_writer()`).
    flush_secs: how often tensorboardX flushes pending events to disk; `close()` flushes the rest.
  """

  def __init__(self, workdir: io.PathLike, *, enabled: bool | None = None, flush_secs: int = 30):
    self._summary_writer = summary_writer_class()
    self.logdir = io.path(workdir) / TENSORBOARD_DIR
    self.enabled = io.is_writer() if enabled is None else enabled
    self.flush_secs = int(flush_secs)
    self._purge_step: int | None = None
    self._writer = None

  def truncate_after(self, step: int) -> None:
    """Hide events of steps after `step` (TensorBoard's purge); call before the first `write`."""
    if self._writer is not None:
      raise ValueError(f"`truncate_after({step})` must come before the first `write` of {self.logdir}; call it "
                       "right after opening the writer (as a resumed run does).")
    self._purge_step = int(step) + 1

  def write(self, step: int, split: str, values: dict[str, Any]) -> None:
    if not self.enabled:
      return
    if self._writer is None:
      # tensorboardX names a file by the second it opened it (and truncates a file of that name): the suffix
      # keeps a run resumed within the same second from overwriting the interrupted run's file, and sorts after.
      self._writer = self._summary_writer(logdir=os.fspath(self.logdir), purge_step=self._purge_step,
                                          flush_secs=self.flush_secs, filename_suffix=f".{time.time_ns()}")
    for name, value in values.items():
      if hasattr(value, "item"):
        value = value.item()
      if isinstance(value, (bool, int, float)):
        self._writer.add_scalar(f"{split}/{name}", float(value), global_step=int(step))

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


class MetricsWriter:
  """Appends one JSON object per line: `{"step": int, "split": "train"|"test"|..., <metric>: value, ...}`,
  and with `tensorboard=True` also writes each value as a TensorBoard scalar (`TensorBoardWriter`).

  `truncate_after(step)` drops lines of steps after `step`: a run resumed from a checkpoint at `step` first
  removes what the interrupted run logged beyond it, so the file reads like an uninterrupted run's (and the
  TensorBoard curves, through a purge). `close()` flushes the TensorBoard file.

  Args:
    workdir: the run's work directory.
    enabled: write (default: `io.is_writer()`, process 0).
    tensorboard: also write `workdir/tensorboard/` event files (needs the `tensorboard` extra: tensorboardX;
      ImportError naming it otherwise, raised at construction on every process).
  """

  def __init__(self, workdir: io.PathLike, *, enabled: bool | None = None, tensorboard: bool = False):
    self.path = io.path(workdir) / METRICS_FILE
    self.enabled = io.is_writer() if enabled is None else enabled
    self._lines: list[str] | None = None  # an object store's file, kept here and rewritten whole
    self.tensorboard = TensorBoardWriter(workdir, enabled=self.enabled) if tensorboard else None

  def truncate_after(self, step: int) -> None:
    if self.tensorboard is not None:
      self.tensorboard.truncate_after(step)
    if not self.enabled or not self.path.exists():
      return
    kept = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    self.path.write_text("".join(line + "\n" for line in kept))
    self._lines = None

  def close(self) -> None:
    if self.tensorboard is not None:
      self.tensorboard.close()

  def write(self, step: int, split: str, values: dict[str, Any]) -> None:
    if not self.enabled:
      return
    if self.tensorboard is not None:
      self.tensorboard.write(step, split, values)
    record = {"step": int(step), "split": split, **{k: _clean(v) for k, v in values.items()}}
    line = json.dumps(record) + "\n"
    if io.is_remote(self.path):
      if self._lines is None:
        self._lines = [ln + "\n" for ln in self.path.read_text().splitlines()] if self.path.exists() else []
      self._lines.append(line)
      self.path.write_text("".join(self._lines))
      return
    with self.path.open("a") as f:
      f.write(line)


def read_metrics(workdir: io.PathLike, split: str | None = None) -> list[dict[str, Any]]:
  """The records of `workdir/metrics.jsonl` (only those of `split` when given), in order."""
  path = io.path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return [r for r in records if split is None or r["split"] == split]
