"""Spec resolution: which backend a spec string names, and where its files are.

  "digits"       → ("digits", None)
  "npz:<dir>"    → ("npz", Path(dir))
  "tfds:<name>"  → ("tfds", name)       name as tfds spells it: "imagenet2012", "mnist/subset:3.0.1", ...
  "<name>"       → ("npz", folder) for the first `data_dirs()` folder holding `<name>/` with split files,
                   else ("tfds", name)
"""

from __future__ import annotations

import os
import pathlib
import re
from typing import Any

from rsim_jax.data.sources.npz import npz_splits

SPEC_HELP = ("use 'digits', 'npz:<dir>', 'tfds:<name>' or a data-set name such as 'cifar10', 'mnist', "
             "'fashion_mnist'")
# rsim_jax/data/sources/spec.py → the checkout (an editable install): shared/data lies beside it.
_CHECKOUT = pathlib.Path(__file__).resolve().parents[3]


def data_dirs(data_dir: str | os.PathLike | None = None) -> list[pathlib.Path]:
  """Where named npz sources are looked for, in order: `data_dir`, $RSIM_DATA_DIR, ./data, ../shared/data,
  and shared/data beside the checkout (for an editable install)."""
  candidates = [data_dir, os.environ.get("RSIM_DATA_DIR"), "data", "../shared/data"]
  candidates.append(_CHECKOUT.parent / "shared" / "data")
  return [pathlib.Path(c) for c in candidates if c]


def resolve(spec: str, data_dir=None) -> tuple[str, Any]:
  """`(kind, where)` of `spec`: ("digits", None) | ("npz", directory) | ("tfds", name).

  Raises:
    TypeError: `spec` is not a string.
    ValueError: `spec` matches none of the forms (the message lists them).
  """
  if not isinstance(spec, str):
    raise TypeError(f"`spec` must be a string ({SPEC_HELP}), got {type(spec).__name__}.")
  if spec == "digits":
    return "digits", None
  if spec.startswith("npz:"):
    return "npz", pathlib.Path(spec[4:]).expanduser()
  if spec.startswith("tfds:") and re.fullmatch(r"[a-z0-9_]+(/[a-z0-9_.]+)?(:[0-9.]+)?", spec[5:]):
    return "tfds", spec[5:]
  if re.fullmatch(r"[a-z0-9_]+", spec):
    for base in data_dirs(data_dir):
      if (base / spec).is_dir() and npz_splits(base / spec):
        return "npz", base / spec
    return "tfds", spec
  raise ValueError(f"Unknown data `spec` {spec!r}: {SPEC_HELP}.")
