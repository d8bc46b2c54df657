"""`TrainConfig.tensorboard`: the metrics also as TensorBoard scalars, read back from the event files.

tensorboardX writes the files and has no reader; `read_scalars` here parses them (TFRecord framing + the
`Event` protocol buffer tensorboardX ships) and applies TensorBoard's purge rule, so a resumed run's curves can
be compared with an uninterrupted run's. Skipped where tensorboardX is not installed (the `tensorboard` extra),
except the test of the error that names the extra.
"""

import importlib.util
import math
import struct
import sys

import numpy as np
import pytest

from rsim_jax.train import TrainConfig, read_metrics, train
from rsim_jax.train.metrics import TENSORBOARD_DIR, MetricsWriter

needs_tensorboardx = pytest.mark.skipif(importlib.util.find_spec("tensorboardX") is None,
                                        reason="tensorboardX (the `tensorboard` extra) is not installed")
CONFIG = TrainConfig(model="mlp", model_kwargs={"hidden": (16,)}, data="fake", batch_size=32, eval_batch_size=64,
                     lr=0.05, log_every_steps=2, num_epochs=2, checkpoint_every_steps=4, progress=False,
                     tensorboard=True)


def _records(path):
  """The payloads of a TFRecord file: [uint64 length][uint32 crc][payload][uint32 crc] each."""
  data, out, i = path.read_bytes(), [], 0
  while i < len(data):
    (length,) = struct.unpack("<Q", data[i : i + 8])
    out.append(data[i + 12 : i + 12 + length])
    i += 12 + length + 4
  return out


def read_scalars(logdir):
  """`{tag: {step: value}}` as TensorBoard shows it: event files in name order; a session START at step s
  (tensorboardX's `purge_step`) hides what earlier files logged at steps >= s."""
  from tensorboardX.proto import event_pb2  # noqa: PLC0415

  scalars: dict[str, dict[int, float]] = {}
  files = sorted(logdir.glob("*tfevents*"))
  for path in files:
    for payload in _records(path):
      event = event_pb2.Event.FromString(payload)
      if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
        for values in scalars.values():
          for step in [s for s in values if s >= event.step]:
            del values[step]
      for value in event.summary.value:
        scalars.setdefault(value.tag, {})[event.step] = value.simple_value
  return scalars, files


def _purges(path):
  """Steps of the session STARTs (purges) in one event file."""
  from tensorboardX.proto import event_pb2  # noqa: PLC0415

  events = [event_pb2.Event.FromString(p) for p in _records(path)]
  return [e.step for e in events if e.HasField("session_log") and e.session_log.status == event_pb2.SessionLog.START]


def _as_scalars(records):
  """metrics.jsonl records → the `{split/metric: {step: float32 value}}` TensorBoard should hold."""
  out: dict[str, dict[int, float]] = {}
  for r in records:
    for key, value in r.items():
      if key not in ("step", "split") and value is not None:
        out.setdefault(f"{r['split']}/{key}", {})[r["step"]] = float(np.float32(value))
  return out


def _without_speed(scalars):
  return {tag: v for tag, v in scalars.items() if tag != "train/images_per_sec"}


@needs_tensorboardx
def test_scalars_match_metrics_jsonl_and_a_resume_reads_like_one_run(fake_data_package, tmp_path):
  full_dir, resumed_dir = tmp_path / "full", tmp_path / "resumed"
  final = train(CONFIG, full_dir)
  full, files = read_scalars(full_dir / TENSORBOARD_DIR)
  assert len(files) == 1 and files[0].stat().st_size > 0
  records = read_metrics(full_dir)
  assert full == _as_scalars(records)  # every number of metrics.jsonl, at its step, as float32
  assert sorted(full["train/loss"]) == [2, 4, 6, 8, 10, 12] and sorted(full["test/accuracy"]) == [6, 12]
  assert full["test/accuracy"][12] == pytest.approx(final["test_accuracy"], rel=1e-6)
  assert full["train/loss"][12] < full["train/loss"][2]

  assert train(CONFIG, resumed_dir, stop_after_step=6)["interrupted"]  # last checkpoint at step 4
  interrupted, _ = read_scalars(resumed_dir / TENSORBOARD_DIR)
  assert sorted(interrupted["train/loss"]) == [2, 4, 6] and sorted(interrupted["test/loss"]) == [6]
  train(CONFIG, resumed_dir)
  resumed, files = read_scalars(resumed_dir / TENSORBOARD_DIR)
  assert len(files) == 2  # the interrupted run's file is kept; the resumed run's file purges steps > 4
  assert _purges(files[0]) == [0] and _purges(files[1]) == [5]
  assert _without_speed(resumed) == _without_speed(full)
  # Writing TensorBoard files does not change a run: the finished run is accepted without them.
  assert train(CONFIG.replace(tensorboard=False), full_dir) == final


@needs_tensorboardx
def test_only_the_writer_process_writes_and_values_are_filtered(tmp_path):
  silent = MetricsWriter(tmp_path / "other", enabled=False, tensorboard=True)  # a process other than 0
  silent.write(1, "train", {"loss": 1.0})
  silent.close()
  assert not (tmp_path / "other").exists()
  writer = MetricsWriter(tmp_path, enabled=True, tensorboard=True)
  writer.truncate_after(-1)
  writer.write(3, "test", {"loss": np.float32(0.5), "errors": 7, "note": "text", "nan": math.nan, "ok": True})
  with pytest.raises(ValueError, match="`truncate_after"):
    writer.truncate_after(3)
  writer.close()
  scalars, _ = read_scalars(tmp_path / TENSORBOARD_DIR)
  assert set(scalars) == {"test/loss", "test/errors", "test/nan", "test/ok"}  # strings are skipped
  assert scalars["test/loss"] == {3: 0.5} and scalars["test/errors"] == {3: 7.0} and scalars["test/ok"] == {3: 1.0}
  assert math.isnan(scalars["test/nan"][3])
  assert read_metrics(tmp_path)[0]["note"] == "text"  # the JSON line keeps everything


def test_missing_tensorboardx_names_the_extra(fake_data_package, tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorboardX", None)  # `import tensorboardX` raises ImportError
  config = CONFIG.replace(num_steps=2)
  with pytest.raises(ImportError, match=r"rsim_jax\[tensorboard\].*tensorboard=False"):
    train(config, tmp_path)
  assert not (tmp_path / "checkpoints").exists()  # it fails before training
  assert train(config.replace(tensorboard=False), tmp_path)["step"] == 2  # the same run, without the files
  assert not (tmp_path / TENSORBOARD_DIR).exists()
  with pytest.raises(ValueError, match="tensorboard='yes' must be True"):
    CONFIG.replace(tensorboard="yes")
