"""Metrics as JSON lines (`metrics.jsonl` in the work directory) and reading them back."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

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

  def __init__(self, workdir: str | pathlib.Path, *, enabled: bool = True):
    self.path = pathlib.Path(workdir) / METRICS_FILE
    self.enabled = enabled

  def truncate_after(self, step: int) -> None:
    if not self.enabled or not self.path.exists():
      return
    kept = [line for line in self.path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    self.path.write_text("".join(line + "\n" for line in kept))

  def write(self, step: int, split: str, values: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "split": split, **{k: _clean(v) for k, v in values.items()}}
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")


def read_metrics(workdir: str | pathlib.Path, split: str | None = None) -> list[dict[str, Any]]:
  """The records of `workdir/metrics.jsonl` (only those of `split` when given), in order."""
  path = pathlib.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return [r for r in records if split is None or r["split"] == split]
