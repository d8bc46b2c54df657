"""Results as markdown text, for the studies' reports (`rsim_jax.studies.skeleton.write_report`).

`fmt` is the one number formatter of every report; `table` makes a markdown table's lines.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


def fmt(x: Any, spec: str = ".3f") -> str:
  """A number for a report: `format(x, spec)`, or "–" for a missing one (None, NaN or ±inf)."""
  if x is None or (isinstance(x, (float, np.floating)) and not math.isfinite(x)):
    return "–"
  return format(x, spec)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str) -> list[str]:
  """A markdown table's lines: `header`, the alignment row, one line a row (cells as `str`).

  `align`: one letter a column, "l" (left) or "r" (right: numbers), e.g. "lrr" → `|---|---:|---:|`.
  """
  if len(align) != len(header) or set(align) - {"l", "r"}:
    raise ValueError(f"`align` needs one 'l' or 'r' per column ({len(header)}); got {align!r}.")
  lines = ["| " + " | ".join(header) + " |", "|" + "".join("---:|" if a == "r" else "---|" for a in align)]
  for row in rows:
    row = [str(cell) for cell in row]
    if len(row) != len(header):
      raise ValueError(f"A row of {len(row)} cells in a table of {len(header)} columns: {row}.")
    lines.append("| " + " | ".join(row) + " |")
  return lines
