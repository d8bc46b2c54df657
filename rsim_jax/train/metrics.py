"""Metrics as JSON lines (`metrics.jsonl` in the work directory) and reading them back.

Only the writer process (`rsim_jax.io.is_writer()`, process 0) writes; metrics are global values, the same on
every process. The work directory may be local or `gs://…` (an object store has no append: the file is
rewritten whole, which for a few thousand lines is cheap next to a training step).
"""

from __future__ import annotations

import json
import math
from typing import Any

from rsim_jax import io

METRICS_FILE = "metrics.jsonl"


def _clean(value: Any) -> Any:
  """Python scalars for JSON; NaN/Inf become None (strict JSON has no NaN)."""
  if hasattr(value, "item"):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


class MetricsWriter:
  """Appends one JSON object per line: `{"step": int, "split": "train"|"test"|..., <metric>: value, ...}`.

  `truncate_after(step)` drops lines of steps after `step`: a run resumed from a checkpoint at `step` first
  removes what the interrupted run logged beyond it, so the file reads like an uninterrupted run's.
  """

  def __init__(self, workdir: io.PathLike, *, enabled: bool | None = None):
    self.path = io.path(workdir) / METRICS_FILE
    self.enabled = io.is_writer() if enabled is None else enabled
    self._lines: list[str] | None = None  # an object store's file, kept here and rewritten whole

  def truncate_after(self, step: int) -> None:
    if not self.enabled or not self.path.exists():
      return
    kept = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    self.path.write_text("".join(line + "\n" for line in kept))
    self._lines = None

  def write(self, step: int, split: str, values: dict[str, Any]) -> None:
    if not self.enabled:
      return
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
