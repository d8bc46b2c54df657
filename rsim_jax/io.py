"""Files of a run on one machine or on a pod slice: one writer, local or `gs://` paths.

On a multi-host slice every process runs the same program. Results are global (the same on every process), so
exactly one process writes each file: `is_writer()` (process 0). Work directories are `etils.epath.Path`s, so
a local directory and a Cloud Storage bucket (`gs://bucket/runs/x`, the place pod runs keep checkpoints and
results; Orbax uses the same library) are handled by the same code. Checkpoints need a directory that every
process sees (a bucket, or a shared file system); on one machine any local directory does.

    from rsim_jax import io
    workdir = io.path("gs://my-bucket/runs/r20")     # or a local path
    io.write_json(workdir / "results.json", results)  # process 0 writes; the others skip
    io.barrier("results written")                     # before another process reads it
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
from etils import epath

PathLike = str | os.PathLike


def path(value: PathLike) -> epath.Path:
  """`value` as an `epath.Path`: a local path (relative paths are kept relative) or a `gs://…` URI."""
  if isinstance(value, epath.Path):
    return value
  if not isinstance(value, (str, os.PathLike)):
    raise ValueError(f"A work directory or file must be a str or path, got {type(value).__name__}: {value!r}.")
  return epath.Path(value)


def is_remote(value: PathLike) -> bool:
  """True for object-store URIs (`gs://…`, `s3://…`), where a rename is a copy and a write is already atomic."""
  return "://" in os.fspath(value)


def is_writer() -> bool:
  """True on the one process that writes shared files (process 0); True on a single-process run."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (nothing to wait for with one process).

  Use it after `is_writer()`'s process wrote a file that the others read next.
  """
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # noqa: PLC0415

    multihost_utils.sync_global_devices(name)


def agreed_exists(target: PathLike) -> bool:
  """Whether `target` exists, as process 0 sees it, on every process.

  For "reuse the cached result, else compute it" decisions around collective work: if one process saw a
  file that another had not yet seen, the first would skip the computation and leave the others waiting in a
  collective forever.
  """
  exists = path(target).exists()
  if jax.process_count() == 1:
    return exists
  import numpy as np  # noqa: PLC0415
  from jax.experimental import multihost_utils  # noqa: PLC0415

  return bool(multihost_utils.broadcast_one_to_all(np.asarray(exists)))


def _atomic_write(target: epath.Path, data: str | bytes) -> None:
  # A local file is written beside its target and renamed over it, so a reader (another process, or a run
  # resumed after a crash) never sees half a file. An object store's write is already all-or-nothing.
  if is_remote(target):
    (target.write_bytes if isinstance(data, bytes) else target.write_text)(data)
    return
  tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
  (tmp.write_bytes if isinstance(data, bytes) else tmp.write_text)(data)
  tmp.replace(target)


def write_text(target: PathLike, text: str, *, all_processes: bool = False) -> epath.Path:
  """Writes `text` to `target` (atomically on local disks) on the writer process only, making parent
  directories; returns the path on every process. `all_processes=True` writes on every process (a
  process-local file)."""
  target = path(target)
  if all_processes or is_writer():
    target.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(target, text)
  return target


def write_bytes(target: PathLike, data: bytes, *, all_processes: bool = False) -> epath.Path:
  """As `write_text`, for bytes (e.g. a `.npy` or `.png` serialised in memory)."""
  target = path(target)
  if all_processes or is_writer():
    target.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(target, bytes(data))
  return target


def write_json(target: PathLike, obj: Any, *, indent: int | None = 2, all_processes: bool = False,
               **dumps_kwargs) -> epath.Path:
  """`json.dumps(obj, indent=indent, **dumps_kwargs)` + newline to `target` by the writer process."""
  return write_text(target, json.dumps(obj, indent=indent, **dumps_kwargs) + "\n", all_processes=all_processes)


def read_json(source: PathLike) -> Any:
  return json.loads(path(source).read_text())


def save_npy(target: PathLike, array, *, all_processes: bool = False) -> epath.Path:
  """`numpy.save` of `array` to `target` (a local or `gs://` path) by the writer process."""
  import io as _io  # noqa: PLC0415

  import numpy as np  # noqa: PLC0415

  buffer = _io.BytesIO()
  np.save(buffer, np.asarray(array), allow_pickle=False)
  return write_bytes(target, buffer.getvalue(), all_processes=all_processes)


def load_npy(source: PathLike):
  import io as _io  # noqa: PLC0415

  import numpy as np  # noqa: PLC0415

  return np.load(_io.BytesIO(path(source).read_bytes()), allow_pickle=False)


def local_copy_for_plotting(target: PathLike):
  """A path matplotlib can write: `target` itself when local, else a temporary local file (see `upload`)."""
  if not is_remote(target):
    return path(target)
  import tempfile  # noqa: PLC0415

  suffix = path(target).suffix
  handle, name = tempfile.mkstemp(suffix=suffix)
  os.close(handle)
  return epath.Path(name)


def upload(local: PathLike, target: PathLike) -> epath.Path:
  """Copies a local file (a figure written by matplotlib) to `target` when they differ (writer only)."""
  local, target = path(local), path(target)
  if os.fspath(local) != os.fspath(target):
    if is_writer():
      write_bytes(target, local.read_bytes())
    local.unlink(missing_ok=True)
  return target
